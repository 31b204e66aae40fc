// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_api::discovery::v1 as pb;

use super::*;
use crate::discovery::{BackendSet, Kind};

fn ep(port: u16) -> EndpointInfo {
    EndpointInfo {
        addr: SocketAddr::from(([10, 0, 0, 1], port)),
        weight: 1,
        identity: None,
        workload: "web".into(),
        namespace: "demo".into(),
    }
}

fn resolved(backends: Vec<(&str, Vec<EndpointInfo>)>, routes: Vec<pb::HttpRoute>) -> Arc<Resolved> {
    Arc::new(Resolved {
        kind: Kind::Service,
        authority: "web.demo.svc.cluster.local:80".into(),
        protocol: pb::ProtocolHint::Http1,
        backends: backends
            .into_iter()
            .map(|(a, endpoints)| BackendSet {
                authority: a.into(),
                endpoints,
            })
            .collect(),
        http_routes: routes,
        grpc_routes: vec![],
    })
}

fn split_route(weights: &[(&str, u32)]) -> pb::HttpRoute {
    pb::HttpRoute {
        name: "split".into(),
        namespace: "demo".into(),
        rules: vec![pb::HttpRule {
            matches: vec![],
            backends: weights
                .iter()
                .map(|(a, w)| pb::WeightedBackend {
                    authority: (*a).into(),
                    weight: *w,
                })
                .collect(),
            timeouts: Some(pb::Timeouts {
                request_ms: 1500,
                backend_request_ms: 0,
            }),
            retry: Some(pb::RetryPolicy {
                limit: 2,
                ..Default::default()
            }),
        }],
    }
}

fn state(first: Arc<Resolved>) -> (ServiceState, watch::Sender<Option<Arc<Resolved>>>) {
    let (tx, rx) = watch::channel(Some(first.clone()));
    let mut rx = rx;
    rx.borrow_and_update();
    (
        ServiceState::new(rx, first, Label::new("default"), BalancerConfig::default()),
        tx,
    )
}

fn get() -> http::Request<()> {
    http::Request::get("/").body(()).unwrap()
}

#[test]
fn without_routes_everything_goes_to_the_service_on_the_default_route() {
    let (s, _tx) = state(resolved(vec![("web", vec![ep(1), ep(2)])], vec![]));
    let req = get();
    let plan = s.plan(&RequestFacts::of(&req));
    assert_eq!(plan.route.as_str(), "default");
    assert_eq!(plan.service.as_str(), "web.demo.svc.cluster.local:80");
    assert_eq!(plan.backend, Ok(0));
    assert!(plan.retry.is_none() && plan.budget.is_none());
    let picked = s.pick(0).unwrap();
    assert!([1, 2].contains(&picked.addr.port()));
}

#[test]
fn a_split_sends_about_its_weights_and_deposits_into_the_route_budget() {
    let (s, _tx) = state(resolved(
        vec![
            ("web", vec![ep(1)]),
            ("v1", vec![ep(2)]),
            ("v2", vec![ep(3)]),
        ],
        vec![split_route(&[("v1", 90), ("v2", 10)])],
    ));
    let req = get();
    let mut to_v1 = 0;
    for _ in 0..10_000 {
        let plan = s.plan(&RequestFacts::of(&req));
        assert_eq!(plan.route.as_str(), "split");
        assert_eq!(plan.timeouts.request, Some(Duration::from_millis(1500)));
        match plan.backend {
            Ok(1) => to_v1 += 1,
            Ok(2) => {}
            other => panic!("unexpected backend {other:?}"),
        }
    }
    assert!((8_800..=9_200).contains(&to_v1), "{to_v1} of 10000 to v1");
    let plan = s.plan(&RequestFacts::of(&req));
    let budget = plan.budget.unwrap();
    // 10,001 deposits at ratio 0.2, plus the per-second minimum.
    assert!(budget.available(std::time::Instant::now()) >= 2_000);
}

#[test]
fn unknown_or_zero_weight_backends_have_no_backend() {
    let (s, _tx) = state(resolved(
        vec![("web", vec![ep(1)])],
        vec![split_route(&[("not-resolved", 1)])],
    ));
    let req = get();
    assert_eq!(
        s.plan(&RequestFacts::of(&req)).backend,
        Err(PlanError::NoBackend)
    );
    let (s, _tx) = state(resolved(
        vec![("web", vec![ep(1)]), ("v1", vec![ep(2)])],
        vec![split_route(&[("v1", 0)])],
    ));
    assert_eq!(
        s.plan(&RequestFacts::of(&req)).backend,
        Err(PlanError::NoBackend)
    );
}

#[test]
fn a_new_snapshot_is_taken_at_the_next_request_and_failures_eject() {
    let (s, tx) = state(resolved(vec![("web", vec![ep(1), ep(2)])], vec![]));
    // Seven consecutive failures of port 1 eject it; port 2 stays.
    let mut ejected = false;
    for _ in 0..7 {
        ejected = s.finish(0, ep(1).addr, Duration::from_millis(1), false);
    }
    assert!(ejected, "the seventh failure ejects");
    for _ in 0..50 {
        let e = s.pick(0).unwrap();
        assert_eq!(e.addr.port(), 2, "an ejected endpoint is not picked");
        s.finish(0, e.addr, Duration::from_millis(1), true);
    }
    // Scale to one new endpoint: only it is picked from now on.
    tx.send_replace(Some(resolved(vec![("web", vec![ep(3)])], vec![])));
    assert_eq!(s.pick(0).unwrap().addr.port(), 3);
    // No endpoints at all: nothing to pick.
    tx.send_replace(Some(resolved(vec![("web", vec![])], vec![])));
    assert!(s.pick(0).is_none());
}
