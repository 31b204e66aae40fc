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
//! `routes:` entries (validated by [`check_route`]):
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

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// Checks one `routes:` entry; `services` are the file's `(namespace,
/// name)`s. Errors name the field.
pub(crate) fn check_route(
    path: &str,
    v: &Value,
    services: &BTreeSet<(String, String)>,
) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    let mut err = |field: &str, msg: String| errs.push((format!("{path}.{field}"), msg));
    let Some(o) = v.as_object() else {
        return vec![(path.to_string(), "must be a mapping".into())];
    };
    for key in o.keys() {
        if ![
            "name",
            "namespace",
            "kind",
            "parent",
            "annotations",
            "rules",
        ]
        .contains(&key.as_str())
        {
            err(
                key,
                "unknown field (known: name, namespace, kind, parent, annotations, rules)".into(),
            );
        }
    }
    let namespace = o
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    if o.get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        err("name", "required, a non-empty string".into());
    }
    match o.get("kind").map(Value::as_str) {
        None | Some(Some("HTTPRoute" | "GRPCRoute")) => {}
        _ => err("kind", "must be HTTPRoute or GRPCRoute".into()),
    }
    match o
        .get("parent")
        .and_then(|p| p.get("service"))
        .and_then(Value::as_str)
    {
        None => err(
            "parent.service",
            "required: the Service the route attaches to".into(),
        ),
        Some(s) if !services.contains(&(namespace.to_string(), s.to_string())) => err(
            "parent.service",
            format!("no service {namespace}/{s} in this file"),
        ),
        Some(_) => {}
    }
    if let Some(a) = o.get("annotations") {
        if !a
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string))
        {
            err("annotations", "must map names to strings".into());
        }
    }
    match o.get("rules").and_then(Value::as_array) {
        None => err("rules", "required: a list of Gateway API rules".into()),
        Some(rules) => {
            for (i, r) in rules.iter().enumerate() {
                for (j, b) in r
                    .get("backendRefs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let ns = b
                        .get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or(namespace);
                    match b.get("name").and_then(Value::as_str) {
                        Some(n) if services.contains(&(ns.to_string(), n.to_string())) => {}
                        Some(n) => err(
                            &format!("rules[{i}].backendRefs[{j}].name"),
                            format!("no service {ns}/{n} in this file"),
                        ),
                        None => err(
                            &format!("rules[{i}].backendRefs[{j}].name"),
                            "required".into(),
                        ),
                    }
                }
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests;
