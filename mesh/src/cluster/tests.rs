// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;

use super::*;
use crate::{check, plan};

const FILE: &str = r#"
name: cl
workloads:
  - name: web
    namespace: demo
    serviceAccount: web-sa
    replicas: 2
    ports: [8080, 9090]
    command: [sleep, infinity]
    annotations: {config.trellis.dev/opaque-ports: "9090", team: blue}
    probes: [{port: 8080, path: /ready}, {port: 8080, path: /live}]
  - name: plain
    namespace: other
    meshed: false
    command: [sleep, infinity]
services:
  - name: web
    namespace: demo
    selector: web
    ports: [{port: 80, targetPort: 8080, appProtocol: http}, {port: 9090, name: raw}]
routes:
  - name: slow
    namespace: demo
    parent: {service: web, port: 80}
    annotations: {retry.trellis.dev/limit: "3"}
    rules: [{matches: [{path: {type: PathPrefix, value: /slow}}], timeouts: {request: 2s}}]
  - {name: rpc, namespace: demo, kind: GRPCRoute, parent: {service: web}, rules: [{}]}
policies:
  - name: from-plain
    namespace: demo
    targetWorkload: web
    ports: [8080]
    from: {serviceAccounts: [{name: client}], namespaces: [other]}
    http: {methods: [GET], pathPrefixes: [/api]}
  - {name: all, namespace: demo, from: {identities: ["spiffe://cluster.local/ns/x/sa/y"]}}
"#;

fn list() -> Value {
    let p = plan::build(&check::parse(FILE, "t").unwrap(), "/bin/trellis").unwrap();
    cluster_objects(&p.pods, &p.services, &p.routes, &p.policies)
}

fn find<'a>(list: &'a Value, kind: &str, name: &str) -> &'a Value {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {list:#}"))
}

#[test]
fn a_list_of_every_kind_in_order() {
    let l = list();
    assert_eq!(l["apiVersion"], "v1");
    assert_eq!(l["kind"], "List");
    let kinds: Vec<(String, String)> = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap().to_string(),
                o["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("Namespace", "demo"),
        ("Namespace", "other"),
        ("Pod", "web-0"),
        ("Pod", "web-1"),
        ("Pod", "plain-0"),
        ("Service", "web"),
        ("EndpointSlice", "web-local"),
        ("HTTPRoute", "slow"),
        ("GRPCRoute", "rpc"),
        ("AuthorizationPolicy", "from-plain"),
        ("AuthorizationPolicy", "all"),
    ]
    .map(|(k, n)| (k.to_string(), n.to_string()));
    assert_eq!(kinds, want);
}

#[test]
fn pods_as_the_api_server_would_hold_them() {
    let l = list();
    let web = find(&l, "Pod", "web-1");
    assert_eq!(web["apiVersion"], "v1");
    assert_eq!(
        web["metadata"],
        json!({
            "name": "web-1",
            "namespace": "demo",
            "labels": {"app": "web"},
            "annotations": {"config.trellis.dev/opaque-ports": "9090", "team": "blue"},
        })
    );
    assert_eq!(web["spec"]["serviceAccountName"], "web-sa");
    let containers = web["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0]["name"], "web");
    assert_eq!(
        containers[0]["ports"],
        json!([{"containerPort": 8080, "protocol": "TCP"}, {"containerPort": 9090, "protocol": "TCP"}])
    );
    assert_eq!(
        containers[0]["readinessProbe"],
        json!({"httpGet": {"port": 8080, "path": "/ready"}})
    );
    assert_eq!(
        containers[0]["livenessProbe"],
        json!({"httpGet": {"port": 8080, "path": "/live"}})
    );
    assert_eq!(containers[1], json!({"name": "trellis-proxy"}));
    assert_eq!(
        web["status"],
        json!({
            "phase": "Running",
            "podIP": "10.77.0.3",
            "podIPs": [{"ip": "10.77.0.3"}],
            "conditions": [{"type": "Ready", "status": "True"}],
        })
    );

    let plain = find(&l, "Pod", "plain-0");
    let containers = plain["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "unmeshed: no trellis-proxy container");
    assert!(plain["metadata"].get("annotations").is_none());
    assert!(containers[0].get("ports").is_none());
}

#[test]
fn services_and_their_endpoint_slices() {
    let l = list();
    let svc = find(&l, "Service", "web");
    assert_eq!(
        svc["spec"],
        json!({
            "type": "ClusterIP",
            "clusterIP": "10.96.0.1",
            "clusterIPs": ["10.96.0.1"],
            "selector": {"app": "web"},
            "ports": [
                {"name": "port-80", "port": 80, "targetPort": 8080, "protocol": "TCP", "appProtocol": "http"},
                {"name": "raw", "port": 9090, "targetPort": 9090, "protocol": "TCP"},
            ],
        })
    );
    let slice = find(&l, "EndpointSlice", "web-local");
    assert_eq!(slice["apiVersion"], "discovery.k8s.io/v1");
    assert_eq!(
        slice["metadata"]["labels"],
        json!({"kubernetes.io/service-name": "web"})
    );
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["endpoints"],
        json!([
            {"addresses": ["10.77.0.2"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "demo"}},
            {"addresses": ["10.77.0.3"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "demo"}},
        ])
    );
    // Paired with the service's ports by name; the target port.
    assert_eq!(
        slice["ports"],
        json!([
            {"name": "port-80", "port": 8080, "protocol": "TCP", "appProtocol": "http"},
            {"name": "raw", "port": 9090, "protocol": "TCP"},
        ])
    );
}

#[test]
fn a_pod_that_is_down_is_not_ready_and_not_a_ready_endpoint() {
    let p = plan::build(&check::parse(FILE, "t").unwrap(), "/bin/trellis").unwrap();
    let web1 = p.pods.iter().find(|x| x.name == "web-1").unwrap();
    let down = BTreeSet::from([web1.netns.clone()]);
    let l = cluster_objects_with(&p.pods, &p.services, &p.routes, &p.policies, &down);
    let ready = |pod: &str| find(&l, "Pod", pod)["status"]["conditions"][0]["status"].clone();
    assert_eq!(ready("web-0"), "True");
    assert_eq!(ready("web-1"), "False");
    let slice = find(&l, "EndpointSlice", "web-local");
    let endpoints: Vec<(Value, Value)> = slice["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["addresses"][0].clone(), e["conditions"]["ready"].clone()))
        .collect();
    assert_eq!(
        endpoints,
        [
            (json!("10.77.0.2"), json!(true)),
            (json!("10.77.0.3"), json!(false))
        ]
    );
}

#[test]
fn routes_become_gateway_api_objects_in_file_order() {
    let l = list();
    let (a, b) = (find(&l, "HTTPRoute", "slow"), find(&l, "GRPCRoute", "rpc"));
    assert_eq!(a["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(b["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(a["metadata"]["namespace"], "demo");
    assert_eq!(
        a["metadata"]["annotations"],
        json!({"retry.trellis.dev/limit": "3"})
    );
    assert_eq!(
        a["spec"]["parentRefs"],
        json!([{"group": "", "kind": "Service", "name": "web", "port": 80}])
    );
    assert_eq!(
        a["spec"]["rules"],
        json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}], "timeouts": {"request": "2s"}}])
    );
    assert!(b["spec"]["parentRefs"][0].get("port").is_none());
    let (ta, tb) = (
        a["metadata"]["creationTimestamp"].as_str().unwrap(),
        b["metadata"]["creationTimestamp"].as_str().unwrap(),
    );
    assert_eq!(ta, "2026-01-01T00:00:00Z");
    assert!(ta < tb, "file order is age order: {ta} {tb}");
}

#[test]
fn policies_select_pods_by_their_app_label() {
    let l = list();
    let p = find(&l, "AuthorizationPolicy", "from-plain");
    assert_eq!(p["apiVersion"], "policy.trellis.dev/v1alpha1");
    assert_eq!(
        p["spec"],
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ports": [8080],
            "from": {
                "identities": [],
                "serviceAccounts": [{"name": "client", "namespace": "demo"}],
                "namespaces": ["other"],
            },
            "http": {"methods": ["GET"], "pathPrefixes": ["/api"]},
        })
    );
    let all = find(&l, "AuthorizationPolicy", "all");
    assert_eq!(all["spec"]["podSelector"], json!({}));
    assert!(all["spec"].get("http").is_none());
}

#[test]
fn an_empty_mesh_is_an_empty_list() {
    assert_eq!(
        cluster_objects(&[], &[], &[], &[]),
        json!({"apiVersion": "v1", "kind": "List", "items": []})
    );
}
