//! Tracing: a `tracing` span per connection, and an OpenTelemetry span per
//! HTTP request, exported over OTLP/gRPC. Off unless a collector is
//! configured (`TRELLIS_PROXY_TRACE_COLLECTOR`).
//!
//! Per connection, [`ConnFacts`] (an id and the client's address) scope
//! the connection's task and every HTTP/2 stream task spawned for it
//! ([`ConnExecutor`]), and the `conn` span carries them into every log line.
//!
//! Per request, the request path calls, in order:
//!
//! 1. [`Tracing::request`] when the request arrives: reads its trace
//!    context ([`context::extract`]: W3C `traceparent`, else B3), decides
//!    whether to sample (parent-based: the caller's decision when it made
//!    one, otherwise [`TraceConfig::sampling`] of new traces, by trace id
//!    so every proxy of a trace agrees), and returns a [`RequestSpan`].
//! 2. [`RequestSpan::inject`] on the request sent upstream: a `traceparent`
//!    naming the proxy's span as parent (and `b3`, when the caller spoke
//!    B3), so the next hop continues the trace.
//! 3. [`RequestSpan::end`] when the response has ended (the golden
//!    metrics' moment): the span, with the request's final route, service
//!    and peer, goes to the export queue ([`export`]), which drops (and
//!    counts) rather than wait.
//!
//! The outbound proxy's span is the request's CLIENT span, a child of the
//! application's; the inbound proxy's is its SERVER span, a child of the
//! outbound proxy's.
//!
//! Cost: with tracing off, [`Tracing::request`] is one branch and returns
//! [`RequestSpan`]'s empty variant (no header is read, nothing allocated;
//! `inject` and `end` are one branch each). With tracing on, a request
//! that is not sampled costs its headers' parse and, when it came without
//! a W3C context, one `traceparent` header (so the next proxy does not
//! start a second trace); only a sampled request allocates its span.

pub mod context;
pub mod export;

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::HeaderMap;
use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use opentelemetry_sdk::Resource;
use serde::Serialize;
use trellis_core::addr::{ClientAddr, OrigDstAddr};
use trellis_core::shutdown::Shutdown;

use crate::metrics::{Direction, RouteLabels, TraceMetrics};
pub use context::{Extracted, Format, Parent, SpanId, TraceId};

/// The tracing settings: present when a collector is configured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceConfig {
    /// The collector's OTLP/gRPC endpoint, `http://host:port`.
    pub collector: String,
    /// The share of new traces sampled, 0 to 1; a request whose caller
    /// decided is sampled as the caller decided.
    pub sampling: f64,
}

pub use trellis_core::contract::trace::{parse_collector, parse_sampling};

/// The proxy's tracing: off, or a sampler and an export queue. Cheap to
/// clone (a reference count).
#[derive(Clone, Default)]
pub struct Tracing(Option<Arc<Active>>);

struct Active {
    sampling: f64,
    queue: export::Queue,
    scope: InstrumentationScope,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("the OTLP exporter to {collector}: {reason}")]
pub struct TraceError {
    collector: String,
    reason: String,
}

impl Tracing {
    /// Tracing off: every call is a no-op.
    pub const OFF: Tracing = Tracing(None);

    pub fn off() -> Self {
        Self::OFF
    }

    /// Tracing to the collector `config` names, or off without a config.
    /// Must run inside the proxy's runtime (the gRPC channel is made here,
    /// and connects when the first batch leaves).
    pub fn start(
        config: Option<&TraceConfig>,
        workload: &str,
        metrics: TraceMetrics,
        shutdown: &Shutdown,
    ) -> Result<Self, TraceError> {
        use opentelemetry_otlp::WithExportConfig as _;
        let Some(config) = config else {
            return Ok(Self::off());
        };
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.collector.clone())
            .with_timeout(export::EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TraceError {
                collector: config.collector.clone(),
                reason: e.to_string(),
            })?;
        exporter.set_resource(&resource(workload));
        tracing::info!(collector = %config.collector, sampling = config.sampling, "tracing on");
        Ok(Self::with_exporter(
            exporter,
            config.sampling,
            metrics,
            shutdown,
        ))
    }

    /// Tracing to `exporter` (tests: an in-memory one).
    pub fn with_exporter<E: SpanExporter + 'static>(
        exporter: E,
        sampling: f64,
        metrics: TraceMetrics,
        shutdown: &Shutdown,
    ) -> Self {
        let queue = export::start(exporter, export::QUEUE_CAPACITY, metrics, shutdown);
        let scope = InstrumentationScope::builder("trellis-proxy")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        Self(Some(Arc::new(Active {
            sampling,
            queue,
            scope,
        })))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Starts the span of a request arriving at the `direction` listener
    /// for `dst`: a CLIENT span outbound, a SERVER span inbound.
    pub fn request<B>(
        &self,
        direction: Direction,
        dst: OrigDstAddr,
        req: &http::Request<B>,
    ) -> RequestSpan {
        let Some(active) = &self.0 else {
            return RequestSpan(Span::Off);
        };
        let incoming = context::extract(req.headers());
        let trace_id = incoming.parent.map_or_else(new_trace_id, |p| p.trace_id);
        let sampled = incoming
            .sampled
            .unwrap_or_else(|| ratio_samples(trace_id, active.sampling));
        let span_id = new_span_id();
        if !sampled {
            // A W3C context already says "not sampled" to the next hop.
            let write = incoming.format != Some(Format::W3c);
            return RequestSpan(Span::Unsampled {
                trace_id,
                span_id,
                write,
            });
        }
        let conn = CONN.try_with(|c| *c).ok();
        RequestSpan(Span::Recording(Box::new(Recording {
            active: active.clone(),
            trace_id,
            span_id,
            parent: incoming.parent.map(|p| p.span_id),
            b3: matches!(incoming.format, Some(Format::B3Single | Format::B3Multi)),
            direction,
            dst,
            conn,
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            start: SystemTime::now(),
        })))
    }
}

/// `service.name` is `trellis-proxy` for every proxy (as an operator of
/// Linkerd would expect); which pod's proxy it was is in the Kubernetes
/// attributes, from `TRELLIS_PROXY_WORKLOAD` (`namespace/pod`).
fn resource(workload: &str) -> Resource {
    let mut attributes = vec![KeyValue::new("service.instance.id", workload.to_string())];
    if let Some((namespace, pod)) = workload.split_once('/') {
        attributes.push(KeyValue::new("k8s.namespace.name", namespace.to_string()));
        attributes.push(KeyValue::new("k8s.pod.name", pod.to_string()));
    }
    Resource::builder_empty()
        .with_service_name("trellis-proxy")
        .with_attributes(attributes)
        .build()
}

/// Parent-based sampling's root decision: the trace id's low 64 bits
/// against the ratio, as OpenTelemetry's `TraceIdRatioBased` decides, so
/// every proxy that sees the trace decides alike.
pub fn ratio_samples(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id.0[8..]);
    // `as` saturates: ratio < 1 keeps the product below 2^64.
    let threshold = (ratio * (u64::MAX as f64)) as u64;
    u64::from_be_bytes(low) < threshold
}

fn new_trace_id() -> TraceId {
    loop {
        let id: [u8; 16] = rand::random();
        if id != [0; 16] {
            return TraceId(id);
        }
    }
}

fn new_span_id() -> SpanId {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return SpanId(id);
        }
    }
}

/// One request's span, from its arrival to the end of its response.
pub struct RequestSpan(Span);

enum Span {
    /// Tracing is off.
    Off,
    /// Not sampled: nothing is recorded; `write`: the next hop is told so
    /// (the request came without a W3C context to pass on).
    Unsampled {
        trace_id: TraceId,
        span_id: SpanId,
        write: bool,
    },
    Recording(Box<Recording>),
}

struct Recording {
    active: Arc<Active>,
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    /// The caller spoke B3: the next hop is told in B3 too.
    b3: bool,
    direction: Direction,
    dst: OrigDstAddr,
    conn: Option<ConnFacts>,
    method: http::Method,
    path: String,
    start: SystemTime,
}

/// How a request ended, for its span.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub status: u16,
    pub grpc_status: Option<u32>,
    /// The golden metrics' classification: a failure.
    pub failed: bool,
    /// When the proxy answered with an error: its reason code (the
    /// `trellis-proxy-error` header) and whose fault it was.
    pub error: Option<(&'static str, &'static str)>,
}

impl RequestSpan {
    /// A span that records nothing (tracing off).
    pub const OFF: RequestSpan = RequestSpan(Span::Off);

    /// The trace this request belongs to, when tracing is on.
    pub fn trace_id(&self) -> Option<TraceId> {
        match &self.0 {
            Span::Off => None,
            Span::Unsampled { trace_id, .. } => Some(*trace_id),
            Span::Recording(r) => Some(r.trace_id),
        }
    }

    /// Whether the span will be exported.
    pub fn is_recording(&self) -> bool {
        matches!(self.0, Span::Recording(_))
    }

    /// Writes the context the next hop continues into the upstream
    /// request's `headers`: `traceparent` naming this span as the parent
    /// (`tracestate` passes untouched). When the caller spoke B3, its B3
    /// headers are replaced by one `b3` header naming this span, so a B3
    /// application upstream sees the same parent as a W3C one.
    pub fn inject(&self, headers: &mut HeaderMap) {
        match &self.0 {
            Span::Off | Span::Unsampled { write: false, .. } => {}
            Span::Unsampled {
                trace_id,
                span_id,
                write: true,
            } => {
                let tp = context::format_traceparent(*trace_id, *span_id, false);
                headers.insert(context::TRACEPARENT, tp);
            }
            Span::Recording(r) => {
                let tp = context::format_traceparent(r.trace_id, r.span_id, true);
                headers.insert(context::TRACEPARENT, tp);
                if r.b3 {
                    for name in &context::B3_HEADERS {
                        headers.remove(name);
                    }
                    let b3 = context::format_b3(r.trace_id, r.span_id, true);
                    headers.insert(context::B3, b3);
                }
            }
        }
    }

    /// Ends the span: the request's final labels (route, service, peer)
    /// and how it ended become its attributes, and it is queued for
    /// export (or dropped and counted, never waited for).
    pub fn end(self, labels: &RouteLabels, outcome: Outcome) {
        let Span::Recording(r) = self.0 else { return };
        let r = *r;
        let span = r.span_data(labels, outcome, SystemTime::now());
        r.active.queue.push(span);
    }
}

impl Recording {
    fn span_data(&self, labels: &RouteLabels, outcome: Outcome, end: SystemTime) -> SpanData {
        let route = labels.route.as_str();
        let name = if route.is_empty() || route == "default" {
            Cow::Owned(self.method.as_str().to_string())
        } else {
            Cow::Owned(format!("{} {route}", self.method))
        };
        let mut attributes = Vec::with_capacity(16);
        attributes.extend([
            KeyValue::new("trellis.direction", self.direction.as_str()),
            KeyValue::new("trellis.dst.addr", self.dst.to_string()),
            KeyValue::new("trellis.service", labels.service.to_string()),
            KeyValue::new("trellis.route", route.to_string()),
            KeyValue::new("trellis.tls", labels.tls),
            KeyValue::new("http.request.method", self.method.as_str().to_string()),
            KeyValue::new("url.path", self.path.clone()),
            KeyValue::new("http.response.status_code", i64::from(outcome.status)),
        ]);
        if !labels.peer.as_str().is_empty() {
            attributes.push(KeyValue::new(
                "trellis.peer.identity",
                labels.peer.to_string(),
            ));
        }
        if let Some(conn) = self.conn {
            attributes.extend([
                KeyValue::new("trellis.connection.id", conn.id as i64),
                KeyValue::new("client.address", conn.client.0.ip().to_string()),
                KeyValue::new("client.port", i64::from(conn.client.0.port())),
            ]);
        }
        if let Some(code) = outcome.grpc_status {
            attributes.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
        }
        if let Some((reason, fault)) = outcome.error {
            attributes.push(KeyValue::new("trellis.error.reason", reason));
            attributes.push(KeyValue::new("trellis.error.fault", fault));
        }
        let status = if outcome.failed {
            let error_type = match outcome.error {
                Some((reason, _)) => reason.to_string(),
                None => outcome.status.to_string(),
            };
            attributes.push(KeyValue::new("error.type", error_type));
            Status::error(format!("failed with status {}", outcome.status))
        } else {
            Status::Unset
        };
        let span_context = SpanContext::new(
            opentelemetry::TraceId::from_bytes(self.trace_id.0),
            opentelemetry::SpanId::from_bytes(self.span_id.0),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        SpanData {
            span_context,
            parent_span_id: self.parent.map_or(opentelemetry::SpanId::INVALID, |p| {
                opentelemetry::SpanId::from_bytes(p.0)
            }),
            parent_span_is_remote: self.parent.is_some(),
            span_kind: match self.direction {
                Direction::Outbound => SpanKind::Client,
                Direction::Inbound => SpanKind::Server,
            },
            name,
            start_time: self.start,
            end_time: end.max(self.start + Duration::from_nanos(1)),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.active.scope.clone(),
        }
    }
}

/// What every request of one connection shares for its span and logs: the
/// connection's id (also on its `conn` log span) and client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnFacts {
    pub id: u64,
    pub client: ClientAddr,
}

impl ConnFacts {
    /// The facts of a newly accepted connection, with the next id.
    pub fn next(client: ClientAddr) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            client,
        }
    }
}

tokio::task_local! {
    static CONN: ConnFacts;
}

/// Runs one connection's future with its facts in scope.
pub fn conn_scope<F: Future>(facts: ConnFacts, fut: F) -> impl Future<Output = F::Output> {
    CONN.scope(facts, fut)
}

/// hyper's executor for a connection's HTTP/2 streams: each stream's task
/// keeps the connection's facts and its `conn` log span.
#[derive(Clone)]
pub struct ConnExecutor {
    span: tracing::Span,
    conn: Option<ConnFacts>,
}

impl ConnExecutor {
    /// The executor of the connection whose task calls this.
    pub fn current() -> Self {
        Self {
            span: tracing::Span::current(),
            conn: CONN.try_with(|c| *c).ok(),
        }
    }
}

impl<F> hyper::rt::Executor<F> for ConnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        use tracing::Instrument as _;
        let fut = fut.instrument(self.span.clone());
        match self.conn {
            Some(facts) => drop(tokio::spawn(CONN.scope(facts, fut))),
            None => drop(tokio::spawn(fut)),
        }
    }
}

#[cfg(test)]
mod tests;
