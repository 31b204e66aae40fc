//! The status writer against kube-rs's mock service: a fake API server
//! that takes merge patches of routes' status (with the resourceVersion
//! precondition), records them, and — as the watch would — puts the
//! written route back in the store.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;

use serde_json::{json, Value};
use trellis_core::test_support::eventually;

use super::*;
use crate::index::{DefaultPolicy, Settings};
use crate::objects::Watched;
use crate::test_logs::Logs;

type Handle = tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<String>>;

/// One PATCH the fake received.
#[derive(Debug, Clone)]
struct Patched {
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

#[derive(Clone, Default)]
struct Fake {
    routes: Arc<Mutex<BTreeMap<String, Value>>>,
    patches: Arc<Mutex<Vec<Patched>>>,
    /// Status codes the next PATCHes fail with.
    fail_next: Arc<Mutex<Vec<u16>>>,
    /// Before the next PATCH, another controller writes this entry of its
    /// own into the route's status (a new version, which the watch
    /// brings).
    interfere: Arc<Mutex<Option<Value>>>,
    /// Keeps only the first condition of each written entry (an API
    /// server that never shows what was written).
    mangle: Arc<std::sync::atomic::AtomicBool>,
}

impl Fake {
    fn patches(&self) -> Vec<Patched> {
        self.patches.lock().unwrap().clone()
    }

    /// Puts `route` in the fake and in the store (as the watch would).
    fn put(&self, store: &Store, route: Value) {
        let name = route["metadata"]["name"].as_str().unwrap().to_string();
        self.routes.lock().unwrap().insert(name, route.clone());
        let typed: HttpRoute = serde_json::from_value(route).unwrap();
        store.apply(typed.into_object());
    }

    async fn serve(self, mut handle: Handle, store: Arc<Store>) {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let body: Value =
                serde_json::from_slice(&body.collect_bytes().await.unwrap()).unwrap_or(Value::Null);
            let path = parts.uri.path().to_string();
            let name = path
                .strip_prefix("/apis/gateway.networking.k8s.io/v1/namespaces/demo/httproutes/")
                .and_then(|p| p.strip_suffix("/status"))
                .unwrap_or_else(|| panic!("unexpected {} {path}", parts.method))
                .to_string();
            assert_eq!(parts.method, http::Method::PATCH);
            self.patches.lock().unwrap().push(Patched {
                path,
                query: parts.uri.query().unwrap_or_default().into(),
                content_type: parts.headers[http::header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .into(),
                body: body.clone(),
            });
            let (code, answer) = self.patch(&name, &body, &store);
            send.send_response(
                http::Response::builder()
                    .status(code)
                    .body(answer.to_string())
                    .unwrap(),
            );
        }
    }

    fn patch(&self, name: &str, body: &Value, store: &Store) -> (u16, Value) {
        if let Some(code) = self.fail_next.lock().unwrap().pop() {
            return (code, status(code));
        }
        let Some(mut route) = self.routes.lock().unwrap().get(name).cloned() else {
            return (404, status(404));
        };
        if let Some(entry) = self.interfere.lock().unwrap().take() {
            route["status"] = json!({"parents": [entry]});
            bump(&mut route);
            self.put(store, route.clone());
        }
        if body["metadata"]["resourceVersion"] != route["metadata"]["resourceVersion"] {
            return (409, status(409));
        }
        route["status"] = body["status"].clone();
        if self.mangle.load(std::sync::atomic::Ordering::Relaxed) {
            for p in route["status"]["parents"].as_array_mut().unwrap() {
                p["conditions"].as_array_mut().unwrap().truncate(1);
            }
        }
        bump(&mut route);
        self.put(store, route.clone());
        (200, route)
    }
}

fn bump(route: &mut Value) {
    let rv: u64 = route["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    route["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
}

fn status(code: u16) -> Value {
    let reason = match code {
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        _ => "InternalError",
    };
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "message": "refused", "reason": reason, "code": code})
}

fn service() -> Object {
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]},
    }))
    .unwrap();
    svc.into_object()
}

fn route(name: &str, rv: &str, backend: &str, status: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "demo", "generation": 1, "resourceVersion": rv},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "rules": [{"backendRefs": [{"name": backend, "port": 80}]}],
        },
        "status": status,
    })
}

use crate::objects::Object;

/// A synced store publishing after each change, a fake API server over
/// it, and the writer running.
struct Running {
    store: Arc<Store>,
    fake: Fake,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start(routes: Vec<Value>) -> Running {
    let store = Store::new(Settings {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        default_inbound: DefaultPolicy::AllUnauthenticated,
    });
    let fake = Fake::default();
    store.apply(service());
    for r in routes {
        fake.put(&store, r);
    }
    store.set_synced();
    let (svc, handle) = tower_test::mock::pair();
    let metrics = Arc::new(Metrics::new());
    let shutdown = Shutdown::new();
    let publisher = {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                store.changed().await;
                store.publish();
            }
        })
    };
    let server = tokio::spawn(fake.clone().serve(handle, store.clone()));
    let writer = StatusWriter::new(kube::Client::new(svc, "default"), metrics.clone());
    let task = tokio::spawn(writer.run(store.clone(), shutdown.clone()));
    Running {
        store,
        fake,
        metrics,
        shutdown,
        tasks: vec![publisher, server, task],
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.begin();
        for t in self.tasks {
            t.abort();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn each_route_is_written_once_and_not_again() {
    let r = start(vec![
        route("good", "10", "web", Value::Null),
        route("bad", "20", "absent", Value::Null),
    ]);
    eventually("both routes written", async || {
        (r.fake.patches().len() == 2).then_some(())
    })
    .await;
    let patches = r.fake.patches();
    for p in &patches {
        assert_eq!(p.content_type, "application/merge-patch+json");
        assert!(
            p.query.contains("fieldManager=trellis-controller"),
            "{}",
            p.query
        );
    }
    let bad = patches
        .iter()
        .find(|p| p.path.ends_with("/bad/status"))
        .unwrap();
    assert_eq!(bad.body["metadata"]["resourceVersion"], "20");
    let resolved = &bad.body["status"]["parents"][0]["conditions"][1];
    assert_eq!(
        (&resolved["status"], &resolved["reason"]),
        (&json!("False"), &json!("BackendNotFound"))
    );
    let good = patches
        .iter()
        .find(|p| p.path.ends_with("/good/status"))
        .unwrap();
    let accepted = &good.body["status"]["parents"][0]["conditions"][0];
    assert_eq!(accepted["status"], "True");
    assert_eq!(
        r.metrics
            .route_status_writes(Kind::HttpRoute, StatusWrite::Written),
        2
    );

    // Every write came back through the "watch"; minutes pass, other
    // objects change: nothing is written again.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let ns: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(json!({"metadata": {"name": format!("ns-{i}")}})).unwrap();
        r.store.apply(ns.into_object());
    }
    tokio::time::sleep(LOOP_WINDOW).await;
    assert_eq!(r.fake.patches().len(), 2, "{:#?}", r.fake.patches());

    // The backend appears: the bad route's entry is written again, once.
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "absent", "namespace": "demo"},
        "spec": {"ports": [{"port": 80}]},
    }))
    .unwrap();
    r.store.apply(svc.into_object());
    eventually("the fixed route written", async || {
        (r.fake.patches().len() == 3).then_some(())
    })
    .await;
    let last = r.fake.patches().pop().unwrap();
    assert!(last.path.ends_with("/bad/status"));
    assert_eq!(last.body["metadata"]["resourceVersion"], "21");
    assert_eq!(
        last.body["status"]["parents"][0]["conditions"][1]["status"],
        "True"
    );
    tokio::time::sleep(LOOP_WINDOW).await;
    assert_eq!(r.fake.patches().len(), 3);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_conflict_waits_for_the_next_version_and_a_refusal_is_retried_and_said_once() {
    let (logs, _guard) = Logs::capture();
    let r = start(Vec::new());
    // The first write is refused by RBAC, twice; then it goes through.
    r.fake.fail_next.lock().unwrap().extend([403, 403]);
    r.fake
        .put(&r.store, route("good", "10", "web", Value::Null));
    eventually("written after the refusals", async || {
        (r.metrics
            .route_status_writes(Kind::HttpRoute, StatusWrite::Written)
            == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        r.metrics
            .route_status_writes(Kind::HttpRoute, StatusWrite::Failed),
        2
    );
    let patches = r.fake.patches();
    assert_eq!(patches.len(), 3);
    assert_eq!(
        logs.count(&["WARN", "route status not written", "forbidden"]),
        1,
        "{:#?}",
        logs.lines()
    );
    assert_eq!(logs.count(&["written again"]), 1, "{:#?}", logs.lines());

    // The route's spec changes (generation 2); another controller writes
    // its own entry between our plan and our write: 409, not an error;
    // written again from the version the watch brings, their entry kept.
    let theirs = json!({
        "parentRef": {"name": "gw"}, "controllerName": "example.com/gateway",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2025-01-01T00:00:00Z"}],
    });
    *r.fake.interfere.lock().unwrap() = Some(theirs.clone());
    let mut changed = r.fake.routes.lock().unwrap()["good"].clone();
    bump(&mut changed);
    changed["metadata"]["generation"] = json!(2);
    r.fake.put(&r.store, changed);
    eventually("written from the next version", async || {
        (r.metrics
            .route_status_writes(Kind::HttpRoute, StatusWrite::Written)
            == 2)
            .then_some(())
    })
    .await;
    assert_eq!(
        r.metrics
            .route_status_writes(Kind::HttpRoute, StatusWrite::Conflict),
        1
    );
    let last = r.fake.patches().pop().unwrap();
    let parents = last.body["status"]["parents"].as_array().unwrap().clone();
    assert_eq!(parents.len(), 2);
    assert_eq!(parents[0], theirs);
    assert_eq!(parents[1]["conditions"][0]["observedGeneration"], 2);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_status_that_never_settles_is_not_written_in_a_loop() {
    let (logs, _guard) = Logs::capture();
    let r = start(Vec::new());
    r.fake
        .mangle
        .store(true, std::sync::atomic::Ordering::Relaxed);
    r.fake
        .put(&r.store, route("good", "10", "web", Value::Null));
    eventually("the guard's limit reached", async || {
        (r.fake.patches().len() == LOOP_WRITES).then_some(())
    })
    .await;
    // The rest of the window: nothing more, and one error said.
    tokio::time::sleep(LOOP_WINDOW / 2).await;
    assert_eq!(r.fake.patches().len(), LOOP_WRITES);
    assert_eq!(
        logs.count(&["ERROR", "does not settle"]),
        1,
        "{:#?}",
        logs.lines()
    );
    r.stop().await;
}
