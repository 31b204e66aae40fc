//! Running the identity service. [`Server::bind`] does everything that can
//! fail at start — load and validate the issuer, issue the serving
//! certificate, bind both listeners — so a bad start is reported before
//! anything is served. [`Server::run`] then serves until shutdown:
//!
//! - gRPC over TLS 1.3: an accept loop runs each TLS handshake in its own
//!   task (bounded by a timeout) and hands finished streams to tonic;
//! - the admin server;
//! - maintenance: every reload interval, re-read the issuer/roots and the
//!   verifier's files (new verification keys empty the refusal cache); renew the serving certificate at two thirds of its
//!   life, or at once when the issuer changes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::Connected;
use trellis_core::service::{bind, BindError};
use trellis_core::shutdown::Shutdown;
use trellis_core::spiffe::{SpiffeId, SpiffeIdError};

use crate::admission::Admission;
use crate::ca::{CaError, CaStore};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::service::Certifier;
use crate::tls::{server_config, ServingCert, TlsError};
use crate::token::TokenVerifier;

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest gRPC request accepted (a CSR plus a token are a few KiB).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("refusing to start: {0}")]
    Ca(#[from] CaError),
    #[error("refusing to start: this service's own identity: {0}")]
    Identity(#[from] SpiffeIdError),
    #[error("refusing to start: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("token verifier: {0}")]
    Verifier(String),
}

#[derive(Debug, thiserror::Error)]
#[error("gRPC server: {0}")]
pub struct ServeError(#[from] tonic::transport::Error);

/// The identity service, bound and ready to run.
pub struct Server<V> {
    config: Arc<Config>,
    ca: Arc<CaStore>,
    verifier: Arc<V>,
    metrics: Arc<Metrics>,
    serving: Arc<ServingCert>,
    tls: Arc<ServerConfig>,
    grpc: TcpListener,
    grpc_addr: SocketAddr,
    admin: TcpListener,
    admin_addr: SocketAddr,
}

impl<V: TokenVerifier> Server<V> {
    /// Loads the CA (refusing an unusable issuer, with the reason), issues
    /// the serving certificate and binds the listeners.
    pub async fn bind(config: Config, verifier: V) -> Result<Self, StartError> {
        let now = SystemTime::now();
        let ca = Arc::new(CaStore::load(config.issuer_files(), now)?);
        let issuer = ca.current();
        let metrics = Arc::new(Metrics::new());
        metrics.set_issuer_expiry(issuer.not_after_unix());
        let serving = Arc::new(ServingCert::new(config.server_identity()?));
        let leaf = serving.renew(&issuer, &config.sign_policy(), now)?;
        metrics.set_serving_expiry(leaf.not_after_unix());
        let tls = server_config(serving.clone())?;
        let (grpc, grpc_addr) = bind(config.listen).await?;
        let (admin, admin_addr) = bind(config.admin_listen).await?;
        tracing::info!(
            issuer = issuer.subject(),
            issuer.not_after = issuer.not_after_unix(),
            roots = issuer.roots().len(),
            identity = %serving.identity(),
            "CA loaded"
        );
        Ok(Self {
            config: Arc::new(config),
            ca,
            verifier: Arc::new(verifier),
            metrics,
            serving,
            tls,
            grpc,
            grpc_addr,
            admin,
            admin_addr,
        })
    }

    /// The gRPC listener's address (the real port when bound to `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The SPIFFE ID of the serving certificate; clients expect it.
    pub fn server_identity(&self) -> &SpiffeId {
        self.serving.identity()
    }

    /// The current trust roots.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.ca.current().roots().to_vec()
    }

    /// Serves until `shutdown` begins, then lets in-flight requests finish.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ServeError> {
        let ready = Arc::new(AtomicBool::new(false));
        let admin = crate::admin::router(crate::admin::AdminState {
            metrics: self.metrics.clone(),
            config: self.config.clone(),
            serving: self.serving.clone(),
            ready: ready.clone(),
        });
        trellis_core::admin::serve(self.admin, admin, &shutdown);
        let admission = Arc::new(Admission::new(self.config.limits()));
        shutdown.spawn(maintain(
            self.ca.clone(),
            self.verifier.clone(),
            admission.clone(),
            self.serving.clone(),
            self.metrics.clone(),
            self.config.clone(),
            shutdown.clone(),
        ));
        let (tx, mut rx) = mpsc::channel::<io::Result<TlsConn>>(64);
        shutdown.spawn(accept_loop(
            self.grpc,
            self.tls,
            tx,
            self.metrics.clone(),
            shutdown.clone(),
        ));
        let incoming = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let certifier = Certifier::new(
            self.verifier,
            self.ca,
            &self.config.trust_domain,
            self.config.sign_policy(),
            admission,
            self.metrics,
        );
        let service = trellis_api::IdentityServer::new(certifier)
            .max_decoding_message_size(MAX_REQUEST_BYTES);
        ready.store(true, Ordering::Release);
        tracing::info!(grpc = %self.grpc_addr, admin = %self.admin_addr, "serving");
        let signal = shutdown.clone();
        let result = tonic::transport::Server::builder()
            .timeout(Duration::from_secs(30))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move { signal.signaled().await })
            .await;
        ready.store(false, Ordering::Release);
        result.map_err(ServeError)
    }
}

/// The client's address, in each request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// A server-side TLS stream that tonic can serve.
pub(crate) struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerAddr;
    fn connect_info(&self) -> PeerAddr {
        PeerAddr(self.peer)
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Accepts connections until shutdown; each handshake runs in its own
/// task so a slow client cannot hold up others.
async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    tx: mpsc::Sender<io::Result<TlsConn>>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.signaled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: pause, don't spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = shutdown.signaled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
        shutdown.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(TlsConn { stream, peer })).await;
                }
                Ok(Err(e)) => {
                    metrics.handshake_failed();
                    tracing::debug!(client.addr = %peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    metrics.handshake_failed();
                    tracing::debug!(client.addr = %peer, "TLS handshake timed out");
                }
            }
        });
    }
}

/// Reloads files at each interval and renews the serving certificate.
async fn maintain<V: TokenVerifier>(
    ca: Arc<CaStore>,
    verifier: Arc<V>,
    admission: Arc<Admission>,
    serving: Arc<ServingCert>,
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    shutdown: Shutdown,
) {
    let policy = config.sign_policy();
    let mut tick = tokio::time::interval(config.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; files were just read
    loop {
        let renew_in = serving
            .not_after()
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .map_or(Duration::ZERO, |left| {
                left.saturating_sub(policy.lifetime / 3)
            });
        let renew = tokio::select! {
            _ = shutdown.signaled() => break,
            _ = tokio::time::sleep(renew_in) => true,
            _ = tick.tick() => reload(&ca, verifier.as_ref(), &admission, &metrics),
        };
        if renew {
            let issuer = ca.current();
            match serving.renew(&issuer, &policy, SystemTime::now()) {
                Ok(leaf) => {
                    metrics.set_serving_expiry(leaf.not_after_unix());
                    tracing::info!(serial = %leaf.serial, not_after = leaf.not_after_unix(), "serving certificate renewed");
                }
                Err(e) => {
                    // The current certificate stays; the next tick retries.
                    tracing::error!(error = %e, "renewing the serving certificate failed");
                    tokio::select! {
                        _ = shutdown.signaled() => break,
                        _ = tick.tick() => {}
                    }
                }
            }
        }
    }
}

/// One reload pass. Returns whether the issuer changed (so the serving
/// certificate must be renewed by the new one).
fn reload<V: TokenVerifier>(
    ca: &CaStore,
    verifier: &V,
    admission: &Admission,
    metrics: &Metrics,
) -> bool {
    let issuer_changed = match ca.reload(SystemTime::now()) {
        Ok(true) => {
            let issuer = ca.current();
            metrics.reloaded("issuer", true);
            metrics.set_issuer_expiry(issuer.not_after_unix());
            tracing::info!(
                issuer = issuer.subject(),
                issuer.not_after = issuer.not_after_unix(),
                roots = issuer.roots().len(),
                "new issuer or roots taken"
            );
            true
        }
        Ok(false) => false,
        Err(e) => {
            metrics.reloaded("issuer", false);
            tracing::warn!(error = %e, "issuer or roots refused; keeping the current ones");
            false
        }
    };
    match verifier.refresh() {
        Ok(true) => {
            metrics.reloaded("jwks", true);
            // A token refused for a key the old file lacked may verify now.
            admission.refusals.clear();
            tracing::info!("new token verification keys taken");
        }
        Ok(false) => {}
        Err(e) => {
            metrics.reloaded("jwks", false);
            tracing::warn!(error = %e, "token verification keys refused; keeping the current ones");
        }
    }
    issuer_changed
}
