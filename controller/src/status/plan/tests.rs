//! Table tests of the route status plan: the exact patch for a good route
//! and for each way a route can be wrong, and no write when the route
//! already says it.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::*;
use crate::index::{DefaultPolicy, Settings};
use crate::source::file::parse;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: demo}
spec: {clusterIP: 10.96.0.11, ports: [{name: http, port: 80}]}
"#;

/// A parentRef naming the Service `web`.
const WEB: &str = r#"{group: "", kind: Service, name: web}"#;
const T0: &str = "2025-01-01T00:00:00Z";
const T1: &str = "2025-06-01T12:00:00Z";

fn time(s: &str) -> Time {
    Time(s.parse::<Timestamp>().unwrap())
}

/// An HTTPRoute `r` in `demo` (generation 3, resourceVersion 10).
fn route(parents: &str, rules: &str, status: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: demo, generation: 3, resourceVersion: "10"}}
spec:
  parentRefs: {parents}
  rules: {rules}
status: {status}
"#
    )
}

fn snapshot(objects: &str) -> Snapshot {
    let objects = parse(&format!("{SERVICES}\n---\n{objects}")).unwrap();
    let settings = Arc::new(Settings {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        default_inbound: DefaultPolicy::AllUnauthenticated,
    });
    Snapshot::new(objects, settings, 1, true)
}

/// The only write the plan makes at `now`.
fn the_write(snap: &Snapshot, now: &str) -> Value {
    let writes = plan(snap, &time(now));
    assert_eq!(writes.len(), 1, "{writes:#?}");
    writes[0].patch()
}

fn cond(type_: &str, status: &str, reason: &str, message: &str, at: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "observedGeneration": 3, "lastTransitionTime": at})
}

fn ours(parent: Value, conditions: Vec<Value>) -> Value {
    json!({"parentRef": parent, "controllerName": "trellis.dev/controller", "conditions": conditions})
}

fn web() -> Value {
    json!({"group": "", "kind": "Service", "name": "web"})
}

fn accepted(at: &str) -> Value {
    cond("Accepted", "True", "Accepted", "accepted by Trellis", at)
}

fn resolved(at: &str) -> Value {
    cond(
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
        "every backendRef resolves",
        at,
    )
}

#[test]
fn a_good_route_is_accepted_with_its_refs_resolved() {
    let snap = snapshot(&route(
        &format!("[{WEB}]"),
        "[{backendRefs: [{name: web-v2, port: 80}]}]",
        "null",
    ));
    assert_eq!(
        the_write(&snap, T0),
        json!({
            "metadata": {"resourceVersion": "10"},
            "status": {"parents": [ours(web(), vec![accepted(T0), resolved(T0)])]},
        })
    );
}

#[test]
fn a_second_plan_over_what_was_written_writes_nothing() {
    let status = json!({"parents": [ours(web(), vec![accepted(T0), resolved(T0)])]});
    let snap = snapshot(&route(
        &format!("[{WEB}]"),
        "[{backendRefs: [{name: web-v2, port: 80}]}]",
        &status.to_string(),
    ));
    assert!(plan(&snap, &time(T1)).is_empty(), "no write loop");
}

#[test]
fn a_missing_backend_is_backend_not_found() {
    let snap = snapshot(&route(
        &format!("[{WEB}]"),
        "[{backendRefs: [{name: absent, port: 80}, {name: web-v2, port: 81}]}]",
        "null",
    ));
    assert_eq!(
        the_write(&snap, T0),
        json!({
            "metadata": {"resourceVersion": "10"},
            "status": {"parents": [ours(web(), vec![
                accepted(T0),
                cond("ResolvedRefs", "False", "BackendNotFound",
                     "Service demo/absent not found; Service demo/web-v2 has no port 81", T0),
            ])]},
        })
    );
}

#[test]
fn a_backend_that_is_not_a_service_is_invalid_kind() {
    let snap = snapshot(&route(
        &format!("[{WEB}]"),
        "[{backendRefs: [{group: example.com, kind: Bucket, name: b}]}]",
        "null",
    ));
    let patch = the_write(&snap, T0);
    assert_eq!(
        patch["status"]["parents"][0]["conditions"][1],
        cond(
            "ResolvedRefs",
            "False",
            "InvalidKind",
            "backendRef example.com/Bucket/demo/b is not a Service (only Services are supported)",
            T0
        )
    );
    assert_eq!(patch["status"]["parents"][0]["conditions"][0], accepted(T0));
}

#[test]
fn an_unsupported_filter_on_every_rule_is_not_accepted() {
    let snap = snapshot(&route(
        &format!("[{WEB}]"),
        "[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: y}]}}], backendRefs: [{name: web-v2, port: 80}]}]",
        "null",
    ));
    assert_eq!(
        the_write(&snap, T0),
        json!({
            "metadata": {"resourceVersion": "10"},
            "status": {"parents": [ours(web(), vec![
                cond("Accepted", "False", "UnsupportedValue",
                     "no rule is valid, nothing is served: rule 0: spec.rules.filters=\"RequestHeaderModifier\": filters are not supported by Trellis yet", T0),
                resolved(T0),
            ])]},
        })
    );
}

#[test]
fn some_invalid_rules_are_partially_invalid() {
    let snap = snapshot(&route(
        &format!("[{WEB}]"),
        r#"[{backendRefs: [{name: web-v2, port: 80}]},
            {matches: [{path: {type: RegularExpression, value: "(x"}}]}]"#,
        "null",
    ));
    let conditions = the_write(&snap, T0)["status"]["parents"][0]["conditions"].clone();
    assert_eq!(conditions[0], accepted(T0));
    assert_eq!(conditions[1], resolved(T0));
    let partial = &conditions[2];
    assert_eq!(
        (&partial["type"], &partial["status"], &partial["reason"]),
        (
            &json!("PartiallyInvalid"),
            &json!("True"),
            &json!("UnsupportedValue")
        )
    );
    assert!(
        partial["message"].as_str().unwrap().starts_with(
            "left out: rule 1: spec.rules.matches.path=\"(x\": not a regular expression"
        ),
        "{partial}"
    );
}

#[test]
fn a_missing_parent_service_or_port_is_no_matching_parent() {
    let parents = r#"[{group: "", kind: Service, name: absent},
                      {group: "", kind: Service, name: web, port: 8080},
                      {group: "", kind: Service, name: web, sectionName: grpc}]"#;
    let snap = snapshot(&route(parents, "[]", "null"));
    let patch = the_write(&snap, T0);
    let entries = patch["status"]["parents"].as_array().unwrap();
    let accepted: Vec<(&Value, &Value, &Value)> = entries
        .iter()
        .map(|e| {
            let c = &e["conditions"][0];
            (&c["status"], &c["reason"], &c["message"])
        })
        .collect();
    assert_eq!(
        accepted,
        [
            (
                &json!("False"),
                &json!("NoMatchingParent"),
                &json!("Service demo/absent not found")
            ),
            (
                &json!("False"),
                &json!("NoMatchingParent"),
                &json!("Service demo/web has no port 8080")
            ),
            (
                &json!("False"),
                &json!("NoMatchingParent"),
                &json!("Service demo/web has no port \"grpc\"")
            ),
        ]
    );
    assert_eq!(
        entries[1]["parentRef"],
        json!({"group": "", "kind": "Service", "name": "web", "port": 8080})
    );
    assert_eq!(
        entries[2]["parentRef"],
        json!({"group": "", "kind": "Service", "name": "web", "sectionName": "grpc"})
    );
}

#[test]
fn a_gateway_parent_gets_no_entry_and_other_controllers_entries_are_kept() {
    let gateway = json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"});
    let theirs = json!({
        "parentRef": gateway,
        "controllerName": "example.com/gateway",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "observedGeneration": 2, "lastTransitionTime": T0}],
    });
    // Only a Gateway parent: nothing of ours to write.
    let status = json!({"parents": [theirs]});
    let only_gateway = snapshot(&route(r#"[{name: gw}]"#, "[]", &status.to_string()));
    assert!(plan(&only_gateway, &time(T0)).is_empty());

    // A Gateway and a Service: the gateway's entry as it was, ours after.
    let both = snapshot(&route(
        &format!("[{{name: gw}}, {WEB}]"),
        "[]",
        &status.to_string(),
    ));
    assert_eq!(
        the_write(&both, T1)["status"]["parents"],
        json!([theirs, ours(web(), vec![accepted(T1), resolved(T1)])])
    );

    // Our stale entry for a parent the route no longer names goes; theirs
    // stays.
    let stale = json!({"parents": [theirs, ours(web(), vec![accepted(T0), resolved(T0)])]});
    let dropped = snapshot(&route(r#"[{name: gw}]"#, "[]", &stale.to_string()));
    assert_eq!(
        the_write(&dropped, T1)["status"]["parents"],
        json!([theirs])
    );
}

#[test]
fn last_transition_time_moves_only_when_the_status_changes() {
    // Written at T0 with a missing backend; at T1 the backend is still
    // missing, for another reason's message (another port), and the
    // route is now partially invalid.
    let before = json!({"parents": [ours(web(), vec![
        accepted(T0),
        cond("ResolvedRefs", "False", "BackendNotFound", "Service demo/absent not found", T0),
    ])]});
    let snap = snapshot(&route(
        &format!("[{WEB}]"),
        r#"[{backendRefs: [{name: web-v2, port: 99}]},
            {filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web}}}]}]"#,
        &before.to_string(),
    ));
    let conditions = the_write(&snap, T1)["status"]["parents"][0]["conditions"].clone();
    assert_eq!(conditions[0], accepted(T0), "Accepted stayed True");
    assert_eq!(
        conditions[1],
        cond(
            "ResolvedRefs",
            "False",
            "BackendNotFound",
            "Service demo/web-v2 has no port 99",
            T0
        ),
        "still False: its time kept, its message new"
    );
    assert_eq!(conditions[2]["type"], "PartiallyInvalid");
    assert_eq!(conditions[2]["lastTransitionTime"], T1, "new");

    // The backend is fixed: ResolvedRefs turns True at T1.
    let snap = snapshot(&route(
        &format!("[{WEB}]"),
        "[{backendRefs: [{name: web-v2, port: 80}]}]",
        &before.to_string(),
    ));
    let conditions = the_write(&snap, T1)["status"]["parents"][0]["conditions"].clone();
    assert_eq!(conditions, json!([accepted(T0), resolved(T1)]));
}

#[test]
fn a_grpc_route_gets_the_same_entries() {
    let snap = snapshot(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc, namespace: demo, generation: 1, resourceVersion: "4"}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: absent, port: 80}]}]
"#,
    );
    let writes = plan(&snap, &time(T0));
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].kind, Kind::GrpcRoute);
    assert_eq!(writes[0].key, Key::new("demo", "rpc"));
    let parent = json!({"group": "", "kind": "Service", "name": "web", "port": 80});
    let c = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "observedGeneration": 1, "lastTransitionTime": T0})
    };
    assert_eq!(
        writes[0].patch(),
        json!({
            "metadata": {"resourceVersion": "4"},
            "status": {"parents": [ours(parent, vec![
                c("Accepted", "True", "Accepted", "accepted by Trellis"),
                c("ResolvedRefs", "False", "BackendNotFound", "Service demo/absent not found"),
            ])]},
        })
    );
}
