use super::*;
use crate::check;
use crate::plan::{self, build, destinations, Plan, ServicePlan};

const FILE: &str = r#"
name: idm
trustDomain: example.org
certLifetime: 30s
ipv6: true
workloads:
  - name: web
    namespace: demo
    serviceAccount: web
    replicas: 2
    ports: [8080, 9000]
    command: [x]
    annotations:
      config.trellis.dev/skip-inbound-ports: "9000"
  - name: legacy
    namespace: demo
    meshed: false
    ports: [80]
    command: [x]
  - name: client
    namespace: demo
    serviceAccount: client
    command: [x]
  - name: idle
    namespace: demo
    replicas: 0
    ports: [7]
    command: [x]
services:
  - {name: web, namespace: demo, selector: web, ports: [{port: 80, targetPort: 8080}, {port: 9000}]}
  - {name: legacy, namespace: demo, selector: legacy, ports: [{port: 80}]}
  - {name: idle, namespace: demo, selector: idle, ports: [{port: 7}]}
"#;

fn plan(yaml: &str) -> Plan {
    build(&check::parse(yaml, "t").unwrap(), "/opt/trellis").unwrap()
}

#[test]
fn destinations_list_meshed_pods_and_services() {
    let p = plan(FILE);
    let got: Vec<(String, Vec<String>)> = p
        .destinations
        .destinations
        .iter()
        .map(|d| (d.addr.to_string(), d.identities.clone()))
        .collect();
    let web = || vec!["spiffe://example.org/ns/demo/sa/web".to_string()];
    assert_eq!(
        got,
        vec![
            // Pods: captured ports only (9000 skips the proxy, so a peer
            // must not speak TLS to it); the meshed client has no ports.
            ("10.77.0.2:8080".to_string(), web()),
            ("10.77.0.3:8080".to_string(), web()),
            // The web service's port 80; not 9000, not the unmeshed
            // legacy's, not idle's (no endpoints).
            ("10.96.0.1:80".to_string(), web()),
            ("[fd77::2]:8080".to_string(), web()),
            ("[fd77::3]:8080".to_string(), web()),
        ]
    );
    assert_eq!(p.pods[0].captured_ports, [8080]);
    let json = serde_json::to_value(&p.destinations).unwrap();
    assert_eq!(
        json["destinations"][0],
        serde_json::json!({"addr": "10.77.0.2:8080", "identities": ["spiffe://example.org/ns/demo/sa/web"]})
    );
}

#[test]
fn a_service_lists_every_identity_behind_it() {
    let pods = plan(FILE).pods;
    let mut other = pods[1].clone();
    other.identity = "spiffe://example.org/ns/demo/sa/web-canary".into();
    let services = vec![ServicePlan {
        name: "web".into(),
        namespace: "demo".into(),
        vip: Ipv4Addr::new(10, 96, 0, 9),
        selector: "web".into(),
        ports: vec![plan::ServicePortPlan {
            name: None,
            port: 80,
            target_port: 8080,
            app_protocol: None,
        }],
        endpoints: vec![pods[0].ip, other.ip],
    }];
    let d = destinations(&[pods[0].clone(), other], &services);
    let vip = d
        .destinations
        .iter()
        .find(|d| d.addr.to_string() == "10.96.0.9:80")
        .unwrap();
    assert_eq!(
        vip.identities,
        [
            "spiffe://example.org/ns/demo/sa/web",
            "spiffe://example.org/ns/demo/sa/web-canary"
        ]
    );
}

#[test]
fn the_identity_service_and_the_proxies_agree() {
    let p = plan(FILE);
    let id = p
        .identity
        .as_ref()
        .expect("meshed pods need the identity service");
    assert_eq!(id.addr.to_string(), "10.77.0.1:7155");
    assert_eq!(id.admin.to_string(), "10.77.0.1:7195");
    assert_eq!(
        id.server_identity,
        "spiffe://example.org/ns/trellis-system/sa/trellis-identity"
    );
    let dir = crate::names::mesh_dir("idm");
    let env = &id.env;
    assert_eq!(env["TRELLIS_IDENTITY_LISTEN"], "10.77.0.1:7155");
    assert_eq!(env["TRELLIS_IDENTITY_ADMIN_LISTEN"], "10.77.0.1:7195");
    assert_eq!(env["TRELLIS_IDENTITY_TRUST_DOMAIN"], "example.org");
    assert_eq!(env["TRELLIS_IDENTITY_TOKEN_VERIFIER"], "jwks");
    assert_eq!(env["TRELLIS_IDENTITY_AUDIENCE"], "identity.trellis.dev");
    assert_eq!(env["TRELLIS_IDENTITY_NAMESPACE"], "trellis-system");
    assert_eq!(env["TRELLIS_IDENTITY_SERVICE_ACCOUNT"], "trellis-identity");
    assert_eq!(env["TRELLIS_IDENTITY_CERT_LIFETIME"], "30s");
    assert_eq!(
        env["TRELLIS_IDENTITY_JWKS_FILE"],
        dir.join("token-issuer/jwks.json").display().to_string()
    );
    assert_eq!(
        env["TRELLIS_IDENTITY_ISSUER_KEY_FILE"],
        dir.join("ca/issuer.key").display().to_string()
    );
    // The identity service's own settings are valid as it reads them.
    let cfg = trellis_identity::Config::from_source(&trellis_core::config::MapSource(env.clone()))
        .unwrap();
    assert_eq!(
        cfg.server_identity().unwrap().to_string(),
        id.server_identity
    );

    let web1 = &p.pods[1];
    let proxy = web1.proxy.as_ref().unwrap();
    let files = proxy.files.as_ref().unwrap();
    assert_eq!(files.dir, dir.join("pods/demo.web-1"));
    let env = &proxy.env;
    assert_eq!(env[proxy_env::IDENTITY_ADDR], "10.77.0.1:7155");
    assert_eq!(env[proxy_env::IDENTITY_SERVER_ID], id.server_identity);
    assert_eq!(
        env[proxy_env::IDENTITY],
        "spiffe://example.org/ns/demo/sa/web"
    );
    assert_eq!(
        env[proxy_env::IDENTITY_TOKEN_FILE],
        dir.join("pods/demo.web-1/token").display().to_string()
    );
    assert_eq!(
        env[proxy_env::TRUST_ROOTS_FILE],
        dir.join("ca/roots.pem").display().to_string()
    );
    // The mesh has a controller: it is the proxy's one source of
    // destinations and policy, so no file is named beside it.
    assert_eq!(
        env[proxy_env::CONTROLLER_ADDR],
        p.controller.as_ref().unwrap().addr.to_string()
    );
    assert!(!env.contains_key(proxy_env::DESTINATIONS_FILE));
    assert!(!env.contains_key(proxy_env::POLICY_FILE));
    // And the proxy accepts the variables as the local mesh writes them.
    trellis_proxy::Config::from_source(&trellis_core::config::MapSource(env.clone())).unwrap();
    assert!(p.pods[2].proxy.is_none(), "unmeshed");
}

#[test]
fn a_mesh_without_sidecars_has_no_identity_service() {
    let p = plan("workloads: [{name: a, meshed: false, ports: [80], command: [x]}]\nservices: [{name: a, selector: a, ports: [{port: 80}]}]");
    assert!(p.identity.is_none());
    assert!(p.destinations.destinations.is_empty());
}

#[test]
fn cert_lifetime_is_checked() {
    let bad = |v: &str| match check::parse(
        &format!("certLifetime: {v}\nworkloads: [{{name: a, command: [x]}}]"),
        "t",
    ) {
        Err(check::SpecError::Invalid(e)) => e.errors.join("\n"),
        other => panic!("{other:?}"),
    };
    assert!(bad("5s").contains("certLifetime: \"5s\" must be 10s to 8760h"));
    assert!(bad("soon").contains("certLifetime:"));
    let c = check::parse("workloads: [{name: a, command: [x]}]", "t").unwrap();
    assert_eq!(c.cert_lifetime, Duration::from_secs(86_400));
}
