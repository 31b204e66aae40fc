// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use super::*;
use crate::check;
use crate::plan::build_next;
use crate::state::{ProcessRecord, Role, State};

/// `web` (meshed, `{web}` replicas), `client` (unmeshed), `api` (two
/// replicas); `{extra}` is spliced into the top level.
const FILE: &str = r#"
name: ap
workloads:
  - name: client
    namespace: demo
    meshed: false
    command: [sleep, infinity]
  - name: web
    namespace: demo
    serviceAccount: web
    replicas: {web}
    ports: [8080]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:8080", --name, "{name}"]
  - name: api
    namespace: demo
    replicas: 2
    ports: [9090]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:9090", --name, "{name}"]
services:
  - {name: web, namespace: demo, selector: web, ports: [{port: 80, targetPort: 8080}]}
{services}
{extra}
"#;

fn file(web: u32, services: &str, extra: &str) -> check::Checked {
    let text = FILE
        .replace("{web}", &web.to_string())
        .replace("{services}", services)
        .replace("{extra}", extra);
    check::parse(&text, "t").unwrap()
}

fn plan_of(checked: &check::Checked, previous: Option<&Plan>) -> Plan {
    let mut p = build_next(checked, "/opt/trellis", previous).unwrap();
    if let Some(old) = previous {
        carry_over(old, &mut p);
    }
    p
}

fn names(pods: &[PodPlan]) -> Vec<String> {
    pods.iter().map(|p| p.name.clone()).collect()
}

fn ips(plan: &Plan) -> BTreeMap<String, String> {
    plan.pods
        .iter()
        .map(|p| (p.name.clone(), p.ip.to_string()))
        .collect()
}

#[test]
fn scaling_keeps_every_running_pods_address_and_never_reuses_a_leaving_one() {
    let one = plan_of(&file(1, "", ""), None);
    assert_eq!(
        ips(&one),
        BTreeMap::from([
            ("client-0".into(), "10.77.0.2".into()),
            ("web-0".into(), "10.77.0.3".into()),
            ("api-0".into(), "10.77.0.4".into()),
            ("api-1".into(), "10.77.0.5".into()),
        ])
    );
    // Up to 3: api's pods keep theirs although `web` comes before them.
    let three = plan_of(&file(3, "", ""), Some(&one));
    let got = ips(&three);
    assert_eq!(got["api-0"], "10.77.0.4");
    assert_eq!(got["api-1"], "10.77.0.5");
    assert_eq!(got["web-1"], "10.77.0.6");
    assert_eq!(got["web-2"], "10.77.0.7");
    let c = diff(&one, &three).unwrap();
    assert_eq!(names(&c.add), ["web-1", "web-2"]);
    assert!(c.remove.is_empty());
    assert_eq!(c.services, ["~demo/web (endpoints)"]);
    assert_eq!(
        three.services[0].endpoints,
        ["10.77.0.3", "10.77.0.6", "10.77.0.7"].map(|a| a.parse::<std::net::Ipv4Addr>().unwrap())
    );
    // Back to 1: web-1 and web-2 go, nothing else moves.
    let back = plan_of(&file(1, "", ""), Some(&three));
    let c = diff(&three, &back).unwrap();
    assert!(c.add.is_empty());
    assert_eq!(names(&c.remove), ["web-1", "web-2"]);
    assert_eq!(ips(&back), ips(&one));
    // Up again: the freed addresses are free again.
    let again = plan_of(&file(3, "", ""), Some(&back));
    assert_eq!(ips(&again), ips(&three));
}

#[test]
fn services_routes_and_policies_change_in_place() {
    let old = plan_of(&file(1, "", ""), None);
    let api_svc =
        "  - {name: api, namespace: demo, selector: api, ports: [{port: 90, targetPort: 9090}]}";
    let route = "routes:\n  - {name: r, namespace: demo, parent: {service: web}, rules: [{}]}";
    let policy = "policies:\n  - {name: p, namespace: demo, targetWorkload: web, from: {serviceAccounts: [{name: web, namespace: demo}]}}";
    let new = plan_of(&file(1, api_svc, &format!("{route}\n{policy}")), Some(&old));
    let c = diff(&old, &new).unwrap();
    assert!(c.add.is_empty() && c.remove.is_empty());
    assert_eq!(c.services, ["+demo/api 10.96.0.2"]);
    assert!(c.routes);
    assert!(c.policies);
    assert_eq!(names(&c.policy), ["web-0"], "web's policy file changes");
    assert!(c.summary().iter().any(|l| l.contains("1 pod policy file")));

    // A service removed keeps the others' VIPs; one added later does not
    // take the VIP of one removed in the same apply.
    let two = plan_of(&file(1, api_svc, ""), None);
    let swapped = plan_of(
        &check::parse(
            &FILE
                .replace("{web}", "1")
                .replace(
                    "  - {name: web, namespace: demo, selector: web, ports: [{port: 80, targetPort: 8080}]}\n{services}",
                    "  - {name: api, namespace: demo, selector: api, ports: [{port: 90, targetPort: 9090}]}\n  - {name: api2, namespace: demo, selector: api, ports: [{port: 91, targetPort: 9090}]}",
                )
                .replace("{extra}", ""),
            "t",
        )
        .unwrap(),
        Some(&two),
    );
    let vips: BTreeMap<&str, String> = swapped
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.vip.to_string()))
        .collect();
    assert_eq!(vips["api"], "10.96.0.2");
    assert_eq!(vips["api2"], "10.96.0.3");
    let c = diff(&two, &swapped).unwrap();
    assert_eq!(c.services, ["+demo/api2 10.96.0.3", "-demo/web"]);
}

#[test]
fn the_same_file_changes_nothing() {
    let old = plan_of(&file(2, "", ""), None);
    let new = plan_of(&file(2, "", ""), Some(&old));
    assert_eq!(old, new);
    let c = diff(&old, &new).unwrap();
    assert!(c.is_empty(), "{c:?}");
    assert_eq!(c.summary(), ["nothing to change"]);
}

#[test]
fn what_cannot_change_in_place_is_refused_naming_the_field() {
    let old = plan_of(&file(1, "", ""), None);
    let cases: [(&str, &str); 7] = [
        ("trustDomain: other.local", "trustDomain"),
        ("podCidr: 10.78.0.0/16", "podCidr"),
        ("serviceCidr: 10.97.0.0/16", "serviceCidr"),
        ("ipv6: true", "ipv6"),
        ("certLifetime: 1h", "certLifetime"),
        ("defaultInboundPolicy: deny", "defaultInboundPolicy"),
        ("", ""),
    ];
    for (extra, field) in cases {
        let new = plan_of(&file(1, "", extra), Some(&old));
        match diff(&old, &new) {
            Ok(_) if field.is_empty() => {}
            Ok(c) => panic!("{extra}: accepted: {c:?}"),
            Err(r) => {
                assert!(!field.is_empty(), "refused: {r}");
                // Only the field that changed: not what follows from it
                // (identities, addresses, the services' settings).
                assert_eq!(r.0.len(), 1, "{extra}: {r}");
                assert!(r.0[0].starts_with(&format!("{field}:")), "{extra}: {r}");
                assert!(r.to_string().contains("trellis mesh down"), "{r}");
            }
        }
    }
}

#[test]
fn refusals_list_only_what_changed_with_advice_that_can_help() {
    let old = plan_of(&file(2, "", ""), None);
    let text = FILE
        .replace("{web}", "2")
        .replace("{services}", "")
        .replace("{extra}", "");
    let command = text.replace(
        "\"0.0.0.0:8080\", --name",
        "\"0.0.0.0:8080\", --verbose, --name",
    );
    // (file, the problems' leading words, in order)
    let cases: [(String, &[&str]); 5] = [
        (
            format!("trustDomain: other.local\n{text}"),
            &["trustDomain: cannot change in place (cluster.local → other.local)"],
        ),
        (
            format!("podCidr: 10.78.0.0/16\n{text}"),
            &["podCidr: cannot change in place"],
        ),
        (
            format!("trustDomain: other.local\ndefaultInboundPolicy: deny\n{text}"),
            &["trustDomain:", "defaultInboundPolicy:"],
        ),
        (
            format!("trustDomain: other.local\n{command}"),
            &["trustDomain:", "workload demo/web: command would change"],
        ),
        (
            format!("certLifetime: 2h\n{text}"),
            &["certLifetime: the identity service's setting cannot change in place"],
        ),
    ];
    for (yaml, want) in &cases {
        let new = plan_of(&check::parse(yaml, "t").unwrap(), Some(&old));
        let err = diff(&old, &new).unwrap_err();
        assert_eq!(err.0.len(), want.len(), "want {want:?}, got {err}");
        for (line, w) in err.0.iter().zip(want.iter()) {
            assert!(line.starts_with(w), "want {w:?}, got {line:?}");
        }
        assert!(
            !err.to_string()
                .contains("(all-authenticated → all-authenticated)"),
            "{err}"
        );
    }
    // The advice for a template names what can help, not scaling to 0.
    let new = plan_of(&check::parse(&command, "t").unwrap(), Some(&old));
    let err = diff(&old, &new).unwrap_err().to_string();
    assert!(!err.contains("scale the workload to 0"), "{err}");
    assert!(err.contains("new name"), "{err}");
    assert!(err.contains("`trellis mesh down` then `up`"), "{err}");
}

#[test]
fn a_running_pods_template_and_a_workloads_namespace_are_refused() {
    let old = plan_of(&file(2, "", ""), None);
    let text = FILE
        .replace("{web}", "2")
        .replace("{services}", "")
        .replace("{extra}", "");
    let cases = [
        (
            text.replace("\"0.0.0.0:8080\", --name", "\"0.0.0.0:8080\", --verbose, --name"),
            "workload demo/web: command",
        ),
        (
            text.replace("    serviceAccount: web\n", "    serviceAccount: web2\n"),
            "workload demo/web: env, proxy settings, serviceAccount",
        ),
        (
            text.replace(
                "    serviceAccount: web\n",
                "    serviceAccount: web\n    annotations: {config.trellis.dev/proxy-log-level: debug}\n",
            ),
            "workload demo/web: proxy settings",
        ),
        (
            text.replace("  - name: client\n    namespace: demo\n", "  - name: client\n    namespace: elsewhere\n"),
            "workload client: its namespace cannot change in place (demo → elsewhere)",
        ),
    ];
    for (yaml, want) in cases {
        let new = plan_of(&check::parse(&yaml, "t").unwrap(), Some(&old));
        let err = diff(&old, &new).unwrap_err();
        assert!(
            err.0.iter().any(|l| l.starts_with(want)),
            "want {want:?}, got {err}"
        );
    }
    // A policy annotation is not a template change: the policy file is
    // rewritten in place.
    let yaml = text.replace(
        "    serviceAccount: web\n",
        "    serviceAccount: web\n    annotations: {config.trellis.dev/default-inbound-policy: deny}\n",
    );
    let new = plan_of(&check::parse(&yaml, "t").unwrap(), Some(&old));
    let c = diff(&old, &new).unwrap();
    assert_eq!(names(&c.policy), ["web-0", "web-1"]);
    // A scaled-down workload whose template changes with it is fine when
    // no pod of it stays.
    let zero = FILE
        .replace("{web}", "0")
        .replace("{services}", "")
        .replace("{extra}", "")
        .replace(
            "--name, \"{name}\"]\n  - name: api",
            "--name, \"{name}\", --x]\n  - name: api",
        );
    let new = plan_of(&check::parse(&zero, "t").unwrap(), Some(&old));
    assert_eq!(names(&diff(&old, &new).unwrap().remove), ["web-0", "web-1"]);
}

#[test]
fn a_mesh_without_meshed_pods_cannot_gain_some_but_keeps_its_services_when_losing_them() {
    let plain = "name: pl\nworkloads:\n  - {name: a, meshed: false, command: [sleep, infinity]}\n";
    let old = plan_of(&check::parse(plain, "t").unwrap(), None);
    assert!(old.identity.is_none());
    let meshed = "name: pl\nworkloads:\n  - {name: a, meshed: false, command: [sleep, infinity]}\n  - {name: b, command: [sleep, infinity]}\n";
    let new = plan_of(&check::parse(meshed, "t").unwrap(), Some(&old));
    let err = diff(&old, &new).unwrap_err();
    assert!(
        err.0[0].starts_with("workloads: the file has meshed workloads"),
        "{err}"
    );

    // The other way: the identity service and controller stay.
    let old = plan_of(&check::parse(meshed, "t").unwrap(), None);
    let new = plan_of(&check::parse(plain, "t").unwrap(), Some(&old));
    assert!(new.identity.is_some() && new.controller.is_some());
    assert_eq!(names(&diff(&old, &new).unwrap().remove), ["b-0"]);
}

#[test]
fn surge_and_switch_plans_list_leaving_and_arriving_pods_as_pods_only() {
    let one = plan_of(&file(1, "", ""), None);
    let three = plan_of(&file(3, "", ""), Some(&one));
    let c = diff(&one, &three).unwrap();
    let surge = surge_plan(&one, &c);
    assert_eq!(
        names(&surge.pods),
        ["client-0", "web-0", "api-0", "api-1", "web-1", "web-2"]
    );
    assert_eq!(surge.services, one.services, "not endpoints yet");

    let c = diff(&three, &one).unwrap();
    let switch = switch_plan(&one, &c);
    assert_eq!(
        names(&switch.pods),
        ["client-0", "web-0", "api-0", "api-1", "web-1", "web-2"]
    );
    assert_eq!(switch.services, one.services, "endpoints already gone");
    assert_eq!(names(&only_pods(&one, &c.remove).pods), ["web-1", "web-2"]);
}

/// What `iptables-save` prints in a pod after `up` (capture rules elided).
fn saved(services: &[ServicePlan]) -> String {
    let rules = plan::service_rules(services);
    let mut out = String::from("# Generated by iptables-save\n");
    for line in rules.lines() {
        out.push_str(line);
        out.push('\n');
        if line == "*nat" {
            out.push_str(":PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -j TRELLIS_PROXY_OUTPUT\n");
        }
    }
    out
}

#[test]
fn service_rules_are_refilled_without_duplicating_jumps_and_stale_chains_go() {
    let one = plan_of(&file(1, "", ""), None);
    let api_svc =
        "  - {name: api, namespace: demo, selector: api, ports: [{port: 90, targetPort: 9090}]}";
    let three = plan_of(&file(3, api_svc, ""), Some(&one));
    let update = service_rules_update(&saved(&one.services), &three.services);
    assert!(!update.contains("-A PREROUTING"), "{update}");
    assert!(!update.contains("-A OUTPUT"), "{update}");
    assert!(
        update.starts_with("*nat\n:TRELLIS_SERVICES - [0:0]\n"),
        "{update}"
    );
    for ep in [
        "10.77.0.3:8080",
        "10.77.0.6:8080",
        "10.77.0.7:8080",
        "10.77.0.4:9090",
    ] {
        assert!(
            update.contains(&format!("--to-destination {ep}")),
            "{ep}: {update}"
        );
    }
    assert!(!update.contains("-X"), "{update}");

    // The api service goes: its chain is emptied and deleted.
    let back = plan_of(&file(1, "", ""), Some(&three));
    let saved3 = saved(&three.services);
    let update = service_rules_update(&saved3, &back.services);
    let api_chain = saved3
        .lines()
        .find(|l| l.contains("demo/api:90"))
        .and_then(|l| l.split(" -j ").nth(1))
        .unwrap()
        .to_string();
    assert!(
        update.contains(&format!(":{api_chain} - [0:0]\n")),
        "{update}"
    );
    assert!(
        update.ends_with(&format!("-X {api_chain}\nCOMMIT\n")),
        "{update}"
    );

    // A fresh pod (no service rules yet) gets the jumps.
    let update = service_rules_update("", &back.services);
    assert!(
        update.contains("-A PREROUTING -j TRELLIS_SERVICES\n"),
        "{update}"
    );
    assert!(
        update.contains("-A OUTPUT -j TRELLIS_SERVICES\n"),
        "{update}"
    );
}

#[test]
fn the_reject_chain_follows_services_without_endpoints() {
    let zero = plan_of(&file(0, "", ""), None);
    assert!(zero.services[0].endpoints.is_empty());
    let one = plan_of(&file(1, "", ""), Some(&zero));
    // Endpoints appear: the reject chain is emptied but its jump stays.
    let update = service_rules_update(&saved(&zero.services), &one.services);
    assert!(
        update.contains("*filter\n:TRELLIS_SERVICES_REJECT - [0:0]\nCOMMIT\n"),
        "{update}"
    );
    // They go again: the chain is refilled, and its jump is not repeated.
    let mut had = saved(&one.services);
    had.push_str("*filter\n:OUTPUT ACCEPT [0:0]\n:TRELLIS_SERVICES_REJECT - [0:0]\n-A OUTPUT -j TRELLIS_SERVICES_REJECT\nCOMMIT\n");
    let update = service_rules_update(&had, &zero.services);
    assert!(update.contains("has no endpoints"), "{update}");
    assert!(
        !update.contains("-A OUTPUT -j TRELLIS_SERVICES_REJECT"),
        "{update}"
    );
    // Never had one: the jump is added.
    let update = service_rules_update(&saved(&one.services), &zero.services);
    assert!(
        update.contains("-A OUTPUT -j TRELLIS_SERVICES_REJECT"),
        "{update}"
    );
}

#[test]
fn orphans_are_whatever_the_log_has_beyond_the_plans_pods() {
    let plan = plan_of(&file(1, "", ""), None);
    let mut state = State::new(plan.clone(), "t".into(), None);
    state.netns = std::iter::once(plan.node.netns.clone())
        .chain(plan.pods.iter().map(|p| p.netns.clone()))
        .collect();
    state.etc_dirs = plan
        .pods
        .iter()
        .map(|p| PathBuf::from("/etc/netns").join(&p.netns))
        .collect();
    assert!(orphans(&state).is_empty());
    // An apply died: web-1's directory and namespace were made, web-2's
    // directory only, and a process of web-1 was recorded.
    state
        .etc_dirs
        .push(PathBuf::from("/etc/netns/trls-ap-demo-web-1"));
    state.netns.push("trls-ap-demo-web-1".into());
    state
        .etc_dirs
        .push(PathBuf::from("/etc/netns/trls-ap-demo-web-2"));
    state.processes.push(ProcessRecord {
        netns: "trls-ap-demo-web-1".into(),
        role: Role::Proxy,
        pid: None,
        start_time: None,
        log: PathBuf::from("/x"),
        argv: vec![],
    });
    assert_eq!(
        orphans(&state),
        ["trls-ap-demo-web-1", "trls-ap-demo-web-2"]
    );
}

#[test]
fn pod_directories_of_pods_that_left_are_stale() {
    let plan = plan_of(&file(1, "", ""), None);
    let dir = &plan.identity.as_ref().unwrap().files.pods_dir;
    let entries = ["demo.web-0", "demo.web-1", "demo.api-0", "demo.client-0"].map(String::from);
    assert_eq!(
        stale_pod_dirs(&plan, dir, &entries),
        ["demo.web-1", "demo.client-0"]
    );
}
