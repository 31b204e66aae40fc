//! hyper's server side: one client connection, served until it closes or
//! until shutdown, when in-flight requests finish first.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use trellis_core::shutdown::Shutdown;

use super::ProxyBody;
use crate::detect::Protocol;
use crate::error::{ProxyError, Verdict};

/// Server-side limits.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

/// Serves one client connection in `protocol`, answering each request with
/// `handle`'s response, until the client closes or shutdown begins.
pub async fn serve<I, H, F>(
    io: I,
    protocol: Protocol,
    limits: ServerLimits,
    shutdown: &Shutdown,
    handle: H,
) -> Result<(), ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    // Each request's future is boxed: hyper keeps it inline in the
    // connection (HTTP/1) or in a task per stream (HTTP/2), moving it as it
    // goes; a pointer moves for free, a pipeline's future does not.
    let svc = hyper::service::service_fn(move |req| {
        let answer = Box::pin(handle(req));
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let io = TokioIo::new(io);
    let served = if protocol == Protocol::H2 {
        // Stream tasks keep the connection's id, client and log span.
        let conn = hyper::server::conn::http2::Builder::new(crate::trace::ConnExecutor::current())
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => res,
            _ = shutdown.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes)
            .serve_connection(io, svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => res,
            _ = shutdown.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    served.map_err(ProxyError::ClientHttp)
}

/// Serves one client connection by answering every request with the
/// error `verdict` (a connection the proxy will not forward, such as
/// plaintext refused by the outbound mTLS policy): the application gets a
/// response naming the reason rather than a closed connection.
pub async fn refuse<I>(
    io: I,
    protocol: Protocol,
    verdict: Verdict,
    limits: ServerLimits,
    shutdown: &Shutdown,
) -> Result<(), ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let answer = move |req: Request<Incoming>| {
        let grpc = super::headers::is_grpc(req.headers());
        async move { super::respond::error_response(verdict, grpc) }
    };
    serve(io, protocol, limits, shutdown, answer).await
}
