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
            .all(|p| p.metadata.managed_fields.is_none()),
        "managedFields are not kept"
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
        assert_eq!(
            metrics.source_errors("kubernetes", kind),
            1,
            "{kind}: counted once"
        );
    }
    shutdown.begin();
    source.await.unwrap();
    server.abort();
}
