//! Waiting for a mesh: the identity service answering `/ready`, proxies
//! answering `/ready` (asked from the node namespace, as a kubelet probe
//! would; a proxy is ready once it holds a certificate), then workloads
//! listening on their ports (read from the pod's own socket table, so
//! capture rules cannot fake it) and answering their declared probes (asked
//! from the node namespace, through the pod's proxy). One progress line per
//! workload; a process that exits or a timeout fails with the tail of the
//! relevant log.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::interrupt::{interrupted, Interrupt};
use super::plan::{Plan, PodPlan};
use super::progress::Progress;
use super::state::{Role, Store};
use super::{http, sys};

const POLL: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A long-running process we started, while `up` still holds it.
pub(super) struct Started {
    /// `namespace/name`, or `node` for the node's processes.
    pub pod: String,
    pub role: Role,
    pub argv: Vec<String>,
    pub log: PathBuf,
    pub child: Child,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// The proxy's `/ready` answers 200.
    Proxy,
    /// Every port of the workload is listening, and every probe answers
    /// 2xx or 3xx.
    Ports,
}

/// Why a pod's probes fail, or `None` if they all pass (as a kubelet
/// judges: a status from 200 to 399).
pub(super) fn probes_failing(node_netns: &str, pod: &PodPlan) -> Option<String> {
    pod.probes.iter().find_map(|p| {
        let addr = SocketAddr::new(IpAddr::V4(pod.ip), p.port);
        match http::get(node_netns, addr, &p.path, PROBE_TIMEOUT) {
            Ok(r) if (200..400).contains(&r.status) => None,
            Ok(r) => Some(format!(
                "probe GET :{}{} answers {}",
                p.port, p.path, r.status
            )),
            Err(e) => Some(format!("probe GET :{}{}: {e}", p.port, p.path)),
        }
    })
}

/// `, waited 1.2s` when this wait took a noticeable time; nothing when what
/// it waited for was already ready (it started while earlier steps ran).
/// Each progress line carries the time since start-up began.
fn waited(start: Instant) -> String {
    let secs = start.elapsed().as_secs_f64();
    if secs < 0.05 {
        String::new()
    } else {
        format!(", waited {secs:.1}s")
    }
}

/// Waits until the identity service's `/ready` answers 200.
pub(super) fn wait_identity(
    what: &str,
    admin: SocketAddr,
    node_netns: &str,
    started: &mut Started,
    deadline: Instant,
    interrupt: &Interrupt,
    progress: &Progress,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        interrupted(interrupt)?;
        check_children(std::slice::from_mut(started))?;
        let why = match http::get(node_netns, admin, "/ready", PROBE_TIMEOUT) {
            Ok(r) if r.status == 200 => {
                progress.step(&format!("{what} ready on {admin}{}", waited(start)));
                return Ok(());
            }
            Ok(r) => format!("/ready answers {}", r.status),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!(
                "timed out waiting for the {what} ({admin}: {why})\nlast lines of {}:\n{}",
                started.log.display(),
                indent(&sys::tail(&started.log, 20))
            );
        }
        interrupt.sleep(POLL);
    }
}

/// Why a pod is not ready yet, or `None` if it is.
pub(super) fn not_ready(node_netns: &str, pod: &PodPlan, check: Check) -> Option<String> {
    match check {
        Check::Proxy => {
            let proxy = pod.proxy.as_ref()?;
            match http::get(node_netns, proxy.admin, "/ready", PROBE_TIMEOUT) {
                Ok(r) if r.status == 200 => None,
                // The proxy's body names what it still waits for.
                Ok(r) => Some(format!(
                    "proxy /ready answers {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body).trim()
                )),
                Err(e) => Some(format!("proxy admin {}: {e}", proxy.admin)),
            }
        }
        Check::Ports => {
            if pod.ports.is_empty() {
                return None;
            }
            match sys::listening_ports(&pod.netns) {
                Ok(listening) => {
                    let missing: Vec<String> = pod
                        .ports
                        .iter()
                        .filter(|p| !listening.contains(p))
                        .map(|p| p.to_string())
                        .collect();
                    if missing.is_empty() {
                        probes_failing(node_netns, pod)
                    } else {
                        Some(format!("not listening on port {}", missing.join(", ")))
                    }
                }
                Err(e) => Some(format!("cannot read its sockets: {e}")),
            }
        }
    }
}

pub(super) fn wait_ready(
    store: &Store,
    plan: &Plan,
    children: &mut [Started],
    deadline: Instant,
    interrupt: &Interrupt,
    progress: &Progress,
    check: Check,
) -> anyhow::Result<()> {
    let pods: Vec<&PodPlan> = plan
        .pods
        .iter()
        .filter(|p| check == Check::Ports || p.meshed)
        .collect();
    let what = match check {
        Check::Proxy => "proxies ready",
        Check::Ports => "ready",
    };
    // Workloads in file order, each reported once all its replicas are ready.
    let mut workloads: Vec<(String, String)> = Vec::new();
    for p in &pods {
        let key = (p.namespace.clone(), p.workload.clone());
        if !workloads.contains(&key) {
            workloads.push(key);
        }
    }
    let mut reported = vec![false; workloads.len()];
    let mut ready = vec![false; pods.len()];
    let mut reasons: Vec<Option<String>> = vec![None; pods.len()];
    let start = Instant::now();
    let mut next_note = start + Duration::from_secs(5);
    loop {
        interrupted(interrupt)?;
        check_children(children)?;
        for (i, pod) in pods.iter().enumerate() {
            if !ready[i] {
                reasons[i] = not_ready(&plan.node.netns, pod, check);
                ready[i] = reasons[i].is_none();
            }
        }
        for (w, (ns, name)) in workloads.iter().enumerate() {
            let members: Vec<usize> = (0..pods.len())
                .filter(|&i| &pods[i].namespace == ns && &pods[i].workload == name)
                .collect();
            if !reported[w] && members.iter().all(|&i| ready[i]) {
                reported[w] = true;
                let ports = pods[members[0]]
                    .ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>();
                let ports = if check == Check::Ports && !ports.is_empty() {
                    format!(", listening on {}", ports.join(","))
                } else {
                    String::new()
                };
                progress.step(&format!(
                    "{ns}/{name}: {what} ({}/{} replicas{ports}){}",
                    members.len(),
                    members.len(),
                    waited(start)
                ));
            }
        }
        if reported.iter().all(|r| *r) {
            return Ok(());
        }
        let waiting: Vec<String> = (0..pods.len())
            .filter(|&i| !ready[i])
            .map(|i| {
                format!(
                    "{} ({})",
                    pods[i].qualified_name(),
                    reasons[i].clone().unwrap_or_default()
                )
            })
            .collect();
        if Instant::now() >= deadline {
            let first = (0..pods.len()).find(|&i| !ready[i]);
            let log = first.and_then(|i| log_of(store, &pods[i].netns, check));
            let tail = log
                .map(|l| {
                    format!(
                        "\nlast lines of {}:\n{}",
                        l.display(),
                        indent(&sys::tail(&l, 20))
                    )
                })
                .unwrap_or_default();
            bail!("timed out waiting for: {}{tail}", waiting.join(", "));
        }
        if Instant::now() >= next_note {
            progress.step(&format!("still waiting for {}", waiting.join(", ")));
            next_note += Duration::from_secs(5);
        }
        interrupt.sleep(POLL);
    }
}

fn log_of(store: &Store, netns: &str, check: Check) -> Option<PathBuf> {
    let role = match check {
        Check::Proxy => Role::Proxy,
        Check::Ports => Role::Workload,
    };
    store
        .state
        .processes
        .iter()
        .find(|p| p.netns == netns && p.role == role)
        .map(|p| p.log.clone())
}

/// Fails if a process we started has exited, showing its log.
pub(super) fn check_children(children: &mut [Started]) -> anyhow::Result<()> {
    for c in children.iter_mut() {
        if let Ok(Some(status)) = c.child.try_wait() {
            let whose = if c.pod == "node" {
                "the node namespace".to_string()
            } else {
                format!("pod {}", c.pod)
            };
            bail!(
                "the {} of {whose} exited ({status}): {}\nlast lines of {}:\n{}",
                c.role.as_str(),
                c.argv.join(" "),
                c.log.display(),
                indent(&sys::tail(&c.log, 20))
            );
        }
    }
    Ok(())
}

pub(super) fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
