//! The controller's objects file (`cluster.yaml` in the mesh's state
//! directory): the mesh written as the Kubernetes objects a cluster would
//! hold, one `List`, built from the Kubernetes API's own types
//! (k8s-openapi) where they exist. Pure; [`cluster_objects_with`] is
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
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

use super::controller::{meta, policy_object, route_namespace, route_object, to_value, APP_LABEL};
use super::plan::{PodPlan, ServicePlan, ServicePortPlan};
use super::spec::{self, AuthorizationPolicy};

/// The container name that marks a pod as meshed (SPEC.md).
pub(crate) const PROXY_CONTAINER: &str = "trellis-proxy";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

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

/// `cluster_objects`, with the pods whose network namespace is in
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

#[cfg(test)]
mod tests;
