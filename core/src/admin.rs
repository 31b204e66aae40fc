//! The admin endpoints every binary serves on its admin port (plain HTTP):
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | 200, OpenMetrics text; 500 `metrics encoding failed` |
//! | `/ready` | 200 `ready` (and any notes the check adds); 503 with the reason the check gives |
//! | `/live` | 200 `live` |
//! | `/config` | 200, the config as JSON |
//!
//! [`Router`] builds them; a binary merges its own endpoints (the
//! controller's `/routes`, the proxy's `/identity`) into the axum router
//! it returns, and [`serve`] runs it as a task of the [`Shutdown`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;
use crate::telemetry::to_prometheus_text;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

type Encode = Arc<dyn Fn() -> Result<String, fmt::Error> + Send + Sync>;
/// `Ok(body)`: 200; `Err(body)`: 503.
type Check = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Builds the admin endpoints: `Router::new(encode).ready(check).config(config)`,
/// then [`Router::into_router`].
pub struct Router {
    encode: Encode,
    prometheus_text: bool,
    ready: Check,
    config: axum::Router,
}

impl Router {
    /// `/metrics` answers with what `encode` returns (OpenMetrics text),
    /// `/live` with `live`, and `/ready` with `ready` until [`Router::ready`]
    /// gives a check.
    pub fn new(encode: impl Fn() -> Result<String, fmt::Error> + Send + Sync + 'static) -> Self {
        Self {
            encode: Arc::new(encode),
            prometheus_text: false,
            ready: Arc::new(|| Ok("ready".into())),
            config: axum::Router::new(),
        }
    }

    /// `/metrics` in OpenMetrics only to scrapers whose `Accept` asks for it
    /// (Prometheus does); everyone else gets the Prometheus text format 0.0.4.
    pub fn prometheus_text_fallback(mut self) -> Self {
        self.prometheus_text = true;
        self
    }

    /// `/ready` runs `check`: `Ok` is 200 `ready`, `Err(line)` is 503 with
    /// `line` (e.g. `not ready: not serving`, or a reason made at the time
    /// of the request) as the body.
    pub fn ready<E: Into<Cow<'static, str>>>(
        mut self,
        check: impl Fn() -> Result<(), E> + Send + Sync + 'static,
    ) -> Self {
        self.ready = Arc::new(move || {
            check()
                .map(|()| "ready".to_string())
                .map_err(|e| e.into().into_owned())
        });
        self
    }

    /// `/ready` runs `check`, whose answer is the whole body: `Ok(body)` is
    /// 200 (the body's first line `ready`, then notes such as what is
    /// degraded), `Err(body)` is 503 (its first line the reason).
    pub fn ready_report(
        mut self,
        check: impl Fn() -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        self.ready = Arc::new(check);
        self
    }

    /// `/config` answers with `config` as JSON. Only what may be shown:
    /// a secret must be skipped in its serialization.
    pub fn config<T: Serialize + Send + Sync + 'static>(mut self, config: Arc<T>) -> Self {
        self.config = axum::Router::new().route(
            "/config",
            get(move || {
                let config = config.clone();
                async move { axum::Json(config.as_ref()).into_response() }
            }),
        );
        self
    }

    /// The axum router; a binary may merge more routes into it.
    pub fn into_router(self) -> axum::Router {
        let Self {
            encode,
            prometheus_text,
            ready,
            config,
        } = self;
        axum::Router::new()
            .route(
                "/metrics",
                get(move |headers: HeaderMap| {
                    let encode = encode.clone();
                    async move { metrics(&encode, prometheus_text, &headers) }
                }),
            )
            .route(
                "/ready",
                get(move || {
                    let ready = ready.clone();
                    async move { readiness(ready()) }
                }),
            )
            .route("/live", get(|| async { "live\n" }))
            .merge(config)
    }
}

fn metrics(encode: &Encode, prometheus_text: bool, headers: &HeaderMap) -> Response {
    let text = match encode() {
        Ok(text) => text,
        Err(_) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics encoding failed\n",
            )
                .into_response()
        }
    };
    let openmetrics = !prometheus_text
        || headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            to_prometheus_text(&text),
        )
            .into_response()
    }
}

fn readiness(check: Result<String, String>) -> Response {
    match check {
        Ok(body) => (StatusCode::OK, format!("{body}\n")).into_response(),
        Err(body) => (StatusCode::SERVICE_UNAVAILABLE, format!("{body}\n")).into_response(),
    }
}

/// What every client may read on an admin port: health and metrics (a
/// kubelet probes the first two, Prometheus scrapes the third). Every other
/// path (`/config`, `/identity`, the controller's `/routes`, …) shows who
/// talks to whom, and answers only a client on the same host — loopback,
/// or one of the host's own addresses — with 403 for anyone else.
pub const OPEN_PATHS: [&str; 3] = ["/metrics", "/live", "/ready"];

/// The two ends of an admin connection.
#[derive(Debug, Clone, Copy)]
pub struct AdminPeer {
    pub remote: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>>
    for AdminPeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        let remote = *stream.remote_addr();
        // An accepted socket always has a local address; if the OS cannot
        // say, the client counts as remote (denied), never as local.
        let local = stream
            .io()
            .local_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        Self { remote, local }
    }
}

impl AdminPeer {
    /// The client is on this host: loopback, or it connected from the very
    /// address it connected to.
    pub fn is_local(&self) -> bool {
        let ip = self.remote.ip();
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        ip.is_loopback() || (ip == self.local.ip() && !ip.is_unspecified())
    }
}

/// Whether `peer` may read `path` (see [`OPEN_PATHS`]).
pub fn allowed(path: &str, peer: &AdminPeer) -> bool {
    OPEN_PATHS.contains(&path) || peer.is_local()
}

async fn guard(
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<AdminPeer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if allowed(req.uri().path(), &peer) {
        next.run(req).await
    } else {
        (
            StatusCode::FORBIDDEN,
            format!(
                "{} answers only on this host (127.0.0.1); {} are open to all\n",
                req.uri().path(),
                OPEN_PATHS.join(", ")
            ),
        )
            .into_response()
    }
}

/// `router` as an admin port serves it: [`OPEN_PATHS`] to everyone, the
/// rest only to local clients. Every admin server goes through this.
pub fn guarded(
    router: axum::Router,
) -> axum::extract::connect_info::IntoMakeServiceWithConnectInfo<axum::Router, AdminPeer> {
    router
        .layer(axum::middleware::from_fn(guard))
        .into_make_service_with_connect_info::<AdminPeer>()
}

/// Serves `router` on `listener` until shutdown begins, as a task the
/// shutdown waits for; paths other than [`OPEN_PATHS`] answer only local
/// clients. A failure is logged: the service goes on without its admin
/// port.
pub fn serve(listener: TcpListener, router: axum::Router, shutdown: &Shutdown) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let served = axum::serve(listener, guarded(router))
            .with_graceful_shutdown(async move { stop.signaled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin server failed");
        }
    });
}

#[cfg(test)]
mod tests;
