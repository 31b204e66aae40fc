//! The controller in the local mesh, decided before anything is made. Pure.
//!
//! `trellis-controller` runs in the node namespace with the file source:
//! the mesh written as the Kubernetes objects a cluster would hold
//! ([`cluster_objects`]) — Namespaces, Pods (meshed ones carry a
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
use serde_json::{json, Value};

use super::authz::AuthorizationPolicy;
use super::plan::{PodPlan, ServicePlan};

/// The controller's gRPC and admin ports (this project's choice; the
/// identity service has 7155 and 7195).
pub(crate) const CONTROLLER_PORT: u16 = 7156;
pub(crate) const CONTROLLER_ADMIN_PORT: u16 = 7196;
/// The proxy's variables for the controller (the proxy's contract).
pub(crate) const ENV_CONTROLLER_ADDR: &str = "TRELLIS_PROXY_CONTROLLER_ADDR";
pub(crate) const ENV_POD_NAMESPACE: &str = "TRELLIS_PROXY_POD_NAMESPACE";
pub(crate) const ENV_POD_NAME: &str = "TRELLIS_PROXY_POD_NAME";
/// The container name that marks a pod as meshed (SPEC.md).
const PROXY_CONTAINER: &str = "trellis-proxy";
/// Creation times of routes: file order is precedence order.
const ROUTE_EPOCH: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

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

/// The mesh as a Kubernetes `List` of the objects the controller reads.
pub(crate) fn cluster_objects(
    pods: &[PodPlan],
    services: &[ServicePlan],
    routes: &[Value],
    policies: &[AuthorizationPolicy],
) -> Value {
    let mut items = Vec::new();
    let namespaces: BTreeSet<&str> = pods
        .iter()
        .map(|p| p.namespace.as_str())
        .chain(services.iter().map(|s| s.namespace.as_str()))
        .collect();
    for ns in namespaces {
        items.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    for p in pods {
        items.push(pod_object(p));
    }
    for s in services {
        items.push(service_object(s));
        items.push(endpoint_slice(s, pods));
    }
    for (i, r) in routes.iter().enumerate() {
        items.push(route_object(i, r));
    }
    for p in policies {
        items.push(policy_object(p));
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

fn pod_object(p: &PodPlan) -> Value {
    let mut annotations = serde_json::Map::new();
    if let Some(proxy) = &p.proxy {
        annotations.insert(
            "config.trellis.dev/default-inbound-policy".into(),
            json!(proxy.policy.default_policy.to_string()),
        );
        if !proxy.policy.ports.is_empty() {
            let ports: Vec<String> = proxy
                .policy
                .ports
                .iter()
                .map(|(port, policy)| format!("{port}={policy}"))
                .collect();
            annotations.insert(
                "config.trellis.dev/port-inbound-policy".into(),
                json!(ports.join(",")),
            );
        }
        if let Some(opaque) = proxy.env.get("TRELLIS_PROXY_OPAQUE_PORTS") {
            annotations.insert("config.trellis.dev/opaque-ports".into(), json!(opaque));
        }
    }
    let mut app = json!({
        "name": p.workload,
        "ports": p.ports.iter().map(|port| json!({"containerPort": port, "protocol": "TCP"})).collect::<Vec<_>>(),
    });
    // The kubelet's probes: up to three, one of each kind.
    for (probe, kind) in p
        .probes
        .iter()
        .zip(["readinessProbe", "livenessProbe", "startupProbe"])
    {
        app[kind] = json!({"httpGet": {"port": probe.port, "path": probe.path}});
    }
    let mut containers = vec![app];
    if p.meshed {
        containers.push(json!({"name": PROXY_CONTAINER}));
    }
    let mut ips = vec![json!({"ip": p.ip.to_string()})];
    if let Some(v6) = p.ipv6 {
        ips.push(json!({"ip": v6.to_string()}));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "labels": {"app": p.workload},
            "annotations": annotations,
        },
        "spec": {"serviceAccountName": p.service_account, "containers": containers},
        "status": {"phase": "Running", "podIP": p.ip.to_string(), "podIPs": ips},
    })
}

fn service_object(s: &ServicePlan) -> Value {
    let ports: Vec<Value> = s
        .ports
        .iter()
        .map(|p| {
            json!({"name": port_name(p), "port": p.port, "targetPort": p.target_port, "protocol": "TCP"})
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": s.name, "namespace": s.namespace},
        "spec": {"clusterIP": s.vip.to_string(), "clusterIPs": [s.vip.to_string()], "ports": ports},
    })
}

/// Service and slice ports are paired by name, as Kubernetes requires of
/// services with several ports: the file's name, else `port-<port>`.
fn port_name(p: &super::plan::ServicePortPlan) -> String {
    p.name.clone().unwrap_or_else(|| format!("port-{}", p.port))
}

fn endpoint_slice(s: &ServicePlan, pods: &[PodPlan]) -> Value {
    let endpoints: Vec<Value> = s
        .endpoints
        .iter()
        .filter_map(|ip| pods.iter().find(|p| p.ip == *ip))
        .map(|p| {
            json!({
                "addresses": [p.ip.to_string()],
                "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "name": p.name, "namespace": p.namespace},
            })
        })
        .collect();
    let ports: Vec<Value> = s
        .ports
        .iter()
        .map(|p| json!({"name": port_name(p), "port": p.target_port, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{}-local", s.name),
            "namespace": s.namespace,
            "labels": {"kubernetes.io/service-name": s.name},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    })
}

fn route_object(index: usize, r: &Value) -> Value {
    let kind = r.get("kind").and_then(Value::as_str).unwrap_or("HTTPRoute");
    let namespace = r
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let parent = &r["parent"];
    let mut parent_ref = json!({"group": "", "kind": "Service", "name": parent["service"]});
    if let Some(port) = parent.get("port") {
        parent_ref["port"] = port.clone();
    }
    let created = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(ROUTE_EPOCH + index as u64),
    )
    .to_string();
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "metadata": {
            "name": r["name"],
            "namespace": namespace,
            "annotations": r.get("annotations").cloned().unwrap_or_else(|| json!({})),
            "creationTimestamp": created,
        },
        "spec": {"parentRefs": [parent_ref], "rules": r["rules"]},
    })
}

fn policy_object(p: &AuthorizationPolicy) -> Value {
    let selector = match &p.target_workload {
        Some(w) => json!({"matchLabels": {"app": w}}),
        None => json!({}),
    };
    let mut spec = json!({
        "podSelector": selector,
        "ports": p.ports,
        "from": {
            "identities": p.from.identities,
            "serviceAccounts": p.from.service_accounts,
            "namespaces": p.from.namespaces,
        },
    });
    if let Some(h) = &p.http {
        spec["http"] = json!({"methods": h.methods, "pathPrefixes": h.path_prefixes});
    }
    json!({
        "apiVersion": "policy.trellis.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": p.name, "namespace": p.namespace},
        "spec": spec,
    })
}

#[cfg(test)]
mod tests;
