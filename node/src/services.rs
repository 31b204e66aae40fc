//! kube-proxy for one pod, decided purely: the cluster's Services and
//! EndpointSlices become [`ServiceView`]s ([`collect`]), and those become
//! the pod's DNAT rules ([`iptables_restore`]) and its `/etc/hosts`
//! ([`hosts_file`]). The caller runs `iptables-save` and
//! `iptables-restore` in the pod's network namespace and writes the file.
//!
//! IPv4 only: a Service's IPv4 cluster IP, endpoints of `IPv4`
//! EndpointSlices. The rules follow the local mesh's (`trellis_mesh::plan`):
//! the nat chain [`SERVICES_CHAIN`] jumps per service port to a chain named
//! by [`service_chain`] that spreads connections over the endpoints, and
//! the filter chain [`REJECT_CHAIN`] refuses service ports without any.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort, EndpointSlice};
use trellis_mesh::names::{
    service_chain, service_hostnames, REJECT_CHAIN, SERVICES_CHAIN, SERVICE_CHAIN_PREFIX,
};
use trellis_mesh::plan::spread_dnat;

/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One Service as kube-proxy sees it: its address, ports and endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    pub address: ServiceAddress,
    /// In the Service's order.
    pub ports: Vec<PortView>,
    /// Every endpoint of the Service's slices, whatever its ports, by
    /// address: what a headless Service's names resolve to (when ready).
    pub endpoints: Vec<Endpoint>,
}

/// How a Service is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAddress {
    /// A virtual IP, DNATed to endpoints.
    ClusterIp(Ipv4Addr),
    /// `clusterIP: None`: its names are its ready endpoints' addresses.
    Headless,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortView {
    /// `""` for the one unnamed port a Service may have.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// The endpoints serving it, sorted by address and port.
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// As iptables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// An endpoint's address and port for one service port (the slice port of
/// the same name and protocol: what kube-proxy matches by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub address: Ipv4Addr,
    pub port: u16,
    pub conditions: Conditions,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub address: Ipv4Addr,
    /// `web-0` of a StatefulSet's pod: named `web-0.<service>.<ns>…`.
    pub hostname: Option<String>,
    pub conditions: Conditions,
}

/// An endpoint's conditions, with the API's defaults for absent ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl From<Option<&EndpointConditions>> for Conditions {
    fn from(c: Option<&EndpointConditions>) -> Self {
        let c = c.cloned().unwrap_or_default();
        Conditions {
            ready: c.ready.unwrap_or(true),
            serving: c.serving.unwrap_or(true),
            terminating: c.terminating.unwrap_or(false),
        }
    }
}

/// Every Service with an IPv4 cluster IP or headless, with its endpoints
/// from the `IPv4` EndpointSlices labelled with its name, sorted by
/// namespace and name. Left out: ExternalName Services, Services without
/// an IPv4 cluster IP (not allocated yet, or IPv6 only), ports of unknown
/// protocol. Of an endpoint's addresses only the first counts, as in
/// kube-proxy; duplicates across slices count once.
pub fn collect(services: &[Service], slices: &[EndpointSlice]) -> Vec<ServiceView> {
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        let meta = &slice.metadata;
        let service = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (Some(ns), Some(service)) = (meta.namespace.as_deref(), service) {
            by_service.entry((ns, service)).or_default().push(slice);
        }
    }
    // Where slices disagree about an endpoint, the first by name wins.
    for slices in by_service.values_mut() {
        slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
    let mut views: Vec<ServiceView> = services
        .iter()
        .filter_map(|s| {
            let namespace = s.metadata.namespace.as_deref()?;
            let name = s.metadata.name.as_deref()?;
            let slices = by_service.get(&(namespace, name)).map_or(&[][..], |v| v);
            view(s, namespace, name, slices)
        })
        .collect();
    views.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    views
}

fn view(
    s: &Service,
    namespace: &str,
    name: &str,
    slices: &[&EndpointSlice],
) -> Option<ServiceView> {
    let spec = s.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let address = if spec.cluster_ip.as_deref() == Some("None") {
        ServiceAddress::Headless
    } else {
        let v4 = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(&spec.cluster_ip)
            .find_map(|ip| ip.parse::<Ipv4Addr>().ok())?;
        ServiceAddress::ClusterIp(v4)
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| port_view(p, slices))
        .collect();
    let mut endpoints: BTreeMap<Ipv4Addr, Endpoint> = BTreeMap::new();
    for e in slices.iter().flat_map(|s| s.endpoints.iter().flatten()) {
        if let Some(address) = first_address(&e.addresses) {
            endpoints.entry(address).or_insert_with(|| Endpoint {
                address,
                hostname: e.hostname.clone(),
                conditions: e.conditions.as_ref().into(),
            });
        }
    }
    Some(ServiceView {
        namespace: namespace.to_string(),
        name: name.to_string(),
        address,
        ports,
        endpoints: endpoints.into_values().collect(),
    })
}

fn port_view(p: &ServicePort, slices: &[&EndpointSlice]) -> Option<PortView> {
    let protocol = Protocol::parse(p.protocol.as_deref())?;
    let name = p.name.clone().unwrap_or_default();
    let same = |sp: &&EndpointPort| {
        sp.name.as_deref().unwrap_or("") == name
            && Protocol::parse(sp.protocol.as_deref()) == Some(protocol)
    };
    // One entry per address and port, from the first slice listing it.
    let mut backends: BTreeMap<(Ipv4Addr, u16), Conditions> = BTreeMap::new();
    for slice in slices {
        let target = slice.ports.iter().flatten().find(same);
        let Some(target) = target.and_then(|sp| port(sp.port?)) else {
            continue;
        };
        for e in slice.endpoints.iter().flatten() {
            if let Some(address) = first_address(&e.addresses) {
                backends
                    .entry((address, target))
                    .or_insert_with(|| e.conditions.as_ref().into());
            }
        }
    }
    Some(PortView {
        name,
        protocol,
        port: port(p.port)?,
        backends: backends
            .into_iter()
            .map(|((address, port), conditions)| Backend {
                address,
                port,
                conditions,
            })
            .collect(),
    })
}

fn first_address(addresses: &[String]) -> Option<Ipv4Addr> {
    addresses.first()?.parse().ok()
}

fn port(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// The endpoints a port's connections go to, as kube-proxy picks them: the
/// ready ones; when none is, those still serving while they terminate.
fn usable(backends: &[Backend]) -> Vec<&Backend> {
    let ready: Vec<&Backend> = backends.iter().filter(|b| b.conditions.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    backends
        .iter()
        .filter(|b| b.conditions.serving && b.conditions.terminating)
        .collect()
}

/// Input for `iptables-restore --noflush` in the pod's namespace, making
/// its service rules those of `views`. `current` is what `iptables-save`
/// printed there just before (both the `nat` and `filter` tables); from it
/// come the two facts that make the input idempotent:
///
/// - the jumps `-A OUTPUT -j` [`SERVICES_CHAIN`] (nat) and [`REJECT_CHAIN`]
///   (filter) are *appended* only when absent, so capture rules that a
///   sidecar's init container inserted at the top of `OUTPUT` stay first,
///   whenever either ran;
/// - per-port chains of Services gone since are flushed and deleted.
///
/// Declaring a chain (`:CHAIN - [0:0]`) flushes it, so every chain is
/// rewritten whole. Per service port with usable endpoints (see `usable`),
/// a chain DNATs to each of N with probability 1/N (kube-proxy's
/// `statistic` cascade); a ClusterIP port without any is refused at once
/// (TCP reset, or ICMP port unreachable) rather than left to time out.
pub fn iptables_restore(views: &[ServiceView], current: &str) -> String {
    let existing = Existing::parse(current);
    let mut chains = Vec::new();
    let mut nat = String::new();
    let mut reject = String::new();
    for s in views {
        let ServiceAddress::ClusterIp(vip) = s.address else {
            continue;
        };
        for p in &s.ports {
            let proto = p.protocol.as_str();
            let label = if p.name.is_empty() {
                p.port.to_string()
            } else {
                p.name.clone()
            };
            let comment = format!("{}/{}:{label}", s.namespace, s.name);
            let matches = format!("-d {vip}/32 -p {proto} -m {proto} --dport {}", p.port);
            let backends = usable(&p.backends);
            if backends.is_empty() {
                let with = match p.protocol {
                    Protocol::Tcp => "tcp-reset",
                    Protocol::Udp | Protocol::Sctp => "icmp-port-unreachable",
                };
                let _ = writeln!(
                    reject,
                    "-A {REJECT_CHAIN} {matches} -m comment --comment \"{comment} has no endpoints\" -j REJECT --reject-with {with}"
                );
                continue;
            }
            let chain = service_chain(&s.namespace, &s.name, p.port, proto);
            let _ = writeln!(
                nat,
                "-A {SERVICES_CHAIN} {matches} -m comment --comment \"{comment}\" -j {chain}"
            );
            let targets: Vec<String> = backends
                .iter()
                .map(|b| format!("{}:{}", b.address, b.port))
                .collect();
            spread_dnat(&mut nat, &chain, proto, &targets);
            chains.push(chain);
        }
    }
    let stale: Vec<&str> = existing
        .service_chains
        .iter()
        .copied()
        .filter(|c| !chains.iter().any(|k| k == c))
        .collect();

    let mut out = String::from("*nat\n");
    for c in std::iter::once(SERVICES_CHAIN)
        .chain(chains.iter().map(String::as_str))
        .chain(stale.iter().copied())
    {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    if !existing.nat_jump {
        let _ = writeln!(out, "-A OUTPUT -j {SERVICES_CHAIN}");
    }
    out.push_str(&nat);
    for c in &stale {
        let _ = writeln!(out, "-X {c}");
    }
    let _ = writeln!(out, "COMMIT\n*filter\n:{REJECT_CHAIN} - [0:0]");
    if !existing.filter_jump {
        let _ = writeln!(out, "-A OUTPUT -j {REJECT_CHAIN}");
    }
    out.push_str(&reject);
    out.push_str("COMMIT\n");
    out
}

/// What `iptables-save` shows of ours.
#[derive(Debug, Default)]
struct Existing<'a> {
    nat_jump: bool,
    filter_jump: bool,
    service_chains: Vec<&'a str>,
}

impl<'a> Existing<'a> {
    fn parse(save: &'a str) -> Self {
        let nat_jump = format!("-A OUTPUT -j {SERVICES_CHAIN}");
        let filter_jump = format!("-A OUTPUT -j {REJECT_CHAIN}");
        let mut found = Existing::default();
        let mut table = "";
        for line in save.lines().map(str::trim) {
            if let Some(t) = line.strip_prefix('*') {
                table = t;
            } else if table == "nat" && line == nat_jump {
                found.nat_jump = true;
            } else if table == "filter" && line == filter_jump {
                found.filter_jump = true;
            } else if let Some(chain) = line.strip_prefix(':') {
                let name = chain.split_whitespace().next().unwrap_or("");
                if table == "nat" && name.starts_with(SERVICE_CHAIN_PREFIX) {
                    found.service_chains.push(name);
                }
            }
        }
        found
    }
}

/// The pod's `/etc/hosts`: localhost, the pod's own addresses under its
/// hostname (and its name, when that differs), then every Service by the
/// names of [`service_hostnames`] — its cluster IP, or, headless, each
/// ready endpoint's address (and `<hostname>.<service>…` for endpoints
/// with a hostname, as cluster DNS answers for a StatefulSet's pods).
pub fn hosts_file(
    views: &[ServiceView],
    pod_namespace: &str,
    pod_name: &str,
    hostname: &str,
    pod_ips: &[IpAddr],
    cluster_domain: &str,
) -> String {
    let mut out = format!(
        "# Written by trellis-node for pod {pod_namespace}/{pod_name}.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    );
    let own = if hostname == pod_name {
        hostname.to_string()
    } else {
        format!("{hostname} {pod_name}")
    };
    for ip in pod_ips {
        let _ = writeln!(out, "{ip}\t{own}");
    }
    for s in views {
        let same_namespace = s.namespace == pod_namespace;
        let names = service_hostnames(&s.name, &s.namespace, cluster_domain, same_namespace);
        match s.address {
            ServiceAddress::ClusterIp(vip) => {
                let _ = writeln!(out, "{vip}\t{}", names.join(" "));
            }
            ServiceAddress::Headless => {
                for e in s.endpoints.iter().filter(|e| e.conditions.ready) {
                    let _ = writeln!(out, "{}\t{}", e.address, names.join(" "));
                    if let Some(h) = &e.hostname {
                        let named: Vec<String> = names.iter().map(|n| format!("{h}.{n}")).collect();
                        let _ = writeln!(out, "{}\t{}", e.address, named.join(" "));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
