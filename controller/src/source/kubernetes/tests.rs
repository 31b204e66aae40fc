//! The Kubernetes source against kube-rs's mock service: a fake API server
//! answers each kind's LIST from fixtures and holds its WATCH requests
//! until the test pushes recorded watch events; the store and the index
//! must follow.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use trellis_api::discovery::v1 as pb;

use super::*;
use crate::index::{resolve, DefaultPolicy, Settings, Snapshot};
use trellis_core::test_support::eventually;

type Handle = tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<String>>;
type Responder = tower_test::mock::SendResponse<http::Response<String>>;

const NAMESPACES: &str = "/api/v1/namespaces";
const PODS: &str = "/api/v1/pods";
const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const GRPC_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/grpcroutes";
const POLICIES: &str = "/apis/policy.trellis.dev/v1alpha1/authorizationpolicies";

/// What the test tells the fake API server.
enum Command {
    /// Answer the next WATCH of this path with these events.
    Events(&'static str, Vec<Value>),
}

/// Serves LISTs from `lists` (a path's first LIST may fail with
/// `fail_first`'s status code; a path in `not_served` always gets 404),
/// and WATCHes with pushed events.
async fn api_server(
    mut handle: Handle,
    lists: HashMap<&'static str, Vec<Value>>,
    mut fail_first: HashMap<&'static str, u16>,
    not_served: &'static [&'static str],
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut watches: HashMap<String, Responder> = HashMap::new();
    let mut queued: HashMap<String, VecDeque<Vec<Value>>> = HashMap::new();
    loop {
        tokio::select! {
            req = handle.next_request() => {
                let Some((req, send)) = req else { return };
                let path = req.uri().path().to_string();
                let query = req.uri().query().unwrap_or_default().to_string();
                assert_eq!(req.method(), http::Method::GET, "{path}?{query}");
                if query.contains("watch=true") {
                    match queued.get_mut(&path).and_then(VecDeque::pop_front) {
                        Some(events) => answer_watch(send, &events),
                        None => drop(watches.insert(path, send)),
                    }
                } else if let Some(code) = fail_first
                    .remove(path.as_str())
                    .or_else(|| not_served.contains(&path.as_str()).then_some(404))
                {
                    let status = json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "the server could not find the requested resource",
                        "reason": "NotFound", "code": code
                    });
                    send.send_response(http::Response::builder().status(code).body(status.to_string()).unwrap());
                } else {
                    let items = lists.get(path.as_str()).cloned().unwrap_or_default();
                    let list = json!({
                        "apiVersion": "v1", "kind": "List",
                        "metadata": {"resourceVersion": "1"},
                        "items": items,
                    });
                    send.send_response(http::Response::builder().status(200).body(list.to_string()).unwrap());
                }
            }
            cmd = commands.recv() => {
                let Some(Command::Events(path, events)) = cmd else { return };
                match watches.remove(path) {
                    Some(send) => answer_watch(send, &events),
                    None => queued.entry(path.to_string()).or_default().push_back(events),
                }
            }
        }
    }
}

/// A watch response: the events, one JSON object a line; the stream then
/// ends and the watcher watches again from the last resource version.
fn answer_watch(send: Responder, events: &[Value]) {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    send.send_response(http::Response::builder().status(200).body(body).unwrap());
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "resourceVersion": "1"}})
}

fn pod(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "labels": {"app": "web"}, "resourceVersion": "1",
                     "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "app"}, {"name": "trellis-proxy"}]},
        "status": {"phase": "Running", "podIP": ip}
    })
}

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "demo", "resourceVersion": "1"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    })
}

fn slice(rv: &str, endpoints: &[(&str, bool)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "demo", "resourceVersion": rv,
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints
    })
}

fn http_route() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "retry", "namespace": "demo", "resourceVersion": "5",
                     "annotations": {"retry.trellis.dev/limit": "3"}},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}]}
    })
}

fn grpc_route() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "rpc", "namespace": "demo", "resourceVersion": "1"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                 "rules": [{"matches": [{"method": {"service": "echo.Echo"}}]}]}
    })
}

fn settings() -> Settings {
    Settings {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        default_inbound: DefaultPolicy::AllUnauthenticated,
    }
}

/// Publishes after each change of the store until `check` holds (at most 10 s).
async fn until(store: &Store, what: &str, check: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let snap = store.publish();
        if check(&snap) {
            return snap;
        }
        tokio::time::timeout_at(deadline, store.changed())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }
}

fn web(snap: &Snapshot) -> pb::Resolution {
    resolve(snap, "10.96.0.10:80".parse::<SocketAddr>().unwrap(), "demo")
}

fn endpoints(r: &pb::Resolution) -> Vec<String> {
    r.backends[0]
        .endpoints
        .iter()
        .map(|e| e.addr.clone())
        .collect()
}

#[tokio::test]
async fn watch_events_reach_the_store_and_the_index() {
    let (svc, handle) = tower_test::mock::pair();
    let client = kube::Client::new(svc, "default");
    let lists = HashMap::from([
        (NAMESPACES, vec![namespace("demo")]),
        (
            PODS,
            vec![pod("web-0", "10.0.0.10"), pod("web-1", "10.0.0.11")],
        ),
        (SERVICES, vec![service()]),
        (GRPC_ROUTES, vec![grpc_route()]),
    ]);
    // The policy CRD is not installed at first: the controller must not
    // be synced (ready) until its watch works.
    let fail_first = HashMap::from([(POLICIES, 404)]);
    let (commands, rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(api_server(handle, lists, fail_first, &[], rx));

    let store = Store::new(settings());
    let metrics = Arc::new(Metrics::new());
    let shutdown = Shutdown::new();
    let source = tokio::spawn(KubernetesSource::new(client).run(
        store.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    let snap = until(&store, "the first complete state", |s| s.synced).await;
    assert!(metrics.source_errors("kubernetes", "AuthorizationPolicy") >= 1);
    assert_eq!(snap.objects().count(Kind::Pod), 2);
    assert!(
        snap.objects()
            .pods
            .values()
            .all(|p| p.meshed && p.running && p.resource_version.as_deref() == Some("1")),
        "pods are kept projected (what the index reads; no managedFields, no spec)"
    );
    let r = web(&snap);
    assert_eq!(r.kind, pb::resolution::Kind::Service as i32);
    assert!(endpoints(&r).is_empty(), "no EndpointSlice yet");
    assert_eq!(r.grpc_routes[0].name, "rpc");

    // An EndpointSlice is added…
    commands
        .send(Command::Events(
            SLICES,
            vec![event("ADDED", slice("2", &[("10.0.0.10", true)]))],
        ))
        .unwrap();
    let snap = until(&store, "the added slice", |s| {
        !endpoints(&web(s)).is_empty()
    })
    .await;
    let r = web(&snap);
    assert_eq!(endpoints(&r), ["10.0.0.10:8080"]);
    assert_eq!(
        r.backends[0].endpoints[0].identity,
        "spiffe://cluster.local/ns/demo/sa/web"
    );

    // …then modified: web-0 not ready, web-1 ready.
    commands
        .send(Command::Events(
            SLICES,
            vec![event(
                "MODIFIED",
                slice("3", &[("10.0.0.10", false), ("10.0.0.11", true)]),
            )],
        ))
        .unwrap();
    let snap = until(&store, "the modified slice", |s| {
        endpoints(&web(s)) == ["10.0.0.11:8080"]
    })
    .await;
    assert_eq!(web(&snap).backends[0].endpoints[0].pod, "web-1");

    // A route arrives through the Gateway API watch; a pod goes away.
    commands
        .send(Command::Events(
            HTTP_ROUTES,
            vec![event("ADDED", http_route())],
        ))
        .unwrap();
    commands
        .send(Command::Events(
            PODS,
            vec![event("DELETED", pod("web-1", "10.0.0.11"))],
        ))
        .unwrap();
    let snap = until(&store, "the route and the deleted pod", |s| {
        !web(s).http_routes.is_empty() && s.objects().count(Kind::Pod) == 1
    })
    .await;
    let route = &web(&snap).http_routes[0];
    assert_eq!(route.name, "retry");
    assert_eq!(route.rules[0].retry.as_ref().unwrap().limit, 3);
    // The endpoint whose pod is gone stays (the slice says it is ready),
    // without pod facts.
    assert_eq!(web(&snap).backends[0].endpoints[0].identity, "");

    // The slice is deleted: no endpoints.
    commands
        .send(Command::Events(
            SLICES,
            vec![event("DELETED", slice("4", &[]))],
        ))
        .unwrap();
    until(&store, "the deleted slice", |s| {
        endpoints(&web(s)).is_empty()
    })
    .await;

    shutdown.begin();
    tokio::time::timeout(Duration::from_secs(5), source)
        .await
        .unwrap()
        .unwrap();
    server.abort();
}

#[tokio::test]
async fn a_cluster_without_the_gateway_api_is_synced_with_no_routes() {
    let (svc, handle) = tower_test::mock::pair();
    let client = kube::Client::new(svc, "default");
    let lists = HashMap::from([
        (NAMESPACES, vec![namespace("demo")]),
        (PODS, vec![pod("web-0", "10.0.0.10")]),
        (SERVICES, vec![service()]),
    ]);
    let (_commands, rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(api_server(
        handle,
        lists,
        HashMap::new(),
        &[HTTP_ROUTES, GRPC_ROUTES],
        rx,
    ));
    let store = Store::new(settings());
    let metrics = Arc::new(Metrics::new());
    let shutdown = Shutdown::new();
    let source = tokio::spawn(KubernetesSource::new(client).run(
        store.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let snap = until(&store, "synced without the Gateway API", |s| s.synced).await;
    let r = web(&snap);
    assert_eq!(r.kind, pb::resolution::Kind::Service as i32);
    assert!(r.http_routes.is_empty() && r.grpc_routes.is_empty());
    for kind in ["HTTPRoute", "GRPCRoute"] {
        assert!(
            metrics.source_errors("kubernetes", kind) >= 1,
            "{kind}: counted"
        );
    }
    assert_eq!(
        metrics.watches().report(),
        [
            "watch failing: grpcroutes.gateway.networking.k8s.io (discovery): CRD grpcroutes.gateway.networking.k8s.io not installed",
            "watch failing: httproutes.gateway.networking.k8s.io (discovery): CRD httproutes.gateway.networking.k8s.io not installed",
        ]
    );
    shutdown.begin();
    source.await.unwrap();
    server.abort();
}

/// What the scripted API server answers a path's LISTs with.
#[derive(Clone)]
enum Answer {
    /// A list of these objects.
    List(Vec<Value>),
    /// This status code and body (a real API server answers a resource
    /// it does not serve with a plain-text `404 page not found`).
    Fail(u16, String),
}

/// A fake API server whose answers the test changes as it goes, and which
/// records when each path was listed. WATCHes are held open, silent.
#[derive(Clone, Default)]
struct Scripted {
    answers: Arc<std::sync::Mutex<HashMap<&'static str, Answer>>>,
    lists: Arc<std::sync::Mutex<Vec<(String, tokio::time::Instant)>>>,
    listed: Arc<tokio::sync::Notify>,
}

impl Scripted {
    fn answer(&self, path: &'static str, answer: Answer) {
        self.answers.lock().unwrap().insert(path, answer);
    }

    /// When `path` was listed, in order.
    fn lists_of(&self, path: &str) -> Vec<tokio::time::Instant> {
        self.lists
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, t)| *t)
            .collect()
    }

    /// Waits (at most `bound` of tokio time) until `path` has been listed
    /// `n` times.
    async fn until_listed(&self, path: &str, n: usize, bound: Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        while self.lists_of(path).len() < n {
            tokio::time::timeout_at(deadline, self.listed.notified())
                .await
                .unwrap_or_else(|_| panic!("{path} not listed {n} times within {bound:?}"));
        }
    }

    async fn serve(self, mut handle: Handle) {
        let mut held = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_string();
            if req.uri().query().unwrap_or_default().contains("watch=true") {
                held.push(send);
                continue;
            }
            let answer = self.answers.lock().unwrap().get(path.as_str()).cloned();
            self.lists
                .lock()
                .unwrap()
                .push((path, tokio::time::Instant::now()));
            self.listed.notify_waiters();
            let (code, body) = match answer.unwrap_or(Answer::List(Vec::new())) {
                Answer::List(items) => (
                    200,
                    json!({"apiVersion": "v1", "kind": "List",
                           "metadata": {"resourceVersion": "1"}, "items": items})
                    .to_string(),
                ),
                Answer::Fail(code, body) => (code, body),
            };
            send.send_response(http::Response::builder().status(code).body(body).unwrap());
        }
    }
}

fn forbidden(resource: &str) -> Answer {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": format!("{resource} is forbidden: User \"system:serviceaccount:trellis-system:trellis-controller\" cannot list resource \"{resource}\" at the cluster scope"),
    });
    Answer::Fail(403, status.to_string())
}

const HTTP_ROUTES_RESOURCE: &str = "httproutes.gateway.networking.k8s.io";

/// The source, its watches waiting three quarters of the backoff's
/// ceiling each time (a fixed draw), so that the schedule of attempts is
/// exact: 0.75 s, 1.5 s, 3 s, 6 s, then 7.5 s (within `until`'s 10 s).
/// The random draw itself is `trellis_core::backoff`'s to test.
fn fixed_draw(client: kube::Client) -> KubernetesSource {
    KubernetesSource {
        retry: Backoff::with_random(watches::BACKOFF, || 0.75),
        ..KubernetesSource::new(client)
    }
}

#[tokio::test(start_paused = true)]
async fn a_missing_crd_is_retried_with_a_growing_backoff_said_once_and_picked_up_once_installed() {
    let (logs, _guard) = crate::test_logs::Logs::capture();
    let (svc, handle) = tower_test::mock::pair();
    let api = Scripted::default();
    api.answer(NAMESPACES, Answer::List(vec![namespace("demo")]));
    api.answer(SERVICES, Answer::List(vec![service()]));
    api.answer(HTTP_ROUTES, Answer::Fail(404, "404 page not found".into()));
    let server = tokio::spawn(api.clone().serve(handle));
    let store = Store::new(settings());
    let metrics = Arc::new(Metrics::new());
    let shutdown = Shutdown::new();
    let source = tokio::spawn(fixed_draw(kube::Client::new(svc, "default")).run(
        store.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    // Without the CRD the snapshot is complete: synced, no routes.
    until(&store, "synced without the HTTPRoute CRD", |s| s.synced).await;

    // A minute of a missing CRD: a handful of LISTs, spaced ever wider up
    // to the cap — not 1.6 a second.
    let start = api.lists_of(HTTP_ROUTES)[0];
    api.until_listed(HTTP_ROUTES, 8, Duration::from_secs(120))
        .await;
    let lists = api.lists_of(HTTP_ROUTES);
    let gaps: Vec<Duration> = lists.windows(2).map(|w| w[1] - w[0]).collect();
    for pair in gaps[..4].windows(2) {
        assert!(pair[1] >= pair[0], "gaps grow until the cap: {gaps:?}");
    }
    assert!(
        gaps.iter()
            .all(|g| *g >= Duration::from_millis(750) && *g <= watches::BACKOFF.max),
        "{gaps:?}"
    );
    let in_20s = lists
        .iter()
        .filter(|t| **t - start <= Duration::from_secs(20))
        .count();
    assert!(in_20s <= 7, "{in_20s} LISTs in 20 s: {gaps:?}");
    assert_eq!(
        metrics
            .watches()
            .errors(WATCHER, HTTP_ROUTES_RESOURCE, FailureKind::NotInstalled),
        u64::try_from(lists.len()).unwrap(),
        "every attempt counted"
    );

    // Said once, shown in the metrics and in /ready's body.
    let failing = "watch failing: CRD httproutes.gateway.networking.k8s.io not installed";
    assert_eq!(logs.count(&["WARN", failing]), 1, "{:#?}", logs.lines());
    assert_eq!(
        logs.count(&["WARN"]),
        1,
        "only that WARN: {:#?}",
        logs.lines()
    );
    let text = metrics.encode().unwrap();
    for line in [
        "trellis_controller_watch_failing{watcher=\"discovery\",resource=\"httproutes.gateway.networking.k8s.io\",reason=\"not_installed\"} 1",
        "trellis_controller_watch_healthy{watcher=\"discovery\",resource=\"httproutes.gateway.networking.k8s.io\"} 0",
        "trellis_controller_watch_healthy{watcher=\"discovery\",resource=\"pods\"} 1",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    let serving = std::sync::atomic::AtomicBool::new(true);
    assert_eq!(
        crate::admin::ready(&store, &serving, metrics.watches()),
        Ok("ready\nwatch failing: httproutes.gateway.networking.k8s.io (discovery): CRD httproutes.gateway.networking.k8s.io not installed".to_string())
    );

    // The CRD is installed, with a route: it is in the store within the
    // backoff's cap.
    let installed = tokio::time::Instant::now();
    api.answer(HTTP_ROUTES, Answer::List(vec![http_route()]));
    until(&store, "the route after the CRD is installed", |s| {
        s.objects().count(Kind::HttpRoute) == 1
    })
    .await;
    assert!(
        installed.elapsed() <= watches::BACKOFF.max,
        "{:?}",
        installed.elapsed()
    );

    // Once its watch has held, healthy again: said once, and nothing
    // failing is left in the metrics or /ready.
    eventually("healthy again", async || {
        metrics
            .watches()
            .is_healthy(WATCHER, HTTP_ROUTES_RESOURCE)
            .then_some(())
    })
    .await;
    assert_eq!(
        logs.count(&["INFO", "watch recovered", HTTP_ROUTES_RESOURCE]),
        1,
        "{:#?}",
        logs.lines()
    );
    let text = metrics.encode().unwrap();
    assert!(text.contains("trellis_controller_watch_failing{watcher=\"discovery\",resource=\"httproutes.gateway.networking.k8s.io\",reason=\"not_installed\"} 0"), "{text}");
    assert_eq!(
        crate::admin::ready(&store, &serving, metrics.watches()),
        Ok("ready".to_string())
    );

    shutdown.begin();
    source.await.unwrap();
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn a_watch_rbac_refuses_holds_readiness_back_and_says_why() {
    let (logs, _guard) = crate::test_logs::Logs::capture();
    let (svc, handle) = tower_test::mock::pair();
    let api = Scripted::default();
    api.answer(PODS, forbidden("pods"));
    let server = tokio::spawn(api.clone().serve(handle));
    let store = Store::new(settings());
    let metrics = Arc::new(Metrics::new());
    let shutdown = Shutdown::new();
    let source = tokio::spawn(fixed_draw(kube::Client::new(svc, "default")).run(
        store.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    // 20 s of a forbidden LIST: a few attempts, one WARN.
    api.until_listed(PODS, 1, Duration::from_secs(5)).await;
    let start = api.lists_of(PODS)[0];
    api.until_listed(PODS, 6, Duration::from_secs(60)).await;
    let in_20s = api
        .lists_of(PODS)
        .iter()
        .filter(|t| **t - start <= Duration::from_secs(20))
        .count();
    assert!(in_20s <= 7, "{in_20s} LISTs in 20 s");
    assert_eq!(
        logs.count(&["WARN", "resource=\"pods\"", "forbidden: RBAC"]),
        1,
        "{:#?}",
        logs.lines()
    );
    assert_eq!(logs.count(&["WARN"]), 1, "{:#?}", logs.lines());
    let serving = std::sync::atomic::AtomicBool::new(true);
    assert_eq!(
        crate::admin::ready(&store, &serving, metrics.watches()),
        Err("not ready: the source has not delivered a complete state yet\nwatch failing: pods (discovery): forbidden: RBAC does not allow the controller to list and watch pods".to_string())
    );
    let text = metrics.encode().unwrap();
    assert!(text.contains("trellis_controller_watch_failing{watcher=\"discovery\",resource=\"pods\",reason=\"forbidden\"} 1"), "{text}");

    // The rule is back: synced, ready, said once.
    api.answer(PODS, Answer::List(vec![pod("web-0", "10.0.0.10")]));
    until(&store, "synced once pods may be listed", |s| s.synced).await;
    eventually("healthy again", async || {
        metrics.watches().is_healthy(WATCHER, "pods").then_some(())
    })
    .await;
    assert_eq!(
        crate::admin::ready(&store, &serving, metrics.watches()),
        Ok("ready".to_string())
    );
    assert_eq!(
        logs.count(&["INFO", "watch recovered", "resource=\"pods\""]),
        1,
        "{:#?}",
        logs.lines()
    );

    shutdown.begin();
    source.await.unwrap();
    server.abort();
}
