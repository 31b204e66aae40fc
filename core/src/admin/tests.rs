use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::routing::get as get_route;
use tower::ServiceExt;

use super::*;
use crate::test_support::http_get;

/// OpenMetrics text with one counter, as prometheus-client writes it.
const TEXT: &str =
    "# HELP t_requests Requests.\n# TYPE t_requests counter\nt_requests_total 2\n# EOF\n";

fn encode() -> Result<String, fmt::Error> {
    Ok(TEXT.to_string())
}

/// GET `path`: (status, content type, body).
async fn get(router: axum::Router, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut req = Request::get(path);
    if let Some(accept) = accept {
        req = req.header(header::ACCEPT, accept);
    }
    let resp = router
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn metrics_are_openmetrics() {
    let router = Router::new(encode).into_router();
    let (status, content_type, body) = get(router, "/metrics", None).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, OPENMETRICS);
    assert_eq!(body, TEXT);

    let router = Router::new(|| Err(fmt::Error)).into_router();
    let (status, _, body) = get(router, "/metrics", None).await;
    assert_eq!((status, body.as_str()), (500, "metrics encoding failed\n"));
}

#[tokio::test]
async fn prometheus_text_unless_openmetrics_is_asked_for() {
    let router = Router::new(encode).prometheus_text_fallback().into_router();
    let (status, content_type, body) = get(router.clone(), "/metrics", None).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, PROMETHEUS_TEXT);
    assert_eq!(body, to_prometheus_text(TEXT));
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5";
    let (_, content_type, body) = get(router, "/metrics", Some(accept)).await;
    assert_eq!(content_type, OPENMETRICS);
    assert_eq!(body, TEXT);
}

#[tokio::test]
async fn ready_answers_what_the_check_says() {
    let router = Router::new(encode).into_router();
    assert_eq!(get(router, "/ready", None).await.0, 200);

    let serving = Arc::new(AtomicBool::new(false));
    let flag = serving.clone();
    let router = Router::new(encode)
        .ready(move || {
            if flag.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("not ready: not serving")
            }
        })
        .into_router();
    let (status, _, body) = get(router.clone(), "/ready", None).await;
    assert_eq!((status, body.as_str()), (503, "not ready: not serving\n"));
    serving.store(true, Ordering::Release);
    let (status, _, body) = get(router, "/ready", None).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    // A reason made at the time of the request.
    let waiting = Arc::new(std::sync::Mutex::new(vec!["a certificate", "a policy"]));
    let left = waiting.clone();
    let router = Router::new(encode)
        .ready(move || {
            let left = left.lock().unwrap();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("not ready, waiting for: {}", left.join("; ")))
            }
        })
        .into_router();
    let (status, _, body) = get(router.clone(), "/ready", None).await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready, waiting for: a certificate; a policy\n")
    );
    waiting.lock().unwrap().clear();
    assert_eq!(get(router, "/ready", None).await.0, 200);
}

#[tokio::test]
async fn a_ready_report_is_the_whole_body() {
    let degraded = Arc::new(AtomicBool::new(false));
    let flag = degraded.clone();
    let router = Router::new(encode)
        .ready_report(move || {
            if flag.load(Ordering::Acquire) {
                Ok("ready\nwatch failing: pods: forbidden".into())
            } else {
                Err("not ready: starting\nwatch failing: pods: forbidden".into())
            }
        })
        .into_router();
    let (status, _, body) = get(router.clone(), "/ready", None).await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: starting\nwatch failing: pods: forbidden\n")
    );
    degraded.store(true, Ordering::Release);
    let (status, _, body) = get(router, "/ready", None).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ready\nwatch failing: pods: forbidden\n")
    );
}

#[tokio::test]
async fn live_config_and_more_routes() {
    #[derive(Serialize)]
    struct Config {
        listen: &'static str,
        grace: u64,
    }
    let router = Router::new(encode).into_router();
    assert_eq!(get(router, "/config", None).await.0, 404);

    let config = Arc::new(Config {
        listen: "0.0.0.0:7195",
        grace: 10,
    });
    let router = Router::new(encode)
        .config(config)
        .into_router()
        .route("/extra", get_route(|| async { "extra\n" }));
    let (status, _, body) = get(router.clone(), "/live", None).await;
    assert_eq!((status, body.as_str()), (200, "live\n"));
    let (status, content_type, body) = get(router.clone(), "/config", None).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    assert_eq!(body, r#"{"listen":"0.0.0.0:7195","grace":10}"#);
    assert_eq!(get(router, "/extra", None).await.2, "extra\n");
}

#[tokio::test]
async fn serve_answers_until_the_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    serve(listener, Router::new(encode).into_router(), &shutdown);
    assert_eq!(http_get(addr, "/live").await, (200, "live\n".into()));
    assert_eq!(shutdown.in_flight(), 1);
    shutdown.begin();
    assert_eq!(shutdown.drained(Duration::from_secs(5)).await, 0);
}

#[test]
fn only_health_and_metrics_are_open_to_remote_clients() {
    let peer = |remote: &str, local: &str| AdminPeer {
        remote: remote.parse().unwrap(),
        local: local.parse().unwrap(),
    };
    let remote = peer("10.77.0.9:40000", "10.77.0.5:7191");
    let loopback = peer("127.0.0.1:40000", "127.0.0.1:7191");
    let same_host = peer("10.77.0.5:40000", "10.77.0.5:7191");
    let mapped = peer("[::ffff:127.0.0.1]:40000", "[::ffff:127.0.0.1]:7191");
    for path in OPEN_PATHS {
        assert!(allowed(path, &remote), "{path}");
    }
    for path in [
        "/config",
        "/identity",
        "/routes",
        "/warnings",
        "/metrics/",
        "/tap",
    ] {
        assert!(!allowed(path, &remote), "{path}");
        assert!(allowed(path, &loopback), "{path}");
        assert!(allowed(path, &same_host), "{path}");
        assert!(allowed(path, &mapped), "{path}");
    }
}
