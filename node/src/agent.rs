//! `trellis mesh kube-agent --name MESH`: the node agent. It registers the
//! Node, schedules unscheduled pods to it, and runs a task per pod bound to
//! it ([`crate::pod`]), fed by a watch of those pods; reflectors of
//! ConfigMaps and Secrets feed volumes and environments, and of Services
//! and EndpointSlices every pod's Service rules and `/etc/hosts`.
//!
//! `up` starts it in the node namespace; `down` stops it (SIGTERM), then
//! stops the pods itself: the agent leaves running pods alone when it
//! exits, as kubelet does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt as _;
use kube::{Client, Config};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::images::ImageMap;
use crate::network::{self, PodCidr};
use crate::node::{self, NodeInfo};
use crate::record::{self, Record};
use crate::services::{self, ServiceView};
use crate::volumes::Sources;

/// How long the Service rules wait for more changes before they are
/// rewritten (a rollout changes many EndpointSlices at once).
const SERVICES_SETTLE: Duration = Duration::from_millis(100);

/// What every pod task shares.
pub struct Shared {
    pub client: Client,
    pub mesh: String,
    pub node: String,
    pub node_netns: String,
    pub host_ip: Ipv4Addr,
    pub cidr: PodCidr,
    pub images: ImageMap,
    pub sources: Sources,
    pub services: watch::Receiver<Arc<Vec<ServiceView>>>,
    pub pods_dir: PathBuf,
    /// What `resourceFieldRef` reads for unset limits.
    pub allocatable: crate::launch::Allocatable,
    addresses: Mutex<BTreeMap<String, Ipv4Addr>>,
    mountpoints: Mutex<()>,
}

impl Shared {
    /// The address of the pod whose namespace is `netns`: the one it has if
    /// the namespace exists, else the first free one.
    pub fn allocate(&self, netns: &str) -> anyhow::Result<Ipv4Addr> {
        let mut taken = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ip) = taken.get(netns) {
            return Ok(*ip);
        }
        let ip = match network::pod_ip(netns) {
            Some(ip) => ip,
            None => {
                let used: BTreeSet<Ipv4Addr> = taken.values().copied().collect();
                self.cidr
                    .free(&used)
                    .with_context(|| format!("the pod CIDR {} is full", self.cidr))?
            }
        };
        taken.insert(netns.to_string(), ip);
        Ok(ip)
    }

    pub fn release(&self, netns: &str) {
        self.addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(netns);
    }

    /// Makes `target` (a directory, or an empty file) if it is missing, and
    /// records what was made so that `down` removes it.
    pub fn ensure_mountpoint(&self, target: &Path, is_dir: bool) -> anyhow::Result<()> {
        let _one_at_a_time = self.mountpoints.lock().unwrap_or_else(|e| e.into_inner());
        if target.exists() {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut p = target.parent();
        while let Some(dir) = p {
            if dir.exists() {
                break;
            }
            missing.push(dir.to_path_buf());
            p = dir.parent();
        }
        for dir in missing.iter().rev() {
            record::note_mountpoint(&self.mesh, dir)?;
            std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        record::note_mountpoint(&self.mesh, target)?;
        if is_dir {
            std::fs::create_dir(target)
        } else {
            std::fs::File::create(target).map(drop)
        }
        .with_context(|| format!("creating {}", target.display()))
    }
}

pub fn run(mesh: &str) -> anyhow::Result<()> {
    trellis_core::telemetry::init_logging(
        &std::env::var("TRELLIS_NODE_LOG").unwrap_or_else(|_| "info".into()),
        trellis_core::telemetry::LogFormat::Plain,
    );
    // Into the node's network namespace, before any other thread exists
    // (threads inherit it): the API server is on its loopback, and probes
    // go from the node's address, as kubelet's do. The mount namespace
    // stays the host's, so pods' namespaces are named where `down` sees them.
    let record = Record::load(mesh)?;
    let netns = std::fs::File::open(trellis_mesh::sys::netns_path(&record.node_netns))
        .with_context(|| format!("the node namespace {}", record.node_netns))?;
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("joining {}", record.node_netns))?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(mesh))
}

async fn serve(mesh: &str) -> anyhow::Result<()> {
    let record = Record::load(mesh)?;
    let kubeconfig = Kubeconfig::read_from(record.node_kubeconfig())?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let cidr: PodCidr = record.pod_cidr.parse().map_err(anyhow::Error::msg)?;
    let info = NodeInfo {
        name: record.node.clone(),
        pod_cidr: record.pod_cidr.clone(),
        address: record.gateway,
    };
    node::register(&client, &info).await?;
    tokio::spawn(node::heartbeat(client.clone(), info.clone()));
    tokio::spawn(node::schedule(client.clone(), info.name.clone()));

    let (config_maps, cm_events) = reflect::<ConfigMap>(&client);
    let (secrets, secret_events) = reflect::<Secret>(&client);
    let (svcs, svc_events) = reflect::<Service>(&client);
    let (slices, slice_events) = reflect::<EndpointSlice>(&client);
    let changed = Arc::new(Notify::new());
    tokio::spawn(drain(cm_events, None));
    tokio::spawn(drain(secret_events, None));
    tokio::spawn(drain(svc_events, Some(changed.clone())));
    tokio::spawn(drain(slice_events, Some(changed.clone())));
    for ready in [
        config_maps.wait_until_ready().await,
        secrets.wait_until_ready().await,
        svcs.wait_until_ready().await,
        slices.wait_until_ready().await,
    ] {
        ready.context("listing ConfigMaps, Secrets, Services and EndpointSlices")?;
    }
    let views = Arc::new(services::collect(&objects(&svcs), &objects(&slices)));
    let (views_tx, views_rx) = watch::channel(views);
    tokio::spawn(publish_services(svcs, slices, changed, views_tx));

    let bin_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .context("the agent's own directory")?;
    let mut images = ImageMap::builtin(&bin_dir);
    if record.images_file().is_file() {
        let text = std::fs::read_to_string(record.images_file())?;
        images
            .extend_from_yaml(&text)
            .with_context(|| record.images_file().display().to_string())?;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let shared = Arc::new(Shared {
        client: client.clone(),
        mesh: mesh.to_string(),
        node: info.name.clone(),
        node_netns: record.node_netns.clone(),
        host_ip: record.gateway,
        cidr,
        images,
        sources: Sources {
            config_maps,
            secrets,
        },
        services: views_rx,
        pods_dir: record.pods_dir(),
        allocatable: crate::launch::Allocatable {
            cpu_millicores: cpus * 1000,
            memory_bytes: node::memory_bytes().unwrap_or(1 << 30),
        },
        addresses: Mutex::new(BTreeMap::new()),
        mountpoints: Mutex::new(()),
    });
    info!(node = %info.name, "running pods bound to this node");
    tokio::select! {
        result = run_pods(shared) => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = terminated() => Ok(()),
    }
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// A watch's objects as they change.
type Changes<K> = std::pin::Pin<Box<dyn Stream<Item = Result<K, watcher::Error>> + Send>>;

/// A reflector of every `K` in the cluster, and its event stream (which
/// must be polled for the store to fill).
fn reflect<K>(client: &Client) -> (Store<K>, Changes<K>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let api: Api<K> = Api::all(client.clone());
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .boxed();
    (reader, stream)
}

async fn drain<K>(mut events: Changes<K>, notify: Option<Arc<Notify>>) {
    while let Some(e) = events.next().await {
        match e {
            Ok(_) => {
                if let Some(n) = &notify {
                    n.notify_one();
                }
            }
            Err(e) => warn!(error = %e, "watch"),
        }
    }
}

fn objects<K>(store: &Store<K>) -> Vec<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store.state().iter().map(|k| (**k).clone()).collect()
}

/// Recomputes the Service views when Services or EndpointSlices change.
async fn publish_services(
    svcs: Store<Service>,
    slices: Store<EndpointSlice>,
    changed: Arc<Notify>,
    tx: watch::Sender<Arc<Vec<ServiceView>>>,
) {
    loop {
        changed.notified().await;
        tokio::time::sleep(SERVICES_SETTLE).await;
        let views = services::collect(&objects(&svcs), &objects(&slices));
        tx.send_if_modified(|current| {
            if **current == views {
                false
            } else {
                *current = Arc::new(views);
                true
            }
        });
    }
}

/// Watches the pods bound to this node and keeps one task per pod.
async fn run_pods(shared: Arc<Shared>) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", shared.node));
    let mut events = watcher::watcher(pods, config).default_backoff().boxed();
    let mut tasks: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut listed: Option<BTreeSet<String>> = None;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "watching this node's pods");
                continue;
            }
        };
        match event {
            watcher::Event::Init => listed = Some(BTreeSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(seen) = listed.as_mut() {
                    seen.insert(uid.clone());
                }
                match tasks.get(&uid) {
                    Some(tx) => {
                        let _ = tx.send(Some(pod));
                    }
                    None => {
                        let (tx, rx) = watch::channel(Some(pod));
                        tokio::spawn(crate::pod::run(shared.clone(), rx));
                        tasks.insert(uid, tx);
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(tx) = tasks.remove(&uid) {
                    let _ = tx.send(None);
                }
            }
            watcher::Event::InitDone => {
                // Pods deleted while the watch was down.
                if let Some(seen) = listed.take() {
                    tasks.retain(|uid, tx| {
                        let keep = seen.contains(uid);
                        if !keep {
                            let _ = tx.send(None);
                        }
                        keep
                    });
                }
            }
        }
        tasks.retain(|_, tx| !tx.is_closed());
    }
    bail!("the watch of this node's pods ended")
}
