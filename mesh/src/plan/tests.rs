use super::*;
use crate::check;
use crate::names::{host_veth_name, netns_prefix, service_chain};

const FILE: &str = r#"
name: demo
ipv6: true
workloads:
  - name: web
    namespace: demo
    serviceAccount: web-sa
    replicas: 3
    ports: [8080]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:{port}", --name, "{name}"]
    env: {POD_IP: overridden, EXTRA: "1"}
    annotations:
      config.trellis.dev/opaque-ports: "25"
      config.trellis.dev/skip-inbound-ports: "9000"
      config.trellis.dev/proxy-log-level: debug
  - name: client
    namespace: other
    meshed: false
    command: [sleep, infinity]
  - name: idle
    namespace: demo
    replicas: 0
    ports: [9]
    command: [sleep, infinity]
services:
  - name: web
    namespace: demo
    selector: web
    ports: [{port: 80, targetPort: 8080, name: http}, {port: 8080}]
  - name: idle
    namespace: demo
    selector: idle
    ports: [{port: 9}]
"#;

fn plan() -> Plan {
    build(&check::parse(FILE, "t").unwrap(), "/opt/trellis").unwrap()
}

#[test]
fn names_and_addresses() {
    let p = plan();
    assert_eq!(p.node.netns, "trls-demo-node");
    assert_eq!(p.node.bridge, "trellis0");
    assert_eq!(p.node.gateway.to_string(), "10.77.0.1");
    assert_eq!(p.node.prefix_len, 16);
    assert_eq!(p.node.gateway_v6.unwrap().to_string(), "fd77::1");
    let names: Vec<_> = p
        .pods
        .iter()
        .map(|p| (p.qualified_name(), p.netns.as_str(), p.ip.to_string()))
        .collect();
    assert_eq!(
        names,
        vec![
            (
                "demo/web-0".into(),
                "trls-demo-demo-web-0",
                "10.77.0.2".into()
            ),
            (
                "demo/web-1".into(),
                "trls-demo-demo-web-1",
                "10.77.0.3".into()
            ),
            (
                "demo/web-2".into(),
                "trls-demo-demo-web-2",
                "10.77.0.4".into()
            ),
            (
                "other/client-0".into(),
                "trls-demo-other-client-0",
                "10.77.0.5".into()
            ),
        ]
    );
    assert_eq!(p.pods[3].ipv6.unwrap().to_string(), "fd77::5");
    for pod in &p.pods {
        assert!(
            pod.host_veth.len() <= 15 && pod.host_veth.starts_with("tv"),
            "{}",
            pod.host_veth
        );
    }
    let mut veths: Vec<_> = p.pods.iter().map(|p| p.host_veth.clone()).collect();
    veths.dedup();
    assert_eq!(veths.len(), 4);
    assert_eq!(host_veth_name("x"), host_veth_name("x"), "stable");
    assert_eq!(netns_prefix("demo"), "trls-demo-");
    assert!(p
        .pods
        .iter()
        .all(|pod| pod.netns.starts_with(&netns_prefix("demo"))));
    assert_eq!(p.services[0].vip.to_string(), "10.96.0.1");
    assert_eq!(p.services[1].vip.to_string(), "10.96.0.2");
    assert_eq!(p.services[0].fqdn(), "web.demo.svc.cluster.local");
}

#[test]
fn commands_env_identity_and_proxy() {
    let p = plan();
    let web1 = &p.pods[1];
    assert_eq!(
        web1.command,
        [
            "/opt/trellis",
            "app",
            "http",
            "--listen",
            "0.0.0.0:8080",
            "--name",
            "web-1"
        ]
    );
    assert_eq!(web1.env["POD_NAME"], "web-1");
    assert_eq!(web1.env["POD_NAMESPACE"], "demo");
    assert_eq!(web1.env["POD_IP"], "overridden", "the file's env wins");
    assert_eq!(web1.env["EXTRA"], "1");
    assert_eq!(web1.env["TRELLIS_MESH"], "demo");
    assert_eq!(web1.identity, "spiffe://cluster.local/ns/demo/sa/web-sa");
    let proxy = web1.proxy.as_ref().unwrap();
    assert_eq!(proxy.admin.to_string(), "10.77.0.3:7191");
    assert_eq!(
        proxy.init_args,
        [
            "init",
            "--inbound-port",
            "7143",
            "--outbound-port",
            "7140",
            "--admin-port",
            "7191",
            "--proxy-uid",
            "7102",
            "--skip-inbound-ports",
            "9000"
        ]
    );
    assert_eq!(proxy.env[proxy_env::OPAQUE_PORTS], "25");
    assert_eq!(proxy.env[proxy_env::LOG], "debug");
    assert_eq!(proxy.env[proxy_env::WORKLOAD], "demo/web-1");
    assert_eq!(proxy.env[proxy_env::INBOUND_LISTEN], "0.0.0.0:7143");
    assert_eq!(proxy.env[proxy_env::OUTBOUND_LISTEN], "127.0.0.1:7140");
    assert_eq!(proxy.env[proxy_env::ADMIN_LISTEN], "0.0.0.0:7191");
    let client = &p.pods[3];
    assert!(!client.meshed && client.proxy.is_none());
    assert_eq!(
        client.identity,
        "spiffe://cluster.local/ns/other/sa/default"
    );
}

#[test]
fn endpoints_follow_selectors() {
    let p = plan();
    let ips = |i: usize| {
        p.services[i]
            .endpoints
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ips(0), ["10.77.0.2", "10.77.0.3", "10.77.0.4"]);
    assert!(
        ips(1).is_empty(),
        "a workload scaled to zero has no endpoints"
    );
    assert_eq!(
        p.services[0].ports[1],
        ServicePortPlan {
            name: None,
            port: 8080,
            target_port: 8080,
            app_protocol: None,
        }
    );
}

#[test]
fn hosts_files_name_services_and_the_pod() {
    let p = plan();
    let web0 = hosts_file(&p, &p.pods[0]);
    let lines: Vec<&str> = web0.lines().collect();
    assert!(lines[0].starts_with("# Written by `trellis mesh up` for pod demo/web-0"));
    assert!(lines.contains(&"127.0.0.1\tlocalhost"));
    assert!(lines.contains(&"10.77.0.2\tweb-0"));
    assert!(lines.contains(&"fd77::2\tweb-0"));
    assert!(
        lines.contains(&"10.96.0.1\tweb.demo.svc.cluster.local web.demo.svc web.demo web"),
        "{web0}"
    );
    assert!(
        lines.contains(&"10.96.0.2\tidle.demo.svc.cluster.local idle.demo.svc idle.demo idle"),
        "{web0}"
    );
    // From another namespace, no bare service names.
    let client = hosts_file(&p, &p.pods[3]);
    assert!(
        client.contains("10.96.0.1\tweb.demo.svc.cluster.local web.demo.svc web.demo\n"),
        "{client}"
    );
    assert!(client.contains("10.77.0.5\tclient-0\n"));
    let resolv = resolv_conf(&p.pods[3]);
    assert!(resolv.contains("search other.svc.cluster.local svc.cluster.local cluster.local\n"));
    assert!(resolv.contains("nameserver 127.0.0.1\n"));
}

#[test]
fn service_rules_spread_over_endpoints() {
    let p = plan();
    let rules = service_rules(&p.services);
    let web80 = service_chain("demo", "web", 80, "tcp");
    let web8080 = service_chain("demo", "web", 8080, "tcp");
    assert!(web80.len() <= 28 && web80 != web8080);
    let expected = format!(
        "*nat
:TRELLIS_SERVICES - [0:0]
:{web80} - [0:0]
:{web8080} - [0:0]
-A PREROUTING -j TRELLIS_SERVICES
-A OUTPUT -j TRELLIS_SERVICES
-A TRELLIS_SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -m comment --comment \"demo/web:http\" -j {web80}
-A {web80} -p tcp -m statistic --mode random --probability 0.3333333333 -j DNAT --to-destination 10.77.0.2:8080
-A {web80} -p tcp -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 10.77.0.3:8080
-A {web80} -p tcp -j DNAT --to-destination 10.77.0.4:8080
-A TRELLIS_SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 8080 -m comment --comment \"demo/web:8080\" -j {web8080}
-A {web8080} -p tcp -m statistic --mode random --probability 0.3333333333 -j DNAT --to-destination 10.77.0.2:8080
-A {web8080} -p tcp -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 10.77.0.3:8080
-A {web8080} -p tcp -j DNAT --to-destination 10.77.0.4:8080
COMMIT
*filter
:TRELLIS_SERVICES_REJECT - [0:0]
-A OUTPUT -j TRELLIS_SERVICES_REJECT
-A TRELLIS_SERVICES_REJECT -d 10.96.0.2/32 -p tcp -m tcp --dport 9 -m comment --comment \"demo/idle:9 has no endpoints\" -j REJECT --reject-with tcp-reset
COMMIT
"
    );
    assert_eq!(rules, expected);
    // No services: the chain and its jumps still exist, empty.
    assert_eq!(
        service_rules(&[]),
        "*nat\n:TRELLIS_SERVICES - [0:0]\n-A PREROUTING -j TRELLIS_SERVICES\n-A OUTPUT -j TRELLIS_SERVICES\nCOMMIT\n"
    );
}

#[test]
fn finds_pods_like_kubectl() {
    let p = plan();
    assert_eq!(p.find_pod("web").unwrap().name, "web-0");
    assert_eq!(p.find_pod("web-2").unwrap().name, "web-2");
    assert_eq!(p.find_pod("demo/web-1").unwrap().name, "web-1");
    assert_eq!(p.find_pod("other/client").unwrap().name, "client-0");
    assert!(p.find_pod("demo/client").unwrap_err().contains("no pod"));
    assert!(p
        .find_pod("web-9")
        .unwrap_err()
        .contains("pods: demo/web-0"));
}

#[test]
fn ambiguous_pods_ask_for_a_namespace() {
    let yaml = "workloads:\n  - {name: web, namespace: a, command: [x]}\n  - {name: web, namespace: b, command: [x]}\n";
    let p = build(&check::parse(yaml, "t").unwrap(), "/t").unwrap();
    let err = p.find_pod("web").unwrap_err();
    assert!(
        err.contains("ambiguous") && err.contains("a/web-0") && err.contains("b/web-0"),
        "{err}"
    );
    assert_eq!(p.find_pod("b/web").unwrap().namespace, "b");
}

/// The file's `tracing` reaches every meshed proxy; a workload's
/// `config.trellis.dev/trace-*` annotations win; without a collector
/// tracing stays off (no variable).
#[test]
fn tracing_reaches_the_proxies() {
    let file = r#"
tracing: {collector: "jaeger.obs.svc.cluster.local:4317", sampling: 0.5}
workloads:
  - {name: a, command: [sleep, infinity]}
  - name: b
    command: [sleep, infinity]
    annotations:
      config.trellis.dev/trace-collector: "http://10.1.2.3:4317"
      config.trellis.dev/trace-sampling: "1"
"#;
    let p = build(&check::parse(file, "t").unwrap(), "/opt/trellis").unwrap();
    let env = |i: usize| p.pods[i].proxy.as_ref().unwrap().env.clone();
    assert_eq!(
        env(0)[proxy_env::TRACE_COLLECTOR],
        "http://jaeger.obs.svc.cluster.local:4317"
    );
    assert_eq!(env(0)[proxy_env::TRACE_SAMPLING], "0.5");
    assert_eq!(env(1)[proxy_env::TRACE_COLLECTOR], "http://10.1.2.3:4317");
    assert_eq!(env(1)[proxy_env::TRACE_SAMPLING], "1");
    assert!(!env_of_default_plan_has_tracing());

    let bad = "tracing: {collector: \"https://x:4317\", sampling: 2}\nworkloads: [{name: a, command: [sleep, infinity]}]\n";
    let errs = check::parse(bad, "t").unwrap_err().to_string();
    assert!(
        errs.contains("tracing.collector") && errs.contains("tracing.sampling"),
        "{errs}"
    );
}

fn env_of_default_plan_has_tracing() -> bool {
    plan()
        .pods
        .iter()
        .filter_map(|p| p.proxy.as_ref())
        .any(|p| {
            p.env.contains_key(proxy_env::TRACE_COLLECTOR)
                || p.env.contains_key(proxy_env::TRACE_SAMPLING)
        })
}
