//! From kubectl to traffic on one host: `trellis mesh up --kubernetes`
//! (etcd, kube-apiserver, kube-controller-manager, Trellis's node agent and
//! the chart), then a user's journey with `kubectl` and the files in
//! `examples/kubernetes/`, then `trellis mesh down`, which must leave
//! nothing behind. Needs root and the Kubernetes programs of
//! `scripts/build-kube.sh`.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_e2e::kube::KubeBins;
use trellis_e2e::{bin, eventually, repo, require_root, trellis_command, unique, Metrics};

/// The chart's identity service pods.
const IDENTITY: &str = "app.kubernetes.io/component=identity";

/// A Kubernetes-mode mesh; dropping it runs `trellis mesh down`.
struct KubeMesh {
    name: String,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    down: bool,
}

impl KubeMesh {
    fn up() -> KubeMesh {
        require_root("network namespaces, iptables and mounts");
        let bins = KubeBins::locate();
        let name = unique("k");
        // A pod CIDR of its own, so meshes of concurrent test processes
        // never meet (they could not anyway: nothing is routed between
        // node namespaces).
        let started = Instant::now();
        let out = trellis_command(&[
            "mesh",
            "up",
            "--kubernetes",
            "--name",
            &name,
            "--chart",
            repo().join("charts/trellis").to_str().unwrap(),
            // Proxies renew at about 70 % of it: within the test.
            "--set",
            "identity.certLifetime=60s",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
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

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--request-timeout=30s")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&a)).unwrap()
    }

    /// The pods of `ns` with label `app=<app>` (or, if `app` has a `=`,
    /// that selector).
    fn pods(&self, ns: &str, app: &str) -> Vec<Value> {
        let selector = match app.contains('=') {
            true => app.to_string(),
            false => format!("app={app}"),
        };
        let list = self.json(&["get", "pods", "-n", ns, "-l", &selector]);
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `app` in `ns` has exactly `n` pods, all Running and
    /// Ready, none terminating.
    fn wait_ready(&self, ns: &str, app: &str, n: usize, limit: Duration) {
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

    fn exec(&self, pod: &str, argv: &[&str]) -> Output {
        let mut args = vec!["mesh", "exec", "--name", &self.name, pod, "--"];
        args.extend_from_slice(argv);
        trellis_command(&args).output().unwrap()
    }

    /// The proxy's metrics of pod `ns/pod`, read from the node (as
    /// Prometheus would scrape them).
    fn metrics(&self, ns: &str, pod: &str) -> Metrics {
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

    fn down(&mut self) -> Output {
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

fn example(name: &str) -> String {
    repo()
        .join("examples/kubernetes")
        .join(name)
        .display()
        .to_string()
}

/// The first pod's name of `app`.
fn first(pods: &[Value]) -> String {
    pods[0]["metadata"]["name"].as_str().unwrap().to_string()
}

fn container_names(pod: &Value, key: &str) -> Vec<String> {
    pod["spec"][key]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// Runs `trellis-app load` in pod `ns/pod` and returns its JSON summary.
fn load(mesh: &KubeMesh, pod: &str, url: &str, rps: u32, secs: u32) -> Value {
    let app = bin("trellis-app");
    let (rps, dur) = (rps.to_string(), format!("{secs}s"));
    let out = mesh.exec(
        pod,
        &[
            app.to_str().unwrap(),
            "load",
            "--url",
            url,
            "--rps",
            &rps,
            "--duration",
            &dur,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    match last.map(serde_json::from_str::<Value>) {
        Some(Ok(v)) => v,
        _ => panic!(
            "load in {pod} printed no summary ({}): {stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Starts `trellis-app load` in pod `ns/pod` for at most `secs` seconds;
/// [`stop_load`] ends it early and reads its summary.
fn spawn_load(mesh: &KubeMesh, pod: &str, url: &str, rps: u32, secs: u32) -> std::process::Child {
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
fn stop_load(child: std::process::Child, what: &str) -> Value {
    use nix::sys::signal::{kill, Signal};
    let _ = kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    );
    trellis_e2e::json_summary(child, what)
}

/// `name`'s counter summed over the proxies of `pods` in `ns`.
fn sum_over(
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

fn names(pods: &[Value]) -> Vec<String> {
    pods.iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// What a mesh named `name` could have left: namespaces, processes, files.
fn leftovers(name: &str) -> Vec<String> {
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

#[test]
fn kube_mesh_from_kubectl_to_mtls_traffic_and_down_leaves_nothing() {
    let mut mesh = KubeMesh::up();
    let m = &mesh;

    // The chart's pods ran through the agent like any other pod.
    let system = m.json(&["get", "pods", "-n", "trellis-system"]);
    let system: Vec<&Value> = system["items"].as_array().unwrap().iter().collect();
    assert!(system.len() >= 3, "the chart's pods: {system:?}");

    m.kubectl_ok(&["create", "namespace", "demo"]);
    m.kubectl_ok(&[
        "annotate",
        "namespace",
        "demo",
        "trellis.dev/inject=enabled",
    ]);
    for f in ["server.yaml", "client.yaml", "route.yaml"] {
        m.kubectl_ok(&["apply", "-f", &example(f)]);
    }
    m.wait_ready("demo", "server", 3, Duration::from_secs(120));
    m.wait_ready("demo", "client", 1, Duration::from_secs(60));

    // Injected by the real webhook: the capture init container and the
    // proxy as a native sidecar.
    let server_pods = m.pods("demo", "server");
    for p in &server_pods {
        let inits = container_names(p, "initContainers");
        assert!(
            inits.contains(&"trellis-init".to_string())
                && inits.contains(&"trellis-proxy".to_string()),
            "not injected: {inits:?}"
        );
    }
    let client = first(&m.pods("demo", "client"));
    let client_ref = format!("demo/{client}");

    // The client's requests reach every server replica over mutual TLS,
    // with the server's identity, and are counted under the route.
    let summary = load(
        m,
        &client_ref,
        "http://server.demo.svc.cluster.local/",
        50,
        4,
    );
    assert_eq!(summary["failed"], 0, "{summary}");
    let client_metrics = m.metrics("demo", &client);
    let server_id = "spiffe://cluster.local/ns/demo/sa/server";
    let over_mtls = client_metrics.sum(
        "trellis_http_requests_total",
        &[
            ("direction", "outbound"),
            ("route", "server"),
            ("tls", "true"),
            ("peer", server_id),
        ],
    );
    assert!(
        over_mtls >= 200.0,
        "outbound requests over mTLS to {server_id} under route `server`: {over_mtls}\n{}",
        client_metrics.0
    );
    let client_id = "spiffe://cluster.local/ns/demo/sa/client";
    let mut per_replica = Vec::new();
    for p in &server_pods {
        let name = p["metadata"]["name"].as_str().unwrap();
        let n = m.metrics("demo", name).sum(
            "trellis_http_requests_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("peer", client_id),
            ],
        );
        per_replica.push((name.to_string(), n));
    }
    assert!(
        per_replica.iter().all(|(_, n)| *n > 0.0),
        "every replica must serve some of the client's requests: {per_replica:?}"
    );

    // Scale 3 → 1 → 3 and a rollout restart, under 200 requests per
    // second: not one request fails.
    let before = names(&m.pods("demo", "server"));
    let traffic = spawn_load(
        m,
        &client_ref,
        "http://server.demo.svc.cluster.local/",
        200,
        120,
    );
    let started = Instant::now();
    m.kubectl_ok(&["scale", "-n", "demo", "deployment/server", "--replicas=1"]);
    m.wait_ready("demo", "server", 1, Duration::from_secs(60));
    m.kubectl_ok(&["scale", "-n", "demo", "deployment/server", "--replicas=3"]);
    m.wait_ready("demo", "server", 3, Duration::from_secs(60));
    m.kubectl_ok(&["rollout", "restart", "-n", "demo", "deployment/server"]);
    m.kubectl_ok(&[
        "rollout",
        "status",
        "-n",
        "demo",
        "deployment/server",
        "--timeout=120s",
    ]);
    m.wait_ready("demo", "server", 3, Duration::from_secs(60));
    let took = started.elapsed();
    let summary = stop_load(traffic, "load during scale and rollout");
    eprintln!("[kube_mesh] scale 3→1→3 and rollout restart in {took:?} under load: {summary}");
    assert!(
        took < Duration::from_secs(115),
        "the load ended before the rollout did ({took:?})"
    );
    assert_eq!(
        summary["failed"], 0,
        "requests failed during scale or rollout: {summary}"
    );
    // It ran the whole time, at its rate.
    assert!(
        summary["elapsed_s"].as_f64().unwrap() >= took.as_secs_f64() - 1.0,
        "{summary}"
    );
    assert!(summary["rps"].as_f64().unwrap() >= 195.0, "{summary}");
    let after = names(&m.pods("demo", "server"));
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "the rollout replaced every pod: {before:?} → {after:?}"
    );

    // The identity service's pod deleted while traffic flows: no request
    // fails, and the proxies renew their certificates once it is back.
    let servers = names(&m.pods("demo", "server"));
    let renewed = |pods: &[String]| -> Vec<f64> {
        pods.iter()
            .map(|p| {
                m.metrics("demo", p)
                    .sum("trellis_identity_renewals_total", &[("result", "ok")])
            })
            .collect()
    };
    let traffic = spawn_load(
        m,
        &client_ref,
        "http://server.demo.svc.cluster.local/",
        100,
        150,
    );
    let identity = names(&m.pods("trellis-system", IDENTITY));
    assert_eq!(identity.len(), 1, "{identity:?}");
    m.kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        "trellis-system",
        &identity[0],
        "--wait=false",
    ]);
    let ok = eventually(Duration::from_secs(60), || {
        let now = names(&m.pods("trellis-system", IDENTITY));
        now.len() == 1 && now[0] != identity[0]
    });
    assert!(ok, "the identity pod was not replaced");
    m.wait_ready("trellis-system", IDENTITY, 1, Duration::from_secs(60));
    let mut watched: Vec<String> = vec![client.clone()];
    watched.extend(servers.iter().cloned());
    let base = renewed(&watched);
    let renewed_all = eventually(Duration::from_secs(90), || {
        renewed(&watched)
            .iter()
            .zip(&base)
            .all(|(now, was)| now > was)
    });
    let summary = stop_load(traffic, "load while the identity service was replaced");
    assert!(
        renewed_all,
        "not every proxy renewed after the identity service came back: {base:?} → {:?}",
        renewed(&watched)
    );
    assert_eq!(
        summary["failed"], 0,
        "requests failed while the identity service was replaced: {summary}"
    );

    // A pod of an unannotated namespace: no sidecar, and the Service's
    // ClusterIP still reaches the server (whose proxy admits plaintext
    // callers until a policy says otherwise).
    m.kubectl_ok(&["create", "namespace", "plain"]);
    m.kubectl_ok(&["apply", "-n", "plain", "-f", &example("plain-client.yaml")]);
    m.wait_ready("plain", "plain-client", 1, Duration::from_secs(60));
    let plain = &m.pods("plain", "plain-client")[0];
    let containers: Vec<String> = container_names(plain, "containers")
        .into_iter()
        .chain(container_names(plain, "initContainers"))
        .collect();
    assert_eq!(
        containers,
        ["client"],
        "an unannotated namespace's pod was injected"
    );
    let plain_ref = format!("plain/{}", first(&m.pods("plain", "plain-client")));
    let summary = load(
        m,
        &plain_ref,
        "http://server.demo.svc.cluster.local/",
        20,
        2,
    );
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["status"]["200"], 40, "{summary}");

    // The policy names the client's ServiceAccount only: another meshed
    // pod's requests are refused with 403, and counted by the servers'
    // proxies; the client's still pass.
    m.kubectl_ok(&["apply", "-f", &example("intruder.yaml")]);
    m.kubectl_ok(&["apply", "-f", &example("policy.yaml")]);
    m.wait_ready("demo", "intruder", 1, Duration::from_secs(60));
    let intruder = format!("demo/{}", first(&m.pods("demo", "intruder")));
    let url = "http://server.demo.svc.cluster.local/";
    let refused = eventually(Duration::from_secs(30), || {
        load(m, &intruder, url, 10, 1)["status"]["403"] == 10
    });
    assert!(refused, "the intruder's requests were not refused");
    let servers = names(&m.pods("demo", "server"));
    let denied = |m: &KubeMesh| {
        sum_over(
            m,
            "demo",
            &servers,
            "trellis_authz_denied_total",
            &[("direction", "inbound")],
        )
    };
    let denied_before = denied(m);
    let summary = load(m, &intruder, url, 20, 1);
    assert_eq!(summary["status"]["403"], 20, "{summary}");
    assert_eq!(
        denied(m) - denied_before,
        20.0,
        "each refused request is counted once"
    );
    let summary = load(m, &client_ref, url, 20, 1);
    assert_eq!(
        summary["status"]["200"], 20,
        "the client is still admitted: {summary}"
    );

    // `trellis mesh down` leaves no namespace, process or file.
    let name = mesh.name.clone();
    let out = mesh.down();
    assert!(
        out.status.success(),
        "mesh down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = leftovers(&name);
    assert!(left.is_empty(), "mesh down left: {left:#?}");
}
