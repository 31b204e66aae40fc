//! Table tests of the index. Fixtures are YAML, read by the file source's
//! own parser.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use super::annotations::*;
use super::*;
use crate::source::file::parse;
use trellis_api::discovery::v1 as pb;

const TD: &str = "cluster.local";

fn settings() -> Arc<Settings> {
    Arc::new(Settings {
        trust_domain: TD.into(),
        cluster_domain: "cluster.local".into(),
        default_inbound: DefaultPolicy::AllUnauthenticated,
    })
}

/// A namespace `demo` with a service `web` (10.96.0.10:80 → named port
/// `http` = 8080) and two meshed pods, one of them not ready; a service
/// `web-v2` whose slice lists no ports (numeric target port); an unmeshed
/// pod; a pod that is not running.
const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Namespace
metadata: {name: client}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo, labels: {app: web}}
spec:
  serviceAccountName: web
  containers:
  - name: app
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {port: http, path: /ready}}
    livenessProbe: {httpGet: {port: 8080}}
  - name: trellis-proxy
    readinessProbe: {httpGet: {port: 7191, path: /ready}}
status: {phase: Running, podIP: 10.0.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: demo, labels: {app: web}}
spec:
  serviceAccountName: web
  containers:
  - {name: app, ports: [{name: http, containerPort: 8080}]}
  - {name: trellis-proxy}
status: {phase: Running, podIP: 10.0.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: web-v2-0, namespace: demo, labels: {app: web-v2}}
spec:
  serviceAccountName: web
  initContainers:
  - {name: trellis-proxy, restartPolicy: Always}
  containers:
  - {name: app, ports: [{name: web, containerPort: 9090}]}
status: {phase: Running, podIP: 10.0.0.12}
---
apiVersion: v1
kind: Pod
metadata: {name: plain-0, namespace: demo, labels: {app: plain}}
spec:
  containers: [{name: app}]
status: {phase: Running, podIP: 10.0.0.20}
---
apiVersion: v1
kind: Pod
metadata: {name: gone-0, namespace: demo}
spec:
  containers: [{name: app}, {name: trellis-proxy}]
status: {phase: Succeeded, podIP: 10.0.0.30}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.0.0.10]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: web-0, namespace: demo}
- addresses: [10.0.0.11]
  conditions: {ready: false}
  targetRef: {kind: Pod, name: web-1, namespace: demo}
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: demo}
spec:
  clusterIP: 10.96.0.11
  ports: [{port: 80, targetPort: 9090}, {name: named, port: 81, targetPort: web}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v2-x, namespace: demo, labels: {kubernetes.io/service-name: web-v2}}
addressType: IPv4
endpoints:
- addresses: [10.0.0.12]
  targetRef: {kind: Pod, name: web-v2-0, namespace: demo}
"#;

fn snapshot(extra: &str) -> Snapshot {
    let text = format!("{BASE}\n---\n{extra}");
    let objects = parse(&text).unwrap_or_else(|e| panic!("fixture: {e}"));
    Snapshot::new(objects, settings(), 1, true)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn kind(r: &pb::Resolution) -> pb::resolution::Kind {
    pb::resolution::Kind::try_from(r.kind).unwrap()
}

fn endpoint_addrs(b: &pb::Backend) -> Vec<&str> {
    b.endpoints.iter().map(|e| e.addr.as_str()).collect()
}

#[test]
fn a_service_resolves_to_its_ready_endpoints() {
    let snap = snapshot("");
    let r = resolve(&snap, addr("10.96.0.10:80"), "client");
    assert_eq!(kind(&r), pb::resolution::Kind::Service);
    assert_eq!(r.authority, "web.demo.svc.cluster.local:80");
    assert_eq!(r.backends.len(), 1);
    assert_eq!(r.backends[0].authority, r.authority);
    // web-1 is not ready: left out.
    assert_eq!(endpoint_addrs(&r.backends[0]), ["10.0.0.10:8080"]);
    let e = &r.backends[0].endpoints[0];
    assert_eq!(e.identity, "spiffe://cluster.local/ns/demo/sa/web");
    assert_eq!(
        (e.namespace.as_str(), e.workload.as_str(), e.pod.as_str()),
        ("demo", "web", "web-0")
    );
    assert_eq!(e.weight, 1);
    assert!(r.http_routes.is_empty() && r.grpc_routes.is_empty());

    // Another port of the same IP, or another IP: not this service.
    assert_eq!(
        kind(&resolve(&snap, addr("10.96.0.10:81"), "")),
        pb::resolution::Kind::Unknown
    );
    assert_eq!(
        kind(&resolve(&snap, addr("10.96.9.9:80"), "")),
        pb::resolution::Kind::Unknown
    );
}

#[test]
fn target_ports_numeric_named_and_from_the_slice() {
    let snap = snapshot("");
    // The slice lists no ports: numeric targetPort.
    let r = resolve(&snap, addr("10.96.0.11:80"), "");
    assert_eq!(endpoint_addrs(&r.backends[0]), ["10.0.0.12:9090"]);
    // Named targetPort, resolved on the pod's container ports.
    let r = resolve(&snap, addr("10.96.0.11:81"), "");
    assert_eq!(r.authority, "web-v2.demo.svc.cluster.local:81");
    assert_eq!(endpoint_addrs(&r.backends[0]), ["10.0.0.12:9090"]);
    // A native sidecar proxy counts as meshed; ready unset means ready.
    assert_eq!(
        r.backends[0].endpoints[0].identity,
        "spiffe://cluster.local/ns/demo/sa/web"
    );
    // The slice's port wins over the service's targetPort.
    let snap = snapshot(
        r#"
apiVersion: v1
kind: Service
metadata: {name: moved, namespace: demo}
spec: {clusterIP: 10.96.0.12, ports: [{port: 80, targetPort: 1234}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: moved-1, namespace: demo, labels: {kubernetes.io/service-name: moved}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.0.99]}, {addresses: [10.0.0.20]}]
"#,
    );
    let r = resolve(&snap, addr("10.96.0.12:80"), "");
    assert_eq!(
        endpoint_addrs(&r.backends[0]),
        ["10.0.0.20:8080", "10.0.0.99:8080"]
    );
    // Found by IP without a targetRef: unmeshed, labelled; unknown IP: bare.
    let plain = &r.backends[0].endpoints[0];
    assert_eq!(
        (plain.identity.as_str(), plain.workload.as_str()),
        ("", "plain")
    );
    let bare = &r.backends[0].endpoints[1];
    assert_eq!((bare.pod.as_str(), bare.namespace.as_str()), ("", "demo"));
}

#[test]
fn a_pod_address_resolves_to_one_endpoint() {
    let snap = snapshot("");
    let r = resolve(&snap, addr("10.0.0.10:8080"), "client");
    assert_eq!(kind(&r), pb::resolution::Kind::Endpoint);
    assert_eq!(r.authority, "10.0.0.10:8080");
    assert_eq!(r.backends.len(), 1);
    assert_eq!(r.backends[0].authority, "10.0.0.10:8080");
    assert_eq!(endpoint_addrs(&r.backends[0]), ["10.0.0.10:8080"]);
    assert_eq!(
        r.backends[0].endpoints[0].identity,
        "spiffe://cluster.local/ns/demo/sa/web"
    );

    let plain = resolve(&snap, addr("10.0.0.20:80"), "");
    assert_eq!(kind(&plain), pb::resolution::Kind::Endpoint);
    assert_eq!(plain.backends[0].endpoints[0].identity, "", "not meshed");
    assert_eq!(plain.backends[0].endpoints[0].workload, "plain");

    // Not running, or unknown: UNKNOWN.
    assert_eq!(
        kind(&resolve(&snap, addr("10.0.0.30:80"), "")),
        pb::resolution::Kind::Unknown
    );
    assert_eq!(
        resolve(&snap, addr("192.0.2.1:80"), ""),
        pb::Resolution::default()
    );
}

#[test]
fn protocol_hints() {
    use pb::ProtocolHint as P;
    let cases: &[(&str, &str, P)] = &[
        ("appProtocol: kubernetes.io/h2c", "", P::Http2),
        ("appProtocol: grpc", "", P::Grpc),
        ("appProtocol: http", "", P::Http1),
        ("appProtocol: kubernetes.io/http", "", P::Http1),
        ("appProtocol: tcp", "", P::Opaque),
        ("appProtocol: kubernetes.io/tcp", "", P::Opaque),
        ("appProtocol: something-else", "", P::ProtocolUnknown),
        ("", "", P::ProtocolUnknown),
        (
            "",
            "annotations: {config.trellis.dev/opaque-ports: \"25,80\"}",
            P::Opaque,
        ),
        (
            "",
            "annotations: {config.trellis.dev/opaque-ports: \"70-90\"}",
            P::Opaque,
        ),
        (
            "",
            "annotations: {config.trellis.dev/opaque-ports: \"81\"}",
            P::ProtocolUnknown,
        ),
        // appProtocol wins over the annotation.
        (
            "appProtocol: http",
            "annotations: {config.trellis.dev/opaque-ports: \"80\"}",
            P::Http1,
        ),
    ];
    for (app, ann, want) in cases {
        let snap = snapshot(&format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: hinted, namespace: demo, {ann}}}
spec: {{clusterIP: 10.96.1.1, ports: [{{port: 80, {app}}}]}}
"#
        ));
        let r = resolve(&snap, addr("10.96.1.1:80"), "");
        assert_eq!(r.protocol, *want as i32, "{app} {ann}");
    }
    // A namespace's annotation covers its services and pods; a pod's own
    // annotation covers its endpoints.
    let snap = snapshot(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: db, annotations: {config.trellis.dev/opaque-ports: "5432"}}
---
apiVersion: v1
kind: Service
metadata: {name: pg, namespace: db}
spec: {clusterIP: 10.96.2.2, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Pod
metadata: {name: pg-0, namespace: db}
spec: {containers: [{name: pg}, {name: trellis-proxy}]}
status: {phase: Running, podIP: 10.0.2.2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: pg-1, namespace: db, labels: {kubernetes.io/service-name: pg}}
addressType: IPv4
ports: [{port: 5432}]
endpoints: [{addresses: [10.0.2.2], targetRef: {kind: Pod, name: pg-0}}]
"#,
    );
    let r = resolve(&snap, addr("10.96.2.2:5432"), "");
    assert_eq!(r.protocol, P::Opaque as i32);
    assert_eq!(r.backends[0].endpoints[0].protocol, P::Opaque as i32);
    assert_eq!(
        r.backends[0].endpoints[0].workload, "pg-0",
        "no label: the pod's name"
    );
    let r = resolve(&snap, addr("10.0.2.2:5432"), "");
    assert_eq!(r.protocol, P::Opaque as i32);
    let r = resolve(&snap, addr("10.0.2.2:8080"), "");
    assert_eq!(r.protocol, P::ProtocolUnknown as i32);
}

fn http_route(name: &str, ns: &str, parent: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}, creationTimestamp: "2024-01-01T00:00:00Z"}}
spec:
  parentRefs: [{parent}]
  {extra}
"#
    )
}

fn route_names(r: &pb::Resolution) -> Vec<String> {
    r.http_routes
        .iter()
        .map(|r| format!("{}/{}", r.namespace, r.name))
        .chain(
            r.grpc_routes
                .iter()
                .map(|r| format!("grpc:{}/{}", r.namespace, r.name)),
        )
        .collect()
}

#[test]
fn route_parents() {
    // (parentRef, applies to web:80 for a client in `client`)
    let cases: &[(&str, bool)] = &[
        (r#"{group: "", kind: Service, name: web}"#, true),
        (r#"{group: core, kind: Service, name: web}"#, true),
        (r#"{group: "", kind: Service, name: web, port: 80}"#, true),
        (r#"{group: "", kind: Service, name: web, port: 81}"#, false),
        (
            r#"{group: "", kind: Service, name: web, sectionName: http}"#,
            true,
        ),
        (
            r#"{group: "", kind: Service, name: web, sectionName: other}"#,
            false,
        ),
        (
            r#"{group: "", kind: Service, name: web, namespace: demo}"#,
            true,
        ),
        (
            r#"{group: "", kind: Service, name: web, namespace: other}"#,
            false,
        ),
        (r#"{group: "", kind: Service, name: web-v2}"#, false),
        // The Gateway API's defaults: a Gateway parent, not ours.
        (r#"{name: web}"#, false),
        (r#"{kind: Service, name: web}"#, false),
        (
            r#"{group: gateway.networking.k8s.io, kind: Gateway, name: web}"#,
            false,
        ),
    ];
    for (parent, applies) in cases {
        let snap = snapshot(&http_route("r", "demo", parent, ""));
        let r = resolve(&snap, addr("10.96.0.10:80"), "client");
        assert_eq!(!r.http_routes.is_empty(), *applies, "{parent}");
    }
}

#[test]
fn producer_and_consumer_routes_in_precedence_order() {
    let parent_in_demo = r#"{group: "", kind: Service, name: web, namespace: demo}"#;
    let routes = [
        http_route("b-producer", "demo", parent_in_demo, "")
            .replace("2024-01-01T00:00:00Z", "2024-03-01T00:00:00Z"),
        http_route("a-producer", "demo", parent_in_demo, "")
            .replace("2024-01-01T00:00:00Z", "2024-03-01T00:00:00Z"),
        http_route("old-consumer", "client", parent_in_demo, "")
            .replace("2024-01-01T00:00:00Z", "2023-01-01T00:00:00Z"),
        http_route("elsewhere", "third", parent_in_demo, ""),
        format!(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: rpc, namespace: demo}}
spec:
  parentRefs: [{parent_in_demo}]
"#
        ),
    ];
    let snap = snapshot(&routes.join("\n---\n"));
    let r = resolve(&snap, addr("10.96.0.10:80"), "client");
    // Oldest first, then namespace/name; another namespace's consumer
    // route does not apply.
    assert_eq!(
        route_names(&r),
        [
            "client/old-consumer",
            "demo/a-producer",
            "demo/b-producer",
            "grpc:demo/rpc"
        ]
    );
    let r = resolve(&snap, addr("10.96.0.10:80"), "third");
    assert_eq!(
        route_names(&r),
        [
            "third/elsewhere",
            "demo/a-producer",
            "demo/b-producer",
            "grpc:demo/rpc"
        ]
    );
    // A route with no rules: one rule for every request, to the parent.
    let rule = &r.http_routes[0].rules[0];
    assert!(rule.matches.is_empty() && rule.backends.is_empty() && rule.retry.is_none());
    assert_eq!(r.grpc_routes[0].rules.len(), 1);
}

const PARENT: &str = r#"{group: "", kind: Service, name: web}"#;

#[test]
fn backend_refs_and_weights() {
    let snap = snapshot(&http_route(
        "split",
        "demo",
        PARENT,
        r#"rules:
  - backendRefs:
    - {name: web, port: 80, weight: 90}
    - {name: web-v2, port: 80, weight: 10}
  - backendRefs:
    - {name: web-v2}
    - {name: web-v2, port: 81, weight: 0}
    - {name: missing, port: 80}
    - {group: multicluster.x-k8s.io, kind: ServiceImport, name: web, port: 80}"#,
    ));
    let r = resolve(&snap, addr("10.96.0.10:80"), "");
    let rules = &r.http_routes[0].rules;
    let weighted = |i: usize| -> Vec<(String, u32)> {
        rules[i]
            .backends
            .iter()
            .map(|b| (b.authority.clone(), b.weight))
            .collect()
    };
    assert_eq!(
        weighted(0),
        [
            ("web.demo.svc.cluster.local:80".to_string(), 90),
            ("web-v2.demo.svc.cluster.local:80".to_string(), 10)
        ]
    );
    assert_eq!(
        weighted(1),
        [
            // No port: the parent's; no weight: 1.
            ("web-v2.demo.svc.cluster.local:80".to_string(), 1),
            ("web-v2.demo.svc.cluster.local:81".to_string(), 0),
            ("missing.demo.svc.cluster.local:80".to_string(), 1),
            (
                "invalid:multicluster.x-k8s.io/ServiceImport/demo/web".to_string(),
                1
            ),
        ]
    );
    // The service itself first, then every other backend once, each with
    // its endpoints; a missing service has no entry (requests to it fail).
    let backends: Vec<(&str, Vec<&str>)> = r
        .backends
        .iter()
        .map(|b| (b.authority.as_str(), endpoint_addrs(b)))
        .collect();
    assert_eq!(
        backends,
        [
            ("web.demo.svc.cluster.local:80", vec!["10.0.0.10:8080"]),
            ("web-v2.demo.svc.cluster.local:80", vec!["10.0.0.12:9090"]),
            ("web-v2.demo.svc.cluster.local:81", vec!["10.0.0.12:9090"]),
        ]
    );
    // The ServiceImport, and the Service that is not there.
    let found: Vec<(&str, &str)> = snap
        .problems()
        .iter()
        .map(|p| (p.field, p.value.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            ("spec.rules.backendRefs", "demo/missing"),
            (
                "spec.rules.backendRefs",
                "multicluster.x-k8s.io/ServiceImport demo/web"
            )
        ],
        "{:?}",
        snap.problems()
    );
}

#[test]
fn http_route_fields() {
    let snap = snapshot(&http_route(
        "api",
        "demo",
        PARENT,
        r#"rules:
  - matches:
    - path: {type: Exact, value: /health}
      method: GET
    - path: {value: /api}
      headers: [{name: X-Canary, value: "true"}, {type: RegularExpression, name: x-user, value: "^a.*"}]
      queryParams: [{name: debug, value: "1"}, {type: RegularExpression, name: v, value: "[0-9]+"}]
    - path: {type: RegularExpression, value: "/v[0-9]+/.*"}
    timeouts: {request: 10s, backendRequest: 500ms}
  - matches: [{path: {type: PathPrefix, value: /}}]
    timeouts: {request: 1h30m}"#,
    ));
    let r = resolve(&snap, addr("10.96.0.10:80"), "");
    let route = &r.http_routes[0];
    assert_eq!(
        (route.name.as_str(), route.namespace.as_str()),
        ("api", "demo")
    );
    let m = &route.rules[0].matches;
    use pb::path_match::Kind as Path;
    assert_eq!(
        m[0].path.as_ref().unwrap().kind,
        Some(Path::Exact("/health".into()))
    );
    assert_eq!(m[0].method, "GET");
    assert_eq!(
        m[1].path.as_ref().unwrap().kind,
        Some(Path::Prefix("/api".into()))
    );
    assert_eq!(m[1].method, "");
    assert_eq!(
        m[1].headers,
        [
            pb::HeaderMatch {
                name: "x-canary".into(),
                value: Some(pb::header_match::Value::Exact("true".into()))
            },
            pb::HeaderMatch {
                name: "x-user".into(),
                value: Some(pb::header_match::Value::Regex("^a.*".into()))
            },
        ]
    );
    assert_eq!(
        m[1].query,
        [
            pb::QueryMatch {
                name: "debug".into(),
                value: Some(pb::query_match::Value::Exact("1".into()))
            },
            pb::QueryMatch {
                name: "v".into(),
                value: Some(pb::query_match::Value::Regex("[0-9]+".into()))
            },
        ]
    );
    assert_eq!(
        m[2].path.as_ref().unwrap().kind,
        Some(Path::Regex("/v[0-9]+/.*".into()))
    );
    assert_eq!(
        route.rules[0].timeouts,
        Some(pb::Timeouts {
            request_ms: 10_000,
            backend_request_ms: 500
        })
    );
    assert_eq!(
        route.rules[1].timeouts,
        Some(pb::Timeouts {
            request_ms: 5_400_000,
            backend_request_ms: 0
        })
    );
    assert!(snap.problems().is_empty(), "{:?}", snap.problems());
}

#[test]
fn grpc_route_fields_and_annotation_timeouts() {
    let snap = snapshot(&format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: rpc
  namespace: demo
  annotations:
    timeout.trellis.dev/request: 2s
    timeout.trellis.dev/backend-request: 250ms
    retry.trellis.dev/grpc-codes: unavailable,RESOURCE_EXHAUSTED,14
spec:
  parentRefs: [{PARENT}]
  rules:
  - matches:
    - method: {{service: echo.Echo, method: Say}}
    - method: {{type: RegularExpression, service: "echo\\..*"}}
      headers: [{{name: X-Tenant, value: a}}]
    backendRefs: [{{name: web-v2, port: 80}}]
"#
    ));
    let r = resolve(&snap, addr("10.96.0.10:80"), "");
    let rule = &r.grpc_routes[0].rules[0];
    assert_eq!(
        rule.matches[0],
        pb::GrpcMatch {
            service: "echo.Echo".into(),
            method: "Say".into(),
            regex: false,
            headers: vec![]
        }
    );
    assert_eq!(rule.matches[1].service, "echo\\..*");
    assert_eq!(rule.matches[1].method, "");
    assert!(rule.matches[1].regex);
    assert_eq!(rule.matches[1].headers[0].name, "x-tenant");
    assert_eq!(
        rule.timeouts,
        Some(pb::Timeouts {
            request_ms: 2000,
            backend_request_ms: 250
        })
    );
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(retry.grpc_codes, [14, 8]);
    assert_eq!(retry.limit, 2);
    assert_eq!(r.backends[1].authority, "web-v2.demo.svc.cluster.local:80");
}

#[test]
fn the_spec_timeout_wins_over_the_annotation() {
    let snap = snapshot(
        &http_route(
            "t",
            "demo",
            PARENT,
            "rules: [{timeouts: {request: 3s}}, {}]",
        )
        .replace(
            "creationTimestamp",
            "annotations: {timeout.trellis.dev/request: 7s, timeout.trellis.dev/backend-request: 1s}, creationTimestamp",
        ),
    );
    let r = resolve(&snap, addr("10.96.0.10:80"), "");
    let t = |i: usize| r.http_routes[0].rules[i].timeouts.unwrap();
    assert_eq!((t(0).request_ms, t(0).backend_request_ms), (3000, 1000));
    assert_eq!((t(1).request_ms, t(1).backend_request_ms), (7000, 1000));
    assert!(
        r.http_routes[0].rules[0].retry.is_none(),
        "no retry annotation: no retries"
    );
}

fn annotated_route(annotations: &[(&str, &str)]) -> (pb::HttpRoute, Vec<Problem>) {
    let ann: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("{k}: {v:?}"))
        .collect();
    let route = http_route("annotated", "demo", PARENT, "").replace(
        "creationTimestamp",
        &format!("annotations: {{{}}}, creationTimestamp", ann.join(", ")),
    );
    let snap = snapshot(&route);
    let r = resolve(&snap, addr("10.96.0.10:80"), "");
    (r.http_routes[0].clone(), snap.problems().to_vec())
}

#[test]
fn retry_annotations() {
    // Any retry annotation turns retries on, with the defaults spelled out.
    let (route, problems) = annotated_route(&[(RETRY_NON_IDEMPOTENT, "true")]);
    assert!(problems.is_empty());
    let retry = route.rules[0].retry.clone().unwrap();
    assert_eq!(
        retry,
        pb::RetryPolicy {
            non_idempotent: true,
            ..default_retry()
        }
    );
    assert_eq!(retry.limit, 2);
    assert_eq!(
        retry.http_status_ranges,
        [pb::StatusRange { from: 500, to: 599 }]
    );
    assert_eq!(retry.grpc_codes, [14]);
    assert_eq!((retry.backoff_base_ms, retry.backoff_max_ms), (25, 250));
    let budget = retry.budget.unwrap();
    assert_eq!(
        (budget.ratio, budget.min_per_second, budget.ttl_ms),
        (0.2, 10, 10_000)
    );

    let (route, problems) = annotated_route(&[
        (RETRY_LIMIT, "3"),
        (RETRY_HTTP_STATUSES, "5xx,429,502-504"),
        (RETRY_GRPC_CODES, "unavailable,resource-exhausted,14"),
        (RETRY_PER_TRY_TIMEOUT, "300ms"),
        (RETRY_BACKOFF, "10ms-1s"),
        (RETRY_BUDGET_RATIO, "0.5"),
        (RETRY_BUDGET_MIN_PER_SECOND, "20"),
        (RETRY_BUDGET_TTL, "30s"),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
    let retry = route.rules[0].retry.clone().unwrap();
    assert_eq!(retry.limit, 3);
    assert_eq!(retry.http_statuses, [429]);
    assert_eq!(
        retry.http_status_ranges,
        [
            pb::StatusRange { from: 500, to: 599 },
            pb::StatusRange { from: 502, to: 504 }
        ]
    );
    assert_eq!(retry.grpc_codes, [14, 8]);
    assert_eq!(retry.per_try_timeout_ms, 300);
    assert_eq!((retry.backoff_base_ms, retry.backoff_max_ms), (10, 1000));
    assert_eq!(
        retry.budget,
        Some(pb::RetryBudget {
            ratio: 0.5,
            min_per_second: 20,
            ttl_ms: 30_000
        })
    );
}

#[test]
fn bad_annotation_values_leave_the_route_without_that_setting() {
    // (annotation, bad value): each alone, beside a good limit.
    let cases: &[(&str, &str)] = &[
        (RETRY_HTTP_STATUSES, "6xx"),
        (RETRY_HTTP_STATUSES, "504-502"),
        (RETRY_HTTP_STATUSES, "5xx,,429"),
        (RETRY_HTTP_STATUSES, "42"),
        (RETRY_GRPC_CODES, "unavailabel"),
        (RETRY_GRPC_CODES, "0"),
        (RETRY_GRPC_CODES, "17"),
        (RETRY_PER_TRY_TIMEOUT, "5"),
        (RETRY_PER_TRY_TIMEOUT, "1.5s"),
        (RETRY_BACKOFF, "0ms"),
        (RETRY_BACKOFF, "250ms-25ms"),
        (RETRY_BUDGET_RATIO, "-1"),
        (RETRY_BUDGET_RATIO, "NaN"),
        (RETRY_BUDGET_MIN_PER_SECOND, "ten"),
        (RETRY_BUDGET_TTL, "500ms"),
        (RETRY_BUDGET_TTL, "2m"),
        (RETRY_NON_IDEMPOTENT, "yes"),
        (TIMEOUT_REQUEST, "10"),
        (TIMEOUT_BACKEND_REQUEST, "-1s"),
    ];
    for (key, value) in cases {
        let (route, problems) = annotated_route(&[(RETRY_LIMIT, "4"), (key, value)]);
        assert_eq!(problems.len(), 1, "{key}={value}: {problems:?}");
        let p = &problems[0];
        assert_eq!(
            (p.kind, p.field, p.value.as_str()),
            (Kind::HttpRoute, *key, *value)
        );
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str()),
            ("demo", "annotated")
        );
        // The route applies, with the good setting and the bad one's default.
        let retry = route.rules[0].retry.clone().unwrap();
        assert_eq!(
            retry,
            pb::RetryPolicy {
                limit: 4,
                ..default_retry()
            },
            "{key}={value}"
        );
        assert_eq!(route.rules[0].timeouts, None, "{key}={value}");
    }
    // A bad limit alone still turns retries on, with the default limit.
    let (route, problems) = annotated_route(&[(RETRY_LIMIT, "many")]);
    assert_eq!(problems.len(), 1);
    assert_eq!(route.rules[0].retry.clone().unwrap(), default_retry());
    // An unknown key under the prefix: reported, ignored, retries stay off.
    let (route, problems) = annotated_route(&[("retry.trellis.dev/limt", "3")]);
    assert_eq!(problems[0].field, UNKNOWN_ROUTE_ANNOTATION);
    assert!(problems[0].message.contains("retry.trellis.dev/limt"));
    assert!(route.rules[0].retry.is_none());
}

#[test]
fn bad_route_fields_are_reported_and_invalid_rules_left_out() {
    let snap = snapshot(&http_route(
        "bad",
        "demo",
        PARENT,
        r#"rules:
  - matches: [{path: {type: RegularExpression, value: "(unclosed"}}, {path: {type: Exact, value: nope}}]
    timeouts: {request: soon}
  - backendRefs: [{name: web-v2, port: 80, weight: -5}]
  - backendRefs: [{name: web-v2, port: 80}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: y}]}}]"#,
    ));
    // Rules 0 (bad matches) and 2 (a filter) are left out; rule 1 is
    // served without its bad weight.
    let r = resolve(&snap, addr("10.96.0.10:80"), "");
    assert_eq!(r.http_routes[0].rules.len(), 1);
    assert_eq!(r.http_routes[0].rules[0].backends[0].weight, 0);
    let route = &snap.routes()[0];
    let invalid: Vec<usize> = route.invalid_rules.iter().map(|r| r.index).collect();
    assert_eq!(invalid, [0, 2]);
    assert_eq!(
        route.invalid_rules[1].reasons,
        ["spec.rules.filters=\"RequestHeaderModifier\": filters are not supported by Trellis yet"]
    );
    assert_eq!(route.invalid_rules[0].reasons.len(), 2);
    let mut fields: Vec<&str> = snap.problems().iter().map(|p| p.field).collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "spec.rules.backendRefs.weight",
            // Its only backend weighs 0 now.
            "spec.rules.backendRefs.weight",
            "spec.rules.filters",
            "spec.rules.matches.path",
            "spec.rules.matches.path",
            "spec.rules.timeouts.request"
        ]
    );
    let summary = snap.route_summaries();
    assert_eq!(summary[0].name, "bad");
    assert_eq!(summary[0].parents, ["demo/web"]);
    assert_eq!(summary[0].warnings.len(), 6);

    // Every rule invalid: the route is not attached at all.
    let snap = snapshot(&http_route(
        "filtered",
        "demo",
        PARENT,
        r#"rules:
  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]"#,
    ));
    assert!(resolve(&snap, addr("10.96.0.10:80"), "")
        .http_routes
        .is_empty());
    assert!(!snap.routes()[0].serves());
    assert_eq!(snap.route_summaries()[0].name, "filtered");
}

#[test]
fn status_and_code_parsers() {
    let (codes, ranges) = parse_http_statuses("5xx, 429 ,502-504,1XX").unwrap();
    assert_eq!(codes, [429]);
    assert_eq!(
        ranges,
        [
            pb::StatusRange { from: 500, to: 599 },
            pb::StatusRange { from: 502, to: 504 },
            pb::StatusRange { from: 100, to: 199 }
        ]
    );
    for bad in ["", "600", "0xx", "abc", "500-", "5xx;429"] {
        assert!(parse_http_statuses(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        parse_grpc_codes("cancelled,data-loss,unauthenticated,4").unwrap(),
        [1, 15, 16, 4]
    );
    assert_eq!(parse_backoff("25ms").unwrap(), (25, 250));
    assert_eq!(parse_backoff("1s-1s").unwrap(), (1000, 1000));
    assert_eq!(
        parse_gateway_duration("0s").unwrap(),
        std::time::Duration::ZERO
    );
    assert!(
        parse_gateway_duration("100000s").is_err(),
        "at most 5 digits"
    );
    assert_eq!(
        parse_port_policies("8080=deny, 9090=all-unauthenticated").unwrap(),
        [
            (8080, DefaultPolicy::Deny),
            (9090, DefaultPolicy::AllUnauthenticated)
        ]
        .into()
    );
    for bad in ["8080", "0=deny", "8080=allow", "8080=deny,8080=audit"] {
        assert!(parse_port_policies(bad).is_err(), "{bad:?}");
    }
}

const POLICIES: &str = r#"
apiVersion: policy.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-from-client, namespace: demo}
spec:
  podSelector: {matchLabels: {app: web}}
  ports: [8080]
  from:
    identities: ["spiffe://cluster.local/ns/client/sa/curl"]
    serviceAccounts: [{name: api}, {name: job, namespace: batch}]
    namespaces: [monitoring]
  http: {methods: [get, HEAD], pathPrefixes: [/api]}
---
apiVersion: policy.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: all-pods, namespace: demo}
spec:
  from: {namespaces: [demo]}
---
apiVersion: policy.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: only-v2, namespace: demo}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [web-v2]}]}
  from: {namespaces: [demo]}
---
apiVersion: policy.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: other-namespace, namespace: client}
spec:
  from: {namespaces: [demo]}
"#;

#[test]
fn inbound_policy_of_a_pod() {
    let snap = snapshot(POLICIES);
    let p = inbound(&snap, "demo", "web-0").unwrap();
    assert_eq!(p.default_policy, "all-unauthenticated");
    assert!(p.port_policies.is_empty());
    // Both probes of the app (named port resolved); not the proxy's own.
    assert_eq!(
        p.probes,
        [
            pb::Probe {
                port: 8080,
                path: "/".into()
            },
            pb::Probe {
                port: 8080,
                path: "/ready".into()
            }
        ]
    );
    let names: Vec<&str> = p.authorizations.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["all-pods", "web-from-client"]);
    assert_eq!(
        p.authorizations[1],
        pb::Authorization {
            name: "web-from-client".into(),
            ports: vec!["8080".into()],
            identities: vec![
                "spiffe://cluster.local/ns/batch/sa/job".into(),
                "spiffe://cluster.local/ns/client/sa/curl".into(),
                "spiffe://cluster.local/ns/demo/sa/api".into(),
            ],
            namespaces: vec!["monitoring".into()],
            methods: vec!["GET".into(), "HEAD".into()],
            path_prefixes: vec!["/api".into()],
        }
    );
    let v2 = inbound(&snap, "demo", "web-v2-0").unwrap();
    let names: Vec<&str> = v2.authorizations.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["all-pods", "only-v2"]);
    assert!(
        inbound(&snap, "demo", "nobody").is_none(),
        "unknown pod: no answer"
    );
    assert!(snap.problems().is_empty(), "{:?}", snap.problems());
}

#[test]
fn default_inbound_policy_precedence() {
    let pod = |ann: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: p, namespace: strict, annotations: {{{ann}}}}}
spec: {{containers: [{{name: app}}, {{name: trellis-proxy}}]}}
status: {{phase: Running, podIP: 10.0.5.5}}
"#
        )
    };
    let ns = |ann: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: strict, annotations: {{{ann}}}}}\n"
        )
    };
    let d = DEFAULT_INBOUND_POLICY;
    // (namespace annotations, pod annotations, default, port policies, problems)
    type Case<'a> = (String, String, &'a str, &'a [(u32, &'a str)], usize);
    let cases: &[Case] = &[
        (ns(""), pod(""), "all-unauthenticated", &[], 0),
        (ns(&format!("{d}: deny")), pod(""), "deny", &[], 0),
        (
            ns(&format!("{d}: deny")),
            pod(&format!("{d}: audit")),
            "audit",
            &[],
            0,
        ),
        (
            ns(""),
            pod(&format!("{d}: all-authenticated")),
            "all-authenticated",
            &[],
            0,
        ),
        // A bad value falls through to the next level.
        (
            ns(&format!("{d}: deny")),
            pod(&format!("{d}: strict")),
            "deny",
            &[],
            1,
        ),
        (
            ns(&format!("{d}: nope")),
            pod(""),
            "all-unauthenticated",
            &[],
            1,
        ),
        (
            ns(""),
            pod(&format!("{PORT_INBOUND_POLICY}: \"8080=deny,9090=audit\"")),
            "all-unauthenticated",
            &[(8080, "deny"), (9090, "audit")],
            0,
        ),
        (
            ns(""),
            pod(&format!("{PORT_INBOUND_POLICY}: \"8080:deny\"")),
            "all-unauthenticated",
            &[],
            1,
        ),
    ];
    for (n, p, want, ports, problems) in cases {
        let snap = snapshot(&format!("{n}---\n{p}"));
        let got = inbound(&snap, "strict", "p").unwrap();
        assert_eq!(got.default_policy, *want, "{n} {p}");
        let got_ports: Vec<(u32, &str)> = got
            .port_policies
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let mut got_ports = got_ports;
        got_ports.sort();
        assert_eq!(got_ports, *ports, "{p}");
        assert_eq!(
            snap.problems().len(),
            *problems,
            "{n} {p}: {:?}",
            snap.problems()
        );
    }
    // The mesh-wide default is the controller's setting.
    let objects = parse(&format!("{}---\n{}", ns(""), pod(""))).unwrap();
    let deny = Arc::new(Settings {
        default_inbound: DefaultPolicy::Deny,
        ..(*settings()).clone()
    });
    let snap = Snapshot::new(objects, deny, 1, true);
    assert_eq!(
        inbound(&snap, "strict", "p").unwrap().default_policy,
        "deny"
    );
}

#[test]
fn bad_policies_never_broaden() {
    let snap = snapshot(
        r#"
apiVersion: policy.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: zero-port, namespace: demo}
spec:
  ports: [0]
  from: {namespaces: [demo]}
---
apiVersion: policy.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: bad-ids, namespace: demo}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Like, values: [web]}]}
  from: {identities: ["web", "spiffe://other.domain/ns/a/sa/b"]}
---
apiVersion: policy.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: demo}
spec:
  from: {identities: ["not-an-id"]}
  http: {methods: ["GE T"], pathPrefixes: [api]}
"#,
    );
    let p = inbound(&snap, "demo", "web-0").unwrap();
    // zero-port: left out entirely (no port left would mean every port);
    // bad-ids: its selector cannot be evaluated, so it selects nothing;
    // typo: kept, allowing no one (it still closes the ports it selects).
    let names: Vec<&str> = p.authorizations.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["typo"]);
    assert!(p.authorizations[0].identities.is_empty());
    assert_eq!(
        p.authorizations[0].path_prefixes,
        ["api"],
        "kept: it matches nothing"
    );
    let mut fields: Vec<(&str, &str)> = snap
        .problems()
        .iter()
        .map(|p| (p.name.as_str(), p.field))
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            ("bad-ids", "spec.from.identities"),
            ("bad-ids", "spec.from.identities"),
            ("bad-ids", "spec.podSelector"),
            ("typo", "spec.from"),
            ("typo", "spec.from.identities"),
            ("typo", "spec.http.methods"),
            ("typo", "spec.http.pathPrefixes"),
            ("zero-port", "spec.ports"),
            ("zero-port", "spec.ports"),
        ]
    );
}

#[test]
fn opaque_port_annotation_problems() {
    let snap = snapshot(
        r#"
apiVersion: v1
kind: Service
metadata: {name: odd, namespace: demo, annotations: {config.trellis.dev/opaque-ports: "80-"}}
spec: {clusterIP: 10.96.3.3, ports: [{port: 80}]}
"#,
    );
    assert_eq!(snap.problems().len(), 1);
    assert_eq!(snap.problems()[0].field, OPAQUE_PORTS);
    // The service resolves all the same, without opaque ports.
    let r = resolve(&snap, addr("10.96.3.3:80"), "");
    assert_eq!(r.protocol, pb::ProtocolHint::ProtocolUnknown as i32);
}

#[test]
fn grpc_probes_let_the_kubelets_health_check_in() {
    let snap = snapshot(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: rpc-0, namespace: demo, labels: {app: rpc}}
spec:
  containers:
  - name: rpc
    image: example.com/rpc:1
    ports: [{containerPort: 9090}]
    startupProbe: {grpc: {port: 9090}}
    livenessProbe: {grpc: {port: 9090, service: liveness}}
    readinessProbe: {tcpSocket: {port: 9090}}
status: {podIP: 10.1.0.99, phase: Running}
"#,
    );
    let p = inbound(&snap, "demo", "rpc-0").unwrap();
    assert_eq!(
        p.probes,
        [pb::Probe {
            port: 9090,
            path: "/grpc.health.v1.Health/Check".into()
        }]
    );
}

#[test]
fn references_a_route_cannot_use_are_reported() {
    let snap = snapshot(&http_route(
        "refs",
        "demo",
        r#"{group: "", kind: Service, name: web, port: 81}"#,
        r#"rules:
  - backendRefs: [{name: nowhere}, {name: web-v2, port: 82}]
  - backendRefs: [{name: web, port: 80, weight: 0}]
    timeouts: {request: 1s, backendRequest: 2s}"#,
    ));
    let found: Vec<(&str, &str, &str)> = snap
        .problems()
        .iter()
        .map(|p| (p.field, p.value.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (
                "spec.parentRefs.port",
                "demo/web:81",
                "the Service has no port 81; accepted: 80"
            ),
            (
                "spec.rules.backendRefs",
                "demo/nowhere",
                "no such Service; requests for this backend fail"
            ),
            (
                "spec.rules.backendRefs.port",
                "demo/web-v2:82",
                "the Service has no port 82; accepted: 80, 81"
            ),
            (
                "spec.rules.backendRefs.weight",
                "0",
                "every backend has weight 0: every request of this rule fails"
            ),
            (
                "spec.rules.timeouts.backendRequest",
                "2000ms",
                "longer than the request timeout (1000ms), which includes every try"
            ),
        ]
    );
    let snap = snapshot(&http_route(
        "orphan",
        "demo",
        r#"{group: "", kind: Service, name: gone}"#,
        "",
    ));
    assert_eq!(snap.problems()[0].field, "spec.parentRefs");
    assert_eq!(snap.problems()[0].value, "demo/gone");
}

#[test]
fn problems_are_reported_once_per_object_version() {
    let route = |version: &str| {
        http_route(
            "typo",
            "demo",
            PARENT,
            "rules: []",
        )
        .replace(
            "metadata: {",
            &format!("metadata: {{resourceVersion: \"{version}\", annotations: {{retry.trellis.dev/limt: \"3\"}}, "),
        )
    };
    let v1 = snapshot(&route("1")).versioned_problems();
    let v1_again = snapshot(&route("1")).versioned_problems();
    let v2 = snapshot(&route("2")).versioned_problems();
    assert_eq!(v1.len(), 1, "{v1:?}");
    assert!(v1.iter().all(|(p, _)| p.field == UNKNOWN_ROUTE_ANNOTATION));
    // The same object version: nothing new to report.
    assert_eq!(v1_again.difference(&v1).count(), 0);
    // A new version with the same mistake: reported again.
    assert_eq!(v2.difference(&v1).count(), 1);
    assert_eq!(v2.iter().next().unwrap().1.as_deref(), Some("2"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// A snapshot built from the last one (keeping the parts whose objects
    /// did not change) is the snapshot built from scratch, after any
    /// sequence of changes.
    #[test]
    fn a_snapshot_from_the_last_one_is_a_snapshot_from_scratch(
        ops in proptest::collection::vec((0usize..64, proptest::prelude::any::<bool>(), proptest::prelude::any::<bool>()), 1..40)
    ) {
        let pool = crate::answers::tests::pool();
        let store = crate::store::Store::new((*settings()).clone());
        store.set_synced();
        for (which, apply, publish) in ops {
            let o = &pool[which % pool.len()];
            if apply {
                store.apply(o.clone());
            } else {
                store.delete(o.kind(), &o.key());
            }
            if !publish {
                continue;
            }
            let kept = store.publish();
            let fresh = Snapshot::new(kept.objects().clone(), settings(), kept.version, kept.synced);
            proptest::prop_assert_eq!(&kept.services_by_addr, &fresh.services_by_addr);
            proptest::prop_assert_eq!(&kept.pods_by_ip, &fresh.pods_by_ip);
            proptest::prop_assert_eq!(&kept.slices_by_service, &fresh.slices_by_service);
            proptest::prop_assert_eq!(&kept.routes, &fresh.routes);
            proptest::prop_assert_eq!(kept.problems(), fresh.problems());
        }
    }
}

#[test]
fn a_change_to_one_kind_rebuilds_only_its_part() {
    let store = crate::store::Store::new((*settings()).clone());
    for o in crate::answers::tests::pool().into_iter().take(12) {
        store.apply(o);
    }
    let before = store.publish();
    let slice = crate::answers::tests::pool()
        .into_iter()
        .find(|o| o.kind() == Kind::EndpointSlice)
        .unwrap();
    store.apply(slice);
    let after = store.publish();
    assert!(
        Arc::ptr_eq(&before.objects.pods, &after.objects.pods),
        "pods shared, not copied"
    );
    assert!(Arc::ptr_eq(&before.pods_by_ip, &after.pods_by_ip));
    assert!(Arc::ptr_eq(
        &before.services_by_addr,
        &after.services_by_addr
    ));
    assert!(Arc::ptr_eq(&before.routes, &after.routes));
    assert!(!Arc::ptr_eq(
        &before.slices_by_service,
        &after.slices_by_service
    ));
}
