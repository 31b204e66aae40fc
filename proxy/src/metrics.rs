//! The proxy's metrics: golden HTTP metrics per route, TCP metrics, protocol
//! detection outcomes, and process metrics. Names and labels are the
//! contract of SPEC.md; label values are bounded (no addresses, no paths).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use trellis_core::telemetry;

use crate::detect::{Protocol, Reason};

/// Upper bounds of the latency histogram, in seconds: fine below a
/// millisecond so a p99 of a sub-millisecond service can be read.
pub const LATENCY_BUCKETS: [f64; 20] = [
    0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Which listener a connection arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(self.as_str())
    }
}

/// A label value shared cheaply between label sets (a refcount, no copy).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label(Arc<str>);

impl Label {
    pub fn new(s: &str) -> Self {
        Self(Arc::from(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl EncodeLabelValue for Label {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Classification {
    Success,
    Failure,
}

impl EncodeLabelValue for Classification {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(match self {
            Self::Success => "success",
            Self::Failure => "failure",
        })
    }
}

/// The labels every golden metric of one route carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub direction: Direction,
    pub service: Label,
    pub route: Label,
    pub tls: bool,
    pub peer: Label,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResponseLabels {
    #[prometheus(flatten)]
    pub route: RouteLabels,
    pub status_code: u16,
    pub classification: Classification,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: Direction,
    pub peer: Label,
    pub tls: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DetectLabels {
    pub direction: Direction,
    pub protocol: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthzLabels {
    pub direction: Direction,
    pub port: u16,
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TlsFailureLabels {
    pub direction: Direction,
    pub reason: &'static str,
}

/// Retries of one route, by why.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RetryLabels {
    pub direction: Direction,
    pub service: Label,
    pub route: Label,
    pub reason: &'static str,
}

/// One route of one service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceRouteLabels {
    pub direction: Direction,
    pub service: Label,
    pub route: Label,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceOnlyLabels {
    pub service: Label,
}

/// Retries, budgets, timeouts, failure accrual and discovery.
#[derive(Default)]
pub struct TrafficMetrics {
    pub retries: Family<RetryLabels, Counter>,
    pub budget_exhausted: Family<ServiceRouteLabels, Counter>,
    pub timeouts: Family<ServiceRouteLabels, Counter>,
    pub ejections: Family<ServiceOnlyLabels, Counter>,
    /// Outbound connections whose destination the controller did not know
    /// (forwarded as they were).
    pub unknown_destinations: Counter,
    /// Outbound connections and requests refused rather than sent in
    /// plaintext, by reason.
    pub plaintext_refused: Family<ReasonLabels, Counter>,
    pub discovery: std::sync::Arc<crate::discovery::DiscoveryStats>,
}

/// Spans sent to the trace collector, and spans dropped on the way.
#[derive(Clone, Default)]
pub struct TraceMetrics {
    pub exported: Counter,
    pub dropped: Family<ReasonLabels, Counter>,
}

impl TraceMetrics {
    pub fn dropped(&self, why: crate::trace::export::Dropped, n: u64) {
        self.dropped
            .get_or_create(&ReasonLabels {
                reason: why.as_str(),
            })
            .inc_by(n);
    }
}

/// Every metric the proxy exports, registered once.
pub struct Metrics {
    pub traffic: TrafficMetrics,
    pub trace: TraceMetrics,
    pub authz_allowed: Family<AuthzLabels, Counter>,
    pub authz_denied: Family<AuthzLabels, Counter>,
    pub tls_failures: Family<TlsFailureLabels, Counter>,
    pub identity: IdentityMetrics,
    registry: Registry,
    pub http_requests: Family<ResponseLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram>,
    pub tcp_open: Family<TcpLabels, Gauge>,
    pub tcp_total: Family<TcpLabels, Counter>,
    pub tcp_bytes: Family<TcpLabels, Counter>,
    pub detections: Family<DetectLabels, Counter>,
    pub services: ServiceLabels,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = telemetry::registry();
        let http_requests = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "trellis_http_requests",
            "HTTP requests completed, by route, status and classification",
            http_requests.clone(),
        );
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS)) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "trellis_http_request_duration",
            "Time from a request's arrival to the end of its response",
            Unit::Seconds,
            http_duration.clone(),
        );
        let tcp_open = Family::<TcpLabels, Gauge>::default();
        registry.register(
            "trellis_tcp_connections_open",
            "TCP connections currently open through the proxy",
            tcp_open.clone(),
        );
        let tcp_total = Family::<TcpLabels, Counter>::default();
        registry.register(
            "trellis_tcp_connections",
            "TCP connections accepted by the proxy",
            tcp_total.clone(),
        );
        let tcp_bytes = Family::<TcpLabels, Counter>::default();
        registry.register_with_unit(
            "trellis_tcp",
            "Bytes moved between clients and the proxy, both ways",
            Unit::Bytes,
            tcp_bytes.clone(),
        );
        let detections = Family::<DetectLabels, Counter>::default();
        registry.register(
            "trellis_protocol_detections",
            "Protocol detection outcomes, by protocol and why detection ended",
            detections.clone(),
        );
        let authz_allowed = Family::<AuthzLabels, Counter>::default();
        registry.register(
            "trellis_authz_allowed",
            "Inbound connections and requests the policy allowed (reason audit_*: allowed only because the policy is audit)",
            authz_allowed.clone(),
        );
        let authz_denied = Family::<AuthzLabels, Counter>::default();
        registry.register(
            "trellis_authz_denied",
            "Inbound connections and requests the policy refused",
            authz_denied.clone(),
        );
        let tls_failures = Family::<TlsFailureLabels, Counter>::default();
        registry.register(
            "trellis_tls_handshake_failures",
            "Mutual TLS handshakes that failed, by reason",
            tls_failures.clone(),
        );
        let identity = IdentityMetrics::default();
        registry.register(
            "trellis_identity_cert_expiry_timestamp",
            "When this proxy's certificate expires, in seconds since the Unix epoch",
            identity.expiry.clone(),
        );
        registry.register(
            "trellis_identity_renewals",
            "Certificate requests to the identity service, by result",
            identity.renewals.clone(),
        );
        let traffic = TrafficMetrics::default();
        registry.register(
            "trellis_http_retries",
            "Retries made, by route and reason",
            traffic.retries.clone(),
        );
        registry.register(
            "trellis_http_retry_budget_exhausted",
            "Failures passed through because the route's retry budget was spent",
            traffic.budget_exhausted.clone(),
        );
        registry.register(
            "trellis_http_request_timeouts",
            "Requests answered 504 (gRPC DEADLINE_EXCEEDED) because a route timeout expired",
            traffic.timeouts.clone(),
        );
        registry.register(
            "trellis_endpoint_ejections",
            "Endpoints taken out of balancing by failure accrual",
            traffic.ejections.clone(),
        );
        registry.register(
            "trellis_discovery_unknown_destinations",
            "Outbound connections to destinations the controller does not know, forwarded as they were",
            traffic.unknown_destinations.clone(),
        );
        registry.register(
            "trellis_outbound_plaintext_refused",
            "Outbound connections and requests refused rather than sent in plaintext (outbound mTLS policy), by reason",
            traffic.plaintext_refused.clone(),
        );
        registry.register(
            "trellis_discovery_updates",
            "Snapshots received from the controller",
            traffic.discovery.updates.clone(),
        );
        registry.register(
            "trellis_discovery_refused",
            "Snapshots from the controller refused as malformed (the previous one kept)",
            traffic.discovery.refused.clone(),
        );
        registry.register(
            "trellis_discovery_stream_errors",
            "Controller streams that failed or ended (reopened with backoff)",
            traffic.discovery.stream_errors.clone(),
        );
        let trace = TraceMetrics::default();
        registry.register(
            "trellis_trace_spans_exported",
            "Spans the trace collector accepted",
            trace.exported.clone(),
        );
        registry.register(
            "trellis_trace_spans_dropped",
            "Spans dropped rather than exported, by reason: queue_full (the collector is slow or down), export_failed, shutdown",
            trace.dropped.clone(),
        );
        Self {
            traffic,
            trace,
            authz_allowed,
            authz_denied,
            tls_failures,
            identity,
            registry,
            http_requests,
            http_duration,
            tcp_open,
            tcp_total,
            tcp_bytes,
            detections,
            services: ServiceLabels::new(MAX_SERVICE_LABELS),
        }
    }

    pub fn detected(&self, direction: Direction, protocol: Protocol, reason: Reason) {
        self.detections
            .get_or_create(&DetectLabels {
                direction,
                protocol: protocol.as_str(),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts a failed mutual TLS handshake, if `e` is one.
    pub fn tls_failure(&self, direction: Direction, e: &crate::error::ProxyError) {
        if let crate::error::ProxyError::TlsHandshake { reason, .. } = e {
            self.tls_failures
                .get_or_create(&TlsFailureLabels { direction, reason })
                .inc();
        }
    }

    /// Counts one policy decision.
    pub fn authz(&self, direction: Direction, port: u16, decision: crate::policy::Decision) {
        use crate::policy::Decision;
        let (family, reason) = match decision {
            Decision::Allow(r) => (&self.authz_allowed, r),
            Decision::Deny(r) => (&self.authz_denied, r),
            Decision::AuditAllow("unauthenticated") => {
                (&self.authz_allowed, "audit_unauthenticated")
            }
            Decision::AuditAllow(_) => (&self.authz_allowed, "audit_unauthorized"),
        };
        family
            .get_or_create(&AuthzLabels {
                direction,
                port,
                reason,
            })
            .inc();
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        telemetry::encode(&self.registry)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RenewalLabels {
    pub result: &'static str,
}

/// The proxy's certificate: when it expires, how renewals went.
#[derive(Default)]
pub struct IdentityMetrics {
    pub expiry: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub renewals: Family<RenewalLabels, Counter>,
}

/// Most distinct `service` label values kept; later ones are counted as
/// `overflow`, so a client sending random Host headers cannot grow the
/// metrics without bound.
pub const MAX_SERVICE_LABELS: usize = 1000;

/// Interns `service` label values: an authority such as
/// `web.demo.svc.cluster.local:80`, validated and bounded in number.
pub struct ServiceLabels {
    max: usize,
    known: Mutex<HashSet<Label>>,
    overflow: Label,
    invalid: Label,
}

impl ServiceLabels {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            known: Mutex::new(HashSet::new()),
            overflow: Label::new("overflow"),
            invalid: Label::new("invalid"),
        }
    }

    /// The label for a request's authority (`host` or `host:port`); a missing
    /// port is `default_port`, the original destination's.
    pub fn get(&self, authority: &str, default_port: u16) -> Label {
        // Most requests name an authority already in normal form (lower
        // case, with a port): looked up as it is, without building a string
        // (issue 13: per-request cost).
        if is_normal_authority(authority) {
            if let Some(l) = self.lock().get(authority) {
                return l.clone();
            }
        }
        let Some(value) = normalize_authority(authority, default_port) else {
            return self.invalid.clone();
        };
        let mut known = self.lock();
        if let Some(l) = known.get(value.as_str()) {
            return l.clone();
        }
        if known.len() >= self.max {
            return self.overflow.clone();
        }
        let l = Label::new(&value);
        known.insert(l.clone());
        l
    }
}

impl ServiceLabels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Label>> {
        // A panic while holding this lock cannot leave the set invalid.
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether [`normalize_authority`] would return `authority` unchanged
/// (whatever the default port), checked without allocating.
fn is_normal_authority(authority: &str) -> bool {
    !authority.is_empty()
        && authority.len() <= 255
        && authority.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
        && has_port(authority)
}

fn has_port(a: &str) -> bool {
    if a.starts_with('[') {
        a.contains("]:")
    } else {
        a.contains(':')
    }
}

impl std::borrow::Borrow<str> for Label {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Lower-cased `host:port`, or `None` when the authority holds characters no
/// host name or address has.
pub fn normalize_authority(authority: &str, default_port: u16) -> Option<String> {
    let a = authority.trim();
    if a.is_empty() || a.len() > 255 {
        return None;
    }
    let ok = a
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'));
    if !ok {
        return None;
    }
    let mut s = a.to_ascii_lowercase();
    if !has_port(a) {
        let _ = write!(s, ":{default_port}");
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        let cases = [
            (
                "web.demo.svc.cluster.local",
                Some("web.demo.svc.cluster.local:80"),
            ),
            ("Web.Demo:8080", Some("web.demo:8080")),
            ("10.0.0.1:443", Some("10.0.0.1:443")),
            ("[::1]", Some("[::1]:80")),
            ("[::1]:8080", Some("[::1]:8080")),
            ("", None),
            ("a b", None),
            ("evil/path", None),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_authority(input, 80).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn normal_authorities_are_recognised_without_normalizing() {
        for a in [
            "web.demo.svc.cluster.local:80",
            "Web.Demo:8080",
            "web.demo",
            "[::1]",
            "[::1]:8080",
            "10.0.0.1:443",
            " a:1",
            "",
            "a b:1",
        ] {
            let normal = normalize_authority(a, 80).is_some_and(|n| n == a);
            assert_eq!(is_normal_authority(a), normal, "{a:?}");
        }
    }

    #[test]
    fn service_labels_are_bounded() {
        let s = ServiceLabels::new(2);
        assert_eq!(s.get("a", 80).as_str(), "a:80");
        assert_eq!(s.get("b:1", 80).as_str(), "b:1");
        assert_eq!(s.get("a:80", 1).as_str(), "a:80");
        assert_eq!(s.get("c", 80).as_str(), "overflow");
        assert_eq!(s.get("bad host", 80).as_str(), "invalid");
    }

    #[test]
    fn encodes_spec_names_and_labels() {
        let m = Metrics::new();
        let route = RouteLabels {
            direction: Direction::Outbound,
            service: Label::new("web.demo.svc.cluster.local:80"),
            route: Label::new("default"),
            tls: false,
            peer: Label::new(""),
        };
        m.http_requests
            .get_or_create(&ResponseLabels {
                route: route.clone(),
                status_code: 200,
                classification: Classification::Success,
            })
            .inc();
        m.http_duration.get_or_create(&route).observe(0.0004);
        m.detected(Direction::Inbound, Protocol::H2, Reason::Detected);
        let tcp = TcpLabels {
            direction: Direction::Inbound,
            peer: Label::new(""),
            tls: false,
        };
        m.tcp_total.get_or_create(&tcp).inc();
        m.tcp_bytes.get_or_create(&tcp).inc_by(10);
        m.tcp_open.get_or_create(&tcp).inc();
        let text = m.encode().unwrap();
        for want in [
            r#"trellis_http_requests_total{direction="outbound",service="web.demo.svc.cluster.local:80",route="default",tls="false",peer="",status_code="200",classification="success"} 1"#,
            r#"trellis_http_request_duration_seconds_bucket{le="0.0005",direction="outbound",service="web.demo.svc.cluster.local:80",route="default",tls="false",peer=""} 1"#,
            r#"trellis_tcp_connections_total{direction="inbound",peer="",tls="false"} 1"#,
            r#"trellis_tcp_bytes_total{direction="inbound",peer="",tls="false"} 10"#,
            r#"trellis_tcp_connections_open{direction="inbound",peer="",tls="false"} 1"#,
            r#"trellis_protocol_detections_total{direction="inbound",protocol="h2",reason="detected"} 1"#,
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
    }
}
