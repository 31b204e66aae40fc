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
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trellis_controller::objects::Kind;

use super::spec::{self, AuthorizationPolicy};

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
pub struct ControllerPlan {
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
            super::names::CLUSTER_DOMAIN.to_string(),
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

/// What the controller itself would still report about routes and policies
/// that passed the file's own checks (in a mesh of `trust_domain`, with
/// `services`), as
/// `path: message`: the objects, as
/// the local mesh writes them for it ([`super::cluster`]), indexed by the
/// controller's own code. `routes` and `policies` carry their index in the
/// file.
pub(crate) fn controller_problems(
    trust_domain: &str,
    services: &[spec::Service],
    routes: &[(usize, Value)],
    policies: &[(usize, &AuthorizationPolicy)],
) -> Vec<String> {
    if routes.is_empty() && policies.is_empty() {
        return Vec::new();
    }
    // Routes are checked against the services they name: their ports are
    // all the controller needs of them here.
    let service_objects = services.iter().map(|s| {
        let ports: Vec<Value> = s
            .ports
            .iter()
            .map(|p| serde_json::json!({"port": p.port}))
            .collect();
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": s.name, "namespace": s.namespace},
            "spec": {"ports": ports},
        })
    });
    let items: Vec<Value> = service_objects
        .chain(
            routes
                .iter()
                .map(|(i, r)| super::cluster::route_object(*i, r)),
        )
        .chain(
            policies
                .iter()
                .map(|(_, p)| super::cluster::policy_object(p)),
        )
        .collect();
    if items.is_empty() {
        return Vec::new();
    }
    let text = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    let objects = match trellis_controller::source::file::parse(&text) {
        Ok(o) => o,
        Err(e) => {
            return vec![format!(
                "routes and policies: the controller would refuse them: {e}"
            )]
        }
    };
    let settings = trellis_controller::index::Settings {
        trust_domain: trust_domain.to_string(),
        cluster_domain: super::names::CLUSTER_DOMAIN.to_string(),
        default_inbound: trellis_controller::index::DefaultPolicy::AllUnauthenticated,
    };
    let snap = trellis_controller::Snapshot::new(objects, Arc::new(settings), 0, true);
    let named = |v: &Value, ns: &str, name: &str| {
        v.get("name").and_then(Value::as_str) == Some(name)
            && v.get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                == ns
    };
    let mut out = Vec::new();
    for p in snap.problems() {
        let path = if p.kind == Kind::AuthorizationPolicy {
            policies
                .iter()
                .find(|(_, a)| a.namespace == p.namespace && a.name == p.name)
                .map(|(i, a)| format!("policies[{i}] ({}/{})", a.namespace, a.name))
        } else {
            routes
                .iter()
                .find(|(_, r)| named(r, &p.namespace, &p.name))
                .map(|(i, _)| format!("routes[{i}]"))
        };
        let path = path.unwrap_or_else(|| format!("{} {}/{}", p.kind, p.namespace, p.name));
        let line = format!("{path}: {}={:?}: {}", p.field, p.value, p.message);
        if !out.contains(&line) {
            out.push(line);
        }
    }
    out
}
