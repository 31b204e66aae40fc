//! `mesh down`: removes what the state's intent log says `up` made, in
//! reverse — processes (pods' and the node's), network namespaces (taking
//! veths and rules with them), `/etc/netns` directories, the state
//! directory (with the CA, tokens and policy files) — and nothing else.
//! The processes' logs stay where it says (`/var/log/trellis/<mesh>`)
//! until the next `up` of the same name.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::progress::Progress;
use super::state::{self, Phase, Store};
use super::sys;

/// How long processes get to exit after SIGTERM (the proxy drains first).
const TERM_GRACE: Duration = Duration::from_secs(10);
/// How long after SIGKILL before giving up on a process.
const KILL_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);
/// How long `down` waits for the mesh's lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Removes the mesh `store` describes. On partial failure the state keeps
/// only what is left, so running `down` again retries exactly that.
pub(crate) fn teardown(mut store: Store, progress: &Progress) -> anyhow::Result<()> {
    if store.state.phase == Phase::Deleting {
        progress.step(
            "an earlier `down` did not finish (abandoned, or failed); finishing its teardown",
        );
    }
    // The supervisor (and `apply`) change the mesh only under its lock:
    // once `down` holds it, nothing restarts what it stops. A lock that
    // stays held (a stuck `apply`) does not stop `down`.
    let _lock = match store.lock(LOCK_WAIT) {
        Ok(l) => Some(l),
        Err(e) => {
            progress.step(&format!("{e}; removing the mesh anyway"));
            None
        }
    };
    store.update(|s| s.phase = Phase::Deleting)?;
    let mesh = store.state.mesh.clone();
    let logs = store.logs_dir();

    let stopped = stop_processes(&store, progress);

    let mut failed_netns = Vec::new();
    for ns in store.state.netns.iter().rev() {
        if !sys::netns_exists(ns) {
            continue;
        }
        if let Err(e) = sys::ip(&["netns", "delete", ns]) {
            progress.step(&format!(
                "cannot delete netns {ns}: {:#}",
                anyhow::Error::from(e)
            ));
            failed_netns.push(ns.clone());
        }
    }
    let removed = store.state.netns.len() - failed_netns.len();
    progress.step(&format!("deleted {removed} network namespace(s)"));

    let mut failed_dirs = Vec::new();
    for dir in &store.state.etc_dirs {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                progress.step(&format!("cannot remove {}: {e}", dir.display()));
                failed_dirs.push(dir.clone());
            }
        }
    }
    if failed_dirs.is_empty() && no_other_mesh(&mesh) {
        remove_etc_netns_if_ours();
    }

    match (stopped, failed_netns.is_empty() && failed_dirs.is_empty()) {
        (Ok(()), true) => {
            let dir = store.dir().to_path_buf();
            store.remove()?;
            progress.step(&format!("removed {}", dir.display()));
            if logs.is_dir() {
                progress.step(&format!(
                    "logs kept in {} (until the next `up` of mesh {mesh})",
                    logs.display()
                ));
            }
            Ok(())
        }
        (stopped, _) => {
            store.update(|s| {
                s.netns = failed_netns;
                s.etc_dirs = failed_dirs;
            })?;
            let why = match stopped {
                Err(e) => format!("{e:#}"),
                Ok(()) => "some namespaces or directories could not be removed".to_string(),
            };
            anyhow::bail!(
                "mesh {mesh:?} is only partly removed: {why}; state kept in {}; run `trellis mesh down --name {mesh}` again",
                store.dir().display()
            )
        }
    }
}

/// Removes `/etc/netns` if a mesh created it (the marker says so) and
/// nothing but the marker is left in it.
fn remove_etc_netns_if_ours() {
    let etc = Path::new(sys::ETC_NETNS_DIR);
    let Ok(entries) = fs::read_dir(etc) else {
        return;
    };
    let names: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    if names.len() == 1 && names[0] == sys::ETC_NETNS_MARKER {
        let _ = fs::remove_file(etc.join(sys::ETC_NETNS_MARKER));
        let _ = fs::remove_dir(etc);
    }
}

fn no_other_mesh(mesh: &str) -> bool {
    state::list_meshes()
        .map(|m| m.iter().all(|n| n == mesh))
        .unwrap_or(false)
}

/// SIGTERM to every recorded process (its whole group) and to anything
/// else living in the mesh's namespaces; SIGKILL after a grace period.
fn stop_processes(store: &Store, progress: &Progress) -> anyhow::Result<()> {
    let recorded: Vec<(u32, Option<u64>)> = store
        .state
        .processes
        .iter()
        .chain(&store.state.node_processes)
        .filter_map(|p| Some((p.pid?, p.start_time)))
        .filter(|&(pid, start)| sys::is_alive(pid, start))
        .collect();
    let namespaces = &store.state.netns;
    let in_namespaces = || -> Vec<u32> {
        let me = std::process::id();
        let mut pids: Vec<u32> = namespaces
            .iter()
            .flat_map(|ns| sys::pids_in_netns(ns))
            .collect();
        pids.retain(|&p| p != me);
        pids.sort_unstable();
        pids.dedup();
        pids
    };
    let alive = || -> Vec<u32> {
        let mut pids: Vec<u32> = recorded
            .iter()
            .filter(|&&(pid, start)| sys::is_alive(pid, start))
            .map(|&(pid, _)| pid)
            .collect();
        pids.extend(
            in_namespaces()
                .into_iter()
                .filter(|&p| sys::is_alive(p, None)),
        );
        pids.sort_unstable();
        pids.dedup();
        pids
    };

    let first = alive();
    if first.is_empty() {
        return Ok(());
    }
    progress.step(&format!("stopping {} process(es)", first.len()));
    let send = |sig: Signal| {
        for &(pid, start) in &recorded {
            if sys::is_alive(pid, start) {
                sys::signal_group(pid, sig);
            }
        }
        for pid in in_namespaces() {
            sys::signal(pid, sig);
        }
    };
    send(Signal::SIGTERM);
    if sys::poll_until(Instant::now() + TERM_GRACE, POLL, || {
        alive().is_empty().then_some(())
    })
    .is_some()
    {
        return Ok(());
    }
    let stubborn = alive();
    progress.step(&format!(
        "{} process(es) still running after {TERM_GRACE:?}: SIGKILL",
        stubborn.len()
    ));
    send(Signal::SIGKILL);
    if sys::poll_until(Instant::now() + KILL_GRACE, POLL, || {
        alive().is_empty().then_some(())
    })
    .is_some()
    {
        return Ok(());
    }
    let left = alive();
    anyhow::bail!(
        "processes still running after SIGKILL: {}",
        left.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `down` for a mesh whose state directory exists but whose state file was
/// never written (`up` died between the two): nothing else was made.
pub(crate) fn remove_empty(dir: &Path) -> std::io::Result<()> {
    fs::remove_dir_all(dir)
}
