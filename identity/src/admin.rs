//! The admin server (port 7195): `/metrics` (OpenMetrics), `/ready`,
//! `/live`, `/config`, from [`trellis_core::admin`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use trellis_core::admin;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::tls::ServingCert;

pub(crate) struct AdminState {
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    pub serving: Arc<ServingCert>,
    /// Set while the gRPC listener serves.
    pub ready: Arc<AtomicBool>,
}

pub(crate) fn router(state: AdminState) -> axum::Router {
    let AdminState {
        metrics,
        config,
        serving,
        ready,
    } = state;
    admin::Router::new(move || metrics.encode())
        .ready(move || {
            // Ready while serving with an unexpired serving certificate.
            let cert_ok = serving.not_after().is_some_and(|t| t > SystemTime::now());
            if ready.load(Ordering::Acquire) && cert_ok {
                Ok(())
            } else {
                Err("not ready")
            }
        })
        // Only paths and settings: no secret is part of the config.
        .config(config)
        .into_router()
}
