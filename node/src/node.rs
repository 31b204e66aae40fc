//! The Node: registered with its pod CIDR and address, kept Ready by a
//! Lease renewed every [`LEASE_RENEW`] (kube-controller-manager's node
//! lifecycle controller reads it) and a status heartbeat; and the
//! scheduler's one job in a one-node cluster, binding every unscheduled pod
//! to it.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt as _;
use kube::Client;
use serde_json::json;
use tracing::{info, warn};

/// How often the Lease is renewed, and for how long it holds.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;
/// How often the Ready condition's heartbeat is written.
const STATUS_EVERY: Duration = Duration::from_secs(60);
/// The version the Node reports for its "kubelet".
pub const AGENT_VERSION: &str = concat!("trellis-node/", env!("CARGO_PKG_VERSION"));
/// Pods a node takes (kubelet's default).
const MAX_PODS: u32 = 110;
/// The field manager of every write.
pub const MANAGER: &str = "trellis-node";

#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    pub pod_cidr: String,
    pub address: Ipv4Addr,
}

/// Creates or updates the Node, then writes its status.
pub async fn register(client: &Client, info: &NodeInfo) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let spec = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": info.name,
            "labels": {
                "kubernetes.io/hostname": info.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                "node.trellis.dev/agent": "trellis-node",
            },
        },
        "spec": { "podCIDR": info.pod_cidr, "podCIDRs": [info.pod_cidr] },
    });
    nodes
        .patch(
            &info.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&spec),
        )
        .await
        .with_context(|| format!("registering node {}", info.name))?;
    write_status(client, info).await?;
    info!(node = %info.name, cidr = %info.pod_cidr, "node registered");
    Ok(())
}

/// The Node's status: Ready, its address, capacity, and what it runs.
async fn write_status(client: &Client, info: &NodeInfo) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = Timestamp::now().to_string();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = memory_bytes().unwrap_or(1 << 30);
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        })
    };
    let capacity = json!({ "cpu": cpus.to_string(), "memory": memory.to_string(), "pods": MAX_PODS.to_string() });
    let status = json!({
        "status": {
            "conditions": [
                condition("MemoryPressure", "False", "AgentHasSufficientMemory", "not measured by trellis-node"),
                condition("DiskPressure", "False", "AgentHasNoDiskPressure", "not measured by trellis-node"),
                condition("PIDPressure", "False", "AgentHasSufficientPID", "not measured by trellis-node"),
                condition("Ready", "True", "AgentReady", "trellis-node is posting ready status"),
            ],
            "addresses": [
                { "type": "InternalIP", "address": info.address.to_string() },
                { "type": "Hostname", "address": info.name },
            ],
            "capacity": capacity,
            "allocatable": capacity,
            "daemonEndpoints": { "kubeletEndpoint": { "Port": 0 } },
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": kernel_version(),
                "osImage": "trellis local mesh",
                "containerRuntimeVersion": "trellis://processes",
                "kubeletVersion": AGENT_VERSION,
                "kubeProxyVersion": AGENT_VERSION,
                "operatingSystem": "linux",
                "architecture": std::env::consts::ARCH,
            },
        }
    });
    nodes
        .patch_status(&info.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("writing the status of node {}", info.name))?;
    Ok(())
}

/// Renews the Lease and the status heartbeat, for as long as the agent runs.
pub async fn heartbeat(client: Client, info: NodeInfo) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut ticks = tokio::time::interval(LEASE_RENEW);
    let mut last_status = tokio::time::Instant::now();
    loop {
        ticks.tick().await;
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(info.name.clone()),
                namespace: Some("kube-node-lease".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(info.name.clone()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..LeaseSpec::default()
            }),
        };
        if let Err(e) = leases
            .patch(
                &info.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await
        {
            warn!(error = %e, "renewing the node's lease");
        }
        if last_status.elapsed() >= STATUS_EVERY {
            last_status = tokio::time::Instant::now();
            if let Err(e) = write_status(&client, &info).await {
                warn!(error = %format!("{e:#}"), "writing the node's status");
            }
        }
    }
}

/// Binds every pod that has no node (and asks for the default scheduler)
/// to this node, for as long as the agent runs.
pub async fn schedule(client: Client, node: String) {
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields("spec.nodeName=");
    let mut events = watcher::watcher(pods, config).applied_objects().boxed();
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(pod) => pod,
            Err(e) => {
                warn!(error = %e, "watching unscheduled pods");
                continue;
            }
        };
        let scheduler = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler");
        if scheduler != "default-scheduler" || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Err(e) = bind(&client, &pod, &node).await {
            warn!(pod = %qualified(&pod), error = %format!("{e:#}"), "binding");
        }
    }
}

async fn bind(client: &Client, pod: &Pod, node: &str) -> anyhow::Result<()> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.into()),
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            ..ObjectReference::default()
        },
    };
    // The answer is a Status, not the Binding.
    let bound: Result<serde_json::Value, _> = pods
        .create_subresource("binding", name, &PostParams::default(), &binding)
        .await;
    match bound {
        Ok(_) => {
            info!(pod = %qualified(pod), node, "bound");
            Ok(())
        }
        // Bound already, or gone: nothing to do.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn qualified(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The host's memory, from `/proc/meminfo`.
pub(crate) fn memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
