//! Outbound services as the controller describes them, and the live state
//! this proxy keeps for each: its routes, a [`Balancer`] per backend, a
//! retry budget per route.
//!
//! [`Services::get`] gives the one [`ServiceState`] of an original
//! destination, shared by every connection to it. Each request asks it for
//! a [`Plan`] (route, timeouts, retry policy, backend — decided under a
//! short lock from the current snapshot), then for an endpoint per try
//! ([`ServiceState::pick`]), and reports how each try went
//! ([`ServiceState::finish`]), which feeds the latency estimates and
//! failure accrual. A new snapshot from the controller is taken at the next
//! request: endpoints that stay keep their state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use trellis_core::addr::OrigDstAddr;

use crate::discovery::{Discovery, EndpointInfo, Kind, Resolved};
use crate::metrics::Label;
use crate::routes::route_table;
use crate::traffic::balance::{Balancer, BalancerConfig, Health, Outcome};
use crate::traffic::budget::SharedBudget;
use crate::traffic::retry::RetryPolicy;
use crate::traffic::route::{select, RequestFacts, RouteName, RouteTable, Timeouts};
use crate::traffic::split::{choose_backend, BackendChoice};

/// The services this proxy has resolved.
pub struct Services {
    discovery: Arc<Discovery>,
    states: Mutex<HashMap<OrigDstAddr, Arc<ServiceState>>>,
    default_route: Label,
    balancer: BalancerConfig,
}

impl Services {
    pub fn new(discovery: Arc<Discovery>, balancer: BalancerConfig) -> Self {
        Self {
            discovery,
            states: Mutex::new(HashMap::new()),
            default_route: Label::new("default"),
            balancer,
        }
    }

    pub fn discovery(&self) -> &Arc<Discovery> {
        &self.discovery
    }

    /// What the controller says `target` is, waiting at most `wait` for a
    /// first answer; `None` when it has not answered.
    pub async fn resolve(&self, target: OrigDstAddr, wait: Duration) -> Option<Resolution> {
        let resolved = self.discovery.resolve(target, wait).await?;
        Some(match resolved.kind {
            Kind::Unknown => Resolution::Unknown,
            Kind::Endpoint => Resolution::Endpoint(resolved.backends[0].endpoints[0].clone()),
            Kind::Service => Resolution::Service(self.state(target, &resolved)),
        })
    }

    fn state(&self, target: OrigDstAddr, first: &Arc<Resolved>) -> Arc<ServiceState> {
        let mut states = lock(&self.states);
        if let Some(s) = states.get(&target) {
            return s.clone();
        }
        let s = Arc::new(ServiceState::new(
            self.discovery.watch(target),
            first.clone(),
            self.default_route.clone(),
            self.balancer,
        ));
        states.insert(target, s.clone());
        s
    }
}

/// What an outbound destination is.
pub enum Resolution {
    /// Not known to the controller: forwarded as it is.
    Unknown,
    /// A pod address: that one endpoint (its identity decides mTLS).
    Endpoint(EndpointInfo),
    /// A service: balanced per request (HTTP) or per connection.
    Service(Arc<ServiceState>),
}

/// One service's live state.
pub struct ServiceState {
    rx: Mutex<watch::Receiver<Option<Arc<Resolved>>>>,
    inner: Mutex<Inner>,
    default_route: Label,
}

struct Inner {
    resolved: Arc<Resolved>,
    service: Label,
    table: RouteTable,
    backends: Vec<BackendState>,
    by_authority: HashMap<String, usize>,
    budgets: HashMap<RouteName, Arc<SharedBudget>>,
    route_labels: HashMap<RouteName, Label>,
    balancer: BalancerConfig,
    rng: SmallRng,
}

struct BackendState {
    endpoints: HashMap<SocketAddr, EndpointInfo>,
    balancer: Balancer<SocketAddr>,
}

/// What one request will do, decided before its first try.
#[derive(Clone)]
pub struct Plan {
    /// The `service` label: the service's authority.
    pub service: Label,
    /// The `route` label.
    pub route: Label,
    pub timeouts: Timeouts,
    pub retry: Option<RetryPolicy>,
    pub budget: Option<Arc<SharedBudget>>,
    pub backend: Result<usize, PlanError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanError {
    /// Every backend of the rule has weight 0, or names a service the
    /// controller did not resolve.
    NoBackend,
}

impl ServiceState {
    fn new(
        rx: watch::Receiver<Option<Arc<Resolved>>>,
        first: Arc<Resolved>,
        default_route: Label,
        balancer: BalancerConfig,
    ) -> Self {
        let mut inner = Inner {
            resolved: Arc::new(Resolved::unknown(OrigDstAddr::from(SocketAddr::from((
                [0, 0, 0, 0],
                0,
            ))))),
            service: Label::new(""),
            table: RouteTable::default(),
            backends: Vec::new(),
            by_authority: HashMap::new(),
            budgets: HashMap::new(),
            route_labels: HashMap::new(),
            balancer,
            rng: SmallRng::from_os_rng(),
        };
        inner.apply(first);
        Self {
            rx: Mutex::new(rx),
            inner: Mutex::new(inner),
            default_route,
        }
    }

    /// The state, brought up to the controller's latest snapshot.
    fn current(&self) -> MutexGuard<'_, Inner> {
        let latest = {
            let mut rx = lock(&self.rx);
            match rx.has_changed() {
                Ok(true) => rx.borrow_and_update().clone(),
                _ => None,
            }
        };
        let mut inner = lock(&self.inner);
        if let Some(latest) = latest {
            inner.apply(latest);
        }
        inner
    }

    /// Decides the route, timeouts, retry policy and backend of a request.
    pub fn plan(&self, facts: &RequestFacts<'_>) -> Plan {
        let mut inner = self.current();
        let inner = &mut *inner;
        let random: u32 = inner.rng.random();
        let Some(selected) = select(&inner.table, facts) else {
            return Plan {
                service: inner.service.clone(),
                route: self.default_route.clone(),
                timeouts: Timeouts::default(),
                retry: None,
                budget: None,
                backend: Ok(0),
            };
        };
        let backend = match choose_backend(selected.backends, random) {
            BackendChoice::Parent => Ok(0),
            BackendChoice::Backend(b) => inner
                .by_authority
                .get(b.as_str())
                .copied()
                .ok_or(PlanError::NoBackend),
            BackendChoice::NoneAvailable => Err(PlanError::NoBackend),
        };
        let route = inner
            .route_labels
            .entry(selected.route.clone())
            .or_insert_with(|| Label::new(selected.route.as_str()))
            .clone();
        let budget = selected.retry.and_then(|policy| {
            let now = std::time::Instant::now();
            let budget = match inner.budgets.get(selected.route) {
                Some(b) => b.clone(),
                None => {
                    let b = Arc::new(SharedBudget::new(&policy.budget, now).ok()?);
                    inner.budgets.insert(selected.route.clone(), b.clone());
                    b
                }
            };
            budget.deposit(now);
            Some(budget)
        });
        Plan {
            service: inner.service.clone(),
            route,
            timeouts: selected.timeouts,
            retry: selected.retry.cloned(),
            budget,
            backend,
        }
    }

    /// The endpoint for the next try to `backend`, counted as started.
    pub fn pick(&self, backend: usize) -> Option<EndpointInfo> {
        let mut inner = self.current();
        let inner = &mut *inner;
        let now = std::time::Instant::now();
        let b = inner.backends.get_mut(backend)?;
        let key = b.balancer.pick(now, &mut inner.rng)?;
        b.balancer.start(&key);
        b.endpoints.get(&key).cloned()
    }

    /// Reports how a try to `addr` went. Returns whether this ejected the
    /// endpoint (failure accrual).
    pub fn finish(&self, backend: usize, addr: SocketAddr, latency: Duration, ok: bool) -> bool {
        let mut inner = lock(&self.inner);
        let now = std::time::Instant::now();
        let Some(b) = inner.backends.get_mut(backend) else {
            return false;
        };
        let before = b.balancer.health(&addr, now);
        let outcome = if ok {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        b.balancer.finish(&addr, now, latency, outcome);
        let after = b.balancer.health(&addr, now);
        after == Some(Health::Ejected) && before != Some(Health::Ejected)
    }

    /// The service's authority (the `service` label).
    pub fn service(&self) -> Label {
        self.current().service.clone()
    }
}

impl Inner {
    /// Takes a new snapshot; balancer state of endpoints that stay is kept.
    fn apply(&mut self, resolved: Arc<Resolved>) {
        if Arc::ptr_eq(&self.resolved, &resolved) {
            return;
        }
        let (table, dropped) = route_table(&resolved.http_routes, &resolved.grpc_routes);
        for reason in &dropped {
            tracing::warn!(service = %resolved.authority, %reason, "route rule left out");
        }
        let mut previous: Vec<Option<BackendState>> = std::mem::take(&mut self.backends)
            .into_iter()
            .map(Some)
            .collect();
        let mut old: HashMap<String, BackendState> = HashMap::new();
        for (authority, i) in self.by_authority.drain() {
            if let Some(b) = previous.get_mut(i).and_then(Option::take) {
                old.insert(authority, b);
            }
        }
        let mut backends = Vec::with_capacity(resolved.backends.len());
        let mut by_authority = HashMap::new();
        for b in &resolved.backends {
            let mut state = old.remove(&b.authority).unwrap_or_else(|| BackendState {
                endpoints: HashMap::new(),
                balancer: Balancer::new(self.balancer, self.rng.random()),
            });
            state.endpoints = b.endpoints.iter().map(|e| (e.addr, e.clone())).collect();
            state
                .balancer
                .update_endpoints(b.endpoints.iter().map(|e| e.addr));
            by_authority
                .entry(b.authority.clone())
                .or_insert(backends.len());
            backends.push(state);
        }
        // Budgets of routes that are gone go with them.
        let names: std::collections::HashSet<&RouteName> = table
            .routes
            .iter()
            .map(|r| &r.name)
            .chain(table.grpc_routes.iter().map(|r| &r.name))
            .collect();
        self.budgets.retain(|n, _| names.contains(n));
        self.service = Label::new(&resolved.authority);
        self.table = table;
        self.backends = backends;
        self.by_authority = by_authority;
        self.resolved = resolved;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain state: a panicking holder leaves it usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
