//! `trellis app http`: an HTTP test server speaking HTTP/1.1 and HTTP/2 with
//! prior knowledge (h2c) on the same port.
//!
//! | path | answer |
//! |---|---|
//! | `/echo` | the request body, streamed back; `x-method`, `x-path`, `x-version`, `x-authority` headers |
//! | `/status/CODE` | that status |
//! | `/bytes/N` | N bytes of [`pattern_byte`], streamed, with `content-length` |
//! | `/sha256` (POST, PUT) | `{"bytes":N,"sha256":"<hex>"}` of the request body, hashed as it streams |
//! | `/delay/MS` | 200 after MS milliseconds (at most ten minutes; 503 at once if shutdown begins) |
//! | `/trailers` | a body followed by the trailer `x-trailer: done` (HTTP/2, or HTTP/1.1 with `te: trailers`) |
//! | `/ws` | a WebSocket (HTTP/1.1 upgrade) echoing every message |
//! | `/latency/MS` | sets the latency added to every later response (what `--latency` starts at); 200 |
//! | anything else | `NAME: hello from ADDR` |
//!
//! Every response carries `x-served-by: NAME`. With `--fail-rate F`, a
//! fraction F of requests (spread evenly, counted exactly) is answered 503
//! instead; `/healthz` is never failed so probes keep working.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::WebSocketStream;
use trellis_core::shutdown::Shutdown;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Size of the chunks `/bytes/N` writes.
const CHUNK: usize = 64 * 1024;
/// The period of [`pattern_byte`].
const PATTERN_PERIOD: u64 = 251;
/// The longest `/delay/MS` honoured.
const MAX_DELAY: Duration = Duration::from_secs(600);

/// Byte `i` of every `/bytes/N` body: a period that is prime, so it never
/// lines up with chunk or buffer sizes.
pub(crate) fn pattern_byte(i: u64) -> u8 {
    (i % PATTERN_PERIOD) as u8
}

#[derive(clap::Args, Debug)]
pub struct HttpArgs {
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: SocketAddr,
    /// Name shown in bodies and in the `x-served-by` header.
    #[arg(long, default_value = "app")]
    pub(crate) name: String,
    /// Fraction of requests (0.0-1.0) answered 503, spread evenly.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_fraction)]
    pub(crate) fail_rate: f64,
    /// Milliseconds added before every response (a slow replica); changed
    /// at run time by a request to `/latency/MS`.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub(crate) latency: u64,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a fraction between 0.0 and 1.0")),
    }
}

/// What the HTTP server needs to know.
#[derive(Debug, Clone)]
pub(crate) struct HttpOpts {
    name: String,
    served_by: HeaderValue,
    fail_ppm: u64,
    latency_ms: u64,
}

impl HttpOpts {
    pub(crate) fn new(name: String, fail_rate: f64) -> anyhow::Result<Self> {
        let served_by = HeaderValue::from_str(&name)
            .with_context(|| format!("--name {name:?} cannot be used as a header value"))?;
        anyhow::ensure!(
            (0.0..=1.0).contains(&fail_rate),
            "--fail-rate {fail_rate} is not a fraction between 0.0 and 1.0"
        );
        Ok(Self {
            name,
            served_by,
            fail_ppm: (fail_rate * 1e6).round() as u64,
            latency_ms: 0,
        })
    }

    /// Adds `ms` milliseconds before every response.
    pub(crate) fn with_latency(mut self, ms: u64) -> Self {
        self.latency_ms = ms.min(MAX_DELAY.as_millis() as u64);
        self
    }
}

/// Decides which requests fail: request `n` (1-based) fails when
/// `floor(n·F)` steps up, so exactly `floor(n·F)` of the first `n` fail.
#[derive(Debug)]
pub(crate) struct FailCounter {
    ppm: u64,
    seen: AtomicU64,
}

impl FailCounter {
    pub(crate) fn new(ppm: u64) -> Self {
        Self {
            ppm,
            seen: AtomicU64::new(0),
        }
    }

    pub(crate) fn next_fails(&self) -> bool {
        if self.ppm == 0 {
            return false;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        let before = (n - 1).saturating_mul(self.ppm) / 1_000_000;
        let now = n.saturating_mul(self.ppm) / 1_000_000;
        now > before
    }
}

struct State {
    opts: HttpOpts,
    local: SocketAddr,
    failures: FailCounter,
    /// Milliseconds added before every response.
    latency_ms: AtomicU64,
    /// `CHUNK + PATTERN_PERIOD` bytes of the pattern: any chunk of any body
    /// is a slice of it.
    pattern: Bytes,
    shutdown: Shutdown,
}

/// Serves HTTP on `listener` until `shutdown` begins, then lets open
/// connections finish (HTTP/2 gets a GOAWAY, idle HTTP/1 connections close).
pub(crate) async fn serve(
    listener: TcpListener,
    opts: HttpOpts,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let local = listener
        .local_addr()
        .context("reading the listener's address")?;
    let state = Arc::new(State {
        failures: FailCounter::new(opts.fail_ppm),
        latency_ms: AtomicU64::new(opts.latency_ms),
        opts,
        local,
        pattern: (0..(CHUNK as u64 + PATTERN_PERIOD))
            .map(pattern_byte)
            .collect(),
        shutdown: shutdown.clone(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        // A client (or a proxy passing on its FIN) may half-close after the
        // request: still answer it.
        .half_close(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .adaptive_window(true);
    let builder = Arc::new(builder);

    tracing::info!(name = %state.opts.name, "listening on {local} (HTTP/1.1 and h2c)");
    super::accept_loop(listener, &shutdown, |stream, peer| {
        let state = state.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        async move {
            let svc = service_fn(move |req| handle(req, state.clone()));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let mut draining = false;
            let result = loop {
                tokio::select! {
                    result = conn.as_mut() => break result,
                    _ = shutdown.signaled(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            };
            if let Err(error) = result {
                tracing::debug!(client.addr = %peer, %error, "connection ended with an error");
            }
        }
    })
    .await;
    Ok(())
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    let latency = state.latency_ms.load(Ordering::Relaxed);
    if latency > 0 && !req.uri().path().starts_with("/latency/") {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let mut resp = if req.uri().path() != "/healthz" && state.failures.next_fails() {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}: injected failure\n", state.opts.name),
        )
    } else {
        route(req, &state).await
    };
    resp.headers_mut()
        .insert("x-served-by", state.opts.served_by.clone());
    Ok(resp)
}

async fn route(req: Request<Incoming>, state: &State) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/echo" {
        echo(req)
    } else if path == "/sha256" {
        sha256(req).await
    } else if path == "/trailers" {
        trailers(&req, state)
    } else if path == "/ws" {
        websocket(req, state)
    } else if let Some(code) = path.strip_prefix("/status/") {
        status(code, state)
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        bytes(n, state)
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        delay(ms, state).await
    } else if let Some(ms) = path.strip_prefix("/latency/") {
        set_latency(ms, state)
    } else {
        text(
            StatusCode::OK,
            format!("{}: hello from {}\n", state.opts.name, state.local),
        )
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn bad_request(why: String) -> Response<Body> {
    text(StatusCode::BAD_REQUEST, format!("{why}\n"))
}

fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let mut resp = Response::new(body.map_err(BoxError::from).boxed_unsync());
    let headers = resp.headers_mut();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            let host = parts.headers.get(header::HOST)?;
            host.to_str().ok().map(str::to_owned)
        })
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    for (name, value) in [
        ("x-method", parts.method.as_str()),
        ("x-path", path),
        ("x-version", version_str(parts.version)),
        ("x-authority", authority.as_str()),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        if let Some(value) = parts.headers.get(&name) {
            headers.insert(name, value.clone());
        }
    }
    resp
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

async fn sha256(req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST && req.method() != Method::PUT {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "use POST or PUT\n".into());
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST, PUT"));
        return resp;
    }
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut count: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    count += data.len() as u64;
                }
            }
            Err(e) => {
                return bad_request(format!("reading the request body after {count} bytes: {e}"))
            }
        }
    }
    let json = serde_json::json!({ "bytes": count, "sha256": hex(&hasher.finalize()) });
    let mut resp = Response::new(full(format!("{json}\n")));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn status(code: &str, state: &State) -> Response<Body> {
    let status = match code.parse::<u16>().ok().map(StatusCode::from_u16) {
        Some(Ok(s)) if s.as_u16() >= 200 => s,
        _ => {
            return bad_request(format!(
                "/status/{code}: expected a status code from 200 to 999"
            ))
        }
    };
    if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = status;
        return resp;
    }
    text(
        status,
        format!("{}: status {}\n", state.opts.name, status.as_u16()),
    )
}

fn bytes(n: &str, state: &State) -> Response<Body> {
    let Ok(len) = n.parse::<u64>() else {
        return bad_request(format!("/bytes/{n}: expected a byte count"));
    };
    let mut resp = Response::new(
        PatternBody {
            pattern: state.pattern.clone(),
            offset: 0,
            len,
        }
        .boxed_unsync(),
    );
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// `len` bytes of [`pattern_byte`], in chunks sliced out of one shared buffer.
pub(crate) struct PatternBody {
    pub(crate) pattern: Bytes,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

impl hyper::body::Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let remaining = self.len - self.offset;
        if remaining == 0 {
            return Poll::Ready(None);
        }
        let start = (self.offset % PATTERN_PERIOD) as usize;
        let n = remaining.min(CHUNK as u64) as usize;
        let chunk = self.pattern.slice(start..start + n);
        self.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset == self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.offset)
    }
}

fn set_latency(ms: &str, state: &State) -> Response<Body> {
    match ms.parse::<u64>() {
        Ok(ms) if ms <= MAX_DELAY.as_millis() as u64 => {
            state.latency_ms.store(ms, Ordering::Relaxed);
            text(
                StatusCode::OK,
                format!("{}: latency {ms}ms\n", state.opts.name),
            )
        }
        _ => bad_request(format!(
            "/latency/{ms}: expected milliseconds, at most {}",
            MAX_DELAY.as_millis()
        )),
    }
}

async fn delay(ms: &str, state: &State) -> Response<Body> {
    let wait = match ms.parse::<u64>().map(Duration::from_millis) {
        Ok(d) if d <= MAX_DELAY => d,
        _ => {
            return bad_request(format!(
                "/delay/{ms}: expected milliseconds, at most {}",
                MAX_DELAY.as_millis()
            ))
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        // Do not hold shutdown for the rest of a long delay.
        _ = state.shutdown.signaled() => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}: shutting down\n", state.opts.name),
            );
        }
    }
    text(
        StatusCode::OK,
        format!("{}: waited {}ms\n", state.opts.name, wait.as_millis()),
    )
}

fn trailers(req: &Request<Incoming>, state: &State) -> Response<Body> {
    let wants_trailers = req.version() == Version::HTTP_2
        || req
            .headers()
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    let data = Frame::data(Bytes::from(format!(
        "{}: trailers follow\n",
        state.opts.name
    )));
    let mut frames = vec![Ok::<_, BoxError>(data)];
    if wants_trailers {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-trailer", HeaderValue::from_static("done"));
        frames.push(Ok(Frame::trailers(trailers)));
    }
    let mut resp =
        Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync());
    if wants_trailers {
        resp.headers_mut()
            .insert(header::TRAILER, HeaderValue::from_static("x-trailer"));
    }
    resp
}

fn websocket(req: Request<Incoming>, state: &State) -> Response<Body> {
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let (Some(key), true, true, true) = (
        key,
        req.version() == Version::HTTP_11,
        has_token(header::CONNECTION, "upgrade"),
        has_token(header::UPGRADE, "websocket"),
    ) else {
        return bad_request("/ws: expected an HTTP/1.1 WebSocket upgrade request".into());
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut resp = bad_request("/ws: only WebSocket version 13 is supported".into());
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return resp;
    }
    let accept = derive_accept_key(key.as_bytes());
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return bad_request("/ws: bad Sec-WebSocket-Key".into());
    };

    let upgrade = hyper::upgrade::on(req);
    let shutdown = state.shutdown.clone();
    state.shutdown.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => ws_echo(TokioIo::new(upgraded), shutdown).await,
            Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
        }
    });

    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

/// Echoes every text and binary message until the peer closes (pings are
/// answered by the protocol layer); on shutdown, closes with "going away".
async fn ws_echo<S>(io: S, shutdown: Shutdown)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(msg)) if msg.is_text() || msg.is_binary() => {
                    if let Err(error) = ws.send(msg).await {
                        tracing::debug!(%error, "websocket send failed");
                        break;
                    }
                }
                // Ping, pong, close: handled by the protocol layer; a close
                // is answered and the stream then ends.
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::debug!(%error, "websocket ended with an error");
                    break;
                }
                None => break,
            },
            _ = shutdown.signaled() => {
                let frame = CloseFrame { code: CloseCode::Away, reason: "server shutting down".into() };
                let _ = ws.close(Some(frame)).await;
                break;
            }
        }
    }
}
