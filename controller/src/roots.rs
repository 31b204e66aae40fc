//! The trust roots distributor: keeps a copy of the trust roots ConfigMap
//! (`trellis-trust-roots`, key `roots.pem`) in every namespace that may
//! hold injected pods, and keeps the copies current when the roots rotate.
//! Injected pods mount the roots through a `configMap` volume, which must
//! be in the pod's own namespace; the chart makes the source only in the
//! control plane's. (Istio's per-namespace root-cert ConfigMap, likewise.)
//! Kubelet updates ConfigMap volumes in place and proxies reload the file,
//! so a rotation reaches every pod without a restart.
//!
//! Runs with the Kubernetes source only, unless
//! `TRELLIS_CONTROLLER_DISTRIBUTE_TRUST_ROOTS=false`.
//!
//! ```text
//!  watch: Namespaces (metadata only) ──┐
//!                                       ├─► plan::plan (pure) ─► Vec<Action> ─► apply::execute
//!  watch: ConfigMaps named NAME, every  │   (source, namespaces,    create / update / delete
//!  namespace (fieldSelector             │    existing ConfigMaps,   (POST / merge patch / DELETE,
//!  metadata.name=NAME): the source,     │    owner)                  each guarded)
//!  our copies, anyone else's            │
//!  watch: the owner ClusterRole OWNER ──┘
//!  (fieldSelector metadata.name=OWNER)
//! ```
//!
//! - One ConfigMap watch, by name across namespaces, sees the source, our
//!   copies (label `app.kubernetes.io/managed-by: trellis-controller`,
//!   annotation `trellis.dev/trust-roots-source: NS/NAME`) and foreign
//!   ConfigMaps of the same name alike, so the plan knows what not to touch
//!   and a foreign one's removal is noticed; and the name selector lets the
//!   RBAC rule below be limited to that one name.
//! - Its own Namespace watch (metadata only), not the discovery store's:
//!   the store is ready only once every kind is listed (the Gateway API and
//!   policy CRDs included), and pods must not wait for that to start.
//! - A foreign ConfigMap of that name (no managed-by label; for instance
//!   one the chart's `identity.trustRootsNamespaces` made) is never
//!   written: logged once, shown in
//!   `trellis_controller_trust_roots_foreign_configmaps`.
//! - Missing or unusable source (no `roots.pem` holding a PEM
//!   certificate): logged as an error and counted; no copy is made or
//!   changed and none is deleted because of it — the copies in place keep
//!   pods starting and peers trusted until the source is back (a source
//!   deleted for good leaves the copies to be removed by hand:
//!   `kubectl delete cm -A -l app.kubernetes.io/managed-by=trellis-controller`).
//! - Copies carry an ownerReference to the cluster-scoped owner
//!   (`TRELLIS_CONTROLLER_TRUST_ROOTS_OWNER`, the chart's
//!   `trellis-controller` ClusterRole), so `helm uninstall`, which deletes
//!   the ClusterRole, has the garbage collector (kube-controller-manager)
//!   delete every copy; copies without it are adopted (a guarded merge
//!   patch). The owner is watched by name, so a ClusterRole made again
//!   (new uid) is followed. The copies also carry
//!   `app.kubernetes.io/part-of: trellis`. While the owner is unknown (its
//!   watch refused, or no such ClusterRole) copies are still made — pods
//!   need them — without the reference, and adopted once it is seen.
//! - The watches retry through [`crate::watches::watch`] (growing,
//!   jittered backoff; one WARN per change of state; shown at `/ready`
//!   and in `trellis_controller_watch_*{watcher="trust_roots"}`).
//! - A failed write is logged (once per namespace, operation and reason),
//!   counted in `trellis_controller_trust_roots_sync_errors_total{operation}`
//!   and retried with the workspace's backoff
//!   ([`trellis_core::backoff`], full jitter); the controller never stops
//!   for it.
//! - Several replicas (the HA profile) may all run it: every write is
//!   guarded (create-only POST, resourceVersion and uid preconditions), so
//!   the losers of a race get a 409, which is not an error.
//!
//! RBAC it needs (ClusterRole, bound to the controller's ServiceAccount;
//! NAME is `TRELLIS_CONTROLLER_TRUST_ROOTS_CONFIGMAP`):
//!
//! ```yaml
//! - apiGroups: [""]
//!   resources: ["namespaces"]
//!   verbs: ["list", "watch"]          # the discovery source already has get/list/watch
//! - apiGroups: [""]
//!   resources: ["configmaps"]
//!   resourceNames: ["trellis-trust-roots"]
//!   verbs: ["list", "watch", "patch", "delete"]
//! - apiGroups: [""]
//!   resources: ["configmaps"]
//!   verbs: ["create"]                 # create cannot be limited by name
//! - apiGroups: ["rbac.authorization.k8s.io"]
//!   resources: ["clusterroles"]
//!   resourceNames: ["trellis-controller"]   # OWNER
//!   verbs: ["list", "watch"]
//! ```
//!
//! `list`/`watch` limited by `resourceNames` work because every list and
//! watch carries `fieldSelector=metadata.name=NAME`. Never used: `get`,
//! `update` (updates are merge patches), `deletecollection`.

mod apply;
mod plan;

pub use plan::Names;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use tokio::time::Instant;
use trellis_core::backoff::{Backoff, Exponential};
use trellis_core::shutdown::Shutdown;

use crate::metrics::Metrics;
use crate::watches;
use apply::Outcome;
use plan::{Action, SourceState, World};

/// The `watcher` label of the distributor's watches.
pub const WATCHER: &str = "trust_roots";
const NAMESPACES: &str = "namespaces";
const CONFIGMAPS: &str = "configmaps";
const CLUSTERROLES: &str = "clusterroles.rbac.authorization.k8s.io";

/// How long a namespace just written waits for the watch to report the
/// write before it is planned for again (the watch normally reports at
/// once; this only bounds a lost event).
const AWAIT_WATCH: Duration = Duration::from_secs(30);

/// What the distributor needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub names: Names,
    /// The ClusterRole every copy names as its owner; `None`: copies have
    /// no owner (and outlive `helm uninstall`).
    pub owner: Option<String>,
    /// The wait before a failed pass is retried (at most 1 s at first,
    /// doubling, at most 60 s; full jitter).
    pub retry: Backoff,
}

impl Settings {
    pub fn new(control_plane_namespace: &str, configmap: &str) -> Self {
        Self {
            names: Names {
                control_plane_namespace: control_plane_namespace.into(),
                configmap: configmap.into(),
            },
            owner: None,
            retry: Backoff::new(Exponential::new(
                Duration::from_secs(1),
                Duration::from_secs(60),
            )),
        }
    }

    /// Copies name the ClusterRole `name` as their owner.
    pub fn with_owner(mut self, name: Option<String>) -> Self {
        self.owner = name;
        self
    }
}

/// Keeps the copies; see the module's documentation.
pub struct Distributor {
    client: kube::Client,
    settings: Settings,
    metrics: Arc<Metrics>,
}

/// One event of either watch, as the loop needs it.
enum Change {
    /// A namespace watch event; `true` when a listing is complete.
    Namespaces { listed: bool },
    /// A ConfigMap watch event: the namespace it touched, or a complete
    /// listing.
    ConfigMap {
        namespace: Option<String>,
        listed: bool,
    },
    /// An owner watch event; `true` when a listing is complete.
    Owner { listed: bool },
    /// A watch failed (logged and counted by the watch itself).
    WatchFailed { resource: &'static str },
}

impl Distributor {
    pub fn new(client: kube::Client, settings: Settings, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            settings,
            metrics,
        }
    }

    /// Watches and writes until `shutdown`. Never fails: every error is
    /// logged, counted and retried.
    pub async fn run(self, shutdown: Shutdown) {
        let names = &self.settings.names;
        tracing::info!(
            source = %names.source(),
            "trust roots distributor starting"
        );
        let watches = self.metrics.watches();
        let (ns_store, mut ns_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
        let (cm_store, mut cm_writer) = reflector::store::<ConfigMap>();
        let (owner_store, mut owner_writer) = reflector::store::<PartialObjectMeta<ClusterRole>>();
        let ns_api: Api<PartialObjectMeta<Namespace>> = Api::all(self.client.clone());
        let cm_api: Api<ConfigMap> = Api::all(self.client.clone());
        let by_name =
            watcher::Config::default().fields(&format!("metadata.name={}", names.configmap));
        let handle = watches.register(WATCHER, NAMESPACES);
        let ns_events =
            watches::watch(ns_api, watcher::Config::default(), handle).map(move |e| match e {
                Ok(e) => {
                    let e = e.modify(|n| n.metadata.managed_fields = None);
                    ns_writer.apply_watcher_event(&e);
                    Change::Namespaces {
                        listed: matches!(e, Event::InitDone),
                    }
                }
                Err(_) => Change::WatchFailed {
                    resource: NAMESPACES,
                },
            });
        let handle = watches.register(WATCHER, CONFIGMAPS);
        let cm_events = watches::watch(cm_api, by_name, handle).map(move |e| match e {
            Ok(e) => {
                let e = e.modify(|c| c.metadata.managed_fields = None);
                cm_writer.apply_watcher_event(&e);
                match e {
                    Event::Apply(c) | Event::Delete(c) => Change::ConfigMap {
                        namespace: c.metadata.namespace,
                        listed: false,
                    },
                    Event::InitDone => Change::ConfigMap {
                        namespace: None,
                        listed: true,
                    },
                    Event::Init | Event::InitApply(_) => Change::ConfigMap {
                        namespace: None,
                        listed: false,
                    },
                }
            }
            Err(_) => Change::WatchFailed {
                resource: CONFIGMAPS,
            },
        });
        let owner_events: BoxStream<'static, Change> = match &self.settings.owner {
            Some(owner) => {
                let api: Api<PartialObjectMeta<ClusterRole>> = Api::all(self.client.clone());
                let by_name = watcher::Config::default().fields(&format!("metadata.name={owner}"));
                let handle = watches.register(WATCHER, CLUSTERROLES);
                watches::watch(api, by_name, handle)
                    .map(move |e| match e {
                        Ok(e) => {
                            owner_writer.apply_watcher_event(&e);
                            Change::Owner {
                                listed: matches!(e, Event::InitDone),
                            }
                        }
                        Err(_) => Change::WatchFailed {
                            resource: CLUSTERROLES,
                        },
                    })
                    .boxed()
            }
            None => futures_util::stream::pending().boxed(),
        };
        let mut changes: BoxStream<'static, Change> =
            futures_util::stream::select_all([ns_events.boxed(), cm_events.boxed(), owner_events])
                .boxed();
        let mut state = LoopState::new(self.settings.retry.clone(), self.settings.owner.is_some());
        let stores = Stores {
            namespaces: ns_store,
            configmaps: cm_store,
            owner: owner_store,
        };
        loop {
            let change = tokio::select! {
                () = shutdown.signaled() => return,
                c = changes.next() => c,
                () = sleep_until(state.retry_at), if state.retry_at.is_some() => {
                    state.retry_at = None;
                    self.pass(&mut state, &stores, &shutdown).await;
                    continue;
                }
            };
            let Some(change) = change else {
                tracing::error!("trust roots watches ended; no longer distributing");
                return;
            };
            let mut dirty = state.take(change, &self.metrics);
            // Take every event already waiting before planning once.
            while let Some(Some(c)) = changes.next().now_or_never() {
                dirty |= state.take(c, &self.metrics);
            }
            if dirty && state.listed() {
                self.pass(&mut state, &stores, &shutdown).await;
            }
        }
    }

    /// Plans from the watches' caches and executes the plan.
    async fn pass(&self, state: &mut LoopState, stores: &Stores, shutdown: &Shutdown) {
        let names = &self.settings.names;
        let namespaces = stores.namespaces.state();
        let configmaps = stores.configmaps.state();
        let owner = self.owner(stores, state);
        let world = World {
            namespaces: namespaces.iter().map(|n| &n.metadata).collect(),
            configmaps: configmaps.iter().map(AsRef::as_ref).collect(),
            owner: owner.as_ref(),
        };
        let plan = plan::plan(names, &world);
        state.report_source(&plan.source, names, &self.metrics);
        state.report_foreign(&plan.foreign, names);
        self.metrics
            .trust_roots_observed(plan.copies, plan.foreign.len());

        let now = Instant::now();
        state.awaiting.retain(|_, since| now - *since < AWAIT_WATCH);
        let mut failed = false;
        let mut deferred = false;
        for action in &plan.actions {
            let namespace = action.namespace().to_string();
            if state.awaiting.contains_key(&namespace) {
                deferred = true;
                continue;
            }
            let outcome = tokio::select! {
                () = shutdown.signaled() => return,
                o = apply::execute(&self.client, &names.configmap, action) => o,
            };
            match outcome {
                Outcome::Done => {
                    tracing::info!(op = action.op(), namespace = %namespace, configmap = %names.configmap, "trust roots copy written");
                    state.succeeded(action);
                    state.awaiting.insert(namespace, Instant::now());
                }
                Outcome::Stale(reason) => {
                    tracing::debug!(op = action.op(), namespace = %namespace, reason, "trust roots copy not as watched; waiting for the watch");
                    state.awaiting.insert(namespace, Instant::now());
                }
                Outcome::Failed(e) => {
                    failed = true;
                    self.metrics.trust_roots_sync_error(action.op());
                    if state.failed(action, e.reason()) {
                        tracing::warn!(error = %e, "trust roots copy not written; retrying with backoff");
                    }
                }
            }
        }
        if !failed {
            state.retry.reset();
        }
        state.retry_at = if failed {
            Some(Instant::now() + state.retry.next_wait())
        } else if deferred {
            Some(Instant::now() + AWAIT_WATCH)
        } else {
            None
        };
    }

    /// The owner reference every copy must carry, from the owner watch;
    /// a change of what it shows is logged once.
    fn owner(&self, stores: &Stores, state: &mut LoopState) -> Option<OwnerReference> {
        let name = self.settings.owner.as_deref()?;
        if !state.owner_listed {
            return None;
        }
        let found = stores
            .owner
            .state()
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .and_then(|c| c.metadata.uid.clone())
            .map(|uid| OwnerReference {
                api_version: "rbac.authorization.k8s.io/v1".into(),
                kind: "ClusterRole".into(),
                name: name.into(),
                uid,
                ..OwnerReference::default()
            });
        let uid = found.as_ref().map(|o| o.uid.clone());
        if state.owner_seen.as_ref() != Some(&uid) {
            match &uid {
                Some(uid) => {
                    tracing::info!(owner = %name, uid = %uid, "trust roots copies are owned by ClusterRole {name}: deleting it (helm uninstall) deletes them")
                }
                None => {
                    tracing::warn!(owner = %name, "ClusterRole {name} not found: trust roots copies are made without an owner reference, and outlive helm uninstall, until it exists")
                }
            }
            state.owner_seen = Some(uid);
        }
        found
    }
}

/// The watches' caches.
struct Stores {
    namespaces: Store<PartialObjectMeta<Namespace>>,
    configmaps: Store<ConfigMap>,
    owner: Store<PartialObjectMeta<ClusterRole>>,
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the loop remembers between passes.
struct LoopState {
    namespaces_listed: bool,
    configmaps_listed: bool,
    /// An owner is configured: the first pass waits for its listing, unless
    /// its watch fails (copies are then made without the reference).
    owner_wanted: bool,
    owner_listed: bool,
    owner_failing: bool,
    /// The owner's uid at the last pass (`Some(None)`: listed, absent).
    owner_seen: Option<Option<String>>,
    /// Namespaces written (or found ahead of the watch), until the watch
    /// reports on them: not planned for meanwhile.
    awaiting: BTreeMap<String, Instant>,
    /// (operation, namespace) → reason of the last failure, logged once.
    failing: BTreeMap<(&'static str, String), String>,
    retry: Backoff,
    retry_at: Option<Instant>,
    /// The source's state at the last pass (`None` before the first).
    source: Option<SourceState>,
    /// Foreign ConfigMaps already warned about.
    foreign: BTreeSet<String>,
}

impl LoopState {
    fn new(retry: Backoff, owner_wanted: bool) -> Self {
        Self {
            namespaces_listed: false,
            configmaps_listed: false,
            owner_wanted,
            owner_listed: false,
            owner_failing: false,
            owner_seen: None,
            awaiting: BTreeMap::new(),
            failing: BTreeMap::new(),
            retry,
            retry_at: None,
            source: None,
            foreign: BTreeSet::new(),
        }
    }

    fn listed(&self) -> bool {
        let owner = !self.owner_wanted || self.owner_listed || self.owner_failing;
        self.namespaces_listed && self.configmaps_listed && owner
    }

    /// Takes one watch event; whether a new plan is due.
    fn take(&mut self, change: Change, metrics: &Metrics) -> bool {
        match change {
            Change::Namespaces { listed } => {
                self.namespaces_listed |= listed;
                true
            }
            Change::ConfigMap { namespace, listed } => {
                if let Some(ns) = namespace {
                    self.awaiting.remove(&ns);
                }
                if listed {
                    self.configmaps_listed = true;
                    self.awaiting.clear();
                }
                true
            }
            Change::Owner { listed } => {
                if listed {
                    self.owner_listed = true;
                    self.owner_failing = false;
                }
                true
            }
            Change::WatchFailed { resource } => {
                metrics.trust_roots_sync_error("watch");
                // Without the owner, copies are made without its reference
                // rather than not at all.
                let first_owner_failure = resource == CLUSTERROLES && !self.owner_failing;
                if resource == CLUSTERROLES {
                    self.owner_failing = true;
                }
                first_owner_failure && !self.owner_listed
            }
        }
    }

    /// A write failed; whether this failure is new (to be logged).
    fn failed(&mut self, action: &Action, reason: String) -> bool {
        let key = (action.op(), action.namespace().to_string());
        self.failing.insert(key, reason.clone()) != Some(reason)
    }

    fn succeeded(&mut self, action: &Action) {
        let key = (action.op(), action.namespace().to_string());
        if self.failing.remove(&key).is_some() {
            tracing::info!(
                op = action.op(),
                namespace = action.namespace(),
                "trust roots copy written after failures"
            );
        }
    }

    /// Logs (and counts) a change of the source's state.
    fn report_source(&mut self, now: &SourceState, names: &Names, metrics: &Metrics) {
        let same = match (self.source.as_ref(), now) {
            (Some(SourceState::Ready(_)), SourceState::Ready(_))
            | (Some(SourceState::Missing), SourceState::Missing) => true,
            (Some(SourceState::Invalid(was)), SourceState::Invalid(is)) => was == is,
            _ => false,
        };
        if same {
            return;
        }
        let source = names.source();
        match now {
            SourceState::Ready(_) => {
                tracing::info!(source = %source, "trust roots source found; distributing");
            }
            SourceState::Missing => {
                tracing::error!(source = %source, "trust roots source ConfigMap not found: no copies are made or updated, existing ones are kept");
                metrics.trust_roots_sync_error("source");
            }
            SourceState::Invalid(reason) => {
                tracing::error!(source = %source, reason = %reason, "trust roots source ConfigMap is not usable: no copies are made or updated, existing ones are kept");
                metrics.trust_roots_sync_error("source");
            }
        }
        self.source = Some(now.clone());
    }

    /// Warns once about each foreign ConfigMap in the way.
    fn report_foreign(&mut self, foreign: &[String], names: &Names) {
        let now: BTreeSet<String> = foreign.iter().cloned().collect();
        for ns in now.difference(&self.foreign) {
            tracing::warn!(namespace = %ns, configmap = %names.configmap, "a ConfigMap of this name exists without label app.kubernetes.io/managed-by=trellis-controller: left alone, not kept current");
        }
        self.foreign = now;
    }
}

#[cfg(test)]
mod tests;
