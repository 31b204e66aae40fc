//! A Kubernetes-mode mesh for the tests: `trellis mesh up --kubernetes`
//! with this build's binaries, `kubectl` with the kubeconfig it printed,
//! commands in pods (`trellis mesh exec`), proxies' metrics read from the
//! node, and a check that `down` left nothing. Needs root and the
//! Kubernetes programs of `scripts/build-kube.sh`.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::kube::KubeBins;
use crate::{bin, eventually, repo, require_root, trellis_command, unique, Metrics};
use serde_json::Value;

/// The chart's identity service pods.
pub const IDENTITY: &str = "app.kubernetes.io/component=identity";

/// A Kubernetes-mode mesh; dropping it runs `trellis mesh down`.
pub struct KubeMesh {
    pub name: String,
    pub kubeconfig: PathBuf,
    kubectl: PathBuf,
    down: bool,
}

impl KubeMesh {
    /// `trellis mesh up --kubernetes` with a name of its own (and
    /// `extra` arguments), from the repository's root.
    pub fn up(extra: &[&str]) -> KubeMesh {
        require_root("network namespaces, iptables and mounts");
        let bins = KubeBins::locate();
        let name = unique("k");
        let started = Instant::now();
        let chart = repo().join("charts/trellis");
        let mut args = vec![
            "mesh",
            "up",
            "--kubernetes",
            "--name",
            &name,
            "--chart",
            chart.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = trellis_command(&args).current_dir(repo()).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        // From here on, dropping it takes the mesh down again.
        let mut mesh = KubeMesh {
            name: name.clone(),
            kubeconfig: PathBuf::new(),
            kubectl: bins.kubectl.clone(),
            down: false,
        };
        assert!(
            out.status.success(),
            "mesh up --kubernetes failed:\n{stderr}\n{stdout}"
        );
        eprintln!(
            "[kube_mesh] mesh up --kubernetes took {:.1} s:\n{stderr}",
            started.elapsed().as_secs_f64()
        );
        mesh.kubeconfig = stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("export KUBECONFIG="))
            .unwrap_or_else(|| panic!("no kubeconfig printed:\n{stdout}"))
            .into();
        mesh
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--request-timeout=30s")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `kubectl apply -f -` of `yaml`; fails the test if refused.
    pub fn apply(&self, yaml: &str) {
        let mut child = Command::new(&self.kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&a)).unwrap()
    }

    /// The pods of `ns` with label `app=<app>` (or, if `app` has a `=`,
    /// that selector).
    pub fn pods(&self, ns: &str, app: &str) -> Vec<Value> {
        let selector = match app.contains('=') {
            true => app.to_string(),
            false => format!("app={app}"),
        };
        let list = self.json(&["get", "pods", "-n", ns, "-l", &selector]);
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `app` in `ns` has exactly `n` pods, all Running and
    /// Ready, none terminating.
    pub fn wait_ready(&self, ns: &str, app: &str, n: usize, limit: Duration) {
        let ok = eventually(limit, || {
            let pods = self.pods(ns, app);
            pods.len() == n
                && pods.iter().all(|p| {
                    p["metadata"]["deletionTimestamp"].is_null()
                        && p["status"]["phase"] == "Running"
                        && p["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        });
        assert!(
            ok,
            "{ns}/{app}: not {n} Ready pods within {limit:?}:\n{}\nevents:\n{}",
            self.kubectl_ok(&["get", "pods", "-A", "-o", "wide"]),
            self.kubectl_ok(&["get", "events", "-n", ns])
        );
    }

    pub fn exec(&self, pod: &str, argv: &[&str]) -> Output {
        let mut args = vec!["mesh", "exec", "--name", &self.name, pod, "--"];
        args.extend_from_slice(argv);
        trellis_command(&args).output().unwrap()
    }

    /// The proxy's metrics of pod `ns/pod`, read from the node (as
    /// Prometheus would scrape them).
    pub fn metrics(&self, ns: &str, pod: &str) -> Metrics {
        let ip = self.json(&["get", "pod", pod, "-n", ns])["status"]["podIP"]
            .as_str()
            .unwrap()
            .to_string();
        let addr: SocketAddr = format!("{ip}:7191").parse().unwrap();
        let netns = format!("trls-{}-node", self.name);
        let mut s = trellis_mesh::sys::connect_in_netns(&netns, addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting to {addr} in {netns}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        Metrics(
            raw.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        )
    }

    pub fn down(&mut self) -> Output {
        self.down = true;
        trellis_command(&["mesh", "down", "--name", &self.name])
            .output()
            .unwrap()
    }
}

impl Drop for KubeMesh {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.down();
        }
    }
}

pub fn example(name: &str) -> String {
    repo()
        .join("examples/kubernetes")
        .join(name)
        .display()
        .to_string()
}

/// The first pod's name of `app`.
pub fn first(pods: &[Value]) -> String {
    pods[0]["metadata"]["name"].as_str().unwrap().to_string()
}

pub fn container_names(pod: &Value, key: &str) -> Vec<String> {
    pod["spec"][key]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// Runs `trellis-app load` in pod `ns/pod` and returns its JSON summary.
pub fn load(mesh: &KubeMesh, pod: &str, url: &str, rps: u32, secs: u32) -> Value {
    crate::json_summary(
        spawn_load(mesh, pod, url, rps, secs),
        &format!("load in {pod}"),
    )
}

/// Starts `trellis-app load` in pod `ns/pod` for at most `secs` seconds;
/// [`stop_load`] ends it early and reads its summary.
pub fn spawn_load(
    mesh: &KubeMesh,
    pod: &str,
    url: &str,
    rps: u32,
    secs: u32,
) -> std::process::Child {
    let app = bin("trellis-app");
    let (rps, dur) = (rps.to_string(), format!("{secs}s"));
    let mut args = vec!["mesh", "exec", "--name", &mesh.name, pod, "--"];
    let argv = [
        app.to_str().unwrap(),
        "load",
        "--url",
        url,
        "--rps",
        &rps,
        "--duration",
        &dur,
        // Enough in flight to keep the rate when a request is slow.
        "--concurrency",
        "8",
    ];
    args.extend_from_slice(&argv);
    trellis_command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// SIGTERM to a load started by [`spawn_load`] (it stops sending and
/// prints its summary), and the summary.
pub fn stop_load(child: std::process::Child, what: &str) -> Value {
    use nix::sys::signal::{kill, Signal};
    let _ = kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    );
    crate::json_summary(child, what)
}

/// `name`'s counter summed over the proxies of `pods` in `ns`.
pub fn sum_over(
    mesh: &KubeMesh,
    ns: &str,
    pods: &[String],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    pods.iter()
        .map(|p| mesh.metrics(ns, p).sum(name, labels))
        .sum()
}

pub fn names(pods: &[Value]) -> Vec<String> {
    pods.iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// What a mesh named `name` could have left: namespaces, processes, files.
pub fn leftovers(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let prefix = format!("trls-{name}-");
    for dir in ["/run/netns", "/etc/netns"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                found.push(e.path().display().to_string());
            }
        }
    }
    let state = Path::new("/run/trellis/meshes").join(name);
    if state.exists() {
        found.push(state.display().to_string());
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&format!("/run/trellis/meshes/{name}/"))
            || cmdline.contains(&format!("--name {name} "))
            || cmdline.ends_with(&format!("--name {name}"))
            || cmdline.contains(&prefix)
        {
            found.push(format!(
                "process {}: {cmdline}",
                e.file_name().to_string_lossy()
            ));
        }
    }
    found
}
