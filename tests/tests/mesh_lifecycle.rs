//! The local mesh end to end, as root: `trellis mesh up -f`, `status`,
//! `exec`, `down`, with the real `trellis-proxy` (capture rules and sidecar)
//! and the real `trellis app` servers, in network namespaces.
//!
//! Every test here is named `netns_…` and needs root; without it, each fails
//! with "needs root: network namespaces and iptables" — never passes
//! silently. Build the binaries first: `cargo build --workspace`.
//!
//! Each test uses its own mesh name (pid-based), so they run in parallel;
//! meshes never see each other (each has its own bridge in its own node
//! namespace). Every wait is bounded; a guard downs the mesh if a test fails.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const STATE_ROOT: &str = "/run/trellis/meshes";
const UP_TIMEOUT: Duration = Duration::from_secs(90);
const DOWN_TIMEOUT: Duration = Duration::from_secs(60);
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// Fails the test unless we are root: never a silent pass.
fn require_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        panic!("needs root: network namespaces and iptables (run the e2e suite as root)");
    }
    for tool in ["ip", "iptables-restore", "setpriv", "curl"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "needs `{tool}` on PATH (Debian: apt-get install iproute2 iptables util-linux curl)"
        );
    }
}

/// `trellis`, found in the target directory this test binary was built in.
fn trellis_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    for bin in ["trellis", "trellis-proxy"] {
        assert!(
            dir.join(bin).is_file(),
            "{} is missing: run `cargo build --workspace` first",
            dir.join(bin).display()
        );
    }
    dir.join("trellis")
}

/// A mesh name unique to this test process and test.
fn mesh_name(tag: &str) -> String {
    format!("e2e{}{tag}", std::process::id())
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn ok(self, what: &str) -> Self {
        assert!(
            self.status.success(),
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs a command to completion within `timeout`, killing it past that.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn trellis(args: &[&str], timeout: Duration) -> Output {
    run_bounded(Command::new(trellis_bin()).args(args), timeout)
}

/// Polls `f` until it returns `Some`, at most `timeout`.
fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Downs the mesh when a test ends, even by panicking.
struct MeshGuard(String);

impl Drop for MeshGuard {
    fn drop(&mut self) {
        if Path::new(STATE_ROOT).join(&self.0).exists() {
            let _ = run_bounded(
                Command::new(trellis_bin()).args(["mesh", "down", "--name", &self.0]),
                DOWN_TIMEOUT,
            );
        }
        trellis_e2e::remove_logs(&self.0);
    }
}

fn write_mesh_file(name: &str, body: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("trellis-e2e-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("mesh.yaml");
    fs::write(&file, format!("name: {name}\n{body}")).expect("write mesh file");
    (dir, file)
}

/// Names of the host's network interfaces.
fn host_links() -> BTreeSet<String> {
    let out = run_bounded(
        Command::new("ip").args(["-o", "link", "show"]),
        EXEC_TIMEOUT,
    )
    .ok("ip -o link");
    out.stdout
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().to_string())
        .collect()
}

fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let out =
        run_bounded(Command::new("ip").args(["netns", "list"]), EXEC_TIMEOUT).ok("ip netns list");
    out.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

fn netns_pids(netns: &str) -> Vec<u32> {
    let out = run_bounded(
        Command::new("ip").args(["netns", "pids", netns]),
        EXEC_TIMEOUT,
    );
    out.stdout
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Running, and not a zombie.
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            !matches!(state, Some("Z" | "X") | None)
        }
        Err(_) => false,
    }
}

fn read_state(name: &str) -> Option<Value> {
    let text = fs::read_to_string(Path::new(STATE_ROOT).join(name).join("state.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Asserts `down` left nothing of mesh `name` behind.
fn assert_gone(name: &str, pids: &[u32], links_before: &BTreeSet<String>) {
    let prefix = format!("trls-{name}-");
    assert_eq!(
        netns_with_prefix(&prefix),
        Vec::<String>::new(),
        "network namespaces left"
    );
    let etc: Vec<String> = fs::read_dir("/etc/netns")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(etc, Vec::<String>::new(), "/etc/netns directories left");
    assert!(
        !Path::new(STATE_ROOT).join(name).exists(),
        "state directory left"
    );
    let living: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert_eq!(
        living,
        Vec::<u32>::new(),
        "processes of the mesh still running"
    );
    assert_eq!(&host_links(), links_before, "the host's links changed");
}

const WEB_MESH: &str = r#"
workloads:
  - name: web
    namespace: e2e
    serviceAccount: web
    replicas: 2
    ports: [8080]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:{port}", --name, "{name}"]
  - name: client
    namespace: e2e
    serviceAccount: client
    command: [sleep, infinity]
  - name: legacy
    namespace: e2e
    meshed: false
    command: [sleep, infinity]
services:
  - name: web
    namespace: e2e
    selector: web
    ports: [{port: 80, targetPort: 8080}]
"#;

#[test]
fn netns_mesh_up_status_exec_down_leaves_nothing_behind() {
    require_root();
    let name = mesh_name("a");
    let links_before = host_links();
    let (dir, file) = write_mesh_file(&name, WEB_MESH);
    let file = file.to_str().expect("utf-8 path");
    let _guard = MeshGuard(name.clone());

    let up = trellis(&["mesh", "up", "-f", file], UP_TIMEOUT).ok("mesh up");
    assert!(
        up.stderr.contains("e2e/web: ready (2/2 replicas"),
        "{}",
        up.stderr
    );

    // A second `up` of the same mesh is refused and changes nothing.
    let again = trellis(&["mesh", "up", "-f", file], UP_TIMEOUT);
    assert!(!again.status.success());
    assert!(again.stderr.contains("already up"), "{}", again.stderr);

    let status = trellis(
        &["mesh", "status", "--name", &name, "-o", "json"],
        EXEC_TIMEOUT,
    )
    .ok("mesh status");
    let st: Value = serde_json::from_str(&status.stdout).expect("status JSON");
    assert_eq!(st["ready"], true, "{st:#}");
    let pods = st["pods"].as_array().expect("pods");
    assert_eq!(pods.len(), 4);
    for pod in pods {
        assert_eq!(pod["ready"], true, "{pod:#}");
        assert!(pod["netns"]
            .as_str()
            .unwrap_or("")
            .starts_with(&format!("trls-{name}-")));
    }
    assert_eq!(pods[0]["identity"], "spiffe://cluster.local/ns/e2e/sa/web");
    assert_eq!(pods[0]["proxyReady"], true);
    assert_eq!(pods[3]["meshed"], false);
    assert_eq!(pods[3]["proxyReady"], Value::Null);
    assert_eq!(
        pods[3]["identity"],
        Value::Null,
        "an unmeshed pod has no identity"
    );

    // Meshed client → its outbound proxy → VIP DNAT → a web pod's inbound
    // proxy → the app.
    let url = "http://web.e2e.svc.cluster.local/";
    let body = trellis(
        &[
            "mesh", "exec", "--name", &name, "client", "--", "curl", "-sS", "-m", "10", url,
        ],
        EXEC_TIMEOUT,
    )
    .ok("curl from the meshed client");
    assert!(
        body.stdout.starts_with("web-"),
        "unexpected body: {:?}",
        body.stdout
    );
    // Unmeshed client, short name in its own namespace.
    let body = trellis(
        &[
            "mesh",
            "exec",
            "--name",
            &name,
            "legacy",
            "--",
            "curl",
            "-sS",
            "-m",
            "10",
            "http://web/",
        ],
        EXEC_TIMEOUT,
    )
    .ok("curl from the unmeshed client");
    assert!(
        body.stdout.starts_with("web-"),
        "unexpected body: {:?}",
        body.stdout
    );

    // Both requests went through the web pods' proxies.
    let mut inbound = 0.0;
    for pod in pods.iter().filter(|p| p["workload"] == "web") {
        let admin = pod["adminUrl"].as_str().expect("adminUrl");
        let metrics = trellis(
            &[
                "mesh",
                "exec",
                "--name",
                &name,
                "legacy",
                "--",
                "curl",
                "-sS",
                "-m",
                "10",
                &format!("{admin}/metrics"),
            ],
            EXEC_TIMEOUT,
        )
        .ok("scrape");
        inbound += metrics
            .stdout
            .lines()
            .filter(|l| {
                l.starts_with("trellis_http_requests_total{") && l.contains("direction=\"inbound\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(
        inbound >= 2.0,
        "the web proxies counted {inbound} inbound requests"
    );

    // `exec` passes the exit code through.
    let code = trellis(
        &[
            "mesh", "exec", "--name", &name, "web-1", "--", "sh", "-c", "exit 3",
        ],
        EXEC_TIMEOUT,
    );
    assert_eq!(code.status.code(), Some(3));

    let state = read_state(&name).expect("state.json");
    let mut pids: Vec<u32> = state["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .map(|p| p as u32)
        .collect();
    assert_eq!(
        pids.len(),
        2 * 3 + 1,
        "proxy and workload per meshed pod, workload per unmeshed"
    );
    for ns in netns_with_prefix(&format!("trls-{name}-")) {
        pids.extend(netns_pids(&ns));
    }

    let down = trellis(&["mesh", "down", "--name", &name], DOWN_TIMEOUT).ok("mesh down");
    assert!(down.stderr.contains("removed"), "{}", down.stderr);
    assert_gone(&name, &pids, &links_before);

    // Down again: nothing to do, and says so.
    let again = trellis(&["mesh", "down", "--name", &name], DOWN_TIMEOUT).ok("second mesh down");
    assert!(again.stderr.contains("not up"), "{}", again.stderr);
    let _ = fs::remove_dir_all(dir);
}

/// The web pods take long to listen, so `up` is still at work when killed.
const SLOW_MESH: &str = r#"
workloads:
  - name: web
    namespace: e2e
    replicas: 3
    ports: [8080]
    command: [sh, -c, "sleep 120; exec {trellis} app http --listen 0.0.0.0:{port}"]
  - name: plain
    namespace: e2e
    meshed: false
    replicas: 3
    command: [sleep, infinity]
services:
  - name: web
    namespace: e2e
    selector: web
    ports: [{port: 80, targetPort: 8080}]
"#;

/// Starts `mesh up`, SIGKILLs it once `killed_when` holds for its state
/// file, then checks `down` removes everything.
fn kill_up_then_down(name: &str, killed_when: &str, ready: impl Fn(&Value) -> bool) {
    let links_before = host_links();
    let (dir, file) = write_mesh_file(name, SLOW_MESH);
    let _guard = MeshGuard(name.to_string());
    let mut up = Command::new(trellis_bin())
        .args(["mesh", "up", "-f", file.to_str().expect("utf-8 path")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mesh up");
    eventually(UP_TIMEOUT, killed_when, || {
        read_state(name).filter(|s| ready(s))
    });
    up.kill().expect("SIGKILL mesh up");
    up.wait().expect("reap mesh up");

    let state = read_state(name).expect("state.json survives");
    assert_eq!(
        state["phase"], "creating",
        "up was killed before it finished"
    );
    let made = netns_with_prefix(&format!("trls-{name}-"));
    assert!(!made.is_empty(), "no namespace was made before the kill");
    let mut pids: Vec<u32> = state["processes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["pid"].as_u64())
                .map(|p| p as u32)
                .collect()
        })
        .unwrap_or_default();
    for ns in &made {
        pids.extend(netns_pids(ns));
    }

    let down =
        trellis(&["mesh", "down", "--name", name], DOWN_TIMEOUT).ok("mesh down after a killed up");
    assert!(down.stderr.contains("removed"), "{}", down.stderr);
    assert_gone(name, &pids, &links_before);
    let _ = fs::remove_dir_all(dir);
}

fn recorded(state: &Value, key: &str) -> usize {
    state[key].as_array().map_or(0, Vec::len)
}

#[test]
fn netns_mesh_down_cleans_up_after_up_is_killed_while_making_namespaces() {
    require_root();
    // The intent log may name a namespace not yet made; down copes.
    kill_up_then_down(
        &mesh_name("k1"),
        "state.json to record two namespaces",
        |s| recorded(s, "netns") >= 2,
    );
}

#[test]
fn netns_mesh_down_cleans_up_after_up_is_killed_while_waiting_for_pods() {
    require_root();
    // Proxies and workloads running, some of them (sh → sleep) children of
    // the recorded process: down stops their whole process groups.
    kill_up_then_down(
        &mesh_name("k2"),
        "state.json to record every process",
        |s| {
            let started = s["processes"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|p| p["pid"].is_u64()).count());
            started == 3 * 2 + 3
        },
    );
}

#[test]
fn netns_mesh_up_fails_cleanly_and_removes_what_it_made() {
    require_root();
    let name = mesh_name("f");
    let links_before = host_links();
    // An invalid file: refused before anything is made, every problem named.
    let (dir, file) = write_mesh_file(
        &name,
        "workloads:\n  - {name: a, replicas: 99, ports: [0], command: []}\n",
    );
    let bad = trellis(
        &["mesh", "up", "-f", file.to_str().expect("utf-8 path")],
        UP_TIMEOUT,
    );
    assert!(!bad.status.success());
    for needle in [
        "3 problem(s)",
        "replicas: 99",
        "ports[0]",
        "command: must not be empty",
    ] {
        assert!(
            bad.stderr.contains(needle),
            "missing {needle:?} in {}",
            bad.stderr
        );
    }
    assert!(!Path::new(STATE_ROOT).join(&name).exists());

    // A workload that exits at once: `up` shows its log and removes
    // everything it made.
    fs::write(
        &file,
        format!("name: {name}\nworkloads:\n  - {{name: oops, namespace: e2e, ports: [8080], command: [sh, -c, 'echo about to fail; exit 4']}}\n"),
    )
    .expect("rewrite mesh file");
    let _guard = MeshGuard(name.clone());
    let failed = trellis(
        &["mesh", "up", "-f", file.to_str().expect("utf-8 path")],
        UP_TIMEOUT,
    );
    assert!(!failed.status.success());
    assert!(failed.stderr.contains("about to fail"), "{}", failed.stderr);
    assert!(
        failed.stderr.contains("removing what was made"),
        "{}",
        failed.stderr
    );
    assert_gone(&name, &[], &links_before);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn netns_ipv6_pods_get_ula_addresses_reached_through_the_proxies() {
    require_root();
    let name = mesh_name("six");
    // Dual-stack listeners: `[::]` takes IPv4 and IPv6.
    let body = WEB_MESH.replace("0.0.0.0:{port}", "[::]:{port}");
    let (dir, file) = write_mesh_file(&name, &format!("ipv6: true\n{body}"));
    let _guard = MeshGuard(name.clone());
    trellis(
        &["mesh", "up", "-f", file.to_str().expect("utf-8 path")],
        UP_TIMEOUT,
    )
    .ok("mesh up");
    let status = trellis(
        &["mesh", "status", "--name", &name, "-o", "json"],
        EXEC_TIMEOUT,
    )
    .ok("mesh status");
    let st: Value = serde_json::from_str(&status.stdout).expect("status JSON");
    let web0 = st["pods"][0]["ipv6"]
        .as_str()
        .expect("web-0 has an IPv6 address")
        .to_string();
    assert!(web0.starts_with("fd77::"), "{web0}");
    let url = format!("http://[{web0}]:8080/");
    let body = trellis(
        &[
            "mesh", "exec", "--name", &name, "client", "--", "curl", "-sS", "-g", "-m", "10", &url,
        ],
        EXEC_TIMEOUT,
    )
    .ok("curl over IPv6 from the meshed client");
    assert!(
        body.stdout.starts_with("web-0"),
        "unexpected body: {:?}",
        body.stdout
    );
    trellis(&["mesh", "down", "--name", &name], DOWN_TIMEOUT).ok("mesh down");
    let _ = fs::remove_dir_all(dir);
}
