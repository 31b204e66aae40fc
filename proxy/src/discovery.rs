//! What the controller tells this proxy: for each outbound original
//! destination, a [`Resolved`] snapshot (a service's endpoints, their
//! identities, its routes), and this pod's inbound policy.
//!
//! One watch per destination, shared by every connection to it: the first
//! connection to a destination opens a `Resolve` stream and waits (at most
//! the resolve timeout) for its first snapshot; later connections read the
//! latest snapshot without waiting. Streams that break are reopened after
//! a `RECONNECT` backoff with full jitter (so that the proxies of a
//! restarted controller do not all come back in the same instant), and
//! the last snapshot stays in force meanwhile — a proxy whose
//! controller is gone keeps serving on what it last knew. A destination
//! nobody has used for [`IDLE_EVICT`] is forgotten and its stream closed.
//!
//! Conversion from the wire ([`resolved`]) is pure and checks everything
//! it takes: a snapshot the proxy cannot use is refused (and counted), and
//! the previous one kept.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use trellis_api::discovery::v1 as pb;
use trellis_api::discovery::v1::discovery_client::DiscoveryClient;
use trellis_core::addr::OrigDstAddr;
use trellis_core::backoff::{Backoff, Exponential};
use trellis_core::shutdown::Shutdown;
use trellis_core::spiffe::SpiffeId;

use crate::policy::{Authorization, DefaultPolicy, Policy, Probe};

/// A destination unused this long is forgotten.
pub const IDLE_EVICT: Duration = Duration::from_secs(600);
/// The wait before a stream that broke (or would not open) is opened
/// again: at most 250 ms at first, doubling, at most 10 s; full jitter.
/// Back to the first after an accepted update.
const RECONNECT: Exponential =
    Exponential::new(Duration::from_millis(250), Duration::from_secs(10));
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What a destination is, as the controller last said.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub kind: Kind,
    /// The `service` label: the service's authority, or the target itself.
    pub authority: String,
    pub protocol: pb::ProtocolHint,
    /// The first is the service's own endpoints (what no route redirects).
    pub backends: Vec<BackendSet>,
    pub http_routes: Vec<pb::HttpRoute>,
    pub grpc_routes: Vec<pb::GrpcRoute>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unknown,
    Service,
    Endpoint,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendSet {
    pub authority: String,
    pub endpoints: Vec<EndpointInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Meshed: mutual TLS, expecting exactly this identity.
    pub identity: Option<SpiffeId>,
    pub workload: String,
    pub namespace: String,
}

impl Resolved {
    pub fn unknown(target: OrigDstAddr) -> Self {
        Self {
            kind: Kind::Unknown,
            authority: target.to_string(),
            protocol: pb::ProtocolHint::ProtocolUnknown,
            backends: Vec::new(),
            http_routes: Vec::new(),
            grpc_routes: Vec::new(),
        }
    }
}

/// Converts a `Resolution` into what the proxy uses, refusing one that
/// names malformed addresses or identities.
pub fn resolved(target: OrigDstAddr, r: pb::Resolution) -> Result<Resolved, String> {
    let kind = match pb::resolution::Kind::try_from(r.kind) {
        Ok(pb::resolution::Kind::Unknown) => return Ok(Resolved::unknown(target)),
        Ok(pb::resolution::Kind::Service) => Kind::Service,
        Ok(pb::resolution::Kind::Endpoint) => Kind::Endpoint,
        Err(_) => return Err(format!("unknown resolution kind {}", r.kind)),
    };
    if r.authority.is_empty() {
        return Err("no authority".into());
    }
    let mut backends = Vec::with_capacity(r.backends.len());
    for (i, b) in r.backends.into_iter().enumerate() {
        let mut endpoints = Vec::with_capacity(b.endpoints.len());
        for (j, e) in b.endpoints.into_iter().enumerate() {
            let at = || format!("backends[{i}].endpoints[{j}]");
            let addr: SocketAddr = e
                .addr
                .parse()
                .map_err(|_| format!("{}: address {:?} is not IP:PORT", at(), e.addr))?;
            let identity = if e.identity.is_empty() {
                None
            } else {
                Some(
                    e.identity
                        .parse::<SpiffeId>()
                        .map_err(|err| format!("{}: identity {:?}: {err}", at(), e.identity))?,
                )
            };
            endpoints.push(EndpointInfo {
                addr,
                weight: e.weight.max(1),
                identity,
                workload: e.workload,
                namespace: e.namespace,
            });
        }
        backends.push(BackendSet {
            authority: b.authority,
            endpoints,
        });
    }
    if kind == Kind::Endpoint && backends.first().is_none_or(|b| b.endpoints.len() != 1) {
        return Err("an endpoint resolution must have exactly one endpoint".into());
    }
    Ok(Resolved {
        kind,
        authority: r.authority,
        protocol: pb::ProtocolHint::try_from(r.protocol).unwrap_or_default(),
        backends,
        http_routes: r.http_routes,
        grpc_routes: r.grpc_routes,
    })
}

/// Converts an `InboundPolicy` into the proxy's policy model.
pub fn inbound_policy(p: pb::InboundPolicy) -> Result<Policy, String> {
    let default_policy: DefaultPolicy = p.default_policy.parse()?;
    let mut ports = std::collections::BTreeMap::new();
    for (port, policy) in p.port_policies {
        let port = u16::try_from(port).map_err(|_| format!("port {port} is out of range"))?;
        ports.insert(port, policy.parse::<DefaultPolicy>()?);
    }
    let probes = p
        .probes
        .into_iter()
        .map(|pr| {
            Ok(Probe {
                port: u16::try_from(pr.port).map_err(|_| format!("probe port {}", pr.port))?,
                path: pr.path,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let authorizations = p
        .authorizations
        .into_iter()
        .map(|a| {
            Ok(Authorization {
                ports: a
                    .ports
                    .iter()
                    .map(|s| s.parse())
                    .collect::<Result<_, String>>()
                    .map_err(|e| format!("authorization {}: {e}", a.name))?,
                name: a.name,
                identities: a.identities,
                namespaces: a.namespaces,
                methods: a.methods,
                path_prefixes: a.path_prefixes,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Policy {
        default_policy,
        ports,
        probes,
        authorizations,
    })
}

/// Counts of what the controller's streams delivered.
#[derive(Default)]
pub struct DiscoveryStats {
    pub refused: prometheus_client::metrics::counter::Counter,
    pub stream_errors: prometheus_client::metrics::counter::Counter,
    pub updates: prometheus_client::metrics::counter::Counter,
}

struct Watch {
    rx: watch::Receiver<Option<Arc<Resolved>>>,
    last_used: Instant,
}

/// The controller client and the destinations being watched.
pub struct Discovery {
    client: DiscoveryClient<Channel>,
    namespace: String,
    watches: Mutex<HashMap<OrigDstAddr, Watch>>,
    pub stats: Arc<DiscoveryStats>,
    shutdown: Shutdown,
}

impl Discovery {
    /// A client of the controller at `addr` (`host:port`); connects lazily
    /// and reconnects by itself.
    pub fn new(
        addr: &str,
        namespace: &str,
        stats: Arc<DiscoveryStats>,
        shutdown: Shutdown,
    ) -> Result<Arc<Self>, String> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("controller address {addr:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        let this = Arc::new(Self {
            client: DiscoveryClient::new(channel),
            namespace: namespace.to_string(),
            watches: Mutex::new(HashMap::new()),
            stats,
            shutdown: shutdown.clone(),
        });
        let sweeper = Arc::downgrade(&this);
        until_shutdown(&shutdown, async move {
            loop {
                tokio::time::sleep(IDLE_EVICT / 4).await;
                let Some(d) = sweeper.upgrade() else { return };
                d.evict_idle(Instant::now());
            }
        });
        Ok(this)
    }

    /// The latest snapshot for `target`, waiting at most `wait` for the
    /// first one. `None`: the controller has not answered (yet).
    pub async fn resolve(&self, target: OrigDstAddr, wait: Duration) -> Option<Arc<Resolved>> {
        let mut rx = self.watch(target);
        if let Some(r) = rx.borrow_and_update().clone() {
            return Some(r);
        }
        let first = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        match first {
            Ok(Ok(r)) => r.clone(),
            _ => None,
        }
    }

    /// The watch of `target`, started if needed.
    pub fn watch(&self, target: OrigDstAddr) -> watch::Receiver<Option<Arc<Resolved>>> {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(w) = watches.get_mut(&target) {
            w.last_used = now;
            return w.rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        watches.insert(
            target,
            Watch {
                rx: rx.clone(),
                last_used: now,
            },
        );
        let task = follow(
            self.client.clone(),
            target,
            self.namespace.clone(),
            tx,
            self.stats.clone(),
        );
        until_shutdown(&self.shutdown, task);
        rx
    }

    fn evict_idle(&self, now: Instant) {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        watches.retain(|_, w| now.duration_since(w.last_used) < IDLE_EVICT);
    }

    /// Follows this pod's inbound policy, handing each one to `apply`, and
    /// each failure to get one (the stream would not open, broke or was
    /// closed, a policy was refused) to `failed`.
    pub fn follow_inbound(
        &self,
        pod: String,
        apply: impl Fn(Policy) + Send + 'static,
        failed: impl Fn(&str) + Send + 'static,
    ) {
        let mut client = self.client.clone();
        let namespace = self.namespace.clone();
        let stats = self.stats.clone();
        until_shutdown(&self.shutdown, async move {
            let mut backoff = Backoff::new(RECONNECT);
            loop {
                let req = pb::InboundRequest {
                    namespace: namespace.clone(),
                    pod: pod.clone(),
                };
                match client.inbound(req).await {
                    Ok(stream) => {
                        let mut stream = stream.into_inner();
                        loop {
                            match stream.message().await {
                                Ok(Some(p)) => match inbound_policy(p) {
                                    Ok(policy) => {
                                        stats.updates.inc();
                                        backoff.reset();
                                        tracing::info!(policy = %policy.default_policy, "inbound policy from the controller");
                                        apply(policy);
                                    }
                                    Err(e) => {
                                        stats.refused.inc();
                                        tracing::warn!(error = %e, "inbound policy refused; keeping the current one");
                                        failed(&format!("inbound policy refused: {e}"));
                                    }
                                },
                                Ok(None) => {
                                    failed("the controller ended the inbound policy stream");
                                    break;
                                }
                                Err(e) => {
                                    stats.stream_errors.inc();
                                    tracing::debug!(error = %e, "inbound policy stream ended");
                                    failed(&format!(
                                        "the inbound policy stream broke: {}",
                                        status_reason(&e)
                                    ));
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        stats.stream_errors.inc();
                        tracing::debug!(error = %e, "cannot open the inbound policy stream");
                        failed(&format!(
                            "cannot open the inbound policy stream: {}",
                            status_reason(&e)
                        ));
                    }
                }
                tokio::time::sleep(backoff.next_wait()).await;
            }
        });
    }
}

/// A gRPC status in a few words, with the transport error behind it (tonic
/// says only "transport error" or "tcp connect error" at the top).
fn status_reason(status: &tonic::Status) -> String {
    let mut out = format!("{:?}", status.code());
    if !status.message().is_empty() {
        out.push_str(": ");
        out.push_str(status.message());
    }
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Runs a background task until it ends or shutdown begins (these tasks
/// hold no request: the drain need not wait for them).
fn until_shutdown(
    shutdown: &Shutdown,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = task => {}
            () = stop.signaled() => {}
        }
    });
}

/// Keeps `tx` up to date with the controller's answers for `target` until
/// every receiver is gone.
async fn follow(
    mut client: DiscoveryClient<Channel>,
    target: OrigDstAddr,
    namespace: String,
    tx: watch::Sender<Option<Arc<Resolved>>>,
    stats: Arc<DiscoveryStats>,
) {
    let mut backoff = Backoff::new(RECONNECT);
    loop {
        let req = pb::ResolveRequest {
            target: target.to_string(),
            client_namespace: namespace.clone(),
        };
        let opened = tokio::select! {
            r = client.resolve(req) => r,
            () = tx.closed() => return,
        };
        match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    let msg = tokio::select! {
                        m = stream.message() => m,
                        () = tx.closed() => return,
                    };
                    match msg {
                        Ok(Some(r)) => match resolved(target, r) {
                            Ok(r) => {
                                stats.updates.inc();
                                backoff.reset();
                                tracing::debug!(dst.addr = %target, kind = ?r.kind, authority = %r.authority, "resolved");
                                tx.send_replace(Some(Arc::new(r)));
                            }
                            Err(e) => {
                                stats.refused.inc();
                                tracing::warn!(dst.addr = %target, error = %e, "resolution refused; keeping the last one");
                            }
                        },
                        Ok(None) => break,
                        Err(e) => {
                            stats.stream_errors.inc();
                            tracing::debug!(dst.addr = %target, error = %e, "resolve stream ended");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                stats.stream_errors.inc();
                tracing::debug!(dst.addr = %target, error = %e, "cannot resolve; keeping the last answer");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_wait()) => {}
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests;
