//! The identity service's metrics. Label values come from fixed sets (the
//! refusal reason codes), never from callers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use trellis_core::telemetry;

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitedLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    source: &'static str,
    result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    issued: Counter,
    refusals: Family<RefusalLabels, Counter>,
    issuer_expiry: Gauge,
    serving_expiry: Gauge,
    reloads: Family<ReloadLabels, Counter>,
    handshake_failures: Counter,
    limited: Family<LimitedLabels, Counter>,
    refusals_cached: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = telemetry::registry();
        let issued = Counter::default();
        registry.register(
            "trellis_identity_certificates_issued",
            "Workload certificates issued",
            issued.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "trellis_identity_refusals",
            "Certify requests refused, by reason",
            refusals.clone(),
        );
        let issuer_expiry = Gauge::default();
        registry.register_with_unit(
            "trellis_identity_issuer_expiry_timestamp",
            "When the current issuer certificate expires (Unix time)",
            Unit::Seconds,
            issuer_expiry.clone(),
        );
        let serving_expiry = Gauge::default();
        registry.register_with_unit(
            "trellis_identity_serving_certificate_expiry_timestamp",
            "When the service's own serving certificate expires (Unix time)",
            Unit::Seconds,
            serving_expiry.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "trellis_identity_reloads",
            "Changed issuer/roots or JWKS files seen, by whether they were taken or refused",
            reloads.clone(),
        );
        let handshake_failures = Counter::default();
        registry.register(
            "trellis_identity_tls_handshake_failures",
            "Incoming connections whose TLS handshake failed or timed out",
            handshake_failures.clone(),
        );
        let limited = Family::<LimitedLabels, Counter>::default();
        registry.register(
            "trellis_identity_requests_limited",
            "Certify requests refused unverified because a limit was reached, by limit (rate, concurrency)",
            limited.clone(),
        );
        let refusals_cached = Counter::default();
        registry.register(
            "trellis_identity_refusals_cached",
            "Certify requests refused from the memory of an earlier refusal of the same token, without verifying it again",
            refusals_cached.clone(),
        );
        Self {
            registry,
            issued,
            refusals,
            issuer_expiry,
            serving_expiry,
            reloads,
            handshake_failures,
            limited,
            refusals_cached,
        }
    }

    pub fn issued(&self) {
        self.issued.inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&RefusalLabels { reason }).inc();
    }

    pub fn set_issuer_expiry(&self, unix: i64) {
        self.issuer_expiry.set(unix);
    }

    pub fn set_serving_expiry(&self, unix: i64) {
        self.serving_expiry.set(unix);
    }

    /// `source`: `issuer` or `jwks`; `taken`: whether the new content is used.
    pub fn reloaded(&self, source: &'static str, taken: bool) {
        let result = if taken { "taken" } else { "refused" };
        self.reloads
            .get_or_create(&ReloadLabels { source, result })
            .inc();
    }

    pub fn handshake_failed(&self) {
        self.handshake_failures.inc();
    }

    /// A request refused unverified; `reason`: `rate` or `concurrency`.
    pub fn limited(&self, reason: &'static str) {
        self.limited.get_or_create(&LimitedLabels { reason }).inc();
    }

    /// A refusal answered from the refusal cache (also counted by `refused`).
    pub fn refusal_cached(&self) {
        self.refusals_cached.inc();
    }

    /// Requests limited so far with `reason`.
    pub fn limited_total(&self, reason: &'static str) -> u64 {
        self.limited.get_or_create(&LimitedLabels { reason }).get()
    }

    /// Refusals answered from the cache so far.
    pub fn refusals_cached_total(&self) -> u64 {
        self.refusals_cached.get()
    }

    /// Certificates issued so far.
    pub fn issued_total(&self) -> u64 {
        self.issued.get()
    }

    /// Refusals so far with `reason`.
    pub fn refusals_total(&self, reason: &'static str) -> u64 {
        self.refusals.get_or_create(&RefusalLabels { reason }).get()
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        telemetry::encode(&self.registry)
    }
}
