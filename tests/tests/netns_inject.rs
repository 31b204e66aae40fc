//! What the injector writes is what the proxy needs, end to end, as root.
//!
//! A local mesh runs `web` (meshed, `all-authenticated`: only mutual TLS
//! gets in) and `inj`, a pod the mesh leaves without a proxy. The test
//! takes `inj`'s Pod object from the mesh's cluster file, runs it through
//! `trellis inject` (the webhook's own logic) with an injector
//! configuration pointing at this mesh's identity service and controller,
//! and then does what a kubelet would with the result, and nothing more:
//! runs the `trellis-init` container's command and arguments as root in
//! the pod; mounts the projected token and the trust-roots ConfigMap where
//! the patch's volume mounts say; resolves the patch's `fieldRef` and
//! `$(VAR)` environment; starts the `trellis-proxy` container's command as
//! its `runAsUser` with exactly that environment; and waits for its
//! startup probe. Then the pod's application calls `web`, and every call
//! must arrive over mutual TLS with `inj`'s ServiceAccount identity.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use trellis_core::contract::proxy_env;
use trellis_e2e::{bin, eventually, require_root, require_tool, trellis, Mesh, Metrics};

const MESH: &str = r#"
name: {mesh}
defaultInboundPolicy: all-authenticated
workloads:
  - name: web
    namespace: shop
    serviceAccount: web
    ports: [8080]
    probes: [{port: 8080, path: /healthz}]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:{port}", --name, "{name}"]
  - name: inj
    namespace: shop
    serviceAccount: orders
    meshed: false
    command: [sleep, infinity]
services:
  - {name: web, namespace: shop, selector: web, ports: [{port: 80, targetPort: 8080}]}
"#;

const WAIT: Duration = Duration::from_secs(30);
const CALLS: usize = 50;
const LOG_OVERRIDE: &str = "info,trellis_proxy::identity=debug";

/// The environment of one of the mesh's own proxies: where its identity
/// service and controller are.
fn mesh_proxy_env(mesh: &Mesh) -> BTreeMap<String, String> {
    let dir = mesh.status()["stateDir"].as_str().unwrap().to_string();
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&dir).join("state.json")).unwrap())
            .unwrap();
    let pid = state["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "proxy")
        .and_then(|p| p["pid"].as_u64())
        .expect("a running proxy in the mesh state");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    environ
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// `inj`'s Pod as the controller sees it, asking for injection.
fn inj_pod(mesh: &Mesh) -> Value {
    let cluster = mesh.cluster_file();
    let mut pod = cluster["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Pod" && o["metadata"]["labels"]["app"] == "inj")
        .expect("inj's Pod in the cluster file")
        .clone();
    let obj = pod.as_object_mut().unwrap();
    obj.remove("status");
    pod["metadata"]["annotations"]["trellis.dev/inject"] = "enabled".into();
    // An override, to see it reach the running proxy.
    pod["metadata"]["annotations"]["config.trellis.dev/proxy-log-level"] = LOG_OVERRIDE.into();
    pod
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {list}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The kubelet's part: `fieldRef`s from the pod (`status.hostIP`: the
/// node's address, `host_ip`), then `$(VAR)` references to variables
/// defined earlier in the list.
fn resolve_env(pod: &Value, env: &Value, host_ip: &str) -> Vec<(String, String)> {
    let host_ip = Value::String(host_ip.to_string());
    let mut out: Vec<(String, String)> = Vec::new();
    for e in env.as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            let v = match path {
                "metadata.namespace" => &pod["metadata"]["namespace"],
                "metadata.name" => &pod["metadata"]["name"],
                "spec.serviceAccountName" => &pod["spec"]["serviceAccountName"],
                "status.hostIP" => &host_ip,
                other => panic!("the patch uses fieldRef {other}, which this test cannot resolve"),
            };
            v.as_str().unwrap().to_string()
        } else {
            let mut v = e["value"].as_str().unwrap_or_default().to_string();
            for (k, val) in &out {
                v = v.replace(&format!("$({k})"), val);
            }
            assert!(
                !v.contains("$("),
                "{name}={v}: a reference to an undefined variable"
            );
            v
        };
        out.push((name, value));
    }
    out
}

fn quote(s: &str) -> String {
    assert!(!s.contains('\''), "{s}");
    format!("'{s}'")
}

/// The default: `trellis-proxy` as a native sidecar.
#[test]
fn netns_injected_pod_spec_runs_and_speaks_mtls() {
    injected_pod_speaks_mtls(true);
}

/// `proxy.nativeSidecar: false`, for clusters before 1.29: the proxy is a
/// plain container and the kubelet gates on its readiness probe.
#[test]
fn netns_injected_legacy_sidecar_pod_spec_runs_and_speaks_mtls() {
    injected_pod_speaks_mtls(false);
}

fn injected_pod_speaks_mtls(native_sidecar: bool) {
    require_root("network namespaces and iptables");
    for tool in ["curl", "unshare", "setpriv", "mount"] {
        require_tool(tool);
    }
    let mesh = Mesh::up("inj", MESH);
    let menv = mesh_proxy_env(&mesh);
    let server_id = &menv[proxy_env::IDENTITY_SERVER_ID];
    let trust_domain = server_id
        .strip_prefix("spiffe://")
        .and_then(|s| s.split('/').next())
        .unwrap();
    let system_ns = server_id
        .split("/ns/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap();

    // 1. `trellis inject`, configured for this mesh as the chart would
    //    configure it for a cluster.
    let work = mesh.dir.join("inject");
    std::fs::create_dir_all(&work).unwrap();
    let pod = inj_pod(&mesh);
    std::fs::write(work.join("pod.yaml"), serde_json::to_string(&pod).unwrap()).unwrap();
    let config = serde_json::json!({
        "controlPlaneNamespace": system_ns,
        "trustDomain": trust_domain,
        "proxy": {
            "identityAddr": menv[proxy_env::IDENTITY_ADDR],
            "identityServerId": server_id,
            "controllerAddr": menv[proxy_env::CONTROLLER_ADDR],
            "nativeSidecar": native_sidecar,
        },
    });
    std::fs::write(work.join("config.yaml"), config.to_string()).unwrap();
    let out = trellis(&[
        "inject",
        "--strict",
        "-f",
        work.join("pod.yaml").to_str().unwrap(),
        "--config",
        work.join("config.yaml").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "trellis inject failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected: Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    let spec = &injected["spec"];
    let init = container(&spec["initContainers"], "trellis-init");
    let proxy = if native_sidecar {
        let proxy = container(&spec["initContainers"], "trellis-proxy");
        assert_eq!(proxy["restartPolicy"], "Always", "a native sidecar");
        proxy
    } else {
        let proxy = container(&spec["containers"], "trellis-proxy");
        assert!(proxy.get("restartPolicy").is_none(), "a plain container");
        proxy
    };
    let resolve_bin = |cmd: &[String]| -> Vec<String> {
        assert_eq!(cmd[0], "trellis-proxy", "the image's binary");
        let mut argv = vec![bin("trellis-proxy").display().to_string()];
        argv.extend_from_slice(&cmd[1..]);
        argv
    };

    // 2. The init container, as root in the pod.
    let mut init_argv = resolve_bin(&strings(&init["command"]));
    init_argv.extend(strings(&init["args"]));
    let argv: Vec<&str> = init_argv.iter().map(String::as_str).collect();
    mesh.exec_ok("inj", &argv);
    let rules = mesh.exec_ok("inj", &["iptables-save", "-t", "nat"]);
    assert!(
        rules.contains("--uid-owner 7102"),
        "init installed the capture rules:\n{rules}"
    );

    // 3. The volumes: a token minted for the pod's ServiceAccount with the
    //    projection's audience, and the trust roots, where the mounts say.
    let volumes = spec["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
    let mount = |name: &str| -> String {
        let m = proxy["volumeMounts"].as_array().unwrap();
        let m = m.iter().find(|m| m["name"] == name).unwrap();
        assert_eq!(m["readOnly"], true);
        m["mountPath"].as_str().unwrap().to_string()
    };
    let token_vol = volume("trellis-identity-token");
    let sat = &token_vol["projected"]["sources"][0]["serviceAccountToken"];
    let token_path = format!(
        "{}/{}",
        mount("trellis-identity-token"),
        sat["path"].as_str().unwrap()
    );
    let roots_path = format!("{}/roots.pem", mount("trellis-trust-roots"));
    assert_eq!(
        volume("trellis-trust-roots")["configMap"]["name"],
        "trellis-trust-roots"
    );
    let state_dir = mesh.status()["stateDir"].as_str().unwrap().to_string();
    let token = Command::new(bin("trellis-identity"))
        .args(["token", "--key"])
        .arg(Path::new(&state_dir).join("token-issuer/token.key"))
        .args([
            "--namespace",
            pod["metadata"]["namespace"].as_str().unwrap(),
        ])
        .args([
            "--service-account",
            pod["spec"]["serviceAccountName"].as_str().unwrap(),
        ])
        .args(["--pod", pod["metadata"]["name"].as_str().unwrap()])
        .args(["--audience", sat["audience"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    std::fs::write(work.join("token"), &token.stdout).unwrap();
    std::fs::copy(&menv[proxy_env::TRUST_ROOTS_FILE], work.join("roots.pem")).unwrap();
    for p in [&token_path, &roots_path] {
        assert!(
            p.starts_with("/var/run/trellis/"),
            "{p}: the test mounts /var/run/trellis"
        );
    }

    // 4. The proxy container: its command, as its runAsUser, with exactly
    //    the patch's environment (plus PATH, which an image provides).
    let uid = proxy["securityContext"]["runAsUser"].as_u64().unwrap();
    // The node's address as the pod sees it: the mesh's gateway, the first
    // address of its pod range.
    let cidr = mesh.status()["podCidr"].as_str().unwrap().to_string();
    let net: std::net::Ipv4Addr = cidr.split('/').next().unwrap().parse().unwrap();
    let host_ip = std::net::Ipv4Addr::from(u32::from(net) + 1).to_string();
    let env = resolve_env(&pod, &proxy["env"], &host_ip);
    let vars: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        vars[proxy_env::IDENTITY],
        format!("spiffe://{trust_domain}/ns/shop/sa/orders")
    );
    assert_eq!(vars[proxy_env::IDENTITY_TOKEN_FILE], token_path);
    assert_eq!(vars[proxy_env::TRUST_ROOTS_FILE], roots_path);
    let proxy_argv = resolve_bin(&strings(&proxy["command"]));
    let bin_dir = bin("trellis-proxy").parent().unwrap().display().to_string();
    let mut assignments = vec![format!("PATH={bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")];
    assignments.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    let pidfile = work.join("proxy.pid");
    let script = format!(
        "set -e; echo $$ > {pidfile}; mount -t tmpfs tmpfs /var/run/trellis; \
         mkdir -p {tdir} {rdir}; cp {tok} {token_path}; cp {roots} {roots_path}; \
         chmod 0444 {token_path} {roots_path}; \
         exec setpriv --reuid {uid} --regid {uid} --clear-groups env -i {vars} {argv}",
        pidfile = quote(pidfile.to_str().unwrap()),
        tdir = quote(Path::new(&token_path).parent().unwrap().to_str().unwrap()),
        rdir = quote(Path::new(&roots_path).parent().unwrap().to_str().unwrap()),
        tok = quote(work.join("token").to_str().unwrap()),
        roots = quote(work.join("roots.pem").to_str().unwrap()),
        token_path = quote(&token_path),
        roots_path = quote(&roots_path),
        vars = assignments
            .iter()
            .map(|a| quote(a))
            .collect::<Vec<_>>()
            .join(" "),
        argv = proxy_argv
            .iter()
            .map(|a| quote(a))
            .collect::<Vec<_>>()
            .join(" "),
    );
    let mut child = mesh.spawn(
        "inj",
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ],
    );
    let mut stop = Stopper {
        child: Some(&mut child),
        pidfile: &pidfile,
    };

    // 5. The startup probe, as the kubelet would run it.
    // The kubelet gates the pod's containers on the native sidecar's
    // startup probe, and a plain container's traffic on its readiness.
    let probe = if native_sidecar {
        &proxy["startupProbe"]["httpGet"]
    } else {
        &proxy["readinessProbe"]["httpGet"]
    };
    let url = format!(
        "http://127.0.0.1:{}{}",
        probe["port"].as_u64().unwrap(),
        probe["path"].as_str().unwrap()
    );
    let ready = eventually(WAIT, || {
        mesh.exec("inj", &["curl", "-sf", "-m", "2", &url])
            .status
            .success()
    });
    if !ready {
        let logs = stop.finish();
        panic!("the injected proxy never passed its startup probe {url}:\n{logs}");
    }
    let identity: Value = serde_json::from_str(
        &mesh.exec_ok("inj", &["curl", "-sf", "http://127.0.0.1:7191/identity"]),
    )
    .unwrap();
    assert_eq!(
        identity["identity"],
        vars[proxy_env::IDENTITY],
        "{identity}"
    );

    // 6. The application calls web (only mTLS gets in); every call works.
    let script = format!(
        "ok=0; for i in $(seq {CALLS}); do \
           curl -sf -m 5 -o /dev/null http://web.shop.svc.cluster.local/ && ok=$((ok+1)); \
         done; echo $ok"
    );
    let ok: usize = mesh.sh("inj", &script).trim().parse().unwrap();
    assert_eq!(ok, CALLS, "calls from the injected pod that succeeded");
    let peer = vars[proxy_env::IDENTITY];
    let web = mesh.metrics("web");
    let inbound = web.sum(
        "trellis_http_requests_total",
        &[("direction", "inbound"), ("tls", "true"), ("peer", peer)],
    );
    assert_eq!(
        inbound, CALLS as f64,
        "requests at web over mTLS from {peer}"
    );
    let own = Metrics(mesh.exec_ok("inj", &["curl", "-sf", "http://127.0.0.1:7191/metrics"]));
    let outbound = own.sum(
        "trellis_http_requests_total",
        &[
            ("direction", "outbound"),
            ("tls", "true"),
            ("classification", "success"),
        ],
    );
    assert_eq!(outbound, CALLS as f64, "the injected proxy's mTLS requests");
    eprintln!(
        "injected pod {peer}: {ok}/{CALLS} calls over mTLS (web inbound {inbound}, own outbound {outbound})"
    );
    stop.finish();
}

/// Stops the injected proxy: SIGTERM to the pid its shell wrote before
/// exec'ing it (killing `trellis mesh exec` would leave it running), then
/// returns what it printed.
struct Stopper<'a> {
    child: Option<&'a mut std::process::Child>,
    pidfile: &'a Path,
}

impl Stopper<'_> {
    fn finish(&mut self) -> String {
        use std::io::Read as _;
        let Some(child) = self.child.take() else {
            return String::new();
        };
        if let Ok(pid) = std::fs::read_to_string(self.pidfile) {
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
        } else {
            let _ = child.kill();
        }
        let _ = child.wait();
        let mut s = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Stopper<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}
