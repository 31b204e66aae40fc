//! `Resolve(target, client_namespace)`: a service's cluster IP and port,
//! a running pod's IP, or neither. Pure.
//!
//! A service's backends are its own ready endpoints first (from its
//! EndpointSlices, the target port from the slice or else the service's
//! `targetPort`, by number or by the pod's named container port), then
//! every other service a route names, each once. Routes are those whose
//! parent ref covers the service port, from the service's namespace
//! (producer) and the client's (consumer), in precedence order.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use trellis_api::discovery::v1 as pb;
use trellis_core::config::PortRange;

use super::annotations::{parse_opaque_ports, OPAQUE_PORTS};
use super::routes::{BackendTarget, Rules, Target};
use super::{annotation, inbound, is_meshed, Settings, Snapshot};
use crate::objects::Key;

/// The opaque ports of a pod: its annotation, else its namespace's.
fn opaque_ports(snap: &Snapshot, namespace: &str, own: Option<&str>) -> Vec<PortRange> {
    let ns = snap.objects.namespaces.get(&Key::new("", namespace));
    own.or_else(|| ns.and_then(|n| annotation(n.as_ref(), OPAQUE_PORTS)))
        .and_then(|v| parse_opaque_ports(v).ok())
        .unwrap_or_default()
}

fn in_ranges(ranges: &[PortRange], port: u16) -> bool {
    ranges.iter().any(|r| r.contains(port))
}

/// The `workload` label of a pod's endpoints: `app.kubernetes.io/name`,
/// else `app`, else its owner's name (a ReplicaSet's without the template
/// hash), else the pod's own name.
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

/// The SPIFFE ID of a meshed pod; empty for a pod without the proxy.
fn identity(settings: &Settings, pod: &Pod) -> String {
    if !is_meshed(pod) {
        return String::new();
    }
    let spec = pod.spec.as_ref();
    let sa = spec
        .and_then(|s| {
            s.service_account_name
                .as_deref()
                .or(s.service_account.as_deref())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    trellis_core::spiffe::SpiffeId::new(&settings.trust_domain, ns, sa)
        .map(|id| id.to_string())
        .unwrap_or_default()
}

/// `NAME.NS.svc.CLUSTER-DOMAIN:PORT`.
fn authority(settings: &Settings, service: &Key, port: u16) -> String {
    format!(
        "{}.{}.svc.{}:{port}",
        service.name, service.namespace, settings.cluster_domain
    )
}

/// The protocol hint of a service port: its appProtocol, else the opaque
/// ports of the Service (or its namespace).
fn service_protocol(
    snap: &Snapshot,
    svc: &Service,
    key: &Key,
    port: &ServicePort,
) -> pb::ProtocolHint {
    use pb::ProtocolHint as P;
    let by_app_protocol = match port.app_protocol.as_deref() {
        Some("kubernetes.io/h2c" | "h2c" | "http2") => Some(P::Http2),
        Some("grpc" | "kubernetes.io/grpc") => Some(P::Grpc),
        Some("http" | "kubernetes.io/http" | "http1" | "kubernetes.io/ws") => Some(P::Http1),
        Some("tcp" | "kubernetes.io/tcp" | "opaque") => Some(P::Opaque),
        _ => None,
    };
    if let Some(p) = by_app_protocol {
        return p;
    }
    let opaque = opaque_ports(snap, &key.namespace, annotation(svc, OPAQUE_PORTS));
    match u16::try_from(port.port) {
        Ok(n) if in_ranges(&opaque, n) => P::Opaque,
        _ => P::ProtocolUnknown,
    }
}

/// Resolves `target` for a client in `client_namespace`.
pub fn resolve(snap: &Snapshot, target: SocketAddr, client_namespace: &str) -> pb::Resolution {
    if let Some((key, i)) = snap.services_by_addr.get(&(target.ip(), target.port())) {
        let svc = snap.objects.services.get(key);
        let port = svc.and_then(|s| s.spec.as_ref()?.ports.as_ref()?.get(*i));
        if let (Some(svc), Some(port)) = (svc, port) {
            return service_resolution(snap, key, svc, port, client_namespace);
        }
    }
    if let Some(pod) = snap
        .pods_by_ip
        .get(&target.ip())
        .and_then(|k| snap.objects.pods.get(k))
    {
        let endpoint = endpoint(snap, pod, target, None);
        let protocol = endpoint.protocol;
        return pb::Resolution {
            kind: pb::resolution::Kind::Endpoint as i32,
            authority: target.to_string(),
            protocol,
            http_routes: Vec::new(),
            grpc_routes: Vec::new(),
            backends: vec![pb::Backend {
                authority: target.to_string(),
                endpoints: vec![endpoint],
            }],
        };
    }
    pb::Resolution::default()
}

fn endpoint(
    snap: &Snapshot,
    pod: &Pod,
    addr: SocketAddr,
    service_hint: Option<i32>,
) -> pb::Endpoint {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let opaque = opaque_ports(snap, &ns, annotation(pod, OPAQUE_PORTS));
    let protocol = if in_ranges(&opaque, addr.port()) {
        pb::ProtocolHint::Opaque as i32
    } else {
        service_hint.unwrap_or(pb::ProtocolHint::ProtocolUnknown as i32)
    };
    pb::Endpoint {
        addr: addr.to_string(),
        weight: 1,
        identity: identity(&snap.settings, pod),
        workload: workload(pod),
        pod: pod.metadata.name.clone().unwrap_or_default(),
        namespace: ns,
        protocol,
    }
}

fn service_resolution(
    snap: &Snapshot,
    key: &Key,
    svc: &Service,
    port: &ServicePort,
    client_namespace: &str,
) -> pb::Resolution {
    let number = u16::try_from(port.port).unwrap_or_default();
    let protocol = service_protocol(snap, svc, key, port);
    let own = authority(&snap.settings, key, number);
    let mut backends = vec![pb::Backend {
        authority: own.clone(),
        endpoints: endpoints(snap, key, port, protocol as i32),
    }];
    let mut http_routes = Vec::new();
    let mut grpc_routes = Vec::new();
    let applicable = snap
        .routes_by_parent
        .get(key)
        .into_iter()
        .flatten()
        .filter(|r| r.key.namespace == key.namespace || r.key.namespace == client_namespace)
        .filter(|r| {
            r.parents
                .iter()
                .any(|p| p.covers(key, number, port.name.as_deref()))
        });
    for route in applicable {
        let mut weighted = |targets: &[BackendTarget]| -> Vec<pb::WeightedBackend> {
            targets
                .iter()
                .map(|t| pb::WeightedBackend {
                    authority: backend_authority(snap, &t.target, number, &mut backends),
                    weight: t.weight,
                })
                .collect()
        };
        match &route.rules {
            Rules::Http(rules) => {
                let rules = rules
                    .iter()
                    .map(|r| pb::HttpRule {
                        matches: r.matches.clone(),
                        backends: weighted(&r.backends),
                        timeouts: r.timeouts,
                        retry: r.retry.clone(),
                    })
                    .collect();
                http_routes.push(pb::HttpRoute {
                    name: route.key.name.clone(),
                    namespace: route.key.namespace.clone(),
                    rules,
                });
            }
            Rules::Grpc(rules) => {
                let rules = rules
                    .iter()
                    .map(|r| pb::GrpcRule {
                        matches: r.matches.clone(),
                        backends: weighted(&r.backends),
                        timeouts: r.timeouts,
                        retry: r.retry.clone(),
                    })
                    .collect();
                grpc_routes.push(pb::GrpcRoute {
                    name: route.key.name.clone(),
                    namespace: route.key.namespace.clone(),
                    rules,
                });
            }
        }
    }
    pb::Resolution {
        kind: pb::resolution::Kind::Service as i32,
        authority: own,
        protocol: protocol as i32,
        http_routes,
        grpc_routes,
        backends,
    }
}

/// The authority of a route's backend, adding the backend's endpoints to
/// `backends` the first time it is named. A backend service or port that
/// does not exist gets no entry: the proxy fails requests sent to it.
fn backend_authority(
    snap: &Snapshot,
    target: &Target,
    parent_port: u16,
    backends: &mut Vec<pb::Backend>,
) -> String {
    let (service, port) = match target {
        Target::Invalid(name) => return name.clone(),
        Target::Service { service, port } => (service, port.unwrap_or(parent_port)),
    };
    let authority = authority(&snap.settings, service, port);
    if backends.iter().any(|b| b.authority == authority) {
        return authority;
    }
    let svc = snap.objects.services.get(service);
    let found = svc.and_then(|s| {
        s.spec
            .as_ref()?
            .ports
            .iter()
            .flatten()
            .find(|p| p.port == i32::from(port))
            .map(|p| (s, p))
    });
    if let Some((svc, sp)) = found {
        let protocol = service_protocol(snap, svc, service, sp);
        backends.push(pb::Backend {
            authority: authority.clone(),
            endpoints: endpoints(snap, service, sp, protocol as i32),
        });
    }
    authority
}

/// The ready endpoints of a service port, from its EndpointSlices, sorted
/// by address (so equal states give equal answers).
fn endpoints(snap: &Snapshot, key: &Key, port: &ServicePort, hint: i32) -> Vec<pb::Endpoint> {
    let mut out: BTreeMap<SocketAddr, pb::Endpoint> = BTreeMap::new();
    let slices = snap.slices_by_service.get(key).into_iter().flatten();
    for slice in slices.filter_map(|k| snap.objects.endpoint_slices.get(k)) {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let slice_port = slice_port(slice, port);
        for ep in slice.endpoints.iter().flatten() {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let addrs: Vec<IpAddr> = ep.addresses.iter().filter_map(|a| a.parse().ok()).collect();
            let pod = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let ns = r.namespace.as_deref().unwrap_or(&key.namespace);
                    snap.objects.pods.get(&Key::new(ns, r.name.as_deref()?))
                })
                .or_else(|| {
                    addrs
                        .iter()
                        .find_map(|ip| snap.pods_by_ip.get(ip))
                        .and_then(|k| snap.objects.pods.get(k))
                });
            let Some(number) = slice_port.or_else(|| target_port(port, pod.map(Arc::as_ref)))
            else {
                continue;
            };
            for ip in addrs {
                let addr = SocketAddr::new(ip, number);
                let e = match pod {
                    Some(pod) => endpoint(snap, pod, addr, Some(hint)),
                    None => pb::Endpoint {
                        addr: addr.to_string(),
                        weight: 1,
                        namespace: key.namespace.clone(),
                        protocol: hint,
                        ..Default::default()
                    },
                };
                out.entry(addr).or_insert(e);
            }
        }
    }
    out.into_values().collect()
}

/// The port number an EndpointSlice gives for the service port (matched
/// by name, as the EndpointSlice controller writes it).
fn slice_port(slice: &EndpointSlice, port: &ServicePort) -> Option<u16> {
    let want = port.name.as_deref().unwrap_or_default();
    slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref().unwrap_or_default() == want)
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

/// The service port's target port on `pod`: a number, or a named
/// container port of the pod. Unset: the service port itself.
fn target_port(port: &ServicePort, pod: Option<&Pod>) -> Option<u16> {
    match &port.target_port {
        None | Some(IntOrString::Int(0)) => u16::try_from(port.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => name.parse::<u16>().ok().or_else(|| {
            pod?.spec
                .as_ref()?
                .containers
                .iter()
                .find_map(|c| inbound::named_port(c, name))
        }),
    }
}
