//! The Kubernetes source: one kube-rs watcher per kind (Namespaces, Pods,
//! Services, EndpointSlices, HTTPRoutes, GRPCRoutes,
//! AuthorizationPolicies), applied to the store as a reflector applies
//! them to its cache — the store *is* the cache, so one snapshot spans
//! every kind consistently.
//!
//! Each watch lists, then watches from the list's resource version; a
//! fresh listing (at start, after a failure, or after the watch fell too
//! far behind) replaces the kind's objects at once. The store is synced
//! once every kind has been listed. A failing watch keeps the last state
//! and is retried through [`crate::watches::watch`]: a growing backoff
//! with full jitter (at most 10 s apart), one WARN when it starts failing (naming
//! the resource and the reason: `CRD httproutes.gateway.networking.k8s.io
//! not installed`, `forbidden: RBAC …`), one INFO when it recovers, the
//! state in `trellis_controller_watch_healthy` / `_watch_failing` and at
//! `/ready`, every failed attempt counted in
//! `trellis_controller_watch_errors_total` (and in
//! `trellis_controller_source_errors_total{source="kubernetes"}`).
//!
//! The `policy.trellis.dev` CRD (the chart installs it) must be served:
//! until it is, its watch fails and the controller is not ready. The
//! Gateway API is optional: while the API server does not serve HTTPRoute
//! or GRPCRoute (404: the CRDs are not installed), that kind counts as
//! listed and empty — no routes, which is what a cluster without them
//! means — so proxies are not held back; the watch keeps retrying and
//! picks the routes up within 10 s of the CRDs being installed.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::StreamExt;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::Api;
use trellis_core::backoff::Backoff;
use trellis_core::shutdown::Shutdown;

use super::Source;
use crate::crd::AuthorizationPolicy;
use crate::metrics::Metrics;
use crate::objects::{Kind, Watched};
use crate::store::Store;
use crate::watches::{self, FailureKind};

/// Watches the API server.
pub struct KubernetesSource {
    client: kube::Client,
    /// How each watch waits between failed attempts: [`watches::BACKOFF`]
    /// with full jitter (tests: without).
    retry: Backoff,
}

impl KubernetesSource {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            retry: Backoff::new(watches::BACKOFF),
        }
    }

    /// The client the watches use (shared with the trust roots distributor).
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// A client from the pod's service account (or the kubeconfig).
    pub async fn from_environment() -> Result<Self, kube::Error> {
        Ok(Self::new(kube::Client::try_default().await?))
    }
}

/// Which kinds have been listed; the store is synced when all have.
struct Listed {
    done: Mutex<BTreeSet<Kind>>,
}

impl Listed {
    fn done(&self, kind: Kind, store: &Store) {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        if done.insert(kind) && done.len() == Kind::ALL.len() {
            tracing::info!("every kind listed: synced");
            store.set_synced();
        }
    }
}

impl Source for KubernetesSource {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn run(self, store: Arc<Store>, metrics: Arc<Metrics>, shutdown: Shutdown) {
        let listed = Arc::new(Listed {
            done: Mutex::new(BTreeSet::new()),
        });
        let all = futures_util::future::join_all([
            reflect::<Namespace>(&self, &store, &metrics, &listed).boxed(),
            reflect::<Pod>(&self, &store, &metrics, &listed).boxed(),
            reflect::<Service>(&self, &store, &metrics, &listed).boxed(),
            reflect::<EndpointSlice>(&self, &store, &metrics, &listed).boxed(),
            reflect::<HttpRoute>(&self, &store, &metrics, &listed).boxed(),
            reflect::<GrpcRoute>(&self, &store, &metrics, &listed).boxed(),
            reflect::<AuthorizationPolicy>(&self, &store, &metrics, &listed).boxed(),
        ]);
        tokio::select! {
            () = shutdown.signaled() => {}
            _ = all => tracing::error!("every watch ended"),
        }
    }
}

/// The `watcher` label of the discovery source's watches.
pub const WATCHER: &str = "discovery";

/// Applies the events of one kind's watch to the store, until the watch
/// ends (it does not: failures are retried).
async fn reflect<K: Watched>(
    source: &KubernetesSource,
    store: &Store,
    metrics: &Metrics,
    listed: &Listed,
) {
    let api: Api<K> = Api::all(source.client.clone());
    let handle = metrics.watches().register(WATCHER, K::KIND.resource());
    let events = watches::watch_with(
        api,
        watcher::Config::default(),
        handle,
        source.retry.clone(),
    );
    futures_util::pin_mut!(events);
    let mut listing = Vec::new();
    // An optional kind the API server does not serve: emptied once per
    // episode.
    let mut emptied = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(o)) => listing.push(o.into_object()),
            Ok(Event::InitDone) => {
                tracing::debug!(
                    resource = K::KIND.as_str(),
                    objects = listing.len(),
                    "listed"
                );
                store.replace_kind(K::KIND, std::mem::take(&mut listing));
                listed.done(K::KIND, store);
                emptied = false;
            }
            Ok(Event::Apply(o)) => store.apply(o.into_object()),
            Ok(Event::Delete(o)) => store.delete(K::KIND, &o.into_object().key()),
            Err(failure) => {
                metrics.source_error("kubernetes", K::KIND.as_str());
                if optional(K::KIND) && failure.kind == FailureKind::NotInstalled && !emptied {
                    // No such resource: no routes of it, which is all the
                    // snapshot needs to be complete.
                    emptied = true;
                    store.replace_kind(K::KIND, Vec::new());
                    listed.done(K::KIND, store);
                }
            }
        }
    }
}

/// Kinds a cluster may well not have: the Gateway API's routes.
fn optional(kind: Kind) -> bool {
    matches!(kind, Kind::HttpRoute | Kind::GrpcRoute)
}

#[cfg(test)]
mod tests;
