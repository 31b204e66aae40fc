use super::*;
use crate::check::{self, SpecError};
use crate::spec::Probe;

const FILE: &str = r#"
trustDomain: example.org
defaultInboundPolicy: all-authenticated
workloads:
  - name: web
    namespace: demo
    serviceAccount: web
    replicas: 2
    ports: [8080, 9090]
    probes: [{port: 8080, path: /healthz}]
    command: [x]
    annotations:
      config.trellis.dev/port-inbound-policy: "9090=all-unauthenticated, 8080=audit"
  - name: api
    namespace: demo
    serviceAccount: api
    ports: [8080]
    command: [x]
    annotations:
      config.trellis.dev/default-inbound-policy: deny
  - name: other
    namespace: elsewhere
    ports: [8080]
    command: [x]
policies:
  - name: web-from-client
    namespace: demo
    targetWorkload: web
    ports: [8080]
    from:
      identities: ["spiffe://example.org/ns/demo/sa/client"]
      serviceAccounts: [{name: admin}, {name: ops, namespace: tools}, {name: client}]
    http:
      methods: [get, HEAD, GET]
      pathPrefixes: [/api]
  - name: demo-wide
    namespace: demo
    from:
      namespaces: [tools, tools]
"#;

fn errors(yaml: &str) -> Vec<String> {
    match check::parse(yaml, "test.yaml") {
        Err(SpecError::Invalid(v)) => v.errors,
        Err(other) => panic!("expected validation errors, got {other}"),
        Ok(_) => panic!("expected validation errors, got a valid file"),
    }
}

fn compiled(workload: usize) -> ProxyPolicy {
    let c = check::parse(FILE, "t").unwrap();
    let f = &c.file;
    compile(
        &f.trust_domain,
        f.default_inbound_policy,
        &c.overrides[workload],
        &f.workloads[workload],
        &f.policies,
    )
}

#[test]
fn policies_parse_into_the_crd_shape() {
    let c = check::parse(FILE, "t").unwrap();
    let p = &c.file.policies[0];
    assert_eq!(p.name, "web-from-client");
    assert_eq!(p.target_workload.as_deref(), Some("web"));
    assert_eq!(p.ports, [8080]);
    assert_eq!(
        p.from.service_accounts[1].namespace.as_deref(),
        Some("tools")
    );
    assert_eq!(p.http.as_ref().unwrap().path_prefixes, ["/api"]);
    let wide = &c.file.policies[1];
    assert_eq!(wide.target_workload, None);
    assert!(wide.ports.is_empty() && wide.http.is_none());
    assert_eq!(
        c.overrides[0].port_inbound_policies,
        BTreeMap::from([
            (8080, InboundPolicy::Audit),
            (9090, InboundPolicy::AllUnauthenticated)
        ])
    );
}

#[test]
fn each_pod_gets_its_default_ports_probes_and_policies() {
    let web = compiled(0);
    assert_eq!(
        web.default_policy,
        InboundPolicy::AllAuthenticated,
        "the file's default"
    );
    assert_eq!(web.ports[&9090], InboundPolicy::AllUnauthenticated);
    assert_eq!(
        web.probes,
        [Probe {
            port: 8080,
            path: "/healthz".into()
        }]
    );
    assert_eq!(
        web.authorizations,
        [
            ProxyAuthorization {
                name: "web-from-client".into(),
                ports: vec![PortRange::from(8080)],
                identities: vec![
                    "spiffe://example.org/ns/demo/sa/client".into(),
                    "spiffe://example.org/ns/demo/sa/admin".into(),
                    "spiffe://example.org/ns/tools/sa/ops".into(),
                ],
                namespaces: vec![],
                methods: vec!["GET".into(), "HEAD".into()],
                path_prefixes: vec!["/api".into()],
            },
            ProxyAuthorization {
                name: "demo-wide".into(),
                ports: vec![],
                identities: vec![],
                namespaces: vec!["tools".into()],
                methods: vec![],
                path_prefixes: vec![],
            },
        ]
    );

    // `api`: its annotation's default; only the namespace-wide policy.
    let api = compiled(1);
    assert_eq!(api.default_policy, InboundPolicy::Deny);
    assert!(api.ports.is_empty() && api.probes.is_empty());
    assert_eq!(
        api.authorizations
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["demo-wide"]
    );

    // Another namespace: no policy of `demo` applies.
    let other = compiled(2);
    assert!(other.authorizations.is_empty());
}

#[test]
fn the_policy_file_is_what_the_proxy_reads() {
    let web = compiled(0);
    let json = serde_json::to_value(&web).unwrap();
    assert_eq!(json["defaultPolicy"], "all-authenticated");
    assert_eq!(json["ports"]["9090"], "all-unauthenticated");
    assert_eq!(
        json["probes"][0],
        serde_json::json!({"port": 8080, "path": "/healthz"})
    );
    assert_eq!(json["authorizations"][0]["pathPrefixes"][0], "/api");
    // A pod port is written as a number.
    assert_eq!(
        json["authorizations"][0]["ports"],
        serde_json::json!([8080])
    );
    // The type is the proxy's own: `mesh policy` reads back what `up`
    // wrote, and so does the proxy, with the same meaning.
    let back: ProxyPolicy = serde_json::from_value(json).unwrap();
    assert_eq!(back, web);
    assert_eq!(back.default_for(9090), InboundPolicy::AllUnauthenticated);
}

#[test]
fn policy_mistakes_are_named_by_path() {
    let yaml = r#"
trustDomain: example.org
workloads:
  - {name: web, namespace: demo, ports: [8080], command: [x],
     probes: [{port: 9999, path: healthz}]}
  - {name: legacy, namespace: demo, meshed: false, ports: [80], command: [x]}
policies:
  - name: Bad_Name
    namespace: demo
    targetWorkload: nope
    from: {}
  - name: p
    namespace: demo
    targetWorkload: legacy
    from: {namespaces: [Not-A-Label]}
  - name: p
    namespace: demo
    targetWorkload: web
    ports: [0, 9090, 8080, 8080]
    from:
      identities: ["spiffe://other.org/ns/a/sa/b", "https://x", "spiffe://example.org/ns/a"]
      serviceAccounts: [{name: "UPPER"}, {name: ok, namespace: "-x"}]
    http: {methods: ["GET IT", ""], pathPrefixes: [api, "/a?b"]}
  - name: empty-http
    namespace: demo
    from: {namespaces: [demo]}
    http: {}
  - name: lonely
    namespace: nobody-here
    from: {namespaces: [demo]}
"#;
    let errs = errors(yaml);
    for needle in [
        "workloads[0] (demo/web).probes[0].port: 9999 is not one of the workload's ports [8080]",
        "workloads[0] (demo/web).probes[0].path: \"healthz\" must be a path starting with '/'",
        "policies[0] (demo/Bad_Name).name: \"Bad_Name\" must be lowercase",
        "policies[0] (demo/Bad_Name).targetWorkload: no workload named \"nope\" in namespace \"demo\"",
        "policies[0] (demo/Bad_Name).from: lets no one in: list identities, serviceAccounts or namespaces",
        "policies[1] (demo/p).targetWorkload: workload demo/legacy is not meshed",
        "policies[1] (demo/p).from.namespaces[0]: \"Not-A-Label\" must be lowercase",
        "policies[2] (demo/p): a policy of this name already exists in this namespace",
        "policies[2] (demo/p).ports[0]: port 0 is not a port",
        "policies[2] (demo/p).ports[1]: 9090 is not one of workload demo/web's ports [8080]",
        "policies[2] (demo/p).ports[3]: port 8080 is listed twice",
        "policies[2] (demo/p).from.identities[0]: \"spiffe://other.org/ns/a/sa/b\" is in trust domain \"other.org\", but this mesh's is \"example.org\"",
        "policies[2] (demo/p).from.identities[1]: not a SPIFFE ID",
        "policies[2] (demo/p).from.identities[2]: not a SPIFFE ID",
        "policies[2] (demo/p).from.serviceAccounts[0].name: \"UPPER\" must be a DNS name",
        "policies[2] (demo/p).from.serviceAccounts[1].namespace: \"-x\" must be lowercase",
        "policies[2] (demo/p).http.methods[0]: \"GET IT\" is not accepted; accepted: GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH",
        "policies[2] (demo/p).http.methods[1]: \"\" is not accepted; accepted: GET, HEAD,",
        "policies[2] (demo/p).http.pathPrefixes[0]: \"api\" must start with '/'",
        "policies[2] (demo/p).http.pathPrefixes[1]: \"/a?b\" must be a path, without query",
        "policies[3] (demo/empty-http).http: lists neither methods nor pathPrefixes",
        "policies[4] (nobody-here/lonely): namespace \"nobody-here\" has no meshed workload",
    ] {
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "missing {needle:?} in:\n{}",
            errs.join("\n")
        );
    }
    assert_eq!(errs.len(), 22, "{}", errs.join("\n"));
}

#[test]
fn unknown_policy_fields_are_refused_with_their_path() {
    let yaml = "workloads: [{name: a, command: [x]}]\npolicies:\n  - {name: p, from: {namespaces: [default]}, form: {}}\n";
    let err = check::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(
        err.contains("policies[0]") && err.contains("unknown field `form`"),
        "{err}"
    );
    let yaml =
        "workloads: [{name: a, command: [x]}]\npolicies:\n  - {name: p, from: {identity: [x]}}\n";
    let err = check::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("unknown field `identity`"), "{err}");
    let yaml = "workloads: [{name: a, command: [x]}]\npolicies:\n  - {name: p}\n";
    let err = check::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("missing field `from`"), "{err}");
}

#[test]
fn port_policy_annotations() {
    assert_eq!(
        parse_port_policies("8080=deny, 9090=all-unauthenticated,").unwrap(),
        BTreeMap::from([
            (8080, InboundPolicy::Deny),
            (9090, InboundPolicy::AllUnauthenticated)
        ])
    );
    for (bad, why) in [
        ("8080", "is not PORT=POLICY"),
        ("0=deny", "\"0\" is not a port"),
        ("http=deny", "\"http\" is not a port"),
        ("8080=sometimes", "\"sometimes\" is not one of"),
        ("8080=deny,8080=audit", "port 8080 is given twice"),
        (" , ", "at least one"),
    ] {
        let err = parse_port_policies(bad).unwrap_err();
        assert!(err.contains(why), "{bad:?}: {err}");
    }
    let errs = errors(
        "workloads:\n  - name: a\n    meshed: false\n    command: [x]\n    annotations: {config.trellis.dev/port-inbound-policy: \"80=deny\"}\n  - name: b\n    command: [x]\n    annotations: {config.trellis.dev/port-inbound-policy: \"80=maybe\"}\n",
    );
    assert!(
        errs.iter().any(|e| e.contains(
            "workloads[0] (default/a).annotations: proxy overrides on an unmeshed workload"
        )),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("workloads[1] (default/b).annotations[\"config.trellis.dev/port-inbound-policy\"]: \"maybe\" is not one of")),
        "{errs:?}"
    );
}
