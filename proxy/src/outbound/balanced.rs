//! Outbound HTTP to a service the controller resolved: each request is
//! routed, balanced, timed out and retried, in stages:
//!
//! ```text
//! plan ──────────────► label ──► body ─────────────► tries (tower::retry) ─────────────────────────► respond
//! (route, timeouts,              (copied as it      each try (Tries, a tower Service):
//!  retry policy,                  streams, ≤ 64 KiB, pick (P2C) ─► endpoint: mutual TLS, or
//!  backend: one short             if the route may   plaintext if the mTLS policy allows ─► send
//!  lock, service.rs)              retry)             within the per-try timeout ─► peek a gRPC
//!                                                    status ─► account (latency, failure accrual)
//!                                                    after each try (Retries, a tower retry Policy):
//!                                                    traffic::retry::decide, the route's budget,
//!                                                    backoff, the body replayed
//! ```
//!
//! The route's request timeout bounds all of it, tries and backoffs: when
//! it expires, the client gets 504 (gRPC `DEADLINE_EXCEEDED`). A tunnel
//! (`Upgrade`, `CONNECT`) is one connection: balanced once, never retried.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body::Frame;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use rand::Rng as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tower::ServiceExt as _;
use trellis_core::addr::OrigDstAddr;

use super::endpoint_destination;
use crate::body::{tee, Replayable, ReqBody, REPLAY_LIMIT};
use crate::conn::ListenerContext;
use crate::detect::Protocol;
use crate::error::{Fault, ProxyError, Retry};
use crate::http::headers::{
    into_mesh_request, remove_hop_by_hop, socket_authority, strip_h2c_upgrade, wants_tunnel,
};
use crate::http::record::Handles;
use crate::http::{respond, server, tunnel, ProxyBody, Recorder};
use crate::mesh::Destination;
use crate::metrics::{RetryLabels, RouteLabels, ServiceOnlyLabels, ServiceRouteLabels};
use crate::service::{Plan, PlanError, ServiceState};
use crate::traffic::retry::{self, Attempt, RetryDecision, TryOutcome, Why};
use crate::traffic::route::RequestFacts as RouteFacts;

/// What every request on one connection to a service shares.
struct Connection {
    ctx: Arc<ListenerContext>,
    /// The golden-metric handles of this connection's requests.
    handles: Arc<Handles>,
    /// The service's address, as the client dialled it.
    orig_dst: OrigDstAddr,
    svc: Arc<ServiceState>,
    client: Protocol,
}

/// Serves one outbound HTTP connection to a service until it closes.
pub(super) async fn serve<I>(
    ctx: &Arc<ListenerContext>,
    io: I,
    orig_dst: OrigDstAddr,
    client: Protocol,
    svc: Arc<ServiceState>,
) -> Result<(), ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(Connection {
        ctx: ctx.clone(),
        handles: Arc::default(),
        orig_dst,
        svc,
        client,
    });
    let handle = move |req| Arc::clone(&conn).handle(req);
    server::serve(io, client, ctx.server_limits(), &ctx.shutdown, handle).await
}

impl Connection {
    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<ProxyBody> {
        strip_h2c_upgrade(req.headers_mut());
        let plan = self.svc.plan(&RouteFacts::of(&req));
        let recorder = self.label(&req, &plan);
        // Every try (and a tunnel) continues the client span.
        recorder.span.inject(req.headers_mut());
        let backend = match plan.backend {
            Ok(b) => b,
            Err(PlanError::NoBackend) => {
                let service = plan.service.to_string();
                return respond::fail(ProxyError::NoBackend { service }, recorder);
            }
        };
        if wants_tunnel(&req) {
            return self.tunnel(backend, req, recorder).await;
        }
        self.tries(plan, backend, req, recorder).await
    }

    /// The request's metric labels (the plan's service and route), and its
    /// timing started.
    fn label(&self, req: &Request<Incoming>, plan: &Plan) -> Recorder {
        let ctx = &self.ctx;
        let labels = RouteLabels {
            direction: ctx.direction,
            service: plan.service.clone(),
            route: plan.route.clone(),
            tls: false,
            peer: ctx.no_peer.clone(),
        };
        ctx.start_request(self.orig_dst, req, &self.handles, labels)
    }

    /// A tunnel: one endpoint, one connection, no retries.
    async fn tunnel(
        &self,
        backend: usize,
        req: Request<Incoming>,
        recorder: Recorder,
    ) -> Response<ProxyBody> {
        let (ctx, svc) = (&self.ctx, &self.svc);
        let Some(ep) = svc.pick(backend) else {
            let service = recorder.labels.service.to_string();
            return respond::fail(ProxyError::NoEndpoints { service }, recorder);
        };
        let addr = OrigDstAddr::from(ep.addr);
        let dest = match endpoint_destination(ctx, addr, ep.identity.as_ref()) {
            Ok(d) => d,
            Err(e) => {
                svc.finish(backend, ep.addr, Duration::ZERO, false);
                return respond::fail(e, recorder);
            }
        };
        let started = Instant::now();
        let result =
            tunnel::forward_to(&ctx.upstreams, &ctx.shutdown, addr, dest.as_deref(), req).await;
        svc.finish(backend, ep.addr, started.elapsed(), result.is_ok());
        respond::deliver(result.map(|r| (r, None)), recorder, self.client_h1())
    }

    /// Every try of a request, within the route's request timeout.
    async fn tries(
        self: Arc<Self>,
        plan: Plan,
        backend: usize,
        mut req: Request<Incoming>,
        mut recorder: Recorder,
    ) -> Response<ProxyBody> {
        remove_hop_by_hop(req.headers_mut());
        let (parts, body) = req.into_parts();
        let (body, replay) = match &plan.retry {
            Some(_) => {
                let (t, r) = tee(body, REPLAY_LIMIT);
                (ReqBody::Tee(t), Some(r))
            }
            None => (ReqBody::Stream(body), None),
        };
        let template = Arc::new(Template {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
        });
        let route_labels = ServiceRouteLabels {
            direction: self.ctx.direction,
            service: plan.service.clone(),
            route: plan.route.clone(),
        };
        let deadline = plan.timeouts.request.map(|t| recorder.start + t);
        // A gRPC status may come in trailers after initial metadata; when
        // the route retries gRPC codes, each try reads its response's first
        // frame to see it before the retry decision.
        let peek = recorder.grpc
            && plan
                .retry
                .as_ref()
                .is_some_and(|p| !p.grpc_codes.is_empty());
        let shared = Arc::new(Shared {
            conn: self.clone(),
            backend,
            plan,
            deadline,
            replay,
            peek,
            route_labels,
        });
        let policy = Retries {
            shared: shared.clone(),
            retries: 0,
        };
        let first = Try {
            template,
            body: Some(body),
        };
        let tries = tower::retry::Retry::new(policy, Tries(shared.clone())).oneshot(first);
        let result = match deadline {
            Some(d) => tokio::time::timeout_at(d, tries).await.ok(),
            None => Some(tries.await),
        };
        match result {
            Some(Ok(tried)) => {
                if let Some(d) = &tried.dest {
                    recorder.labels.peer = d.peer.clone();
                    recorder.labels.tls = true;
                }
                respond::respond(tried.rsp, tried.first, recorder, self.client_h1())
            }
            Some(Err(Failed { error, dest })) => {
                if matches!(error, ProxyError::TryTimeout { .. }) {
                    return shared.timed_out(recorder);
                }
                if let Some(d) = &dest {
                    recorder.labels.peer = d.peer.clone();
                    recorder.labels.tls = true;
                }
                respond::fail(error, recorder)
            }
            None => shared.timed_out(recorder),
        }
    }

    fn client_h1(&self) -> bool {
        self.client != Protocol::H2
    }
}

/// What every try of one request reads.
struct Shared {
    conn: Arc<Connection>,
    backend: usize,
    plan: Plan,
    deadline: Option<Instant>,
    /// The body's copy, when the route may retry.
    replay: Option<Replayable>,
    peek: bool,
    route_labels: ServiceRouteLabels,
}

impl Shared {
    fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The route's request timeout expired: 504, counted.
    fn timed_out(&self, recorder: Recorder) -> Response<ProxyBody> {
        let metrics = &self.conn.ctx.metrics;
        metrics
            .traffic
            .timeouts
            .get_or_create(&self.route_labels)
            .inc();
        let timeouts = &self.plan.timeouts;
        let timeout = timeouts
            .request
            .or(timeouts.backend_request)
            .unwrap_or_default();
        let service = self.route_labels.service.to_string();
        respond::fail(ProxyError::RequestTimeout { service, timeout }, recorder)
    }
}

/// What every try of a request copies.
struct Template {
    method: Method,
    uri: Uri,
    version: http::Version,
    headers: HeaderMap,
}

/// One try of a request: the request as the client sent it, and the body
/// this try sends (the client's for the first, a replay for the others).
struct Try {
    template: Arc<Template>,
    body: Option<ReqBody>,
}

impl Try {
    fn request(self) -> Request<ReqBody> {
        let t = &self.template;
        let mut req = Request::new(self.body.unwrap_or_else(ReqBody::empty));
        *req.method_mut() = t.method.clone();
        *req.uri_mut() = t.uri.clone();
        *req.version_mut() = t.version;
        *req.headers_mut() = t.headers.clone();
        req
    }
}

/// A try that got a response: the response, its first frame if it was
/// read (to see a gRPC status in trailers), and the meshed destination it
/// came from.
struct Tried {
    rsp: Response<Incoming>,
    first: Option<Frame<Bytes>>,
    dest: Option<Arc<Destination>>,
}

/// A try that failed, and the meshed destination it went to, if any.
struct Failed {
    error: ProxyError,
    dest: Option<Arc<Destination>>,
}

impl From<ProxyError> for Failed {
    fn from(error: ProxyError) -> Self {
        Self { error, dest: None }
    }
}

/// Each try as a tower `Service`: pick an endpoint, send, account.
#[derive(Clone)]
struct Tries(Arc<Shared>);

type TryFuture = Pin<Box<dyn Future<Output = Result<Tried, Failed>> + Send>>;

impl tower::Service<Try> for Tries {
    type Response = Tried;
    type Error = Failed;
    type Future = TryFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, t: Try) -> TryFuture {
        Box::pin(one_try(self.0.clone(), t))
    }
}

/// One try: pick, reach the endpoint, send within the per-try timeout,
/// and report to the balancer how it went.
async fn one_try(shared: Arc<Shared>, t: Try) -> Result<Tried, Failed> {
    let (ctx, svc) = (&shared.conn.ctx, &shared.conn.svc);
    let backend = shared.backend;
    let Some(ep) = svc.pick(backend) else {
        let service = shared.route_labels.service.to_string();
        return Err(ProxyError::NoEndpoints { service }.into());
    };
    let addr = OrigDstAddr::from(ep.addr);
    let dest = endpoint_destination(ctx, addr, ep.identity.as_ref()).inspect_err(|_| {
        svc.finish(backend, ep.addr, Duration::ZERO, false);
    })?;
    let plan = &shared.plan;
    let limit = retry::try_timeout(plan.retry.as_ref(), plan.timeouts, shared.remaining());
    let started = Instant::now();
    let sent = send(&shared, addr, dest.as_deref(), t.request());
    let result = match limit {
        Some(limit) => tokio::time::timeout(limit, sent).await.unwrap_or_else(|_| {
            let service = shared.route_labels.service.to_string();
            Err(ProxyError::TryTimeout {
                service,
                timeout: limit,
            })
        }),
        None => sent.await,
    };
    // An error counts against the endpoint when it is the upstream's
    // fault; a response, when it says the endpoint is failing.
    let healthy = match &result {
        Ok((rsp, first)) => {
            let grpc = response_grpc_status(rsp, first.as_ref());
            !rsp.status().is_server_error() && grpc != Some(retry::grpc_code::UNAVAILABLE)
        }
        Err(e) => e.verdict().fault != Fault::Upstream,
    };
    if svc.finish(backend, ep.addr, started.elapsed(), healthy) {
        let service = shared.route_labels.service.clone();
        tracing::info!(%service, endpoint = %ep.addr, "endpoint ejected after consecutive failures");
        ctx.metrics
            .traffic
            .ejections
            .get_or_create(&ServiceOnlyLabels { service })
            .inc();
    }
    match result {
        Ok((rsp, first)) => Ok(Tried { rsp, first, dest }),
        Err(error) => Err(Failed { error, dest }),
    }
}

/// Sends one try to `addr` (inside mutual TLS to `dest` when meshed) and,
/// when the request's gRPC status may be retried, reads the response's
/// first frame.
async fn send(
    shared: &Shared,
    addr: OrigDstAddr,
    dest: Option<&Destination>,
    mut req: Request<ReqBody>,
) -> Result<(Response<Incoming>, Option<Frame<Bytes>>), ProxyError> {
    let upstreams = &shared.conn.ctx.upstreams;
    let client_h1 = shared.conn.client_h1();
    let rsp = match dest {
        Some(dest) => {
            into_mesh_request(&mut req, client_h1, &socket_authority(addr));
            upstreams.send_mesh(addr, dest, req).await
        }
        None if client_h1 => upstreams.send_http1(addr, req).await,
        None => upstreams.send_http2(addr, req).await,
    }?;
    // Only a request already sent whole can be retried: checked now that
    // the response has come.
    let replayable = shared.replay.as_ref().is_some_and(Replayable::complete);
    if !shared.peek || !replayable || retry::grpc_status(rsp.headers()).is_some() {
        return Ok((rsp, None));
    }
    let (parts, mut body) = rsp.into_parts();
    let first = match body.frame().await {
        None => None,
        Some(Ok(frame)) => Some(frame),
        Some(Err(e)) => {
            return Err(ProxyError::Upstream {
                addr,
                source: Box::new(e),
            })
        }
    };
    Ok((Response::from_parts(parts, body), first))
}

/// A response's gRPC status: in its headers, or in trailers already read.
fn response_grpc_status(rsp: &Response<Incoming>, first: Option<&Frame<Bytes>>) -> Option<i32> {
    retry::grpc_status(rsp.headers()).or_else(|| {
        first
            .and_then(Frame::trailers_ref)
            .and_then(retry::grpc_status)
    })
}

/// The retry decision after each try, as a tower retry `Policy` over
/// [`retry::decide`]: a try is repeated only when the route's policy
/// allows it for this outcome, its budget has room, the deadline leaves
/// time, and the whole body can be replayed.
#[derive(Clone)]
struct Retries {
    shared: Arc<Shared>,
    /// Retries made so far.
    retries: u32,
}

impl tower::retry::Policy<Try, Tried, Failed> for Retries {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, req: &mut Try, result: &mut Result<Tried, Failed>) -> Option<Self::Future> {
        let shared = &*self.shared;
        let (policy, replay) = (shared.plan.retry.as_ref()?, shared.replay.as_ref()?);
        let outcome = match result {
            Ok(tried) => TryOutcome::Response {
                status: tried.rsp.status(),
                grpc_status: response_grpc_status(&tried.rsp, tried.first.as_ref()),
            },
            Err(Failed { error, .. }) => match error.verdict().retry {
                Retry::NeverSent => TryOutcome::ConnectError,
                Retry::MaybeSent if matches!(error, ProxyError::TryTimeout { .. }) => {
                    TryOutcome::PerTryTimeout
                }
                Retry::MaybeSent => TryOutcome::Reset,
                Retry::No => return None,
            },
        };
        let attempt = Attempt {
            method: &req.template.method,
            body_buffered: replay.replayable_len(),
            outcome,
            retries: self.retries,
            remaining: shared.remaining(),
            jitter: rand::rng().random(),
        };
        let withdraw = || {
            shared
                .plan
                .budget
                .as_ref()
                .is_none_or(|b| b.try_withdraw(std::time::Instant::now()))
        };
        let (metrics, labels) = (&shared.conn.ctx.metrics, &shared.route_labels);
        match retry::decide(policy, &attempt, withdraw) {
            RetryDecision::Retry { after, reason } => {
                let replayed = replay.replay()?;
                metrics
                    .traffic
                    .retries
                    .get_or_create(&RetryLabels {
                        direction: labels.direction,
                        service: labels.service.clone(),
                        route: labels.route.clone(),
                        reason: reason.as_str(),
                    })
                    .inc();
                tracing::debug!(service = %labels.service, route = %labels.route, reason = reason.as_str(), ?after, "retrying");
                req.body = Some(ReqBody::Replay(replayed));
                self.retries += 1;
                Some(tokio::time::sleep(after))
            }
            RetryDecision::NoRetry(Why::BudgetExhausted) => {
                metrics.traffic.budget_exhausted.get_or_create(labels).inc();
                None
            }
            RetryDecision::NoRetry(why) => {
                tracing::debug!(service = %labels.service, route = %labels.route, ?outcome, why = why.as_str(), "not retried");
                None
            }
        }
    }

    fn clone_request(&mut self, req: &Try) -> Option<Try> {
        // Without a copy of the body there is nothing to send again; the
        // body of a retry is set when it is decided.
        self.shared.replay.as_ref()?;
        Some(Try {
            template: req.template.clone(),
            body: None,
        })
    }
}
