//! Every Kubernetes watch the controller runs, and its health: one
//! stream ([`watch`]) that lists, watches, and on failure backs off and
//! starts over; one registry ([`Watches`]) that knows which watches are
//! failing and why, logs each change of state once, and shows it in the
//! metrics and at `/ready`.
//!
//! ```text
//!  watch::<K>(api, config, handle)                      Watches (one per controller, in Metrics)
//!  ───────────────────────────────                      ────────────────────────────────────────
//!  kube-runtime watcher ── Ok(event) ──► consumer        Starting ──► Healthy ◄──► Failing{kind}
//!        │                                                  WARN once on entering Failing (or on a
//!        └─ Err(e) ─► Failure::classify ─► handle.failed    new kind of failure), INFO once on
//!                     then wait backoff.next_wait(),         recovery; every failed attempt counted
//!                     then a fresh watcher (a new LIST)
//! ```
//!
//! Why not kube-runtime's `default_backoff()`: it resets on every `Ok`
//! item, and a watcher that cannot list yields `Ok(Event::Init)` before
//! each failing LIST, so the backoff never grew past its first step
//! (~1.6 requests a second per watch, each logged by kube-client). Here
//! the backoff resets only once the watch is healthy again.
//!
//! Healthy means: listed, and the watch then stayed open [`CONFIRM`]
//! without an error (or delivered an event). A watch the API server
//! refuses fails within a round trip, so a resource whose LIST is allowed
//! but whose WATCH is not stays failing (and backing off) instead of
//! flapping.
//!
//! Every failure starts over with a fresh LIST: kube-runtime retries a
//! refused WATCH from the old resourceVersion, which gives no event to
//! tell that it works again; a LIST does. A 410 Gone (the watch fell too
//! far behind) is routine: a fresh LIST at once, no failure.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::{Debug, Display};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::{BoxStream, Stream, StreamExt};
use kube::runtime::watcher::{self, watcher, Event};
use kube::Api;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use trellis_core::backoff::{Backoff, Exponential};

/// The wait between attempts of a failing watch: at most 1 s at first,
/// doubling, at most 10 s; full jitter ([`trellis_core::backoff`]), so the
/// watches of several replicas, or of one controller, that failed together
/// do not retry in step. A CRD installed after the controller started is
/// picked up within 10 s.
pub const BACKOFF: Exponential = Exponential::new(Duration::from_secs(1), Duration::from_secs(10));

/// How long a watch must stay open after its LIST, without an error, to
/// count as healthy again.
pub const CONFIRM: Duration = Duration::from_secs(3);

/// One watch: who runs it (`discovery`, `trust_roots`) and what it
/// watches (`kubectl`'s name: `httproutes.gateway.networking.k8s.io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchId {
    pub watcher: &'static str,
    pub resource: &'static str,
}

impl Display for WatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.resource, self.watcher)
    }
}

/// Why a watch fails, as a bounded label (`reason` of the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// 404: the API server does not serve the resource (its CRD is not
    /// installed).
    NotInstalled,
    /// 403: RBAC does not allow the controller to list or watch it.
    Forbidden,
    /// 401: the controller's credentials were refused.
    Unauthorized,
    /// 429 or 5xx: the API server is overloaded or failing.
    Unavailable,
    /// No answer: connection refused, reset, timed out.
    Unreachable,
    Other,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::NotInstalled => "not_installed",
            FailureKind::Forbidden => "forbidden",
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::Unavailable => "unavailable",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Other => "other",
        }
    }
}

/// A classified watch failure: its kind, and one line for `/ready` and the
/// log (`CRD httproutes.gateway.networking.k8s.io not installed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub reason: String,
}

impl Failure {
    /// Classifies a watcher error of `resource`.
    pub fn classify(resource: &str, e: &watcher::Error) -> Self {
        match e {
            watcher::Error::InitialListFailed(c)
            | watcher::Error::WatchStartFailed(c)
            | watcher::Error::WatchFailed(c) => Self::from_client(resource, c),
            watcher::Error::WatchError(s) => Self::from_status(resource, s.code, &s.reason),
            other => Self {
                kind: FailureKind::Other,
                reason: other.to_string(),
            },
        }
    }

    fn from_client(resource: &str, e: &kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => Self::from_status(resource, s.code, &s.reason),
            kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
                Self {
                    kind: FailureKind::Unreachable,
                    reason: format!("API server unreachable: {e}"),
                }
            }
            other => Self {
                kind: FailureKind::Other,
                reason: other.to_string(),
            },
        }
    }

    fn from_status(resource: &str, code: u16, reason: &str) -> Self {
        let (kind, reason) = match code {
            404 if resource.contains('.') => (
                FailureKind::NotInstalled,
                format!("CRD {resource} not installed"),
            ),
            404 => (
                FailureKind::NotInstalled,
                format!("the API server does not serve {resource} (404)"),
            ),
            403 => (
                FailureKind::Forbidden,
                format!(
                    "forbidden: RBAC does not allow the controller to list and watch {resource}"
                ),
            ),
            401 => (
                FailureKind::Unauthorized,
                "unauthorized: the API server refused the controller's credentials".to_string(),
            ),
            429 | 500..=599 => (
                FailureKind::Unavailable,
                format!("API server answered {code} {reason}"),
            ),
            _ => (
                FailureKind::Other,
                format!("API server answered {code} {reason}"),
            ),
        };
        Self { kind, reason }
    }
}

/// Whether `e` is a 410 Gone: the watch fell too far behind, and a fresh
/// LIST is all it needs.
fn expired(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(s) => s.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 410,
        _ => false,
    }
}

#[derive(Debug, Clone)]
enum State {
    Starting,
    Healthy,
    Failing {
        failure: Failure,
        since: Instant,
        errors: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WatchLabels {
    watcher: &'static str,
    resource: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    watcher: &'static str,
    resource: &'static str,
    reason: &'static str,
}

impl WatchId {
    fn labels(self) -> WatchLabels {
        WatchLabels {
            watcher: self.watcher,
            resource: self.resource,
        }
    }

    fn failure_labels(self, kind: FailureKind) -> FailureLabels {
        FailureLabels {
            watcher: self.watcher,
            resource: self.resource,
            reason: kind.as_str(),
        }
    }
}

/// The state of every watch (see the module's documentation).
pub struct Watches {
    states: Mutex<BTreeMap<WatchId, State>>,
    healthy: Family<WatchLabels, Gauge>,
    failing: Family<FailureLabels, Gauge>,
    errors: Family<FailureLabels, Counter>,
}

impl Watches {
    /// Registers the watch metrics in `registry`.
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let healthy = Family::<WatchLabels, Gauge>::default();
        registry.register(
            "trellis_controller_watch_healthy",
            "1 when the watch has listed and is watching; 0 while it starts or fails, by watcher and resource",
            healthy.clone(),
        );
        let failing = Family::<FailureLabels, Gauge>::default();
        registry.register(
            "trellis_controller_watch_failing",
            "1 while the watch fails for this reason (not_installed, forbidden, unauthorized, unavailable, unreachable, other), else 0",
            failing.clone(),
        );
        let errors = Family::<FailureLabels, Counter>::default();
        registry.register(
            "trellis_controller_watch_errors",
            "Failed attempts of the watch (each retried after a growing, jittered backoff), by reason",
            errors.clone(),
        );
        Self {
            states: Mutex::new(BTreeMap::new()),
            healthy,
            failing,
            errors,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<WatchId, State>> {
        // Plain data: a panic while holding the lock leaves it usable.
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A watch starting; its handle reports on it.
    pub fn register(
        self: &Arc<Self>,
        watcher: &'static str,
        resource: &'static str,
    ) -> WatchHandle {
        let id = WatchId { watcher, resource };
        self.lock().entry(id).or_insert(State::Starting);
        self.healthy.get_or_create(&id.labels()).set(0);
        WatchHandle {
            watches: self.clone(),
            id,
        }
    }

    fn failed(&self, id: WatchId, failure: &Failure, error: &dyn Display) {
        self.errors
            .get_or_create(&id.failure_labels(failure.kind))
            .inc();
        let mut states = self.lock();
        let state = states.entry(id).or_insert(State::Starting);
        if let State::Failing {
            failure: was,
            errors,
            ..
        } = state
        {
            *errors += 1;
            if was.kind == failure.kind {
                was.reason.clone_from(&failure.reason);
                tracing::debug!(watch = id.watcher, resource = id.resource, reason = failure.kind.as_str(), error = %error, "watch still failing");
                return;
            }
            self.failing
                .get_or_create(&id.failure_labels(was.kind))
                .set(0);
        }
        tracing::warn!(
            watch = id.watcher,
            resource = id.resource,
            reason = failure.kind.as_str(),
            error = %error,
            "watch failing: {}; retrying with backoff (at most {:?} apart), the last state is kept",
            failure.reason,
            BACKOFF.max,
        );
        let errors = match state {
            State::Failing { errors, .. } => *errors,
            _ => 1,
        };
        *state = State::Failing {
            failure: failure.clone(),
            since: Instant::now(),
            errors,
        };
        self.failing
            .get_or_create(&id.failure_labels(failure.kind))
            .set(1);
        self.healthy.get_or_create(&id.labels()).set(0);
    }

    fn recovered(&self, id: WatchId) {
        let mut states = self.lock();
        let state = states.entry(id).or_insert(State::Starting);
        match state {
            State::Healthy => return,
            State::Starting => {
                tracing::debug!(watch = id.watcher, resource = id.resource, "watch up");
            }
            State::Failing {
                failure,
                since,
                errors,
            } => {
                tracing::info!(
                    watch = id.watcher,
                    resource = id.resource,
                    failed_for = ?since.elapsed(),
                    failed_attempts = *errors,
                    "watch recovered (was: {})",
                    failure.reason
                );
                self.failing
                    .get_or_create(&id.failure_labels(failure.kind))
                    .set(0);
            }
        }
        *state = State::Healthy;
        self.healthy.get_or_create(&id.labels()).set(1);
    }

    /// The watches failing now, and why, in order.
    pub fn failing(&self) -> Vec<(WatchId, Failure)> {
        self.lock()
            .iter()
            .filter_map(|(id, s)| match s {
                State::Failing { failure, .. } => Some((*id, failure.clone())),
                _ => None,
            })
            .collect()
    }

    /// `/ready`'s lines about failing watches:
    /// `watch failing: RESOURCE (WATCHER): REASON`.
    pub fn report(&self) -> Vec<String> {
        self.failing()
            .into_iter()
            .map(|(id, f)| format!("watch failing: {id}: {}", f.reason))
            .collect()
    }

    /// Whether the watch is healthy (listed and watching).
    pub fn is_healthy(&self, watcher: &'static str, resource: &'static str) -> bool {
        matches!(
            self.lock().get(&WatchId { watcher, resource }),
            Some(State::Healthy)
        )
    }

    /// Failed attempts counted for the watch, for `kind`.
    pub fn errors(&self, watcher: &'static str, resource: &'static str, kind: FailureKind) -> u64 {
        self.errors
            .get_or_create(&WatchId { watcher, resource }.failure_labels(kind))
            .get()
    }
}

/// Reports on one watch.
#[derive(Clone)]
pub struct WatchHandle {
    watches: Arc<Watches>,
    id: WatchId,
}

impl WatchHandle {
    pub fn id(&self) -> WatchId {
        self.id
    }

    /// A failed attempt: logged when the state changes, always counted.
    pub fn failed(&self, failure: &Failure, error: &dyn Display) {
        self.watches.failed(self.id, failure, error);
    }

    /// The watch works (again).
    pub fn recovered(&self) {
        self.watches.recovered(self.id);
    }
}

/// What the loop of one watch keeps between items.
struct Looping<K: 'static> {
    api: Api<K>,
    config: watcher::Config,
    handle: WatchHandle,
    backoff: Backoff,
    /// The current watcher; `None`: start one (after `wait`).
    events: Option<BoxStream<'static, watcher::Result<Event<K>>>>,
    wait: Option<Duration>,
    /// Listed: healthy if nothing fails before this.
    confirm_at: Option<Instant>,
    healthy: bool,
}

/// The events of `api`'s watch, listing first (then again after every
/// failure); each failure, classified, after it was logged and counted and
/// before the backoff's wait ([`BACKOFF`]). Never ends.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    handle: WatchHandle,
) -> impl Stream<Item = Result<Event<K>, Failure>> + Send
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    watch_with(api, config, handle, Backoff::new(BACKOFF))
}

/// [`watch`], waiting through `backoff` (tests: a fixed draw, or none).
pub(crate) fn watch_with<K>(
    api: Api<K>,
    config: watcher::Config,
    handle: WatchHandle,
    backoff: Backoff,
) -> impl Stream<Item = Result<Event<K>, Failure>> + Send
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let state = Looping {
        api,
        config,
        handle,
        backoff,
        events: None,
        wait: None,
        confirm_at: None,
        healthy: false,
    };
    futures_util::stream::unfold(state, |s| s.next())
}

impl<K> Looping<K>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    async fn next(mut self) -> Option<(Result<Event<K>, Failure>, Self)> {
        loop {
            let events = match &mut self.events {
                Some(events) => events,
                None => {
                    if let Some(wait) = self.wait.take() {
                        tokio::time::sleep(wait).await;
                    }
                    self.events
                        .insert(watcher(self.api.clone(), self.config.clone()).boxed())
                }
            };
            let confirm_at = self.confirm_at;
            let item = tokio::select! {
                item = events.next() => Some(item),
                () = sleep_until(confirm_at), if confirm_at.is_some() => None,
            };
            let Some(item) = item else {
                // Listed, and the watch has held since: healthy.
                self.up();
                continue;
            };
            match item {
                Some(Ok(event)) => {
                    match &event {
                        Event::InitDone if !self.healthy => {
                            self.confirm_at = Some(Instant::now() + CONFIRM);
                        }
                        Event::Apply(_) | Event::Delete(_) => self.up(),
                        _ => {}
                    }
                    return Some((Ok(event), self));
                }
                Some(Err(e)) if expired(&e) => {
                    tracing::debug!(resource = self.handle.id.resource, error = %e, "watch expired; listing again");
                    self.events = None;
                }
                Some(Err(e)) => {
                    let failure = Failure::classify(self.handle.id.resource, &e);
                    self.handle.failed(&failure, &e);
                    self.healthy = false;
                    self.confirm_at = None;
                    self.events = None;
                    self.wait = Some(self.backoff.next_wait());
                    return Some((Err(failure), self));
                }
                // A watcher does not end; if it did, start another.
                None => self.events = None,
            }
        }
    }

    fn up(&mut self) {
        self.confirm_at = None;
        if !self.healthy {
            self.healthy = true;
            self.backoff.reset();
            self.handle.recovered();
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
