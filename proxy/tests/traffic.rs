//! The proxy with a (fake) controller, in process: services resolved to
//! endpoints on loopback, balanced per request, routes with timeouts and
//! retries, failure accrual, the controller going away, unknown
//! destinations, and the inbound policy streamed.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::controller::{backend, service, FakeController};
use support::*;
use tokio::net::TcpListener;
use trellis_api::discovery::v1 as pb;
use trellis_core::contract::proxy_env;

/// The service's virtual IP: nothing listens there, so a request that is
/// not balanced to an endpoint fails.
const VIP: &str = "10.255.0.10:80";
const WEB: &str = "web.test.svc.cluster.local:80";

/// An upstream that answers its `name`; every `fail_every`-th request (0:
/// none) gets 503, `/slow` waits 2 s. Counts what it served.
async fn named_upstream(name: &'static str, fail_every: u32) -> (SocketAddr, Arc<AtomicU32>) {
    delayed_upstream(name, fail_every, Duration::ZERO).await
}

/// [`named_upstream`] that takes `delay` over every answer.
async fn delayed_upstream(
    name: &'static str,
    fail_every: u32,
    delay: Duration,
) -> (SocketAddr, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicU32::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                    async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let mut rsp = Response::new(Full::new(Bytes::from(name)));
                        if fail_every > 0 && n.is_multiple_of(fail_every) {
                            *rsp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, served)
}

async fn proxy_with(controller: &FakeController, dst: &str) -> TestProxy {
    let addr = controller.addr.to_string();
    start_proxy(
        dst.parse().unwrap(),
        &[
            (proxy_env::CONTROLLER_ADDR, &addr),
            (proxy_env::POD_NAMESPACE, "test"),
            (proxy_env::POD_NAME, "client-0"),
            (proxy_env::RESOLVE_TIMEOUT, "2s"),
        ],
    )
    .await
}

fn open_policy() -> pb::InboundPolicy {
    pb::InboundPolicy {
        default_policy: "all-unauthenticated".into(),
        ..Default::default()
    }
}

/// `n` GETs of `path`; the bodies and statuses seen, counted.
async fn send(
    proxy: &TestProxy,
    n: usize,
    path: &str,
) -> (HashMap<String, u32>, HashMap<u16, u32>) {
    let client = h1_client();
    let mut bodies = HashMap::new();
    let mut statuses = HashMap::new();
    for _ in 0..n {
        let (status, _, body) = get(&client, proxy.outbound, path).await;
        *statuses.entry(status.as_u16()).or_default() += 1;
        *bodies
            .entry(String::from_utf8_lossy(&body).into_owned())
            .or_default() += 1;
    }
    (bodies, statuses)
}

fn retry_route(name: &str, retry: Option<pb::RetryPolicy>, timeout_ms: u64) -> pb::HttpRoute {
    pb::HttpRoute {
        name: name.into(),
        namespace: "test".into(),
        rules: vec![pb::HttpRule {
            matches: vec![],
            backends: vec![],
            timeouts: Some(pb::Timeouts {
                request_ms: timeout_ms,
                backend_request_ms: 0,
            }),
            retry,
        }],
    }
}

#[tokio::test]
async fn requests_are_balanced_per_request_and_prefer_the_faster_endpoints() {
    let ctl = FakeController::start().await;
    ctl.inbound(open_policy());
    let (a, _) = named_upstream("a", 0).await;
    let (b, _) = named_upstream("b", 0).await;
    let (slow, _) = delayed_upstream("slow", 0, Duration::from_millis(20)).await;
    ctl.resolve(VIP, service(WEB, &[(a, "a"), (b, "b"), (slow, "slow")]));
    let proxy = proxy_with(&ctl, VIP).await;
    // One HTTP/2 connection, 8 requests at a time: balanced per request,
    // not per connection.
    let client = h2_client();
    let mut bodies: HashMap<String, u32> = HashMap::new();
    for _ in 0..40 {
        let batch = (0..8).map(|_| get(&client, proxy.outbound, "/"));
        for (status, _, body) in futures_util::future::join_all(batch).await {
            assert_eq!(status, StatusCode::OK);
            *bodies
                .entry(String::from_utf8_lossy(&body).into_owned())
                .or_default() += 1;
        }
    }
    let (a, b, slow) = (bodies.get("a"), bodies.get("b"), bodies.get("slow"));
    let (a, b, slow) = (*a.unwrap_or(&0), *b.unwrap_or(&0), *slow.unwrap_or(&0));
    assert_eq!(a + b + slow, 320);
    assert!(
        a >= 32 && b >= 32,
        "both fast endpoints share the load: {bodies:?}"
    );
    assert!(
        slow < a.min(b),
        "the slow endpoint gets the least: {bodies:?}"
    );
    let m = metrics(proxy.admin).await;
    let line = format!(
        r#"trellis_http_requests_total{{direction="outbound",service="{WEB}",route="default",tls="false",peer="",status_code="200",classification="success"}}"#
    );
    assert_eq!(sample(&m, &line), Some(320.0), "{m}");
}

/// Asserts that each of `names` got its even share of `bodies`, ±10 %.
fn assert_even(bodies: &HashMap<String, u32>, names: &[&str], what: &str) {
    let total: u32 = bodies.values().sum();
    let share = total / names.len() as u32;
    for name in names {
        let got = bodies.get(*name).copied().unwrap_or(0);
        assert!(
            got.abs_diff(share) * 10 <= share,
            "{what}: {name} got {got} of {total} (even share {share}): {bodies:?}"
        );
    }
}

#[tokio::test]
async fn equal_endpoints_share_evenly_on_new_and_kept_alive_connections_and_after_scaling() {
    let ctl = FakeController::start().await;
    ctl.inbound(open_policy());
    let (a, _) = named_upstream("a", 0).await;
    let (b, _) = named_upstream("b", 0).await;
    let (c, _) = named_upstream("c", 0).await;
    ctl.resolve(VIP, service(WEB, &[(a, "a"), (b, "b"), (c, "c")]));
    let proxy = proxy_with(&ctl, VIP).await;

    // One kept-alive connection, one request at a time.
    let (bodies, statuses) = send(&proxy, 600, "/").await;
    assert_eq!(statuses.get(&200), Some(&600));
    assert_even(&bodies, &["a", "b", "c"], "one kept-alive connection");

    // A new connection for every request.
    let fresh = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let mut bodies: HashMap<String, u32> = HashMap::new();
    for _ in 0..600 {
        let (status, _, body) = get(&fresh, proxy.outbound, "/").await;
        assert_eq!(status, StatusCode::OK);
        *bodies
            .entry(String::from_utf8_lossy(&body).into_owned())
            .or_default() += 1;
    }
    assert_even(&bodies, &["a", "b", "c"], "a new connection each");

    // Scaled 1 → 3: once the proxy has the new endpoints, they get their
    // share straight away (no warm-up guess holds them back).
    let ctl2 = FakeController::start().await;
    ctl2.inbound(open_policy());
    ctl2.resolve(VIP, service(WEB, &[(a, "a")]));
    let proxy = proxy_with(&ctl2, VIP).await;
    assert_eq!(send(&proxy, 300, "/").await.0.get("a"), Some(&300));
    ctl2.resolve(VIP, service(WEB, &[(a, "a"), (b, "b"), (c, "c")]));
    let scaled = eventually(Duration::from_secs(5), || async {
        send(&proxy, 1, "/").await.0.keys().any(|k| k != "a")
    })
    .await;
    assert!(scaled, "the new endpoints were never used");
    let (bodies, _) = send(&proxy, 600, "/").await;
    assert_even(&bodies, &["a", "b", "c"], "after scaling 1 → 3");
}

#[tokio::test]
async fn a_slow_endpoint_gets_less_and_is_tried_again_once_its_estimate_decays() {
    let ctl = FakeController::start().await;
    ctl.inbound(open_policy());
    let (a, _) = named_upstream("a", 0).await;
    let (b, _) = named_upstream("b", 0).await;
    let (slow, slow_served) = delayed_upstream("slow", 0, Duration::from_millis(40)).await;
    ctl.resolve(VIP, service(WEB, &[(a, "a"), (b, "b"), (slow, "slow")]));
    let proxy = proxy_with(&ctl, VIP).await;
    let (bodies, _) = send(&proxy, 300, "/").await;
    let to_slow = bodies.get("slow").copied().unwrap_or(0);
    // Two answers make its first estimate; then it loses every comparison
    // until that decays (τ = 1 s) or goes stale, and each probe after
    // that confirms it slow again.
    assert!(
        to_slow <= 10,
        "the slow endpoint got {to_slow} of 300: {bodies:?}"
    );
    // It is tried again as its estimate decays: within a few seconds;
    // one request every 100 ms, bounded at 30 s.
    let before = slow_served.load(Ordering::Relaxed);
    let tried = eventually(Duration::from_secs(30), || async {
        send(&proxy, 1, "/").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        slow_served.load(Ordering::Relaxed) > before
    })
    .await;
    assert!(tried, "the slow endpoint was never tried again");
}

#[tokio::test]
async fn a_retry_route_hides_a_flaky_endpoint_and_counts_its_retries() {
    let ctl = FakeController::start().await;
    ctl.inbound(open_policy());
    // Every other request it sees fails: without retries half would.
    let (flaky, _) = named_upstream("flaky", 2).await;
    let mut r = service(WEB, &[(flaky, "flaky")]);
    r.http_routes = vec![retry_route(
        "web-retry",
        Some(pb::RetryPolicy {
            limit: 3,
            http_status_ranges: vec![pb::StatusRange { from: 500, to: 599 }],
            budget: Some(pb::RetryBudget {
                ratio: 1.0,
                min_per_second: 100,
                ttl_ms: 10_000,
            }),
            ..Default::default()
        }),
        5_000,
    )];
    ctl.resolve(VIP, r);
    let proxy = proxy_with(&ctl, VIP).await;
    let (_, statuses) = send(&proxy, 400, "/").await;
    assert_eq!(statuses.get(&200), Some(&400), "{statuses:?}");
    let m = metrics(proxy.admin).await;
    let retries = sample(
        &m,
        &format!(r#"trellis_http_retries_total{{direction="outbound",service="{WEB}",route="web-retry",reason="status_5xx"}}"#),
    )
    .unwrap_or(0.0);
    // The upstream fails its 2nd, 4th, … request: every client request
    // after the first meets one failure, retried once into a success.
    assert_eq!(retries, 399.0, "retries counted:\n{m}");
}

#[tokio::test]
async fn without_budget_failures_pass_through_and_are_counted() {
    let ctl = FakeController::start().await;
    ctl.inbound(open_policy());
    let (bad, _) = named_upstream("bad", 1).await;
    let mut r = service(WEB, &[(bad, "bad")]);
    r.http_routes = vec![retry_route(
        "web-retry",
        Some(pb::RetryPolicy {
            limit: 3,
            http_status_ranges: vec![pb::StatusRange { from: 500, to: 599 }],
            budget: Some(pb::RetryBudget {
                ratio: 0.0,
                min_per_second: 1,
                ttl_ms: 10_000,
            }),
            ..Default::default()
        }),
        5_000,
    )];
    ctl.resolve(VIP, r);
    let proxy = proxy_with(&ctl, VIP).await;
    let (_, statuses) = send(&proxy, 50, "/").await;
    assert_eq!(statuses.get(&503), Some(&50), "{statuses:?}");
    let m = metrics(proxy.admin).await;
    let retries = sample(
        &m,
        &format!(r#"trellis_http_retries_total{{direction="outbound",service="{WEB}",route="web-retry",reason="status_5xx"}}"#),
    )
    .unwrap_or(0.0);
    // The budget: ratio 0 and 1 a second over 10 s: at most 10 retries.
    assert!(retries <= 10.0, "{retries} retries beyond the budget");
    let exhausted = sample(
        &m,
        &format!(r#"trellis_http_retry_budget_exhausted_total{{direction="outbound",service="{WEB}",route="web-retry"}}"#),
    )
    .unwrap_or(0.0);
    assert!(exhausted >= 40.0, "budget exhaustion not counted:\n{m}");
}

#[tokio::test]
async fn a_route_timeout_answers_504_and_is_counted() {
    let ctl = FakeController::start().await;
    ctl.inbound(open_policy());
    let (slow, _) = named_upstream("slow", 0).await;
    let mut r = service(WEB, &[(slow, "slow")]);
    r.http_routes = vec![retry_route("web-timeout", None, 200)];
    ctl.resolve(VIP, r);
    let proxy = proxy_with(&ctl, VIP).await;
    let started = std::time::Instant::now();
    let (_, statuses) = send(&proxy, 3, "/slow").await;
    assert_eq!(statuses.get(&504), Some(&3), "{statuses:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "timeouts did not cut the wait"
    );
    let m = metrics(proxy.admin).await;
    let line = format!(
        r#"trellis_http_request_timeouts_total{{direction="outbound",service="{WEB}",route="web-timeout"}}"#
    );
    assert_eq!(sample(&m, &line), Some(3.0), "{m}");
}

#[tokio::test]
async fn failure_accrual_takes_a_failing_endpoint_out() {
    let ctl = FakeController::start().await;
    ctl.inbound(open_policy());
    // The healthy endpoint is slower than the latency a new endpoint is
    // assumed to have, so latency alone keeps choosing the failing one:
    // only failure accrual takes it out.
    let (good, _) = delayed_upstream("good", 0, Duration::from_millis(40)).await;
    let (bad, bad_served) = named_upstream("bad", 1).await;
    ctl.resolve(VIP, service(WEB, &[(good, "good"), (bad, "bad")]));
    let proxy = proxy_with(&ctl, VIP).await;
    let (_, statuses) = send(&proxy, 60, "/").await;
    let failed = statuses.get(&503).copied().unwrap_or(0);
    // Seven consecutive failures eject it; then only the healthy one.
    assert!((7..=9).contains(&failed), "{failed} failures: {statuses:?}");
    assert_eq!(failed, bad_served.load(Ordering::Relaxed));
    let m = metrics(proxy.admin).await;
    let line = format!(r#"trellis_endpoint_ejections_total{{service="{WEB}"}}"#);
    assert!(sample(&m, &line).unwrap_or(0.0) >= 1.0, "{m}");
}

#[tokio::test]
async fn endpoint_changes_apply_and_a_lost_controller_changes_nothing() {
    let ctl = FakeController::start().await;
    ctl.inbound(open_policy());
    let (a, _) = named_upstream("a", 0).await;
    let (b, _) = named_upstream("b", 0).await;
    ctl.resolve(VIP, service(WEB, &[(a, "a")]));
    let proxy = proxy_with(&ctl, VIP).await;
    assert_eq!(send(&proxy, 5, "/").await.0.get("a"), Some(&5));
    // Scaled: now only b. The next requests go there.
    ctl.resolve(VIP, service(WEB, &[(b, "b")]));
    let moved = eventually(Duration::from_secs(5), || async {
        send(&proxy, 1, "/").await.0.contains_key("b")
    })
    .await;
    assert!(moved, "the new endpoint set was not applied");
    // The controller goes away: the last state keeps working.
    ctl.stop();
    let (bodies, statuses) = send(&proxy, 20, "/").await;
    assert_eq!(statuses.get(&200), Some(&20));
    assert_eq!(bodies.get("b"), Some(&20));
}

#[tokio::test]
async fn unknown_destinations_go_where_they_were_addressed_and_are_counted() {
    let ctl = FakeController::start().await;
    ctl.inbound(open_policy());
    let (direct, _) = named_upstream("direct", 0).await;
    // The controller knows nothing of `direct`: it answers UNKNOWN.
    let proxy = proxy_with(&ctl, &direct.to_string()).await;
    let (bodies, _) = send(&proxy, 3, "/").await;
    assert_eq!(bodies.get("direct"), Some(&3));
    let m = metrics(proxy.admin).await;
    assert!(
        sample(&m, "trellis_discovery_unknown_destinations_total").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn the_inbound_policy_comes_from_the_controller_and_follows_it() {
    let ctl = FakeController::start().await;
    let (up, _) = named_upstream("app", 0).await;
    ctl.inbound(pb::InboundPolicy {
        default_policy: "deny".into(),
        ..Default::default()
    });
    let proxy = proxy_with(&ctl, &up.to_string()).await;
    let client = h1_client();
    let (status, _, _) = get(&client, proxy.inbound, "/").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    ctl.inbound(open_policy());
    let opened = eventually(Duration::from_secs(5), || async {
        get(&client, proxy.inbound, "/").await.0 == StatusCode::OK
    })
    .await;
    assert!(opened, "the new inbound policy was not applied");
}

#[tokio::test]
async fn a_split_sends_each_backend_its_share() {
    let ctl = FakeController::start().await;
    ctl.inbound(open_policy());
    let (v1, _) = named_upstream("v1", 0).await;
    let (v2, _) = named_upstream("v2", 0).await;
    let mut r = service(WEB, &[]);
    r.backends
        .push(backend("v1.test.svc.cluster.local:80", &[(v1, "v1")]));
    r.backends
        .push(backend("v2.test.svc.cluster.local:80", &[(v2, "v2")]));
    r.http_routes = vec![pb::HttpRoute {
        name: "split".into(),
        namespace: "test".into(),
        rules: vec![pb::HttpRule {
            backends: vec![
                pb::WeightedBackend {
                    authority: "v1.test.svc.cluster.local:80".into(),
                    weight: 80,
                },
                pb::WeightedBackend {
                    authority: "v2.test.svc.cluster.local:80".into(),
                    weight: 20,
                },
            ],
            ..Default::default()
        }],
    }];
    ctl.resolve(VIP, r);
    let proxy = proxy_with(&ctl, VIP).await;
    let (bodies, _) = send(&proxy, 500, "/").await;
    let v1 = bodies.get("v1").copied().unwrap_or(0);
    assert!((350..=450).contains(&v1), "{bodies:?}");
    assert_eq!(v1 + bodies.get("v2").copied().unwrap_or(0), 500);
}

/// A proxy of this fake controller with outbound mTLS `required`
/// (`exceptions`: its `TRELLIS_PROXY_PLAINTEXT_DESTINATIONS`).
async fn strict_proxy(controller: &FakeController, dst: &str, exceptions: &str) -> TestProxy {
    let addr = controller.addr.to_string();
    start_proxy(
        dst.parse().unwrap(),
        &[
            (proxy_env::CONTROLLER_ADDR, &addr),
            (proxy_env::POD_NAMESPACE, "test"),
            (proxy_env::POD_NAME, "client-0"),
            (proxy_env::RESOLVE_TIMEOUT, "500ms"),
            (proxy_env::OUTBOUND_MTLS, "required"),
            (proxy_env::PLAINTEXT_DESTINATIONS, exceptions),
        ],
    )
    .await
}

fn refused(m: &str, reason: &str) -> f64 {
    sample(
        m,
        &format!(r#"trellis_outbound_plaintext_refused_total{{reason="{reason}"}}"#),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn outbound_mtls_required_sends_no_plaintext_and_counts_each_refusal() {
    let ctl = FakeController::start().await;
    ctl.inbound(open_policy());
    // The controller names the service's endpoint without an identity (a
    // rogue controller could do this to any meshed destination).
    let (a, served_a) = named_upstream("a", 0).await;
    ctl.resolve(VIP, service(WEB, &[(a, "a")]));
    let proxy = strict_proxy(&ctl, VIP, "").await;
    let (_, statuses) = send(&proxy, 3, "/").await;
    assert_eq!(statuses.get(&403), Some(&3), "{statuses:?}");
    assert_eq!(
        served_a.load(Ordering::Relaxed),
        0,
        "plaintext reached the endpoint"
    );
    let m = metrics(proxy.admin).await;
    assert_eq!(refused(&m, "endpoint_without_identity"), 3.0, "{m}");

    // A destination the controller does not know.
    let (b, served_b) = named_upstream("b", 0).await;
    let proxy = strict_proxy(&ctl, &b.to_string(), "").await;
    let (_, statuses) = send(&proxy, 2, "/").await;
    assert_eq!(statuses.get(&403), Some(&2), "{statuses:?}");
    assert_eq!(served_b.load(Ordering::Relaxed), 0);
    let m = metrics(proxy.admin).await;
    // Counted once per connection: both requests came on one.
    assert_eq!(refused(&m, "unknown_destination"), 1.0, "{m}");

    // The operator's exception lets it through.
    let proxy = strict_proxy(&ctl, &b.to_string(), "127.0.0.0/8").await;
    let (bodies, _) = send(&proxy, 2, "/").await;
    assert_eq!(bodies.get("b"), Some(&2));

    // A controller that does not answer (gone after the proxy started):
    // refused after the resolve timeout, never sent.
    let (c, served_c) = named_upstream("c", 0).await;
    let proxy = strict_proxy(&ctl, &c.to_string(), "").await;
    // Serving starts once the controller's inbound policy has arrived.
    let admin = h1_client();
    let serving = eventually(Duration::from_secs(10), || async {
        get(&admin, proxy.admin, "/ready").await.0 == StatusCode::OK
    })
    .await;
    assert!(serving, "the proxy never heard from the controller");
    ctl.stop();
    let (_, statuses) = send(&proxy, 1, "/").await;
    assert_eq!(statuses.get(&403), Some(&1), "{statuses:?}");
    assert_eq!(served_c.load(Ordering::Relaxed), 0);
    let m = metrics(proxy.admin).await;
    assert_eq!(refused(&m, "unresolved_destination"), 1.0, "{m}");
}
