//! The admin server (port 7196): `/metrics` (OpenMetrics), `/ready` (the
//! source's first complete state is in and gRPC serves; the body then
//! names every failing Kubernetes watch, one line each:
//! `watch failing: RESOURCE (WATCHER): REASON`), `/live`,
//! `/config` (from [`trellis_core::admin`]), and the controller's own
//! `/routes` (every route, the services it attaches to, its warnings) and
//! `/warnings` (every bad value the controller worked around).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use trellis_core::admin;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::watches::Watches;

pub(crate) struct AdminState {
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    /// Set while the gRPC listener serves.
    pub serving: Arc<AtomicBool>,
}

pub(crate) fn router(state: AdminState) -> Router {
    let AdminState {
        metrics,
        config,
        store,
        serving,
    } = state;
    let ready_store = store.clone();
    let watches = metrics.watches().clone();
    admin::Router::new(move || metrics.encode())
        .ready_report(move || ready(&ready_store, &serving, &watches))
        .config(config)
        .into_router()
        .merge(
            Router::new()
                .route("/routes", get(routes))
                .route("/warnings", get(warnings))
                .with_state(store),
        )
}

/// Ready once the source's first complete state is in and gRPC serves. A
/// watch failing after that keeps the controller ready (proxies get the
/// last good state, which beats no controller at all) and is named in the
/// body, as it is before.
pub(crate) fn ready(
    store: &Store,
    serving: &AtomicBool,
    watches: &Watches,
) -> Result<String, String> {
    let verdict = if !store.current().synced {
        Err("not ready: the source has not delivered a complete state yet")
    } else if !serving.load(Ordering::Acquire) {
        Err("not ready: not serving")
    } else {
        Ok("ready")
    };
    let with_notes = |first: &str| {
        std::iter::once(first.to_string())
            .chain(watches.report())
            .collect::<Vec<_>>()
            .join("\n")
    };
    verdict.map(with_notes).map_err(with_notes)
}

async fn routes(State(store): State<Arc<Store>>) -> Response {
    let snap = store.current();
    axum::Json(serde_json::json!({
        "version": snap.version,
        "routes": snap.route_summaries(),
    }))
    .into_response()
}

async fn warnings(State(store): State<Arc<Store>>) -> Response {
    let snap = store.current();
    axum::Json(serde_json::json!({
        "version": snap.version,
        "warnings": snap.problems(),
    }))
    .into_response()
}
