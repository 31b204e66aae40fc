//! The admin server (port 7197, plain HTTP): `/metrics` (OpenMetrics),
//! `/ready` (the namespace cache has synced and the webhook listener
//! serves), `/live`, `/config` (the variables and the injection settings),
//! from [`trellis_core::admin`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use trellis_core::admin;

use super::config::Config;
use super::metrics::Metrics;
use super::namespaces::Namespaces;
use crate::InjectorConfig;

pub(crate) struct AdminState {
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    pub injector: Arc<InjectorConfig>,
    pub namespaces: Arc<dyn Namespaces>,
    /// Set while the webhook listener serves.
    pub serving: Arc<AtomicBool>,
}

pub(crate) fn router(state: AdminState) -> axum::Router {
    let AdminState {
        metrics,
        config,
        injector,
        namespaces,
        serving,
    } = state;
    // Only paths and settings: no secret is part of either.
    let shown = serde_json::json!({
        "server": config.as_ref(),
        "injector": injector.as_ref(),
    });
    admin::Router::new(move || metrics.encode())
        .ready(move || {
            if !namespaces.synced() {
                Err("not ready: the namespace cache has not synced")
            } else if !serving.load(Ordering::Acquire) {
                Err("not ready: not serving")
            } else {
                Ok(())
            }
        })
        .config(Arc::new(shown))
        .into_router()
}
