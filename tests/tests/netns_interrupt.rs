//! Ctrl-C and closed pipes: `trellis mesh up`, `trellis demo` and
//! `trellis mesh down` run as `trellis … 2>&1 | tee LOG` in a process group
//! of their own, as a shell runs a pipeline, and get SIGINT (or SIGTERM) on
//! the whole group, as a terminal sends Ctrl-C: `tee` dies, so stdout and
//! stderr become closed pipes while `trellis` cleans up. Nothing may panic
//! and nothing of the mesh may stay: no network namespace, `/etc/netns`
//! directory, netns mount, process, host link or state directory.
//!
//! And every binary's `--help`/`--version` (and a few printing commands)
//! with a closed stdout exits 0 without a panic, as `trellis-proxy --help |
//! true` does.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use trellis_e2e::{bin, eventually, repo, require_root, trellis_command, unique};

const STATE_ROOT: &str = "/run/trellis/meshes";
/// Bounds: a mesh comes up in seconds; `down` may wait 10 s for a process
/// that ignores SIGTERM, then 5 s after SIGKILL.
const UP_LIMIT: Duration = Duration::from_secs(90);
const EXIT_LIMIT: Duration = Duration::from_secs(60);
/// The exit status of a Rust panic.
const PANIC_EXIT: i32 = 101;

/// `demo` always makes the mesh named `demo`: one test at a time.
static DEMO: Mutex<()> = Mutex::new(());

/// `trellis ARGS 2>&1 | tee LOG`, both in `trellis`'s new process group
/// (or `tee` in a group of its own, out of the signal's reach).
struct Pipeline {
    trellis: Child,
    tee: Child,
    log: PathBuf,
}

impl Pipeline {
    fn start(args: &[&str], log: &Path, tee_survives: bool) -> Pipeline {
        let (reader, writer) = std::io::pipe().unwrap();
        // The parent keeps no end of the pipe: once `tee` is gone, writes
        // fail with EPIPE.
        let trellis = trellis_command(args)
            .stdin(Stdio::null())
            .stdout(writer.try_clone().unwrap())
            .stderr(writer)
            .process_group(0)
            .spawn()
            .unwrap();
        let group = if tee_survives {
            0
        } else {
            i32::try_from(trellis.id()).unwrap()
        };
        let tee = Command::new("tee")
            .arg(log)
            .stdin(reader)
            .stdout(Stdio::null())
            .process_group(group)
            .spawn()
            .unwrap();
        Pipeline {
            trellis,
            tee,
            log: log.to_path_buf(),
        }
    }

    /// The signal a terminal sends on Ctrl-C: to the whole group.
    fn signal_group(&self, sig: Signal) {
        let pgid = Pid::from_raw(i32::try_from(self.trellis.id()).unwrap());
        killpg(pgid, sig).unwrap();
    }

    fn signal_trellis(&self, sig: Signal) {
        kill(
            Pid::from_raw(i32::try_from(self.trellis.id()).unwrap()),
            sig,
        )
        .unwrap();
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) for `trellis` and `tee`; `trellis`'s status and what
    /// `tee` wrote.
    fn finish(mut self) -> (ExitStatus, String) {
        let mut status = None;
        let exited = eventually(EXIT_LIMIT, || {
            status = self.trellis.try_wait().unwrap();
            status.is_some()
        });
        if !exited {
            let _ = self.trellis.kill();
            let _ = self.trellis.wait();
        }
        let _ = eventually(EXIT_LIMIT, || self.tee.try_wait().unwrap().is_some());
        let _ = self.tee.kill();
        let _ = self.tee.wait();
        let log = self.log();
        assert!(exited, "trellis did not exit within {EXIT_LIMIT:?}:\n{log}");
        (status.unwrap(), log)
    }
}

/// Not a panic, not killed by a signal, and no panic message in what was
/// captured before the pipe closed.
fn assert_no_panic(status: ExitStatus, log: &str, what: &str) {
    assert!(
        !log.contains("panicked"),
        "{what} panicked ({status}):\n{log}"
    );
    assert_ne!(status.code(), Some(PANIC_EXIT), "{what} panicked:\n{log}");
    assert!(
        status.code().is_some(),
        "{what} was killed by a signal ({status}):\n{log}"
    );
}

fn read_state(mesh: &str) -> Option<Value> {
    let text = fs::read_to_string(Path::new(STATE_ROOT).join(mesh).join("state.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn netns_with_prefix(prefix: &str) -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// What the mesh made, as its state file says: (pid, start time) of every
/// process, and the names of its veths.
#[derive(Default, Debug)]
struct Made {
    pids: Vec<(u32, Option<u64>)>,
    veths: Vec<String>,
}

impl Made {
    fn read(mesh: &str) -> Made {
        let Some(state) = read_state(mesh) else {
            return Made::default();
        };
        let pids = ["processes", "nodeProcesses"]
            .iter()
            .flat_map(|k| state[*k].as_array().cloned().unwrap_or_default())
            .filter_map(|p| {
                let pid = u32::try_from(p["pid"].as_u64()?).ok()?;
                Some((pid, p["startTime"].as_u64()))
            })
            .collect();
        let veths = state["plan"]["pods"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p["hostVeth"].as_str().map(str::to_string))
            .collect();
        Made { pids, veths }
    }
}

/// `/proc/<pid>/stat`'s state letter and start time.
fn stat(pid: u32) -> Option<(String, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.first()?.to_string(), fields.get(19)?.parse().ok()?))
}

fn alive(pid: u32, start: Option<u64>) -> bool {
    match stat(pid) {
        Some((state, _)) if state == "Z" || state == "X" => false,
        Some((_, t)) => start.is_none_or(|s| s == t),
        None => false,
    }
}

/// Processes whose command line or environment names the mesh (its
/// namespaces, its state directory, `TRELLIS_MESH`, the node agent's
/// `--name`): what the state file did not record is found too.
fn processes_naming(mesh: &str) -> Vec<String> {
    let needles = [
        format!("trls-{mesh}-"),
        format!("{STATE_ROOT}/{mesh}/"),
        format!("TRELLIS_MESH={mesh}\0"),
        format!("--name\0{mesh}\0"),
    ];
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || !alive(pid, None) {
            continue;
        }
        let mut text = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        text.extend(fs::read(entry.path().join("environ")).unwrap_or_default());
        let text = String::from_utf8_lossy(&text);
        if needles.iter().any(|n| text.contains(n.as_str())) {
            found.push(format!("{pid}: {}", text.replace('\0', " ")));
        }
    }
    found
}

/// Everything of mesh `mesh` still on the host; empty when it is all gone.
fn leftovers(mesh: &str, made: &Made) -> Vec<String> {
    let prefix = format!("trls-{mesh}-");
    let mut left = Vec::new();
    for ns in netns_with_prefix(&prefix) {
        left.push(format!("network namespace {ns}"));
    }
    if let Ok(dir) = fs::read_dir("/etc/netns") {
        for e in dir.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                left.push(format!("/etc/netns/{name}"));
            }
        }
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    for m in mounts.lines().filter(|l| l.contains(&prefix)) {
        left.push(format!("mount: {m}"));
    }
    let state_dir = Path::new(STATE_ROOT).join(mesh);
    if state_dir.exists() {
        left.push(format!("state directory {}", state_dir.display()));
    }
    for &(pid, start) in &made.pids {
        if alive(pid, start) {
            left.push(format!("process {pid} (recorded in the state)"));
        }
    }
    for p in processes_naming(mesh) {
        left.push(format!("process {p}"));
    }
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    for veth in &made.veths {
        if links.contains(&format!(": {veth}")) {
            left.push(format!("host link {veth}"));
        }
    }
    left
}

/// Waits (bounded) until nothing of the mesh is left (processes may take a
/// moment to be reaped), then asserts it.
fn assert_nothing_left(mesh: &str, made: &Made, log: &str) {
    let mut left = Vec::new();
    eventually(Duration::from_secs(5), || {
        left = leftovers(mesh, made);
        left.is_empty()
    });
    assert!(
        left.is_empty(),
        "mesh {mesh} left behind:\n  {}\ntrellis said:\n{log}",
        left.join("\n  ")
    );
}

/// A scratch directory and a mesh file for `mesh`.
fn mesh_file(mesh: &str, body: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("trellis-e2e-{mesh}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mesh.yaml");
    fs::write(&file, format!("name: {mesh}\n{body}")).unwrap();
    (dir, file)
}

/// Downs the mesh when a test fails half-way.
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        if Path::new(STATE_ROOT).join(&self.0).exists() {
            let _ = trellis_command(&["mesh", "down", "--name", &self.0])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        trellis_e2e::remove_logs(&self.0);
    }
}

/// `web` comes up; `stuck` never listens on its port, so `up` waits for it
/// (until its `--timeout`) with everything else made and running.
const STUCK_MESH: &str = r#"
workloads:
  - name: web
    ports: [8080]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:{port}", --name, "{name}"]
  - name: stuck
    ports: [9090]
    command: [sleep, "1000000"]
services:
  - {name: web, selector: web, ports: [{port: 80, targetPort: 8080}]}
"#;

/// Every process of `STUCK_MESH` is started: identity, node agent and
/// controller on the node, a proxy and a workload in each of 2 pods.
fn all_started(state: &Value) -> bool {
    let started = |key: &str| {
        state[key]
            .as_array()
            .map(|a| a.iter().filter(|p| p["pid"].is_u64()).count())
            .unwrap_or(0)
    };
    started("processes") == 4 && started("nodeProcesses") == 3
}

/// `mesh up` waiting for a pod gets `sig` on its group: `up` removes
/// everything, says so on a closed pipe without panicking, exits 130.
fn interrupt_up_while_waiting(sig: Signal) {
    require_root("network namespaces and iptables");
    let mesh = unique("itu");
    let _guard = Guard(mesh.clone());
    let (dir, file) = mesh_file(&mesh, STUCK_MESH);
    let up = Pipeline::start(
        &[
            "mesh",
            "up",
            "-f",
            file.to_str().unwrap(),
            "--timeout",
            "120s",
        ],
        &dir.join("up.log"),
        false,
    );
    let waiting = eventually(UP_LIMIT, || {
        read_state(&mesh).is_some_and(|s| all_started(&s))
    });
    assert!(waiting, "mesh up never got to waiting:\n{}", up.log());
    let made = Made::read(&mesh);
    assert_eq!(made.pids.len(), 7, "{made:?}");
    // The reader goes first, so every word of the cleanup meets EPIPE.
    kill(Pid::from_raw(i32::try_from(up.tee.id()).unwrap()), sig).unwrap();
    up.signal_group(sig);
    let (status, log) = up.finish();
    assert_no_panic(status, &log, "mesh up");
    assert_eq!(status.code(), Some(130), "mesh up after {sig}:\n{log}");
    assert_nothing_left(&mesh, &made, &log);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn netns_interrupt_up_with_sigint_removes_everything_on_closed_pipes() {
    interrupt_up_while_waiting(Signal::SIGINT);
}

#[test]
fn netns_interrupt_up_with_sigterm_removes_everything_on_closed_pipes() {
    interrupt_up_while_waiting(Signal::SIGTERM);
}

const HELLO_MESH: &str = r#"
workloads:
  - name: hello
    replicas: 2
    ports: [8080]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:{port}", --name, "{name}"]
  - name: client
    command: [sleep, "1000000"]
services:
  - {name: hello, selector: hello, ports: [{port: 80, targetPort: 8080}]}
"#;

/// Ctrl-C as soon as the first namespace exists, wherever `up` then is
/// (making pods, starting proxies, or even done): either `up` is
/// interrupted (130) and removes everything, or it finished first (0) and
/// the mesh is up, whole.
#[test]
fn netns_interrupt_up_early_never_leaves_half_a_mesh() {
    require_root("network namespaces and iptables");
    let mesh = unique("ite");
    let _guard = Guard(mesh.clone());
    let (dir, file) = mesh_file(&mesh, HELLO_MESH);
    let up = Pipeline::start(
        &["mesh", "up", "-f", file.to_str().unwrap()],
        &dir.join("up.log"),
        false,
    );
    let prefix = format!("trls-{mesh}-");
    let started = eventually(UP_LIMIT, || !netns_with_prefix(&prefix).is_empty());
    assert!(started, "no namespace appeared:\n{}", up.log());
    up.signal_group(Signal::SIGINT);
    let (status, log) = up.finish();
    assert_no_panic(status, &log, "mesh up");
    match status.code() {
        Some(130) => assert_nothing_left(&mesh, &Made::default(), &log),
        Some(0) => {
            let state = read_state(&mesh).expect("up succeeded: the state is there");
            assert_eq!(state["phase"], "ready", "{state:#}");
            let down = trellis_command(&["mesh", "down", "--name", &mesh])
                .output()
                .unwrap();
            assert!(down.status.success(), "{down:?}");
            assert_nothing_left(&mesh, &Made::default(), &log);
        }
        other => panic!("mesh up exited {other:?} after SIGINT:\n{log}"),
    }
    let _ = fs::remove_dir_all(&dir);
}

/// Whether the `demo` mesh on this host is this pipeline's (and not, say,
/// another user's `trellis demo`).
fn ours(demo: &Pipeline) -> bool {
    read_state("demo").is_some_and(|s| s["upPid"] == demo.trellis.id())
}

/// `trellis demo 2>&1 | tee`, Ctrl-C while the mesh comes up, then while
/// traffic runs: no panic, nothing left.
#[test]
fn netns_interrupt_demo_removes_everything_on_closed_pipes() {
    require_root("network namespaces and iptables");
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let _guard = Guard("demo".into());
    let dir = std::env::temp_dir().join(format!("trellis-e2e-{}", unique("itd")));
    fs::create_dir_all(&dir).unwrap();
    // The upper bound of a failing run, not how long the demo runs.
    let args = ["demo", "--duration", "300s", "--interval", "1s"];

    // 1. While the mesh comes up.
    let demo = Pipeline::start(&args, &dir.join("demo-up.log"), false);
    let up = eventually(UP_LIMIT, || {
        ours(&demo) && !netns_with_prefix("trls-demo-").is_empty()
    });
    assert!(up, "the demo made no namespace:\n{}", demo.log());
    let made = Made::read("demo");
    demo.signal_group(Signal::SIGINT);
    let (status, log) = demo.finish();
    assert_no_panic(status, &log, "demo interrupted while coming up");
    assert!(
        matches!(status.code(), Some(0 | 130)),
        "demo exited {status}:\n{log}"
    );
    assert_nothing_left("demo", &made, &log);

    // 2. While traffic runs and the table refreshes.
    let demo = Pipeline::start(&args, &dir.join("demo-traffic.log"), false);
    let running = eventually(UP_LIMIT, || {
        ours(&demo)
            && read_state("demo").is_some_and(|s| s["phase"] == "ready")
            && demo.log().contains("inbound golden metrics")
    });
    assert!(running, "the demo never showed its table:\n{}", demo.log());
    let made = Made::read("demo");
    assert!(made.pids.len() >= 6, "{made:?}");
    demo.signal_group(Signal::SIGINT);
    let (status, log) = demo.finish();
    assert_no_panic(status, &log, "demo interrupted while running");
    assert_eq!(status.code(), Some(0), "demo exited {status}:\n{log}");
    assert_nothing_left("demo", &made, &log);
    let _ = fs::remove_dir_all(&dir);
}

/// A workload that ignores SIGTERM keeps `down` busy for its 10 s grace
/// period: a window to interrupt it in.
const STUBBORN_MESH: &str = r#"
workloads:
  - name: web
    ports: [8080]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:{port}", --name, "{name}"]
  - name: stubborn
    meshed: false
    command: [sh, -c, "trap '' TERM; exec sleep 1000000"]
"#;

fn up_ok(mesh: &str, file: &Path) -> Made {
    let out = trellis_command(&["mesh", "up", "-f", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mesh up failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Made::read(mesh)
}

fn deleting(mesh: &str) -> bool {
    read_state(mesh).is_some_and(|s| s["phase"] == "deleting")
}

/// `mesh down` interrupted (SIGINT, then SIGTERM) with its pipes closed
/// still finishes the teardown.
#[test]
fn netns_interrupt_down_still_finishes_the_teardown() {
    require_root("network namespaces and iptables");
    let mesh = unique("itn");
    let _guard = Guard(mesh.clone());
    let (dir, file) = mesh_file(&mesh, STUBBORN_MESH);
    let made = up_ok(&mesh, &file);
    // identity, node agent, controller, supervisor; web's proxy and
    // workload; stubborn's workload.
    assert_eq!(made.pids.len(), 7, "{made:?}");
    let down = Pipeline::start(
        &["mesh", "down", "--name", &mesh],
        &dir.join("down.log"),
        false,
    );
    assert!(
        eventually(EXIT_LIMIT, || deleting(&mesh)),
        "down never started:\n{}",
        down.log()
    );
    down.signal_group(Signal::SIGINT);
    let (status, log) = down.finish();
    assert_no_panic(status, &log, "mesh down");
    assert_eq!(status.code(), Some(0), "mesh down:\n{log}");
    assert_nothing_left(&mesh, &made, &log);
    let _ = fs::remove_dir_all(&dir);
}

/// Three signals abandon `down` (exit 130, saying how to finish); the next
/// `down` finishes the teardown and says so.
#[test]
fn netns_interrupt_down_abandoned_is_finished_by_the_next_down() {
    require_root("network namespaces and iptables");
    let mesh = unique("ita");
    let _guard = Guard(mesh.clone());
    let (dir, file) = mesh_file(&mesh, STUBBORN_MESH);
    let made = up_ok(&mesh, &file);
    // `tee` survives here, so each signal's answer can be waited for.
    let down = Pipeline::start(
        &["mesh", "down", "--name", &mesh],
        &dir.join("down.log"),
        true,
    );
    assert!(
        eventually(EXIT_LIMIT, || deleting(&mesh)),
        "down never started:\n{}",
        down.log()
    );
    for (sig, answer) in [
        (Signal::SIGINT, "finishing the teardown first"),
        (Signal::SIGTERM, "one more signal abandons it"),
        (Signal::SIGINT, "cleanup abandoned"),
    ] {
        down.signal_trellis(sig);
        assert!(
            eventually(EXIT_LIMIT, || down.log().contains(answer)),
            "no {answer:?} after {sig}:\n{}",
            down.log()
        );
    }
    let (status, log) = down.finish();
    assert_no_panic(status, &log, "mesh down");
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("trellis mesh down"), "{log}");
    assert!(deleting(&mesh), "the state should say a down is unfinished");

    let again = trellis_command(&["mesh", "down", "--name", &mesh])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(again.status.success(), "second down failed:\n{said}");
    assert!(
        said.contains("an earlier `down` did not finish"),
        "the second down should say it finishes the first:\n{said}"
    );
    assert_nothing_left(&mesh, &made, &said);
    let _ = fs::remove_dir_all(&dir);
}

/// Runs `bin args` with stdout (and, with `close_stderr`, stderr) a pipe
/// whose reader is already gone; returns its status and stderr.
fn with_closed_stdout(bin: &Path, args: &[&str], close_stderr: bool) -> (ExitStatus, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().unwrap());
    if close_stderr {
        cmd.stderr(writer);
    } else {
        drop(writer);
        cmd.stderr(Stdio::piped());
    }
    let out = cmd.output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `trellis-proxy --help | true` and the like, for every binary: exit 0,
/// no panic. Printing commands stop at the closed pipe; an error with a
/// closed stderr is an exit status, not a panic.
#[test]
fn closed_stdout_never_panics_any_binary() {
    let manifest = repo().join("injector/testdata/inject/deployment/input.yaml");
    let manifest = manifest.to_str().unwrap();
    let cases: &[(&str, &[&str], i32)] = &[
        ("trellis", &["--help"], 0),
        ("trellis", &["--version"], 0),
        ("trellis", &["mesh", "--help"], 0),
        ("trellis", &["mesh", "up", "--help"], 0),
        ("trellis", &["demo", "--help"], 0),
        ("trellis", &["inject", "-f", manifest], 0),
        ("trellis", &["mesh", "up", "-f", "/nonexistent.yaml"], 1),
        ("trellis", &["mesh", "status", "--name", "no-such-mesh"], 1),
        ("trellis", &["app", "--help"], 0),
        ("trellis-app", &["--help"], 0),
        ("trellis-app", &["--version"], 0),
        ("trellis-app", &["http", "--help"], 0),
        ("trellis-proxy", &["--help"], 0),
        ("trellis-proxy", &["-h"], 0),
        ("trellis-proxy", &["--version"], 0),
        ("trellis-proxy", &["init", "--help"], 0),
        ("trellis-proxy", &["--no-such-flag"], 64),
        ("trellis-identity", &["--help"], 0),
        ("trellis-identity", &["--version"], 0),
        ("trellis-identity", &["--no-such-flag"], 64),
        ("trellis-controller", &["--help"], 0),
        ("trellis-controller", &["--version"], 0),
        ("trellis-controller", &["crd"], 0),
        ("trellis-injector", &["--help"], 0),
        ("trellis-injector", &["--version"], 0),
    ];
    let mut failures = Vec::new();
    for &(name, args, code) in cases {
        for close_stderr in [false, true] {
            let (status, stderr) = with_closed_stdout(&bin(name), args, close_stderr);
            if status.code() != Some(code) || stderr.contains("panicked") {
                failures.push(format!(
                    "{name} {} (stderr closed: {close_stderr}): {status}, expected exit {code}; stderr: {stderr}",
                    args.join(" ")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
