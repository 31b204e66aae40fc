//! `mesh up`: carries out a [`Plan`], writing each step into the state's
//! intent log before taking it, then waits until every pod is ready.
//!
//! Phases, in order:
//! 1. preflight — root, tools, binaries, no clashing namespaces;
//! 2. node — the mesh's own namespace with the bridge;
//! 3. pods — per replica: `/etc/netns/<ns>/{hosts,resolv.conf}`, the
//!    namespace, a veth pair into the bridge, addresses and default route;
//! 4. rules — `trellis-proxy init` (meshed pods), then the service DNAT rules;
//! 5. proxies — started as uid 7102, waited on until `/ready`;
//! 6. workloads — started as root, waited on until their ports listen;
//! 7. settle — every process must still run [`STARTUP_SETTLE`] later;
//!    then the supervisor starts in the node namespace (see `supervise`).
//!
//! Any failure (or Ctrl-C) removes what was made, through `down`. Waiting
//! for readiness is in `ready`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use super::check::Checked;
use super::interrupt::{interrupted, no_panic, Interrupt, Interrupted};
use super::plan::{self, Plan, PodPlan};
use super::progress::Progress;
use super::ready::{check_children, indent, wait_identity, wait_ready, Check, Started};
use super::state::{self, Phase, ProcessRecord, Role, State, Store};
use super::{down, files, names, sys};

/// Environment variable naming the proxy binary (else: beside `trellis`).
pub(crate) const PROXY_BIN_ENV: &str = "TRELLIS_PROXY_BIN";
/// Environment variable naming the identity service's binary (else: beside
/// `trellis`).
pub(crate) const IDENTITY_BIN_ENV: &str = "TRELLIS_IDENTITY_BIN";
/// Environment variable naming the controller's binary (else: beside
/// `trellis`).
pub(crate) const CONTROLLER_BIN_ENV: &str = "TRELLIS_CONTROLLER_BIN";
const INIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long every process must keep running once the pods are ready for
/// `up` to succeed (a command that exits during start-up fails `up`).
pub(crate) const STARTUP_SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct UpOptions {
    /// How long to wait for proxies and workloads to become ready.
    pub timeout: Duration,
    /// Where the file came from, for messages and `status`.
    pub source: String,
}

/// The binaries pods run.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub trellis: PathBuf,
    pub proxy: Option<PathBuf>,
    pub identity: Option<PathBuf>,
    pub controller: Option<PathBuf>,
}

impl Binaries {
    /// `trellis` itself, and when pods are meshed, `trellis-proxy` and
    /// `trellis-identity`.
    pub(crate) fn find(meshed: bool) -> anyhow::Result<Self> {
        let trellis = std::env::current_exe().context("cannot find the trellis binary itself")?;
        if !meshed {
            return Ok(Self {
                trellis,
                proxy: None,
                identity: None,
                controller: None,
            });
        }
        let identity = sibling(&trellis, "trellis-identity", IDENTITY_BIN_ENV)?;
        let controller = sibling(&trellis, "trellis-controller", CONTROLLER_BIN_ENV)?;
        let proxy = sibling(&trellis, "trellis-proxy", PROXY_BIN_ENV)?;
        sys::world_executable(&proxy).map_err(|why| {
            anyhow!(
                "the proxy runs as uid {} and cannot execute {}: {why}; put the binary where other users can run it, or set {PROXY_BIN_ENV}",
                names::PROXY_UID,
                proxy.display()
            )
        })?;
        Ok(Self {
            trellis,
            proxy: Some(proxy),
            identity: Some(identity),
            controller: Some(controller),
        })
    }
}

/// Makes the mesh; on any failure removes what it made and returns the error.
pub(crate) fn up(
    checked: &Checked,
    opts: &UpOptions,
    interrupt: &Interrupt,
    progress: &Progress,
) -> anyhow::Result<Store> {
    let meshed = checked.file.workloads.iter().any(|w| w.meshed);
    let bins = Binaries::find(meshed)?;
    let plan = plan::build(checked, &bins.trellis.to_string_lossy())
        .map_err(|e| anyhow!("{}: {e}", opts.source))?;
    if names::mesh_dir(&plan.mesh).exists() {
        return Err(state::StateError::Exists {
            mesh: plan.mesh.clone(),
            dir: names::mesh_dir(&plan.mesh).display().to_string(),
        }
        .into());
    }
    let iptables_mode = preflight(&plan, meshed)?;
    // Nothing is made yet: a Ctrl-C so far just stops.
    interrupted(interrupt)?;
    let mut state = State::new(plan, opts.source.clone(), bins.proxy.clone());
    state.identity_bin = bins.identity.clone();
    state.trellis_bin = Some(bins.trellis.clone());
    let mut store = Store::create(state)?;
    progress.step(&format!("state in {}", store.dir().display()));
    // A signal that came after the last step is still a Ctrl-C during `up`;
    // a panic is a bug, but still no reason to leave the mesh behind.
    let made = no_panic("up", || {
        make(&mut store, &bins, iptables_mode, opts, interrupt, progress)
    })
    .and_then(|()| interrupted(interrupt));
    match made {
        Ok(()) => {
            store.update(|s| s.phase = Phase::Ready)?;
            Ok(store)
        }
        Err(e) => {
            // After a signal, whatever failed (a command the signal reached
            // as it was being started, say) is part of the interruption.
            let e = if interrupt.is_set() && !e.is::<Interrupted>() {
                e.context(Interrupted)
            } else {
                e
            };
            progress.step("up failed (the error follows); removing what was made");
            let mesh = store.state.mesh.clone();
            match down::teardown(store, progress) {
                Ok(()) => Err(e),
                Err(d) => Err(e.context(format!(
                    "cleaning up failed too ({d:#}); run `trellis mesh down --name {mesh}`"
                ))),
            }
        }
    }
}

/// Checks what `up` needs; returns the iptables backend to use.
fn preflight(plan: &Plan, meshed: bool) -> anyhow::Result<&'static str> {
    if !sys::is_root() {
        bail!("the local mesh needs root: network namespaces and iptables");
    }
    let mut tools = vec!["ip", "iptables-restore"];
    if meshed {
        tools.push("setpriv");
    }
    let missing: Vec<&str> = tools
        .into_iter()
        .filter(|t| sys::which(t).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {} (on Debian: apt-get install iproute2 iptables util-linux)",
            missing.join(", ")
        );
    }
    let clashes: Vec<&str> = std::iter::once(&plan.node.netns)
        .chain(plan.pods.iter().map(|p| &p.netns))
        .filter(|n| sys::netns_exists(n))
        .map(String::as_str)
        .collect();
    if !clashes.is_empty() {
        bail!(
            "network namespaces already exist: {} (another mesh, or leftovers: check `trellis mesh list`, `ip netns list`)",
            clashes.join(", ")
        );
    }
    Ok(sys::iptables_mode()?)
}

fn make(
    store: &mut Store,
    bins: &Binaries,
    iptables_mode: &str,
    opts: &UpOptions,
    interrupt: &Interrupt,
    progress: &Progress,
) -> anyhow::Result<()> {
    let plan = store.state.plan.clone();
    make_node(store, &plan, progress)?;
    // The mesh CA and the identity service first: it starts while the pods
    // are made.
    let mut identity = None;
    if let (Some(id), Some(bin)) = (&plan.identity, &bins.identity) {
        let signer = files::make_ca(store.dir(), &plan, id)?;
        progress.step(&format!(
            "mesh CA (trust domain {}) and token-signing key in {}",
            plan.trust_domain,
            store.dir().display()
        ));
        let started = start_on_node(store, &plan, Role::Identity, bin, &[], &id.env)?;
        identity = Some((id, started, signer));
    }
    for pod in &plan.pods {
        interrupted(interrupt)?;
        make_pod(store, &plan, pod)?;
        progress.step(&format!(
            "pod {}: {}{} in netns {}",
            pod.qualified_name(),
            pod.ip,
            pod.ipv6.map(|v| format!(" {v}")).unwrap_or_default(),
            pod.netns
        ));
    }
    let rules = plan::service_rules(&plan.services);
    for pod in &plan.pods {
        interrupted(interrupt)?;
        install_pod_rules(store, pod, bins.proxy.as_deref(), iptables_mode, &rules)?;
    }
    progress.step(&format!(
        "capture rules (trellis-proxy init) and {} service VIP(s) installed",
        plan.services.len()
    ));

    let deadline = Instant::now() + opts.timeout;
    let mut children = Vec::new();
    if let (Some(bin), Some((id, mut started, signer))) = (&bins.proxy, identity) {
        wait_identity(
            "identity service",
            id.admin,
            &plan.node.netns,
            &mut started,
            deadline,
            interrupt,
            progress,
        )?;
        children.push(started);
        let meshed: Vec<&PodPlan> = plan.pods.iter().filter(|p| p.meshed).collect();
        for pod in &meshed {
            files::write_pod_files(&plan, pod, &signer)?;
        }
        progress.step(&format!(
            "tokens, policy and destinations files written for {} meshed pod(s); {} meshed destination(s)",
            meshed.len(),
            plan.destinations.destinations.len()
        ));
        children.push(start_on_node(
            store,
            &plan,
            Role::NodeAgent,
            &bins.trellis,
            &["mesh", "node-agent", "--name", &plan.mesh],
            &BTreeMap::new(),
        )?);
        if let (Some(c), Some(bin)) = (&plan.controller, &bins.controller) {
            write_cluster_file(&plan, &store.state)?;
            let mut started = start_on_node(store, &plan, Role::Controller, bin, &[], &c.env)?;
            wait_identity(
                "controller",
                c.admin,
                &plan.node.netns,
                &mut started,
                deadline,
                interrupt,
                progress,
            )?;
            children.push(started);
        }
        for pod in meshed {
            interrupted(interrupt)?;
            children.push(start_proxy(store, pod, bin)?);
        }
        wait_ready(
            store,
            &plan,
            &mut children,
            deadline,
            interrupt,
            progress,
            Check::Proxy,
        )?;
    }
    for pod in &plan.pods {
        interrupted(interrupt)?;
        children.push(start_workload(store, pod)?);
    }
    wait_ready(
        store,
        &plan,
        &mut children,
        deadline,
        interrupt,
        progress,
        Check::Ports,
    )?;
    // A command that exits soon after it started fails `up`, with its log,
    // rather than leaving a mesh whose pod is not running.
    let settled = Instant::now() + STARTUP_SETTLE;
    while Instant::now() < settled {
        interrupted(interrupt)?;
        check_children(&mut children)?;
        interrupt.sleep(Duration::from_millis(100));
    }
    check_children(&mut children)?;
    start_on_node(
        store,
        &plan,
        Role::Supervisor,
        &bins.trellis,
        &["mesh", "supervise", "--name", &plan.mesh],
        &BTreeMap::new(),
    )?;
    progress.step(&format!(
        "every process still running after {STARTUP_SETTLE:?}; supervisor started (restarts pods' processes, logs in {})",
        store.logs_dir().display()
    ));
    Ok(())
}

fn make_node(store: &mut Store, plan: &Plan, progress: &Progress) -> anyhow::Result<()> {
    let node = &plan.node;
    store.update(|s| s.netns.push(node.netns.clone()))?;
    sys::ip(&["netns", "add", &node.netns])?;
    let n = node.netns.as_str();
    sys::ip(&["-n", n, "link", "set", "lo", "up"])?;
    sys::ip(&["-n", n, "link", "add", &node.bridge, "type", "bridge"])?;
    let mac = super::net::bridge_mac(&node.netns);
    sys::ip(&["-n", n, "link", "set", &node.bridge, "address", &mac])?;
    let gw = format!("{}/{}", node.gateway, node.prefix_len);
    sys::ip(&["-n", n, "addr", "add", &gw, "dev", &node.bridge])?;
    if let Some(v6) = node.gateway_v6 {
        let gw6 = format!("{v6}/{}", super::net::POD_PREFIX_V6_LEN);
        sys::ip(&["-n", n, "addr", "add", &gw6, "dev", &node.bridge, "nodad"])?;
    }
    sys::ip(&["-n", n, "link", "set", &node.bridge, "up"])?;
    progress.step(&format!("node netns {n}: bridge {} {gw}", node.bridge));

    let etc = Path::new(sys::ETC_NETNS_DIR);
    if !etc.exists() {
        store.update(|s| s.created_etc_netns = true)?;
        fs::create_dir_all(etc).with_context(|| format!("creating {}", etc.display()))?;
        // `ip netns exec` only reads /etc/netns/<netns>/, so the marker is
        // inert; it lets the last `down` remove the directory again.
        let marker = etc.join(sys::ETC_NETNS_MARKER);
        fs::write(
            &marker,
            "made by `trellis mesh up`; removed with the last mesh\n",
        )
        .with_context(|| format!("writing {}", marker.display()))?;
    }
    Ok(())
}

pub(super) fn make_pod(store: &mut Store, plan: &Plan, pod: &PodPlan) -> anyhow::Result<()> {
    let etc = Path::new(sys::ETC_NETNS_DIR).join(&pod.netns);
    store.update(|s| s.etc_dirs.push(etc.clone()))?;
    fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
    fs::write(etc.join("hosts"), plan::hosts_file(plan, pod))
        .with_context(|| format!("writing {}/hosts", etc.display()))?;
    fs::write(etc.join("resolv.conf"), plan::resolv_conf(pod))
        .with_context(|| format!("writing {}/resolv.conf", etc.display()))?;

    store.update(|s| s.netns.push(pod.netns.clone()))?;
    let (node, ns) = (plan.node.netns.as_str(), pod.netns.as_str());
    sys::ip(&["netns", "add", ns])?;
    sys::ip(&["-n", ns, "link", "set", "lo", "up"])?;
    sys::ip(&[
        "-n",
        node,
        "link",
        "add",
        &pod.host_veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns,
    ])?;
    sys::ip(&[
        "-n",
        node,
        "link",
        "set",
        &pod.host_veth,
        "master",
        &plan.node.bridge,
        "up",
    ])?;
    let addr = format!("{}/{}", pod.ip, plan.node.prefix_len);
    sys::ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
    if let Some(v6) = pod.ipv6 {
        let addr6 = format!("{v6}/{}", super::net::POD_PREFIX_V6_LEN);
        sys::ip(&["-n", ns, "addr", "add", &addr6, "dev", "eth0", "nodad"])?;
    }
    sys::ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    sys::ip(&[
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        &plan.node.gateway.to_string(),
    ])?;
    if let Some(gw6) = plan.node.gateway_v6 {
        sys::ip(&[
            "-n",
            ns,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &gw6.to_string(),
        ])?;
    }
    Ok(())
}

/// `PATH`, `HOME` and locale from our environment, and `TRELLIS_APP_BIN`
/// (so that `{trellis} app …` in a pod runs the same programs as
/// `trellis app` here); nothing else leaks in.
pub(super) fn base_env() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_else(|_| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        }),
    );
    for key in ["HOME", "LANG", "LC_ALL", "TZ", "TRELLIS_APP_BIN"] {
        if let Ok(v) = std::env::var(key) {
            env.insert(key.to_string(), v);
        }
    }
    env
}

fn log_path(store: &Store, pod: &PodPlan, role: &str) -> PathBuf {
    store
        .logs_dir()
        .join(format!("{}.{}.{role}.log", pod.namespace, pod.name))
}

/// A new pod's rules: its capture rules (`trellis-proxy init`, when it is
/// meshed and a proxy binary is at hand), then the service VIP rules.
pub(super) fn install_pod_rules(
    store: &Store,
    pod: &PodPlan,
    proxy_bin: Option<&Path>,
    iptables_mode: &str,
    service_rules: &str,
) -> anyhow::Result<()> {
    if let (Some(proxy), Some(bin)) = (&pod.proxy, proxy_bin) {
        run_init(store, pod, bin, &proxy.init_args, iptables_mode)?;
    }
    sys::run(
        "ip",
        &["netns", "exec", &pod.netns, "iptables-restore", "--noflush"],
        Some(service_rules),
    )
    .with_context(|| format!("installing service rules in {}", pod.netns))?;
    Ok(())
}

/// `trellis-proxy init …` in the pod, as an init container: must succeed.
pub(super) fn run_init(
    store: &Store,
    pod: &PodPlan,
    bin: &Path,
    args: &[String],
    iptables_mode: &str,
) -> anyhow::Result<()> {
    let log = log_path(store, pod, "init");
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &pod.netns])
        .arg(bin)
        .args(args)
        .args(["--iptables-mode", iptables_mode])
        .env_clear()
        .envs(base_env())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting trellis-proxy init in {}", pod.netns))?;
    let status = sys::poll_until(
        Instant::now() + INIT_TIMEOUT,
        Duration::from_millis(20),
        || child.try_wait().ok().flatten(),
    );
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => bail!(
            "trellis-proxy init failed in pod {} ({s}); its output:\n{}",
            pod.qualified_name(),
            indent(&sys::tail(&log, 20))
        ),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "trellis-proxy init did not finish within {INIT_TIMEOUT:?} in pod {}; its output:\n{}",
                pod.qualified_name(),
                indent(&sys::tail(&log, 20))
            )
        }
    }
}

/// Where a process runs: in a pod, or in the node namespace.
#[derive(Clone, Copy)]
enum Place<'a> {
    Pod(&'a PodPlan),
    Node(&'a Plan),
}

impl Place<'_> {
    fn netns(&self) -> &str {
        match self {
            Place::Pod(p) => &p.netns,
            Place::Node(plan) => &plan.node.netns,
        }
    }

    /// `demo/web-0`, or `node`.
    fn label(&self) -> String {
        match self {
            Place::Pod(p) => p.qualified_name(),
            Place::Node(_) => "node".to_string(),
        }
    }

    fn log(&self, store: &Store, role: Role) -> PathBuf {
        match self {
            Place::Pod(p) => log_path(store, p, role.as_str()),
            Place::Node(_) => store.logs_dir().join(format!("node.{}.log", role.as_str())),
        }
    }
}

/// Starts a long-running process, recorded in the state before it exists
/// (pods' processes and the node's in separate lists).
fn spawn(
    store: &mut Store,
    place: Place<'_>,
    role: Role,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
) -> anyhow::Result<Started> {
    let log = place.log(store, role);
    let node = matches!(place, Place::Node(_));
    fn list(s: &mut State, node: bool) -> &mut Vec<ProcessRecord> {
        if node {
            &mut s.node_processes
        } else {
            &mut s.processes
        }
    }
    let record = list(&mut store.state, node).len();
    store.update(|s| {
        list(s, node).push(ProcessRecord {
            netns: place.netns().to_string(),
            role,
            pid: None,
            start_time: None,
            log: log.clone(),
            argv: argv.clone(),
        })
    })?;
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = spawn_logged(&argv, &env, out)
        .with_context(|| format!("starting the {} of {}", role.as_str(), place.label()))?;
    let pid = child.id();
    let start = sys::start_time(pid);
    store.update(|s| {
        let r = &mut list(s, node)[record];
        r.pid = Some(pid);
        r.start_time = start;
    })?;
    Ok(Started {
        pod: place.label(),
        role,
        argv,
        log,
        child,
    })
}

/// A program in the node namespace, as root, with `args` and `env` on top
/// of the base environment: `trellis-identity` (it reads the issuer's
/// key), `trellis-controller` (it reads the objects file), and the node
/// agent.
fn start_on_node(
    store: &mut Store,
    plan: &Plan,
    role: Role,
    bin: &Path,
    args: &[&str],
    env: &BTreeMap<String, String>,
) -> anyhow::Result<Started> {
    let mut argv = vec![
        "ip".to_string(),
        "netns".into(),
        "exec".into(),
        plan.node.netns.clone(),
        bin.to_string_lossy().into_owned(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let mut all = base_env();
    all.extend(env.clone());
    spawn(store, Place::Node(plan), role, argv, all)
}

/// Writes the controller's objects file (atomically: it is watched), with
/// the pods the supervisor has down (in `state`) not ready.
pub(crate) fn write_cluster_file(plan: &Plan, state: &State) -> anyhow::Result<()> {
    let Some(c) = &plan.controller else {
        return Ok(());
    };
    let objects = super::cluster::cluster_objects_with(
        &plan.pods,
        &plan.services,
        &plan.routes,
        &plan.policies,
        &super::health::not_ready(&state.health),
    );
    let tmp = c.file.with_extension("yaml.tmp");
    let bytes = serde_json::to_vec_pretty(&objects)?;
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &c.file).with_context(|| format!("writing {}", c.file.display()))?;
    Ok(())
}

pub(super) fn start_proxy(store: &mut Store, pod: &PodPlan, bin: &Path) -> anyhow::Result<Started> {
    let (argv, env) = proxy_command(pod, bin)?;
    spawn(store, Place::Pod(pod), Role::Proxy, argv, env)
}

/// The command line and environment of a pod's proxy (as `up` starts it,
/// and the supervisor restarts it).
pub(super) fn proxy_command(
    pod: &PodPlan,
    bin: &Path,
) -> anyhow::Result<(Vec<String>, BTreeMap<String, String>)> {
    let Some(proxy) = &pod.proxy else {
        bail!("pod {} is not meshed", pod.qualified_name());
    };
    let uid = names::PROXY_UID;
    let argv = [
        "ip".to_string(),
        "netns".into(),
        "exec".into(),
        pod.netns.clone(),
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
        "--".into(),
        bin.to_string_lossy().into_owned(),
    ];
    let mut env = base_env();
    env.insert("HOME".into(), "/".into());
    env.extend(proxy.env.clone());
    Ok((argv.to_vec(), env))
}

pub(super) fn start_workload(store: &mut Store, pod: &PodPlan) -> anyhow::Result<Started> {
    let (argv, env) = workload_command(pod);
    spawn(store, Place::Pod(pod), Role::Workload, argv, env)
}

/// The command line and environment of a pod's workload.
pub(super) fn workload_command(pod: &PodPlan) -> (Vec<String>, BTreeMap<String, String>) {
    let mut argv = vec![
        "ip".to_string(),
        "netns".into(),
        "exec".into(),
        pod.netns.clone(),
    ];
    argv.extend(pod.command.iter().cloned());
    let mut env = base_env();
    env.extend(pod.env.clone());
    (argv, env)
}

/// Starts `argv` with exactly `env`, no stdin, stdout and stderr into
/// `out`, in a process group of its own (so a terminal's Ctrl-C reaches
/// `trellis`, which stops it in order). `up` and the supervisor start every
/// mesh process this way.
pub(crate) fn spawn_logged<'a>(
    argv: &[String],
    env: impl IntoIterator<Item = (&'a String, &'a String)>,
    out: File,
) -> anyhow::Result<std::process::Child> {
    let err = out.try_clone()?;
    let (program, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
    Ok(Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()?)
}

/// A binary meshed workloads need: `$env` when set, else `name` beside
/// `trellis`; an error naming both when it is not there.
fn sibling(trellis: &Path, name: &str, env: &str) -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os(env) {
        Some(p) => PathBuf::from(p),
        None => trellis.with_file_name(name),
    };
    if !path.is_file() {
        bail!(
            "meshed workloads need {name}, not found at {} (build it with `cargo build --workspace`, or set {env})",
            path.display()
        );
    }
    Ok(path)
}
