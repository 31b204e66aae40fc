// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use serde_json::json;

use super::*;
use crate::check::{self, SpecError};

fn services() -> ServicePorts {
    [
        (("demo", "web"), vec![80]),
        (("demo", "web-v2"), vec![80, 8081]),
    ]
    .into_iter()
    .map(|((n, s), p)| ((n.to_string(), s.to_string()), p))
    .collect()
}

#[test]
fn a_good_route_passes() {
    let ok = json!({
        "name": "split", "namespace": "demo", "parent": {"service": "web", "port": 80},
        "annotations": {"retry.trellis.dev/limit": "2", "timeout.trellis.dev/request": "5s"},
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET",
                         "headers": [{"name": "x-canary", "value": "1"}],
                         "queryParams": [{"type": "RegularExpression", "name": "v", "value": "^2"}]}],
            "backendRefs": [{"name": "web-v2", "port": 80, "weight": 10}, {"name": "web", "weight": 0}],
            "timeouts": {"request": "10s", "backendRequest": "2s"},
        }],
    });
    assert_eq!(
        check_route("routes[0]", &ok, &services()),
        Vec::<(String, String)>::new()
    );
    let grpc = json!({
        "name": "g", "namespace": "demo", "kind": "GRPCRoute", "parent": {"service": "web"},
        "rules": [{"matches": [{"method": {"service": "grpc.health.v1.Health", "method": "Check"}}],
                   "backendRefs": [{"name": "web"}]}],
    });
    assert_eq!(
        check_route("routes[0]", &grpc, &services()),
        Vec::<(String, String)>::new()
    );
}

/// Each mistake: the route, the field path and the exact message.
#[test]
fn route_mistakes_name_the_field_and_the_accepted_values() {
    let route = |rules: Value| json!({"name": "r", "namespace": "demo", "parent": {"service": "web"}, "rules": rules});
    let grpc = |rules: Value| json!({"name": "r", "namespace": "demo", "kind": "GRPCRoute", "parent": {"service": "web"}, "rules": rules});
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!("x"), "routes[0]", "must be a mapping with fields `name`, `namespace`, `kind`, `parent`, `annotations`, `rules`"),
        (json!({"parent": {"service": "web"}, "namespace": "demo", "rules": []}), "routes[0].name", "required: the route's name"),
        (
            json!({"name": "r", "kind": "TCPRoute", "parent": {"service": "web"}, "namespace": "demo", "rules": []}),
            "routes[0].kind",
            "\"TCPRoute\" is not accepted; accepted: HTTPRoute, GRPCRoute",
        ),
        (
            json!({"name": "r", "parent": {"service": "web"}, "rules": []}),
            "routes[0].parent.service",
            "no service default/web in this file; accepted: demo/web, demo/web-v2",
        ),
        (
            json!({"name": "r", "namespace": "demo", "parent": {"service": "web", "port": 81}, "rules": []}),
            "routes[0].parent.port",
            "service demo/web has no port 81; accepted: 80",
        ),
        (
            json!({"name": "r", "namespace": "demo", "parent": {"service": "web", "prot": 80}, "rules": []}),
            "routes[0].parent.prot",
            "unknown field `prot` (did you mean `port`?); accepted: `service`, `port`",
        ),
        (json!({"name": "r", "namespace": "demo", "parent": {"service": "web"}}), "routes[0].rules", "required: a list of rules (matches, backendRefs)"),
        (
            json!({"name": "r", "namespace": "demo", "parent": {"service": "web"}, "rules": [], "hostnames": []}),
            "routes[0].hostnames",
            "unknown field `hostnames`; accepted: `name`, `namespace`, `kind`, `parent`, `annotations`, `rules`",
        ),
        (
            route(json!([{}, {"matches": [{"path": {"type": "Prefix", "value": "/"}}]}])),
            "routes[0].rules[1].matches[0].path.type",
            "\"Prefix\" is not accepted; accepted: Exact, PathPrefix, RegularExpression",
        ),
        (
            route(json!([{"matches": [{"path": {"value": "api"}}]}])),
            "routes[0].rules[0].matches[0].path.value",
            "\"api\" must start with '/'",
        ),
        (
            route(json!([{"matches": [{"path": {"type": "RegularExpression", "value": "/api("}}]}])),
            "routes[0].rules[0].matches[0].path.value",
            "\"/api(\" is not a regular expression: error: unclosed group",
        ),
        (
            route(json!([{"matches": [{"headers": [{"type": "RegularExpression", "name": "x", "value": "["}]}]}])),
            "routes[0].rules[0].matches[0].headers[0].value",
            "\"[\" is not a regular expression: error: unclosed character class",
        ),
        (
            route(json!([{"matches": [{"method": "get"}]}])),
            "routes[0].rules[0].matches[0].method",
            "\"get\" is not accepted; accepted: GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH",
        ),
        (
            route(json!([{"matches": [{"headers": [{"type": "Prefix", "name": "x", "value": "y"}]}]}])),
            "routes[0].rules[0].matches[0].headers[0].type",
            "\"Prefix\" is not accepted; accepted: Exact, RegularExpression",
        ),
        (
            route(json!([{"matches": [{"queryParams": [{"name": "x"}]}]}])),
            "routes[0].rules[0].matches[0].queryParams[0].value",
            "required: the value to match",
        ),
        (
            route(json!([{"matches": [{"pth": {"value": "/"}}]}])),
            "routes[0].rules[0].matches[0].pth",
            "unknown field `pth` (did you mean `path`?); accepted: `path`, `headers`, `queryParams`, `method`",
        ),
        (
            route(json!([{"filters": []}])),
            "routes[0].rules[0].filters",
            "unknown field `filters` (filters are not supported by Trellis yet); accepted: `matches`, `backendRefs`, `timeouts`",
        ),
        (
            route(json!([{"backendRefs": [{"name": "nope"}]}])),
            "routes[0].rules[0].backendRefs[0].name",
            "no service demo/nope in this file; accepted: demo/web, demo/web-v2",
        ),
        (
            route(json!([{"backendRefs": [{"name": "web-v2", "port": 9}]}])),
            "routes[0].rules[0].backendRefs[0].port",
            "service demo/web-v2 has no port 9; accepted: 80, 8081",
        ),
        (
            route(json!([{"backendRefs": [{"name": "web", "weight": -1}]}])),
            "routes[0].rules[0].backendRefs[0].weight",
            "-1 is not a weight; accepted: a whole number from 0 to 1000000",
        ),
        (
            route(json!([{"backendRefs": [{"name": "web", "weight": 0}]}])),
            "routes[0].rules[0].backendRefs",
            "every backend has weight 0: every request would fail; give one a weight of 1 or more",
        ),
        (
            route(json!([{"backendRefs": [{"name": "web", "kind": "Pod"}]}])),
            "routes[0].rules[0].backendRefs[0].kind",
            "\"Pod\" is not accepted; accepted: Service",
        ),
        (
            route(json!([{"timeouts": {"request": "soon"}}])),
            "routes[0].rules[0].timeouts.request",
            "\"soon\" is not a duration: use whole numbers with h, m, s or ms, e.g. 500ms, 10s, 1h30m",
        ),
        (
            route(json!([{"timeouts": {"request": "1s", "backendRequest": "2s"}}])),
            "routes[0].rules[0].timeouts.backendRequest",
            "must not be longer than `request` (the whole request includes every try)",
        ),
        (
            grpc(json!([{"timeouts": {"request": "1s"}}])),
            "routes[0].rules[0].timeouts",
            "unknown field `timeouts`; accepted: `matches`, `backendRefs`",
        ),
        (
            grpc(json!([{"matches": [{"method": {"type": "Prefix", "service": "a.B"}}]}])),
            "routes[0].rules[0].matches[0].method.type",
            "\"Prefix\" is not accepted; accepted: Exact, RegularExpression",
        ),
        (
            grpc(json!([{"matches": [{"method": {"type": "RegularExpression", "service": "a.(B"}}]}])),
            "routes[0].rules[0].matches[0].method.service",
            "\"a.(B\" is not a regular expression: error: unclosed group",
        ),
        (
            grpc(json!([{"matches": [{"method": {"type": "Exact"}}]}])),
            "routes[0].rules[0].matches[0].method",
            "give `service` (e.g. grpc.health.v1.Health), `method` (e.g. Check) or both",
        ),
        (
            grpc(json!([{"matches": [{"method": {"service": "a.B/Check"}}]}])),
            "routes[0].rules[0].matches[0].method.service",
            "\"a.B/Check\" must not contain '/': service and method are given separately",
        ),
        (
            grpc(json!([{"matches": [{"path": {"value": "/"}}]}])),
            "routes[0].rules[0].matches[0].path",
            "unknown field `path`; accepted: `method`, `headers`",
        ),
    ];
    for (v, field, message) in cases {
        let errs = check_route("routes[0]", &v, &services());
        assert!(
            errs.contains(&(field.to_string(), message.to_string())),
            "{v}\nwanted {field}: {message}\ngot {errs:#?}"
        );
    }
}

#[test]
fn annotation_mistakes_use_the_controllers_table() {
    let with = |k: &str, v: Value| json!({"name": "r", "namespace": "demo", "parent": {"service": "web"}, "annotations": {k: v}, "rules": []});
    let known = ROUTE_ANNOTATIONS
        .iter()
        .map(|a| a.key)
        .collect::<Vec<_>>()
        .join(", ");
    let cases = [
        (
            with("retry.trellis.dev/limt", json!("3")),
            r#"routes[0].annotations["retry.trellis.dev/limt"]"#,
            format!("unknown annotation \"retry.trellis.dev/limt\" (did you mean retry.trellis.dev/limit?); known: {known}"),
        ),
        (
            with("timeout.trellis.dev/request", json!("soon")),
            r#"routes[0].annotations["timeout.trellis.dev/request"]"#,
            "\"soon\" is not a duration: use whole numbers with h, m, s or ms, e.g. 500ms, 10s, 1h30m; accepted: a duration for the whole request, retries included, e.g. 10s; 0s: none".to_string(),
        ),
        (
            with("retry.trellis.dev/limit", json!(3)),
            r#"routes[0].annotations["retry.trellis.dev/limit"]"#,
            "3 is not a string: quote it, e.g. \"3\"".to_string(),
        ),
        (
            with("retry.trellis.dev/grpc-codes", json!("sometimes")),
            r#"routes[0].annotations["retry.trellis.dev/grpc-codes"]"#,
            "\"sometimes\" is not a gRPC status name (e.g. unavailable, resource-exhausted) or number; accepted: gRPC status names (kebab-case or SCREAMING_SNAKE) or numbers 1-16, e.g. unavailable,resource-exhausted,14".to_string(),
        ),
    ];
    for (v, field, message) in cases {
        let errs = check_route("routes[0]", &v, &services());
        assert_eq!(errs, vec![(field.to_string(), message.clone())], "{v}");
    }
}

const MESH: &str = r#"
name: routes-test
workloads:
  - {name: web, namespace: demo, ports: [8080], command: [sleep, infinity]}
services:
  - {name: web, namespace: demo, selector: web, ports: [{port: 80, targetPort: 8080}]}
routes:
  - name: web
    namespace: demo
    parent: {service: web, port: 80}
    annotations:
      ANNOTATION
    rules:
      - {}
      - matches: [{path: PATH}]
        backendRefs: [{name: web}]
"#;

fn mesh(annotation: &str, path: &str) -> String {
    MESH.replace("ANNOTATION", annotation).replace("PATH", path)
}

/// `mesh up` and `mesh apply` both read the file with [`check::load`]: the
/// whole message, naming the user's file, as either prints it.
#[test]
fn up_and_apply_refuse_route_mistakes_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("trellis-routes-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            mesh("{}", "{type: Prefix, value: /api}"),
            "routes[0].rules[1].matches[0].path.type: \"Prefix\" is not accepted; accepted: Exact, PathPrefix, RegularExpression",
        ),
        (
            mesh("{retry.trellis.dev/limt: \"3\"}", "{type: PathPrefix, value: /api}"),
            "routes[0].annotations[\"retry.trellis.dev/limt\"]: unknown annotation \"retry.trellis.dev/limt\" (did you mean retry.trellis.dev/limit?)",
        ),
        (
            mesh("{timeout.trellis.dev/request: soon}", "{type: PathPrefix, value: /api}"),
            "routes[0].annotations[\"timeout.trellis.dev/request\"]: \"soon\" is not a duration",
        ),
        (
            mesh("{}", "{type: RegularExpression, value: \"/api(\"}"),
            "routes[0].rules[1].matches[0].path.value: \"/api(\" is not a regular expression",
        ),
    ];
    for (i, (text, wanted)) in cases.iter().enumerate() {
        let path = dir.join(format!("mesh-{i}.yaml"));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let err = match check::load(&path) {
            Err(SpecError::Invalid(e)) => e,
            Err(other) => panic!("{text}: expected validation errors, got {other}"),
            Ok(_) => panic!("{text}: accepted"),
        };
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("{}: 1 problem(s):", path.display())),
            "{shown}"
        );
        assert!(shown.contains(wanted), "wanted {wanted:?} in\n{shown}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The controller's own compilation, behind the field checks: what it would
/// report comes back naming the route.
#[test]
fn the_controllers_own_problems_name_the_route() {
    let file = check::parse(&mesh("{}", "{type: PathPrefix, value: /api}"), "t").unwrap();
    let route = json!({"name": "r", "namespace": "demo", "parent": {"service": "web"},
        "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "/api("}}],
                   "backendRefs": [{"name": "absent"}]}]});
    let found = crate::controller::controller_problems(
        "cluster.local",
        &file.file.services,
        &[(3, route)],
        &[],
    );
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("routes[3]: spec.rules.backendRefs=\"demo/absent\": no such Service"),
        "{found:?}"
    );
    assert!(
        found[1]
            .starts_with("routes[3]: spec.rules.matches.path=\"/api(\": not a regular expression"),
        "{found:?}"
    );
    // A good file's routes give it nothing to say.
    let good: Vec<(usize, Value)> = file.file.routes.iter().cloned().enumerate().collect();
    assert_eq!(
        crate::controller::controller_problems("cluster.local", &file.file.services, &good, &[]),
        Vec::<String>::new()
    );
}
