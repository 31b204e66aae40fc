//! The Kubernetes source: a real kube-apiserver (the e2e harness's), the
//! objects created with many parallel requests, and each change written
//! as the API writes a controller or kubelet would make. A change's time
//! zero is the moment its measured write is sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::Client;
use serde_json::{json, Value};

use crate::churn::{self, Change, Tally, Writes};
use crate::cluster::{Cluster, PODS_PER_SERVICE};
use crate::load::Load;

/// Requests in flight while creating the cluster.
const PARALLEL: usize = 64;

pub const AUTHZ_CRD: &str =
    include_str!("../../../charts/trellis/crds/authorizationpolicies.policy.trellis.dev.yaml");

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// The API of an object's kind, from its `apiVersion` and `kind`.
fn api_for(client: &Client, v: &Value) -> anyhow::Result<Api<DynamicObject>> {
    let kind = v["kind"].as_str().unwrap_or_default();
    let ns = v["metadata"]["namespace"].as_str();
    let r = match kind {
        "Namespace" => {
            return Ok(Api::all_with(
                client.clone(),
                &resource("", "v1", kind, "namespaces"),
            ))
        }
        "Service" => resource("", "v1", kind, "services"),
        "Pod" => resource("", "v1", kind, "pods"),
        "EndpointSlice" => resource("discovery.k8s.io", "v1", kind, "endpointslices"),
        "HTTPRoute" => resource("gateway.networking.k8s.io", "v1", kind, "httproutes"),
        "GRPCRoute" => resource("gateway.networking.k8s.io", "v1", kind, "grpcroutes"),
        "AuthorizationPolicy" => resource(
            "policy.trellis.dev",
            "v1alpha1",
            kind,
            "authorizationpolicies",
        ),
        other => anyhow::bail!("no API for kind {other}"),
    };
    Ok(Api::namespaced_with(
        client.clone(),
        ns.unwrap_or("default"),
        &r,
    ))
}

fn ns_api(client: &Client, kind: &str, ns: &str) -> Api<DynamicObject> {
    let r = match kind {
        "Pod" => resource("", "v1", kind, "pods"),
        "EndpointSlice" => resource("discovery.k8s.io", "v1", kind, "endpointslices"),
        "HTTPRoute" => resource("gateway.networking.k8s.io", "v1", kind, "httproutes"),
        _ => resource(
            "policy.trellis.dev",
            "v1alpha1",
            "AuthorizationPolicy",
            "authorizationpolicies",
        ),
    };
    Api::namespaced_with(client.clone(), ns, &r)
}

/// Creates `v` (retrying a refusal for a while: a new namespace's
/// ServiceAccount, a busy API server); an object that exists is fine.
async fn create(client: &Client, v: &Value, status: Option<&Value>) -> anyhow::Result<()> {
    let api = api_for(client, v)?;
    let obj: DynamicObject = serde_json::from_value(v.clone())?;
    let mut last = None;
    for _ in 0..40 {
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {
                last = None;
                break;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                last = None;
                break;
            }
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    if let Some(e) = last {
        anyhow::bail!("creating {} {}: {e}", v["kind"], v["metadata"]["name"]);
    }
    if let Some(status) = status {
        let name = v["metadata"]["name"].as_str().unwrap_or_default();
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    }
    Ok(())
}

/// Creates `objects` (with a status to write after each, for pods),
/// `PARALLEL` at a time, printing progress; returns objects per second.
async fn create_all(
    client: &Client,
    what: &str,
    objects: Vec<(Value, Option<Value>)>,
) -> anyhow::Result<f64> {
    let total = objects.len();
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let progress = {
        let done = done.clone();
        let what = what.to_string();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let n = done.load(Ordering::Relaxed);
                eprintln!(
                    "[kube] {what}: {n}/{total} in {:.0} s ({:.0}/s)",
                    started.elapsed().as_secs_f64(),
                    n as f64 / started.elapsed().as_secs_f64()
                );
            }
        })
    };
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(objects)
        .map(|(v, status)| {
            let done = done.clone();
            async move {
                let r = create(client, &v, status.as_ref()).await;
                done.fetch_add(1, Ordering::Relaxed);
                r
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    progress.abort();
    results.into_iter().collect::<anyhow::Result<()>>()?;
    let rate = total as f64 / started.elapsed().as_secs_f64().max(1e-3);
    eprintln!(
        "[kube] {what}: {total} in {:.1} s ({rate:.0}/s)",
        started.elapsed().as_secs_f64()
    );
    Ok(rate)
}

pub async fn client(kubeconfig: &std::path::Path) -> anyhow::Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(Client::try_from(config)?)
}

/// How long populating the API server took.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Populated {
    pub seconds: f64,
    pub pods_per_sec: f64,
}

/// Creates every object of the cluster.
pub async fn populate(client: &Client, c: &Cluster) -> anyhow::Result<Populated> {
    let started = Instant::now();
    let none = |v: Value| (v, None);
    create_all(
        client,
        "namespaces",
        c.namespaces().into_iter().map(none).collect(),
    )
    .await?;
    let mut small = Vec::new();
    for s in &c.services {
        small.push(none(c.service(s)));
        small.push(none(c.slice(s)));
        small.extend(c.route(s).map(none));
        small.extend(c.policy(s).map(none));
    }
    create_all(client, "services, slices, routes, policies", small).await?;
    let pods = c
        .services
        .iter()
        .flat_map(|s| {
            (0..PODS_PER_SERVICE).map(move |slot| (c.pod(s, slot), Some(c.pod_status(s, slot))))
        })
        .collect();
    let pods_per_sec = create_all(client, "pods (create + status)", pods).await?;
    Ok(Populated {
        seconds: started.elapsed().as_secs_f64(),
        pods_per_sec,
    })
}

/// Replaces the endpoints of EndpointSlice `namespace/slice`.
async fn patch_slice(
    client: &Client,
    namespace: &str,
    slice: &str,
    endpoints: &Value,
) -> anyhow::Result<()> {
    patch(
        client,
        "EndpointSlice",
        namespace,
        slice,
        json!({"endpoints": endpoints}),
    )
    .await
}

/// Makes `change` in the API server, then waits for its streams.
pub async fn apply(client: Client, change: Change, load: Arc<Load>, tally: Arc<Tally>) {
    let measured = async {
        let t0 = match &change.writes {
            Writes::Rolling {
                namespace,
                pods,
                slice,
                endpoints,
                ..
            } => {
                let creates = pods
                    .iter()
                    .map(|(pod, status)| create(&client, pod, Some(status)));
                for r in futures_util::future::join_all(creates).await {
                    r?;
                }
                let t0 = Instant::now();
                patch_slice(&client, namespace, slice, endpoints).await?;
                t0
            }
            Writes::Slice {
                namespace,
                slice,
                endpoints,
            } => {
                let t0 = Instant::now();
                patch_slice(&client, namespace, slice, endpoints).await?;
                t0
            }
            Writes::HttpRoute {
                namespace,
                name,
                spec,
            } => {
                let t0 = Instant::now();
                patch(&client, "HTTPRoute", namespace, name, json!({"spec": spec})).await?;
                t0
            }
            Writes::Policy {
                namespace,
                name,
                spec,
            } => {
                let t0 = Instant::now();
                patch(
                    &client,
                    "AuthorizationPolicy",
                    namespace,
                    name,
                    json!({"spec": spec}),
                )
                .await?;
                t0
            }
        };
        anyhow::Ok(t0)
    };
    match measured.await {
        Ok(t0) => {
            if let Writes::Rolling {
                namespace, delete, ..
            } = &change.writes
            {
                let api = ns_api(&client, "Pod", namespace);
                let dp = DeleteParams::default();
                let deletes = delete.iter().map(|name| api.delete(name, &dp));
                for r in futures_util::future::join_all(deletes).await {
                    if let Err(e) = r {
                        eprintln!("[kube] deleting an old pod: {e}");
                    }
                }
            }
            churn::await_change(change, t0, load, tally).await;
        }
        Err(e) => {
            eprintln!("[kube] a {:?} change failed: {e}", change.kind);
            tally
                .busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&change.service);
            tally.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

async fn patch(
    client: &Client,
    kind: &str,
    ns: &str,
    name: &str,
    body: Value,
) -> anyhow::Result<()> {
    ns_api(client, kind, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(body))
        .await?;
    Ok(())
}
