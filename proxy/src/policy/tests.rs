use super::*;

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn policy(default: DefaultPolicy) -> Policy {
    Policy {
        default_policy: default,
        ..Policy::default()
    }
}

#[test]
fn defaults_table() {
    use Decision::{Allow, AuditAllow};
    use DefaultPolicy::{AllAuthenticated, AllUnauthenticated, Audit};
    let meshed = id("spiffe://cluster.local/ns/demo/sa/client");
    // (default, peer meshed?, expected) for an opaque connection to 8080.
    let cases = [
        (AllUnauthenticated, false, Allow("all_unauthenticated")),
        (AllUnauthenticated, true, Allow("all_unauthenticated")),
        (AllAuthenticated, false, Decision::Deny("unauthenticated")),
        (AllAuthenticated, true, Allow("authenticated")),
        (DefaultPolicy::Deny, false, Decision::Deny("default_deny")),
        (DefaultPolicy::Deny, true, Decision::Deny("default_deny")),
        (Audit, false, AuditAllow("unauthenticated")),
        (Audit, true, Allow("authenticated")),
    ];
    for (default, is_meshed, want) in cases {
        let p = policy(default);
        let conn = ConnFacts {
            port: 8080,
            peer: is_meshed.then_some(&meshed),
            probe_source: false,
        };
        assert_eq!(
            p.authorize_connection(conn),
            want,
            "{default} meshed={is_meshed}"
        );
        let req = RequestFacts {
            method: "GET",
            path: "/",
        };
        assert_eq!(
            p.authorize_request(conn, req),
            want,
            "{default} meshed={is_meshed} (HTTP)"
        );
        assert_eq!(want.is_allowed(), !matches!(want, Decision::Deny(_)));
    }
}

#[test]
fn port_overrides_win() {
    let mut p = policy(DefaultPolicy::AllAuthenticated);
    p.ports.insert(9090, DefaultPolicy::AllUnauthenticated);
    let plain = |port| ConnFacts {
        port,
        peer: None,
        probe_source: false,
    };
    assert_eq!(
        p.authorize_connection(plain(9090)),
        Decision::Allow("all_unauthenticated")
    );
    assert_eq!(
        p.authorize_connection(plain(8080)),
        Decision::Deny("unauthenticated")
    );
}

fn only_client_may_get_api() -> Policy {
    let mut p = policy(DefaultPolicy::AllAuthenticated);
    p.authorizations.push(Authorization {
        name: "client-reads-api".into(),
        ports: vec!["8080".parse().unwrap()],
        identities: vec!["spiffe://cluster.local/ns/demo/sa/client".into()],
        namespaces: vec![],
        methods: vec!["GET".into()],
        path_prefixes: vec!["/api".into()],
    });
    p
}

#[test]
fn authorizations_table() {
    use Decision::*;
    let p = only_client_may_get_api();
    let client = id("spiffe://cluster.local/ns/demo/sa/client");
    let other = id("spiffe://cluster.local/ns/demo/sa/other");
    let cases: &[(Option<&SpiffeId>, u16, &str, &str, Decision)] = &[
        (
            Some(&client),
            8080,
            "GET",
            "/api/items",
            Allow("authorized"),
        ),
        (Some(&client), 8080, "GET", "/api", Allow("authorized")),
        (Some(&client), 8080, "GET", "/api?x=1", Allow("authorized")),
        (
            Some(&client),
            8080,
            "get",
            "/api/items",
            Allow("authorized"),
        ),
        (
            Some(&client),
            8080,
            "POST",
            "/api/items",
            Deny("unauthorized"),
        ),
        (Some(&client), 8080, "GET", "/apix", Deny("unauthorized")),
        (Some(&client), 8080, "GET", "/", Deny("unauthorized")),
        (
            Some(&other),
            8080,
            "GET",
            "/api/items",
            Deny("unauthorized"),
        ),
        (None, 8080, "GET", "/api/items", Deny("unauthorized")),
        // Another port: the authorization does not select it; default applies.
        (Some(&other), 9090, "POST", "/", Allow("authenticated")),
        (None, 9090, "GET", "/", Deny("unauthenticated")),
    ];
    for (peer, port, method, path, want) in cases {
        let got = p.authorize_request(
            ConnFacts {
                port: *port,
                peer: *peer,
                probe_source: false,
            },
            RequestFacts { method, path },
        );
        assert_eq!(got, *want, "{peer:?} {port} {method} {path}");
    }
    // HTTP-constrained authorizations never admit opaque TCP.
    assert_eq!(
        p.authorize_connection(ConnFacts {
            port: 8080,
            peer: Some(&client),
            probe_source: false,
        }),
        Deny("unauthorized")
    );
}

#[test]
fn namespace_authorizations_and_audit() {
    let mut p = policy(DefaultPolicy::Audit);
    p.authorizations.push(Authorization {
        name: "same-namespace".into(),
        ports: vec![],
        identities: vec![],
        namespaces: vec!["demo".into()],
        methods: vec![],
        path_prefixes: vec![],
    });
    let same = id("spiffe://cluster.local/ns/demo/sa/a");
    let elsewhere = id("spiffe://cluster.local/ns/prod/sa/a");
    assert_eq!(
        p.authorize_connection(ConnFacts {
            port: 1,
            peer: Some(&same),
            probe_source: false,
        }),
        Decision::Allow("authorized")
    );
    assert_eq!(
        p.authorize_connection(ConnFacts {
            port: 1,
            peer: Some(&elsewhere),
            probe_source: false,
        }),
        Decision::AuditAllow("unauthorized")
    );
}

#[test]
fn probes_from_the_node_pass_every_policy() {
    let meshed = id("spiffe://cluster.local/ns/demo/sa/client");
    for default in [
        DefaultPolicy::AllUnauthenticated,
        DefaultPolicy::AllAuthenticated,
        DefaultPolicy::Deny,
        DefaultPolicy::Audit,
    ] {
        let mut p = only_client_may_get_api();
        p.default_policy = default;
        p.probes.push(Probe {
            port: 8080,
            path: "/healthz".into(),
        });
        p.probes.push(Probe {
            port: 9000,
            path: GRPC_HEALTH_CHECK.into(),
        });
        let node = |port| ConnFacts {
            port,
            peer: None,
            probe_source: true,
        };
        let get = |path| RequestFacts {
            method: "GET",
            path,
        };
        assert_eq!(
            p.authorize_request(node(8080), get("/healthz")),
            Decision::Allow("probe"),
            "{default}"
        );
        assert_eq!(
            p.authorize_request(node(8080), get("/healthz?verbose=1")),
            Decision::Allow("probe"),
            "{default}"
        );
        // A gRPC probe is a POST of the health check on its port.
        let grpc = RequestFacts {
            method: "POST",
            path: GRPC_HEALTH_CHECK,
        };
        assert_eq!(
            p.authorize_request(node(9000), grpc),
            Decision::Allow("probe")
        );
        assert_ne!(
            p.authorize_request(node(8080), grpc),
            Decision::Allow("probe")
        );
        // Not a probe: another method, path or port.
        let post = RequestFacts {
            method: "POST",
            path: "/healthz",
        };
        assert_ne!(
            p.authorize_request(node(8080), post),
            Decision::Allow("probe")
        );
        assert_ne!(
            p.authorize_request(node(9090), get("/healthz")),
            Decision::Allow("probe")
        );
        // The same request from a pod (not a probe source), or from a
        // meshed peer, is decided as that pod's.
        let pod = ConnFacts {
            port: 8080,
            peer: None,
            probe_source: false,
        };
        let mut no_probes = p.clone();
        no_probes.probes.clear();
        assert_eq!(
            p.authorize_request(pod, get("/healthz")),
            no_probes.authorize_request(pod, get("/healthz")),
            "{default}"
        );
        assert_ne!(
            p.authorize_request(pod, get("/healthz")),
            Decision::Allow("probe")
        );
        let peer = ConnFacts {
            port: 8080,
            peer: Some(&meshed),
            probe_source: true,
        };
        assert_ne!(
            p.authorize_request(peer, get("/healthz")),
            Decision::Allow("probe")
        );
    }
}

#[test]
fn a_tunnel_needs_an_authorization_for_the_whole_connection() {
    let client = id("spiffe://cluster.local/ns/demo/sa/client");
    // Only GET /api for the client: no tunnel for it, nor for anyone
    // unauthenticated, even on the probe path.
    let mut p = only_client_may_get_api();
    p.probes.push(Probe {
        port: 8080,
        path: "/healthz".into(),
    });
    for (peer, probe_source) in [(None, true), (None, false), (Some(&client), false)] {
        let conn = ConnFacts {
            port: 8080,
            peer,
            probe_source,
        };
        assert_eq!(p.authorize_tunnel(conn), Decision::Deny("unauthorized"));
    }
    // An authorization without HTTP constraints covers a tunnel.
    p.authorizations.push(Authorization {
        name: "client-any".into(),
        ports: vec![],
        identities: vec!["spiffe://cluster.local/ns/demo/sa/client".into()],
        namespaces: vec![],
        methods: vec![],
        path_prefixes: vec![],
    });
    let conn = ConnFacts {
        port: 8080,
        peer: Some(&client),
        probe_source: false,
    };
    assert_eq!(p.authorize_tunnel(conn), Decision::Allow("authorized"));
    // So does a default that allows the peer.
    let open = policy(DefaultPolicy::AllUnauthenticated);
    let plain = ConnFacts {
        port: 8080,
        peer: None,
        probe_source: false,
    };
    assert!(open.authorize_tunnel(plain).is_allowed());
    assert!(!policy(DefaultPolicy::AllAuthenticated)
        .authorize_tunnel(plain)
        .is_allowed());
}
