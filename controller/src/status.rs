//! The route status writer (Kubernetes source only): keeps each
//! HTTPRoute's and GRPCRoute's `status.parents` entries for its Service
//! parents (`controllerName: trellis.dev/controller`) saying whether the
//! route took and why not — `kubectl get httproute NAME -o yaml`.
//!
//! ```text
//!  store snapshots ──► plan::plan (pure: entries from the ──► one guarded write per route
//!  (synced only)        compiled route's verdict; only         JSON merge patch of /status with
//!                       routes whose entries differ)           metadata.resourceVersion
//! ```
//!
//! - What the entries say, and why the same facts always give the same
//!   entries: [`plan`].
//! - Only Trellis's entries change: the patch carries the whole list
//!   (`status.parents` is an atomic list, so server-side apply could not
//!   share it with another controller), other controllers' entries as the
//!   watch showed them, guarded by the route's `resourceVersion`: a route
//!   changed meanwhile gets a 409 and is planned again from its next
//!   version, so nobody's entry is lost.
//! - No write loop: a write changes the route, the watch brings the new
//!   version, and the plan from it finds nothing to do (the
//!   `lastTransitionTime`s it wrote are kept). While the watch has not yet
//!   shown a route written to (at most [`AWAIT_WATCH`]), it is not planned
//!   again; and a route whose entries are written [`LOOP_WRITES`] times
//!   within [`LOOP_WINDOW`] is left alone for the rest of it, with an
//!   error logged — a guard that should never fire.
//! - Several replicas (the HA profile): no leader election; each writes
//!   the same entries from the same facts, and the resourceVersion guard
//!   makes the losers of a race get a 409, after which they find the
//!   winner's entries identical to theirs and write nothing.
//! - A failed write is counted
//!   (`trellis_controller_route_status_writes_total{result="failed"}`),
//!   logged once per change of reason, and retried after a `RETRY`
//!   backoff.
//!
//! RBAC (the chart's ClusterRole): `patch` on `httproutes/status` and
//! `grpcroutes/status` in `gateway.networking.k8s.io`; nothing else.

mod plan;

pub use plan::CONTROLLER_NAME;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use tokio::time::Instant;
use trellis_core::backoff::{Backoff, Exponential};
use trellis_core::shutdown::Shutdown;

use crate::metrics::{Metrics, StatusWrite};
use crate::objects::{Key, Kind};
use crate::store::Store;
use plan::Write;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "trellis-controller";
/// How long a route written to waits for the watch to show the write
/// before it is planned again.
pub const AWAIT_WATCH: Duration = Duration::from_secs(30);
/// At most this many writes of one route within [`LOOP_WINDOW`].
pub const LOOP_WRITES: usize = 5;
pub const LOOP_WINDOW: Duration = Duration::from_secs(60);
/// The longest one write may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The wait before failed writes are tried again: at most 1 s at first,
/// doubling, at most 60 s; full jitter ([`trellis_core::backoff`]).
const RETRY: Exponential = Exponential::new(Duration::from_secs(1), Duration::from_secs(60));

/// Writes route status; see the module's documentation.
pub struct StatusWriter {
    client: kube::Client,
    metrics: Arc<Metrics>,
    retry: Backoff,
}

type RouteId = (Kind, Key);

/// What the loop remembers between passes.
#[derive(Default)]
struct LoopState {
    /// Routes written (or refused with 409): the version written against,
    /// and when. Not planned while the store shows that version.
    awaiting: BTreeMap<RouteId, (String, Instant)>,
    /// Recent writes of each route (the loop guard), and the routes it
    /// holds back now (logged once).
    recent: BTreeMap<RouteId, VecDeque<Instant>>,
    held: BTreeSet<RouteId>,
    /// The reason of the last failure, logged once.
    failing: Option<String>,
    retry_at: Option<Instant>,
}

impl StatusWriter {
    pub fn new(client: kube::Client, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            metrics,
            retry: Backoff::new(RETRY),
        }
    }

    /// Follows the store's snapshots and writes until `shutdown`.
    pub async fn run(mut self, store: Arc<Store>, shutdown: Shutdown) {
        let mut snapshots = store.subscribe();
        // The snapshot published before this task began counts too.
        snapshots.mark_changed();
        let mut state = LoopState::default();
        loop {
            tokio::select! {
                () = shutdown.signaled() => return,
                changed = snapshots.changed() => if changed.is_err() { return },
                () = sleep_until(state.retry_at), if state.retry_at.is_some() => {}
            }
            state.retry_at = None;
            let snap = snapshots.borrow_and_update().clone();
            if !snap.synced {
                // Conditions from a partial state would be wrong (a
                // Service not yet listed is not missing).
                continue;
            }
            let writes = plan::plan(&snap, &now());
            let now = Instant::now();
            state.awaiting.retain(|(kind, key), (rv, since)| {
                now - *since < AWAIT_WATCH
                    && snap.objects().resource_version(*kind, key).as_ref() == Some(rv)
            });
            state
                .recent
                .retain(|_, writes| writes.back().is_some_and(|t| now - *t < LOOP_WINDOW));
            let mut failed = false;
            for w in writes {
                let id = (w.kind, w.key.clone());
                if state.awaiting.contains_key(&id) || state.looping(&id) {
                    continue;
                }
                let result = tokio::select! {
                    () = shutdown.signaled() => return,
                    r = self.write(&w) => r,
                };
                failed |= !state.took(&w, result, &self.metrics);
            }
            if failed {
                state.retry_at = Some(Instant::now() + self.retry.next_wait());
            } else {
                self.retry.reset();
            }
        }
    }

    async fn write(&self, w: &Write) -> Result<(), kube::Error> {
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let patch = w.patch();
        let ns = &w.key.namespace;
        let call = async {
            match w.kind {
                Kind::GrpcRoute => Api::<GrpcRoute>::namespaced(self.client.clone(), ns)
                    .patch_status(&w.key.name, &pp, &Patch::Merge(&patch))
                    .await
                    .map(drop),
                _ => Api::<HttpRoute>::namespaced(self.client.clone(), ns)
                    .patch_status(&w.key.name, &pp, &Patch::Merge(&patch))
                    .await
                    .map(drop),
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| {
                Err(kube::Error::Service(
                    format!("no answer within {CALL_TIMEOUT:?}").into(),
                ))
            })
    }
}

impl LoopState {
    /// Whether `id` was written too often lately (then logged, and a pass
    /// planned for when the window allows a write again).
    fn looping(&mut self, id: &RouteId) -> bool {
        let now = Instant::now();
        let recent = self.recent.entry(id.clone()).or_default();
        while recent.front().is_some_and(|t| now - *t >= LOOP_WINDOW) {
            recent.pop_front();
        }
        let Some(oldest) = recent.front().filter(|_| recent.len() >= LOOP_WRITES) else {
            self.held.remove(id);
            return false;
        };
        let again = *oldest + LOOP_WINDOW;
        if self.held.insert(id.clone()) {
            tracing::error!(kind = id.0.as_str(), route = %id.1, writes = LOOP_WRITES, window = ?LOOP_WINDOW, "route status does not settle: not written again before the window ends (a bug: please report it)");
        }
        self.retry_at = Some(self.retry_at.map_or(again, |at| at.min(again)));
        true
    }

    /// Takes a write's result; whether it did not fail.
    fn took(&mut self, w: &Write, result: Result<(), kube::Error>, metrics: &Metrics) -> bool {
        let id = (w.kind, w.key.clone());
        match result {
            Ok(()) => {
                tracing::info!(kind = w.kind.as_str(), route = %w.key, "route status written");
                metrics.route_status_write(w.kind, StatusWrite::Written);
                self.recent
                    .entry(id.clone())
                    .or_default()
                    .push_back(Instant::now());
                self.awaiting
                    .insert(id, (w.resource_version.clone(), Instant::now()));
                if let Some(was) = self.failing.take() {
                    tracing::info!("route status written again (was failing: {was})");
                }
                true
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                tracing::debug!(kind = w.kind.as_str(), route = %w.key, "route changed since planned; planning again from its next version");
                metrics.route_status_write(w.kind, StatusWrite::Conflict);
                self.awaiting
                    .insert(id, (w.resource_version.clone(), Instant::now()));
                true
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                tracing::debug!(kind = w.kind.as_str(), route = %w.key, "route gone");
                true
            }
            Err(e) => {
                metrics.route_status_write(w.kind, StatusWrite::Failed);
                let reason = match &e {
                    kube::Error::Api(s) if s.code == 403 => {
                        "forbidden: RBAC does not allow patching routes' status".to_string()
                    }
                    kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
                    other => other.to_string(),
                };
                if self.failing.as_ref() != Some(&reason) {
                    tracing::warn!(kind = w.kind.as_str(), route = %w.key, error = %e, "route status not written: {reason}; retrying with backoff");
                    self.failing = Some(reason);
                }
                false
            }
        }
    }
}

/// Now, to the second (what the API server keeps of a `Time`).
fn now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
