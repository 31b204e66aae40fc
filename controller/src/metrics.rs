//! The controller's metrics. Label values come from fixed sets (RPC names,
//! kinds, the annotation vocabulary), never from callers.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use trellis_core::telemetry;

use crate::index::{Problem, Snapshot};
use crate::objects::Kind;
use crate::watches::Watches;

/// The two streaming RPCs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    Resolve,
    Inbound,
}

impl Rpc {
    fn as_str(self) -> &'static str {
        match self {
            Rpc::Resolve => "resolve",
            Rpc::Inbound => "inbound",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
    resource: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AnnotationLabels {
    kind: &'static str,
    annotation: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusWriteLabels {
    kind: &'static str,
    result: &'static str,
}

/// How one route status write ended (the `result` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusWrite {
    Written,
    /// The route changed since the controller saw it (409): written again
    /// from the next version, if still needed.
    Conflict,
    Failed,
}

impl StatusWrite {
    fn as_str(self) -> &'static str {
        match self {
            StatusWrite::Written => "written",
            StatusWrite::Conflict => "conflict",
            StatusWrite::Failed => "failed",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    streams_open: Family<RpcLabels, Gauge>,
    streams: Family<RpcLabels, Counter>,
    updates: Family<RpcLabels, Counter>,
    answers_computed: Family<RpcLabels, Counter>,
    questions: Family<RpcLabels, Gauge>,
    source_errors: Family<SourceLabels, Counter>,
    objects: Family<KindLabels, Gauge>,
    annotation_errors: Family<AnnotationLabels, Counter>,
    warnings: Gauge,
    snapshots: Counter,
    file_reloads: Family<ResultLabels, Counter>,
    trust_roots_copies: Gauge,
    trust_roots_foreign: Gauge,
    trust_roots_sync_errors: Family<OperationLabels, Counter>,
    route_status_writes: Family<StatusWriteLabels, Counter>,
    watches: Arc<Watches>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = telemetry::registry();
        let streams_open = Family::<RpcLabels, Gauge>::default();
        registry.register(
            "trellis_controller_streams_open",
            "Discovery streams open now, by RPC",
            streams_open.clone(),
        );
        let streams = Family::<RpcLabels, Counter>::default();
        registry.register(
            "trellis_controller_streams",
            "Discovery streams opened, by RPC",
            streams.clone(),
        );
        let updates = Family::<RpcLabels, Counter>::default();
        registry.register(
            "trellis_controller_updates",
            "Snapshots sent on discovery streams (the first of each stream included), by RPC",
            updates.clone(),
        );
        let answers_computed = Family::<RpcLabels, Counter>::default();
        registry.register(
            "trellis_controller_answers_computed",
            "Answers computed (for a new question, or because something it read changed), by RPC",
            answers_computed.clone(),
        );
        let questions = Family::<RpcLabels, Gauge>::default();
        registry.register(
            "trellis_controller_questions",
            "Distinct questions open streams ask (each answered once for all its streams), by RPC",
            questions.clone(),
        );
        let source_errors = Family::<SourceLabels, Counter>::default();
        registry.register(
            "trellis_controller_source_errors",
            "Failures of the source (a failed watch, an unreadable or refused file), by source and resource",
            source_errors.clone(),
        );
        let objects = Family::<KindLabels, Gauge>::default();
        registry.register(
            "trellis_controller_objects",
            "Objects in the store, by kind",
            objects.clone(),
        );
        let annotation_errors = Family::<AnnotationLabels, Counter>::default();
        registry.register(
            "trellis_controller_annotation_errors",
            "Bad annotation or field values seen (each distinct one once), by kind and annotation; the object applies without them",
            annotation_errors.clone(),
        );
        let warnings = Gauge::default();
        registry.register(
            "trellis_controller_warnings",
            "Bad annotation or field values in the current state (listed at /warnings)",
            warnings.clone(),
        );
        let snapshots = Counter::default();
        registry.register(
            "trellis_controller_snapshots",
            "Snapshots of the store published to the streams",
            snapshots.clone(),
        );
        let file_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "trellis_controller_file_reloads",
            "Changed objects files read, by whether they were taken or refused",
            file_reloads.clone(),
        );
        let trust_roots_copies = Gauge::default();
        registry.register(
            "trellis_controller_trust_roots_copies",
            "Copies of the trust roots ConfigMap the controller manages, as its watch shows them",
            trust_roots_copies.clone(),
        );
        let trust_roots_foreign = Gauge::default();
        registry.register(
            "trellis_controller_trust_roots_foreign_configmaps",
            "Namespaces that need a trust roots copy but hold a ConfigMap of that name the controller does not manage (left alone)",
            trust_roots_foreign.clone(),
        );
        let trust_roots_sync_errors = Family::<OperationLabels, Counter>::default();
        registry.register(
            "trellis_controller_trust_roots_sync_errors",
            "Failures of the trust roots distributor, by operation (create, update, delete, watch, source: the source ConfigMap went missing or unusable)",
            trust_roots_sync_errors.clone(),
        );
        let route_status_writes = Family::<StatusWriteLabels, Counter>::default();
        registry.register(
            "trellis_controller_route_status_writes",
            "Writes of routes' status.parents, by kind and result (written, conflict: the route changed meanwhile, failed)",
            route_status_writes.clone(),
        );
        let watches = Arc::new(Watches::new(&mut registry));
        Self {
            registry,
            streams_open,
            streams,
            updates,
            answers_computed,
            questions,
            source_errors,
            objects,
            annotation_errors,
            warnings,
            snapshots,
            file_reloads,
            trust_roots_copies,
            trust_roots_foreign,
            trust_roots_sync_errors,
            route_status_writes,
            watches,
        }
    }

    /// The state of every Kubernetes watch (its metrics are in this
    /// registry).
    pub fn watches(&self) -> &Arc<Watches> {
        &self.watches
    }

    pub fn route_status_write(&self, kind: Kind, result: StatusWrite) {
        self.route_status_writes
            .get_or_create(&StatusWriteLabels {
                kind: kind.as_str(),
                result: result.as_str(),
            })
            .inc();
    }

    pub fn route_status_writes(&self, kind: Kind, result: StatusWrite) -> u64 {
        self.route_status_writes
            .get_or_create(&StatusWriteLabels {
                kind: kind.as_str(),
                result: result.as_str(),
            })
            .get()
    }

    /// A stream opened; it counts as open until the guard is dropped.
    pub fn stream_opened(&self, rpc: Rpc) -> OpenStream {
        let labels = RpcLabels { rpc: rpc.as_str() };
        self.streams.get_or_create(&labels).inc();
        let gauge = self.streams_open.get_or_create(&labels).clone();
        gauge.inc();
        OpenStream(gauge)
    }

    pub fn update_sent(&self, rpc: Rpc) {
        self.updates
            .get_or_create(&RpcLabels { rpc: rpc.as_str() })
            .inc();
    }

    pub fn updates_sent(&self, rpc: Rpc) -> u64 {
        self.updates
            .get_or_create(&RpcLabels { rpc: rpc.as_str() })
            .get()
    }

    pub fn answer_computed(&self, rpc: Rpc) {
        self.answers_computed
            .get_or_create(&RpcLabels { rpc: rpc.as_str() })
            .inc();
    }

    pub fn answers_computed(&self, rpc: Rpc) -> u64 {
        self.answers_computed
            .get_or_create(&RpcLabels { rpc: rpc.as_str() })
            .get()
    }

    pub fn questions(&self, rpc: Rpc, open: usize) {
        self.questions
            .get_or_create(&RpcLabels { rpc: rpc.as_str() })
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    pub fn source_error(&self, source: &'static str, resource: &'static str) {
        self.source_errors
            .get_or_create(&SourceLabels { source, resource })
            .inc();
    }

    pub fn source_errors(&self, source: &'static str, resource: &'static str) -> u64 {
        self.source_errors
            .get_or_create(&SourceLabels { source, resource })
            .get()
    }

    pub fn file_reload(&self, taken: bool) {
        let result = if taken { "taken" } else { "refused" };
        self.file_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// What the trust roots distributor's last plan saw.
    pub fn trust_roots_observed(&self, copies: usize, foreign: usize) {
        self.trust_roots_copies
            .set(i64::try_from(copies).unwrap_or(i64::MAX));
        self.trust_roots_foreign
            .set(i64::try_from(foreign).unwrap_or(i64::MAX));
    }

    /// `operation`: `create`, `update`, `delete`, `watch` or `source`.
    pub fn trust_roots_sync_error(&self, operation: &'static str) {
        self.trust_roots_sync_errors
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    pub fn trust_roots_sync_errors(&self, operation: &'static str) -> u64 {
        self.trust_roots_sync_errors
            .get_or_create(&OperationLabels { operation })
            .get()
    }

    /// (copies, foreign) as last observed.
    pub fn trust_roots_gauges(&self) -> (i64, i64) {
        (
            self.trust_roots_copies.get(),
            self.trust_roots_foreign.get(),
        )
    }

    /// A snapshot was published: object counts and current warnings.
    pub fn published(&self, snap: &Snapshot) {
        self.snapshots.inc();
        for kind in Kind::ALL {
            let n = i64::try_from(snap.objects().count(kind)).unwrap_or(i64::MAX);
            self.objects
                .get_or_create(&KindLabels {
                    kind: kind.as_str(),
                })
                .set(n);
        }
        self.warnings
            .set(i64::try_from(snap.problems().len()).unwrap_or(i64::MAX));
    }

    /// A problem not in the previous snapshot.
    pub fn annotation_error(&self, p: &Problem) {
        self.annotation_errors
            .get_or_create(&AnnotationLabels {
                kind: p.kind.as_str(),
                annotation: p.field,
            })
            .inc();
    }

    pub fn annotation_errors(&self, kind: Kind, annotation: &'static str) -> u64 {
        self.annotation_errors
            .get_or_create(&AnnotationLabels {
                kind: kind.as_str(),
                annotation,
            })
            .get()
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        telemetry::encode(&self.registry)
    }
}

/// Decrements the open-streams gauge when the stream ends.
pub struct OpenStream(Gauge);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}
