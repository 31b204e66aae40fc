//! The mesh file that `trellis mesh up -f` reads: its types, as serde
//! reads them (strictly: `deny_unknown_fields`, so a misspelt key is
//! refused with its path), with their defaults, and the
//! `config.trellis.dev/*` annotations a workload may carry. What is checked
//! beyond the shape is in [`check`]; every key is in `docs/mesh-file.md`.
//!
//! [`check`]: super::check

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use trellis_injector::floor::{OutboundMtls, PortAllowance};

pub const DEFAULT_MESH_NAME: &str = "trellis";
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_POD_CIDR: &str = "10.77.0.0/16";
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/16";
/// Mesh names end up in network namespace names; keep them short.
pub const MAX_MESH_NAME_LEN: usize = 24;
pub const MAX_REPLICAS: u32 = 64;
pub const MAX_PODS: usize = 256;

/// Annotation prefix for per-pod proxy overrides (SPEC.md).
pub const ANNOTATION_PREFIX: &str = "config.trellis.dev/";
pub const OPAQUE_PORTS: &str = "config.trellis.dev/opaque-ports";
pub const SKIP_INBOUND_PORTS: &str = "config.trellis.dev/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS: &str = "config.trellis.dev/skip-outbound-ports";
pub const PROXY_LOG_LEVEL: &str = "config.trellis.dev/proxy-log-level";
pub const DEFAULT_INBOUND_POLICY: &str = "config.trellis.dev/default-inbound-policy";
/// `opportunistic` or `required`: whether the proxy may send plaintext.
pub const OUTBOUND_MTLS: &str = "config.trellis.dev/outbound-mtls";
/// The OTLP/gRPC collector the pod's proxy sends request spans to (over
/// the file's `tracing.collector`).
pub const TRACE_COLLECTOR: &str = "config.trellis.dev/trace-collector";
/// The share of new traces the pod's proxy samples, 0 to 1.
pub const TRACE_SAMPLING: &str = "config.trellis.dev/trace-sampling";
/// Per-port defaults: `"8080=deny,9090=all-unauthenticated"`.
pub const PORT_INBOUND_POLICY: &str = "config.trellis.dev/port-inbound-policy";
/// How long workload certificates live unless the file says otherwise.
pub const DEFAULT_CERT_LIFETIME: &str = "24h";
/// Accepted for compatibility with pod manifests; the local mesh sets no
/// resource limits.
pub const RESOURCE_ANNOTATIONS: [&str; 4] = [
    "config.trellis.dev/proxy-cpu-request",
    "config.trellis.dev/proxy-memory-request",
    "config.trellis.dev/proxy-cpu-limit",
    "config.trellis.dev/proxy-memory-limit",
];

/// Every `config.trellis.dev/*` annotation a workload may carry (and
/// `docs/mesh-file.md` documents).
pub const CONFIG_ANNOTATIONS: [&str; 13] = [
    OPAQUE_PORTS,
    SKIP_INBOUND_PORTS,
    SKIP_OUTBOUND_PORTS,
    PROXY_LOG_LEVEL,
    DEFAULT_INBOUND_POLICY,
    PORT_INBOUND_POLICY,
    OUTBOUND_MTLS,
    TRACE_COLLECTOR,
    TRACE_SAMPLING,
    RESOURCE_ANNOTATIONS[0],
    RESOURCE_ANNOTATIONS[1],
    RESOURCE_ANNOTATIONS[2],
    RESOURCE_ANNOTATIONS[3],
];

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshFile {
    #[serde(default = "default_mesh_name")]
    pub name: String,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default)]
    pub default_inbound_policy: InboundPolicy,
    /// The mesh-wide outbound mTLS mode; `config.trellis.dev/outbound-mtls`
    /// on a workload overrides it.
    #[serde(default)]
    pub outbound_mtls: OutboundMtls,
    /// Request spans of every meshed pod's proxy, to an OTLP/gRPC
    /// collector; off without one.
    #[serde(default)]
    pub tracing: MeshTracing,
    /// The minimum workload annotations cannot lower (the injector's
    /// floor, always enforced by refusing the file).
    #[serde(default)]
    pub floor: MeshFloor,
    /// Lifetime of workload certificates (`trellis-identity`), e.g. `24h`
    /// or `30s`; 10s to 8760h.
    #[serde(default = "default_cert_lifetime")]
    pub cert_lifetime: String,
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: String,
    #[serde(default = "default_service_cidr")]
    pub service_cidr: String,
    /// Pods also get an address in `fd77::/64`.
    #[serde(default)]
    pub ipv6: bool,
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub services: Vec<Service>,
    /// HTTPRoute-shaped; kept as given until the controller consumes them.
    #[serde(default)]
    pub routes: Vec<serde_json::Value>,
    /// Authorization policies (`policy.trellis.dev`): see [`authz`](super::authz).
    #[serde(default)]
    pub policies: Vec<AuthorizationPolicy>,
}

/// `tracing:` — where every meshed pod's proxy sends its request spans;
/// `config.trellis.dev/trace-*` on a workload overrides each.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTracing {
    /// `host:port` of an OTLP/gRPC collector; none: tracing off.
    #[serde(default)]
    pub collector: Option<String>,
    /// The share of new traces sampled, 0 to 1 (the proxy's default: 0.01).
    #[serde(default)]
    pub sampling: Option<f64>,
}

/// `floor:` — what workload annotations may not go below; the same
/// constraints as the injector's `floor:` (`trellis_injector::floor`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshFloor {
    /// The weakest `config.trellis.dev/default-inbound-policy` (and
    /// `port-inbound-policy`, and `defaultInboundPolicy`) allowed.
    #[serde(default)]
    pub default_inbound_policy: Option<InboundPolicy>,
    /// The weakest `outbound-mtls` (and `outboundMtls`) allowed.
    #[serde(default)]
    pub outbound_mtls: Option<OutboundMtls>,
    /// `any` (default), `none`, or the ports a workload may skip.
    #[serde(default)]
    pub skip_inbound_ports: PortAllowance,
    #[serde(default)]
    pub skip_outbound_ports: PortAllowance,
    /// `false`: every workload is meshed (`meshed: false` is refused).
    #[serde(default = "yes")]
    pub allow_opt_out: bool,
}

impl Default for MeshFloor {
    /// No floor: everything allowed.
    fn default() -> Self {
        Self {
            default_inbound_policy: None,
            outbound_mtls: None,
            skip_inbound_ports: PortAllowance::Any,
            skip_outbound_ports: PortAllowance::Any,
            allow_opt_out: true,
        }
    }
}

/// A Deployment-like set of identical pods.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default = "yes")]
    pub meshed: bool,
    /// Ports the workload listens on; `up` waits until each accepts.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// argv, with placeholders: see [`expand`](super::template::expand).
    pub command: Vec<String>,
    #[serde(default, deserialize_with = "scalar_map")]
    pub env: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "scalar_map")]
    pub annotations: BTreeMap<String, String>,
    /// Kubelet-style HTTP probes (`GET path` on a port), checked from the
    /// node namespace; the proxy lets them through under every policy.
    #[serde(default)]
    pub probes: Vec<Probe>,
}

/// A ClusterIP-like service: a virtual IP in front of one workload's pods.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// A workload name, in the service's namespace.
    pub selector: String,
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    /// Defaults to `port`.
    #[serde(default)]
    pub target_port: Option<u16>,
    /// The Service port's `appProtocol` (`http`, `h2c`, `grpc`, `tcp`…):
    /// the controller's protocol hint to proxies.
    #[serde(default)]
    pub app_protocol: Option<String>,
}

impl ServicePort {
    pub fn target(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

/// An AuthorizationPolicy as the mesh file writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// A workload of the policy's namespace; `None`: all of its meshed ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_workload: Option<String>,
    /// Pod ports; empty: every port.
    #[serde(default)]
    pub ports: Vec<u16>,
    pub from: Sources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpMatch>,
}

/// Who a policy lets in: any of these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sources {
    /// Exact SPIFFE IDs.
    #[serde(default)]
    pub identities: Vec<String>,
    /// ServiceAccounts, turned into SPIFFE IDs of the mesh's trust domain.
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccountRef>,
    /// Every meshed workload of these namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceAccountRef {
    pub name: String,
    /// Default: the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// HTTP constraints: a request must match one method (if any are listed)
/// and one path prefix (if any are listed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub path_prefixes: Vec<String>,
}

/// A kubelet-style HTTP probe a workload declares (`probes:` in the file),
/// which its proxy's policy file carries as is: the proxy's own type.
pub use trellis_core::contract::files::Probe;

/// SPEC.md's default inbound policies; the proxy enforces them (see
/// [`authz`](super::authz) for how a pod's policy file is made).
/// The inbound policies of SPEC.md: the one type the proxy and the
/// controller use.
pub use trellis_core::policy::DefaultPolicy as InboundPolicy;

fn default_mesh_name() -> String {
    DEFAULT_MESH_NAME.to_string()
}
fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.to_string()
}
fn default_cert_lifetime() -> String {
    DEFAULT_CERT_LIFETIME.to_string()
}
fn default_pod_cidr() -> String {
    DEFAULT_POD_CIDR.to_string()
}
fn default_service_cidr() -> String {
    DEFAULT_SERVICE_CIDR.to_string()
}
fn default_namespace() -> String {
    "default".to_string()
}
fn default_service_account() -> String {
    "default".to_string()
}
fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

/// Env values and annotations are strings, but `PORT: 8080` or
/// `opaque-ports: 25` is what people write; take any scalar.
fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct Scalar(String);
    impl<'de> Deserialize<'de> for Scalar {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Scalar;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string, number or boolean")
                }
                fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                    Ok(Scalar(v.to_string()))
                }
                fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                    Ok(Scalar(v.to_string()))
                }
                fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                    Ok(Scalar(v.to_string()))
                }
                fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                    Ok(Scalar(v.to_string()))
                }
                fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                    Ok(Scalar(v.to_string()))
                }
            }
            d.deserialize_any(V)
        }
    }
    let map = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// Per-pod proxy overrides read from `config.trellis.dev/*` annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub opaque_ports: Option<String>,
    pub skip_inbound_ports: Option<String>,
    pub skip_outbound_ports: Option<String>,
    pub proxy_log_level: Option<String>,
    pub inbound_policy: Option<InboundPolicy>,
    /// From `config.trellis.dev/port-inbound-policy`.
    pub port_inbound_policies: BTreeMap<u16, InboundPolicy>,
    /// From `config.trellis.dev/outbound-mtls`.
    pub outbound_mtls: Option<OutboundMtls>,
    /// From `config.trellis.dev/trace-collector`, as `http://host:port`.
    pub trace_collector: Option<String>,
    /// From `config.trellis.dev/trace-sampling`, checked to be 0 to 1.
    pub trace_sampling: Option<String>,
}
