//! The HTTPS listener: accept → TLS 1.3 handshake → HTTP/1.1 or h2 →
//! `POST /inject` → read the body (bounded) → [`review::parse`] → the
//! namespace from the cache → [`review::respond`] → log, count, answer.
//! Every request to `/inject` is answered with an AdmissionReview and
//! status 200; other paths get 404, other methods 405.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use trellis_core::shutdown::Shutdown;

use super::metrics::Metrics;
use super::namespaces::{self, Lookup, Namespaces};
use super::review::{self, Received, Reviewed, Verdict};
use crate::InjectorConfig;

/// The path the MutatingWebhookConfiguration calls.
pub const INJECT_PATH: &str = "/inject";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A body slower than this is answered as truncated.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// An oversized body is read on (and dropped) up to this many times the
/// limit, so the client reads the answer instead of a reset connection.
const DRAIN_FACTOR: usize = 4;
/// What of an oversized body is kept to look for the uid in.
const PREFIX_KEPT: usize = 64 * 1024;

/// What a review needs besides the request.
pub(crate) struct Handler {
    pub injector: Arc<InjectorConfig>,
    pub namespaces: Arc<dyn Namespaces>,
    pub metrics: Arc<Metrics>,
    pub max_review_bytes: usize,
    pub namespace_wait: Duration,
}

/// Accepts connections until shutdown; each connection (handshake
/// included) runs in its own task, tracked by `shutdown`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    handler: Arc<Handler>,
    shutdown: Shutdown,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            () = shutdown.signaled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of file descriptors and the like: pause, don't spin.
                tracing::warn!(%error, "accept failed");
                tokio::select! {
                    () = shutdown.signaled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, handler, conn_shutdown) =
            (acceptor.clone(), handler.clone(), shutdown.clone());
        shutdown.spawn(async move {
            connection(acceptor, tcp, peer, handler, conn_shutdown).await;
        });
    }
}

async fn connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    handler: Arc<Handler>,
    shutdown: Shutdown,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            handler.metrics.tls_handshake_failed();
            tracing::debug!(client.addr = %peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            handler.metrics.tls_handshake_failed();
            tracing::debug!(client.addr = %peer, "TLS handshake timed out");
            return;
        }
    };
    let svc = hyper::service::service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(route(&handler, req).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(tls), svc);
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            () = shutdown.signaled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(client.addr = %peer, %error, "connection ended with an error");
    }
}

async fn route(handler: &Handler, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != INJECT_PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: reviews go to POST /inject\n",
        );
    }
    if req.method() != Method::POST {
        let mut resp = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: reviews go to POST /inject\n",
        );
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return resp;
    }
    let start = Instant::now();
    let reviewed = handler.review(req.into_body()).await;
    handler.metrics.review(&reviewed.verdict, start.elapsed());
    let mut resp = Response::new(Full::new(Bytes::from(reviewed.to_bytes())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

impl Handler {
    async fn review(&self, body: Incoming) -> Reviewed {
        let received = read_body(body, self.max_review_bytes).await;
        let req = match review::parse(&received) {
            Ok(req) => req,
            Err(rejection) => {
                let reviewed = review::reject(rejection);
                log(&reviewed, "", "");
                return reviewed;
            }
        };
        let found = namespaces::lookup(
            self.namespaces.as_ref(),
            req.namespace(),
            self.namespace_wait,
        )
        .await;
        if let Lookup::Missing(_) = found {
            self.metrics.namespace_miss();
            tracing::warn!(
                namespace = req.namespace(),
                uid = req.uid(),
                wait = ?self.namespace_wait,
                "namespace not in the cache; deciding without its labels and annotations"
            );
        }
        let (pod, namespace) = (req.pod_name(), req.namespace().to_string());
        let reviewed = review::respond(req, found.info(), &self.injector);
        log(&reviewed, &pod, &namespace);
        reviewed
    }
}

/// Reads the body, keeping at most `limit` bytes, within [`BODY_TIMEOUT`].
async fn read_body(body: Incoming, limit: usize) -> Received {
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    let read = async {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            total = total.saturating_add(data.len());
            if total <= limit {
                buf.extend_from_slice(&data);
            } else if total > limit.saturating_mul(DRAIN_FACTOR) {
                break;
            }
        }
        Ok::<(), String>(())
    };
    let result = tokio::time::timeout(BODY_TIMEOUT, read).await;
    let prefix = |mut buf: BytesMut| {
        buf.truncate(PREFIX_KEPT);
        buf.freeze()
    };
    match result {
        _ if total > limit => Received::TooLarge {
            prefix: prefix(buf),
            limit,
        },
        Ok(Ok(())) => Received::Complete(buf.freeze()),
        Ok(Err(error)) => Received::Cut {
            prefix: prefix(buf),
            error,
        },
        Err(_) => Received::Cut {
            prefix: prefix(buf),
            error: format!("not complete after {BODY_TIMEOUT:?}"),
        },
    }
}

/// One event per review: what was decided, for which pod.
fn log(reviewed: &Reviewed, pod: &str, namespace: &str) {
    let (uid, outcome, reason) = (
        reviewed.uid.as_str(),
        reviewed.verdict.outcome(),
        reviewed.verdict.reason(),
    );
    match &reviewed.verdict {
        Verdict::Injected => {
            tracing::info!(uid, pod, namespace, outcome, reason, "injected")
        }
        Verdict::Floored(_) => {
            tracing::warn!(
                uid,
                pod,
                namespace,
                outcome,
                reason,
                "injected with the floor applied to overrides below it"
            )
        }
        Verdict::PodSecurityRefused(conflict) => {
            tracing::warn!(
                uid,
                pod,
                namespace,
                outcome,
                reason,
                "injected, but the API server will refuse the pod: {}",
                conflict.warning()
            )
        }
        Verdict::Refused(refusal) => {
            tracing::warn!(uid, pod, namespace, outcome, reason, "refused: {refusal}")
        }
        Verdict::Skipped(why) if why.is_warning() => {
            tracing::warn!(uid, pod, namespace, outcome, reason, "not injected: {why}")
        }
        Verdict::Skipped(why) => {
            tracing::info!(uid, pod, namespace, outcome, reason, "skipped: {why}")
        }
        Verdict::Error(error) => {
            if error.classify().level == tracing::Level::ERROR {
                tracing::error!(uid, outcome, reason, %error, "review failed");
            } else {
                tracing::warn!(uid, outcome, reason, %error, "review not decided");
            }
        }
    }
}
