//! The local mesh's supervisor end to end, as root: a pod whose proxy or
//! workload is killed is taken out of its service (a not-ready endpoint in
//! the controller's file) and restarted, `mesh status` shows it, and a
//! client's requests meanwhile fail only a few times; a workload that exits
//! during start-up fails `up` with its log, leaving nothing behind; `down`
//! keeps the logs where it says, until the next `up` of the same name.
//!
//! Every test is named `netns_…` and fails loudly without root.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use trellis_e2e::{
    bin, eventually, json_summary, require_root, require_tool, trellis, unique, Mesh, LOG_ROOT,
};

/// `web` (meshed, 2 replicas) behind service `web`, and a meshed client.
const MESH: &str = r#"
name: {mesh}
workloads:
  - name: client
    namespace: sv
    serviceAccount: client
    command: [sleep, infinity]
  - name: web
    namespace: sv
    serviceAccount: web
    replicas: 2
    ports: [8080]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:8080", --name, "{name}"]
services:
  - {name: web, namespace: sv, selector: web, ports: [{port: 80, targetPort: 8080}]}
"#;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The readiness of `ip` as an endpoint of service `sv/web` in the
/// controller's file (read directly: it is polled).
fn endpoint_ready(mesh: &Mesh, ip: &str) -> Option<bool> {
    let path = Path::new("/run/trellis/meshes")
        .join(&mesh.name)
        .join("cluster.yaml");
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    list["items"]
        .as_array()?
        .iter()
        .filter(|o| o["kind"] == "EndpointSlice" && o["metadata"]["name"] == "web-local")
        .flat_map(|o| o["endpoints"].as_array().cloned().unwrap_or_default())
        .find(|e| e["addresses"][0] == ip)
        .and_then(|e| e["conditions"]["ready"].as_bool())
}

/// The pid of `pod`'s process in role `role`.
fn pid_of(pod: &Value, role: &str) -> u32 {
    let p = pod["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == role)
        .unwrap_or_else(|| panic!("no {role} in {pod:#}"));
    u32::try_from(p["pid"].as_u64().unwrap()).unwrap()
}

/// Kills `pod`'s `role` process with SIGKILL; waits until the pod is out
/// of the service, then until the supervisor has it running, ready and
/// back in the service with `restarts` restarts; returns its status entry.
fn kill_and_see_it_restarted(mesh: &Mesh, pod: &str, role: &str, restarts: u64) -> Value {
    let before = mesh.pod(pod);
    let ip = before["ip"].as_str().unwrap().to_string();
    assert_eq!(endpoint_ready(mesh, &ip), Some(true), "{before:#}");
    let pid = pid_of(&before, role);
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -KILL {pid}");
    assert!(
        eventually(Duration::from_secs(10), || endpoint_ready(mesh, &ip)
            == Some(false)),
        "{pod} stayed a ready endpoint after its {role} was killed"
    );
    let mut last = Value::Null;
    let back = eventually(Duration::from_secs(45), || {
        last = mesh.pod(pod);
        last["state"] == "running"
            && last["ready"] == true
            && last["restarts"] == restarts
            && endpoint_ready(mesh, &ip) == Some(true)
    });
    assert!(back, "{pod} was not restarted and ready again: {last:#}");
    assert_ne!(pid_of(&last, role), pid, "{last:#}");
    assert_eq!(last["lastExit"]["role"], role, "{last:#}");
    last
}

#[test]
fn netns_supervise_restarts_killed_proxies_and_workloads_out_of_service_meanwhile() {
    require_root("network namespaces, iptables and the proxies' uid");
    require_tool("curl");
    let mesh = Mesh::up("sv", MESH);
    let trellis = bin("trellis");
    let load = mesh.spawn(
        "client",
        &[
            trellis.to_str().unwrap(),
            "app",
            "load",
            "--url",
            "http://web.sv.svc.cluster.local/",
            "--rps",
            "100",
            "--duration",
            "40s",
            "--concurrency",
            "4",
            "--timeout",
            "2s",
        ],
    );
    let sent = || {
        mesh.metrics("client")
            .sum("trellis_http_requests_total", &[("direction", "outbound")])
    };
    assert!(
        eventually(Duration::from_secs(20), || sent() >= 200.0),
        "the load did not start"
    );

    // Processes `up` started: their exit status is not the supervisor's
    // to know, only that they are gone.
    let p = kill_and_see_it_restarted(&mesh, "web-1", "proxy", 1);
    eprintln!("after the proxy was killed: {p:#}");
    let p = kill_and_see_it_restarted(&mesh, "web-1", "workload", 2);
    eprintln!("after the workload was killed: {p:#}");
    // The proxy the supervisor started: its own child, so it knows how it
    // ended. It ran for less than a minute: the second exit in a row
    // backs off longer, and meanwhile the mesh is degraded.
    let ip = mesh.ip("web-1");
    let pid = pid_of(&mesh.pod("web-1"), "proxy");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let mut status = Value::Null;
    assert!(
        eventually(Duration::from_secs(10), || {
            status = mesh.status();
            status["phase"] == "degraded"
        }),
        "the mesh was not degraded while web-1 was down: {status:#}"
    );
    assert_eq!(endpoint_ready(&mesh, &ip), Some(false));
    let table = text(&trellis_e2e::trellis(&[
        "mesh", "status", "--name", &mesh.name,
    ]));
    assert!(table.contains("DEGRADED"), "{table}");
    assert!(table.contains("no (restarting)"), "{table}");
    let mut last = Value::Null;
    assert!(
        eventually(Duration::from_secs(45), || {
            last = mesh.pod("web-1");
            last["state"] == "running" && last["restarts"] == 3 && last["ready"] == true
        }),
        "{last:#}"
    );
    assert_eq!(last["lastExit"]["status"], "signal 9 (SIGKILL)", "{last:#}");
    assert!(
        eventually(Duration::from_secs(10), || mesh.status()["phase"]
            == "ready"),
        "the mesh is not ready again"
    );
    let table = text(&trellis_e2e::trellis(&[
        "mesh", "status", "--name", &mesh.name,
    ]));
    assert!(table.contains("signal 9 (SIGKILL)"), "{table}");

    let s = json_summary(load, "trellis app load");
    eprintln!("three kills under load: {s}");
    let failed = s["failed"].as_u64().unwrap();
    assert!(
        failed <= 30,
        "{failed} requests failed over three kills (at most 10 each): {s}"
    );
    assert!(s["ok"].as_u64().unwrap() >= 3_000, "{s}");
}

/// The network namespaces whose name starts with `prefix`.
fn netns_with(prefix: &str) -> Vec<String> {
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

#[test]
fn netns_supervise_up_fails_when_a_workload_exits_during_start_up() {
    require_root("network namespaces, iptables and the proxies' uid");
    let name = unique("sx");
    let dir = std::env::temp_dir().join(format!("trellis-e2e-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mesh.yaml");
    std::fs::write(
        &file,
        MESH.replace("{mesh}", &name).replace(
            "    command: [sleep, infinity]\n",
            "    command: [sh, -c, \"echo about to exit; sleep 1; echo goodbye from the client >&2; exit 3\"]\n",
        ),
    )
    .unwrap();
    let out = trellis(&["mesh", "up", "-f", file.to_str().unwrap()]);
    let said = text(&out);
    eprintln!("{said}");
    assert!(!out.status.success(), "up succeeded: {said}");
    assert!(
        said.contains("the workload of pod sv/client-0 exited"),
        "{said}"
    );
    assert!(said.contains("exit status: 3"), "{said}");
    assert!(
        said.contains("goodbye from the client"),
        "the log's tail: {said}"
    );
    // Nothing left behind but the logs.
    assert_eq!(netns_with(&format!("trls-{name}-")), Vec::<String>::new());
    assert!(!Path::new("/run/trellis/meshes").join(&name).exists());
    assert!(
        said.contains(&format!("logs kept in {LOG_ROOT}/{name}")),
        "{said}"
    );
    let logs = Path::new(LOG_ROOT).join(&name);
    let _ = std::fs::remove_dir_all(logs);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn netns_supervise_down_keeps_the_logs_where_it_says_until_the_next_up() {
    let mesh = Mesh::up("sl", MESH);
    let logs = PathBuf::from(LOG_ROOT).join(&mesh.name);
    let workload_log = mesh.pod("web-0")["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "workload")
        .map(|p| PathBuf::from(p["log"].as_str().unwrap()))
        .unwrap();
    assert!(
        workload_log.starts_with(&logs),
        "{}",
        workload_log.display()
    );
    let out = trellis(&["mesh", "down", "--name", &mesh.name]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("logs kept in {}", logs.display())),
        "{said}"
    );
    assert!(workload_log.is_file(), "{}", workload_log.display());
    for log in [
        "node.supervisor.log",
        "node.identity.log",
        "node.controller.log",
    ] {
        assert!(logs.join(log).is_file(), "{log} in {}", logs.display());
    }
    // The next `up` of the name clears them.
    std::fs::write(logs.join("marker"), "from the last mesh").unwrap();
    let again = trellis(&[
        "mesh",
        "up",
        "-f",
        mesh.dir.join("mesh.yaml").to_str().unwrap(),
    ]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(!logs.join("marker").exists(), "the last mesh's logs stayed");
    assert!(workload_log.is_file());
    drop(mesh);
    let _ = std::fs::remove_dir_all(logs);
}
