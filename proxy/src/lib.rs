//! `trellis-proxy`: the Trellis sidecar.
//!
//! iptables (installed by `trellis-proxy init` or the CNI plugin, both with
//! [`trellis_core::capture`]) redirects a pod's TCP: its own outgoing
//! connections to the outbound listener (127.0.0.1:7140), connections to it
//! to the inbound listener (0.0.0.0:7143). Each accepted connection runs
//! through the phases of [`conn`]: accept (original destination, loop
//! check) → detect (HTTP/1, HTTP/2, TLS, or opaque) → its direction's
//! pipeline ([`inbound`]: terminate mesh TLS, authorize, to the
//! application; [`outbound`]: resolve the destination, then per request
//! route, balance, retry, or copy opaque TCP) → record ([`metrics`], access
//! log). Failures are read in one place ([`error`]).
//! The admin server ([`admin`], port 7191) serves `/metrics`, `/ready`,
//! `/live`, `/config` and `/identity`.
//!
//! [`Proxy::bind`] binds every listener eagerly (a bind error fails start-up);
//! [`Proxy::run`] answers on the admin port at once, accepts traffic once
//! the certificate and the inbound policy have arrived ([`startup`]), serves
//! until the [`Shutdown`] begins, then stops accepting and lets connections
//! finish.

// `println!`/`eprintln!` panic on a closed pipe: print through
// trellis_core::{out, outln, errln}.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod admin;
pub mod body;
pub mod config;
pub mod conn;
pub mod detect;
pub mod discovery;
pub mod error;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod io;
pub mod mesh;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod path;
pub mod plaintext;
pub mod policy;
pub mod probe;
pub mod routes;
pub mod service;
pub mod startup;
pub mod trace;
pub mod traffic;
pub mod upstream;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::Instrument as _;
use trellis_core::addr::ClientAddr;
use trellis_core::contract::files::DestinationsFile;
use trellis_core::shutdown::Shutdown;

pub use config::Config;
use config::Ipv6Mode;
use conn::ListenerContext;
use mesh::Mesh;
use metrics::{Direction, Label, Metrics};
use orig_dst::OrigDstLookup;
use startup::Awaited;
use std::path::PathBuf;
use trellis_core::tls;

#[derive(Debug, thiserror::Error)]
#[error("binding the {what} listener on {addr}: {source}")]
pub struct BindError {
    what: &'static str,
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("mesh configuration: {0}")]
    Mesh(#[from] mesh::MeshError),
}

/// A proxy whose listeners are bound.
pub struct Proxy {
    config: Arc<Config>,
    orig_dst: Arc<dyn OrigDstLookup>,
    metrics: Arc<Metrics>,
    /// The configured (IPv4) listener first, then its IPv6 twin if any.
    outbound: Vec<TcpListener>,
    inbound: Vec<TcpListener>,
    admin: TcpListener,
    mesh: Arc<Mesh>,
    /// Last content of the destinations and policy files, for their watchers.
    files: Vec<WatchedFile>,
}

impl Proxy {
    pub async fn bind(
        config: Config,
        orig_dst: Arc<dyn OrigDstLookup>,
    ) -> Result<Self, StartError> {
        let (mesh, files) = load_mesh(&config)?;
        let outbound = bind_listeners("outbound", config.outbound_listen, config.ipv6)?;
        let inbound = bind_listeners("inbound", config.inbound_listen, config.ipv6)?;
        let admin = bind("admin", config.admin_listen)?;
        Ok(Self {
            outbound,
            inbound,
            admin,
            config: Arc::new(config),
            orig_dst,
            metrics: Arc::new(Metrics::new()),
            mesh: Arc::new(mesh),
            files,
        })
    }

    /// Binds with a mesh view built by the caller (component tests: set
    /// credentials directly, without an identity service).
    pub async fn bind_with_mesh(
        config: Config,
        orig_dst: Arc<dyn OrigDstLookup>,
        mesh: Mesh,
    ) -> Result<Self, StartError> {
        let outbound = bind_listeners("outbound", config.outbound_listen, config.ipv6)?;
        let inbound = bind_listeners("inbound", config.inbound_listen, config.ipv6)?;
        let admin = bind("admin", config.admin_listen)?;
        Ok(Self {
            outbound,
            inbound,
            admin,
            config: Arc::new(config),
            orig_dst,
            metrics: Arc::new(Metrics::new()),
            mesh: Arc::new(mesh),
            files: Vec::new(),
        })
    }

    /// The proxy's view of the mesh (credentials, destinations, policy).
    pub fn mesh(&self) -> &Arc<Mesh> {
        &self.mesh
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn outbound_addr(&self) -> SocketAddr {
        local_addr(&self.outbound[0])
    }
    pub fn inbound_addr(&self) -> SocketAddr {
        local_addr(&self.inbound[0])
    }
    pub fn admin_addr(&self) -> SocketAddr {
        local_addr(&self.admin)
    }
    /// Every address the proxy accepts proxied connections on.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.outbound
            .iter()
            .chain(&self.inbound)
            .map(local_addr)
            .collect()
    }

    /// Serves until `shutdown` begins; then stops accepting. Connections
    /// already open are tracked by `shutdown`, whose `drained` waits for them.
    ///
    /// The admin server answers at once; the listeners accept only once
    /// the certificate and the inbound policy have arrived ([`startup`]).
    pub async fn run(self, shutdown: Shutdown) {
        let tracing = self.start_tracing(&shutdown);
        let (services, policy) = self.start_discovery(&shutdown);
        self.watch_files(&shutdown);
        let certificate = self.start_identity(&shutdown);
        let startup = Arc::new(startup::Startup::new(certificate, policy));

        let upstreams = Arc::new(upstream::Upstreams::new(
            self.config.connect_timeout,
            self.config.pool_idle_timeout,
        ));
        tokio::spawn(sweep_upstreams(
            Arc::downgrade(&upstreams),
            self.config.pool_idle_timeout,
            shutdown.clone(),
        ));
        let own_ports = vec![self.outbound_addr().port(), self.inbound_addr().port()];
        let probe_sources = Arc::new(probe::ProbeSources::resolve(&self.config.probe_sources));
        tracing::info!(nets = ?probe_sources.nets(), "probes accepted from these sources");
        let ctx = |direction| {
            Arc::new(ListenerContext {
                probe_sources: probe_sources.clone(),
                direction,
                config: self.config.clone(),
                orig_dst: self.orig_dst.clone(),
                upstreams: upstreams.clone(),
                metrics: self.metrics.clone(),
                shutdown: shutdown.clone(),
                own_ports: own_ports.clone(),
                default_route: Label::new("default"),
                no_peer: Label::new(""),
                mesh: self.mesh.clone(),
                services: services.clone(),
                tracing: tracing.clone(),
            })
        };
        let (outbound, inbound) = (ctx(Direction::Outbound), ctx(Direction::Inbound));
        let listen_addrs = self.listen_addrs();
        let admin_state = Arc::new(admin::AdminState {
            metrics: self.metrics.clone(),
            config: self.config.clone(),
            startup: startup.clone(),
            mesh: self.mesh.clone(),
        });
        tracing::info!(
            admin = %self.config.admin_listen,
            workload = %self.config.workload,
            "admin server answering"
        );
        let listeners = (self.outbound.into_iter().map(|l| (l, outbound.clone())))
            .chain(self.inbound.into_iter().map(|l| (l, inbound.clone())))
            .collect();
        let traffic = serve_traffic(listeners, listen_addrs, &startup, &shutdown);
        let admin = serve_admin(self.admin, admin_state, shutdown.clone());
        let stopping = async {
            shutdown.signaled().await;
            startup.stopping();
        };
        // `traffic` first: a proxy with nothing to wait for serves before
        // its admin server has answered any `/ready`.
        tokio::join!(biased; traffic, admin, stopping);
    }

    /// Starts exporting request spans, if a collector is configured. A
    /// collector that cannot be reached is no reason not to serve: spans
    /// are then dropped and counted.
    fn start_tracing(&self, shutdown: &Shutdown) -> trace::Tracing {
        let started = trace::Tracing::start(
            self.config.trace.as_ref(),
            &self.config.workload,
            self.metrics.trace.clone(),
            shutdown,
        );
        started.unwrap_or_else(|e| {
            tracing::error!(error = %e, "tracing not started");
            trace::Tracing::OFF
        })
    }

    /// Starts the controller client, if there is a controller: the services
    /// it resolves, and the inbound policy the proxy awaits from it.
    fn start_discovery(
        &self,
        shutdown: &Shutdown,
    ) -> (Option<Arc<service::Services>>, Option<Arc<Awaited>>) {
        let Some(cc) = &self.config.controller else {
            return (None, None);
        };
        let discovery = match discovery::Discovery::new(
            &cc.addr,
            &cc.pod_namespace,
            self.metrics.traffic.discovery.clone(),
            shutdown.clone(),
        ) {
            Ok(d) => d,
            Err(e) => {
                // The config reader checked the address; this is a bug.
                tracing::error!(error = %e, "controller client not started");
                return (None, None);
            }
        };
        let policy = Awaited::new(format!("inbound policy from the controller at {}", cc.addr));
        tracing::info!(controller = %cc.addr, "waiting for the inbound policy");
        // The controller is the one source of policy (the configuration
        // refuses a policy file beside it).
        let mesh = self.mesh.clone();
        let (arrived, failed) = (policy.clone(), policy.clone());
        discovery.follow_inbound(
            cc.pod_name.clone(),
            move |p| {
                mesh.set_policy(p);
                arrived.arrived();
            },
            move |e| failed.failed(&e),
        );
        let balancer = traffic::balance::BalancerConfig {
            decay: cc.balancer_decay,
            ..Default::default()
        };
        let services = Arc::new(service::Services::new(discovery, balancer));
        (Some(services), Some(policy))
    }

    /// Starts obtaining and renewing the certificate, and watching the
    /// trust roots, if the proxy has an identity service: the certificate
    /// is then awaited.
    fn start_identity(&self, shutdown: &Shutdown) -> Option<Arc<Awaited>> {
        let identity = self.config.identity.as_ref()?;
        let creds = self.mesh.creds.clone()?;
        let certificate = Awaited::new(format!(
            "workload certificate for {} from the identity service at {}",
            creds.id(),
            identity.addr
        ));
        let stop = shutdown.clone();
        shutdown.spawn(tls::watch_roots(
            creds.roots().clone(),
            identity.trust_roots_file.clone(),
            FILE_POLL,
            async move { stop.signaled().await },
        ));
        tracing::info!(identity = %creds.id(), "waiting for a certificate");
        shutdown.spawn(identity::run(
            identity.clone(),
            creds,
            certificate.clone(),
            self.metrics.clone(),
            shutdown.clone(),
        ));
        Some(certificate)
    }
}

/// Serves no traffic before `startup`'s dependencies have arrived:
/// connections wait in the listeners' backlog meanwhile, and none is
/// served in plaintext for want of a certificate. Then accepts on every
/// listener until shutdown.
async fn serve_traffic(
    listeners: Vec<(TcpListener, Arc<ListenerContext>)>,
    listen_addrs: Vec<SocketAddr>,
    startup: &startup::Startup,
    shutdown: &Shutdown,
) {
    tokio::select! {
        () = startup.arrived() => {}
        () = shutdown.signaled() => return,
    }
    startup.serving();
    tracing::info!(listeners = ?listen_addrs, "proxy ready");
    let loops = listeners.into_iter().map(|(l, ctx)| accept_loop(l, ctx));
    futures_util::future::join_all(loops).await;
}

/// Serves the admin port until shutdown begins, guarded
/// ([`trellis_core::admin::guarded`]: only `/metrics`, `/live` and `/ready`
/// answer remote clients).
async fn serve_admin(listener: TcpListener, state: Arc<admin::AdminState>, shutdown: Shutdown) {
    let served = axum::serve(listener, trellis_core::admin::guarded(admin::router(state)))
        .with_graceful_shutdown(async move { shutdown.signaled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "admin server stopped");
    }
}

/// How often mesh files (roots, destinations, policy) are checked.
const FILE_POLL: std::time::Duration = std::time::Duration::from_secs(2);

impl Proxy {
    fn watch_files(&self, shutdown: &Shutdown) {
        for (path, last) in &self.files {
            let stop = shutdown.clone();
            let mesh = self.mesh.clone();
            let stop = async move { stop.signaled().await };
            if Some(path) == self.config.destinations_file.as_ref() {
                shutdown.spawn(mesh::watch_json(
                    path.clone(),
                    last.clone(),
                    FILE_POLL,
                    move |f| mesh.set_destinations(f).map(drop),
                    stop,
                ));
            } else {
                shutdown.spawn(mesh::watch_json(
                    path.clone(),
                    last.clone(),
                    FILE_POLL,
                    move |p| {
                        mesh.set_policy(p);
                        Ok(())
                    },
                    stop,
                ));
            }
        }
    }
}

/// Builds the proxy's view of the mesh from its config and files; any
/// error here stops start-up with a message naming the file.
/// A watched file and the content last read from it.
type WatchedFile = (PathBuf, Vec<u8>);

fn load_mesh(config: &Config) -> Result<(Mesh, Vec<WatchedFile>), mesh::MeshError> {
    let creds = match &config.identity {
        Some(id) => {
            let roots = Arc::new(tls::TrustRoots::load(&id.trust_roots_file)?);
            Some(Arc::new(tls::Credentials::new(id.id.clone(), roots)))
        }
        None => None,
    };
    let mesh = Mesh::new(creds, config.default_inbound_policy)?.with_outbound(
        plaintext::PlaintextPolicy::new(
            config.outbound_mtls,
            config.plaintext_destinations.clone(),
        ),
    );
    let mut files = Vec::new();
    if let Some(path) = &config.destinations_file {
        let (file, bytes) = mesh::read_json::<DestinationsFile>(path)?;
        mesh.set_destinations(file)
            .map_err(|reason| mesh::MeshError::Invalid {
                path: path.clone(),
                reason,
            })?;
        files.push((path.clone(), bytes));
    }
    if let Some(path) = &config.policy_file {
        let (policy, bytes) = mesh::read_json::<policy::Policy>(path)?;
        mesh.set_policy(policy);
        files.push((path.clone(), bytes));
    }
    Ok((mesh, files))
}

fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    listen(addr).map_err(|source| BindError { what, addr, source })
}

/// Binds `addr` and, as `ipv6` says, its IPv6 twin on the same port:
/// `[::1]` for a loopback address, `[::]` for the unspecified one.
fn bind_listeners(
    what: &'static str,
    addr: SocketAddr,
    ipv6: Ipv6Mode,
) -> Result<Vec<TcpListener>, BindError> {
    let first = bind(what, addr)?;
    let port = local_addr(&first).port();
    let mut out = vec![first];
    let twin = match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Some(SocketAddr::from((Ipv6Addr::LOCALHOST, port))),
        IpAddr::V4(ip) if ip.is_unspecified() => {
            Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        }
        _ => None,
    };
    let Some(twin) = twin else { return Ok(out) };
    if ipv6 == Ipv6Mode::Off {
        return Ok(out);
    }
    match listen(twin) {
        Ok(l) => out.push(l),
        Err(source) if ipv6 == Ipv6Mode::Auto => {
            tracing::info!(addr = %twin, error = %source, "no IPv6 listener: this host has no IPv6");
        }
        Err(source) => {
            return Err(BindError {
                what,
                addr: twin,
                source,
            })
        }
    }
    Ok(out)
}

/// Backlog of every listener: room for a burst of new connections.
const BACKLOG: i32 = 1024;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        // IPv4 has its own listener; an IPv6 one takes IPv6 only.
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    TcpListener::from_std(sock.into())
}

fn local_addr(l: &TcpListener) -> SocketAddr {
    // A bound listener always has a local address.
    l.local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

async fn accept_loop(listener: TcpListener, ctx: Arc<ListenerContext>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = ctx.shutdown.signaled() => return,
        };
        match accepted {
            Ok((stream, client)) => {
                let _ = stream.set_nodelay(true);
                let client = ClientAddr(client);
                // Every log line of the connection, and every request's
                // span, carries its id and client.
                let facts = trace::ConnFacts::next(client);
                let span = tracing::info_span!(
                    "conn",
                    id = facts.id,
                    client.addr = %client,
                    direction = ctx.direction.as_str()
                );
                let handled = conn::handle(ctx.clone(), stream, client);
                ctx.shutdown
                    .spawn(trace::conn_scope(facts, handled).instrument(span));
            }
            Err(e) => {
                // Out of file descriptors, or a connection reset before
                // accept: log, back off briefly, keep serving.
                tracing::warn!(direction = ctx.direction.as_str(), error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Drops idle HTTP/2 upstream connections every half idle timeout, until
/// shutdown or until the proxy's upstreams are gone.
async fn sweep_upstreams(
    upstreams: std::sync::Weak<upstream::Upstreams>,
    idle: std::time::Duration,
    shutdown: Shutdown,
) {
    let every = (idle / 2).max(std::time::Duration::from_secs(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.signaled() => return,
        }
        match upstreams.upgrade() {
            Some(u) => {
                u.sweep();
            }
            None => return,
        }
    }
}
