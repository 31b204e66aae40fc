//! Identity under stress, as root, with traffic flowing the whole time:
//! certificates that live 30 s rotating under 500 rps, the identity service
//! killed and brought back, and the trust roots rotated (new root added,
//! workloads moved to a new issuer, old root removed). In each, not one
//! request or connection may fail.
//!
//! Two kinds of traffic run through each test, from `client` to `web`:
//! HTTP at a fixed rate (`trellis app load`; between the proxies it rides a
//! few long-lived, multiplexed mTLS connections), and a churn of short
//! opaque TCP connections ([`CHURN`]), each its own mTLS connection between
//! the proxies — so handshakes keep happening across every rotation, with
//! whatever certificates and roots are current.
//!
//! Every test is named `netns_…` and fails loudly without root.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use trellis_e2e::{bin, eventually, json_summary, require_root, require_tool, Mesh};

const MESH: &str = r#"
name: {mesh}
defaultInboundPolicy: all-authenticated
certLifetime: {lifetime}
workloads:
  - name: web
    namespace: e2e
    serviceAccount: web
    ports: [8080, 9000]
    command: [sh, -c, "{trellis} app http --listen 0.0.0.0:8080 --name {name} & exec {trellis} app tcp-echo --listen 0.0.0.0:9000"]
    annotations:
      config.trellis.dev/opaque-ports: "9000"
  - name: client
    namespace: e2e
    serviceAccount: client
    command: [sleep, infinity]
    annotations:
      config.trellis.dev/opaque-ports: "9000"
services:
  - {name: web, namespace: e2e, selector: web, ports: [{port: 80, targetPort: 8080}, {port: 9000}]}
"#;

/// Opens one short TCP connection after another at a fixed rate for a
/// bounded time: each sends a line, must get it echoed whole, and closes.
/// Prints `{"ok": N, "failed": N, "first_error": …}`.
const CHURN: &str = r#"
import json, socket, sys, time
host, port, secs, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
ok, failed, first = 0, 0, None
start = time.monotonic()
i = 0
while True:
    due = start + i / rate
    if due - start >= secs:
        break
    pause = due - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    line = f"connection {i}\n".encode()
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.settimeout(10)
            s.sendall(line)
            got = b""
            while len(got) < len(line):
                data = s.recv(4096)
                if not data:
                    break
                got += data
            if got != line:
                raise OSError(f"echo mismatch: sent {line!r}, got {got!r}")
        ok += 1
    except OSError as e:
        failed += 1
        first = first or f"connection {i}: {e}"
    i += 1
print(json.dumps({"ok": ok, "failed": failed, "first_error": first}))
"#;

const WEB: &str = "web.e2e.svc.cluster.local";
const PODS: [&str; 2] = ["web", "client"];

struct Fixture {
    mesh: Mesh,
    churn: PathBuf,
}

fn up(prefix: &str, lifetime: &str) -> Fixture {
    require_root("network namespaces, iptables and the proxies' uid");
    require_tool("curl");
    require_tool("/usr/bin/python3");
    let mesh = Mesh::up(prefix, &MESH.replace("{lifetime}", lifetime));
    let churn = mesh.dir.join("churn.py");
    std::fs::write(&churn, CHURN).unwrap();
    Fixture { mesh, churn }
}

impl Fixture {
    /// `trellis app load` from `client` to `web` over HTTP/1.1.
    fn load(&self, rps: u32, secs: u32) -> Child {
        let trellis = bin("trellis");
        self.mesh.spawn(
            "client",
            &[
                trellis.to_str().unwrap(),
                "app",
                "load",
                "--url",
                &format!("http://{WEB}/"),
                "--rps",
                &rps.to_string(),
                "--duration",
                &format!("{secs}s"),
                "--concurrency",
                "16",
            ],
        )
    }

    /// [`CHURN`] from `client` to `web:9000`.
    fn churn(&self, per_sec: u32, secs: u32) -> Child {
        self.mesh.spawn(
            "client",
            &[
                "/usr/bin/python3",
                self.churn.to_str().unwrap(),
                WEB,
                "9000",
                &secs.to_string(),
                &per_sec.to_string(),
            ],
        )
    }

    /// Each meshed pod's certificate as `trellis mesh status` reports it
    /// (from the proxy's `/identity`).
    fn certs(&self) -> BTreeMap<String, Value> {
        let status = self.mesh.status();
        status["pods"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["meshed"] == true)
            .map(|p| {
                (
                    p["workload"].as_str().unwrap().to_string(),
                    p["certificate"].clone(),
                )
            })
            .collect()
    }

    /// `trellis_identity_renewals_total{result}` of `pod`'s proxy.
    fn renewals(&self, pod: &str, result: &str) -> f64 {
        self.mesh
            .metrics(pod)
            .sum("trellis_identity_renewals_total", &[("result", result)])
    }

    /// A new HTTP request and a new opaque connection, now: both must work.
    fn fresh_traffic_ok(&self) {
        let code = self.mesh.sh(
            "client",
            &format!("curl -sS -m 10 -o /dev/null -w '%{{http_code}}' http://{WEB}/"),
        );
        assert_eq!(code.trim(), "200", "a fresh HTTP request failed");
        let churn = json_summary(self.churn(1, 1), "one opaque connection");
        assert_eq!(churn["ok"], 1, "a fresh opaque connection failed: {churn}");
    }
}

/// The load generator's summary: every request answered 2xx, at about the
/// rate asked for.
fn assert_load_clean(load: &Value, rps: u32, secs: u32) {
    eprintln!("load: {load}");
    assert_eq!(load["failed"], 0, "failed requests: {load}");
    let ok = load["ok"].as_u64().unwrap();
    let asked = u64::from(rps * secs);
    assert!(
        ok * 100 >= asked * 97,
        "only {ok} of {asked} requests sent: {load}"
    );
}

fn assert_churn_clean(churn: &Value, per_sec: u32, secs: u32) {
    eprintln!("connection churn: {churn}");
    assert_eq!(churn["failed"], 0, "failed connections: {churn}");
    let ok = churn["ok"].as_u64().unwrap();
    assert!(
        ok * 10 >= u64::from(per_sec * secs) * 9,
        "too few connections: {churn}"
    );
}

/// No handshake failed on either proxy.
fn assert_no_handshake_failures(f: &Fixture) {
    for pod in PODS {
        let m = f.mesh.metrics(pod);
        eprintln!(
            "{pod}: renewals ok {} error {}; inbound mTLS connections {}",
            m.sum("trellis_identity_renewals_total", &[("result", "ok")]),
            m.sum("trellis_identity_renewals_total", &[("result", "error")]),
            m.sum(
                "trellis_tcp_connections_total",
                &[("direction", "inbound"), ("tls", "true")]
            ),
        );
        assert_eq!(
            m.sum("trellis_tls_handshake_failures_total", &[]),
            0.0,
            "{pod}'s proxy saw handshake failures:\n{}",
            m.0
        );
    }
}

#[test]
fn netns_resilience_30s_certificates_rotate_under_500_rps_without_a_failure() {
    const RPS: u32 = 500;
    const SECS: u32 = 60;
    const CHURN_RATE: u32 = 10;
    let f = up("rr", "30s");
    let before = f.certs();
    assert_eq!(before.len(), 2, "{before:?}");
    let web_tls_before = f.mesh.metrics("web").sum(
        "trellis_tcp_connections_total",
        &[("direction", "inbound"), ("tls", "true")],
    );

    let load = f.load(RPS, SECS);
    let churn = f.churn(CHURN_RATE, SECS);
    let load = json_summary(load, "trellis app load");
    let churn = json_summary(churn, "the connection churn");
    assert_load_clean(&load, RPS, SECS);
    assert_churn_clean(&churn, CHURN_RATE, SECS);

    // Certificates of 30 s renewed at about 70 % (18–24 s): two or three
    // renewals each during the minute, on top of the first certificate —
    // not fewer (rotation really happened), not many more (renewal is
    // timed from the lifetime, not pulled forward by the back-dating).
    let after = f.certs();
    for pod in PODS {
        let renewed = f.renewals(pod, "ok");
        assert!(
            (3.0..=5.0).contains(&renewed),
            "{pod}'s proxy got {renewed} certificates in a minute of 30 s ones"
        );
        assert_eq!(f.renewals(pod, "error"), 0.0, "{pod}: a renewal failed");
        assert_ne!(
            before[pod]["serial"], after[pod]["serial"],
            "{pod} kept its certificate"
        );
    }
    // Each churned connection was its own mTLS connection into web.
    let web_tls = f.mesh.metrics("web").sum(
        "trellis_tcp_connections_total",
        &[("direction", "inbound"), ("tls", "true")],
    );
    let churned = churn["ok"].as_f64().unwrap();
    assert!(
        web_tls - web_tls_before >= churned,
        "web accepted {} mTLS connections for {churned} churned ones",
        web_tls - web_tls_before
    );
    assert_no_handshake_failures(&f);
}

/// The identity service as it runs in the node namespace: its pid, binary
/// and environment, so a test can kill it and start it again the same way
/// (what a Deployment does for a crashed pod).
struct IdentityProcess {
    pid: u32,
    exe: PathBuf,
    env: Vec<(String, String)>,
    node_netns: String,
    log: PathBuf,
}

impl IdentityProcess {
    fn find(mesh: &Mesh) -> Self {
        let status = mesh.status();
        let proc = status["nodeProcesses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["role"] == "identity")
            .unwrap_or_else(|| panic!("no identity service in {status:#}"))
            .clone();
        let pid = u32::try_from(proc["pid"].as_u64().unwrap()).unwrap();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let env = environ
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        Self {
            pid,
            exe,
            env,
            node_netns: status["nodeNetns"].as_str().unwrap().to_string(),
            log: PathBuf::from(proc["log"].as_str().unwrap()),
        }
    }

    fn kill(&self) {
        let ok = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "could not kill the identity service");
    }

    /// Starts it again, logging where it logged before.
    fn restart(&self) -> Restarted {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node_netns])
            .arg(&self.exe)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Restarted(child)
    }
}

/// The restarted identity service, which `mesh down` does not know of:
/// stopped when the test ends.
struct Restarted(Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn netns_resilience_proxies_keep_serving_without_the_identity_service_and_recover() {
    const RPS: u32 = 100;
    const SECS: u32 = 70;
    const CHURN_RATE: u32 = 5;
    // Renewal at 36–48 s; the certificates last until 60 s.
    let f = up("ro", "60s");
    let identity = IdentityProcess::find(&f.mesh);
    let first = f.certs();
    let load = f.load(RPS, SECS);
    let churn = f.churn(CHURN_RATE, SECS);

    identity.kill();
    // Every proxy reaches its renewal time, fails, and keeps its
    // certificate; new connections still work on it.
    let all_failed = || PODS.iter().all(|pod| f.renewals(pod, "error") >= 1.0);
    assert!(
        eventually(Duration::from_secs(55), all_failed),
        "the proxies never tried to renew"
    );
    for (pod, cert) in f.certs() {
        assert_eq!(
            cert["serial"], first[&pod]["serial"],
            "{pod} lost its certificate"
        );
    }
    f.fresh_traffic_ok();

    // The identity service returns: every proxy renews, with a later expiry.
    let _restarted = identity.restart();
    let all_renewed = || {
        let now = f.certs();
        PODS.iter()
            .all(|pod| now[*pod]["serial"] != first[*pod]["serial"])
    };
    assert!(
        eventually(Duration::from_secs(20), all_renewed),
        "the proxies did not renew once the identity service was back: {:?}",
        f.certs()
    );
    for pod in PODS {
        assert!(f.renewals(pod, "ok") >= 2.0, "{pod} did not renew");
    }
    f.fresh_traffic_ok();

    assert_load_clean(&json_summary(load, "trellis app load"), RPS, SECS);
    assert_churn_clean(
        &json_summary(churn, "the connection churn"),
        CHURN_RATE,
        SECS,
    );
    assert_no_handshake_failures(&f);
}

/// Replaces `path` with `bytes` atomically, as a ConfigMap or Secret
/// update does.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("e2e-tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `sha256:<hex>` of the DER of the PEM certificate in `path` (what the
/// proxy's `/identity` reports as `issuer`).
fn fingerprint(path: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl x509 {}", path.display());
    let hash = Sha256::digest(&out.stdout);
    format!(
        "sha256:{}",
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

#[test]
fn netns_resilience_trust_roots_rotate_under_traffic_without_a_failure() {
    const RPS: u32 = 200;
    const SECS: u32 = 75;
    const CHURN_RATE: u32 = 10;
    require_tool("openssl");
    // Renewal every 14 ± 2 s.
    let f = up("rt", "20s");
    let state = PathBuf::from(f.mesh.status()["stateDir"].as_str().unwrap());
    let ca = state.join("ca");
    let old_roots = std::fs::read(ca.join("roots.pem")).unwrap();
    let old_issuer = fingerprint(&ca.join("issuer.crt"));
    let first = f.certs();
    for (pod, cert) in &first {
        assert_eq!(cert["issuer"], old_issuer.as_str(), "{pod}: {cert}");
    }
    let old_fp = first["web"]["trustRoots"].clone();

    // A new CA, as an operator would make it.
    let new = f.mesh.dir.join("new-ca");
    let out = Command::new(bin("trellis-identity"))
        .args(["bootstrap", "--out"])
        .arg(&new)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_roots = std::fs::read(new.join("roots.pem")).unwrap();
    let new_issuer = fingerprint(&new.join("issuer.crt"));

    let load = f.load(RPS, SECS);
    let churn = f.churn(CHURN_RATE, SECS);

    // 1. Trust both roots, everywhere.
    replace(
        &ca.join("roots.pem"),
        &[old_roots, new_roots.clone()].concat(),
    );
    let roots_changed_from = |from: &Value| f.certs().values().all(|c| c["trustRoots"] != *from);
    assert!(
        eventually(Duration::from_secs(15), || roots_changed_from(&old_fp)),
        "the proxies did not load the two-root bundle: {:?}",
        f.certs()
    );
    let both_fp = f.certs()["web"]["trustRoots"].clone();

    // 2. Issue from the new CA; every workload renews onto it.
    replace(
        &ca.join("issuer.key"),
        &std::fs::read(new.join("issuer.key")).unwrap(),
    );
    replace(
        &ca.join("issuer.crt"),
        &std::fs::read(new.join("issuer.crt")).unwrap(),
    );
    let all_new_issuer = || {
        f.certs()
            .values()
            .all(|c| c["issuer"] == new_issuer.as_str())
    };
    assert!(
        eventually(Duration::from_secs(40), all_new_issuer),
        "not every proxy moved to the new issuer: {:?}",
        f.certs()
    );

    // 3. Drop the old root.
    replace(&ca.join("roots.pem"), &new_roots);
    assert!(
        eventually(Duration::from_secs(15), || roots_changed_from(&both_fp)),
        "the proxies did not drop the old root: {:?}",
        f.certs()
    );
    // The identity service itself now serves a certificate from the new
    // issuer (or renewals would fail against the new roots alone).
    let renewed = f.renewals("web", "ok");
    assert!(
        eventually(Duration::from_secs(25), || f.renewals("web", "ok")
            > renewed),
        "no renewal succeeded after the old root was removed"
    );
    f.fresh_traffic_ok();

    assert_load_clean(&json_summary(load, "trellis app load"), RPS, SECS);
    assert_churn_clean(
        &json_summary(churn, "the connection churn"),
        CHURN_RATE,
        SECS,
    );
    for pod in PODS {
        assert_eq!(f.renewals(pod, "error"), 0.0, "{pod}: a renewal failed");
    }
    assert_no_handshake_failures(&f);
}
