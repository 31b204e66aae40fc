//! Projections: each object cut down, as it arrives, to the fields the
//! index reads. A Pod becomes a [`PodInfo`] (a few hundred bytes instead of
//! its whole spec and status); Namespaces, Services and EndpointSlices stay
//! their API types with everything else left out. Routes and
//! AuthorizationPolicies are kept whole: the index compiles nearly all of
//! them, the route status writer reads their status, and there are few.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::index::annotations::{DEFAULT_INBOUND_POLICY, OPAQUE_PORTS, PORT_INBOUND_POLICY};
use crate::index::{PROXY_CONTAINER, SERVICE_NAME_LABEL};

/// The annotations the index reads on Namespaces, Pods and Services.
const READ_ANNOTATIONS: [&str; 3] = [OPAQUE_PORTS, DEFAULT_INBOUND_POLICY, PORT_INBOUND_POLICY];

/// A pod as the index reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub resource_version: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Only the annotations the index reads (opaque ports, inbound policy).
    pub annotations: BTreeMap<String, String>,
    /// `Running` and not on the host network: its IPs are its own.
    pub running: bool,
    /// `status.podIP` and `status.podIPs`, sorted, each once.
    pub ips: Vec<IpAddr>,
    /// Whether it has the proxy (as a container, or a native sidecar).
    pub meshed: bool,
    /// Its service account (`default` when unset).
    pub service_account: String,
    /// The `workload` label of its endpoints: `app.kubernetes.io/name`,
    /// else `app`, else its owner's name (a ReplicaSet's without the
    /// template hash), else its own name.
    pub workload: String,
    /// The named ports of its containers (`spec.containers`), in order.
    pub named_ports: Vec<(String, u16)>,
    /// The ports and paths of its containers' (and native sidecars')
    /// HTTP and gRPC probes, other than the proxy's own, sorted.
    pub probes: Vec<(u16, String)>,
}

impl PodInfo {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }

    /// The number of the container port `name` (first container first).
    pub fn named_port(&self, name: &str) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
    }
}

fn read_annotations(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations
        .iter()
        .flatten()
        .filter(|(k, _)| READ_ANNOTATIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Name, namespace, resourceVersion and `annotations` of `meta`.
fn meta(meta: ObjectMeta, annotations: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        resource_version: meta.resource_version,
        annotations: (!annotations.is_empty()).then_some(annotations),
        ..ObjectMeta::default()
    }
}

pub(crate) fn namespace(ns: Namespace) -> Namespace {
    let annotations = read_annotations(&ns.metadata);
    Namespace {
        metadata: meta(ns.metadata, annotations),
        ..Namespace::default()
    }
}

pub(crate) fn service(svc: Service) -> Service {
    let annotations = read_annotations(&svc.metadata);
    let spec = svc.spec.map(|s| ServiceSpec {
        cluster_ip: s.cluster_ip,
        cluster_ips: s.cluster_ips,
        ports: s.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| ServicePort {
                    name: p.name,
                    port: p.port,
                    protocol: p.protocol,
                    target_port: p.target_port,
                    app_protocol: p.app_protocol,
                    node_port: None,
                })
                .collect()
        }),
        ..ServiceSpec::default()
    });
    Service {
        metadata: meta(svc.metadata, annotations),
        spec,
        status: None,
    }
}

pub(crate) fn endpoint_slice(slice: EndpointSlice) -> EndpointSlice {
    let service: BTreeMap<String, String> = slice
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() == SERVICE_NAME_LABEL)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut m = meta(slice.metadata, BTreeMap::new());
    m.labels = (!service.is_empty()).then_some(service);
    let endpoints = slice.endpoints.map(|endpoints| {
        endpoints
            .into_iter()
            .map(|e| Endpoint {
                addresses: e.addresses,
                conditions: e.conditions.map(|c| EndpointConditions {
                    ready: c.ready,
                    ..EndpointConditions::default()
                }),
                target_ref: e.target_ref.map(|r| ObjectReference {
                    kind: r.kind,
                    name: r.name,
                    namespace: r.namespace,
                    ..ObjectReference::default()
                }),
                ..Endpoint::default()
            })
            .collect()
    });
    EndpointSlice {
        metadata: m,
        address_type: slice.address_type,
        endpoints,
        ports: slice.ports,
    }
}

pub(crate) fn pod(pod: &Pod) -> PodInfo {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && !spec.and_then(|s| s.host_network).unwrap_or(false);
    let ips: BTreeSet<IpAddr> = status
        .into_iter()
        .flat_map(|s| {
            s.pod_ip
                .iter()
                .chain(s.pod_ips.iter().flatten().map(|p| &p.ip))
        })
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let meshed = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER)
    });
    let service_account = spec
        .and_then(|s| {
            s.service_account_name
                .as_deref()
                .or(s.service_account.as_deref())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let named_ports = spec
        .into_iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
        .collect();
    PodInfo {
        namespace: m.namespace.clone().unwrap_or_default(),
        name: m.name.clone().unwrap_or_default(),
        resource_version: m.resource_version.clone(),
        labels: m.labels.clone().unwrap_or_default(),
        annotations: read_annotations(m),
        running,
        ips: ips.into_iter().collect(),
        meshed,
        service_account,
        workload: workload(pod),
        named_ports,
        probes: probes(pod),
    }
}

fn workload(pod: &Pod) -> String {
    let labels = pod.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).cloned();
    if let Some(w) = label("app.kubernetes.io/name").or_else(|| label("app")) {
        return w;
    }
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    if let Some(o) = owner {
        if o.kind == "ReplicaSet" {
            if let Some(hash) = label("pod-template-hash") {
                if let Some(base) = o.name.strip_suffix(&format!("-{hash}")) {
                    return base.to_string();
                }
            }
        }
        return o.name.clone();
    }
    pod.metadata.name.clone().unwrap_or_default()
}

/// The path of a kubelet gRPC probe's request.
const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// The HTTP and gRPC probes of the pod's containers (and native sidecars),
/// other than the proxy's own: kubelet requests to them are always let in.
fn probes(pod: &Pod) -> Vec<(u16, String)> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let containers: Vec<&Container> = spec.containers.iter().chain(sidecars).collect();
    let mut out = BTreeSet::new();
    for c in &containers {
        if c.name == PROXY_CONTAINER {
            continue;
        }
        let probes = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe];
        // A gRPC probe is the kubelet calling the standard health service
        // over HTTP/2 on that port.
        for grpc in probes
            .iter()
            .copied()
            .flatten()
            .filter_map(|p| p.grpc.as_ref())
        {
            if let Some(port) = u16::try_from(grpc.port).ok().filter(|p| *p != 0) {
                out.insert((port, GRPC_HEALTH_CHECK.to_string()));
            }
        }
        for get in probes
            .into_iter()
            .flatten()
            .filter_map(|p| p.http_get.as_ref())
        {
            let port = match &get.port {
                IntOrString::Int(n) => u16::try_from(*n).ok(),
                IntOrString::String(s) => s
                    .parse::<u16>()
                    .ok()
                    .or_else(|| named_port(c, s))
                    .or_else(|| containers.iter().find_map(|o| named_port(o, s))),
            };
            let Some(port) = port.filter(|p| *p != 0) else {
                continue;
            };
            let path = get.path.clone().filter(|p| !p.is_empty());
            out.insert((port, path.unwrap_or_else(|| "/".into())));
        }
    }
    out.into_iter().collect()
}

/// The number of container port `name`.
fn named_port(c: &Container, name: &str) -> Option<u16> {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
}
