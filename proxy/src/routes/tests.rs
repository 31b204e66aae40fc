// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::traffic::route::{select, RequestFacts};

fn prefix(p: &str) -> Option<pb::PathMatch> {
    Some(pb::PathMatch {
        kind: Some(pb::path_match::Kind::Prefix(p.into())),
    })
}

fn http_route(name: &str, rules: Vec<pb::HttpRule>) -> pb::HttpRoute {
    pb::HttpRoute {
        name: name.into(),
        namespace: "demo".into(),
        rules,
    }
}

fn rule(path: Option<pb::PathMatch>, method: &str) -> pb::HttpRule {
    pb::HttpRule {
        matches: vec![pb::HttpMatch {
            path,
            method: method.into(),
            headers: vec![],
            query: vec![],
        }],
        backends: vec![],
        timeouts: None,
        retry: None,
    }
}

#[test]
fn routes_convert_and_select_as_the_gateway_api_says() {
    let routes = vec![
        http_route("api", vec![rule(prefix("/api"), "")]),
        http_route("api-writes", vec![rule(prefix("/api"), "POST")]),
    ];
    let (table, dropped) = route_table(&routes, &[]);
    assert!(dropped.is_empty(), "{dropped:?}");
    let pick = |method: &str, path: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        select(&table, &RequestFacts::of(&req)).map(|s| s.route.as_str().to_string())
    };
    assert_eq!(pick("GET", "/api/x").as_deref(), Some("api"));
    // Same path, and a method match: more specific, wins.
    assert_eq!(pick("POST", "/api/x").as_deref(), Some("api-writes"));
    assert_eq!(pick("GET", "/apix"), None, "prefixes match whole segments");
    assert_eq!(pick("GET", "/"), None);
}

#[test]
fn a_bad_rule_is_dropped_and_named_the_rest_stays() {
    let bad_regex = pb::PathMatch {
        kind: Some(pb::path_match::Kind::Regex("(".into())),
    };
    let routes = vec![http_route(
        "mixed",
        vec![
            rule(Some(bad_regex), ""),
            rule(prefix("relative"), ""),
            rule(prefix("/ok"), "NOT A METHOD"),
            rule(prefix("/ok"), "GET"),
        ],
    )];
    let (table, dropped) = route_table(&routes, &[]);
    assert_eq!(table.routes[0].rules.len(), 1);
    assert_eq!(dropped.len(), 3, "{dropped:?}");
    assert!(dropped[0].starts_with("demo/mixed rule 0: invalid regular expression"));
    assert!(dropped[1].contains("does not start with '/'"));
    assert!(dropped[2].contains("invalid method"));
}

#[test]
fn retry_timeouts_and_backends_carry_over_with_defaults_filled() {
    let r = pb::HttpRule {
        matches: vec![],
        backends: vec![
            pb::WeightedBackend {
                authority: "web-v1.demo.svc.cluster.local:80".into(),
                weight: 90,
            },
            pb::WeightedBackend {
                authority: "web-v2.demo.svc.cluster.local:80".into(),
                weight: 10,
            },
        ],
        timeouts: Some(pb::Timeouts {
            request_ms: 2000,
            backend_request_ms: 0,
        }),
        retry: Some(pb::RetryPolicy {
            limit: 3,
            http_statuses: vec![429],
            http_status_ranges: vec![pb::StatusRange { from: 500, to: 599 }],
            grpc_codes: vec![14],
            per_try_timeout_ms: 300,
            backoff_base_ms: 0,
            backoff_max_ms: 0,
            budget: Some(pb::RetryBudget {
                ratio: 5000.0, // out of range: the default budget instead
                min_per_second: 1,
                ttl_ms: 1000,
            }),
            non_idempotent: false,
        }),
    };
    let (table, _) = route_table(&[http_route("split", vec![r])], &[]);
    let rule = &table.routes[0].rules[0];
    assert_eq!(rule.backends[0].weight, 90);
    assert_eq!(
        rule.backends[1].backend.as_str(),
        "web-v2.demo.svc.cluster.local:80"
    );
    assert_eq!(rule.timeouts.request, Some(Duration::from_secs(2)));
    assert_eq!(rule.timeouts.backend_request, None);
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(retry.limit, 3);
    assert_eq!(
        retry.http_statuses,
        [StatusRange::single(429), StatusRange::class(5)]
    );
    assert_eq!(retry.grpc_codes, [14]);
    assert_eq!(retry.per_try_timeout, Some(Duration::from_millis(300)));
    assert_eq!(retry.backoff, crate::traffic::retry::DEFAULT_BACKOFF);
    assert_eq!(retry.budget, RetryBudget::default());
}

#[test]
fn grpc_routes_match_service_and_method() {
    let g = pb::GrpcRoute {
        name: "echo-unary".into(),
        namespace: "demo".into(),
        rules: vec![pb::GrpcRule {
            matches: vec![pb::GrpcMatch {
                service: "echo.Echo".into(),
                method: "Unary".into(),
                regex: false,
                headers: vec![],
            }],
            backends: vec![],
            timeouts: None,
            retry: None,
        }],
    };
    let (table, dropped) = route_table(&[], &[g]);
    assert!(dropped.is_empty());
    let req = |path: &str| {
        http::Request::post(path)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    };
    let hit = req("/echo.Echo/Unary");
    assert_eq!(
        select(&table, &RequestFacts::of(&hit))
            .unwrap()
            .route
            .as_str(),
        "echo-unary"
    );
    let miss = req("/echo.Echo/Stream");
    assert!(select(&table, &RequestFacts::of(&miss)).is_none());
}
