//! The admission webhook: AdmissionReview v1 over HTTPS, answered from the
//! pure decision ([`crate::inject`]).
//!
//! ```text
//!  API server ──TLS 1.3──► server (POST /inject) ──► review::parse ──► namespaces::lookup ──► review::respond
//!                            │  body ≤ MAX_REVIEW_BYTES     │ (pure)       (reflector cache,        │ (pure: inject)
//!                            │                              ▼              bounded wait)            ▼
//!                            └───────────────◄──── review::reject ◄──── not a pod CREATE     AdmissionReview + JSONPatch
//! ```
//!
//! Modules, in the order a review meets them:
//! - `server`: the accept loop, the TLS handshake, HTTP/1.1 and h2, the
//!   bounded body read; one log event and one count per review;
//! - [`review`]: bytes → `AdmissionReview`, pure, every outcome answered
//!   with a review (never a 500);
//! - [`namespaces`]: the [`Namespaces`] cache (a kube-rs reflector of
//!   Namespaces' metadata, or a fixed map in tests);
//! - [`tls`]: the serving certificate from files, reloaded when they
//!   change;
//! - `admin`: `/metrics`, `/ready`, `/live`, `/config`;
//! - [`config`], [`metrics`].

pub mod config;
pub mod metrics;
pub mod namespaces;
pub mod review;
pub mod tls;

mod admin;
mod server;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustls::ServerConfig;
use tokio::net::TcpListener;
use trellis_core::service::{bind, BindError};
use trellis_core::shutdown::Shutdown;

pub use config::Config;
pub use metrics::Metrics;
pub use namespaces::{ClusterNamespaces, Namespaces, StaticNamespaces};
pub use server::INJECT_PATH;
pub use tls::ServingCert;

use crate::InjectorConfig;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("serving certificate: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("Kubernetes client: {0}")]
    Kubernetes(#[from] kube::Error),
}

/// Binds, loads the certificate, starts the namespace cache from the
/// cluster (the pod's service account, or the kubeconfig) and serves until
/// `shutdown`.
pub async fn run(
    config: Config,
    injector: InjectorConfig,
    shutdown: Shutdown,
) -> Result<(), StartError> {
    let webhook = Webhook::bind(config, injector).await?;
    let client = kube::Client::try_default().await?;
    let namespaces = ClusterNamespaces::start(client, webhook.metrics(), &shutdown);
    webhook.run(namespaces, shutdown).await;
    Ok(())
}

/// The webhook, bound and with its certificate loaded.
pub struct Webhook {
    config: Arc<Config>,
    injector: Arc<InjectorConfig>,
    metrics: Arc<Metrics>,
    cert: Arc<ServingCert>,
    tls: Arc<ServerConfig>,
    listener: TcpListener,
    addr: SocketAddr,
    admin: TcpListener,
    admin_addr: SocketAddr,
}

impl Webhook {
    /// Loads the serving certificate and binds both listeners; either
    /// failing fails start-up.
    pub async fn bind(config: Config, injector: InjectorConfig) -> Result<Self, StartError> {
        let cert = Arc::new(ServingCert::load(
            &config.tls_cert_file,
            &config.tls_key_file,
        )?);
        let tls = tls::server_config(cert.clone())?;
        let (listener, addr) = bind(config.listen).await?;
        let (admin, admin_addr) = bind(config.admin_listen).await?;
        let metrics = Arc::new(Metrics::new());
        metrics.set_cert_expiry(cert.not_after());
        Ok(Self {
            config: Arc::new(config),
            injector: Arc::new(injector),
            metrics,
            cert,
            tls,
            listener,
            addr,
            admin,
            admin_addr,
        })
    }

    /// The webhook listener's address (the real port when bound to `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves reviews, the admin endpoints and certificate reloads until
    /// `shutdown` begins; connections then finish their reviews (tracked
    /// by `shutdown`).
    pub async fn run(self, namespaces: Arc<dyn Namespaces>, shutdown: Shutdown) {
        let serving = Arc::new(AtomicBool::new(false));
        let admin = admin::router(admin::AdminState {
            metrics: self.metrics.clone(),
            config: self.config.clone(),
            injector: self.injector.clone(),
            namespaces: namespaces.clone(),
            serving: serving.clone(),
        });
        trellis_core::admin::serve(self.admin, admin, &shutdown);
        let reload_stop = shutdown.clone();
        shutdown.spawn(tls::watch(
            self.cert.clone(),
            self.metrics.clone(),
            self.config.reload_interval,
            async move { reload_stop.signaled().await },
        ));
        let handler = Arc::new(server::Handler {
            injector: self.injector.clone(),
            namespaces,
            metrics: self.metrics.clone(),
            max_review_bytes: self.config.max_review_bytes,
            namespace_wait: self.config.namespace_wait,
        });
        serving.store(true, Ordering::Release);
        tracing::info!(
            webhook = %self.addr,
            admin = %self.admin_addr,
            path = INJECT_PATH,
            capture_mode = self.injector.init.capture_mode.as_str(),
            "serving"
        );
        server::accept_loop(self.listener, self.tls, handler, shutdown).await;
        serving.store(false, Ordering::Release);
    }
}
