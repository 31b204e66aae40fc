//! The admin server (port 7195): `/metrics` (OpenMetrics), `/ready`,
//! `/live`, `/config`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

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

pub(crate) fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/config", get(config))
        .with_state(state)
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    match s.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed\n",
        )
            .into_response(),
    }
}

/// Ready while serving with an unexpired serving certificate.
async fn ready(State(s): State<Arc<AdminState>>) -> Response {
    let cert_ok = s.serving.not_after().is_some_and(|t| t > SystemTime::now());
    if s.ready.load(Ordering::Acquire) && cert_ok {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn config(State(s): State<Arc<AdminState>>) -> Response {
    // Only paths and settings: no secret is part of the config.
    axum::Json(s.config.as_ref()).into_response()
}
