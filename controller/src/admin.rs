//! The admin server (port 7196): `/metrics` (OpenMetrics), `/ready` (the
//! source's first complete state is in and gRPC serves), `/live`,
//! `/config`, `/routes` (every route, the services it attaches to, its
//! warnings) and `/warnings` (every bad value the controller worked
//! around).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;

pub(crate) struct AdminState {
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    /// Set while the gRPC listener serves.
    pub serving: Arc<AtomicBool>,
}

pub(crate) fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/config", get(config))
        .route("/routes", get(routes))
        .route("/warnings", get(warnings))
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
    let synced = s.store.current().synced;
    if synced && s.serving.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else if !synced {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the source has not delivered a complete state yet\n",
        )
            .into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: not serving\n").into_response()
    }
}

async fn config(State(s): State<Arc<AdminState>>) -> Response {
    axum::Json(s.config.as_ref()).into_response()
}

async fn routes(State(s): State<Arc<AdminState>>) -> Response {
    let snap = s.store.current();
    axum::Json(serde_json::json!({
        "version": snap.version,
        "routes": snap.route_summaries(),
    }))
    .into_response()
}

async fn warnings(State(s): State<Arc<AdminState>>) -> Response {
    let snap = s.store.current();
    axum::Json(serde_json::json!({
        "version": snap.version,
        "warnings": snap.problems(),
    }))
    .into_response()
}
