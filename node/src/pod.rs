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

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Event as KubeEvent, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use trellis_core::backoff::{Backoff, Exponential};
use trellis_mesh::sys;

use crate::agent::Shared;
use crate::launch::{self, PodEnv};
use crate::network;
use crate::node::qualified;
use crate::probe::{self, Kind as ProbeKind, Outcome, ProbeState};
use crate::services::{self, ServiceView};
use crate::volumes::{self, Volumes};

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

#[derive(Clone, Debug)]
enum State {
    Waiting { reason: String, message: String },
    Running { since: Timestamp },
    Terminated(Ended),
}

#[derive(Clone, Debug)]
struct Ended {
    code: i32,
    signal: Option<i32>,
    reason: String,
    started: Timestamp,
    finished: Timestamp,
    pid: u32,
}

struct Ctr {
    spec: Container,
    init: bool,
    sidecar: bool,
    state: State,
    last: Option<Ended>,
    pid: Option<u32>,
    started_at: Option<Instant>,
    generation: u64,
    restarts: i32,
    /// The startup probe passed (or there is none) since the last start.
    started: bool,
    ready: bool,
    probes: Vec<(ProbeKind, ProbeState)>,
    probe_tasks: Vec<tokio::task::JoinHandle<()>>,
    restart: Backoff,
    not_before: Option<Instant>,
    /// Asked to stop (liveness, termination): its exit is not a crash.
    stopping: bool,
}

impl Ctr {
    fn new(spec: Container, init: bool) -> Ctr {
        let sidecar = init && spec.restart_policy.as_deref() == Some("Always");
        Ctr {
            spec,
            init,
            sidecar,
            state: State::Waiting {
                reason: "PodInitializing".into(),
                message: String::new(),
            },
            last: None,
            pid: None,
            started_at: None,
            generation: 0,
            restarts: 0,
            started: false,
            ready: false,
            probes: Vec::new(),
            probe_tasks: Vec::new(),
            restart: Backoff::without_jitter(RESTART),
            not_before: None,
            stopping: false,
        }
    }

    /// Holds the next start back by the restart backoff's next wait,
    /// counting it; the wait.
    fn wait_to_restart(&mut self) -> Duration {
        let wait = self.restart.next_wait();
        self.not_before = Some(Instant::now() + wait);
        wait
    }

    fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    fn succeeded(&self) -> bool {
        matches!(&self.state, State::Terminated(e) if e.code == 0)
    }

    fn stop_probes(&mut self) {
        for t in self.probe_tasks.drain(..) {
            t.abort();
        }
    }
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

    /// Signals container `i`'s process group (it leads one): the signal
    /// reaches the container's processes once each.
    fn kill(&mut self, i: usize, sig: Signal) {
        let c = &mut self.containers[i];
        if let Some(pid) = c.pid {
            c.stopping = true;
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
            }
        }
    }

    /// Stops the containers: the regular ones first, then the sidecars in
    /// reverse order, within `grace`; what ignores SIGTERM gets SIGKILL
    /// when its time is up. As kubelet, a sidecar gets at least
    /// [`MIN_GRACE`] even when the containers used up the pod's grace.
    async fn terminate(&mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        for c in &mut self.containers {
            c.stop_probes();
            c.ready = false;
            c.not_before = Some(Instant::now() + Duration::from_secs(3600));
        }
        self.report().await;
        // Regular init containers still running stop with the containers.
        let first: Vec<usize> = (0..self.containers.len())
            .filter(|i| !self.containers[*i].sidecar)
            .collect();
        self.stop_group(&first, deadline).await;
        let sidecars: Vec<usize> = (0..self.containers.len())
            .rev()
            .filter(|i| self.containers[*i].sidecar)
            .collect();
        for i in sidecars {
            let at_least = tokio::time::Instant::now() + MIN_GRACE;
            self.stop_group(&[i], deadline.max(at_least)).await;
        }
        // Anything else still in the namespace (a container's children).
        for pid in sys::pids_in_netns(&self.netns) {
            sys::signal(pid, Signal::SIGKILL);
        }
        self.report().await;
    }

    /// SIGTERM to each of `which`, SIGKILL to those still running at
    /// `deadline`, and their exits waited for.
    async fn stop_group(&mut self, which: &[usize], deadline: tokio::time::Instant) {
        for &i in which {
            self.kill(i, Signal::SIGTERM);
        }
        self.wait_exits(which, deadline).await;
        for &i in which {
            self.kill(i, Signal::SIGKILL);
        }
        self.wait_exits(which, tokio::time::Instant::now() + Duration::from_secs(5))
            .await;
    }

    async fn wait_exits(&mut self, which: &[usize], deadline: tokio::time::Instant) {
        while which.iter().any(|i| self.containers[*i].pid.is_some()) {
            match tokio::time::timeout_at(deadline, self.events_rx.recv()).await {
                Ok(Some(e @ Event::Exited { .. })) => self.handle(e).await,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Removes the pod's namespace, volumes and address, and deletes the
    /// pod object for good (if it still exists).
    async fn finish(&mut self) {
        for c in &mut self.containers {
            c.stop_probes();
        }
        if self.containers.iter().any(|c| c.pid.is_some()) {
            // The agent is stopping, not the pod: leave it running.
            return;
        }
        let netns = self.netns.clone();
        let removed = tokio::task::spawn_blocking(move || network::remove_pod(&netns)).await;
        if let Ok(Err(e)) | Err(e) = removed.map_err(anyhow::Error::from) {
            warn!(pod = %self.name(), error = %format!("{e:#}"), "removing the pod's network");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(pod = %self.name(), error = %e, "removing the pod's files");
            }
        }
        self.shared.release(&self.netns);
        let pods: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.namespace());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        match pods.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => warn!(pod = %self.name(), error = %e, "deleting the pod object"),
        }
    }

    /// Writes the pod's status if it changed.
    async fn report(&mut self) {
        let status = self.status();
        if status == self.last_status {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.namespace());
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let patch = json!({ "status": status });
        match pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.last_status = status,
            Err(kube::Error::Api(e)) if e.code == 404 => self.last_status = status,
            Err(e) => warn!(pod = %self.name(), error = %e, "writing the pod's status"),
        }
    }

    fn status(&mut self) -> Value {
        let image = |c: &Ctr| c.spec.image.clone().unwrap_or_default();
        let statuses = |init: bool, this: &Worker| -> Vec<Value> {
            this.containers
                .iter()
                .filter(|c| c.init == init)
                .map(|c| {
                    let mut s = json!({
                        "name": c.spec.name,
                        "image": image(c),
                        "imageID": image(c),
                        "ready": c.ready,
                        "started": c.running() && c.started,
                        "restartCount": c.restarts,
                        "state": state_json(&c.state),
                        "lastState": c.last.as_ref().filter(|_| !matches!(c.state, State::Terminated(_))).map(|e| json!({ "terminated": ended_json(e) })).unwrap_or_else(|| json!({})),
                    });
                    if let Some(pid) = c.pid.or(c.last.as_ref().map(|e| e.pid)) {
                        s["containerID"] = json!(format!("trellis://{pid}"));
                    }
                    s
                })
                .collect()
        };
        let init_statuses = statuses(true, self);
        let container_statuses = statuses(false, self);
        let phase = phase(&self.containers, &self.restart_policy(), self.initialized);
        let containers_ready = containers_ready(&self.containers);
        let gates_ok = self.readiness_gates_pass();
        let conditions = [
            ("PodReadyToStartContainers", self.sandbox_ready),
            ("Initialized", self.initialized),
            ("ContainersReady", containers_ready),
            ("Ready", containers_ready && gates_ok),
            ("PodScheduled", true),
        ];
        let now = Timestamp::now();
        let mut conds = Vec::new();
        for (kind, ok) in conditions {
            let entry = self.transitions.entry(kind).or_insert((ok, now));
            if entry.0 != ok {
                *entry = (ok, now);
            }
            conds.push(json!({
                "type": kind,
                "status": if ok { "True" } else { "False" },
                "lastTransitionTime": Time(entry.1),
                "lastProbeTime": null,
            }));
        }
        let ip = self.ip.to_string();
        let host = self.shared.host_ip.to_string();
        json!({
            "phase": phase,
            "conditions": conds,
            "hostIP": host,
            "hostIPs": [{ "ip": host }],
            "podIP": ip,
            "podIPs": [{ "ip": ip }],
            "startTime": Time(self.start_time),
            "initContainerStatuses": init_statuses,
            "containerStatuses": container_statuses,
        })
    }

    fn readiness_gates_pass(&self) -> bool {
        let spec = self.pod.spec.as_ref();
        let gates = spec.and_then(|s| s.readiness_gates.as_ref());
        let conditions = self.pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        gates.into_iter().flatten().all(|g| {
            conditions
                .into_iter()
                .flatten()
                .any(|c| c.type_ == g.condition_type && c.status == "True")
        })
    }

    /// A warning in the agent's log and as an Event; the same warning
    /// again within [`WARN_AGAIN`] is left out.
    async fn warn(&self, reason: &str, message: &str) {
        let key = format!("{reason}\n{message}");
        {
            let mut said = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            if said.get(&key).is_some_and(|t| t.elapsed() < WARN_AGAIN) {
                return;
            }
            said.insert(key, Instant::now());
        }
        warn!(pod = %self.name(), reason, "{message}");
        self.event("Warning", reason, message).await;
    }

    /// An Event about the pod, as kubectl describe shows them.
    async fn event(&self, kind: &str, reason: &str, message: &str) {
        let ns = self.namespace();
        let events: Api<KubeEvent> = Api::namespaced(self.shared.client.clone(), &ns);
        let now = Time(Timestamp::now());
        let e = KubeEvent {
            metadata: ObjectMeta {
                generate_name: Some(format!(
                    "{}.",
                    self.pod.metadata.name.clone().unwrap_or_default()
                )),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: self.pod.metadata.name.clone(),
                namespace: Some(ns),
                uid: Some(self.uid.clone()),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(kind.into()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some("trellis-node".into()),
                host: Some(self.shared.node.clone()),
            }),
            reporting_component: Some("trellis-node".into()),
            reporting_instance: Some(self.shared.node.clone()),
            ..KubeEvent::default()
        };
        if let Err(err) = events.create(&PostParams::default(), &e).await {
            warn!(pod = %self.name(), error = %err, "recording an event");
        }
    }
}

/// The pod's phase, as kubelet decides it from its containers.
fn phase(containers: &[Ctr], policy: &str, initialized: bool) -> &'static str {
    let regular: Vec<&Ctr> = containers.iter().filter(|c| !c.init).collect();
    // A container that exited for good: it is not restarted.
    let all_done = regular.iter().all(|c| match &c.state {
        State::Terminated(e) => policy == "Never" || (policy == "OnFailure" && e.code == 0),
        _ => false,
    });
    let init_failed = containers.iter().any(|c| {
        c.init
            && !c.sidecar
            && policy == "Never"
            && matches!(&c.state, State::Terminated(e) if e.code != 0)
    });
    if init_failed {
        "Failed"
    } else if all_done && !regular.is_empty() {
        if regular.iter().all(|c| c.succeeded()) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if initialized && regular.iter().any(|c| c.running() || c.last.is_some()) {
        "Running"
    } else {
        "Pending"
    }
}

/// Every container ready, and every native sidecar.
fn containers_ready(containers: &[Ctr]) -> bool {
    let regular: Vec<&Ctr> = containers.iter().filter(|c| !c.init).collect();
    !regular.is_empty()
        && regular.iter().all(|c| c.ready)
        && containers.iter().filter(|c| c.sidecar).all(|c| c.ready)
}

fn state_json(s: &State) -> Value {
    match s {
        State::Waiting { reason, message } => {
            json!({ "waiting": { "reason": reason, "message": message } })
        }
        State::Running { since } => json!({ "running": { "startedAt": Time(*since) } }),
        State::Terminated(e) => json!({ "terminated": ended_json(e) }),
    }
}

fn ended_json(e: &Ended) -> Value {
    let mut v = json!({
        "exitCode": e.code,
        "reason": e.reason,
        "startedAt": Time(e.started),
        "finishedAt": Time(e.finished),
        "containerID": format!("trellis://{}", e.pid),
    });
    if let Some(sig) = e.signal {
        v["signal"] = json!(sig);
    }
    v
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(name: &str, init: bool, sidecar: bool) -> Ctr {
        let spec = Container {
            name: name.into(),
            restart_policy: sidecar.then(|| "Always".to_string()),
            ..Container::default()
        };
        Ctr::new(spec, init)
    }

    fn ended(code: i32) -> State {
        State::Terminated(Ended {
            code,
            signal: None,
            reason: String::new(),
            started: Timestamp::UNIX_EPOCH,
            finished: Timestamp::UNIX_EPOCH,
            pid: 1,
        })
    }

    fn running() -> State {
        State::Running {
            since: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn phases_follow_the_containers_and_the_restart_policy() {
        let with = |init: State, main: State| {
            let mut i = ctr("init", true, false);
            i.state = init;
            let mut m = ctr("main", false, false);
            m.state = main;
            vec![i, m]
        };
        let waiting = || State::Waiting {
            reason: "PodInitializing".into(),
            message: String::new(),
        };
        let cases = [
            // (init, main, policy, initialized) → phase
            (waiting(), waiting(), "Always", false, "Pending"),
            (running(), waiting(), "Always", false, "Pending"),
            (ended(0), running(), "Always", true, "Running"),
            (ended(0), ended(0), "Never", true, "Succeeded"),
            (ended(0), ended(2), "Never", true, "Failed"),
            (ended(0), ended(0), "OnFailure", true, "Succeeded"),
            // Restarted (in backoff, it waits): not done.
            (ended(0), waiting(), "OnFailure", true, "Pending"),
            (ended(1), waiting(), "Never", false, "Failed"),
            (ended(1), waiting(), "Always", false, "Pending"),
        ];
        for (init, main, policy, initialized, want) in cases {
            let cs = with(init.clone(), main.clone());
            assert_eq!(
                phase(&cs, policy, initialized),
                want,
                "{init:?} / {main:?} / {policy}"
            );
        }
    }

    #[test]
    fn a_pod_is_ready_when_its_containers_and_sidecars_are() {
        let mut sidecar = ctr("proxy", true, true);
        let mut main = ctr("app", false, false);
        let plain_init = ctr("init", true, false);
        main.ready = true;
        assert!(!containers_ready(&[
            plain_init.clone_state(),
            sidecar.clone_state(),
            main.clone_state()
        ]));
        sidecar.ready = true;
        assert!(containers_ready(&[
            plain_init.clone_state(),
            sidecar.clone_state(),
            main.clone_state()
        ]));
        main.ready = false;
        assert!(!containers_ready(&[
            sidecar.clone_state(),
            main.clone_state()
        ]));
        assert!(!containers_ready(&[sidecar]), "no container: not ready");
    }

    impl Ctr {
        fn clone_state(&self) -> Ctr {
            let mut c = Ctr::new(self.spec.clone(), self.init);
            c.state = self.state.clone();
            c.ready = self.ready;
            c
        }
    }
}
