//! Decide, then act: a checked mesh file becomes a [`Plan`] — every name,
//! address, file content, rule set and command line `up` will use — before
//! anything on the system is touched. Pure and table-tested; the plan is
//! stored in the state file, so `status`, `exec` and `down` need nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use trellis_core::contract::files::{DestinationEntry, DestinationsFile};
use trellis_core::contract::{
    proxy_env, DEFAULT_ADMIN_LISTEN, DEFAULT_INBOUND_LISTEN, DEFAULT_OUTBOUND_LISTEN,
};

use super::authz::{self, ProxyPolicy};
use super::check::Checked;
use super::controller::{self, ControllerPlan};
use super::identity::{self, IdentityPlan, MeshFiles, PodFiles};
use super::names::{
    host_veth_name, mesh_dir, netns_name, node_netns_name, replica_name, service_chain,
    service_hostnames, spiffe_id, ADMIN_PORT, BRIDGE, CLUSTER_DOMAIN, CLUSTER_FILE, INBOUND_PORT,
    OUTBOUND_PORT, PROXY_UID, REJECT_CHAIN, SERVICES_CHAIN,
};
use super::net::{self, Ipv4Cidr, PodAddresses};
use super::spec::{AuthorizationPolicy, InboundPolicy, MeshFile, Overrides, Probe};
use super::template::{expand, TemplateVars};
use trellis_injector::floor::OutboundMtls;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub mesh: String,
    pub trust_domain: String,
    pub default_inbound_policy: InboundPolicy,
    pub pod_cidr: Ipv4Cidr,
    pub service_cidr: Ipv4Cidr,
    pub node: NodePlan,
    pub pods: Vec<PodPlan>,
    pub services: Vec<ServicePlan>,
    pub routes: Vec<serde_json::Value>,
    pub policies: Vec<AuthorizationPolicy>,
    /// `trellis-identity`, when any pod is meshed.
    #[serde(default)]
    pub identity: Option<IdentityPlan>,
    /// What every proxy's destinations file holds.
    #[serde(default)]
    pub destinations: DestinationsFile,
    /// `trellis-controller`, when any pod is meshed.
    #[serde(default)]
    pub controller: Option<ControllerPlan>,
}

/// The mesh's own "node" namespace, holding the bridge every pod plugs into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePlan {
    pub netns: String,
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway_v6: Option<Ipv6Addr>,
}

/// One replica: a network namespace with its address, its workload command
/// and, when meshed, its sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodPlan {
    pub workload: String,
    pub namespace: String,
    /// Replica name, `web-0`.
    pub name: String,
    pub replica: u32,
    pub netns: String,
    /// The node-side end of the pod's veth pair (the pod side is `eth0`).
    pub host_veth: String,
    pub ip: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub meshed: bool,
    pub service_account: String,
    /// The SPIFFE ID this pod's proxy will prove.
    pub identity: String,
    pub inbound_policy: InboundPolicy,
    pub ports: Vec<u16>,
    /// Of `ports`, those whose inbound connections the proxy captures (all
    /// but `skip-inbound-ports`): where peers speak mutual TLS to it.
    #[serde(default)]
    pub captured_ports: Vec<u16>,
    /// Kubelet-style probes, asked from the node namespace.
    #[serde(default)]
    pub probes: Vec<Probe>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub proxy: Option<ProxyPlan>,
    /// The workload's annotations (the Pod's, in the controller's file).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl PodPlan {
    /// `demo/web-0`.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyPlan {
    /// Arguments after `trellis-proxy`, starting with `init`.
    pub init_args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Where the admin server answers, seen from the node namespace.
    pub admin: SocketAddr,
    /// What `up` writes to the policy file at first.
    #[serde(default)]
    pub policy: ProxyPolicy,
    /// The token, policy, destinations and roots files.
    #[serde(default)]
    pub files: Option<PodFiles>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePlan {
    pub name: String,
    pub namespace: String,
    pub vip: Ipv4Addr,
    /// The workload it selects (label `app`), in its namespace.
    #[serde(default)]
    pub selector: String,
    pub ports: Vec<ServicePortPlan>,
    /// Pod addresses of the selected workload's replicas.
    pub endpoints: Vec<Ipv4Addr>,
}

impl ServicePlan {
    /// `web.demo.svc.cluster.local`.
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.{CLUSTER_DOMAIN}", self.name, self.namespace)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortPlan {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

/// Turns a checked file into a plan. `trellis_bin` is what `{trellis}`
/// expands to.
pub fn build(checked: &Checked, trellis_bin: &str) -> Result<Plan, String> {
    build_next(checked, trellis_bin, None)
}

/// [`build`] for a mesh that runs `previous` (`apply`): pods and services
/// that stay keep their addresses; new ones get addresses none of
/// `previous` had (see [`net::Slots`]).
pub fn build_next(
    checked: &Checked,
    trellis_bin: &str,
    previous: Option<&Plan>,
) -> Result<Plan, String> {
    let file = &checked.file;
    let addrs = PodAddresses::new(checked.pod_cidr, file.ipv6);
    let mut pod_slots = net::Slots::new(
        previous
            .iter()
            .flat_map(|p| &p.pods)
            .filter_map(|p| Some((p.netns.clone(), addrs.index_of(p.ip)?))),
    );
    let mut vip_slots =
        net::Slots::new(previous.iter().flat_map(|p| &p.services).filter_map(|s| {
            let index = net::service_vip_index(checked.service_cidr, s.vip)?;
            Some((format!("{}/{}", s.namespace, s.name), index))
        }));
    let gateway = addrs
        .gateway()
        .ok_or_else(|| format!("podCidr {} has no room for a gateway", checked.pod_cidr))?;
    let files = MeshFiles::new(&mesh_dir(&file.name));
    let identity = file.workloads.iter().any(|w| w.meshed).then(|| {
        identity::identity_plan(
            &file.trust_domain,
            gateway,
            checked.cert_lifetime,
            files.clone(),
        )
    });
    let controller = identity.as_ref().map(|_| {
        controller::controller_plan(
            gateway,
            &file.trust_domain,
            &file.default_inbound_policy.to_string(),
            mesh_dir(&file.name).join(CLUSTER_FILE),
        )
    });
    let node = NodePlan {
        netns: node_netns_name(&file.name),
        bridge: BRIDGE.to_string(),
        gateway,
        prefix_len: checked.pod_cidr.prefix(),
        gateway_v6: addrs.gateway_v6(),
    };

    let mut pods = Vec::new();
    let no_overrides = Overrides::default();
    for (wi, w) in file.workloads.iter().enumerate() {
        let overrides = checked.overrides.get(wi).unwrap_or(&no_overrides);
        for replica in 0..w.replicas {
            let name = replica_name(&w.name, replica);
            let netns = netns_name(&file.name, &w.namespace, &name);
            let index = pod_slots.slot(&netns);
            let ip = addrs
                .pod(index)
                .ok_or_else(|| format!("podCidr {} is full", checked.pod_cidr))?;
            let vars = TemplateVars {
                trellis: trellis_bin.to_string(),
                name: name.clone(),
                workload: w.name.clone(),
                namespace: w.namespace.clone(),
                ip: ip.to_string(),
                port: w.ports.first().copied(),
            };
            let command = w
                .command
                .iter()
                .map(|a| expand(a, &vars))
                .collect::<Result<Vec<_>, _>>()?;
            let mut env = BTreeMap::from([
                ("POD_NAME".to_string(), name.clone()),
                ("POD_NAMESPACE".to_string(), w.namespace.clone()),
                ("POD_IP".to_string(), ip.to_string()),
                ("POD_SERVICE_ACCOUNT".to_string(), w.service_account.clone()),
                ("TRELLIS_MESH".to_string(), file.name.clone()),
            ]);
            env.extend(w.env.clone());
            let pod_identity = spiffe_id(&file.trust_domain, &w.namespace, &w.service_account);
            let proxy = match &identity {
                Some(id) if w.meshed => {
                    let mut proxy = proxy_plan(ip, &w.namespace, &name, overrides, file);
                    let pod_files = files.pod(&w.namespace, &name);
                    proxy.env.extend(identity::proxy_vars(
                        id,
                        &pod_identity,
                        &pod_files,
                        controller.is_none(),
                    ));
                    if let Some(c) = &controller {
                        proxy
                            .env
                            .extend(controller::proxy_vars(c, &w.namespace, &name));
                    }
                    proxy.files = Some(pod_files);
                    proxy.policy = authz::compile(
                        &file.trust_domain,
                        file.default_inbound_policy,
                        overrides,
                        w,
                        &file.policies,
                    );
                    Some(proxy)
                }
                _ => None,
            };
            let skipped = overrides
                .skip_inbound_ports
                .as_deref()
                .and_then(|p| trellis_core::config::parse_ports(p).ok())
                .unwrap_or_default();
            let captured_ports = w
                .ports
                .iter()
                .copied()
                .filter(|p| !skipped.iter().any(|r| r.contains(*p)))
                .collect();
            pods.push(PodPlan {
                workload: w.name.clone(),
                namespace: w.namespace.clone(),
                host_veth: host_veth_name(&netns),
                netns,
                name,
                replica,
                ip,
                ipv6: addrs.pod_v6(index),
                meshed: w.meshed,
                service_account: w.service_account.clone(),
                identity: pod_identity,
                inbound_policy: overrides
                    .inbound_policy
                    .unwrap_or(file.default_inbound_policy),
                ports: w.ports.clone(),
                captured_ports,
                probes: w.probes.clone(),
                command,
                env,
                proxy,
                annotations: w.annotations.clone(),
            });
        }
    }

    let mut services = Vec::new();
    for s in &file.services {
        let index = vip_slots.slot(&format!("{}/{}", s.namespace, s.name));
        let vip = net::service_vip(checked.service_cidr, index)
            .ok_or_else(|| format!("serviceCidr {} is full", checked.service_cidr))?;
        services.push(ServicePlan {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            vip,
            selector: s.selector.clone(),
            ports: s
                .ports
                .iter()
                .map(|p| ServicePortPlan {
                    name: p.name.clone(),
                    port: p.port,
                    target_port: p.target(),
                    app_protocol: p.app_protocol.clone(),
                })
                .collect(),
            endpoints: pods
                .iter()
                .filter(|p| p.workload == s.selector && p.namespace == s.namespace)
                .map(|p| p.ip)
                .collect(),
        });
    }

    let destinations = destinations(&pods, &services);
    Ok(Plan {
        mesh: file.name.clone(),
        trust_domain: file.trust_domain.clone(),
        default_inbound_policy: file.default_inbound_policy,
        pod_cidr: checked.pod_cidr,
        service_cidr: checked.service_cidr,
        node,
        pods,
        services,
        routes: file.routes.clone(),
        policies: file.policies.clone(),
        identity,
        destinations,
        controller,
    })
}

/// Every meshed destination: each meshed pod's ports whose inbound
/// traffic its proxy captures (IPv4, and IPv6 when pods have it), and each
/// service port whose endpoints are such pod ports. A service of unmeshed
/// pods, or without endpoints, is left out: proxies speak plaintext to it.
pub(crate) fn destinations(pods: &[PodPlan], services: &[ServicePlan]) -> DestinationsFile {
    let mut out: BTreeMap<SocketAddr, BTreeSet<String>> = BTreeMap::new();
    for pod in pods.iter().filter(|p| p.meshed) {
        for &port in &pod.captured_ports {
            let mut addrs = vec![SocketAddr::new(IpAddr::V4(pod.ip), port)];
            if let Some(v6) = pod.ipv6 {
                addrs.push(SocketAddr::new(IpAddr::V6(v6), port));
            }
            for a in addrs {
                out.entry(a).or_default().insert(pod.identity.clone());
            }
        }
    }
    for s in services {
        let endpoints: Vec<&PodPlan> = s
            .endpoints
            .iter()
            .filter_map(|ip| pods.iter().find(|p| p.ip == *ip))
            .collect();
        if endpoints.is_empty() || endpoints.len() != s.endpoints.len() {
            continue;
        }
        for p in &s.ports {
            let all_meshed = endpoints
                .iter()
                .all(|e| e.meshed && e.captured_ports.contains(&p.target_port));
            if all_meshed {
                let ids = endpoints.iter().map(|e| e.identity.clone()).collect();
                out.insert(SocketAddr::new(IpAddr::V4(s.vip), p.port), ids);
            }
        }
    }
    DestinationsFile {
        destinations: out
            .into_iter()
            .map(|(addr, ids)| DestinationEntry {
                addr,
                identities: ids.into_iter().collect(),
            })
            .collect(),
    }
}

fn proxy_plan(
    ip: Ipv4Addr,
    namespace: &str,
    name: &str,
    o: &Overrides,
    file: &MeshFile,
) -> ProxyPlan {
    let outbound_mtls = file.outbound_mtls;
    let mut init_args: Vec<String> = [
        "init",
        "--inbound-port",
        &INBOUND_PORT.to_string(),
        "--outbound-port",
        &OUTBOUND_PORT.to_string(),
        "--admin-port",
        &ADMIN_PORT.to_string(),
        "--proxy-uid",
        &PROXY_UID.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(p) = &o.skip_inbound_ports {
        init_args.extend(["--skip-inbound-ports".to_string(), p.clone()]);
    }
    if let Some(p) = &o.skip_outbound_ports {
        init_args.extend(["--skip-outbound-ports".to_string(), p.clone()]);
    }
    let mut env = BTreeMap::from([
        (
            proxy_env::OUTBOUND_LISTEN.to_string(),
            DEFAULT_OUTBOUND_LISTEN.to_string(),
        ),
        (
            proxy_env::INBOUND_LISTEN.to_string(),
            DEFAULT_INBOUND_LISTEN.to_string(),
        ),
        (
            proxy_env::ADMIN_LISTEN.to_string(),
            DEFAULT_ADMIN_LISTEN.to_string(),
        ),
        (
            proxy_env::LOG.to_string(),
            o.proxy_log_level.clone().unwrap_or_else(|| "info".into()),
        ),
        (
            proxy_env::WORKLOAD.to_string(),
            format!("{namespace}/{name}"),
        ),
    ]);
    if let Some(p) = &o.opaque_ports {
        env.insert(proxy_env::OPAQUE_PORTS.to_string(), p.clone());
    }
    // The workload's annotation, or the file's `outboundMtls` (validation
    // refused either below the floor).
    let mtls = o.outbound_mtls.unwrap_or(outbound_mtls);
    if o.outbound_mtls.is_some() || mtls != OutboundMtls::Opportunistic {
        env.insert(proxy_env::OUTBOUND_MTLS.to_string(), mtls.to_string());
    }
    // The workload's annotations, or the file's `tracing` (both checked).
    let collector = o.trace_collector.clone().or_else(|| {
        let c = file.tracing.collector.as_deref()?;
        trellis_core::contract::trace::parse_collector(c).ok()
    });
    if let Some(collector) = collector {
        env.insert(proxy_env::TRACE_COLLECTOR.to_string(), collector);
        let sampling = o
            .trace_sampling
            .clone()
            .or_else(|| file.tracing.sampling.map(|r| r.to_string()));
        if let Some(sampling) = sampling {
            env.insert(proxy_env::TRACE_SAMPLING.to_string(), sampling);
        }
    }
    ProxyPlan {
        init_args,
        env,
        admin: SocketAddr::new(IpAddr::V4(ip), ADMIN_PORT),
        policy: ProxyPolicy::default(),
        files: None,
    }
}

/// The pod's `/etc/hosts` (bind-mounted by `ip netns exec` from
/// `/etc/netns/<netns>/hosts`): itself, and every service by its cluster
/// names; the bare name only within the pod's own namespace.
pub fn hosts_file(plan: &Plan, pod: &PodPlan) -> String {
    let mut out = format!(
        "# Written by `trellis mesh up` for pod {} of mesh {:?}.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        pod.qualified_name(),
        plan.mesh
    );
    let _ = writeln!(out, "{}\t{}", pod.ip, pod.name);
    if let Some(v6) = pod.ipv6 {
        let _ = writeln!(out, "{v6}\t{}", pod.name);
    }
    for s in &plan.services {
        let names = service_hostnames(
            &s.name,
            &s.namespace,
            CLUSTER_DOMAIN,
            s.namespace == pod.namespace,
        );
        let _ = writeln!(out, "{}\t{}", s.vip, names.join(" "));
    }
    out
}

/// The pod's `/etc/resolv.conf`: there is no DNS server in the local mesh
/// (names come from `/etc/hosts`), so lookups of anything else fail fast on
/// the pod's own loopback instead of waiting on the host's resolver, which
/// a pod cannot reach.
pub fn resolv_conf(pod: &PodPlan) -> String {
    format!(
        "# Written by `trellis mesh up`: the local mesh has no DNS server; names are in /etc/hosts.\nsearch {ns}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        ns = pod.namespace
    )
}

/// The kube-proxy-like service rules for every pod, as `iptables-restore
/// --noflush` input. Installed after `trellis-proxy init`, so the jumps to
/// [`SERVICES_CHAIN`] come after the capture jumps: the application's
/// connection to a VIP is captured first, and the proxy's own connection
/// (uid 7102, not captured) is then DNATed to a pod.
pub fn service_rules(services: &[ServicePlan]) -> String {
    let mut nat = String::new();
    let mut chains = vec![SERVICES_CHAIN.to_string()];
    let mut reject = Vec::new();
    for s in services {
        for p in &s.ports {
            let comment = format!(
                "{}/{}:{}",
                s.namespace,
                s.name,
                p.name.clone().unwrap_or_else(|| p.port.to_string())
            );
            if s.endpoints.is_empty() {
                reject.push(format!(
                    "-A {REJECT_CHAIN} -d {}/32 -p tcp -m tcp --dport {} -m comment --comment \"{comment} has no endpoints\" -j REJECT --reject-with tcp-reset",
                    s.vip, p.port
                ));
                continue;
            }
            let chain = service_chain(&s.namespace, &s.name, p.port, "tcp");
            let _ = writeln!(
                nat,
                "-A {SERVICES_CHAIN} -d {}/32 -p tcp -m tcp --dport {} -m comment --comment \"{comment}\" -j {chain}",
                s.vip, p.port
            );
            let targets: Vec<String> = s
                .endpoints
                .iter()
                .map(|ep| format!("{ep}:{}", p.target_port))
                .collect();
            spread_dnat(&mut nat, &chain, "tcp", &targets);
            chains.push(chain);
        }
    }
    let mut out = String::from("*nat\n");
    for c in &chains {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    let _ = writeln!(out, "-A PREROUTING -j {SERVICES_CHAIN}");
    let _ = writeln!(out, "-A OUTPUT -j {SERVICES_CHAIN}");
    out.push_str(&nat);
    out.push_str("COMMIT\n");
    if !reject.is_empty() {
        let _ = writeln!(
            out,
            "*filter\n:{REJECT_CHAIN} - [0:0]\n-A OUTPUT -j {REJECT_CHAIN}"
        );
        for r in reject {
            out.push_str(&r);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

impl Plan {
    /// Finds a pod by `web` (replica 0), `web-1`, `demo/web` or `demo/web-1`.
    pub fn find_pod(&self, query: &str) -> Result<&PodPlan, String> {
        let (ns, name) = match query.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, query),
        };
        let in_ns = |p: &&PodPlan| ns.is_none_or(|ns| p.namespace == ns);
        let mut hits: Vec<&PodPlan> = self
            .pods
            .iter()
            .filter(in_ns)
            .filter(|p| p.name == name)
            .collect();
        if hits.is_empty() {
            hits = self
                .pods
                .iter()
                .filter(in_ns)
                .filter(|p| p.workload == name && p.replica == 0)
                .collect();
        }
        match hits.as_slice() {
            [one] => Ok(one),
            [] => Err(format!(
                "no pod {query:?} in mesh {:?}; pods: {}",
                self.mesh,
                self.pods
                    .iter()
                    .map(|p| p.qualified_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            many => Err(format!(
                "{query:?} is ambiguous: {}; say NAMESPACE/NAME",
                many.iter()
                    .map(|p| p.qualified_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// A service chain's DNAT rules, as kube-proxy writes them: each of N
/// targets (`ip:port`) gets 1/N of the connections, by rules that take
/// 1/N, then 1/(N-1) of the rest, …, and the last one unconditionally.
pub fn spread_dnat(out: &mut String, chain: &str, proto: &str, targets: &[String]) {
    for (i, target) in targets.iter().enumerate() {
        let remaining = targets.len() - i;
        let pick = if remaining > 1 {
            format!(
                "-m statistic --mode random --probability {:.10} ",
                1.0 / remaining as f64
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "-A {chain} -p {proto} {pick}-j DNAT --to-destination {target}"
        );
    }
}

#[cfg(test)]
mod tests;
