//! The CNI tier: `trellis-cni` chained after the real reference plugins
//! (`bridge` with `host-local`), run by the real `cnitool` the way a
//! container runtime runs a conflist, in network namespaces made by the
//! test, reading pods from a real kube-apiserver (issue 6's harness) with a
//! ServiceAccount that may only `get` pods.
//!
//! Needs root (network namespaces, a bridge, iptables), the CNI pieces of
//! `scripts/build-cni.sh` and the Kubernetes pieces of
//! `scripts/build-kube.sh`. Without any of them every test fails, saying
//! which; none passes silently.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use trellis_core::contract::proxy_env;
use trellis_e2e::kube::{free_port, http_get, Cluster, Proc};
use trellis_e2e::{bin, eventually, require_root, unique, Metrics};

/// The pieces `scripts/build-cni.sh` built: the plugins' directory and cnitool.
fn cni_pieces() -> (PathBuf, PathBuf) {
    let cache = std::env::var("TRELLIS_CACHE").unwrap_or_else(|_| "/var/cache/trellis".into());
    let env_file = Path::new(&cache).join("cni/env");
    let text = std::fs::read_to_string(&env_file).unwrap_or_default();
    let var = |name: &str| {
        std::env::var(name).ok().or_else(|| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_string))
        })
    };
    let (Some(plugins), Some(cnitool)) = (var("TRELLIS_CNI_PLUGINS_DIR"), var("TRELLIS_CNITOOL"))
    else {
        panic!(
            "the CNI plugins and cnitool are not built ({} has no paths): run bash scripts/build-cni.sh",
            env_file.display()
        );
    };
    let (plugins, cnitool) = (PathBuf::from(plugins), PathBuf::from(cnitool));
    for p in [
        plugins.join("bridge"),
        plugins.join("host-local"),
        cnitool.clone(),
    ] {
        assert!(
            p.exists(),
            "{} is missing: run bash scripts/build-cni.sh",
            p.display()
        );
    }
    (plugins, cnitool)
}

/// A network namespace standing in for a pod sandbox, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let name = unique("trlcni");
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        Netns { name }
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    fn exec(&self, argv: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv))
    }

    /// The namespace's Trellis chains and rules, as iptables-save shows them
    /// (both variants; each must answer, so that "no rules" is never "no
    /// tool").
    fn trellis_rules(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for tool in ["iptables-nft-save", "iptables-legacy-save"] {
            let out = self.exec(&[tool, "-t", "nat"]);
            assert!(
                out.status.success(),
                "{tool} in {} failed: {} (is iptables installed? scripts/install-deps.sh)",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
            lines.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.contains("TRELLIS"))
                    .map(str::to_string),
            );
        }
        lines
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (is iproute2 installed?)"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace in the API server with pods that nothing runs (no kubelet):
/// the plugin only reads them. And a kubeconfig of a ServiceAccount bound
/// to the least the plugin needs: `get` on pods.
struct Pods {
    cluster: &'static Cluster,
    ns: String,
    kubeconfig: PathBuf,
}

impl Pods {
    fn new() -> Pods {
        let cluster = Cluster::shared();
        let ns = cluster.namespace("cni", &[], &[]);
        let role = format!("{ns}-trellis-cni");
        cluster.apply_ok(&format!(
            r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: trellis-cni, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {role}}}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {role}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}
subjects:
- {{kind: ServiceAccount, name: trellis-cni, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: trellis-cni, namespace: {ns}}}
rules:
- apiGroups: [apps]
  resources: [daemonsets]
  resourceNames: [trellis-cni]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: trellis-cni, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: trellis-cni}}
subjects:
- {{kind: ServiceAccount, name: trellis-cni, namespace: {ns}}}
"#
        ));
        assert!(!cluster.can_i(&ns, "trellis-cni", "list", "pods", None));
        let kubeconfig = cluster.kubeconfig_for(&ns, "trellis-cni");
        Pods {
            cluster,
            ns,
            kubeconfig,
        }
    }

    /// Creates pod `name` whose first init container is `init` (none if
    /// `None`), as the injector writes `trellis-init`.
    fn create(&self, name: &str, init_args: Option<&[&str]>) {
        let inits = match init_args {
            Some(args) => json!([{
                "name": "trellis-init",
                "image": "ghcr.io/trellis-mesh/trellis-proxy:0.1.0",
                "command": ["trellis-proxy"],
                "args": args,
            }]),
            None => json!([]),
        };
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {
                "initContainers": inits,
                "containers": [{"name": "app", "image": "example/app:1"}],
            },
        });
        self.cluster.apply_ok(&pod.to_string());
    }
}

/// `trellis-init`'s arguments as the injector writes them in CNI mode,
/// with `extra` flags.
fn cni_mode_args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec![
        "init",
        "--check",
        "--proxy-uid",
        "7102",
        "--iptables-mode",
        "nft",
    ];
    args.extend_from_slice(extra);
    args
}

/// A node's CNI setup: a conflist with `bridge` (+ `host-local`), into which
/// `trellis-cni install` (the chart's DaemonSet's command) chains the plugin
/// and for which it writes the plugin's kubeconfig, from the ServiceAccount
/// token and CA it is given; run with `cnitool` as a runtime runs it.
struct Chain {
    dir: PathBuf,
    net: String,
    bridge: String,
    cnitool: PathBuf,
    cni_path: String,
    /// The pod network, `10.<a>.<b>.0/24`; the bridge is `.1`.
    prefix: String,
}

impl Chain {
    fn new(pods: &Pods) -> Chain {
        let (plugins, cnitool) = cni_pieces();
        let net = unique("trellis-cni-test-");
        let dir = std::env::temp_dir().join(&net);
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["net.d", "bin", "sa"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let n = std::process::id() as usize + net.len() * 7 + unique("").len();
        let prefix = format!("10.{}.{}", 200 + n % 50, (n / 50) % 250);
        let bridge = unique("trcb");
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": net,
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "subnet": format!("{prefix}.0/24"),
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": dir.join("ipam"),
                },
            }],
        });
        std::fs::write(dir.join("net.d/10-test.conflist"), conflist.to_string()).unwrap();
        // Runtimes bring up a sandbox's `lo` with the loopback plugin, apart
        // from the pod network's conflist (which sorts first, so it is the
        // one the installer chains into).
        let lo = json!({"cniVersion": "1.0.0", "name": format!("{net}-lo"), "plugins": [{"type": "loopback"}]});
        std::fs::write(dir.join("net.d/99-loopback.conflist"), lo.to_string()).unwrap();
        let chain = Chain {
            cni_path: format!("{}:{}", plugins.display(), dir.join("bin").display()),
            dir,
            net,
            bridge,
            cnitool,
            prefix,
        };
        let out = run(&mut chain.installer(pods, &["--once"]));
        assert!(
            out.status.success(),
            "trellis-cni install --once failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        chain
    }

    /// `trellis-cni install` for this node, as the DaemonSet runs it (the
    /// node's directories under this test's own), with the ServiceAccount
    /// token and CA of `pods`' plugin account.
    fn installer(&self, pods: &Pods, extra: &[&str]) -> Command {
        let token = self.dir.join("sa/token");
        std::fs::write(
            &token,
            pods.cluster
                .token(&pods.ns, "trellis-cni", None, 3600, None),
        )
        .unwrap();
        let mut cmd = Command::new(bin("trellis-cni"));
        cmd.arg("install")
            .arg("--bin-dir")
            .arg(self.dir.join("bin"))
            .arg("--conf-dir")
            .arg(self.dir.join("net.d"))
            .arg("--host-conf-dir")
            .arg(self.dir.join("net.d"))
            .arg("--token-file")
            .arg(&token)
            .arg("--ca-file")
            .arg(pods.cluster.dir.join("ca.crt"))
            .arg("--api-server")
            .arg(&pods.cluster.server)
            .arg("--log-level")
            .arg("debug")
            .args(extra);
        cmd
    }

    /// The conflist the pod network comes from, as it is now.
    fn conflist(&self) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.dir.join("net.d/10-test.conflist")).unwrap(),
        )
        .unwrap()
    }

    /// Sets up a sandbox as a runtime does: `lo`, then the pod network;
    /// the pod network's result.
    fn sandbox(&self, netns: &Netns, pod: Option<(&str, &str)>) -> String {
        let lo = run(Command::new(&self.cnitool)
            .args(["add", &format!("{}-lo", self.net), &netns.path()])
            .env("NETCONFPATH", self.dir.join("net.d"))
            .env("CNI_PATH", &self.cni_path));
        assert!(
            lo.status.success(),
            "loopback: {}",
            String::from_utf8_lossy(&lo.stderr)
        );
        self.cnitool_ok("add", netns, pod)
    }

    /// `cnitool <verb> <net> <netns>` for pod `ns/pod` (no pod: not
    /// Kubernetes).
    fn cnitool(&self, verb: &str, netns: &Netns, pod: Option<(&str, &str)>) -> Output {
        let mut args = "IgnoreUnknown=1".to_string();
        if let Some((ns, name)) = pod {
            args += &format!(";K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}");
        }
        run(Command::new(&self.cnitool)
            .args([verb, &self.net, &netns.path()])
            .env("NETCONFPATH", self.dir.join("net.d"))
            .env("CNI_PATH", &self.cni_path)
            .env("CNI_ARGS", args))
    }

    fn cnitool_ok(&self, verb: &str, netns: &Netns, pod: Option<(&str, &str)>) -> String {
        let out = self.cnitool(verb, netns, pod);
        assert!(
            out.status.success(),
            "cnitool {verb} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The plugin's records (in its default state directory) of pods of
    /// namespace `ns`.
    fn records(&self, ns: &str) -> usize {
        let Ok(dir) = std::fs::read_dir("/var/lib/trellis-cni") else {
            return 0;
        };
        dir.flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|text| serde_json::from_str::<Value>(&text).ok())
            .filter(|record| record["pod"]["namespace"] == ns)
            .count()
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["link", "del", &self.bridge]));
        let _ = std::fs::remove_dir_all(&self.dir);
        // cnitool's cache of results (libcni's), for sandboxes a failed test
        // did not delete and for `lo`, which runtimes never delete.
        if let Ok(cached) = std::fs::read_dir("/var/lib/cni/results") {
            for entry in cached.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}-", self.net))
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// The pod IP the chain's result gave.
fn pod_ip(result: &str) -> Ipv4Addr {
    let result: Value = serde_json::from_str(result)
        .unwrap_or_else(|e| panic!("cnitool add printed no result ({e}):\n{result}"));
    let address = result["ips"][0]["address"].as_str().unwrap();
    address.split('/').next().unwrap().parse().unwrap()
}

#[test]
fn the_chain_captures_a_meshed_pod_and_leaves_others_alone() {
    require_root("network namespaces, a bridge and iptables");
    let pods = Pods::new();
    let chain = Chain::new(&pods);
    let ns = pods.ns.as_str();
    let plugins = chain.conflist()["plugins"].clone();
    assert_eq!(plugins.as_array().unwrap().len(), 2, "{plugins}");
    assert_eq!(plugins[1]["type"], "trellis-cni", "{plugins}");
    pods.create(
        "meshed",
        Some(&cni_mode_args(&["--skip-inbound-ports", "22"])),
    );
    pods.create("plain", None);
    pods.create(
        "init-mode",
        Some(&["init", "--proxy-uid", "7102", "--iptables-mode", "nft"]),
    );

    // ADD through the chain: the bridge's result comes out unchanged, and
    // only the meshed pod gets rules.
    let meshed = Netns::new();
    let plain = Netns::new();
    let init_mode = Netns::new();
    let result = chain.sandbox(&meshed, Some((ns, "meshed")));
    let ip = pod_ip(&result);
    assert!(ip.to_string().starts_with(&chain.prefix), "{result}");
    pod_ip(&chain.sandbox(&plain, Some((ns, "plain"))));
    pod_ip(&chain.sandbox(&init_mode, Some((ns, "init-mode"))));
    let rules = meshed.trellis_rules();
    assert!(
        rules
            .iter()
            .any(|r| r.contains("--dport 22") && r.contains("skip-inbound-ports 22")),
        "{rules:#?}"
    );
    assert!(
        rules.iter().any(|r| r.contains("--to-ports 7143")),
        "{rules:#?}"
    );
    assert!(
        rules.iter().any(|r| r.contains("--uid-owner 7102")),
        "{rules:#?}"
    );
    assert_eq!(plain.trellis_rules(), Vec::<String>::new());
    assert_eq!(init_mode.trellis_rules(), Vec::<String>::new());
    assert_eq!(chain.records(ns), 1);

    // What the pod's trellis-init does in CNI mode, without privilege: the
    // outbound redirect is in place.
    let check = meshed.exec(&[
        "setpriv",
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "--inh-caps",
        "-all",
        "--bounding-set",
        "-all",
        bin("trellis-proxy").to_str().unwrap(),
        "init",
        "--check",
    ]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Traffic to the pod is captured by its proxy: a request from the node
    // over the bridge reaches the app through the proxy, which counts it.
    let dir = chain.dir.join("pod");
    std::fs::create_dir_all(&dir).unwrap();
    let in_pod = |argv: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &meshed.name]).args(argv);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    };
    let _app = Proc::start(
        "app",
        in_pod(
            &[
                bin("trellis").to_str().unwrap(),
                "app",
                "http",
                "--listen",
                "0.0.0.0:8080",
            ],
            &[],
        ),
        dir.join("app.log"),
    );
    let _proxy = Proc::start(
        "proxy",
        in_pod(
            &[
                "setpriv",
                "--reuid",
                "7102",
                "--regid",
                "7102",
                "--clear-groups",
                bin("trellis-proxy").to_str().unwrap(),
            ],
            &[(proxy_env::LOG, "info")],
        ),
        dir.join("proxy.log"),
    );
    let admin = SocketAddr::from((ip, 7191));
    let app = SocketAddr::from((ip, 8080));
    let served = eventually(Duration::from_secs(30), || {
        http_get(admin, "/ready").is_some_and(|(code, _)| code == 200)
            && http_get(app, "/").is_some_and(|(code, _)| code == 200)
    });
    assert!(
        served,
        "the pod's app did not answer through its proxy: see {}",
        dir.display()
    );
    // Exactly one more request, exactly one more counted inbound (the
    // admin port is not captured, so reading metrics adds none).
    let inbound = || {
        let metrics = Metrics(http_get(admin, "/metrics").unwrap().1);
        metrics.sum(
            "trellis_http_requests_total",
            &[("direction", "inbound"), ("status_code", "200")],
        )
    };
    let before = inbound();
    assert!(before >= 1.0, "no inbound request counted");
    assert_eq!(http_get(app, "/").map(|(code, _)| code), Some(200));
    assert_eq!(inbound() - before, 1.0);

    // CHECK passes while the rules are as installed, fails naming what
    // changed once one is deleted; a pod the plugin did not set up passes.
    chain.cnitool_ok("check", &meshed, Some((ns, "meshed")));
    chain.cnitool_ok("check", &plain, Some((ns, "plain")));
    meshed.exec(&["iptables-nft", "-t", "nat", "-D", "TRELLIS_OUTBOUND", "1"]);
    let broken = chain.cnitool("check", &meshed, Some((ns, "meshed")));
    let said = String::from_utf8_lossy(&broken.stdout).to_string()
        + &String::from_utf8_lossy(&broken.stderr);
    assert!(!broken.status.success(), "{said}");
    assert!(
        said.contains("not as trellis-cni installed them") && said.contains("uid 7102"),
        "{said}"
    );

    // DEL removes the meshed pod's rules and its record; in the init-mode
    // pod the rules its own trellis-init installed are not the plugin's, and
    // stay.
    let init = init_mode.exec(&[
        bin("trellis-proxy").to_str().unwrap(),
        "init",
        "--iptables-mode",
        "nft",
        "--ipv6",
        "off",
    ]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let before = init_mode.trellis_rules();
    assert!(!before.is_empty());
    chain.cnitool_ok("del", &meshed, Some((ns, "meshed")));
    chain.cnitool_ok("del", &init_mode, Some((ns, "init-mode")));
    chain.cnitool_ok("del", &plain, Some((ns, "plain")));
    assert_eq!(meshed.trellis_rules(), Vec::<String>::new());
    assert_eq!(init_mode.trellis_rules(), before);
    assert_eq!(chain.records(ns), 0);
    // DEL again (the runtime may repeat it) is fine.
    chain.cnitool_ok("del", &meshed, Some((ns, "meshed")));
}

#[test]
fn the_installer_keeps_the_plugin_through_an_update_and_takes_it_out_on_removal() {
    require_root("a bridge for the node's conflist");
    let pods = Pods::new();
    let ns = pods.ns.as_str();
    let chain = Chain::new(&pods);
    let daemonset = format!("{ns}/trellis-cni");
    pods.cluster.apply_ok(&format!(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: trellis-cni, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: trellis-cni}}}}
  template:
    metadata: {{labels: {{app: trellis-cni}}}}
    spec:
      containers: [{{name: install, image: ghcr.io/trellis-mesh/trellis-cni:0.1.0}}]
"#
    ));
    let chained = |chain: &Chain| chain.conflist()["plugins"].as_array().unwrap().len() == 2;
    // Running its watch (its signal handlers in place), the entry in.
    let watching = |p: &Proc| p.output().contains("trellis-cni is chained");
    let installer = |run: usize| {
        let mut cmd = chain.installer(
            &pods,
            &["--daemonset", &daemonset, "--poll-interval", "50ms"],
        );
        cmd.env("KUBECONFIG", &pods.kubeconfig);
        Proc::start(
            "trellis-cni install",
            cmd,
            chain.dir.join(format!("install-{run}.log")),
        )
    };

    // SIGTERM while the DaemonSet is there (a rolling update): stays.
    let mut first = installer(1);
    assert!(
        eventually(Duration::from_secs(20), || watching(&first)),
        "{}",
        first.output()
    );
    assert!(first.stop().success(), "{}", first.output());
    assert!(chained(&chain), "{}", first.output());
    assert!(chain.dir.join("bin/trellis-cni").exists());
    assert!(
        first.output().contains("leaving trellis-cni chained"),
        "{}",
        first.output()
    );

    // SIGTERM once the DaemonSet is deleted (helm uninstall): taken out.
    pods.cluster
        .kubectl_ok(&["delete", "daemonset", "trellis-cni", "-n", ns]);
    let mut second = installer(2);
    assert!(
        eventually(Duration::from_secs(20), || watching(&second)),
        "{}",
        second.output()
    );
    assert!(chained(&chain));
    assert!(second.stop().success(), "{}", second.output());
    let plugins = chain.conflist()["plugins"].clone();
    assert_eq!(
        plugins.as_array().unwrap().len(),
        1,
        "{plugins}\n{}",
        second.output()
    );
    assert_eq!(plugins[0]["type"], "bridge");
    assert!(!chain.dir.join("bin/trellis-cni").exists());
    assert!(!chain.dir.join("net.d/trellis-cni.d").exists());
}

/// Runs the plugin as the runtime would, for one command, with `stdin`.
fn plugin(command: &str, netns: &Netns, pod: &str, stdin: &str) -> (bool, Value) {
    let mut child = Command::new(bin("trellis-cni"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", unique("ctr"))
        .env("CNI_NETNS", netns.path())
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={pod}"),
        )
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "trellis-cni printed no JSON ({e}):\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), value)
}

#[test]
fn every_bad_input_is_a_cni_error_and_changes_nothing() {
    require_root("network namespaces and iptables");
    let pods = Pods::new();
    let ns = pods.ns.as_str();
    pods.create("meshed", Some(&cni_mode_args(&[])));
    let netns = Netns::new();
    let state = std::env::temp_dir().join(unique("trellis-cni-state-"));
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": []});
    let conf = |version: &str, kubeconfig: &Path, with_prev: bool| {
        let mut conf = json!({
            "cniVersion": version, "name": "k8s-pod-network", "type": "trellis-cni",
            "kubeconfig": kubeconfig, "stateDir": state,
        });
        if with_prev {
            conf["prevResult"] = prev.clone();
        }
        conf.to_string()
    };
    // An API server nobody listens at.
    let unreachable = std::env::temp_dir().join(unique("trellis-cni-kubeconfig-"));
    let kc = std::fs::read_to_string(&pods.kubeconfig).unwrap();
    let server = kc
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_string();
    std::fs::write(
        &unreachable,
        kc.replace(&server, &format!("https://127.0.0.1:{}", free_port())),
    )
    .unwrap();
    let pod = format!("{ns};K8S_POD_NAME=meshed");

    let cases: [(&str, String, u64, &str); 5] = [
        (
            "malformed",
            "{\"cniVersion\": \"1.0.0\", ".into(),
            6,
            "not valid",
        ),
        (
            "no prevResult",
            conf("1.0.0", &pods.kubeconfig, false),
            7,
            "chained plugin",
        ),
        (
            "unknown version",
            conf("0.2.0", &pods.kubeconfig, true),
            1,
            "not supported",
        ),
        (
            "unreachable API server",
            conf("1.1.0", &unreachable, true),
            11,
            "could not read pod",
        ),
        (
            "missing kubeconfig",
            conf("1.0.0", Path::new("/nonexistent/kubeconfig"), true),
            50,
            "not readable",
        ),
    ];
    for (what, stdin, code, says) in cases {
        let (ok, error) = plugin("ADD", &netns, &pod, &stdin);
        assert!(!ok, "{what}: succeeded: {error}");
        assert_eq!(error["code"].as_u64(), Some(code), "{what}: {error}");
        assert!(
            error["msg"].as_str().unwrap().contains(says),
            "{what}: {error}"
        );
        assert!(error["cniVersion"].is_string(), "{what}: {error}");
        assert_eq!(netns.trellis_rules(), Vec::<String>::new(), "{what}");
        let records = std::fs::read_dir(&state).map(|d| d.count()).unwrap_or(0);
        assert_eq!(records, 0, "{what}: left a record");
    }

    // The same input, well formed, installs: the cases above failed for
    // their own reason.
    let (ok, result) = plugin("ADD", &netns, &pod, &conf("1.1.0", &pods.kubeconfig, true));
    assert!(ok, "{result}");
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["interfaces"], prev["interfaces"]);
    assert!(!netns.trellis_rules().is_empty());
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&unreachable);
}
