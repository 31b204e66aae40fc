//! The admin server (port 7196): `/metrics` (OpenMetrics), `/ready` (the
//! source's first complete state is in and gRPC serves), `/live`,
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
    admin::Router::new(move || metrics.encode())
        .ready(move || ready(&ready_store, &serving))
        .config(config)
        .into_router()
        .merge(
            Router::new()
                .route("/routes", get(routes))
                .route("/warnings", get(warnings))
                .with_state(store),
        )
}

fn ready(store: &Store, serving: &AtomicBool) -> Result<(), &'static str> {
    if !store.current().synced {
        Err("not ready: the source has not delivered a complete state yet")
    } else if !serving.load(Ordering::Acquire) {
        Err("not ready: not serving")
    } else {
        Ok(())
    }
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
