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
    let plain = |port| ConnFacts { port, peer: None };
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
            },
            RequestFacts { method, path },
        );
        assert_eq!(got, *want, "{peer:?} {port} {method} {path}");
    }
    // HTTP-constrained authorizations never admit opaque TCP.
    assert_eq!(
        p.authorize_connection(ConnFacts {
            port: 8080,
            peer: Some(&client)
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
            peer: Some(&same)
        }),
        Decision::Allow("authorized")
    );
    assert_eq!(
        p.authorize_connection(ConnFacts {
            port: 1,
            peer: Some(&elsewhere)
        }),
        Decision::AuditAllow("unauthorized")
    );
}

#[test]
fn probes_pass_every_policy() {
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
        let conn = ConnFacts {
            port: 8080,
            peer: None,
        };
        let probe = RequestFacts {
            method: "GET",
            path: "/healthz",
        };
        assert_eq!(
            p.authorize_request(conn, probe),
            Decision::Allow("probe"),
            "{default}"
        );
        let not_probe = RequestFacts {
            method: "POST",
            path: "/healthz",
        };
        assert!(
            !p.authorize_request(conn, not_probe).is_allowed() || default == DefaultPolicy::Audit
        );
        let other_port = ConnFacts {
            port: 9090,
            peer: None,
        };
        assert_ne!(
            p.authorize_request(other_port, probe),
            Decision::Allow("probe")
        );
    }
}

#[test]
fn policy_file_round_trips() {
    let json = r#"{
        "defaultPolicy": "all-authenticated",
        "ports": {"9090": "all-unauthenticated"},
        "probes": [{"port": 8080, "path": "/healthz"}],
        "authorizations": [{"name": "a", "ports": [8080, "9000-9010"], "identities": ["spiffe://cluster.local/ns/demo/sa/client"]}]
    }"#;
    let p: Policy = serde_json::from_str(json).unwrap();
    assert_eq!(p.default_for(9090), DefaultPolicy::AllUnauthenticated);
    assert!(p.authorizations[0].ports[1].contains(9005));
    let again: Policy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(p, again);
    assert!(serde_json::from_str::<Policy>(r#"{"defaultPolicy":"allow"}"#).is_err());
    assert!(serde_json::from_str::<Policy>(r#"{"defaultPolicy":"deny","extra":1}"#).is_err());
}
