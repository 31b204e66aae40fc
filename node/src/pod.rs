//! One pod's life on the node, as one task: its network and volumes, its
//! init containers in order (a native sidecar — an init container with
//! `restartPolicy: Always` — is started, and ready by its startup probe,
//! before the next), its containers, their probes and restarts, its status,
//! and its end: containers stopped with the grace period, sidecars last and
//! in reverse order, then everything it had removed and the pod object
//! deleted for good.
//!
//! The task owns the pod's state; processes, probes and the API server
//! reach it as events, so nothing is shared but the channel.
//!
//! `container` has a container's state and the pod's phase from them
//! (pure), `report` the status and Events it writes, `stop` its end.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use trellis_core::backoff::Exponential;

mod container;
mod report;
mod stop;

use crate::agent::Shared;
use crate::launch::{self, PodEnv};
use crate::network;
use crate::node::qualified;
use crate::probe::{self, Kind as ProbeKind, Outcome, ProbeState};
use crate::services::{self, ServiceView};
use crate::volumes::{self, Volumes};
use container::{Ctr, Ended, State};

/// Restart backoff: 10 s, doubling, at most 5 minutes, reset after a
/// container ran for 10 minutes: kubelet's `CrashLoopBackOff`. The
/// workspace's backoff with the jitter off, as kubelet's has none: each
/// node restarts only its own containers (no fleet retrying one server in
/// step), and the schedule is what users read in "back-off 40s restarting
/// failed container" and expect from Kubernetes.
const RESTART: Exponential = Exponential::new(Duration::from_secs(10), Duration::from_secs(300));
const RESTART_RESET: Duration = Duration::from_secs(600);
/// How often the state machine looks at timers, and volumes are refreshed.
const TICK: Duration = Duration::from_millis(500);
const VOLUME_REFRESH: Duration = Duration::from_secs(10);
/// How long a pod whose network or volumes could not be set up waits
/// before the next attempt.
const SETUP_RETRY: Duration = Duration::from_secs(2);
/// The same warning is not repeated (log, Event) sooner than this.
const WARN_AGAIN: Duration = Duration::from_secs(60);
/// The least time a container is given to stop (kubelet's).
const MIN_GRACE: Duration = Duration::from_secs(2);
/// The grace period when the pod object vanished without one.
const GONE_GRACE: Duration = Duration::from_secs(2);

/// What reaches the pod's task.
#[derive(Debug)]
enum Event {
    Exited {
        index: usize,
        generation: u64,
        code: Option<i32>,
        signal: Option<i32>,
    },
    Probed {
        index: usize,
        generation: u64,
        kind: ProbeKind,
        outcome: Outcome,
    },
}

/// The pod's task: runs until the pod is gone and everything it had is
/// removed.
pub async fn run(shared: Arc<Shared>, mut updates: watch::Receiver<Option<Pod>>) {
    let Some(pod) = updates.borrow_and_update().clone() else {
        return;
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = qualified(&pod);
    let mut worker = match Worker::new(shared.clone(), pod) {
        Ok(w) => w,
        Err(e) => {
            warn!(pod = %name, error = %format!("{e:#}"), "cannot run the pod");
            return;
        }
    };
    info!(pod = %name, %uid, ip = %worker.ip, netns = %worker.netns, "starting");
    worker.live(&mut updates).await;
    worker.finish().await;
    info!(pod = %name, "gone");
}

struct Worker {
    shared: Arc<Shared>,
    pod: Pod,
    uid: String,
    netns: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    containers: Vec<Ctr>,
    volumes: Option<Volumes>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    services: watch::Receiver<Arc<Vec<ServiceView>>>,
    start_time: Timestamp,
    transitions: BTreeMap<&'static str, (bool, Timestamp)>,
    last_status: Value,
    initialized: bool,
    volume_refreshed: Instant,
    sandbox_ready: bool,
    /// No new attempt at the network or volumes before this.
    setup_retry: Option<Instant>,
    warned: std::sync::Mutex<BTreeMap<String, Instant>>,
}

impl Worker {
    fn new(shared: Arc<Shared>, pod: Pod) -> anyhow::Result<Worker> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let netns = network::pod_netns(&shared.mesh, &uid);
        let ip = shared.allocate(&netns)?;
        let dir = shared.pods_dir.join(&uid);
        let spec = pod.spec.clone().unwrap_or_default();
        let containers = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| Ctr::new(c.clone(), true))
            .chain(spec.containers.iter().map(|c| Ctr::new(c.clone(), false)))
            .collect();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let services = shared.services.clone();
        Ok(Worker {
            shared,
            pod,
            uid,
            netns,
            ip,
            dir,
            containers,
            volumes: None,
            events_tx,
            events_rx,
            services,
            start_time: Timestamp::now(),
            transitions: BTreeMap::new(),
            last_status: Value::Null,
            initialized: false,
            volume_refreshed: Instant::now(),
            sandbox_ready: false,
            setup_retry: None,
            warned: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    fn name(&self) -> String {
        qualified(&self.pod)
    }

    fn namespace(&self) -> String {
        self.pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    }

    /// Runs the pod until it is deleted; returns with its containers stopped.
    async fn live(&mut self, updates: &mut watch::Receiver<Option<Pod>>) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            let grace = self.deletion_grace(&updates.borrow());
            if let Some(grace) = grace {
                self.terminate(grace).await;
                return;
            }
            self.step().await;
            self.report().await;
            tokio::select! {
                changed = updates.changed() => {
                    if changed.is_err() {
                        // The agent is going away: leave the pod running.
                        return;
                    }
                    let latest = updates.borrow().clone();
                    if let Some(p) = latest {
                        self.pod = p;
                    }
                }
                Some(event) = self.events_rx.recv() => self.handle(event).await,
                changed = self.services.changed() => {
                    if changed.is_ok() && self.sandbox_ready {
                        self.apply_services().await;
                    } else {
                        // Seen: the sandbox, once made, reads the latest.
                        self.services.borrow_and_update();
                    }
                }
                _ = tick.tick() => {}
            }
        }
    }

    /// `Some(grace)` once the pod is being deleted (or is gone).
    fn deletion_grace(&self, latest: &Option<Pod>) -> Option<Duration> {
        match latest {
            None => Some(GONE_GRACE),
            Some(p) if p.metadata.deletion_timestamp.is_some() => Some(Duration::from_secs(
                p.metadata
                    .deletion_grace_period_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(30),
            )),
            Some(_) => None,
        }
    }

    /// Moves the pod forward: its sandbox, volumes, the next init
    /// container, containers whose backoff has passed.
    async fn step(&mut self) {
        if self.setup_retry.is_some_and(|t| Instant::now() < t) {
            return;
        }
        if self.pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            let message = "hostNetwork pods are not supported by trellis-node (docs/node-agent.md)";
            self.set_waiting_all("CreateContainerConfigError", message);
            self.warn("FailedCreatePodSandBox", message).await;
            self.setup_retry = Some(Instant::now() + SETUP_RETRY);
            return;
        }
        if !self.sandbox_ready {
            if let Err(e) = self.make_sandbox().await {
                self.warn("FailedCreatePodSandBox", &format!("{e:#}")).await;
                self.setup_retry = Some(Instant::now() + SETUP_RETRY);
                return;
            }
            self.sandbox_ready = true;
        }
        if self.volumes.is_none() {
            let ip = self.ip.to_string();
            match Volumes::make(
                &self.shared.client,
                &self.shared.sources,
                &self.pod,
                &self.dir.join("volumes"),
                Some(&ip),
            )
            .await
            {
                Ok(v) => self.volumes = Some(v),
                Err(e) => {
                    self.set_waiting_all("ContainerCreating", &e.message);
                    self.warn("FailedMount", &e.message).await;
                    self.setup_retry = Some(Instant::now() + SETUP_RETRY);
                    return;
                }
            }
        } else if self.volume_refreshed.elapsed() >= VOLUME_REFRESH {
            self.volume_refreshed = Instant::now();
            let ip = self.ip.to_string();
            if let Some(v) = self.volumes.as_mut() {
                if let Err(e) = v
                    .refresh(
                        &self.shared.client,
                        &self.shared.sources,
                        &self.pod,
                        &self.dir.join("volumes"),
                        Some(&ip),
                    )
                    .await
                {
                    warn!(pod = %qualified(&self.pod), error = %e, "refreshing volumes");
                }
            }
        }
        let policy = self.restart_policy();
        // Init containers, in order.
        for i in 0..self.containers.len() {
            if !self.containers[i].init {
                continue;
            }
            let c = &self.containers[i];
            if c.sidecar {
                if c.pid.is_none() && self.may_start(i) {
                    self.start(i).await;
                    return;
                }
                if !self.containers[i].started {
                    return;
                }
                continue;
            }
            if c.succeeded() {
                continue;
            }
            if c.running() {
                return;
            }
            let failed_for_good =
                matches!(&c.state, State::Terminated(e) if e.code != 0) && policy == "Never";
            if failed_for_good {
                return;
            }
            if self.may_start(i) {
                self.start(i).await;
            }
            return;
        }
        self.initialized = true;
        for i in 0..self.containers.len() {
            let c = &self.containers[i];
            if c.init || c.pid.is_some() {
                continue;
            }
            let restart = match &c.state {
                State::Waiting { .. } => true,
                State::Running { .. } => false,
                State::Terminated(e) => match policy.as_str() {
                    "Always" => true,
                    "OnFailure" => e.code != 0,
                    _ => false,
                },
            };
            if restart && self.may_start(i) {
                self.start(i).await;
            }
        }
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn may_start(&self, i: usize) -> bool {
        self.containers[i]
            .not_before
            .is_none_or(|t| Instant::now() >= t)
    }

    async fn make_sandbox(&mut self) -> anyhow::Result<()> {
        let cidr = self.shared.cidr;
        network::make_pod(&self.shared.node_netns, &self.netns, self.ip, cidr)?;
        self.apply_services().await;
        std::fs::create_dir_all(self.dir.join("logs"))?;
        Ok(())
    }

    /// The cluster's Service rules and names, in the pod.
    async fn apply_services(&mut self) {
        let views = self.services.borrow_and_update().clone();
        let spec = self.pod.spec.clone().unwrap_or_default();
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
        let hosts = services::hosts_file(
            &views,
            &self.namespace(),
            &name,
            &hostname,
            &[IpAddr::V4(self.ip)],
            crate::control_plane::CLUSTER_DOMAIN,
        );
        if let Err(e) = network::write_etc(&self.netns, &hosts) {
            warn!(pod = %self.name(), error = %format!("{e:#}"), "writing /etc/hosts");
        }
        let netns = self.netns.clone();
        let applied =
            tokio::task::spawn_blocking(move || network::apply_services(&netns, &views)).await;
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(pod = %self.name(), error = %format!("{e:#}"), "service rules"),
            Err(e) => warn!(pod = %self.name(), error = %e, "service rules"),
        }
    }

    fn set_waiting_all(&mut self, reason: &str, message: &str) {
        for c in &mut self.containers {
            if c.pid.is_none() {
                c.state = State::Waiting {
                    reason: reason.into(),
                    message: message.into(),
                };
            }
        }
    }

    /// Starts container `i`: its command, its probes.
    async fn start(&mut self, i: usize) {
        let ns = self.namespace();
        let spec = self.containers[i].spec.clone();
        let (config_maps, secrets) = self.env_sources(&ns, &spec);
        let paths = self
            .volumes
            .as_ref()
            .map(|v| v.paths.clone())
            .unwrap_or_default();
        let ips = [IpAddr::V4(self.ip)];
        let env = PodEnv {
            pod: &self.pod,
            pod_ips: &ips,
            host_ip: IpAddr::V4(self.shared.host_ip),
            node_name: &self.shared.node,
            kubernetes_service: self.kubernetes_service(),
            volumes: &paths,
            config_maps: &config_maps,
            secrets: &secrets,
            allocatable: self.shared.allocatable,
        };
        let mut launch = match launch::launch(&env, &spec, &self.shared.images) {
            Ok(l) => l,
            Err(e) => {
                let (reason, message) = (e.reason().to_string(), e.to_string());
                self.back_off(
                    i,
                    State::Waiting {
                        reason: reason.clone(),
                        message: message.clone(),
                    },
                );
                self.warn(&reason, &format!("container {}: {message}", spec.name))
                    .await;
                return;
            }
        };
        launch.resolve_node_links();
        for (target, is_dir) in launch.mount_targets() {
            if let Err(e) = self.shared.ensure_mountpoint(&target, is_dir) {
                let message = format!("mount point {}: {e:#}", target.display());
                self.back_off(
                    i,
                    State::Waiting {
                        reason: "CreateContainerError".into(),
                        message: message.clone(),
                    },
                );
                self.warn("Failed", &message).await;
                return;
            }
        }
        let log = self.dir.join("logs").join(format!("{}.log", spec.name));
        let spawned = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|out| {
                let mut cmd = launch.command(&self.netns);
                cmd.stdout(out.try_clone()?).stderr(out).process_group(0);
                tokio::process::Command::from(cmd).spawn()
            });
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let message = format!("starting {}: {e}", launch.program.display());
                self.back_off(
                    i,
                    State::Waiting {
                        reason: "RunContainerError".into(),
                        message: message.clone(),
                    },
                );
                self.warn("Failed", &message).await;
                return;
            }
        };
        let pid = child.id().unwrap_or_default();
        let c = &mut self.containers[i];
        c.generation += 1;
        c.pid = Some(pid);
        c.started_at = Some(Instant::now());
        c.state = State::Running {
            since: Timestamp::now(),
        };
        c.stopping = false;
        c.ready = false;
        c.started = false;
        let generation = c.generation;
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            use std::os::unix::process::ExitStatusExt as _;
            let (code, signal) = match status {
                Ok(s) => (s.code(), s.signal()),
                Err(_) => (None, None),
            };
            let _ = tx.send(Event::Exited {
                index: i,
                generation,
                code,
                signal,
            });
        });
        self.start_probes(i);
        let msg = format!("Started container {} (pid {pid})", spec.name);
        self.event("Normal", "Started", &msg).await;
    }

    fn kubernetes_service(&self) -> Option<SocketAddr> {
        self.services
            .borrow()
            .iter()
            .find(|v| v.namespace == "default" && v.name == "kubernetes")
            .and_then(|v| match v.address {
                services::ServiceAddress::ClusterIp(ip) => {
                    Some(SocketAddr::new(IpAddr::V4(ip), v.ports.first()?.port))
                }
                services::ServiceAddress::Headless => None,
            })
    }

    /// The ConfigMaps and Secrets container `c`'s environment names.
    #[allow(clippy::type_complexity)]
    fn env_sources(
        &self,
        ns: &str,
        c: &Container,
    ) -> (
        BTreeMap<String, BTreeMap<String, String>>,
        BTreeMap<String, BTreeMap<String, String>>,
    ) {
        let (mut cm_names, mut secret_names) = (Vec::new(), Vec::new());
        for from in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            cm_names.extend(from.config_map_key_ref.as_ref().map(|r| r.name.clone()));
            secret_names.extend(from.secret_key_ref.as_ref().map(|r| r.name.clone()));
        }
        for from in c.env_from.iter().flatten() {
            cm_names.extend(from.config_map_ref.as_ref().map(|r| r.name.clone()));
            secret_names.extend(from.secret_ref.as_ref().map(|r| r.name.clone()));
        }
        let sources = &self.shared.sources;
        let cms = cm_names
            .into_iter()
            .filter_map(|n| Some((n.clone(), volumes::as_text(sources.config_map(ns, &n)?))))
            .collect();
        let secrets = secret_names
            .into_iter()
            .filter_map(|n| Some((n.clone(), volumes::as_text(sources.secret(ns, &n)?))))
            .collect();
        (cms, secrets)
    }

    fn back_off(&mut self, i: usize, state: State) {
        let c = &mut self.containers[i];
        c.state = state;
        c.wait_to_restart();
    }

    fn start_probes(&mut self, i: usize) {
        let c = &mut self.containers[i];
        c.stop_probes();
        c.probes.clear();
        let kinds = [
            (ProbeKind::Startup, c.spec.startup_probe.clone()),
            (ProbeKind::Readiness, c.spec.readiness_probe.clone()),
            (ProbeKind::Liveness, c.spec.liveness_probe.clone()),
        ];
        let has_startup = c.spec.startup_probe.is_some();
        if !has_startup {
            c.started = true;
        }
        if c.spec.readiness_probe.is_none() {
            c.ready = c.started;
        }
        for (kind, spec) in kinds {
            let Some(spec) = spec else { continue };
            let state = ProbeState::new(kind, &spec);
            let (delay, period) = (state.initial_delay(), state.period());
            c.probes.push((kind, state));
            let tx = self.events_tx.clone();
            let container = c.spec.clone();
            let generation = c.generation;
            let ip = IpAddr::V4(self.ip);
            let netns = self.netns.clone();
            c.probe_tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                loop {
                    let outcome = match probe::action(&spec) {
                        probe::Action::Exec(command) => exec_probe(&netns, command, &spec).await,
                        probe::Action::Network => probe::probe(&spec, ip, &container).await,
                    };
                    if tx
                        .send(Event::Probed {
                            index: i,
                            generation,
                            kind,
                            outcome,
                        })
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(period).await;
                }
            }));
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Exited {
                index,
                generation,
                code,
                signal,
            } => {
                let c = &mut self.containers[index];
                if c.generation != generation {
                    return;
                }
                c.stop_probes();
                let started = match &c.state {
                    State::Running { since } => *since,
                    _ => Timestamp::now(),
                };
                let code = code.unwrap_or(128 + signal.unwrap_or(9));
                let reason = if code == 0 { "Completed" } else { "Error" };
                let ended = Ended {
                    code,
                    signal,
                    reason: reason.into(),
                    started,
                    finished: Timestamp::now(),
                    pid: c.pid.unwrap_or_default(),
                };
                c.pid = None;
                c.ready = false;
                c.started = false;
                if let Some(t) = c.started_at.take() {
                    if t.elapsed() >= RESTART_RESET {
                        c.restart.reset();
                    }
                }
                let stopping = c.stopping;
                let name = c.spec.name.clone();
                c.state = State::Terminated(ended.clone());
                c.last = Some(ended);
                // A crash (or an exit of a sidecar or an always-restarted
                // container) waits out its backoff; a stop we asked for
                // restarts at once (liveness) or not at all (termination).
                let restarting = c.sidecar
                    || (!c.init && self.restart_policy() == "Always")
                    || (code != 0 && self.restart_policy() != "Never");
                let c = &mut self.containers[index];
                if restarting {
                    c.restarts += 1;
                    if !stopping {
                        // As kubelet shows it: waiting, the exit as the
                        // last state.
                        let wait = c.wait_to_restart();
                        c.state = State::Waiting {
                            reason: "CrashLoopBackOff".into(),
                            message: format!(
                                "back-off {wait:?} restarting failed container={name}"
                            ),
                        };
                    }
                }
                if code != 0 && !stopping {
                    let msg = format!("container {name} exited with code {code}");
                    self.warn("BackOff", &msg).await;
                }
            }
            Event::Probed {
                index,
                generation,
                kind,
                outcome,
            } => {
                let c = &mut self.containers[index];
                if c.generation != generation || !c.running() {
                    return;
                }
                // Readiness and liveness wait for the startup probe.
                if kind != ProbeKind::Startup && !c.started {
                    return;
                }
                let ok = matches!(outcome, Outcome::Success);
                let Some((_, state)) = c.probes.iter_mut().find(|(k, _)| *k == kind) else {
                    return;
                };
                let Some(verdict) = state.record(ok) else {
                    return;
                };
                let name = c.spec.name.clone();
                match (kind, verdict) {
                    (ProbeKind::Startup, true) => {
                        c.started = true;
                        if c.spec.readiness_probe.is_none() {
                            c.ready = true;
                        }
                    }
                    (ProbeKind::Readiness, v) => c.ready = v,
                    (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                        let why = match &outcome {
                            Outcome::Failure(m) => m.clone(),
                            Outcome::Success => String::new(),
                        };
                        self.warn(
                            "Unhealthy",
                            &format!("{kind:?} probe failed for {name}: {why}; restarting it"),
                        )
                        .await;
                        self.kill(index, Signal::SIGTERM);
                    }
                    _ => {}
                }
                if let (ProbeKind::Readiness, false) = (kind, verdict) {
                    let why = match &outcome {
                        Outcome::Failure(m) => m.clone(),
                        Outcome::Success => String::new(),
                    };
                    self.warn(
                        "Unhealthy",
                        &format!("Readiness probe failed for {name}: {why}"),
                    )
                    .await;
                }
            }
        }
    }
}

/// An exec probe: the command, run in the pod's network namespace as root
/// with the host's programs (there is no image filesystem to run it in).
async fn exec_probe(
    netns: &str,
    command: &[String],
    spec: &k8s_openapi::api::core::v1::Probe,
) -> Outcome {
    let Some((program, args)) = command.split_first() else {
        return Outcome::Failure("exec probe without a command".into());
    };
    let timeout = probe::timeout(spec);
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", netns, program])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.status()).await {
        Ok(Ok(s)) if s.success() => Outcome::Success,
        Ok(Ok(s)) => Outcome::Failure(format!("command {command:?} exited with {s}")),
        Ok(Err(e)) => Outcome::Failure(format!("command {command:?}: {e}")),
        Err(_) => Outcome::Failure(format!("command {command:?} timed out after {timeout:?}")),
    }
}
