//! `trellis app load`: a bounded, fixed-rate HTTP load generator.
//!
//! Request `i` (0-based) is due at `start + i / rps`; `--concurrency` workers
//! take the next due request in turn, so the rate holds while responses are
//! faster than `concurrency / rps`, and falls behind (never bursts) when they
//! are not. `--rps 0` sends back to back. HTTP/1.1 workers own one keep-alive
//! connection each; with `--h2` all workers share one h2c connection.
//!
//! The run always ends: after `--requests`, after `--duration` (at most
//! [`MAX_DURATION`], also the limit when only `--requests` is given), or on
//! SIGINT/SIGTERM; requests in flight then finish within `--timeout`.
//!
//! A request is `ok` when a 2xx or 3xx response arrives with its whole body
//! before the timeout; anything else (other statuses, connection errors,
//! timeouts) is `failed`. Latency percentiles cover every request that got a
//! whole response.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use trellis_core::shutdown::Shutdown;

/// The longest run: the limit of `--duration`, and the bound of a run given
/// only `--requests`.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(3600);
const MAX_CONCURRENCY: u32 = 1024;

#[derive(clap::Args, Debug, Clone)]
#[command(group(
    clap::ArgGroup::new("bound")
        .required(true)
        .multiple(true)
        .args(["duration", "requests"])
))]
pub struct LoadArgs {
    /// Target URL, http:// only (the mesh adds TLS), e.g.
    /// http://web.demo.svc.cluster.local/. Names resolve through the system
    /// resolver, /etc/hosts included.
    #[arg(long)]
    pub(crate) url: String,
    /// Requests per second, in total; 0 sends back to back.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) rps: u32,
    /// Stop sending after this long (e.g. 10s, 500ms, 2m; at most 1h).
    #[arg(long, value_parser = super::parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// Stop after this many requests.
    #[arg(long, value_name = "N")]
    pub(crate) requests: Option<u64>,
    /// HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    #[arg(long)]
    pub(crate) h2: bool,
    /// Requests in flight at most (HTTP/1.1: one connection each; HTTP/2:
    /// streams on one connection).
    #[arg(long, value_name = "C", default_value_t = 1)]
    pub(crate) concurrency: u32,
    /// Host header (HTTP/2: :authority) to send instead of the URL's.
    #[arg(long, value_name = "HOST")]
    pub(crate) host: Option<String>,
    /// Limit for each request, from connecting to the end of the body.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub(crate) timeout: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum PlanError {
    #[error("--url {0:?} is not a URL: {1}")]
    Url(String, String),
    #[error("--url {0:?}: only http:// is supported (the mesh adds TLS)")]
    Scheme(String),
    #[error("--url {0:?} has no host")]
    NoHost(String),
    #[error("--host {0:?} is not a valid authority")]
    Host(String),
    #[error("refusing an unbounded run: give --duration or --requests")]
    Unbounded,
    #[error("--duration must be more than 0 and at most {}s", MAX_DURATION.as_secs())]
    Duration,
    #[error("--requests must be at least 1")]
    Requests,
    #[error("--concurrency must be from 1 to {MAX_CONCURRENCY}")]
    Concurrency,
    #[error("--timeout must be more than 0")]
    Timeout,
}

/// A checked load run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoadPlan {
    /// `host:port` to resolve and connect to.
    pub(crate) connect: String,
    /// Host header or :authority.
    pub(crate) authority: String,
    /// Path and query.
    pub(crate) path: String,
    pub(crate) rps: u32,
    /// When sending stops, counted from the start.
    pub(crate) duration: Duration,
    pub(crate) requests: Option<u64>,
    pub(crate) h2: bool,
    pub(crate) concurrency: u32,
    pub(crate) timeout: Duration,
}

impl LoadPlan {
    pub(crate) fn from_args(args: &LoadArgs) -> Result<Self, PlanError> {
        let uri: Uri = args
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| PlanError::Url(args.url.clone(), e.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(PlanError::Scheme(args.url.clone()));
        }
        let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
            return Err(PlanError::NoHost(args.url.clone()));
        };
        let connect = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let authority = match &args.host {
            Some(h) => match h.parse::<http::uri::Authority>() {
                Ok(a) => a.to_string(),
                Err(_) => return Err(PlanError::Host(h.clone())),
            },
            None => authority.to_string(),
        };
        let duration = match (args.duration, args.requests) {
            (None, None) => return Err(PlanError::Unbounded),
            (Some(d), _) if d.is_zero() || d > MAX_DURATION => return Err(PlanError::Duration),
            (Some(d), _) => d,
            (None, Some(_)) => MAX_DURATION,
        };
        if args.requests == Some(0) {
            return Err(PlanError::Requests);
        }
        if !(1..=MAX_CONCURRENCY).contains(&args.concurrency) {
            return Err(PlanError::Concurrency);
        }
        if args.timeout.is_zero() {
            return Err(PlanError::Timeout);
        }
        let plan = Self {
            connect,
            authority,
            path: uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned(),
            rps: args.rps,
            duration,
            requests: args.requests,
            h2: args.h2,
            concurrency: args.concurrency,
            timeout: args.timeout,
        };
        // Whatever could make the request invalid is in the plan: check it once.
        plan.request()
            .map_err(|_| PlanError::Host(plan.authority.clone()))?;
        Ok(plan)
    }

    /// The request every worker sends. HTTP/1.1: origin-form target and a
    /// Host header; HTTP/2: an absolute URI, whose authority hyper sends as
    /// :authority.
    pub(crate) fn request(&self) -> Result<Request<Empty<Bytes>>, http::Error> {
        let builder = if self.h2 {
            Request::get(format!("http://{}{}", self.authority, self.path)).version(Version::HTTP_2)
        } else {
            Request::get(self.path.as_str())
                .version(Version::HTTP_11)
                .header(header::HOST, self.authority.as_str())
        };
        builder
            .header(header::USER_AGENT, HeaderValue::from_static("trellis-load"))
            .body(Empty::new())
    }

    /// When request `i` (0-based) is due, as an offset from the start.
    pub(crate) fn due(&self, i: u64) -> Duration {
        if self.rps == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(i as f64 / f64::from(self.rps))
        }
    }
}

/// The JSON line `load` prints.
#[derive(Debug, Serialize)]
pub(crate) struct LoadSummary {
    pub(crate) sent: u64,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) p90_ms: Option<f64>,
    pub(crate) max_ms: Option<f64>,
    /// Failures without a response: connection errors and timeouts.
    pub(crate) errors: u64,
    /// Responses by status code.
    pub(crate) status: BTreeMap<u16, u64>,
    pub(crate) elapsed_s: f64,
    /// Achieved requests per second.
    pub(crate) rps: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_error: Option<String>,
}

#[derive(Debug, Default)]
struct Stats {
    sent: u64,
    ok: u64,
    failed: u64,
    errors: u64,
    status: BTreeMap<u16, u64>,
    latencies_us: Vec<u64>,
    first_error: Option<String>,
}

impl Stats {
    fn response(&mut self, status: StatusCode, took: Duration) {
        if status.is_success() || status.is_redirection() {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        *self.status.entry(status.as_u16()).or_default() += 1;
        self.latencies_us
            .push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    fn error(&mut self, error: String) {
        self.failed += 1;
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }

    fn merge(&mut self, other: Stats) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.failed += other.failed;
        self.errors += other.errors;
        for (code, n) in other.status {
            *self.status.entry(code).or_default() += n;
        }
        self.latencies_us.extend(other.latencies_us);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn summary(mut self, elapsed: Duration) -> LoadSummary {
        self.latencies_us.sort_unstable();
        let pct = |p: f64| percentile_ms(&self.latencies_us, p);
        let elapsed_s = elapsed.as_secs_f64();
        LoadSummary {
            sent: self.sent,
            ok: self.ok,
            failed: self.failed,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            p90_ms: pct(0.90),
            max_ms: pct(1.0),
            errors: self.errors,
            status: self.status,
            elapsed_s: round3(elapsed_s),
            rps: if elapsed_s > 0.0 {
                round3(self.sent as f64 / elapsed_s)
            } else {
                0.0
            },
            first_error: self.first_error,
        }
    }
}

/// Nearest-rank percentile of sorted microsecond samples, in milliseconds.
pub(crate) fn percentile_ms(sorted_us: &[u64], p: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = ((p * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    Some(round3(sorted_us[rank - 1] as f64 / 1e3))
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("{}", chain(.0))]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Build(#[from] http::Error),
}

/// An error and its sources, `outer: inner: …`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// What every worker shares.
struct Run {
    plan: LoadPlan,
    addrs: Vec<SocketAddr>,
    start: Instant,
    next: AtomicU64,
    stop: Shutdown,
    /// The shared h2c connection (`--h2`), made on first use and remade
    /// when it closes.
    h2: Mutex<Option<http2::SendRequest<Empty<Bytes>>>>,
}

/// Runs `plan` until it is done or `stop` begins; returns the summary.
pub(crate) async fn run(plan: LoadPlan, stop: Shutdown) -> anyhow::Result<LoadSummary> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(plan.connect.as_str())
        .await
        .with_context(|| format!("resolving {}", plan.connect))?
        .collect();
    anyhow::ensure!(!addrs.is_empty(), "{} resolved to no address", plan.connect);
    tracing::info!(
        target = %plan.connect, authority = %plan.authority, rps = plan.rps,
        concurrency = plan.concurrency, h2 = plan.h2, "sending load"
    );
    let run = Arc::new(Run {
        addrs,
        start: Instant::now(),
        next: AtomicU64::new(0),
        stop,
        h2: Mutex::new(None),
        plan,
    });
    let mut workers = JoinSet::new();
    for _ in 0..run.plan.concurrency {
        workers.spawn(worker(run.clone()));
    }
    let mut stats = Stats::default();
    while let Some(done) = workers.join_next().await {
        stats.merge(done.context("a load worker failed")?);
    }
    Ok(stats.summary(run.start.elapsed()))
}

async fn worker(run: Arc<Run>) -> Stats {
    let plan = &run.plan;
    let mut stats = Stats::default();
    let mut h1: Option<http1::SendRequest<Empty<Bytes>>> = None;
    loop {
        let i = run.next.fetch_add(1, Ordering::Relaxed);
        if plan.requests.is_some_and(|n| i >= n) {
            break;
        }
        let due = plan.due(i).max(run.start.elapsed());
        if due >= plan.duration || run.stop.is_shutting_down() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until((run.start + due).into()) => {}
            _ = run.stop.signaled() => break,
        }
        stats.sent += 1;
        let began = Instant::now();
        match tokio::time::timeout(plan.timeout, request(&run, &mut h1)).await {
            Ok(Ok(status)) => stats.response(status, began.elapsed()),
            Ok(Err(e)) => stats.error(e.to_string()),
            Err(_) => {
                // The connection is in an unknown state: start afresh.
                h1 = None;
                stats.error(format!("no whole response within {:?}", plan.timeout));
            }
        }
    }
    stats
}

/// Sends one request and reads the whole response body.
async fn request(
    run: &Run,
    h1: &mut Option<http1::SendRequest<Empty<Bytes>>>,
) -> Result<StatusCode, RequestError> {
    let req = run.plan.request()?;
    let resp = if run.plan.h2 {
        let mut send = h2_conn(run).await?;
        send.ready().await?;
        send.send_request(req).await?
    } else {
        let mut send = match h1.take() {
            Some(send) if !send.is_closed() => send,
            _ => h1_connect(run).await?,
        };
        if send.ready().await.is_err() {
            // The server closed the idle keep-alive connection: one retry,
            // on a new connection, before anything was sent.
            send = h1_connect(run).await?;
            send.ready().await?;
        }
        let resp = send.send_request(req).await;
        *h1 = Some(send);
        resp?
    };
    let status = resp.status();
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(status)
}

async fn tcp_connect(run: &Run) -> Result<TcpStream, RequestError> {
    let mut last = None;
    for &addr in &run.addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(source) => last = Some(RequestError::Connect { addr, source }),
        }
    }
    Err(last.unwrap_or_else(|| RequestError::Connect {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source: io::Error::new(io::ErrorKind::NotFound, "no address"),
    }))
}

async fn h1_connect(run: &Run) -> Result<http1::SendRequest<Empty<Bytes>>, RequestError> {
    let stream = tcp_connect(run).await?;
    let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "HTTP/1.1 connection ended with an error");
        }
    });
    Ok(send)
}

async fn h2_conn(run: &Run) -> Result<http2::SendRequest<Empty<Bytes>>, RequestError> {
    let mut shared = run.h2.lock().await;
    if let Some(send) = shared.as_ref().filter(|s| !s.is_closed()) {
        return Ok(send.clone());
    }
    let stream = tcp_connect(run).await?;
    let (send, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "HTTP/2 connection ended with an error");
        }
    });
    *shared = Some(send.clone());
    Ok(send)
}
