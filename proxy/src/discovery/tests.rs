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
