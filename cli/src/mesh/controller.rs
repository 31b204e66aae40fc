//! The controller in the local mesh, decided before anything is made. Pure.
//!
//! `trellis-controller` runs in the node namespace with the file source:
//! the mesh written as the Kubernetes objects a cluster would hold
//! ([`super::cluster`]) — Namespaces, Pods (meshed ones carry a
//! `trellis-proxy` container, as the injector adds it), Services with their
//! virtual IPs, EndpointSlices, the file's `routes:` as Gateway API
//! `HTTPRoute`/`GRPCRoute` objects whose parent is a Service, and its
//! `policies:` as `policy.trellis.dev` AuthorizationPolicies. Proxies
//! resolve services, endpoints, routes and their inbound policy through it,
//! exactly as they would against a cluster's controller.
//!
//! `routes:` entries (validated by [`super::routes::check_route`]; every
//! field in `docs/mesh-file.md`):
//!
//! ```yaml
//! routes:
//!   - name: web-split            # unique per namespace and kind
//!     namespace: demo            # default: default
//!     kind: HTTPRoute            # or GRPCRoute; default HTTPRoute
//!     parent: {service: web, port: 80}   # port optional
//!     annotations: {retry.trellis.dev/limit: "3"}
//!     rules: [...]               # the Gateway API's spec.rules, as written in the route
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The controller's gRPC and admin ports (this project's choice; the
/// identity service has 7155 and 7195).
pub(crate) const CONTROLLER_PORT: u16 = 7156;
pub(crate) const CONTROLLER_ADMIN_PORT: u16 = 7196;
/// The proxy's variables for the controller (the proxy's contract).
pub(crate) const ENV_CONTROLLER_ADDR: &str = "TRELLIS_PROXY_CONTROLLER_ADDR";
pub(crate) const ENV_POD_NAMESPACE: &str = "TRELLIS_PROXY_POD_NAMESPACE";
pub(crate) const ENV_POD_NAME: &str = "TRELLIS_PROXY_POD_NAME";

/// `trellis-controller` in the node namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ControllerPlan {
    /// gRPC, on the bridge address: what proxies dial.
    pub addr: SocketAddr,
    /// Admin (`/ready`), asked from the node namespace.
    pub admin: SocketAddr,
    /// The objects file it reads.
    pub file: PathBuf,
    /// Its `TRELLIS_CONTROLLER_*` variables.
    pub env: BTreeMap<String, String>,
}

pub(crate) fn controller_plan(
    gateway: Ipv4Addr,
    trust_domain: &str,
    default_policy: &str,
    file: PathBuf,
) -> ControllerPlan {
    let addr = SocketAddr::new(IpAddr::V4(gateway), CONTROLLER_PORT);
    let admin = SocketAddr::new(IpAddr::V4(gateway), CONTROLLER_ADMIN_PORT);
    let env = [
        ("TRELLIS_CONTROLLER_SOURCE", "file".to_string()),
        ("TRELLIS_CONTROLLER_FILE", file.display().to_string()),
        ("TRELLIS_CONTROLLER_LISTEN", addr.to_string()),
        ("TRELLIS_CONTROLLER_ADMIN_LISTEN", admin.to_string()),
        ("TRELLIS_CONTROLLER_TRUST_DOMAIN", trust_domain.to_string()),
        (
            "TRELLIS_CONTROLLER_CLUSTER_DOMAIN",
            super::plan::CLUSTER_DOMAIN.to_string(),
        ),
        (
            "TRELLIS_CONTROLLER_DEFAULT_INBOUND_POLICY",
            default_policy.to_string(),
        ),
        ("TRELLIS_CONTROLLER_LOG", "info".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    ControllerPlan {
        addr,
        admin,
        file,
        env,
    }
}

/// A meshed pod's proxy variables for the controller.
pub(crate) fn proxy_env(
    c: &ControllerPlan,
    namespace: &str,
    pod: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ENV_CONTROLLER_ADDR.to_string(), c.addr.to_string()),
        (ENV_POD_NAMESPACE.to_string(), namespace.to_string()),
        (ENV_POD_NAME.to_string(), pod.to_string()),
    ])
}
