//! The webhook's metrics. Label values come from fixed sets (outcomes,
//! [`SkipReason::label`](crate::SkipReason::label), error kinds), never
//! from a review's contents.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use trellis_core::telemetry;

use super::review::Verdict;

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReviewLabels {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// 0.5 ms doubling to about 4 s: a review is usually a fraction of a
/// millisecond, or up to the namespace wait when its namespace is new.
fn review_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

pub struct Metrics {
    registry: Registry,
    reviews: Family<ReviewLabels, Counter>,
    duration: HistogramFamily<OutcomeLabels>,
    tls_reloads: Family<ResultLabels, Counter>,
    tls_handshake_failures: Counter,
    cert_expiry: Gauge,
    namespace_misses: Counter,
    namespace_watch_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = telemetry::registry();
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "trellis_injector_reviews",
            "Admission reviews answered, by outcome (injected; injected_pod_security_refused: injected, but the namespace's Pod Security level will make the API server refuse the pod; skipped; refused; error) and reason (injected, the skip reason, floor_*, pod_security_<level>, or the kind of error)",
            reviews.clone(),
        );
        let duration: HistogramFamily<OutcomeLabels> =
            Family::new_with_constructor(review_histogram);
        registry.register_with_unit(
            "trellis_injector_review_duration",
            "Time from a review's arrival to its answer, body read and namespace wait included, by outcome",
            Unit::Seconds,
            duration.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        // Both series from the start, so an alert on failures sees a 0.
        for result in ["success", "failure"] {
            tls_reloads
                .get_or_create(&ResultLabels { result })
                .inc_by(0);
        }
        registry.register(
            "trellis_injector_tls_reloads",
            "Changed serving certificate files read, by result (success: served from now on; failure: refused, the previous pair kept)",
            tls_reloads.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "trellis_injector_tls_handshake_failures",
            "TLS handshakes on the webhook listener that failed or timed out",
            tls_handshake_failures.clone(),
        );
        let cert_expiry = Gauge::default();
        registry.register(
            "trellis_injector_tls_cert_expiry_timestamp_seconds",
            "When the serving certificate in use expires (Unix time)",
            cert_expiry.clone(),
        );
        let namespace_misses = Counter::default();
        registry.register(
            "trellis_injector_namespace_cache_misses",
            "Reviews whose namespace was not in the cache after the wait; decided without the namespace's labels and annotations",
            namespace_misses.clone(),
        );
        let namespace_watch_errors = Counter::default();
        registry.register(
            "trellis_injector_namespace_watch_errors",
            "Failures of the Namespace watch (retried with backoff, the cache kept meanwhile)",
            namespace_watch_errors.clone(),
        );
        Self {
            registry,
            reviews,
            duration,
            tls_reloads,
            tls_handshake_failures,
            cert_expiry,
            namespace_misses,
            namespace_watch_errors,
        }
    }

    /// One review answered.
    pub fn review(&self, verdict: &Verdict, took: Duration) {
        let (outcome, reason) = (verdict.outcome(), verdict.reason());
        self.reviews
            .get_or_create(&ReviewLabels { outcome, reason })
            .inc();
        self.duration
            .get_or_create(&OutcomeLabels { outcome })
            .observe(took.as_secs_f64());
    }

    /// Reviews counted so far with these labels.
    pub fn reviews(&self, outcome: &'static str, reason: &'static str) -> u64 {
        self.reviews
            .get_or_create(&ReviewLabels { outcome, reason })
            .get()
    }

    pub fn tls_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.tls_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Reloads counted so far: `result` is `success` or `failure`.
    pub fn tls_reloads(&self, result: &'static str) -> u64 {
        self.tls_reloads
            .get_or_create(&ResultLabels { result })
            .get()
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    pub fn tls_handshake_failures(&self) -> u64 {
        self.tls_handshake_failures.get()
    }

    pub fn set_cert_expiry(&self, unix_seconds: i64) {
        self.cert_expiry.set(unix_seconds);
    }

    pub fn namespace_miss(&self) {
        self.namespace_misses.inc();
    }

    pub fn namespace_misses(&self) -> u64 {
        self.namespace_misses.get()
    }

    pub fn namespace_watch_error(&self) {
        self.namespace_watch_errors.inc();
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        telemetry::encode(&self.registry)
    }
}
