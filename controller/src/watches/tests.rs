//! The classification of watch failures, and the watch loop against
//! kube-rs's mock service with paused time.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use kube::core::Status;
use serde_json::json;

use super::*;
use crate::metrics::Metrics;
use crate::test_logs::Logs;

fn api_error(code: u16, reason: &str) -> kube::Error {
    kube::Error::Api(Status::failure("refused", reason).with_code(code).boxed())
}

#[test]
fn failures_are_classified_with_a_reason_that_names_the_resource() {
    let crd = "httproutes.gateway.networking.k8s.io";
    let cases = [
        (
            watcher::Error::InitialListFailed(api_error(404, "NotFound")),
            crd,
            FailureKind::NotInstalled,
            "CRD httproutes.gateway.networking.k8s.io not installed",
        ),
        (
            watcher::Error::InitialListFailed(api_error(404, "NotFound")),
            "pods",
            FailureKind::NotInstalled,
            "the API server does not serve pods (404)",
        ),
        (
            watcher::Error::WatchStartFailed(api_error(403, "Forbidden")),
            "pods",
            FailureKind::Forbidden,
            "forbidden: RBAC does not allow the controller to list and watch pods",
        ),
        (
            watcher::Error::InitialListFailed(api_error(401, "Unauthorized")),
            "pods",
            FailureKind::Unauthorized,
            "unauthorized: the API server refused the controller's credentials",
        ),
        (
            watcher::Error::WatchFailed(api_error(503, "ServiceUnavailable")),
            "pods",
            FailureKind::Unavailable,
            "API server answered 503 ServiceUnavailable",
        ),
        (
            watcher::Error::InitialListFailed(api_error(429, "TooManyRequests")),
            "pods",
            FailureKind::Unavailable,
            "API server answered 429 TooManyRequests",
        ),
        (
            watcher::Error::InitialListFailed(kube::Error::Service("connection refused".into())),
            "pods",
            FailureKind::Unreachable,
            "API server unreachable: ServiceError: connection refused",
        ),
    ];
    for (error, resource, kind, reason) in cases {
        let f = Failure::classify(resource, &error);
        assert_eq!((f.kind, f.reason.as_str()), (kind, reason), "{error}");
    }
    assert!(expired(&watcher::Error::WatchError(
        Status::failure("too old", "Expired").with_code(410).boxed()
    )));
    assert!(expired(&watcher::Error::WatchStartFailed(api_error(
        410, "Gone"
    ))));
    assert!(!expired(&watcher::Error::WatchStartFailed(api_error(
        403,
        "Forbidden"
    ))));
}

type Handle = tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<String>>;

/// LISTs of pods succeed (empty), WATCHes are refused with 403; the
/// times of the LISTs are recorded.
async fn list_ok_watch_forbidden(mut handle: Handle, lists: Arc<Mutex<Vec<Instant>>>) {
    while let Some((req, send)) = handle.next_request().await {
        let watch = req.uri().query().unwrap_or_default().contains("watch=true");
        let (code, body) = if watch {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "Forbidden", "code": 403, "message": "pods is forbidden"});
            (403, status.to_string())
        } else {
            lists.lock().unwrap().push(Instant::now());
            let list = json!({"apiVersion": "v1", "kind": "List",
                              "metadata": {"resourceVersion": "1"}, "items": []});
            (200, list.to_string())
        };
        send.send_response(http::Response::builder().status(code).body(body).unwrap());
    }
}

#[tokio::test(start_paused = true)]
async fn a_watch_refused_after_a_good_list_stays_failing_and_backs_off() {
    let (logs, _guard) = Logs::capture();
    let (svc, handle) = tower_test::mock::pair();
    let lists = Arc::new(Mutex::new(Vec::new()));
    let server = tokio::spawn(list_ok_watch_forbidden(handle, lists.clone()));
    let metrics = Metrics::new();
    let watches = metrics.watches().clone();
    let api: Api<Pod> = Api::all(kube::Client::new(svc, "default"));
    // Without jitter, each wait is the backoff's ceiling: the schedule is
    // exact (the jitter is `trellis_core::backoff`'s to test).
    let events = watch_with(
        api,
        watcher::Config::default(),
        watches.register("test", "pods"),
        Backoff::without_jitter(BACKOFF),
    );
    let consumer = tokio::spawn(events.take_while(|_| async { true }).count());

    let deadline = Instant::now() + Duration::from_secs(120);
    while lists.lock().unwrap().len() < 7 {
        assert!(Instant::now() < deadline, "too few LISTs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lists = lists.lock().unwrap().clone();
    let gaps: Vec<Duration> = lists.windows(2).map(|w| w[1] - w[0]).collect();
    for pair in gaps[..4].windows(2) {
        assert!(pair[1] >= pair[0], "the backoff grows: {gaps:?}");
    }
    // Each good LIST is followed by a refused WATCH within the round trip:
    // never healthy, never "recovered", one WARN.
    assert!(!watches.is_healthy("test", "pods"));
    assert_eq!(
        watches.report(),
        ["watch failing: pods (test): forbidden: RBAC does not allow the controller to list and watch pods"]
    );
    assert!(watches.errors("test", "pods", FailureKind::Forbidden) >= 6);
    assert_eq!(logs.count(&["WARN"]), 1, "{:#?}", logs.lines());
    assert_eq!(logs.count(&["recovered"]), 0, "{:#?}", logs.lines());
    consumer.abort();
    server.abort();
}
