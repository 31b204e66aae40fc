//! Where the controller's objects come from: one small trait at the IO
//! edge, two implementations feeding the same [`Store`].
//!
//! - [`kubernetes`]: watches of the API server (kube-rs watchers; the store
//!   is their cache);
//! - [`file`]: a file of Kubernetes objects (the local mesh writes one),
//!   re-read when it changes.

pub mod file;
pub mod kubernetes;

use std::future::Future;
use std::sync::Arc;

use trellis_core::shutdown::Shutdown;

pub use file::FileSource;
pub use kubernetes::KubernetesSource;

use crate::metrics::Metrics;
use crate::store::Store;

/// Feeds a [`Store`]: first a complete state (then [`Store::set_synced`]),
/// then every change, until shutdown. Failures are the source's to log,
/// count and retry: the store keeps the last good state meanwhile.
pub trait Source: Send + 'static {
    /// `kubernetes` or `file` (logs and the `source` metric label).
    fn name(&self) -> &'static str;
    fn run(
        self,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> impl Future<Output = ()> + Send;
}

/// The source the configuration names.
pub enum AnySource {
    Kubernetes(KubernetesSource),
    File(FileSource),
}

impl Source for AnySource {
    fn name(&self) -> &'static str {
        match self {
            Self::Kubernetes(s) => s.name(),
            Self::File(s) => s.name(),
        }
    }

    async fn run(self, store: Arc<Store>, metrics: Arc<Metrics>, shutdown: Shutdown) {
        match self {
            Self::Kubernetes(s) => s.run(store, metrics, shutdown).await,
            Self::File(s) => s.run(store, metrics, shutdown).await,
        }
    }
}
