//! The local mesh: `trellis mesh up -f FILE | status | exec | down | list`.
//!
//! `trellis mesh apply -f FILE` brings a running mesh to a changed file
//! (replicas, services, routes, policies): see [`apply`] and [`diff`].
//!
//! A mesh is one Linux host (root) pretending to be a cluster. Each workload
//! replica is a network namespace (`trls-<mesh>-<ns>-<replica>`) with a veth
//! into a bridge that lives in the mesh's own node namespace
//! (`trls-<mesh>-node`) — nothing is routed, forwarded or NATed to the
//! host's interfaces, and the host namespace gets no new links. Meshed pods
//! get the real `trellis-proxy init` capture rules and the real
//! `trellis-proxy` as uid 7102; every pod gets kube-proxy-like DNAT rules for
//! service virtual IPs (after the capture rules) and an `/etc/hosts` naming
//! them.
//!
//! Identity: every mesh has its own CA and token signer; `trellis-identity`
//! runs in the node namespace and the proxies get certificates from it
//! with their pods' ServiceAccount tokens, then speak mutual TLS to every
//! meshed destination and enforce their pods' inbound policy (see
//! [`identity`] and [`authz`]).
//!
//! Modules, in the order `up` uses them:
//! - [`spec`]: the mesh file, parsed strictly and validated all at once
//!   (its `policies:` in [`authz`]);
//! - [`net`], [`plan`], [`identity`], [`authz`], [`controller`] and
//!   [`cluster`] (the controller's objects file): pure decisions — names,
//!   addresses, files, rules, command lines, the identity service, each
//!   proxy's destinations and policy;
//! - [`state`]: the intent log `down` trusts;
//! - [`diff`]: what `apply` changes, decided (pure);
//! - [`up`] (then [`ready`]), [`apply`], [`down`], [`status`]: acting on the system, through [`sys`]
//!   (commands, `/proc`, sockets inside a namespace), [`http`] and
//!   [`files`] (CA, tokens, policy and destinations files);
//! - [`agent`]: the node agent that keeps pods' tokens fresh after `up`;
//! - [`supervise`]: the supervisor that restarts pods' processes (with
//!   backoff, up to a limit) and takes pods out of their services while
//!   they are down;
//! - [`golden`]: reading proxies' `/metrics` into golden signals (the demo's
//!   table).

pub(crate) mod authz;
pub(crate) mod cluster;
pub(crate) mod controller;
pub(crate) mod golden;
pub(crate) mod identity;
pub(crate) mod interrupt;
pub(crate) mod plan;
pub(crate) mod routes;
pub(crate) mod spec;
pub(crate) mod table;

mod agent;
mod apply;
mod diff;
mod down;
mod files;
mod http;
mod net;
mod ready;
mod state;
mod status;
mod supervise;
mod sys;
mod up;

#[cfg(test)]
mod docs_tests;

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use trellis_core::{errln, out, outln};

pub(crate) use interrupt::{Interrupt, Interrupted, EXIT_INTERRUPTED};
pub(crate) use plan::PodPlan;
pub(crate) use up::UpOptions;

use state::{StateError, Store};

/// Run a local mesh on this host: network namespaces as pods (root).
#[derive(clap::Args, Debug)]
pub struct MeshArgs {
    #[command(subcommand)]
    command: MeshCommand,
}

#[derive(clap::Subcommand, Debug)]
enum MeshCommand {
    /// Create the mesh a file describes; returns once every pod is ready.
    ///
    /// The file is checked first, and refused with every mistake listed
    /// (field path and accepted values). Every key: docs/mesh-file.md;
    /// examples: examples/.
    Up {
        /// The mesh file: every key in docs/mesh-file.md; see examples/.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// How long to wait for proxies and workloads to become ready.
        #[arg(long, default_value = "30s", value_parser = trellis_core::config::parse_duration)]
        timeout: Duration,
    },
    /// Bring a running mesh to a changed file (replicas, services, routes,
    /// policies), as `kubectl apply` would; the file's `name` says which.
    ///
    /// The file is checked first, as by `up`. Every key: docs/mesh-file.md.
    Apply {
        /// The changed mesh file: every key in docs/mesh-file.md.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// How long to wait for new proxies and workloads to become ready.
        #[arg(long, default_value = "30s", value_parser = trellis_core::config::parse_duration)]
        timeout: Duration,
    },
    /// Workloads, replicas, addresses, identities, admin URLs, liveness.
    Status {
        /// Which mesh (default: the only one).
        #[arg(long)]
        name: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Run a command inside a pod's network namespace, like `kubectl exec`.
    Exec {
        /// Which mesh (default: the only one).
        #[arg(long)]
        name: Option<String>,
        /// `web` (replica 0), `web-1`, or `NAMESPACE/web-1`.
        pod: String,
        /// The command, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Show a meshed pod's inbound policy file, or change it: the proxy
    /// reloads it, no restart.
    Policy {
        /// Which mesh (default: the only one).
        #[arg(long)]
        name: Option<String>,
        /// `web` (replica 0), `web-1`, or `NAMESPACE/web-1`.
        pod: String,
        /// New default: all-unauthenticated, all-authenticated, deny or audit.
        #[arg(long = "default", value_name = "POLICY")]
        default_policy: Option<String>,
        /// Per-port default, `PORT=POLICY` (e.g. 8080=deny); repeatable.
        #[arg(long = "port", value_name = "PORT=POLICY")]
        ports: Vec<String>,
        /// Drop the per-port defaults before applying `--port`.
        #[arg(long)]
        clear_ports: bool,
        /// Start from what `up` wrote (the mesh file's policy).
        #[arg(long)]
        reset: bool,
    },
    /// Keeps pods' tokens fresh (started by `up` in the node namespace).
    #[command(hide = true)]
    NodeAgent {
        #[arg(long)]
        name: String,
    },
    /// Restarts pods' processes and takes pods out of their services while
    /// they are down (started by `up` in the node namespace).
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        name: String,
    },
    /// Remove everything `up` made, and nothing else (the logs stay, in
    /// the place it prints, until the next `up` of the same name).
    Down {
        /// Which mesh (default: the only one).
        #[arg(long)]
        name: Option<String>,
    },
    /// The meshes that are up.
    List,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

pub fn run(args: MeshArgs) -> anyhow::Result<()> {
    match args.command {
        MeshCommand::Up { file, timeout } => {
            let checked = spec::load(&file)?;
            let interrupt = Interrupt::install(UNDO)?;
            let opts = UpOptions {
                timeout,
                source: file.display().to_string(),
            };
            let mesh = Mesh::up(&checked, &opts, &interrupt)?;
            let name = mesh.name().to_string();
            let table = status::render(&status::collect(&mesh.store));
            // Ctrl-C while the status was read is still Ctrl-C during `up`.
            if !interrupt.finish() {
                mesh.progress
                    .step("interrupted after every pod was ready; removing the mesh");
                mesh.down()?;
                return Err(Interrupted.into());
            }
            outln!("{table}");
            outln!("mesh {name} is up. Next: `trellis mesh status`, `trellis mesh exec POD -- CMD`, `trellis mesh down`");
            Ok(())
        }
        MeshCommand::Apply { file, timeout } => {
            let checked = spec::load(&file)?;
            let interrupt = Interrupt::install(UNDO)?;
            let opts = apply::ApplyOptions {
                timeout,
                source: file.display().to_string(),
            };
            let progress = Progress::new(&checked.file.name);
            let store = apply::apply(&checked, &opts, &interrupt, &progress)?;
            outln!("{}", status::render(&status::collect(&store)));
            outln!("mesh {} is at {}.", store.state.mesh, file.display());
            Ok(())
        }
        MeshCommand::Status { name, output } => {
            let store = Store::open(&resolve(name)?)?;
            let st = status::collect(&store);
            match output {
                Output::Table => out!("{}", status::render(&st)),
                Output::Json => outln!("{}", serde_json::to_string_pretty(&st)?),
            }
            Ok(())
        }
        MeshCommand::Exec { name, pod, command } => {
            let store = Store::open(&resolve(name)?)?;
            let pod = store
                .state
                .plan
                .find_pod(&pod)
                .map_err(anyhow::Error::msg)?;
            if !sys::netns_exists(&pod.netns) {
                bail!(
                    "pod {}'s network namespace {} is gone",
                    pod.qualified_name(),
                    pod.netns
                );
            }
            // Replace this process: stdio, signals and the exit code are the
            // command's own.
            let err = exec_command(pod, &command).exec();
            Err(err).with_context(|| format!("cannot run `ip netns exec {} …`", pod.netns))
        }
        MeshCommand::Policy {
            name,
            pod,
            default_policy,
            ports,
            clear_ports,
            reset,
        } => {
            let store = Store::open(&resolve(name)?)?;
            let change = PolicyChange {
                default_policy,
                ports,
                clear_ports,
                reset,
            };
            let policy = change_policy(&store, &pod, &change)?;
            outln!("{}", serde_json::to_string_pretty(&policy)?);
            Ok(())
        }
        MeshCommand::NodeAgent { name } => agent::run(&name),
        MeshCommand::Supervise { name } => supervise::run(&name),
        MeshCommand::Down { name } => {
            let name = match name {
                Some(n) => n,
                None => match state::list_meshes()?.as_slice() {
                    [] => {
                        errln!("no local mesh is up; nothing to do");
                        return Ok(());
                    }
                    [one] => one.clone(),
                    many => bail!(
                        "several meshes are up: {}; say which with `trellis mesh down --name NAME`",
                        many.join(", ")
                    ),
                },
            };
            // A signal does not stop `down`: it finishes the teardown (its
            // commands and the mesh's processes are in process groups of
            // their own, out of the terminal's reach). A third signal
            // abandons it; the next `down` then finishes it.
            let _interrupt = Interrupt::install("finishing the teardown first")?;
            down_by_name(&name, &Progress::new(&name))
        }
        MeshCommand::List => {
            let meshes = state::list_meshes()?;
            if meshes.is_empty() {
                errln!("no local mesh is up");
            }
            let rows: Vec<Vec<String>> = meshes
                .iter()
                .map(|m| match Store::open(m) {
                    Ok(s) => vec![
                        m.clone(),
                        supervise::shown_phase(s.state.phase, &s.state.health).to_string(),
                        s.state.plan.pods.len().to_string(),
                        s.state.source.clone(),
                    ],
                    Err(e) => vec![
                        m.clone(),
                        format!("unreadable: {e}"),
                        "-".into(),
                        "-".into(),
                    ],
                })
                .collect();
            if !rows.is_empty() {
                out!(
                    "{}",
                    table::render(&["MESH", "PHASE", "PODS", "SOURCE"], &rows)
                );
            }
            Ok(())
        }
    }
}

/// What `up`, `apply` and `demo` do on Ctrl-C.
pub(crate) const UNDO: &str = "stopping and removing what was made";

/// `f`, with a panic turned into an error, so that whoever called it still
/// removes what was made (the panic's message is already on stderr).
pub(crate) fn no_panic<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("{what} panicked (a bug)")))
}

/// `--name`, or the only mesh that is up.
fn resolve(name: Option<String>) -> anyhow::Result<String> {
    if let Some(n) = name {
        return Ok(n);
    }
    match state::list_meshes()?.as_slice() {
        [] => bail!(
            "no local mesh is up (start one with `trellis mesh up -f FILE` or `trellis demo`)"
        ),
        [one] => Ok(one.clone()),
        many => bail!(
            "several meshes are up: {}; say which with --name",
            many.join(", ")
        ),
    }
}

fn down_by_name(name: &str, progress: &Progress) -> anyhow::Result<()> {
    match Store::open(name) {
        Ok(store) => down::teardown(store, progress),
        Err(StateError::Missing(_)) => {
            errln!("mesh {name:?} is not up; nothing to do");
            let strays = sys::netns_with_prefix(&plan::netns_prefix(name));
            if !strays.is_empty() {
                errln!(
                    "note: these network namespaces match its prefix but no state records them, so they were left alone: {}",
                    strays.join(", ")
                );
            }
            Ok(())
        }
        Err(StateError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            // `up` died between claiming the directory and writing the state.
            down::remove_empty(&state::mesh_dir(name))?;
            progress.step("removed an empty state directory");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// What `mesh policy` changes in a pod's policy file.
struct PolicyChange {
    default_policy: Option<String>,
    ports: Vec<String>,
    clear_ports: bool,
    reset: bool,
}

/// Reads the pod's policy file (or the plan's policy, with `reset`),
/// applies `change`, and writes it back if anything was asked.
fn change_policy(
    store: &Store,
    query: &str,
    change: &PolicyChange,
) -> anyhow::Result<authz::ProxyPolicy> {
    let pod = store
        .state
        .plan
        .find_pod(query)
        .map_err(anyhow::Error::msg)?;
    let Some(proxy) = &pod.proxy else {
        bail!(
            "pod {} is not meshed: it has no proxy, so no inbound policy",
            pod.qualified_name()
        );
    };
    let path = &files::pod_files(pod)?.policy;
    let mut policy = if change.reset {
        proxy.policy.clone()
    } else {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a policy file", path.display()))?
    };
    if let Some(d) = &change.default_policy {
        policy.default_policy = d.parse::<spec::InboundPolicy>().ok().with_context(|| {
            format!("{d:?} is not one of all-unauthenticated, all-authenticated, deny, audit")
        })?;
    }
    if change.clear_ports {
        policy.ports.clear();
    }
    for p in &change.ports {
        policy
            .ports
            .extend(authz::parse_port_policies(p).map_err(|e| anyhow::anyhow!("--port {e}"))?);
    }
    let changed = change.reset
        || change.clear_ports
        || change.default_policy.is_some()
        || !change.ports.is_empty();
    if changed {
        files::write_policy(path, &policy)?;
        errln!(
            "wrote {}; the proxy of {} reloads it",
            path.display(),
            pod.qualified_name()
        );
    }
    Ok(policy)
}

fn exec_command(pod: &PodPlan, command: &[String]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &pod.netns]).args(command);
    for key in ["POD_NAME", "POD_NAMESPACE", "POD_IP", "TRELLIS_MESH"] {
        if let Some(v) = pod.env.get(key) {
            cmd.env(key, v);
        }
    }
    cmd
}

/// One line per step, to stderr, each with the time since the operation
/// (`up`, `apply`, `down`) began: `mesh demo: [  1.3s] …`.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    prefix: String,
    started: Instant,
}

impl Progress {
    pub(crate) fn new(mesh: &str) -> Self {
        Self {
            prefix: format!("mesh {mesh}: "),
            started: Instant::now(),
        }
    }

    pub(crate) fn step(&self, msg: &str) {
        errln!("{}", self.line(self.started.elapsed(), msg));
    }

    fn line(&self, elapsed: Duration, msg: &str) -> String {
        format!("{}[{:>5.1}s] {msg}", self.prefix, elapsed.as_secs_f64())
    }
}

/// A mesh that is up, for code that drives one (the demo).
#[derive(Debug)]
pub(crate) struct Mesh {
    store: Store,
    progress: Progress,
}

impl Mesh {
    /// `mesh up` in-process: makes the mesh and waits until it is ready;
    /// on failure everything made is already removed.
    pub(crate) fn up(
        checked: &spec::Checked,
        opts: &UpOptions,
        interrupt: &Interrupt,
    ) -> anyhow::Result<Mesh> {
        let progress = Progress::new(&checked.file.name);
        let store = up::up(checked, opts, interrupt, &progress)?;
        Ok(Mesh { store, progress })
    }

    pub(crate) fn name(&self) -> &str {
        &self.store.state.mesh
    }

    pub(crate) fn pods(&self) -> &[PodPlan] {
        &self.store.state.plan.pods
    }

    pub(crate) fn logs_dir(&self) -> PathBuf {
        self.store.logs_dir()
    }

    /// The pod's proxy's `/metrics` text.
    pub(crate) fn fetch_metrics(&self, pod: &PodPlan) -> anyhow::Result<String> {
        let proxy = pod
            .proxy
            .as_ref()
            .with_context(|| format!("pod {} has no proxy", pod.qualified_name()))?;
        let r = http::get(
            &self.store.state.plan.node.netns,
            proxy.admin,
            "/metrics",
            Duration::from_secs(2),
        )?;
        if r.status != 200 {
            bail!("{}/metrics answered {}", proxy.admin, r.status);
        }
        Ok(r.text())
    }

    pub(crate) fn trust_domain(&self) -> &str {
        &self.store.state.plan.trust_domain
    }

    /// The certificate the pod's proxy holds (its admin `/identity`), or
    /// why there is none.
    pub(crate) fn certificate(&self, pod: &PodPlan) -> Result<status::Certificate, String> {
        let proxy = pod.proxy.as_ref().ok_or("not meshed")?;
        match status::certificate(&pod.netns, proxy.admin.port()) {
            (_, Some(cert)) => Ok(cert),
            (state, None) => Err(state),
        }
    }

    /// A command that runs `argv` inside the pod (as `mesh exec` would).
    pub(crate) fn command_in(&self, pod: &PodPlan, argv: &[String]) -> Command {
        exec_command(pod, argv)
    }

    /// `mesh down`.
    pub(crate) fn down(self) -> anyhow::Result<()> {
        down::teardown(self.store, &self.progress)
    }
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    #[test]
    fn steps_carry_the_time_since_the_start() {
        let p = Progress::new("demo");
        assert_eq!(
            p.line(Duration::from_millis(2345), "pod demo/web-0 made"),
            "mesh demo: [  2.3s] pod demo/web-0 made"
        );
        assert_eq!(
            p.line(Duration::from_secs(125), "x"),
            "mesh demo: [125.0s] x"
        );
    }
}
