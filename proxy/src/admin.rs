//! The admin server (port 7191): `/metrics`, `/ready`, `/live`, `/config`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::config::Config;
use crate::metrics::Metrics;

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    /// Set once every listener is bound and serving; cleared on shutdown.
    pub ready: AtomicBool,
    pub mesh: Arc<crate::mesh::Mesh>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/config", get(config))
        .route("/identity", get(identity))
        .with_state(state)
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the
/// Prometheus text format for everyone else.
async fn metrics(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match s.metrics.encode() {
        Ok(text) if openmetrics => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::to_prometheus_text(&text),
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
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// This proxy's identity and current certificate; 503 until it has one,
/// 404 when it runs without identity.
async fn identity(State(s): State<Arc<AdminState>>) -> Response {
    let Some(creds) = &s.mesh.creds else {
        return (
            StatusCode::NOT_FOUND,
            "this proxy runs without identity (no TRELLIS_PROXY_IDENTITY_ADDR)\n",
        )
            .into_response();
    };
    match creds.info() {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "identity": creds.id().to_string(),
                "state": "pending",
            })),
        )
            .into_response(),
        Some(info) => axum::Json(serde_json::json!({
            "identity": creds.id().to_string(),
            "state": "ready",
            "serial": info.serial,
            "notBefore": unix(info.not_before),
            "notAfter": unix(info.not_after),
            "issuer": info.issuer_fingerprint,
            "trustRoots": creds.roots().fingerprint(),
        }))
        .into_response(),
    }
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn config(State(s): State<Arc<AdminState>>) -> Response {
    // Nothing in the proxy's config is secret yet; when credentials arrive
    // they are skipped in serialization.
    axum::Json(s.config.as_ref()).into_response()
}
