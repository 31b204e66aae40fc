//! Churn: changes at a fixed rate, and the time until every stream a
//! change affects has received the answer that shows it.
//!
//! Each change is decided on the model ([`Cluster`]) and has a predicate
//! that is false of every affected stream's answer before it and true
//! after: a new pod address present, an unready one gone, a route's new
//! timeout, a policy's new namespace. A service with a change in flight is
//! not changed again until every affected stream saw it (or its waiters
//! gave up), so a predicate never races another change of its service.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng as _;
use serde_json::Value;

use crate::cluster::{Cluster, RouteKind, PODS_PER_SERVICE, TARGET_PORT};
use crate::load::{pick, Answer, Load};

/// How long a waiter waits for one stream's new answer.
pub const WAIT_LIMIT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The EndpointSlice's endpoints replaced by 10 new pods (created
    /// before, the old ones deleted after).
    RollingUpdate,
    EndpointUnready,
    EndpointReady,
    RouteEdit,
    PolicyEdit,
}

/// What an affected stream's answer shows once the change reached it.
#[derive(Debug, Clone)]
pub enum Shows {
    Endpoint(String),
    NoEndpoint(String),
    RequestTimeout(u64),
    PolicyNamespace(String),
}

impl Shows {
    pub fn holds(&self, a: &Answer) -> bool {
        match (self, a) {
            (Shows::Endpoint(addr), Answer::Resolution(_, r)) => {
                own_endpoints(r).any(|e| e == addr)
            }
            (Shows::NoEndpoint(addr), Answer::Resolution(_, r)) => {
                !r.backends.is_empty() && !own_endpoints(r).any(|e| e == addr)
            }
            (Shows::RequestTimeout(ms), Answer::Resolution(_, r)) => r
                .http_routes
                .iter()
                .flat_map(|h| &h.rules)
                .any(|rule| rule.timeouts.is_some_and(|t| t.request_ms == *ms)),
            (Shows::PolicyNamespace(ns), Answer::Inbound(_, p)) => p
                .authorizations
                .iter()
                .any(|a| a.namespaces.iter().any(|n| n == ns)),
            _ => false,
        }
    }
}

fn own_endpoints(r: &trellis_api::discovery::v1::Resolution) -> impl Iterator<Item = &str> {
    r.backends
        .first()
        .into_iter()
        .flat_map(|b| &b.endpoints)
        .map(|e| e.addr.as_str())
}

/// The object writes of a change, for the Kubernetes source (the file
/// source rewrites the file from the model).
#[derive(Debug, Clone)]
pub enum Writes {
    /// Create these pods (with their status) first; then merge-patch the
    /// slice's endpoints (the measured write); then delete the old pods.
    Rolling {
        namespace: String,
        pods: Vec<(Value, Value)>,
        slice: String,
        endpoints: Value,
        delete: Vec<String>,
    },
    Slice {
        namespace: String,
        slice: String,
        endpoints: Value,
    },
    HttpRoute {
        namespace: String,
        name: String,
        spec: Value,
    },
    Policy {
        namespace: String,
        name: String,
        spec: Value,
    },
}

#[derive(Debug, Clone)]
pub struct Change {
    pub kind: Kind,
    pub service: usize,
    pub affected: Vec<usize>,
    pub shows: Shows,
    pub writes: Writes,
}

/// One change's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub kind: Kind,
    pub affected: usize,
    /// Until the last affected stream had it; `None`: some never did.
    pub all_ms: Option<f64>,
    pub stream_ms: Vec<f64>,
    pub missed: usize,
}

/// Services with a change in flight, and the outcomes so far.
#[derive(Default)]
pub struct Tally {
    pub busy: Mutex<HashSet<usize>>,
    pub outcomes: Mutex<Vec<Outcome>>,
    pub in_flight: std::sync::atomic::AtomicUsize,
}

/// Decides the next change on the model: 35% rolling updates, 35%
/// readiness flips, 15% route edits, 15% policy edits, each on a service
/// (or policy) that some stream follows and that has no change in flight.
pub fn next(cluster: &mut Cluster, load: &Load, tally: &Tally, rng: &mut StdRng) -> Option<Change> {
    let busy = tally.busy.lock().unwrap_or_else(|p| p.into_inner());
    let frontends = cluster.scale.frontends();
    let resolved: Vec<usize> = (0..cluster.services.len())
        .filter(|i| !load.resolving[*i].is_empty() && !busy.contains(i))
        .collect();
    let roll: Vec<usize> = resolved
        .iter()
        .copied()
        .filter(|i| *i >= frontends)
        .collect();
    let routed: Vec<usize> = resolved
        .iter()
        .copied()
        .filter(|i| cluster.services[*i].route == Some(RouteKind::Http))
        .collect();
    let policies: Vec<usize> = (0..frontends)
        .filter(|i| cluster.services[*i].policy && !busy.contains(i))
        .collect();
    drop(busy);
    let roll_dice: u32 = rng.random_range(0..100);
    let change = match roll_dice {
        0..35 => rolling(cluster, load, pick(rng, &roll)?),
        35..70 => flip(cluster, load, pick(rng, &resolved)?, rng),
        70..85 => route_edit(cluster, load, pick(rng, &routed)?),
        _ => policy_edit(cluster, load, pick(rng, &policies)?),
    };
    tally
        .busy
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(change.service);
    for i in &change.affected {
        load.streams[*i]
            .expected_in_churn
            .fetch_add(1, Ordering::Relaxed);
    }
    Some(change)
}

fn rolling(c: &mut Cluster, load: &Load, i: usize) -> Change {
    let ips: Vec<_> = (0..PODS_PER_SERVICE).map(|_| c.pod_ip()).collect();
    let old: Vec<String> = {
        let s = &c.services[i];
        (0..PODS_PER_SERVICE)
            .map(|slot| s.pod_name(s.generation, slot))
            .collect()
    };
    let s = &mut c.services[i];
    s.generation += 1;
    s.pod_ips = ips;
    s.unready.clear();
    let s = &c.services[i];
    let pods = (0..PODS_PER_SERVICE)
        .map(|slot| (c.pod(s, slot), c.pod_status(s, slot)))
        .collect();
    Change {
        kind: Kind::RollingUpdate,
        service: i,
        affected: load.resolving[i].clone(),
        shows: Shows::Endpoint(format!("{}:{TARGET_PORT}", s.pod_ips[0])),
        writes: Writes::Rolling {
            namespace: s.namespace.clone(),
            pods,
            slice: s.slice_name(),
            endpoints: c.slice_endpoints(s),
            delete: old,
        },
    }
}

fn flip(c: &mut Cluster, load: &Load, i: usize, rng: &mut StdRng) -> Change {
    let slot = rng.random_range(0..PODS_PER_SERVICE);
    let s = &mut c.services[i];
    let addr = format!("{}:{TARGET_PORT}", s.pod_ips[slot]);
    let (kind, shows) = if s.unready.remove(&slot) {
        (Kind::EndpointReady, Shows::Endpoint(addr))
    } else {
        s.unready.insert(slot);
        (Kind::EndpointUnready, Shows::NoEndpoint(addr))
    };
    let s = &c.services[i];
    Change {
        kind,
        service: i,
        affected: load.resolving[i].clone(),
        shows,
        writes: Writes::Slice {
            namespace: s.namespace.clone(),
            slice: s.slice_name(),
            endpoints: c.slice_endpoints(s),
        },
    }
}

fn route_edit(c: &mut Cluster, load: &Load, i: usize) -> Change {
    c.services[i].route_edits += 1;
    let s = &c.services[i];
    Change {
        kind: Kind::RouteEdit,
        service: i,
        affected: load.resolving[i].clone(),
        shows: Shows::RequestTimeout(s.request_timeout_ms()),
        writes: Writes::HttpRoute {
            namespace: s.namespace.clone(),
            name: s.route_name(),
            spec: c.route_spec(s),
        },
    }
}

fn policy_edit(c: &mut Cluster, load: &Load, i: usize) -> Change {
    c.services[i].policy_edits += 1;
    let s = &c.services[i];
    Change {
        kind: Kind::PolicyEdit,
        service: i,
        affected: load.inbound[i].clone(),
        shows: Shows::PolicyNamespace(s.policy_marker()),
        writes: Writes::Policy {
            namespace: s.namespace.clone(),
            name: s.policy_name(),
            spec: c.policy_spec(s),
        },
    }
}

/// Waits (bounded) until every affected stream shows `change`, made at
/// `t0`, records the outcome and frees its service.
pub async fn await_change(change: Change, t0: Instant, load: Arc<Load>, tally: Arc<Tally>) {
    let waits = change.affected.iter().map(|i| {
        let mut rx = load.streams[*i].answer.clone();
        let shows = change.shows.clone();
        async move {
            let seen = tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|a| shows.holds(a))).await;
            match seen {
                Ok(Ok(a)) => a.at().map(|at| at.saturating_duration_since(t0)),
                _ => None,
            }
        }
    });
    let seen: Vec<Option<Duration>> = futures_util::future::join_all(waits).await;
    let stream_ms: Vec<f64> = seen
        .iter()
        .flatten()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    let missed = seen.len() - stream_ms.len();
    let all_ms = (missed == 0).then(|| stream_ms.iter().copied().fold(0.0, f64::max));
    tally
        .outcomes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Outcome {
            kind: change.kind,
            affected: change.affected.len(),
            all_ms,
            stream_ms,
            missed,
        });
    tally
        .busy
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&change.service);
    tally.in_flight.fetch_sub(1, Ordering::Relaxed);
}
