//! The local mesh, as a library: what `trellis mesh up -f FILE | apply |
//! status | exec | policy | down | list` and `trellis demo` do. The
//! `trellis` command line (`cli/`) is only its front end: arguments,
//! printing, exit codes.
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
//! ## Front ends
//!
//! A front end checks a file ([`check::load`]), then drives a [`Mesh`]:
//! [`Mesh::up`], [`Mesh::apply`], [`Mesh::open`] (then `status`,
//! `exec_command`, `change_policy`, `down`), [`down_by_name`], [`list`].
//! The binary running it is also what `{trellis}` in workload commands
//! stands for, and `up` starts it again in the node namespace as
//! `mesh node-agent --name MESH` ([`agent::run`]) and `mesh supervise
//! --name MESH` ([`supervise::run`]): a front end must answer to both.
//!
//! ## Modules, lowest layer first
//!
//! Each module uses only modules listed before it, and none uses the
//! crate root (`layering_tests` checks this list against the source):
//!
//! - [`names`]: what things are called and which names are valid —
//!   namespaces, interfaces, chains, SPIFFE IDs, the state directory, the
//!   proxy's uid and ports;
//! - [`template`]: the `{trellis}`, `{name}`, … placeholders of commands;
//! - [`net`]: CIDRs, pod and service addresses, slots that keep addresses
//!   stable across `apply`;
//! - [`sys`]: commands, `/proc`, sockets inside a namespace (IO);
//! - [`http`]: a minimal HTTP client, from the node namespace;
//! - [`table`]: text tables;
//! - [`interrupt`]: Ctrl-C and SIGTERM as a flag long steps check;
//! - [`progress`]: one line per step on stderr;
//! - [`spec`]: the mesh file's types, as serde reads them (strictly);
//! - [`routes`]: the file's `routes:`, checked against the Gateway API
//!   subset the controller compiles;
//! - [`authz`]: the file's `policies:`, checked and compiled into each
//!   proxy's policy file;
//! - [`identity`]: the identity service's plan, the mesh CA's and pods'
//!   files, the proxies' identity variables;
//! - [`controller`]: the controller's plan, routes and policies as its
//!   objects, and its own verdict on them;
//! - [`check`]: the whole file validated, every problem at once →
//!   [`check::Checked`];
//! - [`plan`]: every name, address, rule, file and command line `up` will
//!   use, decided before anything is touched;
//! - [`cluster`]: the controller's objects file (Namespaces, Pods,
//!   Services, EndpointSlices, routes, policies);
//! - [`state`]: the plan and the intent log `down` trusts;
//! - [`health`]: what the supervisor decides about a pod (pure);
//! - [`diff`]: what `apply` changes, decided (pure);
//! - [`files`]: writing the CA, tokens, policy and destinations files;
//! - [`ready`]: waiting until proxies, workloads and probes are ready;
//! - [`down`]: removing what the state says was made, and nothing else;
//! - [`up`]: carrying out a plan, recorded step by step;
//! - [`apply`]: bringing a running mesh to a changed file;
//! - [`supervise`]: the supervisor that restarts pods' processes (with
//!   backoff, up to a limit) and takes pods out of their services while
//!   they are down;
//! - [`agent`]: the node agent that keeps pods' tokens fresh after `up`;
//! - [`status`]: what `mesh status` and `mesh list` show;
//! - [`golden`]: reading proxies' `/metrics` into golden signals (the
//!   demo's table).
//!
//! Decide, then act: [`names`], [`template`], [`net`], [`spec`],
//! [`routes`], [`authz`], [`identity`], [`controller`], [`check`],
//! [`plan`], [`cluster`], [`health`] and [`diff`] are pure and
//! table-tested; [`sys`], [`http`], [`interrupt`], [`progress`] and
//! [`state`] are the IO they rest on; from [`files`] up, modules act on
//! the system, carrying out what the pure ones decided.

// `println!`/`eprintln!` panic on a closed pipe (`| tee` killed by the
// same Ctrl-C): print through trellis_core::{out, outln, errln}.
#![deny(clippy::print_stdout, clippy::print_stderr)]
// The crate's docs map every module, public or not, for whoever works on
// it: read them with `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod agent;
pub mod check;
pub mod golden;
pub mod interrupt;
pub mod names;
pub mod plan;
pub mod progress;
pub mod spec;
pub mod state;
pub mod status;
pub mod supervise;
pub mod sys;
pub mod table;

mod apply;
mod authz;
mod cluster;
mod controller;
mod diff;
mod down;
mod files;
mod health;
mod http;
mod identity;
mod net;

mod ready;
mod routes;

mod template;
mod up;

#[cfg(test)]
mod docs_tests;
#[cfg(test)]
mod layering_tests;

use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

pub use apply::ApplyOptions;
pub use authz::ProxyPolicy;
pub use interrupt::{no_panic, Interrupt, Interrupted, EXIT_INTERRUPTED, UNDO};
pub use plan::PodPlan;
pub use progress::Progress;
pub use up::UpOptions;

use state::{StateError, Store};

/// How long `mesh policy` waits for another command holding the mesh.
const POLICY_LOCK_WAIT: Duration = Duration::from_secs(10);

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

/// What `down_by_name` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Down {
    /// Everything the mesh's state recorded is removed.
    Removed,
    /// No state of that name: nothing was done. `strays` are network
    /// namespaces that match the mesh's prefix but that no state records,
    /// so they were left alone.
    NotUp { strays: Vec<String> },
}

/// `mesh down` of the mesh called `name`.
pub fn down_by_name(name: &str, progress: &Progress) -> anyhow::Result<Down> {
    match Store::open(name) {
        Ok(store) => down::teardown(store, progress).map(|()| Down::Removed),
        Err(StateError::Missing(_)) => Ok(Down::NotUp {
            strays: sys::netns_with_prefix(&names::netns_prefix(name)),
        }),
        Err(StateError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            // `up` died between claiming the directory and writing the state.
            down::remove_empty(&names::mesh_dir(name))?;
            progress.step("removed an empty state directory");
            Ok(Down::Removed)
        }
        Err(e) => Err(e.into()),
    }
}

/// A mesh that is up, as `mesh list` shows it.
#[derive(Debug)]
pub struct Listed {
    pub name: String,
    /// Its phase, pods and source; or why its state cannot be read.
    pub summary: Result<Summary, StateError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// As `status` shows it (`degraded` when a pod is down).
    pub phase: &'static str,
    pub pods: usize,
    /// The mesh file, or "built-in demo".
    pub source: String,
}

/// The meshes that are up.
pub fn list() -> Result<Vec<Listed>, StateError> {
    Ok(state::list_meshes()?
        .into_iter()
        .map(|name| {
            let summary = Store::open(&name).map(|s| Summary {
                phase: health::shown_phase(s.state.phase, &s.state.health),
                pods: s.state.plan.pods.len(),
                source: s.state.source.clone(),
            });
            Listed { name, summary }
        })
        .collect())
}

/// What `mesh policy` changes in a pod's policy file.
#[derive(Debug, Clone, Default)]
pub struct PolicyChange {
    /// A new default policy (`deny`, `audit`, …).
    pub default_policy: Option<String>,
    /// Per-port defaults, each `PORT=POLICY[,PORT=POLICY…]`.
    pub ports: Vec<String>,
    /// Drop the per-port defaults before applying `ports`.
    pub clear_ports: bool,
    /// Start from what `up` wrote (the mesh file's policy).
    pub reset: bool,
}

/// A pod's policy after [`Mesh::change_policy`].
#[derive(Debug, Clone)]
pub struct PolicyChanged {
    /// The pod, `demo/web-0`.
    pub pod: String,
    pub policy: ProxyPolicy,
    /// The controller's objects file, when it was rewritten (the
    /// controller reloads it and streams the pod's proxy its new policy).
    pub written: Option<PathBuf>,
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

/// A mesh that is up, for code that drives one (the CLI, the demo).
#[derive(Debug)]
pub struct Mesh {
    store: Store,
    progress: Progress,
}

impl Mesh {
    /// `mesh up` in-process: makes the mesh and waits until it is ready;
    /// on failure everything made is already removed.
    pub fn up(
        checked: &check::Checked,
        opts: &UpOptions,
        interrupt: &Interrupt,
    ) -> anyhow::Result<Mesh> {
        let progress = Progress::new(&checked.file.name);
        let store = up::up(checked, opts, interrupt, &progress)?;
        Ok(Mesh { store, progress })
    }

    /// `mesh apply`: brings the running mesh the file names to it.
    pub fn apply(
        checked: &check::Checked,
        opts: &ApplyOptions,
        interrupt: &Interrupt,
    ) -> anyhow::Result<Mesh> {
        let progress = Progress::new(&checked.file.name);
        let store = apply::apply(checked, opts, interrupt, &progress)?;
        Ok(Mesh { store, progress })
    }

    /// The mesh called `name`, or the only one that is up.
    pub fn open(name: Option<String>) -> anyhow::Result<Mesh> {
        let store = Store::open(&resolve(name)?)?;
        let progress = Progress::new(&store.state.mesh);
        Ok(Mesh { store, progress })
    }

    pub fn name(&self) -> &str {
        &self.store.state.mesh
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub fn pods(&self) -> &[PodPlan] {
        &self.store.state.plan.pods
    }

    /// Finds a pod by `web` (replica 0), `web-1`, `demo/web` or `demo/web-1`.
    pub fn find_pod(&self, query: &str) -> anyhow::Result<&PodPlan> {
        self.store
            .state
            .plan
            .find_pod(query)
            .map_err(anyhow::Error::msg)
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.store.logs_dir()
    }

    /// What `mesh status` shows.
    pub fn status(&self) -> status::MeshStatus {
        status::collect(&self.store)
    }

    /// The pod's proxy's `/metrics` text.
    pub fn fetch_metrics(&self, pod: &PodPlan) -> anyhow::Result<String> {
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

    pub fn trust_domain(&self) -> &str {
        &self.store.state.plan.trust_domain
    }

    /// The certificate the pod's proxy holds (its admin `/identity`), or
    /// why there is none.
    pub fn certificate(&self, pod: &PodPlan) -> Result<status::Certificate, String> {
        let proxy = pod.proxy.as_ref().ok_or("not meshed")?;
        match status::certificate(&pod.netns, proxy.admin.port()) {
            (_, Some(cert)) => Ok(cert),
            (state, None) => Err(state),
        }
    }

    /// A command that runs `argv` inside the pod (as `mesh exec` would).
    pub fn command_in(&self, pod: &PodPlan, argv: &[String]) -> Command {
        exec_command(pod, argv)
    }

    /// `mesh exec`: [`Mesh::command_in`], once the pod's network namespace
    /// is known to be there.
    pub fn exec_command(&self, pod: &PodPlan, argv: &[String]) -> anyhow::Result<Command> {
        if !sys::netns_exists(&pod.netns) {
            bail!(
                "pod {}'s network namespace {} is gone",
                pod.qualified_name(),
                pod.netns
            );
        }
        Ok(exec_command(pod, argv))
    }

    /// `mesh policy`: a meshed pod's inbound policy, changed as `change`
    /// says. The change goes where the pod's proxy takes its policy from,
    /// the controller: the pod's `default-inbound-policy` and
    /// `port-inbound-policy` annotations in the controller's objects file
    /// (and in the mesh's state). The pod's
    /// policy file records the result (what `mesh policy` shows).
    pub fn change_policy(
        &mut self,
        query: &str,
        change: &PolicyChange,
    ) -> anyhow::Result<PolicyChanged> {
        let pod = self.find_pod(query)?.clone();
        let Some(proxy) = &pod.proxy else {
            bail!(
                "pod {} is not meshed: it has no proxy, so no inbound policy",
                pod.qualified_name()
            );
        };
        let path = files::pod_files(&pod)?.policy.clone();
        let mut policy = if change.reset {
            proxy.policy.clone()
        } else {
            let text =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
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
        if !changed {
            return Ok(PolicyChanged {
                pod: pod.qualified_name(),
                policy,
                written: None,
            });
        }
        let _lock = self.store.lock(POLICY_LOCK_WAIT)?;
        self.store.update(|s| {
            let same = |p: &&mut PodPlan| p.namespace == pod.namespace && p.name == pod.name;
            if let Some(p) = s.plan.pods.iter_mut().find(same) {
                authz::set_policy_annotations(&mut p.annotations, &policy);
            }
        })?;
        up::write_cluster_file(&self.store.state.plan, &self.store.state)?;
        files::write_policy(&path, &policy)?;
        let written = self
            .store
            .state
            .plan
            .controller
            .as_ref()
            .map(|c| c.file.clone());
        Ok(PolicyChanged {
            pod: pod.qualified_name(),
            policy,
            written,
        })
    }

    /// `mesh down`.
    pub fn down(self) -> anyhow::Result<()> {
        down::teardown(self.store, &self.progress)
    }
}
