//! `mesh apply -f FILE`: brings a running mesh to a changed file, as
//! `kubectl apply` would — replicas up and down, services, routes and
//! policies — without touching what does not change.
//!
//! Phases, in order (what each decides is in [`diff`]):
//! 1. decide — the new plan (pods and services that stay keep their
//!    addresses) and what changes; what cannot change in place is refused
//!    before anything is touched;
//! 2. recover — what an `apply` that died left half-made is removed;
//! 3. surge — new pods are made exactly as `up` makes them (netns, hosts,
//!    capture and service rules, token/policy/destinations files, proxy,
//!    workload) and waited on; the controller's file lists them as Pods but
//!    not yet as endpoints. A failure here removes them again and leaves the
//!    mesh as it was;
//! 4. switch — the new services, endpoints, routes and policies: the
//!    controller's file, every pod's service rules (for unmeshed clients),
//!    hosts, destinations and policy files;
//! 5. drain — after the proxies had time to hear of the new endpoints,
//!    removed pods go as `down` removes them: their proxy gets SIGTERM and
//!    drains, then the workload stops, then the namespace and files go;
//! 6. done — the controller's file without them; the state is ready.
//!
//! The state's intent log is kept as `up` keeps it (recorded before made),
//! and its plan only ever lists complete pods, so `down` removes everything
//! after any failure, and the next `apply` finishes what one left.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::Signal;

use super::check::Checked;
use super::diff::{self, Change};
use super::interrupt::{interrupted, Interrupt};
use super::plan::{self, Plan, PodPlan};
use super::progress::Progress;
use super::ready::{wait_ready, Check};
use super::state::{self, Phase, Role, StateError, Store};
use super::up;
use super::{files, sys};

/// How long proxies get to hear of new endpoints from the controller
/// before removed pods stop taking connections (what a preStop delay does
/// in a cluster).
const ENDPOINTS_PROPAGATION: Duration = Duration::from_secs(2);
/// How long a removed pod's proxy may drain after SIGTERM (a little more
/// than its own default grace).
const PROXY_DRAIN: Duration = Duration::from_secs(35);
/// How long a removed pod's workload gets after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(10);
const KILL_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);
/// How long `apply` waits for the mesh's lock (held by another `apply`
/// for as long as it runs, by the supervisor for a moment).
const LOCK_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// How long to wait for new proxies and workloads to become ready.
    pub timeout: Duration,
    /// Where the file came from, for messages.
    pub source: String,
}

/// Brings the mesh the file names to the file. Returns the mesh's state.
pub(crate) fn apply(
    checked: &Checked,
    opts: &ApplyOptions,
    interrupt: &Interrupt,
    progress: &Progress,
) -> anyhow::Result<Store> {
    let name = &checked.file.name;
    let mut store = match Store::open(name) {
        Ok(s) => s,
        Err(StateError::Missing(_)) => {
            let up = state::list_meshes().unwrap_or_default();
            bail!(
                "{}: no mesh named {name:?} (the file's `name`) is up{}; start it with `trellis mesh up -f {}`",
                opts.source,
                if up.is_empty() {
                    String::new()
                } else {
                    format!(" (meshes up: {})", up.join(", "))
                },
                opts.source
            )
        }
        Err(e) => return Err(e.into()),
    };
    // The supervisor holds the lock a moment at a time: wait for it.
    let _lock = store.lock(LOCK_WAIT)?;
    // Reread under the lock: another `apply` may just have finished.
    store = Store::open(name)?;
    match store.state.phase {
        Phase::Ready | Phase::Applying => {}
        Phase::Creating => bail!(
            "mesh {name:?} is still being made (or `up` died): wait for `up`, or run `trellis mesh down --name {name}`"
        ),
        Phase::Deleting => bail!("mesh {name:?} is being removed (or `down` died): run `trellis mesh down --name {name}`"),
    }
    if !sys::is_root() {
        bail!("the local mesh needs root: network namespaces and iptables");
    }

    // 1. decide
    let trellis = match &store.state.trellis_bin {
        Some(t) => t.clone(),
        None => std::env::current_exe().context("cannot find the trellis binary itself")?,
    };
    let old = store.state.plan.clone();
    let mut new = plan::build_next(checked, &trellis.to_string_lossy(), Some(&old))
        .map_err(|e| anyhow!("{}: {e}", opts.source))?;
    diff::carry_over(&old, &mut new);
    let change = diff::diff(&old, &new).map_err(|e| anyhow!("{}: {e}", opts.source))?;
    for line in change.summary() {
        progress.step(&line);
    }
    let orphans = diff::orphans(&store.state);
    if change.is_empty() && orphans.is_empty() && store.state.phase == Phase::Ready {
        store.update(|s| s.source = opts.source.clone())?;
        return Ok(store);
    }
    let proxy_bin = match change.add.iter().any(|p| p.meshed) {
        true => Some(
            store
                .state
                .proxy_bin
                .clone()
                .context("the mesh's state names no trellis-proxy binary")?,
        ),
        false => None,
    };
    let iptables_mode = sys::iptables_mode()?;
    store.update(|s| s.phase = Phase::Applying)?;

    // 2. recover
    if !orphans.is_empty() {
        progress.step(&format!(
            "removing what an earlier apply left half-made: {}",
            orphans.join(", ")
        ));
        remove_pods(&mut store, &orphans, progress)?;
    }

    // 3. surge
    let deadline = Instant::now() + opts.timeout;
    if let Err(e) = surge(
        &mut store,
        &new,
        &change,
        proxy_bin.as_deref(),
        iptables_mode,
        deadline,
        interrupt,
        progress,
    ) {
        progress.step("apply failed (the error follows); removing the pods it made");
        let undo = undo_surge(&mut store, &old, progress);
        return Err(match undo {
            Ok(()) => e.context("the mesh is as it was before this apply"),
            Err(u) => e.context(format!(
                "removing the new pods failed too ({u:#}); run `trellis mesh apply` again, or `trellis mesh down --name {name}`"
            )),
        });
    }

    // 4. switch
    switch(&mut store, &new, &change, progress)?;

    // 5. drain
    if !change.remove.is_empty() {
        interrupt.sleep(ENDPOINTS_PROPAGATION);
        let netns: Vec<String> = change.remove.iter().map(|p| p.netns.clone()).collect();
        remove_pods(&mut store, &netns, progress)?;
    }

    // 6. done
    up::write_cluster_file(&new, &store.state)?;
    remove_stale_pod_dirs(&new)?;
    store.update(|s| {
        s.health
            .retain(|netns, _| new.pods.iter().any(|p| &p.netns == netns));
        s.phase = Phase::Ready;
        s.source = opts.source.clone();
    })?;
    Ok(store)
}

/// Makes the new pods, as `up` makes pods, and waits until they are ready;
/// then they are the plan's.
#[allow(clippy::too_many_arguments)] // one call site; the phases' inputs
fn surge(
    store: &mut Store,
    new: &Plan,
    change: &Change,
    proxy_bin: Option<&Path>,
    iptables_mode: &str,
    deadline: Instant,
    interrupt: &Interrupt,
    progress: &Progress,
) -> anyhow::Result<()> {
    if change.add.is_empty() {
        return Ok(());
    }
    let surge = diff::surge_plan(&store.state.plan, change);
    up::write_cluster_file(&surge, &store.state)?;
    let clashes: Vec<&str> = change
        .add
        .iter()
        .map(|p| p.netns.as_str())
        .filter(|n| sys::netns_exists(n))
        .collect();
    if !clashes.is_empty() {
        bail!(
            "network namespaces already exist: {} (leftovers? check `ip netns list`)",
            clashes.join(", ")
        );
    }
    for pod in &change.add {
        interrupted(interrupt)?;
        up::make_pod(store, new, pod)?;
        progress.step(&format!(
            "pod {}: {}{} in netns {}",
            pod.qualified_name(),
            pod.ip,
            pod.ipv6.map(|v| format!(" {v}")).unwrap_or_default(),
            pod.netns
        ));
    }
    forget_neighbours(store, &change.add)?;
    // The running services for now; the switch brings every pod to the new.
    let rules = plan::service_rules(&surge.services);
    for pod in &change.add {
        interrupted(interrupt)?;
        up::install_pod_rules(store, pod, proxy_bin, iptables_mode, &rules)?;
    }
    progress.step(&format!(
        "capture rules and service rules installed in {} new pod(s)",
        change.add.len()
    ));

    let mut children = Vec::new();
    let meshed: Vec<PodPlan> = change.add.iter().filter(|p| p.meshed).cloned().collect();
    if let (false, Some(bin)) = (meshed.is_empty(), proxy_bin) {
        let id = new
            .identity
            .as_ref()
            .context("meshed pods need the mesh's identity service, and the plan has none")?;
        let signer = files::load_signer(&id.files)?;
        for pod in &meshed {
            files::write_pod_files(new, pod, &signer)?;
        }
        progress.step(&format!(
            "tokens, policy and destinations files written for {} new meshed pod(s)",
            meshed.len()
        ));
        for pod in &meshed {
            interrupted(interrupt)?;
            children.push(up::start_proxy(store, pod, bin)?);
        }
        let waiting = diff::only_pods(new, &meshed);
        wait_ready(
            store,
            &waiting,
            &mut children,
            deadline,
            interrupt,
            progress,
            Check::Proxy,
        )?;
    }
    for pod in &change.add {
        interrupted(interrupt)?;
        children.push(up::start_workload(store, pod)?);
    }
    let waiting = diff::only_pods(new, &change.add);
    wait_ready(
        store,
        &waiting,
        &mut children,
        deadline,
        interrupt,
        progress,
        Check::Ports,
    )?;
    store.update(|s| s.plan = surge)?;
    Ok(())
}

/// New pods may have the addresses of pods removed a moment ago: every
/// other namespace of the mesh forgets their old link-layer addresses, or
/// it would keep sending to a veth that is gone until its neighbour entry
/// expired.
fn forget_neighbours(store: &Store, pods: &[PodPlan]) -> anyhow::Result<()> {
    let new: Vec<&str> = pods.iter().map(|p| p.netns.as_str()).collect();
    for ns in store
        .state
        .netns
        .iter()
        .filter(|n| !new.contains(&n.as_str()))
    {
        if !sys::netns_exists(ns) {
            continue;
        }
        for pod in pods {
            let mut addrs = vec![pod.ip.to_string()];
            addrs.extend(pod.ipv6.map(|v| v.to_string()));
            for a in addrs {
                sys::ip(&["-n", ns, "neigh", "flush", "to", &a])
                    .with_context(|| format!("forgetting {a}'s neighbour entry in {ns}"))?;
            }
        }
    }
    Ok(())
}

/// After a failed surge: removes the pods it made (everything the intent
/// log has beyond `old`'s pods) and puts the controller's file back.
fn undo_surge(store: &mut Store, old: &Plan, progress: &Progress) -> anyhow::Result<()> {
    store.update(|s| s.plan = old.clone())?;
    let made = diff::orphans(&store.state);
    remove_pods(store, &made, progress)?;
    remove_stale_pod_dirs(old)?;
    up::write_cluster_file(old, &store.state)?;
    store.update(|s| s.phase = Phase::Ready)?;
    Ok(())
}

/// Everything that is not a pod: the controller's file, every pod's
/// service rules, hosts files, destinations and policy files. Then `new`
/// is the plan (the pods being removed are no longer part of it).
fn switch(
    store: &mut Store,
    new: &Plan,
    change: &Change,
    progress: &Progress,
) -> anyhow::Result<()> {
    let switch = diff::switch_plan(new, change);
    up::write_cluster_file(&switch, &store.state)?;
    for pod in &switch.pods {
        let saved = sys::run("ip", &["netns", "exec", &pod.netns, "iptables-save"], None)
            .with_context(|| format!("reading the rules of {}", pod.netns))?;
        let update = diff::service_rules_update(&saved, &new.services);
        sys::run(
            "ip",
            &["netns", "exec", &pod.netns, "iptables-restore", "--noflush"],
            Some(&update),
        )
        .with_context(|| format!("updating service rules in {}", pod.netns))?;
    }
    for pod in &new.pods {
        // In place (not a rename): `ip netns exec` bind-mounts the file, so
        // running processes see the new content only in the same inode.
        let hosts = Path::new(sys::ETC_NETNS_DIR).join(&pod.netns).join("hosts");
        fs::write(&hosts, plan::hosts_file(new, pod))
            .with_context(|| format!("writing {}", hosts.display()))?;
    }
    let mut meshed = 0;
    for pod in new.pods.iter().filter(|p| p.meshed) {
        let f = files::pod_files(pod)?;
        files::write_destinations(&f.destinations, &new.destinations)?;
        meshed += 1;
    }
    for pod in &change.policy {
        if let Some(proxy) = &pod.proxy {
            files::write_policy(&files::pod_files(pod)?.policy, &proxy.policy)?;
        }
    }
    store.update(|s| s.plan = new.clone())?;
    progress.step(&format!(
        "{} service(s) in every pod's rules and hosts file; destinations of {meshed} meshed pod(s) and {} policy file(s) rewritten; the controller's file updated",
        new.services.len(),
        change.policy.len()
    ));
    Ok(())
}

/// Removes pods (by network namespace) as `down` would, most gracefully
/// first: every proxy gets SIGTERM and drains, then workloads and anything
/// else in the namespaces stop; then the namespaces, `/etc/netns`
/// directories and records go.
fn remove_pods(store: &mut Store, netns: &[String], progress: &Progress) -> anyhow::Result<()> {
    if netns.is_empty() {
        return Ok(());
    }
    let in_pods = |role: Option<Role>| -> Vec<(u32, Option<u64>)> {
        store
            .state
            .processes
            .iter()
            .filter(|p| netns.contains(&p.netns) && role.is_none_or(|r| p.role == r))
            .filter_map(|p| Some((p.pid?, p.start_time)))
            .collect()
    };
    let proxies = in_pods(Some(Role::Proxy));
    if !proxies.is_empty() {
        progress.step(&format!(
            "draining {} proxy(ies) of removed pod(s)",
            proxies.len()
        ));
    }
    stop(&proxies, &[], PROXY_DRAIN, progress);
    let rest = in_pods(None);
    let leftovers = stop(&rest, netns, TERM_GRACE, progress);
    if !leftovers.is_empty() {
        bail!(
            "processes of removed pods still running after SIGKILL: {}",
            leftovers
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for ns in netns {
        if sys::netns_exists(ns) {
            sys::ip(&["netns", "delete", ns])?;
        }
        let etc = Path::new(sys::ETC_NETNS_DIR).join(ns);
        match fs::remove_dir_all(&etc) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", etc.display())),
        }
        store.update(|s| {
            s.netns.retain(|n| n != ns);
            s.etc_dirs.retain(|d| d != &etc);
            s.processes.retain(|p| &p.netns != ns);
        })?;
        progress.step(&format!("removed netns {ns}"));
    }
    Ok(())
}

/// SIGTERM to `recorded` (each its whole group) and to anything living in
/// `netns`; SIGKILL after `grace`. Returns what still runs after that.
fn stop(
    recorded: &[(u32, Option<u64>)],
    netns: &[String],
    grace: Duration,
    progress: &Progress,
) -> Vec<u32> {
    let me = std::process::id();
    let alive = || -> Vec<u32> {
        let mut pids: Vec<u32> = recorded
            .iter()
            .filter(|&&(pid, start)| sys::is_alive(pid, start))
            .map(|&(pid, _)| pid)
            .chain(netns.iter().flat_map(|ns| sys::pids_in_netns(ns)))
            .filter(|&p| p != me && sys::is_alive(p, None))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    };
    let send = |sig: Signal| {
        for &(pid, start) in recorded {
            if sys::is_alive(pid, start) {
                sys::signal_group(pid, sig);
            }
        }
        for ns in netns {
            for pid in sys::pids_in_netns(ns) {
                if pid != me {
                    sys::signal(pid, sig);
                }
            }
        }
    };
    if alive().is_empty() {
        return Vec::new();
    }
    send(Signal::SIGTERM);
    let done = || alive().is_empty().then_some(());
    if sys::poll_until(Instant::now() + grace, POLL, done).is_some() {
        return Vec::new();
    }
    progress.step(&format!(
        "{} process(es) still running after {grace:?}: SIGKILL",
        alive().len()
    ));
    send(Signal::SIGKILL);
    let _ = sys::poll_until(Instant::now() + KILL_GRACE, POLL, done);
    alive()
}

/// Removes the files of pods that are no longer the plan's meshed pods.
fn remove_stale_pod_dirs(plan: &Plan) -> anyhow::Result<()> {
    let Some(id) = &plan.identity else {
        return Ok(());
    };
    let dir = &id.files.pods_dir;
    let entries: Vec<String> = match fs::read_dir(dir) {
        Ok(e) => e
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for stale in diff::stale_pod_dirs(plan, dir, &entries) {
        let path: PathBuf = dir.join(stale);
        fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}
