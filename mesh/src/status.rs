//! `mesh status` and `mesh list`: what a mesh is made of and whether each
//! pod is live and ready, as a table or as JSON — with the identity
//! service, each proxy's certificate (its admin `/identity`), and the files
//! each proxy reads.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::authz::ProxyPolicy;
use super::plan::{PodPlan, ServicePlan};
use super::state::{LastExit, Phase, PodRun, ProcessRecord, Role, State, Store};
use super::{health, http, ready, sys, table};

const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatus {
    pub name: String,
    /// `ready`, `degraded` (a pod is restarting), `failed` (a pod is past
    /// its restart limit), `creating`, `applying` or `deleting`.
    pub phase: &'static str,
    pub source: String,
    pub state_dir: String,
    pub trust_domain: String,
    pub default_inbound_policy: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub node_netns: String,
    /// `trellis-identity`, when pods are meshed.
    pub identity_service: Option<IdentityServiceStatus>,
    /// `trellis-controller`, when pods are meshed.
    pub controller: Option<ControllerStatus>,
    /// The node namespace's processes (identity service, node agent).
    pub node_processes: Vec<ProcessStatus>,
    /// Every pod ready.
    pub ready: bool,
    pub pods: Vec<PodStatus>,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub namespace: String,
    pub workload: String,
    pub name: String,
    pub netns: String,
    pub ip: String,
    pub ipv6: Option<String>,
    pub meshed: bool,
    /// The pod's SPIFFE ID; `None` for an unmeshed pod, which has no proxy
    /// and so no identity (its ServiceAccount alone proves nothing).
    pub identity: Option<String>,
    /// The default inbound policy in force: the policy file's, else the plan's.
    pub inbound_policy: String,
    pub admin_url: Option<String>,
    pub processes: Vec<ProcessStatus>,
    /// `running`, `restarting` (out of its services until ready again) or
    /// `failed` (past the restart limit): the supervisor's view.
    pub state: PodRun,
    /// How often the supervisor restarted its processes.
    pub restarts: u32,
    /// How its last exited process ended.
    pub last_exit: Option<LastExit>,
    /// `None` for unmeshed pods.
    pub proxy_ready: Option<bool>,
    /// `issued`, `pending` (no certificate yet), or why it is unknown;
    /// `None` for unmeshed pods.
    pub identity_state: Option<String>,
    /// The proxy's current certificate, from its admin `/identity`.
    pub certificate: Option<Certificate>,
    pub ports: Vec<u16>,
    pub ports_listening: bool,
    /// Every declared probe answers 2xx/3xx from the node namespace.
    pub probes_ok: bool,
    /// The files the proxy reads (`None` for unmeshed pods).
    pub policy_file: Option<String>,
    pub destinations_file: Option<String>,
    pub token_file: Option<String>,
    pub roots_file: Option<String>,
    pub ready: bool,
}

/// What a proxy's admin `/identity` answers once it holds a certificate
/// (other fields it sends are ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    pub identity: String,
    #[serde(default)]
    pub serial: String,
    /// RFC 3339 (the proxy may send RFC 3339 or unix seconds).
    #[serde(default, deserialize_with = "rfc3339_or_unix")]
    pub not_after: String,
    /// Fingerprint of the issuer that signed it (`sha256:…`).
    #[serde(default)]
    pub issuer: String,
    /// Fingerprint of the trust-root bundle the proxy holds now.
    #[serde(default)]
    pub trust_roots: String,
}

/// A time as RFC 3339 text, from RFC 3339 text or unix seconds.
fn rfc3339_or_unix<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Time {
        Unix(u64),
        Text(String),
    }
    Ok(match Time::deserialize(d)? {
        Time::Text(s) => s,
        Time::Unix(secs) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs))
                .to_string()
        }
    })
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityServiceStatus {
    pub addr: String,
    pub admin_url: String,
    pub server_identity: String,
    pub ready: bool,
    pub roots_file: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerStatus {
    /// gRPC, what proxies dial.
    pub addr: String,
    pub admin_url: String,
    /// Its `/ready` answers 200 (its first sync of the file is done).
    pub ready: bool,
    /// The Kubernetes objects it reads (`cluster.yaml`).
    pub file: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStatus {
    pub role: Role,
    pub pid: Option<u32>,
    pub alive: bool,
    pub log: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub namespace: String,
    pub name: String,
    pub fqdn: String,
    pub vip: String,
    pub ports: Vec<String>,
    pub endpoints: Vec<String>,
}

pub fn collect(store: &Store) -> MeshStatus {
    let s = &store.state;
    let pods: Vec<PodStatus> = s.plan.pods.iter().map(|p| pod_status(s, p)).collect();
    let node_up = sys::netns_exists(&s.plan.node.netns);
    let identity_service = s.plan.identity.as_ref().map(|id| IdentityServiceStatus {
        addr: id.addr.to_string(),
        admin_url: format!("http://{}", id.admin),
        server_identity: id.server_identity.clone(),
        ready: node_up
            && http::get(&s.plan.node.netns, id.admin, "/ready", PROBE_TIMEOUT)
                .is_ok_and(|r| r.status == 200),
        roots_file: id.files.roots.display().to_string(),
    });
    let controller = s.plan.controller.as_ref().map(|c| ControllerStatus {
        addr: c.addr.to_string(),
        admin_url: format!("http://{}", c.admin),
        ready: node_up
            && http::get(&s.plan.node.netns, c.admin, "/ready", PROBE_TIMEOUT)
                .is_ok_and(|r| r.status == 200),
        file: c.file.display().to_string(),
    });
    let node_processes: Vec<ProcessStatus> = s.node_processes.iter().map(process_status).collect();
    let node_ok = node_processes.iter().all(|p| p.alive)
        && identity_service.as_ref().is_none_or(|i| i.ready)
        && controller.as_ref().is_none_or(|c| c.ready);
    MeshStatus {
        name: s.mesh.clone(),
        phase: health::shown_phase(s.phase, &s.health),
        source: s.source.clone(),
        state_dir: store.dir().display().to_string(),
        trust_domain: s.plan.trust_domain.clone(),
        default_inbound_policy: s.plan.default_inbound_policy.to_string(),
        pod_cidr: s.plan.pod_cidr.to_string(),
        service_cidr: s.plan.service_cidr.to_string(),
        node_netns: s.plan.node.netns.clone(),
        identity_service,
        controller,
        node_processes,
        ready: s.phase == Phase::Ready && node_ok && pods.iter().all(|p| p.ready),
        pods,
        services: s.plan.services.iter().map(service_status).collect(),
    }
}

fn process_status(p: &ProcessRecord) -> ProcessStatus {
    ProcessStatus {
        role: p.role,
        pid: p.pid,
        alive: p.pid.is_some_and(|pid| sys::is_alive(pid, p.start_time)),
        log: p.log.display().to_string(),
    }
}

/// The proxy's certificate: `(state, certificate)`, read from inside the
/// pod (the proxy's `/identity` answers only on its own host) on the admin
/// port.
pub fn certificate(pod_netns: &str, admin_port: u16) -> (String, Option<Certificate>) {
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], admin_port));
    match http::get(pod_netns, admin, "/identity", PROBE_TIMEOUT) {
        Ok(r) if r.status == 200 => match serde_json::from_slice::<Certificate>(&r.body) {
            Ok(c) => ("issued".to_string(), Some(c)),
            Err(e) => (format!("unreadable /identity answer: {e}"), None),
        },
        Ok(r) if r.status == 503 => ("pending".to_string(), None),
        Ok(r) if r.status == 404 => ("unknown (the proxy has no /identity)".to_string(), None),
        Ok(r) => (format!("/identity answers {}", r.status), None),
        Err(e) => (format!("unreachable: {e}"), None),
    }
}

fn pod_status(state: &State, pod: &PodPlan) -> PodStatus {
    let exists = sys::netns_exists(&pod.netns);
    let node = &state.plan.node.netns;
    let processes: Vec<ProcessStatus> = state
        .processes
        .iter()
        .filter(|p| p.netns == pod.netns)
        .map(process_status)
        .collect();
    let proxy_ready = pod.proxy.as_ref().map(|proxy| {
        exists
            && http::get(node, proxy.admin, "/ready", PROBE_TIMEOUT).is_ok_and(|r| r.status == 200)
    });
    let (identity_state, certificate) = match &pod.proxy {
        Some(proxy) if exists => {
            let (st, cert) = certificate(&pod.netns, proxy.admin.port());
            (Some(st), cert)
        }
        Some(_) => (Some("pod is gone".to_string()), None),
        None => (None, None),
    };
    let files = pod.proxy.as_ref().and_then(|p| p.files.as_ref());
    let shown = |f: fn(&super::identity::PodFiles) -> &std::path::Path| {
        files.map(|x| f(x).display().to_string())
    };
    let in_force = files
        .and_then(|f| std::fs::read(&f.policy).ok())
        .and_then(|b| serde_json::from_slice::<ProxyPolicy>(&b).ok())
        .map_or(pod.inbound_policy, |p| p.default_policy);
    let ports_listening = exists
        && sys::listening_ports(&pod.netns).is_ok_and(|l| pod.ports.iter().all(|p| l.contains(p)));
    let probes_ok = pod.probes.is_empty() || (exists && ready::probes_failing(node, pod).is_none());
    let health = state.health.get(&pod.netns).cloned().unwrap_or_default();
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
        identity: pod.meshed.then(|| pod.identity.clone()),
        inbound_policy: in_force.to_string(),
        admin_url: pod.proxy.as_ref().map(|p| format!("http://{}", p.admin)),
        ready: exists
            && health.state == PodRun::Running
            && live == expected
            && proxy_ready != Some(false)
            && ports_listening
            && probes_ok,
        processes,
        state: health.state,
        restarts: health.restarts,
        last_exit: health.last_exit,
        proxy_ready,
        identity_state,
        certificate,
        ports: pod.ports.clone(),
        ports_listening,
        probes_ok,
        policy_file: shown(|f| &f.policy),
        destinations_file: shown(|f| &f.destinations),
        token_file: shown(|f| &f.token),
        roots_file: shown(|f| &f.roots),
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

pub fn render(st: &MeshStatus) -> String {
    let mut out = format!(
        "mesh {} ({}) from {}; trust domain {}; default inbound policy {}; node netns {}\n\n",
        st.name,
        match st.phase {
            "ready" => "ready",
            "degraded" => "DEGRADED: a pod is restarting",
            "failed" => "FAILED: a pod exited too often and is no longer restarted",
            "creating" => "creating, or `up` died: run `trellis mesh down`",
            "deleting" => "deleting, or `down` died: run `trellis mesh down` again",
            _ => "applying a change, or `apply` died: run `trellis mesh apply` again",
        },
        st.source,
        st.trust_domain,
        st.default_inbound_policy,
        st.node_netns
    );
    if let Some(id) = &st.identity_service {
        out.push_str(&format!(
            "identity service {} ({}) at {}, admin {}; roots {}\n\n",
            id.server_identity,
            if id.ready { "ready" } else { "NOT READY" },
            id.addr,
            id.admin_url,
            id.roots_file
        ));
    }
    if let Some(c) = &st.controller {
        out.push_str(&format!(
            "controller ({}) at {}, admin {}; objects {}\n\n",
            if c.ready { "ready" } else { "NOT READY" },
            c.addr,
            c.admin_url,
            c.file
        ));
    }
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
            } else if p.state != PodRun::Running {
                format!("no ({})", p.state.as_str())
            } else if p.proxy_ready == Some(false) {
                "no (proxy)".to_string()
            } else if !p.ports_listening {
                "no (ports)".to_string()
            } else if !p.probes_ok {
                "no (probes)".to_string()
            } else {
                "no".to_string()
            };
            let cert = match (&p.certificate, &p.identity_state) {
                (Some(c), _) => format!("until {}", c.not_after),
                (None, Some(state)) => state.clone(),
                (None, None) => "-".to_string(),
            };
            vec![
                format!("{}/{}", p.namespace, p.name),
                p.netns.clone(),
                p.ip.clone(),
                yes_no(p.meshed),
                p.identity.clone().unwrap_or_else(|| "-".into()),
                cert,
                if p.meshed {
                    p.inbound_policy.clone()
                } else {
                    "-".to_string()
                },
                p.admin_url.clone().unwrap_or_else(|| "-".into()),
                procs,
                p.restarts.to_string(),
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
            "CERTIFICATE",
            "POLICY",
            "ADMIN",
            "PROCESSES",
            "RESTARTS",
            "READY",
        ],
        &rows,
    ));
    for p in &st.pods {
        if let Some(e) = &p.last_exit {
            let at = std::time::UNIX_EPOCH + Duration::from_millis(e.at_unix_ms);
            out.push_str(&format!(
                "{}/{}: {} ({} restart(s)); its {} last exited at {}: {}\n",
                p.namespace,
                p.name,
                p.state.as_str(),
                p.restarts,
                e.role.as_str(),
                humantime::format_rfc3339_seconds(at),
                e.status
            ));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_proxys_identity_answer() {
        let unix: Certificate = serde_json::from_str(
            r#"{"identity":"spiffe://cluster.local/ns/e2e/sa/web","notAfter":1795927204,"notBefore":1795840744,"serial":"5db8","state":"ready","trustRoots":"sha256:d1"}"#,
        )
        .unwrap();
        assert_eq!(unix.not_after, "2026-11-29T04:40:04Z");
        assert_eq!(unix.serial, "5db8");
        let text: Certificate = serde_json::from_str(
            r#"{"identity":"spiffe://x/ns/a/sa/b","serial":"01","notAfter":"2030-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(text.not_after, "2030-01-01T00:00:00Z");
    }
}
