//! The controller's objects file (`cluster.yaml` in the mesh's state
//! directory): the mesh written as the Kubernetes objects a cluster would
//! hold, one `List`, built from the Kubernetes API's own types
//! (k8s-openapi) where they exist. Pure; [`cluster_objects`] is
//! table-tested, `up` and `apply` write its result atomically.
//!
//! | mesh | object |
//! |---|---|
//! | every namespace used | `Namespace` |
//! | a replica | `Pod`: name `web-0`, label `app: <workload>`, the workload's annotations, `serviceAccountName`, the workload's container (its ports, its probes as `httpGet` probes) and, when meshed, a container `trellis-proxy` (how the controller tells meshed pods); status `Running`, `podIP(s)`, `Ready` |
//! | a service | `Service`: `clusterIP` = its virtual IP, ports (`name`, `port`, `targetPort`, `TCP`, `appProtocol`), selector `app: <workload>` |
//! | its endpoints | `EndpointSlice` (label `kubernetes.io/service-name`, IPv4, ready endpoints with their Pod as `targetRef`, the target ports) |
//! | `routes:` | `HTTPRoute`/`GRPCRoute` (`gateway.networking.k8s.io/v1`), the Service as parent; `creationTimestamp` in file order, which is precedence order |
//! | `policies:` | `AuthorizationPolicy` (`policy.trellis.dev/v1alpha1`) |
//!
//! Service and slice ports are paired by name, as Kubernetes requires of
//! services with several ports: the file's name, else `port-<port>`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, Namespace, ObjectReference, Pod, PodCondition, PodIP,
    PodSpec, PodStatus, Probe, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

use super::plan::{PodPlan, ServicePlan, ServicePortPlan};
use super::spec::{self, AuthorizationPolicy};

/// The container name that marks a pod as meshed (SPEC.md).
pub(crate) const PROXY_CONTAINER: &str = "trellis-proxy";
/// The label pods carry and services select on.
const APP_LABEL: &str = "app";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Creation times of routes: file order is precedence order.
const ROUTE_EPOCH: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// The mesh as a Kubernetes `List` of the objects the controller reads:
/// namespaces, pods, each service followed by its EndpointSlice, routes,
/// policies.
#[cfg(test)] // `up` and `apply` say which pods are down: [`cluster_objects_with`]
pub(crate) fn cluster_objects(
    pods: &[PodPlan],
    services: &[ServicePlan],
    routes: &[Value],
    policies: &[AuthorizationPolicy],
) -> Value {
    cluster_objects_with(pods, services, routes, policies, &BTreeSet::new())
}

/// [`cluster_objects`], with the pods whose network namespace is in
/// `not_ready` down (a process exited): their Pod's `Ready` condition is
/// `False` and they are not-ready endpoints, so proxies stop sending to
/// them, as when a kubelet reports a container down.
pub(crate) fn cluster_objects_with(
    pods: &[PodPlan],
    services: &[ServicePlan],
    routes: &[Value],
    policies: &[AuthorizationPolicy],
    not_ready: &BTreeSet<String>,
) -> Value {
    let mut items = Vec::new();
    let namespaces: BTreeSet<&str> = pods
        .iter()
        .map(|p| p.namespace.as_str())
        .chain(services.iter().map(|s| s.namespace.as_str()))
        .chain(routes.iter().map(route_namespace))
        .chain(policies.iter().map(|p| p.namespace.as_str()))
        .collect();
    for ns in namespaces {
        items.push(to_value(&Namespace {
            metadata: meta(ns, None),
            ..Default::default()
        }));
    }
    for p in pods {
        items.push(to_value(&pod_object(p, !not_ready.contains(&p.netns))));
    }
    for s in services {
        items.push(to_value(&service_object(s)));
        items.push(to_value(&endpoint_slice(s, pods, not_ready)));
    }
    for (i, r) in routes.iter().enumerate() {
        items.push(route_object(i, r));
    }
    for p in policies {
        items.push(policy_object(p));
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

fn to_value(object: &impl serde::Serialize) -> Value {
    // Serializing these types to a `Value` cannot fail: their maps have
    // string keys.
    serde_json::to_value(object).unwrap_or(Value::Null)
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        ..Default::default()
    }
}

fn port(n: u16) -> IntOrString {
    IntOrString::Int(i32::from(n))
}

fn pod_object(p: &PodPlan, ready: bool) -> Pod {
    let http_probe = |pr: &spec::Probe| Probe {
        http_get: Some(HTTPGetAction {
            port: port(pr.port),
            path: Some(pr.path.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    // A container has one probe of each kind: the declared probes are its
    // readiness, liveness and startup probes, in that order (the controller
    // lets all of them through).
    let mut probes = p.probes.iter().map(http_probe);
    let app = Container {
        name: p.workload.clone(),
        ports: (!p.ports.is_empty()).then(|| {
            p.ports
                .iter()
                .map(|&n| ContainerPort {
                    container_port: i32::from(n),
                    protocol: Some("TCP".to_string()),
                    ..Default::default()
                })
                .collect()
        }),
        readiness_probe: probes.next(),
        liveness_probe: probes.next(),
        startup_probe: probes.next(),
        ..Default::default()
    };
    let mut containers = vec![app];
    if p.meshed {
        containers.push(Container {
            name: PROXY_CONTAINER.to_string(),
            ..Default::default()
        });
    }
    let mut ips = vec![PodIP {
        ip: p.ip.to_string(),
    }];
    if let Some(v6) = p.ipv6 {
        ips.push(PodIP { ip: v6.to_string() });
    }
    let mut metadata = meta(&p.name, Some(&p.namespace));
    metadata.labels = Some(BTreeMap::from([(
        APP_LABEL.to_string(),
        p.workload.clone(),
    )]));
    metadata.annotations = (!p.annotations.is_empty()).then(|| p.annotations.clone());
    Pod {
        metadata,
        spec: Some(PodSpec {
            service_account_name: Some(p.service_account.clone()),
            containers,
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_string()),
            pod_ip: Some(p.ip.to_string()),
            pod_ips: Some(ips),
            conditions: Some(vec![PodCondition {
                type_: "Ready".to_string(),
                status: if ready { "True" } else { "False" }.to_string(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// The file's port name, else `port-<port>`.
fn port_name(p: &ServicePortPlan) -> String {
    p.name.clone().unwrap_or_else(|| format!("port-{}", p.port))
}

fn service_object(s: &ServicePlan) -> Service {
    let ports = s
        .ports
        .iter()
        .map(|p| ServicePort {
            name: Some(port_name(p)),
            port: i32::from(p.port),
            target_port: Some(port(p.target_port)),
            protocol: Some("TCP".to_string()),
            app_protocol: p.app_protocol.clone(),
            ..Default::default()
        })
        .collect();
    Service {
        metadata: meta(&s.name, Some(&s.namespace)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            cluster_ip: Some(s.vip.to_string()),
            cluster_ips: Some(vec![s.vip.to_string()]),
            ports: Some(ports),
            selector: (!s.selector.is_empty())
                .then(|| BTreeMap::from([(APP_LABEL.to_string(), s.selector.clone())])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn endpoint_slice(
    s: &ServicePlan,
    pods: &[PodPlan],
    not_ready: &BTreeSet<String>,
) -> EndpointSlice {
    let endpoints: Vec<Endpoint> = s
        .endpoints
        .iter()
        .filter_map(|ip| pods.iter().find(|p| p.ip == *ip))
        .map(|p| Endpoint {
            addresses: vec![p.ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(!not_ready.contains(&p.netns)),
                ..Default::default()
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".to_string()),
                name: Some(p.name.clone()),
                namespace: Some(p.namespace.clone()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let ports = s
        .ports
        .iter()
        .map(|p| EndpointPort {
            name: Some(port_name(p)),
            port: Some(i32::from(p.target_port)),
            protocol: Some("TCP".to_string()),
            app_protocol: p.app_protocol.clone(),
        })
        .collect();
    let mut metadata = meta(&format!("{}-local", s.name), Some(&s.namespace));
    metadata.labels = Some(BTreeMap::from([(
        SERVICE_NAME_LABEL.to_string(),
        s.name.clone(),
    )]));
    EndpointSlice {
        metadata,
        address_type: "IPv4".to_string(),
        endpoints: Some(endpoints),
        ports: Some(ports),
    }
}

fn route_namespace(r: &Value) -> &str {
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

#[cfg(test)]
mod tests;
