use std::time::Duration;

use http::{HeaderValue, Method, Request};

use super::*;
use crate::traffic::retry::RetryPolicy;

fn parts(method: Method, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn get(uri: &str) -> http::request::Parts {
    parts(Method::GET, uri, &[])
}

fn rule<M>(matches: Vec<M>) -> Rule<M> {
    Rule {
        matches,
        backends: Vec::new(),
        timeouts: Timeouts::default(),
        retry: None,
    }
}

fn route<M>(name: &str, rules: Vec<Rule<M>>) -> Route<M> {
    Route {
        name: RouteName::new(name),
        rules,
    }
}

/// A route of one rule with one match.
fn one<M>(name: &str, m: M) -> Route<M> {
    route(name, vec![rule(vec![m])])
}

fn on_path(p: PathMatch) -> HttpMatch {
    HttpMatch {
        path: Some(p),
        ..HttpMatch::default()
    }
}

fn exact(p: &str) -> PathMatch {
    PathMatch::exact(p).unwrap()
}
fn prefix(p: &str) -> PathMatch {
    PathMatch::prefix(p).unwrap()
}
fn regex(p: &str) -> PathMatch {
    PathMatch::regex(p).unwrap()
}
fn header(name: &str, value: &str) -> HeaderMatch {
    HeaderMatch::new(name, ValueMatch::Exact(value.into())).unwrap()
}
fn query(name: &str, value: &str) -> QueryMatch {
    QueryMatch {
        name: name.into(),
        value: ValueMatch::Exact(value.into()),
    }
}

fn http_table(routes: Vec<Route<HttpMatch>>) -> RouteTable {
    RouteTable {
        routes,
        grpc_routes: Vec::new(),
    }
}

/// `(route name, rule index)` chosen for `req`.
fn chosen(table: &RouteTable, req: &http::request::Parts) -> Option<(String, usize)> {
    select(table, &RequestFacts::new(req)).map(|s| (s.route.to_string(), s.rule))
}

fn name(table: &RouteTable, req: &http::request::Parts) -> Option<String> {
    chosen(table, req).map(|(n, _)| n)
}

#[test]
fn path_precedence() {
    let table = http_table(vec![
        one("root", on_path(prefix("/"))),
        one("regex-foo", on_path(regex(r"/foo/\d+"))),
        one("regex-bar", on_path(regex(r"/bar/\d+"))),
        one("prefix-foo", on_path(prefix("/foo"))),
        one("prefix-foo-bar", on_path(prefix("/foo/bar/"))),
        one("exact-foo", on_path(exact("/foo"))),
    ]);
    let cases = [
        ("/foo", "exact-foo"),
        ("/foo?x=1", "exact-foo"),
        ("/foo/", "prefix-foo"),
        ("/foo/bar", "prefix-foo-bar"),
        ("/foo/bar/baz", "prefix-foo-bar"),
        ("/foo/barn", "prefix-foo"),
        // Any real prefix outranks a regex ...
        ("/foo/123", "prefix-foo"),
        // ... but a regex outranks the catch-all `/`.
        ("/bar/7", "regex-bar"),
        ("/bar/x", "root"),
        ("/foobar", "root"),
        ("/", "root"),
    ];
    for (path, want) in cases {
        assert_eq!(name(&table, &get(path)).as_deref(), Some(want), "{path}");
    }
}

#[test]
fn prefix_matches_whole_segments() {
    // (prefix, path, matches)
    let cases = [
        ("/foo", "/foo", true),
        ("/foo", "/foo/", true),
        ("/foo", "/foo/bar", true),
        ("/foo", "/foobar", false),
        ("/foo", "/fo", false),
        ("/foo", "/FOO", false),
        ("/foo/", "/foo", true),
        ("/foo/", "/foo/bar", true),
        ("/foo/", "/foobar", false),
        ("/foo/bar", "/foo", false),
        ("/", "/anything/at/all", true),
        ("/", "/", true),
    ];
    for (p, path, want) in cases {
        let table = http_table(vec![one("r", on_path(prefix(p)))]);
        assert_eq!(name(&table, &get(path)).is_some(), want, "{p} vs {path}");
    }
}

#[test]
fn exact_and_regex_match_the_whole_path() {
    let cases = [
        (exact("/foo"), "/foo", true),
        (exact("/foo"), "/foo/", false),
        (exact("/foo"), "/foo/bar", false),
        (regex(r"/foo/\d+"), "/foo/12", true),
        (regex(r"/foo/\d+"), "/foo/12/x", false),
        (regex(r"/foo/\d+"), "/x/foo/12", false),
        (regex(r"/a|/b"), "/b", true),
        (regex(r"/a|/b"), "/ab", false),
    ];
    for (m, path, want) in cases {
        let table = http_table(vec![one("r", on_path(m.clone()))]);
        assert_eq!(name(&table, &get(path)).is_some(), want, "{m:?} vs {path}");
    }
}

#[test]
fn after_path_method_then_headers_then_query() {
    let m = |method: Option<Method>, headers: Vec<HeaderMatch>, query: Vec<QueryMatch>| HttpMatch {
        path: Some(prefix("/api")),
        method,
        headers,
        query,
    };
    let table = http_table(vec![
        one("plain", m(None, vec![], vec![])),
        one(
            "query3",
            m(
                None,
                vec![],
                vec![query("a", "1"), query("b", "2"), query("c", "3")],
            ),
        ),
        one("header1", m(None, vec![header("x-a", "1")], vec![])),
        one(
            "header2",
            m(None, vec![header("x-a", "1"), header("x-b", "2")], vec![]),
        ),
        one("get", m(Some(Method::GET), vec![], vec![])),
        // A longer prefix outranks everything else.
        one("longer", on_path(prefix("/api/v2"))),
    ]);
    let both = [("x-a", "1"), ("x-b", "2")];
    let cases = [
        (parts(Method::GET, "/api?a=1&b=2&c=3", &both), "get"),
        (parts(Method::POST, "/api?a=1&b=2&c=3", &both), "header2"),
        (
            parts(Method::POST, "/api?a=1&b=2&c=3", &both[..1]),
            "header1",
        ),
        (parts(Method::POST, "/api?a=1&b=2&c=3", &[]), "query3"),
        (parts(Method::POST, "/api?a=1&b=2", &[]), "plain"),
        (parts(Method::GET, "/api/v2/x", &both), "longer"),
        (parts(Method::HEAD, "/api", &[]), "plain"),
    ];
    for (req, want) in cases {
        assert_eq!(name(&table, &req).as_deref(), Some(want), "{req:?}");
    }
}

#[test]
fn ties_go_to_the_first_route_then_the_first_rule() {
    let same = || on_path(prefix("/a"));
    let table = http_table(vec![
        route(
            "older",
            vec![
                rule(vec![on_path(exact("/x"))]),
                rule(vec![same()]),
                rule(vec![same()]),
            ],
        ),
        one("newer", same()),
    ]);
    assert_eq!(chosen(&table, &get("/a/b")), Some(("older".into(), 1)));
    let table = http_table(vec![one("newer", same()), one("older", same())]);
    assert_eq!(name(&table, &get("/a")).as_deref(), Some("newer"));
}

#[test]
fn a_rule_ranks_by_its_best_match() {
    let table = http_table(vec![
        one("prefix-x", on_path(prefix("/x"))),
        route(
            "either",
            vec![rule(vec![on_path(prefix("/a")), on_path(exact("/x"))])],
        ),
    ]);
    assert_eq!(name(&table, &get("/x")).as_deref(), Some("either"));
    assert_eq!(name(&table, &get("/x/y")).as_deref(), Some("prefix-x"));
    assert_eq!(name(&table, &get("/a")).as_deref(), Some("either"));
}

#[test]
fn rules_without_matches_catch_everything_at_the_lowest_rank() {
    let table = http_table(vec![
        route("catch-all", vec![rule(Vec::new())]),
        one("api", on_path(prefix("/api"))),
    ]);
    assert_eq!(name(&table, &get("/api/x")).as_deref(), Some("api"));
    assert_eq!(name(&table, &get("/other")).as_deref(), Some("catch-all"));
    let req = parts(Method::DELETE, "/", &[("x", "y")]);
    assert_eq!(name(&table, &req).as_deref(), Some("catch-all"));
}

#[test]
fn no_match_is_none() {
    let table = http_table(vec![one("foo", on_path(exact("/foo")))]);
    assert_eq!(chosen(&table, &get("/bar")), None);
    assert_eq!(chosen(&RouteTable::default(), &get("/")), None);
    // A route without rules matches nothing.
    let table = http_table(vec![route::<HttpMatch>("empty", Vec::new())]);
    assert_eq!(chosen(&table, &get("/")), None);
}

/// (match, request headers, matches)
type HeaderCase = (HeaderMatch, Vec<(&'static str, &'static str)>, bool);

#[test]
fn header_matching() {
    let on = |h: HeaderMatch| HttpMatch {
        headers: vec![h],
        ..HttpMatch::default()
    };
    let re = |n: &str, p: &str| HeaderMatch::new(n, ValueMatch::regex(p).unwrap()).unwrap();
    let cases: Vec<HeaderCase> = vec![
        (header("X-Canary", "true"), vec![("x-canary", "true")], true),
        (header("x-canary", "true"), vec![("X-CANARY", "true")], true),
        (
            header("x-canary", "true"),
            vec![("x-canary", "TRUE")],
            false,
        ),
        (header("x-canary", "true"), vec![], false),
        (
            header("x-canary", "true"),
            vec![("x-canary", "false"), ("x-canary", "true")],
            true,
        ),
        (
            header("x-canary", "true"),
            vec![("x-canary", "true, false")],
            false,
        ),
        (
            re("x-user", "[a-z]+-[0-9]+"),
            vec![("x-user", "bob-42")],
            true,
        ),
        (
            re("x-user", "[a-z]+-[0-9]+"),
            vec![("x-user", "bob-42x")],
            false,
        ),
        (re("x-user", "bob"), vec![("x-user", "xbobx")], false),
    ];
    for (m, headers, want) in cases {
        let table = http_table(vec![one("r", on(m.clone()))]);
        let req = parts(Method::GET, "/", &headers);
        assert_eq!(name(&table, &req).is_some(), want, "{m:?} vs {headers:?}");
    }
    // A value that is not UTF-8 matches exact bytes, never an expression.
    let mut req = get("/");
    req.headers
        .insert("x-bin", HeaderValue::from_bytes(b"\xffab").unwrap());
    let table = http_table(vec![one("r", on(re("x-bin", ".*")))]);
    assert_eq!(name(&table, &req), None);
}

#[test]
fn query_matching() {
    let on = |q: QueryMatch| HttpMatch {
        query: vec![q],
        ..HttpMatch::default()
    };
    let re = |n: &str, p: &str| QueryMatch {
        name: n.into(),
        value: ValueMatch::regex(p).unwrap(),
    };
    // (match, request URI, matches)
    let cases = [
        (query("v", "2"), "/?v=2", true),
        (query("v", "2"), "/?a=1&v=2&b", true),
        (query("v", "2"), "/?v=3", false),
        (query("v", "2"), "/?V=2", false),
        (query("v", "2"), "/", false),
        // The first occurrence counts.
        (query("v", "2"), "/?v=1&v=2", false),
        (query("flag", ""), "/?flag", true),
        (query("flag", ""), "/?flag=", true),
        (query("q", "a b"), "/?q=a%20b", true),
        (query("a b", "c"), "/?a%20b=c", true),
        // A bad escape is compared as sent.
        (query("q", "%zz"), "/?q=%zz", true),
        (re("id", "[0-9]{3}"), "/?id=123", true),
        (re("id", "[0-9]{3}"), "/?id=1234", false),
    ];
    for (m, uri, want) in cases {
        let table = http_table(vec![one("r", on(m.clone()))]);
        assert_eq!(name(&table, &get(uri)).is_some(), want, "{m:?} vs {uri}");
    }
}

#[test]
fn selected_carries_the_rules_plan() {
    let retry = RetryPolicy::default();
    let backends = vec![WeightedBackend {
        backend: BackendRef::new("web-v2.demo.svc.cluster.local:80"),
        weight: 10,
    }];
    let timeouts = Timeouts {
        request: Some(Duration::from_secs(3)),
        backend_request: Some(Duration::from_secs(1)),
    };
    let table = http_table(vec![route(
        "web",
        vec![
            rule(vec![on_path(exact("/other"))]),
            Rule {
                matches: vec![on_path(prefix("/"))],
                backends: backends.clone(),
                timeouts,
                retry: Some(retry.clone()),
            },
        ],
    )]);
    let req = get("/x");
    let s = select(&table, &RequestFacts::new(&req)).unwrap();
    assert_eq!(s.route.as_str(), "web");
    assert_eq!(s.kind, RouteKind::Http);
    assert_eq!(s.rule, 1);
    assert_eq!(s.backends, &backends[..]);
    assert_eq!(s.timeouts, timeouts);
    assert_eq!(s.retry, Some(&retry));
}

fn grpc(path: &str) -> http::request::Parts {
    parts(Method::POST, path, &[("content-type", "application/grpc")])
}

fn grpc_exact(service: Option<&str>, method: Option<&str>) -> GrpcMatch {
    GrpcMatch {
        method: Some(GrpcMethodMatch::Exact {
            service: service.map(Into::into),
            method: method.map(Into::into),
        }),
        headers: Vec::new(),
    }
}

fn grpc_regex(service: Option<&str>, method: Option<&str>) -> GrpcMatch {
    GrpcMatch {
        method: Some(GrpcMethodMatch::RegularExpression {
            service: service.map(|s| Pattern::new(s).unwrap()),
            method: method.map(|s| Pattern::new(s).unwrap()),
        }),
        headers: Vec::new(),
    }
}

#[test]
fn grpc_precedence() {
    let table = RouteTable {
        routes: vec![one("http", on_path(prefix("/")))],
        grpc_routes: vec![
            route("any", vec![rule(Vec::new())]),
            one("regex-service", grpc_regex(Some(r"pkg\..*"), None)),
            one("regex-both", grpc_regex(Some(r"pkg\..*"), Some("Get.*"))),
            one("service", grpc_exact(Some("pkg.Svc"), None)),
            one("short-service", grpc_exact(Some("pkg.S"), None)),
            one("method", grpc_exact(Some("pkg.Svc"), Some("Get"))),
            one("method-only", grpc_exact(None, Some("Watch"))),
            one(
                "method-header",
                GrpcMatch {
                    headers: vec![header("x-tenant", "a")],
                    ..grpc_exact(Some("pkg.Svc"), Some("Get"))
                },
            ),
        ],
    };
    let tenant = parts(
        Method::POST,
        "/pkg.Svc/Get",
        &[
            ("content-type", "application/grpc+proto"),
            ("x-tenant", "a"),
        ],
    );
    let cases = [
        (grpc("/pkg.Svc/Get"), "method"),
        (tenant, "method-header"),
        (grpc("/pkg.Svc/List"), "service"),
        (grpc("/pkg.S/List"), "short-service"),
        (grpc("/pkg.Other/GetAll"), "regex-both"),
        (grpc("/pkg.Other/List"), "regex-service"),
        (grpc("/other.Svc/Watch"), "method-only"),
        (grpc("/other.Svc/List"), "any"),
        // Not gRPC: the HTTP routes.
        (get("/pkg.Svc/Get"), "http"),
        (
            parts(
                Method::POST,
                "/pkg.Svc/Get",
                &[("content-type", "application/grpcx")],
            ),
            "http",
        ),
        // Not a gRPC path: the HTTP routes.
        (grpc("/pkg.Svc/Get/extra"), "http"),
        (grpc("/pkg.Svc"), "http"),
    ];
    for (req, want) in cases {
        let s = select(&table, &RequestFacts::new(&req));
        assert_eq!(
            s.map(|s| s.route.to_string()).as_deref(),
            Some(want),
            "{req:?}"
        );
    }
}

#[test]
fn grpc_without_grpc_routes_uses_http_routes_and_no_merging() {
    let table = http_table(vec![one("svc", on_path(prefix("/pkg.Svc")))]);
    let s = select(&table, &RequestFacts::new(&grpc("/pkg.Svc/Get"))).unwrap();
    assert_eq!((s.route.as_str(), s.kind), ("svc", RouteKind::Http));

    // With gRPC routes, a gRPC call no gRPC route matches is not matched
    // against the HTTP routes.
    let table = RouteTable {
        routes: vec![one("svc", on_path(prefix("/pkg.Svc")))],
        grpc_routes: vec![one("other", grpc_exact(Some("pkg.Other"), None))],
    };
    assert_eq!(chosen(&table, &grpc("/pkg.Svc/Get")), None);
    let s = select(&table, &RequestFacts::new(&grpc("/pkg.Other/Get"))).unwrap();
    assert_eq!((s.route.as_str(), s.kind), ("other", RouteKind::Grpc));
}

#[test]
fn request_facts_grpc() {
    let cases = [
        ("application/grpc", "/a.B/C", Some(("a.B", "C"))),
        ("application/grpc+proto", "/a.B/C", Some(("a.B", "C"))),
        (
            "application/grpc;charset=utf-8",
            "/a.B/C",
            Some(("a.B", "C")),
        ),
        ("application/grpc-web", "/a.B/C", None),
        ("application/json", "/a.B/C", None),
        ("application/grpc", "/a.B/", None),
        ("application/grpc", "//C", None),
        ("application/grpc", "/a.B/C/D", None),
    ];
    for (ct, path, want) in cases {
        let req = parts(Method::POST, path, &[("content-type", ct)]);
        assert_eq!(RequestFacts::new(&req).grpc(), want, "{ct} {path}");
    }
    let req = Request::post("/a.B/C").body(()).unwrap();
    assert_eq!(RequestFacts::of(&req).grpc(), None);
}

#[test]
fn invalid_configuration_is_refused_when_the_table_is_built() {
    assert_eq!(PathMatch::exact("foo"), Err(RouteError::Path("foo".into())));
    assert_eq!(PathMatch::prefix(""), Err(RouteError::Path("".into())));
    assert!(matches!(
        PathMatch::regex("/a("),
        Err(RouteError::Regex { .. })
    ));
    assert!(matches!(
        ValueMatch::regex("[z-a]"),
        Err(RouteError::Regex { .. })
    ));
    assert_eq!(
        HeaderMatch::new("bad header", ValueMatch::Exact("x".into())),
        Err(RouteError::HeaderName("bad header".into()))
    );
    // A huge expression is refused rather than compiled.
    assert!(Pattern::new(&"a{1000}".repeat(100)).is_err());
    let p = Pattern::new("x+").unwrap();
    assert_eq!(p.as_str(), "x+");
    assert_eq!(format!("{p:?}"), "Pattern(\"x+\")");
}
