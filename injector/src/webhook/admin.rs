//! The admin server (port 7197, plain HTTP): `/metrics` (OpenMetrics),
//! `/ready` (the namespace cache has synced and the webhook listener
//! serves), `/live`, `/config` (the variables and the injection settings).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

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

async fn ready(State(s): State<Arc<AdminState>>) -> Response {
    if !s.namespaces.synced() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the namespace cache has not synced\n",
        )
            .into_response()
    } else if !s.serving.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: not serving\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

/// Only paths and settings: no secret is part of either.
async fn config(State(s): State<Arc<AdminState>>) -> Response {
    axum::Json(serde_json::json!({
        "server": s.config.as_ref(),
        "injector": s.injector.as_ref(),
    }))
    .into_response()
}
