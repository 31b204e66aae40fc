//! `trellis mesh apply` end to end, as root: a running local mesh brought
//! to a changed file — replicas up and down, a service added — with the new
//! pods made as `up` makes them and the removed ones drained and removed as
//! `down` removes them; unmeshed clients reach every replica through the
//! service's virtual IP, the controller's file follows, and `down` leaves
//! nothing behind.
//!
//! Every test is named `netns_…` and fails loudly without root.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use trellis_e2e::{bin, eventually, json_summary, require_root, require_tool, Mesh};

/// `web` (meshed, `{replicas}` replicas) behind service `web`; an unmeshed
/// `plain` client and a meshed `client`. `{services}` adds services.
const MESH: &str = r#"
name: {mesh}
workloads:
  - name: plain
    namespace: ap
    meshed: false
    command: [sleep, infinity]
  - name: client
    namespace: ap
    serviceAccount: client
    command: [sleep, infinity]
  - name: web
    namespace: ap
    serviceAccount: web
    replicas: {replicas}
    ports: [8080]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:8080", --name, "{name}"]
services:
  - {name: web, namespace: ap, selector: web, ports: [{port: 80, targetPort: 8080}]}
{services}
"#;

const WEB_ALT: &str =
    "  - {name: web-alt, namespace: ap, selector: web, ports: [{port: 8000, targetPort: 8080}]}";

fn mesh_file(replicas: u32, services: &str) -> String {
    MESH.replace("{replicas}", &replicas.to_string())
        .replace("{services}", services)
}

fn up(prefix: &str, yaml: &str) -> Mesh {
    require_root("network namespaces, iptables and the proxies' uid");
    require_tool("curl");
    Mesh::up(prefix, yaml)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn apply_ok(mesh: &Mesh, yaml: &str) -> String {
    let out = mesh.apply(yaml);
    assert!(
        out.status.success(),
        "trellis mesh apply failed:\n{}",
        text(&out)
    );
    text(&out)
}

/// `web`'s pods in `status -o json`: (name, ready).
fn web_pods(mesh: &Mesh) -> Vec<(String, bool)> {
    mesh.status()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["workload"] == "web")
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["ready"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn web_ips(mesh: &Mesh) -> Vec<String> {
    let mut ips: Vec<String> = mesh.status()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["workload"] == "web")
        .map(|p| p["ip"].as_str().unwrap().to_string())
        .collect();
    ips.sort();
    ips
}

/// Which replicas answer `url` from pod `from` over `tries` requests (each
/// a new connection, so the VIP's DNAT picks anew).
fn answering(mesh: &Mesh, from: &str, url: &str, tries: u32) -> BTreeSet<String> {
    let script =
        format!("for i in $(seq 1 {tries}); do curl -sS --max-time 3 {url} || echo FAILED; done");
    mesh.sh(from, &script)
        .lines()
        .map(|l| l.split(':').next().unwrap_or(l).to_string())
        .collect()
}

fn netns_list(prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

fn etc_netns(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn netns_apply_scales_1_to_3_and_back_and_unmeshed_clients_reach_every_replica() {
    let mesh = up("ap", &mesh_file(1, ""));
    let prefix = format!("trls-{}-", mesh.name);
    let vip_url = "http://web.ap.svc.cluster.local/";
    assert_eq!(answering(&mesh, "plain", vip_url, 5), set(&["web-0"]));
    let first_ip = mesh.ip("web-0");

    // What cannot change in place is refused, and nothing changes.
    let out = mesh.apply(&mesh_file(3, "").replace(
        "name: {mesh}\n",
        "name: {mesh}\ntrustDomain: elsewhere.local\n",
    ));
    assert!(!out.status.success(), "a new trust domain was applied");
    assert!(text(&out).contains("trustDomain"), "{}", text(&out));
    assert_eq!(web_pods(&mesh).len(), 1);

    // Up to 3 replicas, and a second service.
    let said = apply_ok(&mesh, &mesh_file(3, WEB_ALT));
    assert!(said.contains("pods to add: ap/web-1, ap/web-2"), "{said}");
    let pods = web_pods(&mesh);
    assert_eq!(
        pods,
        ["web-0", "web-1", "web-2"].map(|n| (n.to_string(), true)),
        "status after apply: {:#}",
        mesh.status()
    );
    assert_eq!(mesh.ip("web-0"), first_ip, "a running pod kept its address");
    assert!(mesh.status()["ready"].as_bool().unwrap());
    // The controller's file lists the three endpoints.
    assert_eq!(mesh.cluster_endpoints("ap", "web"), web_ips(&mesh));
    assert_eq!(mesh.cluster_endpoints("ap", "web").len(), 3);
    let pods_in_file = mesh.cluster_file()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "Pod" && o["metadata"]["labels"]["app"] == "web")
        .count();
    assert_eq!(pods_in_file, 3);
    // An unmeshed client reaches all three through the VIP (the pod's DNAT
    // rules), and the new service by its name (the hosts file).
    let all = set(&["web-0", "web-1", "web-2"]);
    let mut seen = BTreeSet::new();
    let reached = eventually(Duration::from_secs(30), || {
        seen.extend(answering(&mesh, "plain", vip_url, 30));
        seen.is_superset(&all)
    });
    assert!(
        reached,
        "not every replica answered through the VIP: {seen:?}"
    );
    assert!(!seen.contains("FAILED"), "a request failed: {seen:?}");
    let alt = answering(
        &mesh,
        "plain",
        "http://web-alt.ap.svc.cluster.local:8000/",
        30,
    );
    assert!(alt.is_subset(&all) && !alt.is_empty(), "web-alt: {alt:?}");
    // A meshed client too, through its proxy and the controller.
    let via_proxy = answering(&mesh, "client", vip_url, 30);
    assert!(
        via_proxy.is_subset(&all) && via_proxy.len() >= 2,
        "{via_proxy:?}"
    );

    // Applying the same file again changes nothing.
    let again = apply_ok(&mesh, &mesh_file(3, WEB_ALT));
    assert!(again.contains("nothing to change"), "{again}");

    // Back to 1: the removed pods' namespaces and directories are gone.
    let removed: Vec<String> = ["web-1", "web-2"]
        .iter()
        .map(|n| format!("{prefix}ap-{n}"))
        .collect();
    let said = apply_ok(&mesh, &mesh_file(1, ""));
    assert!(
        said.contains("pods to remove: ap/web-1, ap/web-2"),
        "{said}"
    );
    assert_eq!(web_pods(&mesh), [("web-0".to_string(), true)]);
    let left = netns_list(&prefix);
    for ns in &removed {
        assert!(!left.contains(ns), "{ns} is still there: {left:?}");
        assert!(
            !etc_netns(&prefix).contains(ns),
            "/etc/netns/{ns} is still there"
        );
    }
    let state_dir = mesh.status()["stateDir"].as_str().unwrap().to_string();
    for pod in ["web-1", "web-2"] {
        let files = Path::new(&state_dir).join("pods").join(format!("ap.{pod}"));
        assert!(!files.exists(), "{} is still there", files.display());
    }
    assert_eq!(mesh.cluster_endpoints("ap", "web"), vec![first_ip]);
    assert_eq!(answering(&mesh, "plain", vip_url, 10), set(&["web-0"]));
    // web-alt is gone from the hosts file.
    let hosts = mesh.sh("plain", "cat /etc/hosts");
    assert!(!hosts.contains("web-alt"), "{hosts}");

    // `down` leaves nothing behind.
    let out = trellis_e2e::trellis(&["mesh", "down", "--name", &mesh.name]);
    assert!(out.status.success(), "down failed: {}", text(&out));
    assert_eq!(
        netns_list(&prefix),
        Vec::<String>::new(),
        "network namespaces left"
    );
    assert_eq!(
        etc_netns(&prefix),
        Vec::<String>::new(),
        "/etc/netns directories left"
    );
    assert!(!Path::new(&state_dir).exists(), "state directory left");
}

#[test]
fn netns_apply_scaling_3_to_1_to_3_under_500_rps_fails_no_request() {
    let mesh = up("as", &mesh_file(3, ""));
    let trellis = bin("trellis");
    let load = mesh.spawn(
        "client",
        &[
            trellis.to_str().unwrap(),
            "app",
            "load",
            "--url",
            "http://web.ap.svc.cluster.local/",
            "--rps",
            "500",
            "--duration",
            "40s",
            "--concurrency",
            "16",
        ],
    );
    let sent = || {
        mesh.metrics("client")
            .sum("trellis_http_requests_total", &[("direction", "outbound")])
    };
    let reached = |n: f64| eventually(Duration::from_secs(30), || sent() >= n);
    // Scale while the load runs: after about 4 s of it, and again after
    // about 10 s more.
    assert!(reached(2_000.0), "the load did not start");
    apply_ok(&mesh, &mesh_file(1, ""));
    assert_eq!(web_pods(&mesh).len(), 1);
    let now = sent();
    assert!(
        reached(now + 5_000.0),
        "the load stalled after scaling down"
    );
    apply_ok(&mesh, &mesh_file(3, ""));
    assert_eq!(web_pods(&mesh).len(), 3);
    let s: Value = json_summary(load, "trellis app load");
    eprintln!("scaling under load: {s}");
    assert_eq!(
        s["failed"].as_u64().unwrap(),
        0,
        "requests failed while scaling: {s}"
    );
    assert!(s["ok"].as_u64().unwrap() >= 19_000, "{s}");
}
