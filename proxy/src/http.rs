//! HTTP/1.1 and HTTP/2 proxying: serve the client's connection with hyper,
//! forward each request to the original destination, stream bodies both
//! ways, record golden metrics when each response ends.
//!
//! Per request: [`forward`] labels it, strips hop-by-hop headers, sends it
//! over a pooled upstream connection (HTTP/1 keep-alive pool or one
//! multiplexed HTTP/2 connection), and wraps the response body in a
//! [`RecordBody`] that records the request when the body ends (so gRPC
//! trailers and streamed bodies are classified correctly). `Upgrade`
//! (WebSocket) and `CONNECT` get a dedicated upstream connection and become a
//! byte tunnel once both sides agree.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use trellis_core::addr::OrigDstAddr;
use trellis_core::shutdown::Shutdown;

use crate::body::ReqBody;
use crate::detect::Protocol;
use crate::error::ProxyError;
use crate::mesh::{Destination, Mesh, ORIG_PROTO};
use crate::metrics::{Classification, Label, Metrics, ResponseLabels, RouteLabels};
use crate::policy::{Authorize, ConnFacts, RequestFacts};
use crate::service::ServiceState;
use crate::upstream::Upstreams;
use std::net::SocketAddr;
use trellis_core::spiffe::SpiffeId;

mod balanced;

/// What every request on one client connection shares.
pub struct HttpContext {
    pub direction: crate::metrics::Direction,
    pub orig_dst: OrigDstAddr,
    /// The original destination as an authority, for upstream HTTP/1 URIs.
    pub dst_authority: Authority,
    pub protocol: Protocol,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<Metrics>,
    pub route: Label,
    pub peer: Label,
    pub tls: bool,
    pub shutdown: Shutdown,
    /// Outbound to a meshed destination: requests travel as HTTP/2 inside
    /// mutual TLS, the application's HTTP version in `trellis-orig-proto`.
    pub mesh_dst: Option<Arc<Destination>>,
    /// Inbound: the policy every request passes.
    pub inbound: Option<InboundAuthz>,
    /// Inbound from another proxy over the mesh (HTTP/2 in mutual TLS).
    pub from_mesh: bool,
    /// Outbound to a service the controller resolved: every request is
    /// routed and balanced across its endpoints ([`balanced`]).
    pub service: Option<Arc<ServiceState>>,
    pub mesh: Arc<Mesh>,
}

/// What inbound requests are authorized against.
pub struct InboundAuthz {
    pub mesh: Arc<Mesh>,
    pub port: u16,
    /// The verified peer; `None` for plaintext clients.
    pub peer: Option<SpiffeId>,
    /// The client's address is one kubelet probes come from.
    pub probe_source: bool,
}

/// Server-side limits.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

pub type ProxyBody = Either<RecordBody, Full<Bytes>>;

/// Serves one client connection until it closes, or until shutdown, when
/// in-flight requests finish and the connection closes gracefully.
pub async fn serve<I>(
    io: I,
    ctx: Arc<HttpContext>,
    limits: ServerLimits,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = ctx.shutdown.clone();
    let protocol = ctx.protocol;
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(forward(ctx, req).await) }
    });
    let io = TokioIo::new(io);
    if protocol == Protocol::H2 {
        // TRACE: stream tasks keep the connection's id, client and span.
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
    }
}

/// Serves one client connection by answering every request with the
/// error `verdict` (a connection the proxy will not forward, such as
/// plaintext refused by the outbound mTLS policy): the application gets a
/// response naming the reason rather than a closed connection.
pub async fn refuse<I>(
    io: I,
    protocol: Protocol,
    verdict: crate::error::Verdict,
    limits: ServerLimits,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let grpc = is_grpc(req.headers());
        async move { Ok::<_, Infallible>(error_response(verdict, grpc)) }
    });
    let io = TokioIo::new(io);
    if protocol == Protocol::H2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes)
            .serve_connection(io, svc)
            .await
    }
}

/// Forwards one request and returns the response to send back. Never fails:
/// a failure becomes an error response that names its reason.
async fn forward(ctx: Arc<HttpContext>, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let grpc = is_grpc(req.headers());
    let service = ctx
        .metrics
        .services
        // An authority without a port means the scheme's: 80 for http.
        .get(authority_of(&req).unwrap_or(""), 80);
    let recorder = Recorder {
        metrics: ctx.metrics.clone(),
        labels: RouteLabels {
            direction: ctx.direction,
            service,
            route: ctx.route.clone(),
            tls: ctx.tls,
            peer: ctx.peer.clone(),
        },
        start,
        grpc,
        status: StatusCode::OK,
        grpc_status: None,
        // TRACE: the request's span starts as it arrives.
        span: ctx
            .metrics
            .tracing()
            .request(ctx.direction, ctx.orig_dst, &req),
    };
    tracing::debug!(method = %req.method(), route = %recorder.labels.route, "request");

    strip_h2c_upgrade(req.headers_mut());
    // TRACE: every upstream request (direct, balanced, tunnel) continues it.
    recorder.span.inject(req.headers_mut());
    if let Some(authz) = &ctx.inbound {
        if let Err(e) = admit(&ctx, authz, &mut req) {
            let verdict = e.verdict();
            let rsp = error_response(verdict, grpc);
            let mut recorder = recorder;
            recorder.status = rsp.status();
            recorder.grpc_status = grpc.then_some(verdict.grpc_status);
            recorder.finish(true);
            return rsp;
        }
    }

    if let Some(svc) = &ctx.service {
        return balanced::forward(&ctx, svc, req, recorder).await;
    }
    let client_h1 = ctx.protocol != Protocol::H2;
    let result = if wants_tunnel(&req) {
        tunnel::forward(&ctx, req).await
    } else {
        remove_hop_by_hop(req.headers_mut());
        let mut req = req.map(ReqBody::Stream);
        if let Some(dst) = &ctx.mesh_dst {
            into_mesh_request(&mut req, client_h1, &ctx.dst_authority);
            ctx.upstreams.send_mesh(ctx.orig_dst, dst, req).await
        } else {
            let app_h1 = if ctx.from_mesh {
                from_mesh_request(&mut req)
            } else {
                client_h1
            };
            if app_h1 {
                match absolute_uri(&ctx.dst_authority, req.uri()) {
                    Ok(uri) => {
                        *req.uri_mut() = uri;
                        ctx.upstreams.send_http1(ctx.orig_dst, req).await
                    }
                    Err(e) => Err(ProxyError::Client(std::io::Error::other(e))),
                }
            } else {
                ctx.upstreams.send_http2(ctx.orig_dst, req).await
            }
        }
    };

    match result {
        Ok(mut rsp) => {
            if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
                remove_hop_by_hop(rsp.headers_mut());
            }
            // The response goes back in the client's own HTTP version.
            *rsp.version_mut() = if client_h1 {
                http::Version::HTTP_11
            } else {
                http::Version::HTTP_2
            };
            let mut recorder = recorder;
            recorder.status = rsp.status();
            recorder.grpc_status = grpc_status(rsp.headers());
            rsp.map(|body| Either::Left(RecordBody::new(body, recorder)))
        }
        Err(e) => {
            ctx.metrics.tls_failure(ctx.direction, &e);
            let verdict = e.verdict();
            if verdict.warn {
                tracing::warn!(dst.addr = %ctx.orig_dst, error = %e, reason = verdict.reason, "request failed");
            } else {
                tracing::debug!(dst.addr = %ctx.orig_dst, error = %e, reason = verdict.reason, "request failed");
            }
            let rsp = error_response(verdict, grpc);
            let mut recorder = recorder;
            recorder.status = rsp.status();
            recorder.grpc_status = grpc.then_some(verdict.grpc_status);
            recorder.finish(false);
            rsp
        }
    }
}

/// The inbound checks every request passes before it is forwarded: its
/// path normalised as the application will read it (and refused when
/// ambiguous), then the policy — per request, or for the whole connection
/// when the request asks to become a tunnel.
fn admit(
    ctx: &HttpContext,
    authz: &InboundAuthz,
    req: &mut Request<Incoming>,
) -> Result<(), ProxyError> {
    let peer_id = || {
        authz
            .peer
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    if let Err(e) = normalize_request_path(req) {
        tracing::info!(
            peer.identity = peer_id(),
            port = authz.port,
            reason = e.reason(),
            "request path refused"
        );
        return Err(e.into());
    }
    let conn = ConnFacts {
        port: authz.port,
        peer: authz.peer.as_ref(),
        probe_source: authz.probe_source,
    };
    let policy = authz.mesh.policy();
    let decision = if wants_tunnel(req) {
        policy.authorize_tunnel(conn)
    } else {
        policy.authorize_request(
            conn,
            RequestFacts {
                method: req.method().as_str(),
                path: req.uri().path(),
            },
        )
    };
    ctx.metrics.authz(ctx.direction, authz.port, decision);
    if decision.is_allowed() {
        return Ok(());
    }
    tracing::info!(
        peer.identity = peer_id(),
        port = authz.port,
        reason = decision.reason(),
        tunnel = wants_tunnel(req),
        "request refused by policy"
    );
    Err(ProxyError::Forbidden {
        reason: decision.reason(),
    })
}

/// Replaces the request's path by its normal form ([`crate::path`]),
/// keeping the query. `CONNECT` (authority-form) and `OPTIONS *` have no
/// path to normalise.
fn normalize_request_path<B>(req: &mut Request<B>) -> Result<(), crate::path::PathError> {
    if req.method() == Method::CONNECT || req.uri().path() == "*" {
        return Ok(());
    }
    let uri = req.uri();
    let normal = match crate::path::normalize(uri.path())? {
        std::borrow::Cow::Borrowed(_) => return Ok(()),
        std::borrow::Cow::Owned(p) => p,
    };
    let pq = match uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|_| crate::path::PathError::BadEscape)?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| crate::path::PathError::BadEscape)?;
    Ok(())
}

/// Removes an offer to switch to HTTP/2 in clear text (`Upgrade: h2c`,
/// with its `HTTP2-Settings`): the proxy never tunnels it, because what
/// would follow is a whole connection of requests that nobody authorized.
/// Other protocols offered beside it stay.
fn strip_h2c_upgrade(headers: &mut HeaderMap) {
    const HTTP2_SETTINGS: &str = "http2-settings";
    headers.remove(HTTP2_SETTINGS);
    let Some(upgrade) = headers.get(header::UPGRADE) else {
        return;
    };
    let Ok(offered) = upgrade.to_str() else {
        headers.remove(header::UPGRADE);
        return;
    };
    let rest: Vec<&str> = offered
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.eq_ignore_ascii_case("h2c"))
        .collect();
    if rest.len() == offered.split(',').filter(|p| !p.trim().is_empty()).count() {
        return;
    }
    match HeaderValue::from_str(&rest.join(", ")) {
        Ok(v) if !rest.is_empty() => {
            headers.insert(header::UPGRADE, v);
        }
        _ => {
            headers.remove(header::UPGRADE);
            // Without an Upgrade, `Connection: upgrade` asks for nothing.
            let tokens: Vec<String> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|s| s.split(','))
                .map(str::trim)
                .filter(|t| {
                    !t.is_empty()
                        && !t.eq_ignore_ascii_case("upgrade")
                        && !t.eq_ignore_ascii_case(HTTP2_SETTINGS)
                })
                .map(str::to_owned)
                .collect();
            headers.remove(header::CONNECTION);
            if let Ok(v) = HeaderValue::from_str(&tokens.join(", ")) {
                if !tokens.is_empty() {
                    headers.insert(header::CONNECTION, v);
                }
            }
        }
    }
}

fn error_response(verdict: crate::error::Verdict, grpc: bool) -> Response<ProxyBody> {
    let reason_header = HeaderValue::from_static(verdict.reason);
    let mut rsp = if grpc {
        // gRPC clients read a trailers-only response: status in headers.
        let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(verdict.grpc_status));
        h.insert("grpc-message", reason_header.clone());
        r
    } else {
        let body = format!("trellis-proxy: {}\n", verdict.reason);
        let mut r = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *r.status_mut() = verdict.status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    };
    rsp.headers_mut()
        .insert("trellis-proxy-error", reason_header);
    rsp
}

/// The request's authority: the URI's (HTTP/2, absolute-form) or the Host
/// header (HTTP/1).
fn authority_of<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(Authority::as_str)
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
}

/// Prepares an application request for the mesh: HTTP/2 to the peer
/// proxy. An HTTP/1 request gets an absolute URI (authority from its Host
/// header) and says so in `trellis-orig-proto`, so the peer hands it to its
/// application as HTTP/1 again.
fn into_mesh_request<B>(req: &mut Request<B>, client_h1: bool, dst: &Authority) {
    req.headers_mut().remove(ORIG_PROTO);
    if !client_h1 {
        return;
    }
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| dst.clone());
    let pq = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    if let Ok(uri) = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(pq)
        .build()
    {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_2;
    req.headers_mut()
        .insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
}

/// Undoes [`into_mesh_request`] on the receiving side. Returns whether the
/// application speaks HTTP/1.
fn from_mesh_request<B>(req: &mut Request<B>) -> bool {
    let Some(orig) = req.headers_mut().remove(ORIG_PROTO) else {
        return false;
    };
    if orig.as_bytes() != b"HTTP/1.1" {
        return false;
    }
    *req.version_mut() = http::Version::HTTP_11;
    if let Some(authority) = req.uri().authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    true
}

fn absolute_uri(dst: &Authority, uri: &Uri) -> Result<Uri, http::Error> {
    let pq = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(dst.clone())
        .path_and_query(pq)
        .build()
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// `Upgrade` (WebSocket over HTTP/1.1) and `CONNECT` become byte tunnels.
fn wants_tunnel<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        || (req.version() <= http::Version::HTTP_11
            && req.headers().contains_key(header::UPGRADE)
            && connection_has(req.headers(), "upgrade"))
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Headers meaningful only for one hop (RFC 9110 §7.6.1): those the
/// `Connection` header names, and the fixed list below. `TE: trailers`
/// survives (gRPC needs it end to end).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    const FIXED: [HeaderName; 6] = [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TRAILER,
    ];
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(FIXED.iter()) {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Records one request's golden metrics once its response has ended.
pub struct Recorder {
    metrics: Arc<Metrics>,
    labels: RouteLabels,
    start: Instant,
    grpc: bool,
    status: StatusCode,
    grpc_status: Option<u32>,
    span: crate::trace::RequestSpan,
}

impl Recorder {
    /// Records the request. `completed` is false when the response was cut
    /// short (an upstream or client error mid-body).
    fn finish(self, completed: bool) {
        let failed = !completed
            || self.status.is_server_error()
            || (self.grpc && self.grpc_status.is_some_and(|s| s != 0));
        let classification = if failed {
            Classification::Failure
        } else {
            Classification::Success
        };
        // TRACE: the span ends with the golden metrics, under their labels.
        let outcome = crate::trace::Outcome {
            status: self.status.as_u16(),
            grpc_status: self.grpc_status,
            failed: classification == Classification::Failure,
        };
        self.span.end(&self.labels, outcome);
        let elapsed = self.start.elapsed().as_secs_f64();
        self.metrics
            .http_duration
            .get_or_create(&self.labels)
            .observe(elapsed);
        let status_code = self.status.as_u16();
        tracing::debug!(
            status = status_code,
            grpc_status = self.grpc_status,
            ?classification,
            duration_ms = elapsed * 1e3,
            "response"
        );
        self.metrics
            .http_requests
            .get_or_create(&ResponseLabels {
                route: self.labels,
                status_code,
                classification,
            })
            .inc();
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its request's metrics when it ends, fails,
    /// or is dropped unfinished.
    pub struct RecordBody {
        #[pin]
        inner: Incoming,
        recorder: Option<Recorder>,
        // A frame already read from `inner` (to see a gRPC status before
        // deciding on a retry), handed out first.
        peeked: Option<Frame<Bytes>>,
    }

    impl PinnedDrop for RecordBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(r) = this.recorder.take() {
                // hyper need not poll a body that is already at its end.
                let complete = this.peeked.is_none() && this.inner.is_end_stream();
                r.finish(complete);
            }
        }
    }
}

impl RecordBody {
    fn new(inner: Incoming, recorder: Recorder) -> Self {
        Self::with_peeked(inner, recorder, None)
    }

    fn with_peeked(inner: Incoming, recorder: Recorder, peeked: Option<Frame<Bytes>>) -> Self {
        Self {
            inner,
            recorder: Some(recorder),
            peeked,
        }
    }
}

impl Body for RecordBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let res = match this.peeked.take() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => this.inner.poll_frame(cx),
        };
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(r)) = (frame.trailers_ref(), this.recorder.as_mut()) {
                    if let Some(s) = grpc_status(trailers) {
                        r.grpc_status = Some(s);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(r) = this.recorder.take() {
                    r.finish(false);
                }
            }
            Poll::Ready(None) => {
                if let Some(r) = this.recorder.take() {
                    r.finish(true);
                }
            }
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.peeked.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.peeked {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

/// `Upgrade` and `CONNECT`: a dedicated upstream connection (an upgraded
/// connection cannot go back to a pool), then a byte tunnel.
mod tunnel {
    use super::*;

    pub(super) async fn forward(
        ctx: &HttpContext,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, ProxyError> {
        forward_to(ctx, ctx.orig_dst, ctx.mesh_dst.as_deref(), req).await
    }

    /// Tunnels to `addr`, inside mutual TLS when `mesh_dst` is given.
    pub(super) async fn forward_to(
        ctx: &HttpContext,
        addr: OrigDstAddr,
        mesh_dst: Option<&Destination>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let upstream_err = |e: hyper::Error| ProxyError::Upstream {
            addr,
            source: Box::new(e),
        };
        // To a meshed destination the tunnel runs inside mutual TLS.
        let mut sender = match mesh_dst {
            Some(dst) => {
                let tls = ctx.upstreams.connect_mesh(addr, dst.tcp.clone()).await?;
                handshake(&ctx.shutdown, tls).await.map_err(upstream_err)?
            }
            None => {
                let tcp = ctx.upstreams.connect(addr).await?;
                handshake(&ctx.shutdown, tcp).await.map_err(upstream_err)?
            }
        };
        let client_upgrade = hyper::upgrade::on(&mut req);
        let is_connect = req.method() == Method::CONNECT;
        let mut rsp = sender.send_request(req).await.map_err(upstream_err)?;
        let agreed = if is_connect {
            rsp.status().is_success()
        } else {
            rsp.status() == StatusCode::SWITCHING_PROTOCOLS
        };
        if agreed {
            let upstream_upgrade = hyper::upgrade::on(&mut rsp);
            ctx.shutdown.spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                            Ok((up, down)) => {
                                tracing::debug!(bytes.up = up, bytes.down = down, "tunnel closed")
                            }
                            Err(e) => tracing::debug!(error = %e, "tunnel closed"),
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
        Ok(rsp)
    }

    async fn handshake<I>(
        shutdown: &Shutdown,
        io: I,
    ) -> Result<hyper::client::conn::http1::SendRequest<Incoming>, hyper::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        shutdown.spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "tunnel upstream connection ended");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        remove_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-end-to-end"]);
        assert_eq!(h[header::TE], "trailers");

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        remove_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn h2c_upgrades_are_stripped_and_others_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings, keep-alive"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAoAAAAAIAAAAA"),
        );
        strip_h2c_upgrade(&mut h);
        assert!(h.get(header::UPGRADE).is_none());
        assert!(h.get("http2-settings").is_none());
        assert_eq!(h[header::CONNECTION], "keep-alive");
        let req = {
            let mut r = Request::get("/healthz").body(()).unwrap();
            *r.headers_mut() = h;
            r
        };
        assert!(!wants_tunnel(&req));

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("H2C, websocket"));
        strip_h2c_upgrade(&mut h);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_h2c_upgrade(&mut h);
        assert_eq!(h[header::UPGRADE], "websocket");
    }

    #[test]
    fn request_paths_are_normalised_with_their_query() {
        let mut req = Request::get("/api/%2e%2e/admin?x=1").body(()).unwrap();
        normalize_request_path(&mut req).unwrap();
        assert_eq!(req.uri().to_string(), "/admin?x=1");
        let mut h2 = Request::get("http://web:80/a/./b").body(()).unwrap();
        normalize_request_path(&mut h2).unwrap();
        assert_eq!(h2.uri().to_string(), "http://web:80/a/b");
        let mut bad = Request::get("/api/..%2fadmin").body(()).unwrap();
        assert!(normalize_request_path(&mut bad).is_err());
        let mut connect = Request::builder()
            .method(Method::CONNECT)
            .uri("example.com:443")
            .body(())
            .unwrap();
        normalize_request_path(&mut connect).unwrap();
    }

    #[test]
    fn tunnels_are_upgrade_or_connect() {
        let ws = Request::get("/ws")
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(wants_tunnel(&ws));
        let no_conn = Request::get("/")
            .header(header::UPGRADE, "h2c")
            .body(())
            .unwrap();
        assert!(!wants_tunnel(&no_conn));
        let connect = Request::builder()
            .method(Method::CONNECT)
            .uri("example.com:443")
            .body(())
            .unwrap();
        assert!(wants_tunnel(&connect));
    }

    #[test]
    fn upstream_uri_targets_original_destination() {
        let dst: Authority = "10.1.2.3:8080".parse().unwrap();
        let uri = absolute_uri(&dst, &"/a/b?c=d".parse().unwrap()).unwrap();
        assert_eq!(uri.to_string(), "http://10.1.2.3:8080/a/b?c=d");
        let uri = absolute_uri(&dst, &"http://web/x".parse().unwrap()).unwrap();
        assert_eq!(uri.to_string(), "http://10.1.2.3:8080/x");
    }

    #[test]
    fn http1_requests_cross_the_mesh_and_come_back_as_http1() {
        let dst: Authority = "10.96.0.1:80".parse().unwrap();
        let mut req = Request::get("/a?b=c")
            .header(header::HOST, "web.demo.svc.cluster.local")
            .header(ORIG_PROTO, "spoofed")
            .body(())
            .unwrap();
        into_mesh_request(&mut req, true, &dst);
        assert_eq!(req.version(), http::Version::HTTP_2);
        assert_eq!(
            req.uri().to_string(),
            "http://web.demo.svc.cluster.local/a?b=c"
        );
        assert!(req.headers().get(header::HOST).is_none());
        assert_eq!(req.headers()[ORIG_PROTO], "HTTP/1.1");
        assert!(from_mesh_request(&mut req));
        assert_eq!(req.version(), http::Version::HTTP_11);
        assert_eq!(req.headers()[header::HOST], "web.demo.svc.cluster.local");
        assert!(req.headers().get(ORIG_PROTO).is_none());

        // HTTP/2 from the application stays HTTP/2, and a client cannot
        // smuggle the header through.
        let mut h2 = Request::get("http://api/x")
            .header(ORIG_PROTO, "HTTP/1.1")
            .body(())
            .unwrap();
        into_mesh_request(&mut h2, false, &dst);
        assert!(h2.headers().get(ORIG_PROTO).is_none());
        assert!(!from_mesh_request(&mut h2));
    }

    #[test]
    fn grpc_detection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(grpc_status(&h), Some(14));
    }
}
