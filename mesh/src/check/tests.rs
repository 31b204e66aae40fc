use super::*;
use crate::spec::{DEFAULT_MESH_NAME, DEFAULT_POD_CIDR, DEFAULT_SERVICE_CIDR};

const GOOD: &str = r#"
name: demo
trustDomain: example.org
defaultInboundPolicy: audit
ipv6: true
workloads:
  - name: web
    namespace: demo
    serviceAccount: web
    replicas: 2
    ports: [8080]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:{port}", --name, "{name}"]
    env: {GREETING: hi, PORT: 8080, DEBUG: true}
    annotations:
      config.trellis.dev/opaque-ports: 25
      config.trellis.dev/skip-outbound-ports: "4000-4010, 4444"
      config.trellis.dev/proxy-log-level: debug
      config.trellis.dev/default-inbound-policy: deny
      config.trellis.dev/proxy-cpu-request: 100m
      example.com/anything: goes
  - name: client
    namespace: demo
    meshed: false
    command: [sleep, infinity]
services:
  - name: web
    namespace: demo
    selector: web
    ports: [{port: 80, targetPort: 8080, name: http}]
routes:
  - {name: web-route, namespace: demo, parent: {service: web}, rules: [{}]}
policies: []
"#;

fn errors(yaml: &str) -> Vec<String> {
    match parse(yaml, "test.yaml") {
        Err(SpecError::Invalid(v)) => v.errors,
        Err(other) => panic!("expected validation errors, got {other}"),
        Ok(_) => panic!("expected validation errors, got a valid file"),
    }
}

fn has(errs: &[String], needle: &str) -> bool {
    errs.iter().any(|e| e.contains(needle))
}

#[test]
fn good_file_with_defaults() {
    let c = parse(GOOD, "good.yaml").unwrap();
    let f = &c.file;
    assert_eq!(f.name, "demo");
    assert_eq!(f.trust_domain, "example.org");
    assert_eq!(f.default_inbound_policy, InboundPolicy::Audit);
    assert!(f.ipv6);
    assert_eq!(c.pod_cidr.to_string(), DEFAULT_POD_CIDR);
    assert_eq!(c.service_cidr.to_string(), DEFAULT_SERVICE_CIDR);
    let web = &f.workloads[0];
    assert_eq!(web.replicas, 2);
    assert!(web.meshed, "meshed defaults to true");
    assert_eq!(web.env["PORT"], "8080");
    assert_eq!(web.env["DEBUG"], "true");
    let o = &c.overrides[0];
    assert_eq!(o.opaque_ports.as_deref(), Some("25"));
    assert_eq!(o.skip_outbound_ports.as_deref(), Some("4000-4010,4444"));
    assert_eq!(o.proxy_log_level.as_deref(), Some("debug"));
    assert_eq!(o.inbound_policy, Some(InboundPolicy::Deny));
    let client = &f.workloads[1];
    assert_eq!(client.replicas, 1);
    assert_eq!(client.service_account, "default");
    assert_eq!(c.overrides[1], Overrides::default());
    assert_eq!(f.services[0].ports[0].target(), 8080);
    assert_eq!(f.routes.len(), 1);
    assert_eq!(f.routes[0]["parent"]["service"], "web");
}

#[test]
fn minimal_file_gets_defaults() {
    let c = parse("workloads: [{name: a, command: [sleep, '1']}]", "min").unwrap();
    assert_eq!(c.file.name, DEFAULT_MESH_NAME);
    assert_eq!(c.file.trust_domain, "cluster.local");
    assert_eq!(c.file.workloads[0].namespace, "default");
    assert_eq!(
        c.file.default_inbound_policy,
        InboundPolicy::AllUnauthenticated
    );
    assert!(!c.file.ipv6);
}

#[test]
fn syntax_errors_name_the_field_path() {
    let e = parse(
        "workloads:\n  - name: a\n    command: [x]\n    replicas: 2\n    colour: red\n",
        "f.yaml",
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("f.yaml: workloads[0]"), "{msg}");
    assert!(msg.contains("unknown field `colour`"), "{msg}");

    let msg = parse("workloads: [{name: a, command: [x], ports: [70000]}]", "f")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("workloads[0].ports[0]"), "{msg}");

    let msg = parse("defaultInboundPolicy: sometimes\nworkloads: []", "f")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("defaultInboundPolicy") && msg.contains("unknown variant"),
        "{msg}"
    );

    let msg = parse("workloads: [{name: a}]", "f")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("missing field `command`"), "{msg}");

    let msg = parse("workloads: [{name: a, command: [x], env: {A: [1]}}]", "f")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("a string, number or boolean"), "{msg}");

    let msg = parse("workloads: [{name: a, command: [x]}]\nextra: 1\n", "f")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("unknown field `extra`"), "{msg}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = r#"
name: Bad_Name
trustDomain: "Not A Domain"
podCidr: 10.77.0.0/16
serviceCidr: 10.77.128.0/17
workloads:
  - name: web
    namespace: demo
    replicas: 65
    ports: [0, 8080, 8080, 7143]
    command: ["{trellis}", "{nope}"]
    env: {"1BAD": x}
    annotations:
      config.trellis.dev/opaque-ports: "25,abc"
      config.trellis.dev/proxy-log-level: ""
      config.trellis.dev/default-inbound-policy: sometimes
      config.trellis.dev/opaque-port: "25"
  - name: web
    namespace: demo
    command: []
  - name: plain
    meshed: false
    command: [x, "{port}"]
    annotations: {config.trellis.dev/opaque-ports: "25"}
services:
  - name: web
    namespace: other
    selector: web
    ports: []
  - name: api
    namespace: demo
    selector: web
    ports: [{port: 80, targetPort: 9090}, {port: 80}]
  - name: api
    namespace: demo
    selector: nothing
    ports: [{port: 1}]
routes: [notamap]
"#;
    let errs = errors(yaml);
    for needle in [
        "name: \"Bad_Name\" must be lowercase",
        "trustDomain: \"Not A Domain\" is not a SPIFFE trust domain",
        "serviceCidr: 10.77.128.0/17 overlaps podCidr 10.77.0.0/16",
        "workloads[0] (demo/web).replicas: 65 is more than the local mesh's limit of 64",
        "workloads[0] (demo/web).ports[0]: port 0 is not a port",
        "workloads[0] (demo/web).ports[2]: port 8080 is listed twice",
        "workloads[0] (demo/web).ports[3]: port 7143 belongs to the sidecar proxy",
        "workloads[0] (demo/web).command[1]: unknown placeholder {nope}",
        "workloads[0] (demo/web).env.1BAD: is not a valid environment variable name",
        "config.trellis.dev/opaque-ports\"]: \"abc\" is not a port",
        "config.trellis.dev/proxy-log-level\"]: must not be empty",
        "config.trellis.dev/default-inbound-policy\"]: \"sometimes\" is not one of",
        "config.trellis.dev/opaque-port\"]: unknown annotation \"config.trellis.dev/opaque-port\" (did you mean config.trellis.dev/opaque-ports?); known: config.trellis.dev/opaque-ports, config.trellis.dev/skip-inbound-ports,",
        "workloads[1] (demo/web): a workload of this name already exists in this namespace",
        "workloads[1] (demo/web).command: must not be empty",
        "workloads[2] (default/plain).command[1]: {port} means the workload's first port, but it lists no `ports`",
        "workloads[2] (default/plain).annotations: proxy overrides on an unmeshed workload",
        "services[0] (other/web).selector: no workload named \"web\" in namespace \"other\" (there is one in namespace \"demo\"",
        "services[0] (other/web).ports: a service needs at least one port",
        "services[1] (demo/api).ports[0].targetPort: 9090 is not one of workload demo/web's ports",
        "services[1] (demo/api).ports[1].port: port 80 is listed twice",
        "services[2] (demo/api): a service of this name already exists",
        "services[2] (demo/api).selector: no workload named \"nothing\"",
        "routes[0]: must be a mapping",
    ] {
        assert!(has(&errs, needle), "missing {needle:?} in:\n{}", errs.join("\n"));
    }
    let shown = ValidationErrors {
        origin: "x.yaml".into(),
        errors: errs.clone(),
    }
    .to_string();
    assert!(
        shown.starts_with(&format!("x.yaml: {} problem(s):\n  - ", errs.len())),
        "{shown}"
    );
}

#[test]
fn cidr_problems() {
    let errs = errors(
        "podCidr: 10.77.0.1/16\nserviceCidr: 127.0.0.0/16\nworkloads: [{name: a, command: [x]}]",
    );
    assert!(
        has(
            &errs,
            "podCidr: 10.77.0.1/16 has host bits set; the network is 10.77.0.0/16"
        ),
        "{errs:?}"
    );
    assert!(
        has(
            &errs,
            "serviceCidr: 127.0.0.0/16 cannot be used: overlaps loopback"
        ),
        "{errs:?}"
    );
    let errs = errors("podCidr: 10.9.9.0/29\nworkloads: [{name: a, replicas: 6, command: [x]}]");
    assert!(
        has(
            &errs,
            "podCidr: 10.9.9.0/29 has room for 5 pods beside the gateway; the file asks for 6"
        ),
        "{errs:?}"
    );
    let errs = errors("serviceCidr: garbage\nworkloads: [{name: a, command: [x]}]");
    assert!(
        has(&errs, "serviceCidr: \"garbage\" is not a CIDR"),
        "{errs:?}"
    );
}

#[test]
fn empty_and_oversized_meshes() {
    assert!(has(
        &errors("name: x"),
        "workloads: a mesh needs at least one workload"
    ));
    let mut yaml = String::from("workloads:\n");
    for i in 0..5 {
        yaml.push_str(&format!("  - {{name: w{i}, replicas: 60, command: [x]}}\n"));
    }
    assert!(has(
        &errors(&yaml),
        "300 pods in all; the local mesh runs at most 256"
    ));
    let long = "a".repeat(25);
    assert!(has(
        &errors(&format!(
            "name: {long}\nworkloads: [{{name: a, command: [x]}}]"
        )),
        "longer than 24"
    ));
}

#[test]
fn derived_namespace_names_must_not_collide() {
    // demo + "a-b-0" and "demo-a" + "b-0" both give trls-m-demo-a-b-0.
    let yaml = "name: m\nworkloads:\n  - {name: a-b, namespace: demo, command: [x]}\n  - {name: b, namespace: demo-a, command: [x]}\n";
    let errs = errors(yaml);
    assert!(
        has(
            &errs,
            "network namespace trls-m-demo-a-b-0 collides with workloads[0]'s"
        ),
        "{errs:?}"
    );
}

#[test]
fn templates_expand_and_escape() {
    let vars = template::TemplateVars::sample(true);
    assert_eq!(
        template::expand("{trellis}", &vars).unwrap(),
        "/bin/trellis"
    );
    assert_eq!(
        template::expand("--listen=0.0.0.0:{port}", &vars).unwrap(),
        "--listen=0.0.0.0:1"
    );
    assert_eq!(
        template::expand("{{\"json\": 1}}", &vars).unwrap(),
        "{\"json\": 1}"
    );
    assert_eq!(
        template::expand("{name}.{namespace}/{workload}@{ip}", &vars).unwrap(),
        "w-0.ns/w@10.0.0.2"
    );
    assert!(template::expand("{oops", &vars)
        .unwrap_err()
        .contains("unclosed"));
    assert!(template::expand("oops}", &vars)
        .unwrap_err()
        .contains("unmatched"));
}

#[test]
fn service_ports_take_an_app_protocol() {
    let yaml = |proto: &str| {
        format!("workloads:\n  - {{name: web, ports: [80], command: [x]}}\nservices:\n  - {{name: web, selector: web, ports: [{{port: 80, appProtocol: {proto}}}]}}\n")
    };
    let c = parse(&yaml("grpc"), "t").unwrap();
    assert_eq!(
        c.file.services[0].ports[0].app_protocol.as_deref(),
        Some("grpc")
    );
    assert!(parse(&yaml("kubernetes.io/h2c"), "t").is_ok());
    let errs = errors(&yaml("\"not one\""));
    assert!(
        has(&errs, "services[0] (default/web).ports[0].appProtocol"),
        "{errs:?}"
    );
}

/// A file with a floor and one workload carrying `annotations`.
fn floored(floor: &str, extra: &str, annotations: &str) -> String {
    format!(
        r#"
{extra}
floor:
{floor}
workloads:
  - name: ledger
    namespace: pay
    ports: [8080]
    command: [sleep, infinity]
    annotations:
{annotations}
"#
    )
}

#[test]
fn the_floor_refuses_workload_annotations_below_it() {
    const FLOOR: &str = "  defaultInboundPolicy: all-authenticated\n  outboundMtls: required\n  skipInboundPorts: none\n  skipOutboundPorts: \"5432\"\n";
    const AT: &str = r#"workloads[0] (pay/ledger).annotations["#;
    for (annotations, want) in [
        // The security review's pod.
        (
            "      config.trellis.dev/skip-inbound-ports: 1-65535",
            r#"config.trellis.dev/skip-inbound-ports"]: ports 1-65535 are not allowed by floor.skipInboundPorts (none)"#,
        ),
        (
            "      config.trellis.dev/skip-outbound-ports: 1-65535",
            r#"config.trellis.dev/skip-outbound-ports"]: ports 1-65535 are not allowed by floor.skipOutboundPorts (5432)"#,
        ),
        (
            "      config.trellis.dev/default-inbound-policy: all-unauthenticated",
            r#"config.trellis.dev/default-inbound-policy"]: all-unauthenticated is weaker than floor.defaultInboundPolicy all-authenticated"#,
        ),
        (
            "      config.trellis.dev/default-inbound-policy: audit",
            "audit is weaker than floor.defaultInboundPolicy all-authenticated",
        ),
        (
            "      config.trellis.dev/port-inbound-policy: \"9090=all-unauthenticated\"",
            r#"config.trellis.dev/port-inbound-policy"]: port 9090: all-unauthenticated is weaker"#,
        ),
        (
            "      config.trellis.dev/outbound-mtls: opportunistic",
            r#"config.trellis.dev/outbound-mtls"]: opportunistic is weaker than floor.outboundMtls required"#,
        ),
    ] {
        let errs = errors(&floored(
            FLOOR,
            "defaultInboundPolicy: deny\noutboundMtls: required",
            annotations,
        ));
        assert_eq!(errs.len(), 1, "{annotations}: {errs:?}");
        assert!(
            errs[0].starts_with(AT) && errs[0].contains(want),
            "{annotations}: {want:?} not in {errs:?}"
        );
    }
    // At or above the floor: accepted, and the file's outboundMtls reaches
    // the proxy unless the workload says otherwise.
    for ok in [
        "      config.trellis.dev/skip-outbound-ports: 5432",
        "      config.trellis.dev/default-inbound-policy: deny",
        "      config.trellis.dev/outbound-mtls: required",
        "      example.com/other: x",
    ] {
        let text = floored(
            FLOOR,
            "defaultInboundPolicy: all-authenticated\noutboundMtls: required",
            ok,
        );
        if let Err(e) = parse(&text, "test.yaml") {
            panic!("{ok}: {e}");
        }
    }
}

#[test]
fn the_files_own_defaults_and_opt_outs_are_held_to_its_floor() {
    let errs = errors(&floored(
        "  defaultInboundPolicy: all-authenticated\n  outboundMtls: required\n  allowOptOut: false\n",
        "defaultInboundPolicy: audit",
        "      example.com/other: x",
    ));
    assert!(has(&errs, "defaultInboundPolicy: audit is weaker than floor.defaultInboundPolicy all-authenticated"), "{errs:?}");
    assert!(
        has(
            &errs,
            "outboundMtls: opportunistic is weaker than floor.outboundMtls required"
        ),
        "{errs:?}"
    );
    let unmeshed = floored("  allowOptOut: false\n", "", "      example.com/other: x")
        .replace("    ports: [8080]\n", "    meshed: false\n");
    let errs = errors(&unmeshed);
    assert!(
        has(
            &errs,
            "workloads[0] (pay/ledger).meshed: false is refused: floor.allowOptOut is false"
        ),
        "{errs:?}"
    );
    // Bad floor values are refused by the parser, naming the field.
    for bad in [
        "  skipInboundPorts: some\n",
        "  outboundMtls: sometimes\n",
        "  enforcement: warn\n",
    ] {
        match parse(&floored(bad, "", "      example.com/other: x"), "test.yaml") {
            Err(SpecError::Parse { message, .. }) => {
                assert!(message.contains("floor"), "{message}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn outbound_mtls_reaches_the_proxy_env() {
    let text = floored(
        "  skipInboundPorts: any\n",
        "outboundMtls: required",
        "      example.com/other: x",
    );
    let checked = parse(&text, "test.yaml").unwrap();
    assert_eq!(checked.file.outbound_mtls, OutboundMtls::Required);
    assert_eq!(checked.overrides[0].outbound_mtls, None);
}
