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
//! Here: the controller's plan and its proxies' variables; the file's
//! routes and policies as the controller's objects ([`route_object`],
//! [`policy_object`], which the objects file lists too); and the
//! controller's own verdict on them before anything starts
//! ([`controller_problems`]).
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

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use trellis_controller::objects::Kind;
use trellis_core::contract::proxy_env;

use super::spec::{self, AuthorizationPolicy};

/// The controller's gRPC and admin ports (this project's choice; the
/// identity service has 7155 and 7195).
pub(crate) const CONTROLLER_PORT: u16 = 7156;
pub(crate) const CONTROLLER_ADMIN_PORT: u16 = 7196;
/// The label pods carry and services select on.
pub(crate) const APP_LABEL: &str = "app";
/// Creation times of routes: file order is precedence order.
const ROUTE_EPOCH: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

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
pub(crate) fn proxy_vars(
    c: &ControllerPlan,
    namespace: &str,
    pod: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (proxy_env::CONTROLLER_ADDR.to_string(), c.addr.to_string()),
        (proxy_env::POD_NAMESPACE.to_string(), namespace.to_string()),
        (proxy_env::POD_NAME.to_string(), pod.to_string()),
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
        .chain(routes.iter().map(|(i, r)| route_object(*i, r)))
        .chain(policies.iter().map(|(_, p)| policy_object(p)))
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

/// A Kubernetes object as JSON.
pub(crate) fn to_value(object: &impl serde::Serialize) -> Value {
    // Serializing these types to a `Value` cannot fail: their maps have
    // string keys.
    serde_json::to_value(object).unwrap_or(Value::Null)
}

/// Metadata with a name and, for namespaced objects, a namespace.
pub(crate) fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        ..Default::default()
    }
}

/// A `routes:` entry's namespace (`default` when it names none).
pub(crate) fn route_namespace(r: &Value) -> &str {
    r.get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
}

/// A `routes:` entry (validated by [`super::routes::check_route`]) as
/// its Gateway API object. The Gateway API's types are CRDs, not in
/// k8s-openapi: the object is JSON around a typed `ObjectMeta`.
pub(crate) fn route_object(index: usize, r: &Value) -> Value {
    let kind = r.get("kind").and_then(Value::as_str).unwrap_or("HTTPRoute");
    let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
    let parent = &r["parent"];
    let mut parent_ref = json!({"group": "", "kind": "Service", "name": parent["service"]});
    if let Some(port) = parent.get("port") {
        parent_ref["port"] = port.clone();
    }
    let mut metadata = meta(name, Some(route_namespace(r)));
    metadata.annotations = Some(
        r.get("annotations")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
    );
    let mut metadata = to_value(&metadata);
    metadata["creationTimestamp"] = json!(humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(ROUTE_EPOCH.saturating_add(index as u64)),
    )
    .to_string());
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "spec": {"parentRefs": [parent_ref], "rules": r["rules"]},
    })
}

/// A policy as the `policy.trellis.dev` CRD writes it: the workload becomes
/// a pod selector on the `app` label.
pub(crate) fn policy_object(p: &AuthorizationPolicy) -> Value {
    let selector = match &p.target_workload {
        Some(w) => json!({"matchLabels": {APP_LABEL: w}}),
        None => json!({}),
    };
    let mut spec = json!({
        "podSelector": selector,
        "ports": p.ports,
        "from": {
            "identities": p.from.identities,
            "serviceAccounts": p.from.service_accounts.iter().map(|sa| json!({
                "name": sa.name,
                "namespace": sa.namespace.as_deref().unwrap_or(&p.namespace),
            })).collect::<Vec<_>>(),
            "namespaces": p.from.namespaces,
        },
    });
    if let Some(h) = &p.http {
        spec["http"] = json!({"methods": h.methods, "pathPrefixes": h.path_prefixes});
    }
    json!({
        "apiVersion": "policy.trellis.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": to_value(&meta(&p.name, Some(&p.namespace))),
        "spec": spec,
    })
}
