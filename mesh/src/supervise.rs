//! `trellis mesh supervise --name MESH`: the part of a kubelet that keeps
//! pods running (`restartPolicy: Always`). `up` starts it in the node
//! namespace once every pod is ready, and records it; `down` stops it.
//!
//! Every [`POLL`] it takes the mesh's lock (the one `apply` and `down`
//! take; when another command holds it, it waits for the next round) and
//! looks at every pod's processes (its proxy and its workload):
//! - one has exited: the pod is `restarting` and out of its services (its
//!   Pod's `Ready` condition false, a not-ready endpoint in the
//!   controller's objects file, so proxies stop sending to it); the exited
//!   process starts again after a [`backoff`](super::health::backoff) that doubles with each exit
//!   in a row ([`on_exit`]), or the pod is `failed` once it exited more
//!   than [`RESTART_LIMIT`] times in a row (no more restarts);
//! - once everything runs again and the pod is ready (proxy `/ready`,
//!   ports listening, probes passing) it is `running` and back in its
//!   services.
//!
//! What it knows is in the state's `health` (shown by `mesh status`).
//! Processes it starts are its children, so their exit status is known;
//! of those `up` or `apply` started, only that they are gone.
//!
//! The decisions ([`on_exit`], [`on_restarted`], [`backoff`](super::health::backoff),
//! [`not_ready`], [`shown_phase`](super::health::shown_phase), [`describe_exit`])
//! are pure, in [`health`](super::health), and table-tested; [`run`] carries them out.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::Duration;

use anyhow::{bail, Context};
use trellis_core::errln;

use super::health::{
    describe_exit, millis, not_ready, on_exit, on_restarted, RESTART, RESTART_LIMIT,
};
use super::plan::PodPlan;
use super::ready::{self, Check};
use super::state::{Phase, PodHealth, PodRun, ProcessRecord, Role, StateError, Store};
use super::{names, sys, up};

/// How often the supervisor looks at the pods.
pub(crate) const POLL: Duration = Duration::from_millis(200);
/// What is said of a process that exited and was not the supervisor's
/// child.
const NOT_OUR_CHILD: &str = "exited (status unknown: started by `up` or `apply`)";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// The processes the supervisor started: running ones, and the exit status
/// of those it reaped.
#[derive(Default)]
struct Children {
    running: BTreeMap<u32, Child>,
    exited: BTreeMap<u32, ExitStatus>,
}

impl Children {
    fn reap(&mut self) {
        let done: Vec<(u32, ExitStatus)> = self
            .running
            .iter_mut()
            .filter_map(|(pid, c)| Some((*pid, c.try_wait().ok().flatten()?)))
            .collect();
        for (pid, status) in done {
            self.running.remove(&pid);
            self.exited.insert(pid, status);
        }
    }

    fn alive(&self, r: &ProcessRecord) -> bool {
        let Some(pid) = r.pid else { return false };
        if self.running.contains_key(&pid) {
            return true;
        }
        !self.exited.contains_key(&pid) && sys::is_alive(pid, r.start_time)
    }

    fn describe(&self, r: &ProcessRecord) -> String {
        match r.pid.and_then(|p| self.exited.get(&p)) {
            Some(s) => describe_exit(s.code(), s.signal()),
            None => NOT_OUR_CHILD.to_string(),
        }
    }
}

pub fn run(mesh: &str) -> anyhow::Result<()> {
    let mut store = Store::open(mesh)?;
    errln!(
        "supervisor of mesh {mesh}: watching {} pod(s) every {POLL:?}; restarts after {:?} doubling to {:?}, failed after {RESTART_LIMIT} exits in a row",
        store.state.plan.pods.len(),
        RESTART.base,
        RESTART.max,
    );
    let mut children = Children::default();
    loop {
        std::thread::sleep(POLL);
        children.reap();
        if !names::mesh_dir(mesh).exists() {
            errln!("the mesh's state directory is gone; exiting");
            return Ok(());
        }
        // Another command changes the mesh: look again next round.
        let Ok(_lock) = store.lock(Duration::ZERO) else {
            continue;
        };
        match store.reload() {
            Ok(()) => {}
            Err(StateError::Missing(_)) => return Ok(()),
            Err(e) => {
                errln!("rereading the mesh's state: {e}");
                continue;
            }
        }
        match store.state.phase {
            Phase::Ready => {}
            Phase::Deleting => {
                errln!("the mesh is being removed; exiting");
                return Ok(());
            }
            Phase::Creating | Phase::Applying => continue,
        }
        if let Err(e) = round(&mut store, &mut children) {
            errln!("{e:#}");
        }
    }
}

/// One look at every pod, under the lock.
fn round(store: &mut Store, children: &mut Children) -> anyhow::Result<()> {
    let before = not_ready(&store.state.health);
    let plan = store.state.plan.clone();
    for pod in &plan.pods {
        let h = store
            .state
            .health
            .get(&pod.netns)
            .cloned()
            .unwrap_or_default();
        let next = look_at(store, children, pod, &h)?;
        if next != h {
            if next.state != h.state {
                errln!(
                    "pod {}: {} → {} ({} restart(s){})",
                    pod.qualified_name(),
                    h.state.as_str(),
                    next.state.as_str(),
                    next.restarts,
                    next.last_exit
                        .as_ref()
                        .map(|e| format!("; last exit: {} {}", e.role.as_str(), e.status))
                        .unwrap_or_default()
                );
            }
            store.update(|s| {
                s.health.insert(pod.netns.clone(), next);
            })?;
        }
    }
    if not_ready(&store.state.health) != before {
        up::write_cluster_file(&plan, &store.state)?;
    }
    Ok(())
}

/// What becomes of one pod this round (restarting its processes when it
/// is time).
fn look_at(
    store: &mut Store,
    children: &mut Children,
    pod: &PodPlan,
    h: &PodHealth,
) -> anyhow::Result<PodHealth> {
    if h.state == PodRun::Failed {
        return Ok(h.clone());
    }
    let dead: Vec<usize> = (0..store.state.processes.len())
        .filter(|&i| {
            let r = &store.state.processes[i];
            r.netns == pod.netns && matches!(r.role, Role::Proxy | Role::Workload)
        })
        .filter(|&i| !children.alive(&store.state.processes[i]))
        .collect();
    let now = now_ms();
    match (h.state, h.restart_at_unix_ms, dead.first()) {
        // Waiting out the backoff.
        (PodRun::Restarting, Some(at), _) if now < at => Ok(h.clone()),
        (PodRun::Restarting, Some(_), _) => {
            for &i in &dead {
                restart(store, children, pod, i)?;
            }
            Ok(on_restarted(h, now))
        }
        (_, _, Some(&i)) => {
            let r = &store.state.processes[i];
            Ok(on_exit(h, r.role, children.describe(r), now))
        }
        (PodRun::Restarting, None, None) => {
            let node = &store.state.plan.node.netns;
            let ready = ready::not_ready(node, pod, Check::Proxy).is_none()
                && ready::not_ready(node, pod, Check::Ports).is_none();
            let mut n = h.clone();
            if ready {
                n.state = PodRun::Running;
            }
            Ok(n)
        }
        (_, _, None) => Ok(h.clone()),
    }
}

/// Starts the `i`-th recorded process again, as `up` started it, its
/// output appended to the same log; recorded before it exists.
fn restart(
    store: &mut Store,
    children: &mut Children,
    pod: &PodPlan,
    i: usize,
) -> anyhow::Result<()> {
    let role = store.state.processes[i].role;
    let (argv, env) = match role {
        Role::Proxy => {
            let bin = store
                .state
                .proxy_bin
                .clone()
                .context("the mesh's state names no trellis-proxy binary")?;
            up::proxy_command(pod, &bin)?
        }
        Role::Workload => up::workload_command(pod),
        other => bail!("not a pod's process: {}", other.as_str()),
    };
    let log = store.state.processes[i].log.clone();
    store.update(|s| {
        let r = &mut s.processes[i];
        r.pid = None;
        r.start_time = None;
        r.argv = argv.clone();
    })?;
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    writeln!(
        out,
        "--- trellis mesh supervise: starting the {} of {} again ---",
        role.as_str(),
        pod.qualified_name()
    )
    .with_context(|| format!("writing {}", log.display()))?;
    let child = super::up::spawn_logged(&argv, &env, out)
        .with_context(|| format!("starting the {} of {}", role.as_str(), pod.qualified_name()))?;
    let pid = child.id();
    let start = sys::start_time(pid);
    children.running.insert(pid, child);
    store.update(|s| {
        let r = &mut s.processes[i];
        r.pid = Some(pid);
        r.start_time = start;
    })?;
    errln!(
        "pod {}: started its {} again (pid {pid})",
        pod.qualified_name(),
        role.as_str()
    );
    Ok(())
}
