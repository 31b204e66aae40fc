//! Identity and mutual TLS end to end, as root: a local mesh whose proxies
//! get certificates from the real `trellis-identity`, speak mutual TLS to
//! each other, and enforce their pods' inbound policy.
//!
//! Every test is named `netns_…` and fails loudly without root (the shared
//! harness's `require_root`). Build first: `cargo build --workspace`.
//!
//! The mesh: `web` (HTTP on 8080, and on 9000 an opaque TCP echo that logs
//! every connection it accepts, so a test can tell whether any byte reached
//! the application), `api` (`deny` by annotation, one authorization policy
//! for `client`, a probe), meshed clients `client` and `other`, and the
//! unmeshed `legacy`. The mesh-wide default is `all-authenticated`.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use trellis_e2e::{eventually, require_root, require_tool, Mesh, Metrics};

const MESH: &str = r#"
name: {mesh}
defaultInboundPolicy: all-authenticated
workloads:
  - name: web
    namespace: e2e
    serviceAccount: web
    ports: [8080, 9000]
    probes: [{port: 8080, path: /healthz}]
    command: [sh, -c, "{trellis} app http --listen 0.0.0.0:8080 --name {name} & exec /usr/bin/python3 {tcplog} 9000 {log}"]
    annotations:
      config.trellis.dev/opaque-ports: "9000"
  - name: api
    namespace: e2e
    serviceAccount: api
    ports: [8080]
    probes: [{port: 8080, path: /healthz}]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:{port}", --name, "{name}"]
    annotations:
      config.trellis.dev/default-inbound-policy: deny
  - name: client
    namespace: e2e
    serviceAccount: client
    command: [sleep, infinity]
    annotations:
      config.trellis.dev/opaque-ports: "9000"
  - name: other
    namespace: e2e
    serviceAccount: other
    command: [sleep, infinity]
  - name: legacy
    namespace: e2e
    meshed: false
    command: [sleep, infinity]
services:
  - {name: web, namespace: e2e, selector: web, ports: [{port: 80, targetPort: 8080}, {port: 9000}]}
  - {name: api, namespace: e2e, selector: api, ports: [{port: 80, targetPort: 8080}]}
policies:
  - name: api-from-client
    namespace: e2e
    targetWorkload: api
    ports: [8080]
    from:
      serviceAccounts: [{name: client}]
    http:
      methods: [GET, HEAD]
"#;

/// The opaque application on `web:9000`: echoes, and appends one line per
/// accepted connection (`accepted`) and per finished one (`closed N`, the
/// bytes it received) to the log file.
const TCP_LOG: &str = r#"
import socket, sys, threading
port, log = int(sys.argv[1]), sys.argv[2]
def note(line):
    with open(log, "a") as f:
        f.write(line + "\n")
def serve(c):
    got = 0
    c.settimeout(10)
    try:
        while True:
            data = c.recv(4096)
            if not data:
                break
            got += len(data)
            c.sendall(data)
    except OSError:
        pass
    note(f"closed {got}")
    c.close()
srv = socket.create_server(("0.0.0.0", port))
while True:
    c, _ = srv.accept()
    note("accepted")
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

const TD: &str = "spiffe://cluster.local/ns/e2e/sa";
const WEB: &str = "web.e2e.svc.cluster.local";
const API: &str = "api.e2e.svc.cluster.local";
const WAIT: Duration = Duration::from_secs(30);

/// A mesh of [`MESH`], with the TCP logger's script and log in a directory
/// of its own.
struct Fixture {
    mesh: Mesh,
    log: PathBuf,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn up(prefix: &str) -> Fixture {
    require_root("network namespaces, iptables and the proxies' uid");
    for tool in ["curl", "openssl"] {
        require_tool(tool);
    }
    let dir = std::env::temp_dir().join(format!("trellis-mtls-{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("tcplog.py");
    std::fs::write(&script, TCP_LOG).unwrap();
    let log = dir.join("tcp.log");
    std::fs::write(&log, "").unwrap();
    let yaml = MESH
        .replace("{tcplog}", script.to_str().unwrap())
        .replace("{log}", log.to_str().unwrap());
    let mesh = Mesh::up(prefix, &yaml);
    Fixture {
        mesh,
        log,
        _dir: TempDir(dir),
    }
}

/// `curl` from `pod`: (status code, body).
fn curl(mesh: &Mesh, pod: &str, args: &[&str]) -> (u16, String) {
    let mut argv = vec!["curl", "-sS", "-m", "10", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    let out = mesh.exec_ok(pod, &argv);
    split_code(&out)
}

/// `curl` from the node namespace (as a kubelet probe would).
fn curl_node(mesh: &Mesh, url: &str) -> (u16, String) {
    let out = mesh.node_exec(&["curl", "-sS", "-m", "10", "-w", "\n%{http_code}", url]);
    assert!(
        out.status.success(),
        "curl {url} from the node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    split_code(&String::from_utf8_lossy(&out.stdout))
}

fn split_code(out: &str) -> (u16, String) {
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (
        code.trim()
            .parse()
            .unwrap_or_else(|_| panic!("no status code in {out:?}")),
        body.to_string(),
    )
}

/// `name` summed over samples with all of `labels`.
fn count(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.sum(name, labels)
}

fn requests(m: &Metrics, direction: &str, tls: &str, peer: &str) -> f64 {
    count(
        m,
        "trellis_http_requests_total",
        &[("direction", direction), ("tls", tls), ("peer", peer)],
    )
}

fn authz(m: &Metrics, verdict: &str, reason: &str) -> f64 {
    count(
        m,
        &format!("trellis_authz_{verdict}_total"),
        &[("direction", "inbound"), ("reason", reason)],
    )
}

/// Every `-----BEGIN CERTIFICATE-----` block in `text`, in order.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let end_marker = "-----END CERTIFICATE-----";
        let end = rest[start..].find(end_marker).unwrap() + start + end_marker.len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

fn openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read_json(path: &str) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn netns_mtls_between_sidecars_with_peer_identities_and_verifiable_certificates() {
    let f = up("tls");
    let mesh = &f.mesh;

    // Every proxy holds a certificate for its pod's identity; the identity
    // service is up; status names the files each proxy reads.
    let st = mesh.status();
    assert_eq!(st["ready"], true, "{st:#}");
    assert_eq!(st["identityService"]["ready"], true, "{st:#}");
    assert_eq!(
        st["identityService"]["serverIdentity"],
        "spiffe://cluster.local/ns/trellis-system/sa/trellis-identity"
    );
    for pod in st["pods"].as_array().unwrap() {
        if pod["meshed"] == false {
            assert_eq!(pod["identityState"], Value::Null, "{pod:#}");
            assert_eq!(pod["policyFile"], Value::Null, "{pod:#}");
            continue;
        }
        assert_eq!(pod["identityState"], "issued", "{pod:#}");
        assert_eq!(pod["certificate"]["identity"], pod["identity"], "{pod:#}");
        assert!(!pod["certificate"]["notAfter"].as_str().unwrap().is_empty());
        for key in ["policyFile", "destinationsFile", "tokenFile", "rootsFile"] {
            let path = pod[key]
                .as_str()
                .unwrap_or_else(|| panic!("{key}: {pod:#}"));
            assert!(Path::new(path).is_file(), "{key} {path}");
        }
        // The token is the proxy's alone.
        let token = std::fs::metadata(pod["tokenFile"].as_str().unwrap()).unwrap();
        assert_eq!((token.uid(), token.mode() & 0o777), (7102, 0o400));
    }

    // The files say what the mesh file says.
    let web = mesh.pod("web");
    let web_ip = web["ip"].as_str().unwrap().to_string();
    let policy = read_json(web["policyFile"].as_str().unwrap());
    assert_eq!(policy["defaultPolicy"], "all-authenticated", "{policy:#}");
    assert_eq!(policy["probes"][0]["path"], "/healthz", "{policy:#}");
    let api_policy = read_json(mesh.pod("api")["policyFile"].as_str().unwrap());
    assert_eq!(api_policy["defaultPolicy"], "deny", "{api_policy:#}");
    assert_eq!(
        api_policy["authorizations"][0]["identities"][0],
        format!("{TD}/client"),
        "{api_policy:#}"
    );
    let dests = read_json(web["destinationsFile"].as_str().unwrap());
    let listed = |addr: &str| {
        dests["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["addr"] == addr)
            .map(|d| d["identities"].clone())
    };
    assert_eq!(
        listed(&format!("{web_ip}:8080")),
        Some(serde_json::json!([format!("{TD}/web")])),
        "{dests:#}"
    );
    let vip = st["services"][0]["vip"].as_str().unwrap();
    assert_eq!(
        listed(&format!("{vip}:80")),
        Some(serde_json::json!([format!("{TD}/web")])),
        "{dests:#}"
    );
    assert_eq!(listed(&format!("{}:80", mesh.ip("legacy"))), None);

    // Meshed client → web: mutual TLS both ways, each side naming the other.
    let (c0, w0) = (mesh.metrics("client"), mesh.metrics("web"));
    for _ in 0..5 {
        let (code, body) = curl(mesh, "client", &[&format!("http://{WEB}/")]);
        assert_eq!(code, 200, "{body}");
        assert!(body.starts_with("web-0"), "{body}");
    }
    let (c1, w1) = (mesh.metrics("client"), mesh.metrics("web"));
    let web_id = format!("{TD}/web");
    let client_id = format!("{TD}/client");
    assert_eq!(
        requests(&c1, "outbound", "true", &web_id) - requests(&c0, "outbound", "true", &web_id),
        5.0,
        "client proxy: outbound requests with tls=true, peer={web_id}:\n{}",
        c1.0
    );
    assert_eq!(
        requests(&w1, "inbound", "true", &client_id) - requests(&w0, "inbound", "true", &client_id),
        5.0,
        "web proxy: inbound requests with tls=true, peer={client_id}:\n{}",
        w1.0
    );
    assert_eq!(
        count(
            &w1,
            "trellis_http_requests_total",
            &[("direction", "inbound"), ("tls", "false")]
        ) - count(
            &w0,
            "trellis_http_requests_total",
            &[("direction", "inbound"), ("tls", "false")]
        ),
        0.0,
        "no plaintext reached web"
    );

    // The server's certificate, as a meshed peer sees it in the handshake
    // (asked from the node namespace, which nothing captures): it chains to
    // the mesh's root and carries web's SPIFFE ID as its URI SAN.
    let out = mesh.node_exec(&[
        "sh",
        "-c",
        &format!(
            "openssl s_client -connect {web_ip}:8080 -alpn trellis.h2 -showcerts </dev/null 2>&1"
        ),
    ]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let certs = pem_blocks(&shown);
    assert!(
        certs.len() >= 2,
        "expected the leaf and the issuer from {web_ip}:8080, got:\n{shown}"
    );
    let dir = &mesh.dir;
    let leaf = dir.join("web-leaf.pem");
    let chain = dir.join("web-chain.pem");
    std::fs::write(&leaf, &certs[0]).unwrap();
    std::fs::write(&chain, certs[1..].concat()).unwrap();
    let roots = web["rootsFile"].as_str().unwrap();
    let verified = openssl(&[
        "verify",
        "-CAfile",
        roots,
        "-untrusted",
        chain.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    assert!(verified.trim().ends_with(": OK"), "{verified}");
    let text = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-text"]);
    assert!(text.contains(&format!("URI:{web_id}")), "{text}");
    // And it is the certificate the proxy reports at /identity.
    let serial = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-serial"]);
    let reported = mesh.pod("web")["certificate"]["serial"]
        .as_str()
        .unwrap()
        .replace(':', "")
        .to_ascii_uppercase();
    let reported = reported.trim_start_matches('0');
    let shown_serial = serial
        .trim()
        .trim_start_matches("serial=")
        .trim_start_matches('0');
    assert_eq!(shown_serial.to_ascii_uppercase(), reported, "{serial}");
}

#[test]
fn netns_mtls_all_authenticated_refuses_plaintext_and_audit_counts_it() {
    let f = up("authn");
    let mesh = &f.mesh;
    let web_ip = mesh.ip("web");

    // Plaintext HTTP from the unmeshed pod: 403, with the reason.
    let w0 = mesh.metrics("web");
    let (code, body) = curl(mesh, "legacy", &[&format!("http://{WEB}/")]);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("unauthenticated"),
        "403 body names the reason: {body:?}"
    );
    let w1 = mesh.metrics("web");
    assert_eq!(
        authz(&w1, "denied", "unauthenticated") - authz(&w0, "denied", "unauthenticated"),
        1.0,
        "{}",
        w1.0
    );

    // Opaque TCP from the unmeshed pod: closed, and the application never
    // even sees the connection.
    let probe = format!(
        r#"
import socket
s = socket.create_connection(("{web_ip}", 9000), timeout=10)
try:
    s.sendall(b"secret bytes\n")
    got = s.recv(4096)
except (ConnectionResetError, BrokenPipeError):
    got = b""
print("received", len(got))
"#
    );
    let out = mesh.exec_ok("legacy", &["/usr/bin/python3", "-c", &probe]);
    assert_eq!(
        out.trim(),
        "received 0",
        "the connection was not closed: {out}"
    );
    let w2 = mesh.metrics("web");
    assert_eq!(
        authz(&w2, "denied", "unauthenticated") - authz(&w1, "denied", "unauthenticated"),
        1.0,
        "{}",
        w2.0
    );
    assert_eq!(
        std::fs::read_to_string(&f.log).unwrap(),
        "",
        "the application saw the refused connection"
    );

    // The meshed client still gets through, over HTTP and opaque TCP.
    let (code, body) = curl(mesh, "client", &[&format!("http://{WEB}/")]);
    assert_eq!(code, 200, "{body}");
    let echo = r#"
import socket
s = socket.create_connection(("web.e2e.svc.cluster.local", 9000), timeout=10)
s.sendall(b"hello over mtls\n")
print(s.recv(4096).decode().strip())
"#;
    let out = mesh.exec_ok("client", &["/usr/bin/python3", "-c", echo]);
    assert_eq!(out.trim(), "hello over mtls");
    assert!(
        eventually(WAIT, || std::fs::read_to_string(&f.log)
            .unwrap()
            .starts_with("accepted\n")),
        "the meshed client's connection reached the application"
    );

    // `audit`: the same plaintext request succeeds, counted as would-deny.
    let policy = mesh.policy("web", &["--default", "audit"]);
    assert_eq!(policy["defaultPolicy"], "audit");
    assert!(
        eventually(WAIT, || curl(mesh, "legacy", &[&format!("http://{WEB}/")])
            .0
            == 200),
        "web's proxy did not switch to audit"
    );
    let a0 = mesh.metrics("web");
    let (code, body) = curl(mesh, "legacy", &[&format!("http://{WEB}/")]);
    assert_eq!(code, 200, "{body}");
    let a1 = mesh.metrics("web");
    assert_eq!(
        authz(&a1, "allowed", "audit_unauthenticated")
            - authz(&a0, "allowed", "audit_unauthenticated"),
        1.0,
        "{}",
        a1.0
    );
    assert_eq!(mesh.pod("web")["inboundPolicy"], "audit");

    // Back to the mesh file's policy. The controller is the proxy's one
    // source of policy: the change goes through it, as every change does.
    let policy = mesh.policy("web", &["--reset"]);
    assert_eq!(policy["defaultPolicy"], "all-authenticated");
    assert!(
        eventually(WAIT, || curl(mesh, "legacy", &[&format!("http://{WEB}/")])
            .0
            == 403),
        "web's proxy did not switch back to all-authenticated"
    );
}

#[test]
fn netns_mtls_authorization_policy_admits_one_identity_and_probes_pass_under_deny() {
    let f = up("authz");
    let mesh = &f.mesh;

    // `api` is `deny` with one policy: only `client`, only GET and HEAD.
    let a0 = mesh.metrics("api");
    let (code, body) = curl(mesh, "client", &[&format!("http://{API}/")]);
    assert_eq!(code, 200, "client is authorized: {body}");
    let (code, body) = curl(mesh, "other", &[&format!("http://{API}/")]);
    assert_eq!(code, 403, "other is not: {body}");
    assert!(body.contains("unauthorized"), "{body:?}");
    let (code, body) = curl(
        mesh,
        "client",
        &["-X", "POST", "-d", "x", &format!("http://{API}/echo")],
    );
    assert_eq!(code, 403, "POST is not authorized: {body}");
    let (code, body) = curl(mesh, "legacy", &[&format!("http://{API}/")]);
    assert_eq!(code, 403, "plaintext is not: {body}");
    let a1 = mesh.metrics("api");
    assert_eq!(
        authz(&a1, "allowed", "authorized") - authz(&a0, "allowed", "authorized"),
        1.0,
        "{}",
        a1.0
    );
    assert_eq!(
        authz(&a1, "denied", "unauthorized") - authz(&a0, "denied", "unauthorized"),
        3.0,
        "{}",
        a1.0
    );
    let other_id = format!("{TD}/other");
    assert_eq!(
        count(
            &a1,
            "trellis_http_requests_total",
            &[
                ("direction", "inbound"),
                ("peer", &other_id),
                ("status_code", "403"),
                ("tls", "true")
            ]
        ) - count(
            &a0,
            "trellis_http_requests_total",
            &[
                ("direction", "inbound"),
                ("peer", &other_id),
                ("status_code", "403"),
                ("tls", "true")
            ]
        ),
        1.0,
        "the refused request is recorded with its peer:\n{}",
        a1.0
    );

    // Probes from the node keep working under `deny` (`up` already waited
    // for them); anything else from the node is refused.
    let api_ip = mesh.ip("api");
    let (code, body) = curl_node(mesh, &format!("http://{api_ip}:8080/healthz"));
    assert_eq!(code, 200, "{body}");
    let (code, _) = curl_node(mesh, &format!("http://{api_ip}:8080/"));
    assert_eq!(code, 403);
    let a2 = mesh.metrics("api");
    assert!(authz(&a2, "allowed", "probe") >= 1.0, "{}", a2.0);
    assert_eq!(mesh.pod("api")["probesOk"], true);

    // Switched to `deny` live, `web` keeps answering its probe and refuses
    // even the meshed client.
    mesh.policy("web", &["--default", "deny"]);
    let web_ip = mesh.ip("web");
    assert!(
        eventually(WAIT, || curl(mesh, "client", &[&format!("http://{WEB}/")])
            .0
            == 403),
        "web's proxy did not switch to deny"
    );
    let (code, body) = curl_node(mesh, &format!("http://{web_ip}:8080/healthz"));
    assert_eq!(code, 200, "{body}");
    let pod = mesh.pod("web");
    assert_eq!(
        (pod["probesOk"].clone(), pod["ready"].clone()),
        (Value::Bool(true), Value::Bool(true))
    );
}
