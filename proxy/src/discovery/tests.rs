// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn target() -> OrigDstAddr {
    OrigDstAddr::from("10.96.0.10:80".parse::<SocketAddr>().unwrap())
}

fn endpoint(addr: &str, identity: &str) -> pb::Endpoint {
    pb::Endpoint {
        addr: addr.into(),
        weight: 0,
        identity: identity.into(),
        namespace: "demo".into(),
        workload: "web".into(),
        pod: "web-0".into(),
        protocol: 0,
    }
}

fn service(endpoints: Vec<pb::Endpoint>) -> pb::Resolution {
    pb::Resolution {
        kind: pb::resolution::Kind::Service as i32,
        authority: "web.demo.svc.cluster.local:80".into(),
        protocol: pb::ProtocolHint::Http1 as i32,
        http_routes: vec![],
        grpc_routes: vec![],
        backends: vec![pb::Backend {
            authority: "web.demo.svc.cluster.local:80".into(),
            endpoints,
        }],
    }
}

#[test]
fn a_service_resolution_converts_with_identities_and_weights() {
    let r = resolved(
        target(),
        service(vec![
            endpoint("10.0.0.2:8080", "spiffe://cluster.local/ns/demo/sa/web"),
            endpoint("[fd77::3]:8080", ""),
        ]),
    )
    .unwrap();
    assert_eq!(r.kind, Kind::Service);
    assert_eq!(r.authority, "web.demo.svc.cluster.local:80");
    let eps = &r.backends[0].endpoints;
    assert_eq!(eps.len(), 2);
    assert_eq!(eps[0].weight, 1, "weight 0 reads as 1");
    assert_eq!(
        eps[0].identity.as_ref().map(ToString::to_string).as_deref(),
        Some("spiffe://cluster.local/ns/demo/sa/web")
    );
    assert_eq!(eps[1].addr, "[fd77::3]:8080".parse().unwrap());
    assert!(eps[1].identity.is_none(), "no identity: not meshed");
}

#[test]
fn malformed_resolutions_are_refused_with_the_field_named() {
    let cases: Vec<(pb::Resolution, &str)> = vec![
        (
            service(vec![endpoint("10.0.0.2", "")]),
            "backends[0].endpoints[0]: address",
        ),
        (
            service(vec![endpoint("10.0.0.2:80", "https://x/ns/a/sa/b")]),
            "backends[0].endpoints[0]: identity",
        ),
        (
            pb::Resolution {
                kind: pb::resolution::Kind::Endpoint as i32,
                ..service(vec![
                    endpoint("10.0.0.2:80", ""),
                    endpoint("10.0.0.3:80", ""),
                ])
            },
            "exactly one endpoint",
        ),
        (
            pb::Resolution {
                authority: String::new(),
                ..service(vec![])
            },
            "no authority",
        ),
        (
            pb::Resolution {
                kind: 42,
                ..service(vec![])
            },
            "unknown resolution kind",
        ),
    ];
    for (r, want) in cases {
        let err = resolved(target(), r).unwrap_err();
        assert!(err.contains(want), "{err:?} should say {want:?}");
    }
}

#[test]
fn unknown_means_forward_as_is() {
    let r = resolved(
        target(),
        pb::Resolution {
            kind: pb::resolution::Kind::Unknown as i32,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r, Resolved::unknown(target()));
    assert!(r.backends.is_empty());
}

#[test]
fn inbound_policies_convert_and_bad_values_are_refused() {
    let p = inbound_policy(pb::InboundPolicy {
        default_policy: "all-authenticated".into(),
        port_policies: [(9090, "deny".to_string())].into(),
        probes: vec![pb::Probe {
            port: 8080,
            path: "/healthz".into(),
        }],
        authorizations: vec![pb::Authorization {
            name: "web-from-client".into(),
            ports: vec!["8080".into(), "9000-9010".into()],
            identities: vec!["spiffe://cluster.local/ns/demo/sa/client".into()],
            namespaces: vec![],
            methods: vec!["GET".into()],
            path_prefixes: vec!["/api".into()],
        }],
    })
    .unwrap();
    assert_eq!(p.default_policy, DefaultPolicy::AllAuthenticated);
    assert_eq!(p.ports[&9090], DefaultPolicy::Deny);
    assert_eq!(p.probes[0].port, 8080);
    assert_eq!(p.authorizations[0].ports.len(), 2);

    let bad = [
        pb::InboundPolicy {
            default_policy: "allow-all".into(),
            ..Default::default()
        },
        pb::InboundPolicy {
            default_policy: "deny".into(),
            port_policies: [(70000, "deny".to_string())].into(),
            ..Default::default()
        },
        pb::InboundPolicy {
            default_policy: "deny".into(),
            authorizations: vec![pb::Authorization {
                name: "x".into(),
                ports: vec!["http".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    ];
    for p in bad {
        assert!(inbound_policy(p.clone()).is_err(), "{p:?} accepted");
    }
}

/// The waits of a stream that keeps failing, its jitter drawn from `seed`.
fn reconnect_schedule(seed: u64) -> Vec<Duration> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut backoff = Backoff::with_random(RECONNECT, move || rng.random::<f64>());
    (0..8).map(|_| backoff.next_wait()).collect()
}

#[test]
fn reconnects_are_jittered_so_proxies_do_not_come_back_in_step() {
    // What every proxy waited before the shared backoff: the ceilings,
    // the same everywhere, so a restarted controller met them all at once.
    let ceilings: Vec<Duration> = (0..8).map(|n| RECONNECT.ceiling(n)).collect();
    let ms = Duration::from_millis;
    assert_eq!(
        ceilings,
        [
            ms(250),
            ms(500),
            ms(1000),
            ms(2000),
            ms(4000),
            ms(8000),
            ms(10_000),
            ms(10_000)
        ]
    );
    // Two proxies, two draws: different schedules, each under the ceilings.
    let (a, b) = (reconnect_schedule(1), reconnect_schedule(2));
    assert_ne!(a, b);
    for schedule in [&a, &b] {
        assert_ne!(*schedule, ceilings);
        for (wait, ceiling) in schedule.iter().zip(&ceilings) {
            assert!(wait <= ceiling, "{schedule:?}");
        }
    }
    // A hundred proxies lose the controller together: their first
    // reconnects spread over the whole first window, not one instant.
    let mut first: Vec<Duration> = (0..100).map(|seed| reconnect_schedule(seed)[0]).collect();
    first.sort();
    first.dedup();
    assert_eq!(first.len(), 100);
    assert!(first[0] < ms(25) && first[99] > ms(225), "{first:?}");
    // The loops draw from the thread's generator: different there too.
    let mut live = [Backoff::new(RECONNECT), Backoff::new(RECONNECT)];
    let [x, y] = live
        .each_mut()
        .map(|b| (0..8).map(|_| b.next_wait()).collect::<Vec<_>>());
    assert_ne!(x, y);
}
