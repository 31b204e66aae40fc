// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use serde_json::json;

use super::*;

fn services() -> BTreeSet<(String, String)> {
    [("demo", "web"), ("demo", "web-v2")]
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect()
}

#[test]
fn routes_are_checked_field_by_field() {
    let ok = json!({
        "name": "split", "namespace": "demo", "parent": {"service": "web", "port": 80},
        "annotations": {"retry.trellis.dev/limit": "2"},
        "rules": [{"backendRefs": [{"name": "web-v2", "port": 80, "weight": 10}]}],
    });
    assert!(check_route("routes[0]", &ok, &services()).is_empty());
    let cases = [
        (json!("x"), "routes[0]"),
        (
            json!({"parent": {"service": "web"}, "rules": []}),
            "routes[0].name",
        ),
        (
            json!({"name": "r", "kind": "TCPRoute", "parent": {"service": "web"}, "namespace": "demo", "rules": []}),
            "routes[0].kind",
        ),
        (
            json!({"name": "r", "parent": {"service": "web"}, "rules": []}),
            "routes[0].parent.service",
        ),
        (
            json!({"name": "r", "namespace": "demo", "parent": {"service": "web"}}),
            "routes[0].rules",
        ),
        (
            json!({"name": "r", "namespace": "demo", "parent": {"service": "web"}, "annotations": {"a": 1}, "rules": []}),
            "routes[0].annotations",
        ),
        (
            json!({"name": "r", "namespace": "demo", "parent": {"service": "web"}, "rules": [{"backendRefs": [{"name": "nope"}]}]}),
            "routes[0].rules[0].backendRefs[0].name",
        ),
        (
            json!({"name": "r", "namespace": "demo", "parent": {"service": "web"}, "rules": [], "hostnames": []}),
            "routes[0].hostnames",
        ),
    ];
    for (v, field) in cases {
        let errs = check_route("routes[0]", &v, &services());
        assert!(errs.iter().any(|(f, _)| f == field), "{v}: {errs:?}");
    }
}

#[test]
fn routes_become_gateway_api_objects_in_file_order() {
    let routes = vec![
        json!({"name": "a", "namespace": "demo", "parent": {"service": "web", "port": 80}, "rules": [{}]}),
        json!({"name": "b", "namespace": "demo", "kind": "GRPCRoute", "parent": {"service": "web"}, "rules": [{}]}),
    ];
    let list = cluster_objects(&[], &[], &routes, &[]);
    let items = list["items"].as_array().unwrap();
    let (a, b) = (&items[0], &items[1]);
    assert_eq!(a["kind"], "HTTPRoute");
    assert_eq!(b["kind"], "GRPCRoute");
    assert_eq!(a["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(
        a["spec"]["parentRefs"][0],
        json!({"group": "", "kind": "Service", "name": "web", "port": 80})
    );
    assert!(b["spec"]["parentRefs"][0].get("port").is_none());
    let (ta, tb) = (
        a["metadata"]["creationTimestamp"].as_str().unwrap(),
        b["metadata"]["creationTimestamp"].as_str().unwrap(),
    );
    assert!(ta < tb, "file order is age order: {ta} {tb}");
}

#[test]
fn service_and_slice_ports_pair_by_name() {
    use super::super::plan::ServicePortPlan;
    let svc = ServicePlan {
        name: "web".into(),
        namespace: "demo".into(),
        vip: "10.96.0.1".parse().unwrap(),
        ports: vec![
            ServicePortPlan {
                name: None,
                port: 80,
                target_port: 8080,
            },
            ServicePortPlan {
                name: Some("tcp".into()),
                port: 9000,
                target_port: 9000,
            },
        ],
        endpoints: vec![],
    };
    let list = cluster_objects(&[], &[svc], &[], &[]);
    let items = list["items"].as_array().unwrap();
    let service = items.iter().find(|i| i["kind"] == "Service").unwrap();
    let slice = items.iter().find(|i| i["kind"] == "EndpointSlice").unwrap();
    assert_eq!(service["spec"]["ports"][0]["name"], "port-80");
    assert_eq!(
        slice["ports"][0],
        json!({"name": "port-80", "port": 8080, "protocol": "TCP"})
    );
    assert_eq!(slice["ports"][1]["name"], "tcp");
    assert_eq!(
        slice["metadata"]["labels"]["kubernetes.io/service-name"],
        "web"
    );
}
