//! `trellis-proxy`: the Trellis sidecar.
//!
//! iptables (installed by [`init`]) redirects a pod's TCP: its own outgoing
//! connections to the outbound listener (127.0.0.1:7140), connections to it
//! to the inbound listener (0.0.0.0:7143). Each accepted connection runs
//! through the phases of [`conn`]: accept (original destination, loop
//! check) → detect (HTTP/1, HTTP/2, TLS, or opaque) → forward (HTTP via
//! [`http`], opaque TCP via [`io`]) → record ([`metrics`], access log).
//! The admin server ([`admin`], port 7191) serves `/metrics`, `/ready`,
//! `/live` and `/config`.
//!
//! [`Proxy::bind`] binds every listener eagerly (a bind error fails start-up);
//! [`Proxy::run`] serves until the [`Shutdown`] begins, then stops accepting
//! and lets connections finish.

pub mod admin;
pub mod config;
pub mod conn;
pub mod detect;
pub mod error;
pub mod http;
pub mod init;
pub mod io;
pub mod metrics;
pub mod orig_dst;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use trellis_core::addr::ClientAddr;
use trellis_core::shutdown::Shutdown;

pub use config::Config;
use conn::ListenerContext;
use metrics::{Direction, Label, Metrics};
use orig_dst::OrigDstLookup;

#[derive(Debug, thiserror::Error)]
#[error("binding the {what} listener on {addr}: {source}")]
pub struct BindError {
    what: &'static str,
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// A proxy whose listeners are bound.
pub struct Proxy {
    config: Arc<Config>,
    orig_dst: Arc<dyn OrigDstLookup>,
    metrics: Arc<Metrics>,
    outbound: TcpListener,
    inbound: TcpListener,
    admin: TcpListener,
}

impl Proxy {
    pub async fn bind(config: Config, orig_dst: Arc<dyn OrigDstLookup>) -> Result<Self, BindError> {
        async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { what, addr, source })
        }
        Ok(Self {
            outbound: bind("outbound", config.outbound_listen).await?,
            inbound: bind("inbound", config.inbound_listen).await?,
            admin: bind("admin", config.admin_listen).await?,
            config: Arc::new(config),
            orig_dst,
            metrics: Arc::new(Metrics::new()),
        })
    }

    pub fn outbound_addr(&self) -> SocketAddr {
        local_addr(&self.outbound)
    }
    pub fn inbound_addr(&self) -> SocketAddr {
        local_addr(&self.inbound)
    }
    pub fn admin_addr(&self) -> SocketAddr {
        local_addr(&self.admin)
    }

    /// Serves until `shutdown` begins; then stops accepting. Connections
    /// already open are tracked by `shutdown`, whose `drained` waits for them.
    pub async fn run(self, shutdown: Shutdown) {
        let upstreams = Arc::new(upstream::Upstreams::new(
            self.config.connect_timeout,
            self.config.pool_idle_timeout,
        ));
        let own_ports = vec![self.outbound_addr().port(), self.inbound_addr().port()];
        let ctx = |direction| {
            Arc::new(ListenerContext {
                direction,
                config: self.config.clone(),
                orig_dst: self.orig_dst.clone(),
                upstreams: upstreams.clone(),
                metrics: self.metrics.clone(),
                shutdown: shutdown.clone(),
                own_ports: own_ports.clone(),
                default_route: Label::new("default"),
                no_peer: Label::new(""),
            })
        };
        let outbound = accept_loop(self.outbound, ctx(Direction::Outbound));
        let inbound = accept_loop(self.inbound, ctx(Direction::Inbound));

        let admin_state = Arc::new(admin::AdminState {
            metrics: self.metrics.clone(),
            config: self.config.clone(),
            ready: false.into(),
        });
        let admin_shutdown = shutdown.clone();
        let admin = axum::serve(self.admin, admin::router(admin_state.clone()))
            .with_graceful_shutdown(async move { admin_shutdown.signaled().await });
        admin_state.ready.store(true, Ordering::Release);
        tracing::info!(
            outbound = %self.config.outbound_listen,
            inbound = %self.config.inbound_listen,
            admin = %self.config.admin_listen,
            workload = %self.config.workload,
            "proxy ready"
        );
        let not_ready = {
            let s = shutdown.clone();
            let st = admin_state.clone();
            async move {
                s.signaled().await;
                st.ready.store(false, Ordering::Release);
            }
        };
        let (_, _, admin_result, _) = tokio::join!(outbound, inbound, admin, not_ready);
        if let Err(e) = admin_result {
            tracing::warn!(error = %e, "admin server stopped");
        }
    }
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
                ctx.shutdown
                    .spawn(conn::handle(ctx.clone(), stream, ClientAddr(client)));
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
