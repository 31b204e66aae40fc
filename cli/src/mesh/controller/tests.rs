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
