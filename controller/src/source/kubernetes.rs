//! The Kubernetes source: one kube-rs watcher per kind (Namespaces, Pods,
//! Services, EndpointSlices, HTTPRoutes, GRPCRoutes,
//! AuthorizationPolicies), applied to the store as a reflector applies
//! them to its cache — the store *is* the cache, so one snapshot spans
//! every kind consistently.
//!
//! Each watch lists, then watches from the list's resource version; a
//! fresh listing (at start, or after the watch fell too far behind)
//! replaces the kind's objects at once. The store is synced once every
//! kind has been listed. A failing watch is logged, counted
//! (`trellis_controller_source_errors_total{source="kubernetes"}`) and
//! retried with kube-rs's default backoff, the last state kept meanwhile.
//! The `policy.trellis.dev` CRD (the chart installs it) must be served:
//! until it is, its watch fails and the controller is not ready. The
//! Gateway API is optional: while the API server does not serve HTTPRoute
//! or GRPCRoute (404: the CRDs are not installed), that kind counts as
//! listed and empty — no routes, which is what a cluster without them
//! means — so proxies are not held back; the watch keeps retrying and
//! picks the routes up once the CRDs are installed.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use trellis_core::shutdown::Shutdown;

use super::Source;
use crate::crd::AuthorizationPolicy;
use crate::metrics::Metrics;
use crate::objects::{Kind, Watched};
use crate::store::Store;

/// Watches the API server.
pub struct KubernetesSource {
    client: kube::Client,
}

impl KubernetesSource {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
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
        let c = &self.client;
        let all = futures_util::future::join_all([
            reflect::<Namespace>(c, &store, &metrics, &listed).boxed(),
            reflect::<Pod>(c, &store, &metrics, &listed).boxed(),
            reflect::<Service>(c, &store, &metrics, &listed).boxed(),
            reflect::<EndpointSlice>(c, &store, &metrics, &listed).boxed(),
            reflect::<HttpRoute>(c, &store, &metrics, &listed).boxed(),
            reflect::<GrpcRoute>(c, &store, &metrics, &listed).boxed(),
            reflect::<AuthorizationPolicy>(c, &store, &metrics, &listed).boxed(),
        ]);
        tokio::select! {
            () = shutdown.signaled() => {}
            _ = all => tracing::error!("every watch ended"),
        }
    }
}

use futures_util::FutureExt;

/// Applies the events of one kind's watch to the store, until the watch
/// ends (it does not: errors are retried).
async fn reflect<K: Watched>(
    client: &kube::Client,
    store: &Store,
    metrics: &Metrics,
    listed: &Listed,
) {
    let api: Api<K> = Api::all(client.clone());
    let events = watcher(api, watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(events);
    let mut listing = Vec::new();
    let mut not_served = false;
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
            }
            Ok(Event::Apply(o)) => store.apply(o.into_object()),
            Ok(Event::Delete(o)) => store.delete(K::KIND, &o.into_object().key()),
            Err(e) if optional(K::KIND) && is_not_served(&e) => {
                if !not_served {
                    not_served = true;
                    tracing::warn!(
                        resource = K::KIND.as_str(),
                        "the API server does not serve this kind (are the Gateway API CRDs installed?): no routes of it until it does"
                    );
                    metrics.source_error("kubernetes", K::KIND.as_str());
                    store.replace_kind(K::KIND, Vec::new());
                    listed.done(K::KIND, store);
                }
            }
            Err(e) => {
                tracing::warn!(resource = K::KIND.as_str(), error = %e, "watch failed; retrying with backoff, keeping the last state");
                metrics.source_error("kubernetes", K::KIND.as_str());
            }
        }
    }
}

/// Kinds a cluster may well not have: the Gateway API's routes.
fn optional(kind: Kind) -> bool {
    matches!(kind, Kind::HttpRoute | Kind::GrpcRoute)
}

/// A LIST refused with 404: the API server does not serve the resource.
fn is_not_served(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404)
}

#[cfg(test)]
mod tests;
