//! The real controller in-process: the file source, the Discovery gRPC
//! service on 127.0.0.1:0 with the generated client, and the admin server.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use tonic::{Code, Streaming};
use trellis_api::discovery::v1 as pb;
use trellis_controller::objects::Kind;

use support::*;

/// How long a change of the file may take to reach an open stream.
const UPDATE_BOUND: Duration = Duration::from_secs(2);

fn objects(web_endpoints: &[&str], extra: &str) -> String {
    let endpoints: String = web_endpoints
        .iter()
        .map(|ip| format!("\n  - addresses: [{ip}]\n    conditions: {{ready: true}}"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {{name: demo}}
- apiVersion: v1
  kind: Pod
  metadata: {{name: web-0, namespace: demo, labels: {{app: web}}}}
  spec:
    serviceAccountName: web
    containers:
    - name: app
      ports: [{{name: http, containerPort: 8080}}]
      readinessProbe: {{httpGet: {{port: http, path: /ready}}}}
    - name: trellis-proxy
  status: {{phase: Running, podIP: 10.0.0.10}}
- apiVersion: v1
  kind: Pod
  metadata: {{name: web-1, namespace: demo, labels: {{app: web}}}}
  spec:
    serviceAccountName: web
    containers: [{{name: app}}, {{name: trellis-proxy}}]
  status: {{phase: Running, podIP: 10.0.0.11}}
- apiVersion: v1
  kind: Service
  metadata: {{name: web, namespace: demo}}
  spec: {{clusterIP: 10.96.0.10, ports: [{{name: http, port: 80, targetPort: http, appProtocol: http}}]}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: web-1, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}
  addressType: IPv4
  ports: [{{name: http, port: 8080}}]
  endpoints: {endpoints_or_empty}
{extra}"#,
        endpoints_or_empty = if endpoints.is_empty() {
            "[]".to_string()
        } else {
            endpoints
        }
    )
}

async fn next<T>(stream: &mut Streaming<T>, what: &str) -> T {
    tokio::time::timeout(UPDATE_BOUND, stream.message())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {UPDATE_BOUND:?}"))
        .unwrap()
        .unwrap_or_else(|| panic!("the stream ended before {what}"))
}

fn endpoints(r: &pb::Resolution) -> Vec<&str> {
    r.backends[0]
        .endpoints
        .iter()
        .map(|e| e.addr.as_str())
        .collect()
}

#[tokio::test]
async fn a_resolve_stream_follows_the_file_without_duplicates() {
    let mut c = start("resolve", Some(&objects(&["10.0.0.10"], "")), &[]).await;
    let mut client = c.client().await;
    let mut stream = client
        .resolve(pb::ResolveRequest {
            target: "10.96.0.10:80".into(),
            client_namespace: "demo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream, "the first snapshot").await;
    assert_eq!(first.kind, pb::resolution::Kind::Service as i32);
    assert_eq!(first.authority, "web.demo.svc.cluster.local:80");
    assert_eq!(first.protocol, pb::ProtocolHint::Http1 as i32);
    assert_eq!(endpoints(&first), ["10.0.0.10:8080"]);
    assert_eq!(
        first.backends[0].endpoints[0].identity,
        "spiffe://cluster.local/ns/demo/sa/web"
    );

    // A change that affects the answer arrives within the bound.
    c.dir.write(FILE, &objects(&["10.0.0.10", "10.0.0.11"], ""));
    let changed_at = Instant::now();
    let second = next(&mut stream, "the second endpoint").await;
    assert_eq!(endpoints(&second), ["10.0.0.10:8080", "10.0.0.11:8080"]);
    assert!(changed_at.elapsed() < UPDATE_BOUND);

    // A change that does not: published, but nothing is sent. The next
    // message is the next real change, not a repeat.
    let unrelated = r#"- apiVersion: v1
  kind: Namespace
  metadata: {name: other}
"#;
    c.dir
        .write(FILE, &objects(&["10.0.0.10", "10.0.0.11"], unrelated));
    c.snapshot_where("the unrelated change", |s| {
        s.objects().count(Kind::Namespace) == 2
    })
    .await;
    // A route: the third message.
    let route = r#"- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata:
    name: flaky
    namespace: demo
    annotations: {retry.trellis.dev/http-statuses: "5xx,429", retry.trellis.dev/limit: "lots"}
  spec:
    parentRefs: [{group: "", kind: Service, name: web, port: 80}]
    rules: [{matches: [{path: {value: /api}}], timeouts: {request: 10s}}]
"#;
    c.dir.write(
        FILE,
        &objects(&["10.0.0.11"], &format!("{unrelated}{route}")),
    );
    let third = next(&mut stream, "the route").await;
    assert_ne!(third, second, "no duplicate of the previous snapshot");
    assert_eq!(endpoints(&third), ["10.0.0.11:8080"]);
    let rule = &third.http_routes[0].rules[0];
    assert_eq!(third.http_routes[0].name, "flaky");
    assert_eq!(rule.timeouts.unwrap().request_ms, 10_000);
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(retry.limit, 2, "a bad limit: the default");
    assert_eq!(retry.http_statuses, [429]);
    assert_eq!(
        c.metrics
            .updates_sent(trellis_controller::metrics::Rpc::Resolve),
        3
    );

    // The bad annotation is counted, listed, and on the route's summary.
    let m = c.metrics.clone();
    eventually("the annotation error to be counted", async || {
        (m.annotation_errors(Kind::HttpRoute, "retry.trellis.dev/limit") == 1).then_some(())
    })
    .await;
    let (status, body) = c.admin_get("/warnings").await;
    assert_eq!(status, 200);
    let warnings: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(warnings["warnings"][0]["field"], "retry.trellis.dev/limit");
    assert_eq!(warnings["warnings"][0]["value"], "lots");
    assert_eq!(warnings["warnings"][0]["kind"], "HTTPRoute");
    let (_, body) = c.admin_get("/routes").await;
    let routes: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(routes["routes"][0]["name"], "flaky");
    assert_eq!(routes["routes"][0]["parents"][0], "demo/web:80");
    assert_eq!(routes["routes"][0]["warnings"].as_array().unwrap().len(), 1);
    let (_, metrics) = c.admin_get("/metrics").await;
    for line in [
        "trellis_controller_streams_open{rpc=\"resolve\"} 1",
        "trellis_controller_updates_total{rpc=\"resolve\"} 3",
        "trellis_controller_objects{kind=\"Pod\"} 2",
        "trellis_controller_annotation_errors_total{kind=\"HTTPRoute\",annotation=\"retry.trellis.dev/limit\"} 1",
        "trellis_controller_warnings 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    // Shutdown ends the stream with UNAVAILABLE.
    c.shutdown.begin();
    let end = tokio::time::timeout(UPDATE_BOUND, stream.message())
        .await
        .unwrap();
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    tokio::time::timeout(Duration::from_secs(5), c.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn an_inbound_stream_follows_the_pod_and_its_policies() {
    let c = start(
        "inbound",
        Some(&objects(&["10.0.0.10"], "")),
        &[(
            "TRELLIS_CONTROLLER_DEFAULT_INBOUND_POLICY",
            "all-authenticated",
        )],
    )
    .await;
    let mut client = c.client().await;
    let mut stream = client
        .inbound(pb::InboundRequest {
            namespace: "demo".into(),
            pod: "web-0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream, "the first policy").await;
    assert_eq!(first.default_policy, "all-authenticated");
    assert_eq!(
        first.probes,
        [pb::Probe {
            port: 8080,
            path: "/ready".into()
        }]
    );
    assert!(first.authorizations.is_empty());

    let policy = r#"- apiVersion: policy.trellis.dev/v1alpha1
  kind: AuthorizationPolicy
  metadata: {name: from-client, namespace: demo}
  spec:
    podSelector: {matchLabels: {app: web}}
    ports: [8080]
    from: {serviceAccounts: [{name: client}]}
"#;
    c.dir.write(FILE, &objects(&["10.0.0.10"], policy));
    let second = next(&mut stream, "the policy").await;
    assert_eq!(second.authorizations.len(), 1);
    assert_eq!(
        second.authorizations[0].identities,
        ["spiffe://cluster.local/ns/demo/sa/client"]
    );
    assert_eq!(second.authorizations[0].ports, ["8080"]);
}

#[tokio::test]
async fn nothing_is_answered_before_the_first_good_file() {
    let c = start("not-yet", None, &[]).await;
    let (status, body) = c.admin_get("/ready").await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = c.admin_get("/live").await;
    assert_eq!((status, body.as_str()), (200, "live\n"));
    let (status, body) = c.admin_get("/config").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"source\":\"file\""), "{body}");

    let mut client = c.client().await;
    let bad = client
        .resolve(pb::ResolveRequest {
            target: "web:80".into(),
            client_namespace: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let mut stream = client
        .resolve(pb::ResolveRequest {
            target: "10.96.0.10:80".into(),
            client_namespace: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    // A bad file first: refused; still not ready, still no answer.
    c.dir.write(
        FILE,
        "apiVersion: v1\nkind: Nonsense\nmetadata: {name: x}\n",
    );
    let m = c.metrics.clone();
    eventually("the bad file to be refused", async || {
        (m.source_errors("file", "parse") == 1).then_some(())
    })
    .await;
    assert_eq!(c.admin_get("/ready").await.0, 503);

    c.dir.write(FILE, &objects(&["10.0.0.10"], ""));
    let first = next(&mut stream, "the first snapshot").await;
    assert_eq!(endpoints(&first), ["10.0.0.10:8080"]);
    let (status, _) = c.admin_get("/ready").await;
    assert_eq!(status, 200);
    // An address nobody has: UNKNOWN.
    let mut unknown = client
        .resolve(pb::ResolveRequest {
            target: "[2001:db8::1]:443".into(),
            client_namespace: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let r = next(&mut unknown, "the unknown answer").await;
    assert_eq!(r.kind, pb::resolution::Kind::Unknown as i32);
}

/// A second service, `api` (10.96.0.20:80 → 9090), with one endpoint.
fn api(endpoint: &str) -> String {
    format!(
        r#"- apiVersion: v1
  kind: Service
  metadata: {{name: api, namespace: demo}}
  spec: {{clusterIP: 10.96.0.20, ports: [{{name: http, port: 80}}]}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: api-1, namespace: demo, labels: {{kubernetes.io/service-name: api}}}}
  addressType: IPv4
  ports: [{{name: http, port: 9090}}]
  endpoints: [{{addresses: [{endpoint}], conditions: {{ready: true}}}}]
"#
    )
}

#[tokio::test]
async fn a_change_to_one_service_reaches_only_its_streams() {
    use trellis_controller::metrics::Rpc;
    let c = start(
        "only-affected",
        Some(&objects(&["10.0.0.10"], &api("10.0.1.1"))),
        &[],
    )
    .await;
    let mut client = c.client().await;
    let mut open = async |target: &str| {
        client
            .resolve(pb::ResolveRequest {
                target: target.into(),
                client_namespace: "demo".into(),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let mut web = open("10.96.0.10:80").await;
    let mut api_1 = open("10.96.0.20:80").await;
    let mut api_2 = open("10.96.0.20:80").await;
    assert_eq!(endpoints(&next(&mut web, "web").await), ["10.0.0.10:8080"]);
    assert_eq!(endpoints(&next(&mut api_1, "api").await), ["10.0.1.1:9090"]);
    assert_eq!(endpoints(&next(&mut api_2, "api").await), ["10.0.1.1:9090"]);
    assert_eq!(
        c.metrics.answers_computed(Rpc::Resolve),
        2,
        "one answer for both api streams"
    );

    // api's endpoint changes: its two streams are sent the change, once
    // computed; web's answer is not computed, its stream sent nothing.
    c.dir
        .write(FILE, &objects(&["10.0.0.10"], &api("10.0.1.2")));
    assert_eq!(endpoints(&next(&mut api_1, "api").await), ["10.0.1.2:9090"]);
    assert_eq!(endpoints(&next(&mut api_2, "api").await), ["10.0.1.2:9090"]);
    assert_eq!(c.metrics.answers_computed(Rpc::Resolve), 3);
    assert_eq!(c.metrics.updates_sent(Rpc::Resolve), 5);

    // web's next message is web's next change.
    c.dir
        .write(FILE, &objects(&["10.0.0.11"], &api("10.0.1.2")));
    assert_eq!(endpoints(&next(&mut web, "web").await), ["10.0.0.11:8080"]);
    assert_eq!(c.metrics.answers_computed(Rpc::Resolve), 4);
    assert_eq!(c.metrics.updates_sent(Rpc::Resolve), 6);
}
