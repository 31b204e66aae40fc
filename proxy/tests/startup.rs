//! A proxy still waiting for its certificate and its inbound policy: the
//! admin port answers from the first moment (`/live` 200, `/ready` 503
//! naming what is missing and why, `/identity` pending with the last error,
//! `/metrics`), no traffic is served until both have arrived, and shutdown
//! while waiting is prompt.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::controller::FakeController;
use support::identity::TestIdentity;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trellis_api::discovery::v1 as pb;
use trellis_core::contract::proxy_env;

const ID: &str = "spiffe://cluster.local/ns/demo/sa/web";
const NO_TOKEN: &str = "last error: reading the ServiceAccount token";

/// How long an admin request may take: it must answer, not sit in the
/// listener's backlog.
const ANSWER: Duration = Duration::from_secs(5);

/// GET `path` on the admin port: (status, body); fails the test if the
/// admin server does not answer within [`ANSWER`].
async fn admin(addr: SocketAddr, path: &str) -> (u16, String) {
    tokio::time::timeout(ANSWER, trellis_core::test_support::http_get(addr, path))
        .await
        .unwrap_or_else(|_| panic!("{path} did not answer within {ANSWER:?}"))
}

/// A proxy for `dst` with `identity` and a controller at `controller`.
async fn proxy(dst: SocketAddr, identity: &TestIdentity, controller: SocketAddr) -> TestProxy {
    let controller = controller.to_string();
    let mut vars = identity.proxy_vars();
    vars.extend([
        (proxy_env::CONTROLLER_ADDR, controller),
        (proxy_env::POD_NAMESPACE, "demo".to_string()),
        (proxy_env::POD_NAME, "web-0".to_string()),
    ]);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    start_proxy(dst, &vars).await
}

fn open_policy() -> pb::InboundPolicy {
    pb::InboundPolicy {
        default_policy: "all-unauthenticated".into(),
        ..Default::default()
    }
}

fn certificate_from(identity: &TestIdentity) -> String {
    format!(
        "workload certificate for {ID} from the identity service at {}",
        identity.addr
    )
}

fn policy_from(controller: SocketAddr) -> String {
    format!("inbound policy from the controller at {controller}")
}

/// `/ready`'s body once `want(status, body)` holds; fails the test with
/// the last answer if it does not within 20 s.
async fn ready_until(addr: SocketAddr, what: &str, want: impl Fn(u16, &str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = admin(addr, "/ready").await;
        if want(status, &body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; /ready answers {status} {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a GET through the proxy's outbound listener; the answer arrives
/// only once the proxy serves.
async fn queued_request(outbound: SocketAddr) -> tokio::task::JoinHandle<String> {
    let mut s = TcpStream::connect(outbound).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    })
}

#[tokio::test]
async fn admin_answers_while_waiting_and_ready_names_what_is_missing() {
    let identity = TestIdentity::start("1h").await;
    let ctl = FakeController::start().await;
    let app = http_upstream().await;
    let p = proxy(app, &identity, ctl.addr).await;
    let (cert, policy) = (certificate_from(&identity), policy_from(ctl.addr));

    // Neither has arrived: every open path answers at once.
    assert_eq!(admin(p.admin, "/live").await, (200, "live\n".into()));
    let body = ready_until(
        p.admin,
        "/ready naming both, with the token error",
        |s, b| s == 503 && b.contains(NO_TOKEN),
    )
    .await;
    assert!(
        body.starts_with(&format!("not ready, waiting for: {cert} ({NO_TOKEN} ")),
        "{body}"
    );
    assert!(body.ends_with(&format!("); {policy}\n")), "{body}");
    let (status, body) = admin(p.admin, "/identity").await;
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["identity"], ID, "{body}");
    assert_eq!(v["state"], "pending", "{body}");
    assert_eq!(v["identityService"], identity.addr.as_str(), "{body}");
    assert!(
        v["lastError"]
            .as_str()
            .unwrap()
            .starts_with("reading the ServiceAccount token"),
        "{body}"
    );
    let (status, body) = admin(p.admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#"trellis_identity_renewals_total{result="error"}"#),
        "{body}"
    );

    // No traffic meanwhile: a request waits in the listener's backlog.
    let mut waiting = queued_request(p.outbound).await;
    let early = tokio::time::timeout(Duration::from_millis(300), &mut waiting).await;
    assert!(
        early.is_err(),
        "served before the certificate and policy: {early:?}"
    );

    // The policy arrives: only the certificate is missing.
    ctl.inbound(open_policy());
    let body = ready_until(p.admin, "/ready naming the certificate only", |s, b| {
        s == 503 && !b.contains("inbound policy")
    })
    .await;
    assert!(
        body.starts_with(&format!("not ready, waiting for: {cert} ({NO_TOKEN} ")),
        "{body}"
    );
    assert!(body.ends_with(")\n"), "{body}");
    assert!(!waiting.is_finished(), "served before the certificate");

    // The certificate arrives: ready, the reason gone, traffic served.
    identity.write_token();
    let body = ready_until(p.admin, "/ready 200", |s, _| s == 200).await;
    assert_eq!(body, "ready\n");
    let (status, body) = admin(p.admin, "/identity").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "ready", "{body}");
    assert!(v.get("lastError").is_none(), "{body}");
    let answer = tokio::time::timeout(ANSWER, waiting)
        .await
        .expect("the queued request is served once ready")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello"), "{answer}");

    p.shutdown.begin();
    tokio::time::timeout(ANSWER, p.task).await.unwrap().unwrap();
    identity.stop().await;
}

#[tokio::test]
async fn the_certificate_first_then_the_policy() {
    let identity = TestIdentity::start("1h").await;
    identity.write_token();
    let ctl = FakeController::start().await;
    let app = http_upstream().await;
    let p = proxy(app, &identity, ctl.addr).await;
    let policy = policy_from(ctl.addr);

    let body = ready_until(p.admin, "/ready naming the policy only", |s, b| {
        s == 503 && !b.contains("workload certificate")
    })
    .await;
    assert_eq!(body, format!("not ready, waiting for: {policy}\n"));
    let (status, body) = admin(p.admin, "/identity").await;
    assert_eq!(status, 200, "{body}");

    ctl.inbound(open_policy());
    assert_eq!(
        ready_until(p.admin, "/ready 200", |s, _| s == 200).await,
        "ready\n"
    );

    p.shutdown.begin();
    tokio::time::timeout(ANSWER, p.task).await.unwrap().unwrap();
    identity.stop().await;
}

/// A "controller" that accepts connections and closes them at once.
async fn broken_controller() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    addr
}

#[tokio::test]
async fn ready_tells_each_last_error_and_shutdown_while_waiting_is_prompt() {
    let identity = TestIdentity::start("1h").await;
    let ctl = broken_controller().await;
    let app = http_upstream().await;
    let p = proxy(app, &identity, ctl).await;
    let (cert, policy) = (certificate_from(&identity), policy_from(ctl));

    let body = ready_until(p.admin, "/ready with both last errors", |s, b| {
        s == 503 && b.contains(NO_TOKEN) && b.contains(&format!("{policy} (last error: "))
    })
    .await;
    assert!(
        body.starts_with(&format!("not ready, waiting for: {cert} ({NO_TOKEN} ")),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "; {policy} (last error: cannot open the inbound policy stream: "
        )) || body.contains(&format!(
            "; {policy} (last error: the inbound policy stream broke: "
        )),
        "{body}"
    );
    assert_eq!(body.lines().count(), 1, "{body}");

    // SIGTERM before the certificate: the proxy stops promptly, its admin
    // port with it.
    p.shutdown.begin();
    tokio::time::timeout(ANSWER, p.task)
        .await
        .expect("the proxy stops while waiting")
        .unwrap();
    assert!(
        TcpStream::connect(p.admin).await.is_err(),
        "admin port still open after shutdown"
    );
    assert!(
        TcpStream::connect(p.outbound).await.is_err(),
        "outbound port still open after shutdown"
    );
    identity.stop().await;
}
