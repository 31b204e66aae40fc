//! The admin server (port 7191): `/metrics`, `/ready`, `/live`, `/config`
//! (from [`trellis_core::admin`]), and the proxy's own `/identity`.
//!
//! It answers from the moment the proxy starts, before the certificate and
//! the inbound policy have arrived: `/live` 200, `/ready` 503 naming what
//! the proxy still waits for ([`crate::startup`]), `/identity` why there is
//! no certificate yet.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use trellis_core::admin;
use trellis_core::contract::proxy_env;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::startup::Startup;

/// Every path the admin server answers: [`trellis_core::admin`]'s four and
/// `/identity`. README, ARCHITECTURE.md and `--help` (the admin listen
/// variable) list them all; tests check both the docs and the router.
pub const PATHS: [&str; 5] = ["/metrics", "/ready", "/live", "/config", "/identity"];

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    /// What the proxy still waits for; `/ready` answers from it.
    pub startup: Arc<Startup>,
    pub mesh: Arc<crate::mesh::Mesh>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    let metrics = state.metrics.clone();
    let startup = state.startup.clone();
    admin::Router::new(move || metrics.encode())
        // OpenMetrics for scrapers that ask for it (Prometheus does), the
        // Prometheus text format for everyone else.
        .prometheus_text_fallback()
        .ready(move || startup.check())
        // Nothing in the proxy's config is secret yet; when credentials
        // arrive they are skipped in serialization.
        .config(state.config.clone())
        .into_router()
        .merge(
            Router::new()
                .route("/identity", get(identity))
                .with_state(state),
        )
}

/// This proxy's identity and current certificate; 503 until it has one
/// (`state: pending`, with where it asks and the last error), 404 when it
/// runs without identity.
async fn identity(State(s): State<Arc<AdminState>>) -> Response {
    let Some(creds) = &s.mesh.creds else {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "this proxy runs without identity (no {})\n",
                proxy_env::IDENTITY_ADDR
            ),
        )
            .into_response();
    };
    match creds.info() {
        None => {
            let awaited = s.startup.certificate.as_ref();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({
                    "identity": creds.id().to_string(),
                    "state": "pending",
                    "identityService": s.config.identity.as_ref().map(|i| &i.addr),
                    "lastError": awaited.and_then(|a| a.last_error()),
                })),
            )
                .into_response()
        }
        Some(info) => axum::Json(serde_json::json!({
            "identity": creds.id().to_string(),
            "state": "ready",
            "serial": info.serial,
            "notBefore": unix(info.not_before),
            "notAfter": unix(info.not_after),
            "issuer": info.issuer_fingerprint,
            "key": info.key_fingerprint,
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
