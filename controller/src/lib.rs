//! `trellis-controller`: tells proxies where services live, who their
//! endpoints are, which routes, timeouts and retries apply, and each pod's
//! inbound policy — the `trellis.discovery.v1.Discovery` gRPC service,
//! every RPC a stream of complete snapshots.
//!
//! ```text
//!  source ──► store ──► publisher ──► watch<Arc<Snapshot>> ──► answers ──► one task per stream:
//!  (kubernetes    (objects   (Snapshot::next:      (one per distinct      follows its question's
//!   watchers,      by kind,   the last one's        question, computed     answer, sent when it
//!   or a file)     projected) lookups kept for      again when a topic     differs from the last
//!                             unchanged kinds)      it read changed)       one sent
//! ```
//!
//! Modules, in the order data meets them:
//! - [`source`]: the [`Source`](source::Source) trait and its two
//!   implementations, [`source::KubernetesSource`] (kube-rs watchers of
//!   Namespaces, Pods, Services, EndpointSlices, HTTPRoutes, GRPCRoutes,
//!   AuthorizationPolicies) and [`source::FileSource`] (a file of the same
//!   objects, as the local mesh writes it);
//! - [`objects`]: the objects, projected as they arrive to what the index
//!   reads; [`store`]: the objects, and the snapshots published on each change;
//! - [`index`]: pure functions from a snapshot to a `Resolution` or an
//!   `InboundPolicy`, and the warnings (bad annotation values) found;
//! - the shared answers (`answers.rs`): one per distinct question, kept
//!   up to date by what it read (`index::reads`);
//! - the gRPC service (`service.rs`), the admin server (`admin.rs`:
//!   `/metrics`, `/ready`, `/live`, `/config`, `/routes`, `/warnings`);
//! - [`roots`]: the trust roots distributor (Kubernetes source only): a
//!   copy of the trust roots ConfigMap in every namespace that may hold
//!   injected pods, kept current, owned by the chart's ClusterRole so
//!   that `helm uninstall` removes them;
//! - [`status`]: the route status writer (Kubernetes source only): each
//!   HTTPRoute's and GRPCRoute's `status.parents` entries for its Service
//!   parents (`Accepted`, `ResolvedRefs`, `PartiallyInvalid`);
//! - [`watches`]: every Kubernetes watch's retries (the workspace's
//!   backoff, [`trellis_core::backoff`]) and health, logged once per
//!   change of state, in the metrics and at `/ready`;
//! - [`crd`]: the `policy.trellis.dev/v1alpha1` `AuthorizationPolicy`
//!   resource and its CRD ([`crd::crd_yaml`], `trellis-controller crd`);
//! - [`config`], [`metrics`], [`cli`].
//!
//! Known gap: the gRPC listener is plaintext HTTP/2. In the local mesh it
//! listens on the node namespace's bridge, reachable only from the mesh's
//! own pods; in a cluster anything that can reach the pod can read the
//! mesh's topology (never secrets: no keys or tokens travel on it).
//! Serving it over TLS with a certificate from `trellis-identity` (the
//! proxies verifying the controller's SPIFFE ID, as they do the identity
//! service's) is the follow-up.

// `println!`/`eprintln!` panic on a closed pipe: print through
// trellis_core::{out, outln, errln}.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod cli;
pub mod config;
pub mod crd;
pub mod index;
pub mod metrics;
pub mod objects;
pub mod roots;
pub mod source;
pub mod status;
pub mod store;
pub mod watches;

mod admin;
mod answers;
#[cfg(test)]
mod scale;
mod service;
#[cfg(test)]
mod test_logs;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use trellis_api::discovery::v1::discovery_server::DiscoveryServer;
use trellis_core::service::{bind, BindError};
use trellis_core::shutdown::Shutdown;

pub use config::Config;
pub use index::Snapshot;
use metrics::Metrics;
use source::{AnySource, FileSource, KubernetesSource, Source};
use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("Kubernetes client: {0}")]
    Kubernetes(#[from] kube::Error),
    #[error("{0}")]
    Config(String),
}

#[derive(Debug, thiserror::Error)]
#[error("gRPC server: {0}")]
pub struct ServeError(#[from] tonic::transport::Error);

/// Either failure of [`run`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// The source the configuration names: a file source, or a Kubernetes
/// client from the pod's service account (or the kubeconfig).
pub async fn source_from_config(config: &Config) -> Result<AnySource, StartError> {
    match config.source {
        config::SourceKind::File => {
            let path = config
                .file
                .as_ref()
                .ok_or_else(|| StartError::Config("no objects file configured".into()))?;
            Ok(AnySource::File(FileSource::new(
                path,
                config.file_poll_interval,
            )))
        }
        config::SourceKind::Kubernetes => Ok(AnySource::Kubernetes(
            KubernetesSource::from_environment().await?,
        )),
    }
}

/// Binds, starts the configured source (and, with the Kubernetes source,
/// the route status writer and the trust roots distributor) and serves
/// until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let source = source_from_config(&config).await?;
    let roots = config.distribute_trust_roots.then(|| config.trust_roots());
    let controller = Controller::bind(config).await?;
    if let AnySource::Kubernetes(k) = &source {
        let writer = status::StatusWriter::new(k.client().clone(), controller.metrics());
        shutdown.spawn(writer.run(controller.store(), shutdown.clone()));
    }
    match (&source, roots) {
        (AnySource::Kubernetes(k), Some(settings)) => {
            let distributor =
                roots::Distributor::new(k.client().clone(), settings, controller.metrics());
            shutdown.spawn(distributor.run(shutdown.clone()));
        }
        (AnySource::Kubernetes(_), None) => {
            tracing::info!("trust roots distribution disabled");
        }
        (AnySource::File(_), _) => {}
    }
    controller.run(source, shutdown).await?;
    Ok(())
}

/// The controller, bound and ready to run.
pub struct Controller {
    config: Arc<Config>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    grpc: TcpListener,
    grpc_addr: SocketAddr,
    admin: TcpListener,
    admin_addr: SocketAddr,
}

impl Controller {
    /// Binds both listeners (a bind error fails start-up).
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let (grpc, grpc_addr) = bind(config.listen).await?;
        let (admin, admin_addr) = bind(config.admin_listen).await?;
        Ok(Self {
            store: Store::new(config.settings()),
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()),
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

    /// The store the source feeds (the route status writer follows it).
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// The snapshots as they are published.
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.store.subscribe()
    }

    /// Runs `source` into the store and serves until `shutdown` begins.
    pub async fn run<S: Source>(self, source: S, shutdown: Shutdown) -> Result<(), ServeError> {
        let serving = Arc::new(AtomicBool::new(false));
        let admin = admin::router(admin::AdminState {
            metrics: self.metrics.clone(),
            config: self.config.clone(),
            store: self.store.clone(),
            serving: serving.clone(),
        });
        trellis_core::admin::serve(self.admin, admin, &shutdown);
        shutdown.spawn(publish(
            self.store.clone(),
            self.metrics.clone(),
            shutdown.clone(),
        ));
        tracing::info!(source = source.name(), "source starting");
        shutdown.spawn(source.run(self.store.clone(), self.metrics.clone(), shutdown.clone()));

        let answers = answers::Answers::new(self.store.current(), self.metrics.clone());
        shutdown.spawn(answers.clone().run(self.store.clone(), shutdown.clone()));
        let service = service::DiscoveryService {
            answers,
            metrics: self.metrics.clone(),
            shutdown: shutdown.clone(),
        };
        let incoming = TcpIncoming::from(self.grpc).with_nodelay(Some(true));
        serving.store(true, Ordering::Release);
        tracing::info!(grpc = %self.grpc_addr, admin = %self.admin_addr, "serving (gRPC is plaintext)");
        let signal = shutdown.clone();
        let result = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(DiscoveryServer::new(service))
            .serve_with_incoming_shutdown(incoming, async move { signal.signaled().await })
            .await;
        serving.store(false, Ordering::Release);
        result.map_err(ServeError)
    }
}

/// Publishes a snapshot after each change of the store (changes made
/// while one is built go into the next), and reports the warnings that
/// are new in it: logged once per object version, counted once per object
/// version, listed at `/warnings` while they last.
async fn publish(store: Arc<Store>, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let mut known: BTreeSet<(index::Problem, Option<String>)> = BTreeSet::new();
    loop {
        tokio::select! {
            () = shutdown.signaled() => return,
            () = store.changed() => {}
        }
        let snap = store.publish();
        metrics.published(&snap);
        let now = snap.versioned_problems();
        for (p, version) in now.difference(&known) {
            tracing::warn!(
                kind = p.kind.as_str(),
                namespace = %p.namespace,
                name = %p.name,
                resource_version = version.as_deref().unwrap_or(""),
                annotation = p.field,
                value = %p.value,
                "{}",
                p.message
            );
            metrics.annotation_error(p);
        }
        known = now;
        tracing::debug!(
            version = snap.version,
            synced = snap.synced,
            "snapshot published"
        );
    }
}
