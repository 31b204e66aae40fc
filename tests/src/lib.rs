//! Harness for Trellis's end-to-end tests: a local mesh brought up with the
//! real `trellis` CLI, commands run inside its pods, and the proxies'
//! metrics read back. Tests that use it need root; [`require_root`] makes
//! them fail loudly, never pass, without it.

// Test harness: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod kube;
pub mod kube_mesh;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Fails the test unless it runs as root.
pub fn require_root(what: &str) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        uid, "0",
        "this test needs root ({what}): run the suite as root (scripts/test.sh)"
    );
}

/// Fails the test unless `tool` runs (installed by scripts/install-deps.sh).
pub fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "this test needs `{tool}`: run scripts/install-deps.sh"
    );
}

/// The repository root: of the checkout whose tests run (cargo sets
/// `CARGO_MANIFEST_DIR` for them), not of the one this library was compiled
/// in, which a build cache shared by two checkouts may have kept.
pub fn repo() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.parent().unwrap().to_path_buf()
}

/// The built `trellis` and `trellis-proxy` binaries, beside this test's.
pub fn bin(name: &str) -> PathBuf {
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// A name unique to this test process and call, short enough for the
/// mesh's namespace and interface names.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running local mesh; dropping it runs `trellis mesh down`.
pub struct Mesh {
    pub name: String,
    pub dir: PathBuf,
}

impl Mesh {
    /// Brings up the mesh `yaml` describes. `{mesh}` in it is replaced by
    /// the mesh's unique name, `{repo}` by the repository root.
    pub fn up(prefix: &str, yaml: &str) -> Mesh {
        require_root("network namespaces and iptables");
        let name = unique(prefix);
        let dir = std::env::temp_dir().join(format!("trellis-e2e-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mesh.yaml");
        let yaml = yaml
            .replace("{mesh}", &name)
            .replace("{repo}", repo().to_str().unwrap());
        std::fs::write(&file, yaml).unwrap();
        let mesh = Mesh { name, dir };
        let out = trellis(&["mesh", "up", "-f", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "trellis mesh up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        mesh
    }

    /// Runs `argv` inside `pod`'s network namespace.
    pub fn exec(&self, pod: &str, argv: &[&str]) -> Output {
        let mut args = vec!["mesh", "exec", "--name", &self.name, pod, "--"];
        args.extend_from_slice(argv);
        trellis(&args)
    }

    /// Starts `argv` inside `pod`'s network namespace in the background,
    /// its stdout and stderr piped; the caller waits for it (every command
    /// a test starts this way must be bounded, e.g. `app load --duration`).
    pub fn spawn(&self, pod: &str, argv: &[&str]) -> Child {
        let mut args = vec!["mesh", "exec", "--name", &self.name, pod, "--"];
        args.extend_from_slice(argv);
        trellis_command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs `argv` in `pod` and returns its stdout; fails the test if it fails.
    pub fn exec_ok(&self, pod: &str, argv: &[&str]) -> String {
        let out = self.exec(pod, argv);
        assert!(
            out.status.success(),
            "`{}` in {pod} failed ({}):\nstdout: {}\nstderr: {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A shell command in `pod`.
    pub fn sh(&self, pod: &str, script: &str) -> String {
        self.exec_ok(pod, &["sh", "-c", script])
    }

    /// The `/metrics` text of `pod`'s proxy, read from inside the pod over
    /// loopback (which is never captured, so reading adds no traffic).
    pub fn metrics(&self, pod: &str) -> Metrics {
        Metrics(self.exec_ok(
            pod,
            &["curl", "-sS", "--fail", "http://127.0.0.1:7191/metrics"],
        ))
    }

    /// `trellis mesh status -o json`.
    pub fn status(&self) -> serde_json::Value {
        let out = trellis(&["mesh", "status", "--name", &self.name, "-o", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// One pod's entry in `status -o json`: `web-0`, or `web` for replica 0.
    pub fn pod(&self, pod: &str) -> serde_json::Value {
        let status = self.status();
        status["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pod || (p["workload"] == pod && p["name"] == format!("{pod}-0")))
            .unwrap_or_else(|| panic!("no pod {pod} in mesh {}: {status:#}", self.name))
            .clone()
    }

    /// The pod's IPv4 address.
    pub fn ip(&self, pod: &str) -> String {
        self.pod(pod)["ip"].as_str().unwrap().to_string()
    }

    /// Runs `argv` in the mesh's node namespace (where the bridge, the
    /// identity service and the "kubelet" live); nothing there is captured.
    pub fn node_exec(&self, argv: &[&str]) -> Output {
        let node = self.status()["nodeNetns"].as_str().unwrap().to_string();
        Command::new("ip")
            .args(["netns", "exec", &node])
            .args(argv)
            .output()
            .unwrap()
    }

    /// `trellis mesh policy --name MESH POD ARGS…`: changes the pod's policy
    /// file (the proxy reloads it); returns the resulting policy.
    pub fn policy(&self, pod: &str, args: &[&str]) -> serde_json::Value {
        let mut argv = vec!["mesh", "policy", "--name", &self.name, pod];
        argv.extend_from_slice(args);
        let out = trellis(&argv);
        assert!(
            out.status.success(),
            "trellis {} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `trellis mesh apply -f FILE` with `yaml` (`{mesh}` and `{repo}`
    /// replaced as in [`Mesh::up`]), written beside the mesh's first file.
    pub fn apply(&self, yaml: &str) -> Output {
        let file = self.dir.join("applied.yaml");
        let yaml = yaml
            .replace("{mesh}", &self.name)
            .replace("{repo}", repo().to_str().unwrap());
        std::fs::write(&file, yaml).unwrap();
        trellis(&["mesh", "apply", "-f", file.to_str().unwrap()])
    }

    /// The controller's objects file (`cluster.yaml` in the mesh's state
    /// directory: a Kubernetes `List`, written as JSON, which is YAML).
    pub fn cluster_file(&self) -> serde_json::Value {
        let dir = self.status()["stateDir"].as_str().unwrap().to_string();
        let path = Path::new(&dir).join("cluster.yaml");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
    }

    /// The addresses the cluster file's EndpointSlices list for service
    /// `namespace/name`, sorted.
    pub fn cluster_endpoints(&self, namespace: &str, name: &str) -> Vec<String> {
        let list = self.cluster_file();
        let mut out: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| {
                o["kind"] == "EndpointSlice"
                    && o["metadata"]["namespace"] == namespace
                    && o["metadata"]["labels"]["kubernetes.io/service-name"] == name
            })
            .flat_map(|o| o["endpoints"].as_array().cloned().unwrap_or_default())
            .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        out.sort();
        out
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let out = trellis(&["mesh", "down", "--name", &self.name]);
        if !out.status.success() {
            eprintln!(
                "trellis mesh down --name {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        remove_logs(&self.name);
    }
}

/// Where the local mesh keeps its processes' logs (kept after `down`).
pub const LOG_ROOT: &str = "/var/log/trellis";

/// Removes the logs `down` kept of mesh `name` (tests leave no files).
pub fn remove_logs(name: &str) {
    let _ = std::fs::remove_dir_all(Path::new(LOG_ROOT).join(name));
}

pub fn trellis(args: &[&str]) -> Output {
    trellis_command(args).output().unwrap()
}

/// `trellis ARGS…`, told where this build's proxy, identity service,
/// controller and `trellis-app` (what `trellis app` runs) are.
pub fn trellis_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("trellis"));
    cmd.args(args)
        .env("TRELLIS_APP_BIN", bin("trellis-app"))
        .env("TRELLIS_PROXY_BIN", bin("trellis-proxy"))
        .env("TRELLIS_IDENTITY_BIN", bin("trellis-identity"))
        .env("TRELLIS_CONTROLLER_BIN", bin("trellis-controller"));
    cmd
}

/// Waits for a command started with [`Mesh::spawn`] and parses the last
/// line of its stdout as JSON (the `trellis app` clients' summary); fails
/// the test if it failed or printed none.
pub fn json_summary(child: Child, what: &str) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    match last.map(serde_json::from_str::<serde_json::Value>) {
        Some(Ok(v)) => v,
        _ => panic!(
            "{what} printed no JSON summary ({}):\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        ),
    }
}

/// Prometheus text, with lookups by metric name and label values.
#[derive(Debug, Clone)]
pub struct Metrics(pub String);

impl Metrics {
    /// Sum of every sample of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(parse_sample)
            .filter(|(n, ls, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| v)
            // `+ 0.0`: an empty f64 sum is -0.0, which prints oddly.
            .sum::<f64>()
            + 0.0
    }
}

/// A sample's name, labels and value.
type Sample = (String, Vec<(String, String)>, f64);

/// `name{k="v",…} value` → (name, labels, value).
fn parse_sample(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = head.split_once('{') else {
        return Some((head.to_string(), Vec::new(), value));
    };
    let body = rest.strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => val.extend(chars.next()),
                '"' => break,
                c => val.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_string(), val));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some((name.to_string(), labels, value))
}

/// Polls `check` until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_parsed_and_summed() {
        let m = Metrics(
            "# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"uote\"} 3\nx_total{a=\"2\",b=\"\"} 4\ny 7\n".into(),
        );
        assert_eq!(m.sum("x_total", &[]), 7.0);
        assert_eq!(m.sum("x_total", &[("a", "1")]), 3.0);
        assert_eq!(m.sum("x_total", &[("b", "q\"uote")]), 3.0);
        assert_eq!(m.sum("x_total", &[("b", "")]), 4.0);
        assert_eq!(m.sum("y", &[]), 7.0);
        assert_eq!(m.sum("z", &[]), 0.0);
    }
}
