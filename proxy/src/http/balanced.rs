//! One request to a service the controller resolved: route, balance,
//! time out, retry.
//!
//! ```text
//! plan (route, timeouts, retry, backend) ──► try: pick endpoint ──► send ──► classify
//!                                              ▲                                │
//!                                              └──── retry (policy, budget) ◄───┘
//! ```
//!
//! Each try goes to the endpoint the backend's balancer picks, over mutual
//! TLS when the endpoint is meshed. A request whose rule may retry has its
//! body copied as it streams ([`crate::body::tee`]); [`retry::decide`]
//! says whether a failed try is tried again, which it never does past the
//! route's timeout or beyond its budget. The route's request timeout bounds
//! every try and every backoff: when it expires, the client gets 504
//! (gRPC `DEADLINE_EXCEEDED`).

use http_body_util::BodyExt as _;
use rand::Rng as _;

use super::*;
use crate::body::{tee, ReqBody, REPLAY_LIMIT};
use crate::conn::check_plaintext;
use crate::metrics::{RetryLabels, ServiceOnlyLabels, ServiceRouteLabels};
use crate::plaintext::Why as PlainWhy;
use crate::service::{PlanError, ServiceState};
use crate::traffic::retry::{self, Attempt, RetryDecision, TryOutcome, Why};
use crate::traffic::route::RequestFacts as RouteFacts;

/// What every try of a request copies.
struct Template {
    method: Method,
    uri: Uri,
    version: http::Version,
    headers: HeaderMap,
}

impl Template {
    fn build(&self, body: ReqBody) -> Request<ReqBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

pub(super) async fn forward(
    ctx: &HttpContext,
    svc: &ServiceState,
    mut req: Request<Incoming>,
    mut recorder: Recorder,
) -> Response<ProxyBody> {
    let client_h1 = ctx.protocol != Protocol::H2;
    let plan = svc.plan(&RouteFacts::of(&req));
    recorder.labels.service = plan.service.clone();
    recorder.labels.route = plan.route.clone();
    let route_labels = ServiceRouteLabels {
        direction: ctx.direction,
        service: plan.service.clone(),
        route: plan.route.clone(),
    };
    let fail = |e: ProxyError, mut recorder: Recorder| {
        let verdict = e.verdict();
        tracing::debug!(error = %e, reason = verdict.reason, "request failed");
        let rsp = error_response(verdict, recorder.grpc);
        recorder.status = rsp.status();
        recorder.grpc_status = recorder.grpc.then_some(verdict.grpc_status);
        recorder.finish(false);
        rsp
    };
    let backend = match plan.backend {
        Ok(b) => b,
        Err(PlanError::NoBackend) => {
            let service = plan.service.to_string();
            return fail(ProxyError::NoBackend { service }, recorder);
        }
    };

    if wants_tunnel(&req) {
        // A tunnel is one connection: no retries, balanced once.
        let Some(ep) = svc.pick(backend) else {
            let service = plan.service.to_string();
            return fail(ProxyError::NoEndpoints { service }, recorder);
        };
        let dest = match endpoint_destination(ctx, ep.addr, &ep.identity) {
            Ok(d) => d,
            Err(e) => {
                svc.finish(backend, ep.addr, Duration::ZERO, false);
                return fail(e, recorder);
            }
        };
        let addr = OrigDstAddr::from(ep.addr);
        let started = Instant::now();
        let result = tunnel::forward_to(ctx, addr, dest.as_deref(), req).await;
        svc.finish(backend, ep.addr, started.elapsed(), result.is_ok());
        return finish(ctx, result, recorder, client_h1, fail);
    }

    remove_hop_by_hop(req.headers_mut());
    let (parts, body) = req.into_parts();
    let template = Template {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
    };
    let (mut body, replay) = match &plan.retry {
        Some(_) => {
            let (t, r) = tee(body, REPLAY_LIMIT);
            (Some(ReqBody::Tee(t)), Some(r))
        }
        None => (Some(ReqBody::Stream(body)), None),
    };
    let deadline = plan.timeouts.request.map(|t| recorder.start + t);
    let mut retries = 0;
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if remaining.is_some_and(|r| r.is_zero()) {
            return timed_out(ctx, &plan.timeouts, &route_labels, recorder, fail);
        }
        let Some(ep) = svc.pick(backend) else {
            let service = plan.service.to_string();
            return fail(ProxyError::NoEndpoints { service }, recorder);
        };
        let dest = match endpoint_destination(ctx, ep.addr, &ep.identity) {
            Ok(d) => d,
            Err(e) => {
                svc.finish(backend, ep.addr, Duration::ZERO, false);
                return fail(e, recorder);
            }
        };
        let limit = retry::try_timeout(plan.retry.as_ref(), plan.timeouts, remaining);
        let req = template.build(body.take().unwrap_or_else(ReqBody::empty));
        let started = Instant::now();
        // A gRPC status may come in trailers after initial metadata; when
        // the route retries gRPC codes and the request can be replayed,
        // read the response's first frame to see it before deciding.
        let peek = recorder.grpc
            && plan
                .retry
                .as_ref()
                .is_some_and(|p| !p.grpc_codes.is_empty());
        let sent = async {
            let rsp = send(ctx, ep.addr, dest.as_deref(), req, client_h1).await?;
            // Only a request already sent whole can be retried: checked
            // now that the response has come.
            let replayable = replay.as_ref().is_some_and(|r| r.complete());
            if !peek || !replayable || retry::grpc_status(rsp.headers()).is_some() {
                return Ok((rsp, None));
            }
            let (parts, mut body) = rsp.into_parts();
            let first = match body.frame().await {
                None => None,
                Some(Ok(frame)) => Some(frame),
                Some(Err(e)) => {
                    let addr = OrigDstAddr::from(ep.addr);
                    return Err(ProxyError::Upstream {
                        addr,
                        source: Box::new(e),
                    });
                }
            };
            Ok((Response::from_parts(parts, body), first))
        };
        let result = match limit {
            Some(limit) => tokio::time::timeout(limit, sent).await.ok(),
            None => Some(sent.await),
        };
        let outcome = match &result {
            None => TryOutcome::PerTryTimeout,
            Some(Err(e)) if never_sent(e) => TryOutcome::ConnectError,
            Some(Err(_)) => TryOutcome::Reset,
            Some(Ok((rsp, first))) => TryOutcome::Response {
                status: rsp.status(),
                grpc_status: retry::grpc_status(rsp.headers()).or_else(|| {
                    first
                        .as_ref()
                        .and_then(Frame::trailers_ref)
                        .and_then(retry::grpc_status)
                }),
            },
        };
        let healthy = match outcome {
            TryOutcome::Response {
                status,
                grpc_status,
            } => !status.is_server_error() && grpc_status != Some(retry::grpc_code::UNAVAILABLE),
            _ => false,
        };
        if svc.finish(backend, ep.addr, started.elapsed(), healthy) {
            tracing::info!(service = %plan.service, endpoint = %ep.addr, "endpoint ejected after consecutive failures");
            ctx.metrics
                .traffic
                .ejections
                .get_or_create(&ServiceOnlyLabels {
                    service: plan.service.clone(),
                })
                .inc();
        }
        if let (Some(policy), Some(replay)) = (&plan.retry, &replay) {
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let attempt = Attempt {
                method: &template.method,
                body_buffered: replay.replayable_len(),
                outcome,
                retries,
                remaining,
                jitter: rand::rng().random(),
            };
            let withdraw = || {
                plan.budget
                    .as_ref()
                    .is_none_or(|b| b.try_withdraw(std::time::Instant::now()))
            };
            match retry::decide(policy, &attempt, withdraw) {
                RetryDecision::Retry { after, reason } => {
                    if let Some(replayed) = replay.replay() {
                        ctx.metrics
                            .traffic
                            .retries
                            .get_or_create(&RetryLabels {
                                direction: ctx.direction,
                                service: plan.service.clone(),
                                route: plan.route.clone(),
                                reason: reason.as_str(),
                            })
                            .inc();
                        tracing::debug!(service = %plan.service, route = %plan.route, reason = reason.as_str(), ?after, "retrying");
                        drop(result);
                        tokio::time::sleep(after).await;
                        body = Some(ReqBody::Replay(replayed));
                        retries += 1;
                        continue;
                    }
                }
                RetryDecision::NoRetry(Why::BudgetExhausted) => {
                    ctx.metrics
                        .traffic
                        .budget_exhausted
                        .get_or_create(&route_labels)
                        .inc();
                }
                RetryDecision::NoRetry(why) => {
                    tracing::debug!(service = %plan.service, route = %plan.route, ?outcome, why = why.as_str(), "not retried");
                }
            }
        }
        return match result {
            None => timed_out(ctx, &plan.timeouts, &route_labels, recorder, fail),
            Some(result) => {
                if let Some(d) = &dest {
                    recorder.labels.peer = d.peer.clone();
                    recorder.labels.tls = true;
                }
                finish_peeked(ctx, result, recorder, client_h1, fail)
            }
        };
    }
}

/// What every upstream response gets before it goes to the client: no
/// hop-by-hop headers (an upgrade's are its own), the client's HTTP
/// version, and its status (and gRPC status) recorded.
fn prepare_response(rsp: &mut Response<Incoming>, client_h1: bool, recorder: &mut Recorder) {
    if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
        remove_hop_by_hop(rsp.headers_mut());
    }
    *rsp.version_mut() = if client_h1 {
        http::Version::HTTP_11
    } else {
        http::Version::HTTP_2
    };
    recorder.status = rsp.status();
    recorder.grpc_status = grpc_status(rsp.headers());
}

/// [`finish`] for a try whose first response frame may have been read.
fn finish_peeked(
    ctx: &HttpContext,
    result: Result<(Response<Incoming>, Option<Frame<Bytes>>), ProxyError>,
    mut recorder: Recorder,
    client_h1: bool,
    fail: impl FnOnce(ProxyError, Recorder) -> Response<ProxyBody>,
) -> Response<ProxyBody> {
    match result {
        Ok((rsp, None)) => finish(ctx, Ok(rsp), recorder, client_h1, fail),
        Ok((mut rsp, Some(first))) => {
            prepare_response(&mut rsp, client_h1, &mut recorder);
            let mut first = Some(first);
            rsp.map(|body| Either::Left(RecordBody::with_peeked(body, recorder, first.take())))
        }
        Err(e) => finish(ctx, Err(e), recorder, client_h1, fail),
    }
}

/// How to reach an endpoint: mutual TLS to its identity, or plaintext
/// when the outbound mTLS policy allows it ([`crate::plaintext`]): an
/// endpoint named without an identity, or a meshed one while this proxy
/// has no identity of its own (its proxy then refuses it under
/// `all-authenticated`).
fn endpoint_destination(
    ctx: &HttpContext,
    addr: SocketAddr,
    id: &Option<SpiffeId>,
) -> Result<Option<Arc<Destination>>, ProxyError> {
    let why = match id {
        Some(id) => match ctx.mesh.destination_for(id) {
            Some(dest) => {
                ctx.mesh.outbound.seen_meshed(addr);
                return Ok(Some(dest));
            }
            None => {
                tracing::warn!(identity = %id, "meshed endpoint, but this proxy has no identity");
                PlainWhy::NoLocalIdentity
            }
        },
        None => PlainWhy::NoIdentity,
    };
    check_plaintext(&ctx.mesh, &ctx.metrics, OrigDstAddr::from(addr), why)?;
    Ok(None)
}

/// Connection failures before a byte was sent: retrying cannot repeat a
/// request.
fn never_sent(e: &ProxyError) -> bool {
    matches!(
        e,
        ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::TlsHandshake { .. }
    )
}

async fn send(
    ctx: &HttpContext,
    addr: SocketAddr,
    dest: Option<&Destination>,
    mut req: Request<ReqBody>,
    client_h1: bool,
) -> Result<Response<Incoming>, ProxyError> {
    let addr = OrigDstAddr::from(addr);
    let authority = socket_authority(addr);
    match dest {
        Some(dest) => {
            into_mesh_request(&mut req, client_h1, &authority);
            ctx.upstreams.send_mesh(addr, dest, req).await
        }
        None if client_h1 => {
            *req.uri_mut() = absolute_uri(&authority, req.uri())
                .map_err(|e| ProxyError::Client(std::io::Error::other(e)))?;
            ctx.upstreams.send_http1(addr, req).await
        }
        None => ctx.upstreams.send_http2(addr, req).await,
    }
}

fn timed_out(
    ctx: &HttpContext,
    timeouts: &crate::traffic::route::Timeouts,
    labels: &ServiceRouteLabels,
    recorder: Recorder,
    fail: impl FnOnce(ProxyError, Recorder) -> Response<ProxyBody>,
) -> Response<ProxyBody> {
    ctx.metrics.traffic.timeouts.get_or_create(labels).inc();
    let timeout = timeouts
        .request
        .or(timeouts.backend_request)
        .unwrap_or_default();
    let service = labels.service.to_string();
    fail(ProxyError::RequestTimeout { service, timeout }, recorder)
}

/// The response of the last try, as the client gets it.
fn finish(
    ctx: &HttpContext,
    result: Result<Response<Incoming>, ProxyError>,
    mut recorder: Recorder,
    client_h1: bool,
    fail: impl FnOnce(ProxyError, Recorder) -> Response<ProxyBody>,
) -> Response<ProxyBody> {
    match result {
        Ok(mut rsp) => {
            prepare_response(&mut rsp, client_h1, &mut recorder);
            rsp.map(|body| Either::Left(RecordBody::new(body, recorder)))
        }
        Err(e) => {
            ctx.metrics.tls_failure(ctx.direction, &e);
            if e.verdict().warn {
                tracing::warn!(error = %e, "request failed");
            }
            fail(e, recorder)
        }
    }
}

fn socket_authority(addr: OrigDstAddr) -> Authority {
    // A socket address always renders as a valid authority.
    Authority::try_from(addr.to_string()).unwrap_or_else(|_| Authority::from_static("invalid"))
}
