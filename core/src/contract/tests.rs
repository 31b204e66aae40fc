//! The contract, pinned: a change here is a change to what SPEC.md, the
//! chart, the injector's golden files and running pods rely on.

use super::files::{Authorization, DestinationEntry, DestinationsFile, Policy, Probe};
use super::*;
use crate::config::PortRange;
use crate::policy::DefaultPolicy;

#[test]
fn ports_and_uid_are_spec_s() {
    assert_eq!(PROXY_UID, 7102);
    assert_eq!(
        (OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT),
        (7140, 7143, 7191)
    );
    assert_eq!(DEFAULT_OUTBOUND_LISTEN.to_string(), "127.0.0.1:7140");
    assert_eq!(DEFAULT_INBOUND_LISTEN.to_string(), "0.0.0.0:7143");
    assert_eq!(DEFAULT_ADMIN_LISTEN.to_string(), "0.0.0.0:7191");
    assert_eq!(
        PROXY_PORTS,
        [(7140, "outbound"), (7143, "inbound"), (7191, "admin")]
    );
}

#[test]
fn variable_names_are_pinned() {
    use proxy_env::*;
    let pinned = [
        (OUTBOUND_LISTEN, "TRELLIS_PROXY_OUTBOUND_LISTEN"),
        (INBOUND_LISTEN, "TRELLIS_PROXY_INBOUND_LISTEN"),
        (ADMIN_LISTEN, "TRELLIS_PROXY_ADMIN_LISTEN"),
        (IPV6, "TRELLIS_PROXY_IPV6"),
        (DETECT_TIMEOUT, "TRELLIS_PROXY_DETECT_TIMEOUT"),
        (OPAQUE_PORTS, "TRELLIS_PROXY_OPAQUE_PORTS"),
        (CONNECT_TIMEOUT, "TRELLIS_PROXY_CONNECT_TIMEOUT"),
        (HEADER_READ_TIMEOUT, "TRELLIS_PROXY_HEADER_READ_TIMEOUT"),
        (MAX_HEADER_BYTES, "TRELLIS_PROXY_MAX_HEADER_BYTES"),
        (POOL_IDLE_TIMEOUT, "TRELLIS_PROXY_POOL_IDLE_TIMEOUT"),
        (SHUTDOWN_GRACE, "TRELLIS_PROXY_SHUTDOWN_GRACE"),
        (WORKER_THREADS, "TRELLIS_PROXY_WORKER_THREADS"),
        (LOG, "TRELLIS_PROXY_LOG"),
        (LOG_FORMAT, "TRELLIS_PROXY_LOG_FORMAT"),
        (WORKLOAD, "TRELLIS_PROXY_WORKLOAD"),
        (IDENTITY_ADDR, "TRELLIS_PROXY_IDENTITY_ADDR"),
        (IDENTITY_SERVER_ID, "TRELLIS_PROXY_IDENTITY_SERVER_ID"),
        (IDENTITY, "TRELLIS_PROXY_IDENTITY"),
        (IDENTITY_TOKEN_FILE, "TRELLIS_PROXY_IDENTITY_TOKEN_FILE"),
        (TRUST_ROOTS_FILE, "TRELLIS_PROXY_TRUST_ROOTS_FILE"),
        (DESTINATIONS_FILE, "TRELLIS_PROXY_DESTINATIONS_FILE"),
        (POLICY_FILE, "TRELLIS_PROXY_POLICY_FILE"),
        (
            DEFAULT_INBOUND_POLICY,
            "TRELLIS_PROXY_DEFAULT_INBOUND_POLICY",
        ),
        (CONTROLLER_ADDR, "TRELLIS_PROXY_CONTROLLER_ADDR"),
        (POD_NAMESPACE, "TRELLIS_PROXY_POD_NAMESPACE"),
        (POD_NAME, "TRELLIS_PROXY_POD_NAME"),
        (OUTBOUND_MTLS, "TRELLIS_PROXY_OUTBOUND_MTLS"),
        (
            PLAINTEXT_DESTINATIONS,
            "TRELLIS_PROXY_PLAINTEXT_DESTINATIONS",
        ),
        (PROBE_SOURCES, "TRELLIS_PROXY_PROBE_SOURCES"),
        (BALANCER_DECAY, "TRELLIS_PROXY_BALANCER_DECAY"),
        (RESOLVE_TIMEOUT, "TRELLIS_PROXY_RESOLVE_TIMEOUT"),
        (TRACE_COLLECTOR, "TRELLIS_PROXY_TRACE_COLLECTOR"),
        (TRACE_SAMPLING, "TRELLIS_PROXY_TRACE_SAMPLING"),
    ];
    for (name, want) in pinned {
        assert_eq!(name, want);
    }
    // `ALL` is every one of them, once; all under SPEC.md's prefix.
    assert_eq!(ALL, pinned.map(|(name, _)| name));
    let mut sorted = ALL.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ALL.len());
    assert!(ALL.iter().all(|n| n.starts_with("TRELLIS_PROXY_")));
}

#[test]
fn policy_file_format() {
    let text = r#"{"defaultPolicy":"all-authenticated","ports":{"9090":"audit"},"probes":[{"port":8080,"path":"/healthz"}],"authorizations":[{"name":"a","ports":[8080,"9000-9010"],"identities":["spiffe://cluster.local/ns/demo/sa/client"],"namespaces":["tools"],"methods":["GET"],"pathPrefixes":["/api"]}]}"#;
    let policy: Policy = serde_json::from_str(text).unwrap();
    assert_eq!(
        policy,
        Policy {
            default_policy: DefaultPolicy::AllAuthenticated,
            ports: [(9090, DefaultPolicy::Audit)].into(),
            probes: vec![Probe {
                port: 8080,
                path: "/healthz".into()
            }],
            authorizations: vec![Authorization {
                name: "a".into(),
                ports: vec![PortRange::from(8080), "9000-9010".parse().unwrap()],
                identities: vec!["spiffe://cluster.local/ns/demo/sa/client".into()],
                namespaces: vec!["tools".into()],
                methods: vec!["GET".into()],
                path_prefixes: vec!["/api".into()],
            }],
        }
    );
    // Written back byte for byte: a port stays a number, a range a string.
    assert_eq!(serde_json::to_string(&policy).unwrap(), text);
    assert_eq!(policy.default_for(9090), DefaultPolicy::Audit);
    assert_eq!(policy.default_for(8080), DefaultPolicy::AllAuthenticated);

    // Only `defaultPolicy` is required; a port may be a string too.
    let least: Policy = serde_json::from_str(r#"{"defaultPolicy":"deny"}"#).unwrap();
    assert_eq!(least.default_policy, DefaultPolicy::Deny);
    let a: Authorization = serde_json::from_str(r#"{"name":"b","ports":["25"]}"#).unwrap();
    assert_eq!(a.ports, [PortRange::from(25)]);
    for bad in [
        r#"{"defaultPolicy":"allow"}"#,
        r#"{"defaultPolicy":"deny","extra":1}"#,
        r#"{"defaultPolicy":"deny","authorizations":[{"name":"c","ports":[0]}]}"#,
        r#"{"defaultPolicy":"deny","authorizations":[{"name":"c","ports":["9-1"]}]}"#,
    ] {
        assert!(serde_json::from_str::<Policy>(bad).is_err(), "{bad}");
    }
    // The default policy of an empty one is SPEC.md's mesh-wide default.
    assert_eq!(
        Policy::default().default_policy,
        DefaultPolicy::AllUnauthenticated
    );
}

#[test]
fn destinations_file_format() {
    let text = r#"{"destinations":[{"addr":"10.77.0.2:8080","identities":["spiffe://cluster.local/ns/demo/sa/web"]}]}"#;
    let file: DestinationsFile = serde_json::from_str(text).unwrap();
    assert_eq!(
        file,
        DestinationsFile {
            destinations: vec![DestinationEntry {
                addr: "10.77.0.2:8080".parse().unwrap(),
                identities: vec!["spiffe://cluster.local/ns/demo/sa/web".into()],
            }],
        }
    );
    assert_eq!(serde_json::to_string(&file).unwrap(), text);
    assert!(serde_json::from_str::<DestinationsFile>(r#"{"destinations":[],"x":1}"#).is_err());
    assert!(serde_json::from_str::<DestinationsFile>(
        r#"{"destinations":[{"addr":"10.77.0.2","identities":[]}]}"#
    )
    .is_err());
}
