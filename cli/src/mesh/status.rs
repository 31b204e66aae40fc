//! `mesh status` and `mesh list`: what a mesh is made of and whether each
//! pod is live and ready, as a table or as JSON.

use std::time::Duration;

use serde::Serialize;

use super::plan::{PodPlan, ServicePlan};
use super::state::{Phase, Role, State, Store};
use super::{http, sys, table};

const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MeshStatus {
    pub name: String,
    pub phase: Phase,
    pub source: String,
    pub state_dir: String,
    pub trust_domain: String,
    pub default_inbound_policy: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub node_netns: String,
    /// Every pod ready.
    pub ready: bool,
    pub pods: Vec<PodStatus>,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PodStatus {
    pub namespace: String,
    pub workload: String,
    pub name: String,
    pub netns: String,
    pub ip: String,
    pub ipv6: Option<String>,
    pub meshed: bool,
    pub identity: String,
    pub inbound_policy: String,
    pub admin_url: Option<String>,
    pub processes: Vec<ProcessStatus>,
    /// `None` for unmeshed pods.
    pub proxy_ready: Option<bool>,
    pub ports: Vec<u16>,
    pub ports_listening: bool,
    pub ready: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProcessStatus {
    pub role: Role,
    pub pid: Option<u32>,
    pub alive: bool,
    pub log: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceStatus {
    pub namespace: String,
    pub name: String,
    pub fqdn: String,
    pub vip: String,
    pub ports: Vec<String>,
    pub endpoints: Vec<String>,
}

pub(crate) fn collect(store: &Store) -> MeshStatus {
    let s = &store.state;
    let pods: Vec<PodStatus> = s.plan.pods.iter().map(|p| pod_status(s, p)).collect();
    MeshStatus {
        name: s.mesh.clone(),
        phase: s.phase,
        source: s.source.clone(),
        state_dir: store.dir().display().to_string(),
        trust_domain: s.plan.trust_domain.clone(),
        default_inbound_policy: s.plan.default_inbound_policy.to_string(),
        pod_cidr: s.plan.pod_cidr.to_string(),
        service_cidr: s.plan.service_cidr.to_string(),
        node_netns: s.plan.node.netns.clone(),
        ready: s.phase == Phase::Ready && pods.iter().all(|p| p.ready),
        pods,
        services: s.plan.services.iter().map(service_status).collect(),
    }
}

fn pod_status(state: &State, pod: &PodPlan) -> PodStatus {
    let exists = sys::netns_exists(&pod.netns);
    let processes: Vec<ProcessStatus> = state
        .processes
        .iter()
        .filter(|p| p.netns == pod.netns)
        .map(|p| ProcessStatus {
            role: p.role,
            pid: p.pid,
            alive: p.pid.is_some_and(|pid| sys::is_alive(pid, p.start_time)),
            log: p.log.display().to_string(),
        })
        .collect();
    let proxy_ready = pod.proxy.as_ref().map(|proxy| {
        exists
            && http::get(&state.plan.node.netns, proxy.admin, "/ready", PROBE_TIMEOUT)
                .is_ok_and(|r| r.status == 200)
    });
    let ports_listening = exists
        && sys::listening_ports(&pod.netns).is_ok_and(|l| pod.ports.iter().all(|p| l.contains(p)));
    let expected = if pod.meshed { 2 } else { 1 };
    let live = processes.iter().filter(|p| p.alive).count();
    PodStatus {
        namespace: pod.namespace.clone(),
        workload: pod.workload.clone(),
        name: pod.name.clone(),
        netns: pod.netns.clone(),
        ip: pod.ip.to_string(),
        ipv6: pod.ipv6.map(|v| v.to_string()),
        meshed: pod.meshed,
        identity: pod.identity.clone(),
        inbound_policy: pod.inbound_policy.to_string(),
        admin_url: pod.proxy.as_ref().map(|p| format!("http://{}", p.admin)),
        ready: exists && live == expected && proxy_ready != Some(false) && ports_listening,
        processes,
        proxy_ready,
        ports: pod.ports.clone(),
        ports_listening,
    }
}

fn service_status(s: &ServicePlan) -> ServiceStatus {
    ServiceStatus {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        fqdn: s.fqdn(),
        vip: s.vip.to_string(),
        ports: s
            .ports
            .iter()
            .map(|p| format!("{}->{}", p.port, p.target_port))
            .collect(),
        endpoints: s.endpoints.iter().map(|e| e.to_string()).collect(),
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

pub(crate) fn render(st: &MeshStatus) -> String {
    let mut out = format!(
        "mesh {} ({}) from {}; trust domain {}; default inbound policy {}; node netns {}\n\n",
        st.name,
        match st.phase {
            Phase::Ready => "ready",
            Phase::Creating => "creating, or `up` died: run `trellis mesh down`",
            Phase::Deleting => "deleting, or `down` died: run `trellis mesh down` again",
        },
        st.source,
        st.trust_domain,
        st.default_inbound_policy,
        st.node_netns
    );
    let rows: Vec<Vec<String>> = st
        .pods
        .iter()
        .map(|p| {
            let procs = p
                .processes
                .iter()
                .map(|pr| {
                    format!(
                        "{}:{}",
                        pr.role.as_str(),
                        if pr.alive { "up" } else { "DOWN" }
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            let ready = if p.ready {
                "yes".to_string()
            } else if p.proxy_ready == Some(false) {
                "no (proxy)".to_string()
            } else if !p.ports_listening {
                "no (ports)".to_string()
            } else {
                "no".to_string()
            };
            vec![
                format!("{}/{}", p.namespace, p.name),
                p.netns.clone(),
                p.ip.clone(),
                yes_no(p.meshed),
                p.identity.clone(),
                p.admin_url.clone().unwrap_or_else(|| "-".into()),
                procs,
                ready,
            ]
        })
        .collect();
    out.push_str(&table::render(
        &[
            "POD",
            "NETNS",
            "ADDRESS",
            "MESHED",
            "IDENTITY",
            "ADMIN",
            "PROCESSES",
            "READY",
        ],
        &rows,
    ));
    if !st.services.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = st
            .services
            .iter()
            .map(|s| {
                vec![
                    format!("{}/{}", s.namespace, s.name),
                    s.fqdn.clone(),
                    s.vip.clone(),
                    s.ports.join(","),
                    s.endpoints.join(","),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &["SERVICE", "NAME", "VIP", "PORTS", "ENDPOINTS"],
            &rows,
        ));
    }
    if let Some(p) = st.pods.iter().find(|p| p.meshed) {
        out.push_str(&format!(
            "\nAdmin URLs answer inside the mesh, e.g. `trellis mesh exec --name {} {}/{} -- curl -s {}/metrics`\n",
            st.name,
            p.namespace,
            p.name,
            p.admin_url.clone().unwrap_or_default()
        ));
    }
    out
}
