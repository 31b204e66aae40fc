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

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use trellis_api::discovery::v1 as pb;
use trellis_core::config::PortRange;

use super::annotations::{parse_opaque_ports, OPAQUE_PORTS};
use super::reads::Reads;
use super::routes::{BackendTarget, Rules, Target};
use super::{annotation, Settings, Snapshot};
use crate::objects::{Key, PodInfo};

/// The opaque ports of a pod: its annotation, else its namespace's.
fn opaque_ports(r: &Reads, namespace: &str, own: Option<&str>) -> Vec<PortRange> {
    let ns = r.namespace(namespace);
    own.or_else(|| ns.and_then(|n| annotation(n.as_ref(), OPAQUE_PORTS)))
        .and_then(|v| parse_opaque_ports(v).ok())
        .unwrap_or_default()
}

fn in_ranges(ranges: &[PortRange], port: u16) -> bool {
    ranges.iter().any(|r| r.contains(port))
}

/// The SPIFFE ID of a meshed pod; empty for a pod without the proxy.
fn identity(settings: &Settings, pod: &PodInfo) -> String {
    if !pod.meshed {
        return String::new();
    }
    trellis_core::spiffe::SpiffeId::new(
        &settings.trust_domain,
        &pod.namespace,
        &pod.service_account,
    )
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
fn service_protocol(r: &Reads, svc: &Service, key: &Key, port: &ServicePort) -> pb::ProtocolHint {
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
    let opaque = opaque_ports(r, &key.namespace, annotation(svc, OPAQUE_PORTS));
    match u16::try_from(port.port) {
        Ok(n) if in_ranges(&opaque, n) => P::Opaque,
        _ => P::ProtocolUnknown,
    }
}

/// Resolves `target` for a client in `client_namespace`.
pub fn resolve(snap: &Snapshot, target: SocketAddr, client_namespace: &str) -> pb::Resolution {
    resolve_reading(&Reads::new(snap), target, client_namespace)
}

/// [`resolve`], reading through `r`.
pub(crate) fn resolve_reading(
    r: &Reads,
    target: SocketAddr,
    client_namespace: &str,
) -> pb::Resolution {
    if let Some((key, i)) = r.service_at(target.ip(), target.port()) {
        let svc = r.service(key);
        let port = svc.and_then(|s| s.spec.as_ref()?.ports.as_ref()?.get(*i));
        if let (Some(svc), Some(port)) = (svc, port) {
            return service_resolution(r, key, svc, port, client_namespace);
        }
    }
    if let Some(pod) = r.pod_at(target.ip()) {
        let endpoint = endpoint(r, pod, target, None);
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

fn endpoint(r: &Reads, pod: &PodInfo, addr: SocketAddr, service_hint: Option<i32>) -> pb::Endpoint {
    let ns = pod.namespace.clone();
    let opaque = opaque_ports(r, &ns, pod.annotation(OPAQUE_PORTS));
    let protocol = if in_ranges(&opaque, addr.port()) {
        pb::ProtocolHint::Opaque as i32
    } else {
        service_hint.unwrap_or(pb::ProtocolHint::ProtocolUnknown as i32)
    };
    pb::Endpoint {
        addr: addr.to_string(),
        weight: 1,
        identity: identity(r.settings(), pod),
        workload: pod.workload.clone(),
        pod: pod.name.clone(),
        namespace: ns,
        protocol,
    }
}

fn service_resolution(
    r: &Reads,
    key: &Key,
    svc: &Service,
    port: &ServicePort,
    client_namespace: &str,
) -> pb::Resolution {
    let number = u16::try_from(port.port).unwrap_or_default();
    let protocol = service_protocol(r, svc, key, port);
    let own = authority(r.settings(), key, number);
    let mut backends = vec![pb::Backend {
        authority: own.clone(),
        endpoints: endpoints(r, key, port, protocol as i32),
    }];
    let mut http_routes = Vec::new();
    let mut grpc_routes = Vec::new();
    let applicable = r
        .routes_of(key)
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
                    authority: backend_authority(r, &t.target, number, &mut backends),
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
    r: &Reads,
    target: &Target,
    parent_port: u16,
    backends: &mut Vec<pb::Backend>,
) -> String {
    let (service, port) = match target {
        Target::Invalid(name) => return name.clone(),
        Target::Service { service, port } => (service, port.unwrap_or(parent_port)),
    };
    let authority = authority(r.settings(), service, port);
    if backends.iter().any(|b| b.authority == authority) {
        return authority;
    }
    let svc = r.service(service);
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
        let protocol = service_protocol(r, svc, service, sp);
        backends.push(pb::Backend {
            authority: authority.clone(),
            endpoints: endpoints(r, service, sp, protocol as i32),
        });
    }
    authority
}

/// The ready endpoints of a service port, from its EndpointSlices, sorted
/// by address (so equal states give equal answers).
fn endpoints(r: &Reads, key: &Key, port: &ServicePort, hint: i32) -> Vec<pb::Endpoint> {
    let mut out: BTreeMap<SocketAddr, pb::Endpoint> = BTreeMap::new();
    for slice in r.slices_of(key) {
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
                .filter(|t| t.kind.as_deref() == Some("Pod"))
                .and_then(|t| {
                    let ns = t.namespace.as_deref().unwrap_or(&key.namespace);
                    r.pod(&Key::new(ns, t.name.as_deref()?))
                })
                .or_else(|| addrs.iter().find_map(|ip| r.pod_at(*ip)));
            let Some(number) = slice_port.or_else(|| target_port(port, pod.map(Arc::as_ref)))
            else {
                continue;
            };
            for ip in addrs {
                let addr = SocketAddr::new(ip, number);
                let e = match pod {
                    Some(pod) => endpoint(r, pod, addr, Some(hint)),
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
fn target_port(port: &ServicePort, pod: Option<&PodInfo>) -> Option<u16> {
    match &port.target_port {
        None | Some(IntOrString::Int(0)) => u16::try_from(port.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => {
            name.parse::<u16>().ok().or_else(|| pod?.named_port(name))
        }
    }
}
