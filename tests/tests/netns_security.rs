//! mTLS-only against an attacker, end to end as root: each attack of the
//! security review, tried from a pod of a local mesh, and what stops it.
//!
//! The mesh: `api` (an application that honours any `Upgrade` and logs
//! every connection and byte it receives, so a test can tell whether
//! anything reached it; `all-authenticated`; `client` may `GET /api` only,
//! `wsclient` may open anything; a probe on `/healthz`), `web` (the same
//! logger, unmeshed: a bystander), meshed clients `client`, `other`,
//! `wsclient`, `strict` (outbound mTLS `required`), and the unmeshed
//! `legacy`.
//!
//! Every test is named `netns_…` and fails loudly without root.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use trellis_e2e::{eventually, require_root, require_tool, Mesh, Metrics};

/// A server on PORT that logs to LOG: `accept`, each request line as
/// `req <line>`, and after a 101 every byte as `tunnel <repr>`. It answers
/// `Upgrade` with 101 on any path (as Go's h2c handler or a WebSocket
/// server on an allowed path would) and anything else with 200.
const UPGRADER: &str = r#"
import socket, sys, threading
port, log = int(sys.argv[1]), sys.argv[2]
lock = threading.Lock()
def note(line):
    with lock, open(log, "a") as f:
        f.write(line + "\n")
def serve(c):
    note("accept")
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            note("req " + lines[0])
            if lines[0].startswith("PRI "):
                return
            upgrade = [l.split(":", 1)[1].strip() for l in lines[1:] if l.lower().startswith("upgrade:")]
            if upgrade:
                c.sendall(("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n" % upgrade[0]).encode())
                if buf:
                    note("tunnel " + repr(buf))
                while True:
                    d = c.recv(65536)
                    if not d:
                        return
                    note("tunnel " + repr(d))
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    finally:
        c.close()
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

const MESH: &str = r#"
name: {mesh}
defaultInboundPolicy: all-authenticated
workloads:
  - name: api
    namespace: sec
    serviceAccount: api
    ports: [8080]
    probes: [{port: 8080, path: /healthz}]
    command: [/usr/bin/python3, "{dir}/upgrader.py", "8080", "{dir}/api.log"]
  - name: web
    namespace: sec
    meshed: false
    ports: [8080]
    command: [/usr/bin/python3, "{dir}/upgrader.py", "8080", "{dir}/web.log"]
  - name: client
    namespace: sec
    serviceAccount: client
    command: [sleep, infinity]
  - name: other
    namespace: sec
    serviceAccount: other
    command: [sleep, infinity]
  - name: wsclient
    namespace: sec
    serviceAccount: wsclient
    command: [sleep, infinity]
  - name: strict
    namespace: sec
    serviceAccount: strict
    command: [sleep, infinity]
    annotations:
      config.trellis.dev/outbound-mtls: required
  - name: legacy
    namespace: sec
    meshed: false
    command: [sleep, infinity]
services:
  - {name: api, namespace: sec, selector: api, ports: [{port: 80, targetPort: 8080}]}
  - {name: web, namespace: sec, selector: web, ports: [{port: 80, targetPort: 8080}]}
policies:
  - name: client-reads-api
    namespace: sec
    targetWorkload: api
    ports: [8080]
    from: {serviceAccounts: [{name: client}]}
    http: {methods: [GET], pathPrefixes: [/api]}
  - name: wsclient-opens-anything
    namespace: sec
    targetWorkload: api
    ports: [8080]
    from: {serviceAccounts: [{name: wsclient}, {name: strict}]}
"#;

struct Fixture {
    mesh: Mesh,
    dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn up(prefix: &str) -> Fixture {
    require_root("network namespaces, iptables and the proxies' uid");
    require_tool("curl");
    require_tool("/usr/bin/python3");
    let dir = std::env::temp_dir().join(format!("trellis-sec-{}", trellis_e2e::unique(prefix)));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("upgrader.py"), UPGRADER).unwrap();
    for log in ["api.log", "web.log"] {
        std::fs::write(dir.join(log), "").unwrap();
    }
    let mesh = Mesh::up(prefix, &MESH.replace("{dir}", dir.to_str().unwrap()));
    Fixture { mesh, dir }
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// Sends `first` on a raw TCP connection from `pod` to `ip:port`, reads
/// the answer's status line, then (if the connection is still open) sends
/// `then`; returns the status line ("" when the connection closed first).
fn raw(mesh: &Mesh, pod: &str, ip: &str, first: &str, then: &str) -> String {
    let script = format!(
        r#"
import socket, sys
s = socket.create_connection(({ip:?}, 8080), timeout=10)
s.sendall({first:?}.encode())
got = b""
try:
    while b"\r\n" not in got:
        d = s.recv(4096)
        if not d:
            break
        got += d
    s.sendall({then:?}.encode())
    s.recv(4096)
except (ConnectionResetError, BrokenPipeError, socket.timeout):
    pass
print(got.split(b"\r\n")[0].decode("latin-1"))
"#
    );
    mesh.exec_ok(pod, &["/usr/bin/python3", "-c", &script])
        .trim()
        .to_string()
}

/// `curl` from `pod`: (status code, body).
fn curl(mesh: &Mesh, pod: &str, args: &[&str]) -> (u16, String) {
    let mut argv = vec!["curl", "-sS", "-m", "10", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    let out = mesh.exec(pod, &argv);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or(("", text.trim()));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn count(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.sum(name, labels)
}

const SMUGGLE_H2C: &str = "GET /healthz HTTP/1.1\r\nHost: api\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n";
const SMUGGLE_WS: &str = "GET /healthz HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const PAYLOAD: &str =
    "POST /admin/delete-everything HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\n\r\n";

#[test]
fn netns_security_upgrade_smuggling_is_refused_and_websocket_still_works_when_allowed() {
    let f = up("su");
    let (mesh, dir) = (&f.mesh, &f.dir);
    let api_ip = mesh.ip("api");

    // The review's sequence, by an unmeshed pod: a probe path with an h2c
    // upgrade, then a request on the same connection. The h2c offer is
    // stripped; the plain request is the pod's, not kubelet's: 403.
    let status = raw(mesh, "legacy", &api_ip, SMUGGLE_H2C, PAYLOAD);
    assert!(status.contains(" 403 "), "h2c smuggling: {status:?}");
    // The same with a WebSocket upgrade: a tunnel needs a connection-level
    // authorization, which no plaintext client has here.
    let status = raw(mesh, "legacy", &api_ip, SMUGGLE_WS, PAYLOAD);
    assert!(status.contains(" 403 "), "websocket smuggling: {status:?}");
    // By meshed clients the policy does not allow a tunnel: `other` (no
    // authorization) and `client` (only GET /api). Their proxies carry a
    // tunnel as an opaque mTLS connection, which api's proxy refuses
    // before a byte reaches the application; the client sees its own
    // proxy's 502.
    for pod in ["other", "client"] {
        let status = raw(mesh, pod, &api_ip, SMUGGLE_WS, PAYLOAD);
        assert!(
            status.contains(" 403 ") || status.contains(" 502 ") || status.is_empty(),
            "{pod}: {status:?}"
        );
    }
    let seen = log(dir, "api.log");
    assert!(
        !seen.contains("delete-everything") && !seen.contains("tunnel"),
        "the application received smuggled bytes:\n{seen}"
    );

    // A client allowed the whole connection still gets its WebSocket.
    let status = raw(
        mesh,
        "wsclient",
        &api_ip,
        SMUGGLE_WS,
        "hello over the tunnel",
    );
    assert!(status.contains(" 101 "), "allowed websocket: {status:?}");
    let delivered = eventually(Duration::from_secs(10), || {
        log(dir, "api.log").contains("hello over the tunnel")
    });
    assert!(
        delivered,
        "the allowed tunnel's bytes never arrived:\n{}",
        log(dir, "api.log")
    );
    let m = mesh.metrics("api");
    assert!(
        count(
            &m,
            "trellis_authz_denied_total",
            &[("direction", "inbound")]
        ) >= 4.0,
        "refusals not counted:\n{}",
        m.0
    );
}

#[test]
fn netns_security_paths_are_normalised_before_authorization() {
    let f = up("sp");
    let (mesh, dir) = (&f.mesh, &f.dir);
    let api = "http://api.sec.svc.cluster.local";
    // Allowed: GET /api…
    let (code, body) = curl(mesh, "client", &[&format!("{api}/api/items")]);
    assert_eq!(code, 200, "{body}");
    let before = log(dir, "api.log");
    // …and the tricks that reached /admin verbatim, over HTTP/1.1 and
    // HTTP/2 (curl sends the path as written with --path-as-is).
    let tricks = [
        ("/api/../admin", 403),
        ("/api/%2e%2e/admin", 403),
        ("/api/..%2fadmin", 400),
        ("/api/..;/admin", 400),
    ];
    for (path, want) in tricks {
        for h2 in [false, true] {
            let url = format!("{api}{path}");
            let mut args = vec!["--path-as-is", url.as_str()];
            if h2 {
                args.insert(0, "--http2-prior-knowledge");
            }
            let (code, body) = curl(mesh, "client", &args);
            assert_eq!(code, want, "{path} (h2: {h2}): {body}");
        }
    }
    let after = log(dir, "api.log");
    assert_eq!(
        after, before,
        "the application saw a request it should not have"
    );
    // The normalised path is what the application gets: /api/./x/../items
    // arrives as /api/items.
    let (code, _) = curl(
        mesh,
        "client",
        &["--path-as-is", &format!("{api}/api/./x/../items")],
    );
    assert_eq!(code, 200);
    let seen = log(dir, "api.log");
    assert!(
        seen.lines()
            .last()
            .unwrap_or("")
            .contains("GET /api/items "),
        "not forwarded normalised:\n{seen}"
    );
}

#[test]
fn netns_security_no_relay_to_a_foreign_destination_and_no_fake_probes() {
    let f = up("sf");
    let (mesh, dir) = (&f.mesh, &f.dir);
    let (api_ip, web_ip) = (mesh.ip("api"), mesh.ip("web"));

    // `legacy` routes web's address through api's pod: api's inbound
    // listener gets a connection whose original destination is web. It is
    // refused, and web never hears from api's proxy.
    mesh.exec_ok(
        "legacy",
        &[
            "ip",
            "route",
            "add",
            &format!("{web_ip}/32"),
            "via",
            &api_ip,
        ],
    );
    let web_before = log(dir, "web.log");
    let status = raw(
        mesh,
        "legacy",
        &web_ip,
        "GET / HTTP/1.1\r\nHost: web\r\n\r\n",
        "",
    );
    assert!(
        !status.contains(" 200 "),
        "relayed to a foreign destination: {status:?}"
    );
    assert_eq!(
        log(dir, "web.log"),
        web_before,
        "web received the relayed connection"
    );
    let m = mesh.metrics("api");
    assert_eq!(
        count(
            &m,
            "trellis_authz_denied_total",
            &[("reason", "foreign_destination")]
        ),
        1.0,
        "{}",
        m.0
    );
    mesh.exec_ok("legacy", &["ip", "route", "del", &format!("{web_ip}/32")]);

    // A "probe" from a pod is the pod's request: refused under
    // all-authenticated; the same from the node (kubelet's place) passes.
    let (code, _) = curl(mesh, "legacy", &[&format!("http://{api_ip}:8080/healthz")]);
    assert_eq!(code, 403, "a pod passed for kubelet");
    let out = mesh.node_exec(&[
        "curl",
        "-sS",
        "-m",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{api_ip}:8080/healthz"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200",
        "the node's probe"
    );

    // Admin: health and metrics open to all, the rest only on the host.
    let (code, _) = curl(mesh, "legacy", &[&format!("http://{api_ip}:7191/metrics")]);
    assert_eq!(code, 200);
    let (code, _) = curl(mesh, "legacy", &[&format!("http://{api_ip}:7191/config")]);
    assert_eq!(code, 403, "/config open to other pods");
    let out = mesh.exec_ok(
        "api",
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:7191/config",
        ],
    );
    assert_eq!(out.trim(), "200", "/config from inside the pod");
}

#[test]
fn netns_security_outbound_mtls_required_never_sends_plaintext() {
    let f = up("so");
    let (mesh, dir) = (&f.mesh, &f.dir);
    let refused = |reason: &str| {
        mesh.metrics("strict").sum(
            "trellis_outbound_plaintext_refused_total",
            &[("reason", reason)],
        )
    };
    let web = "http://web.sec.svc.cluster.local/";

    // The controller paused: a destination this proxy has not resolved
    // yet, and that no destinations file names, is refused after the
    // resolve timeout instead of going out in plaintext. (A meshed one the
    // local mesh's destinations file names still goes over mutual TLS.)
    let pid = mesh.status()["nodeProcesses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "controller")
        .and_then(|p| p["pid"].as_u64())
        .expect("a controller process");
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success());
    };
    let web_before = log(dir, "web.log");
    signal("-STOP");
    let (code, body) = curl(mesh, "strict", &[web]);
    signal("-CONT");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("unresolved_destination"), "{body}");
    assert_eq!(log(dir, "web.log"), web_before, "plaintext reached web");
    assert_eq!(refused("unresolved_destination"), 1.0);

    // With the controller back, it names web's endpoint without an
    // identity (web is not meshed): still refused, and counted.
    let named = eventually(Duration::from_secs(15), || {
        let (code, body) = curl(mesh, "strict", &[web]);
        code == 403 && body.contains("endpoint_without_identity")
    });
    assert!(named, "the controller's answer never arrived");
    assert_eq!(log(dir, "web.log"), web_before, "plaintext reached web");
    assert!(refused("endpoint_without_identity") >= 1.0);

    // A meshed service goes over mutual TLS as always.
    let (code, body) = curl(mesh, "strict", &["http://api.sec.svc.cluster.local/api"]);
    assert_eq!(code, 200, "{body}");
    let m = mesh.metrics("api");
    assert!(
        count(
            &m,
            "trellis_http_requests_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("peer", "spiffe://cluster.local/ns/sec/sa/strict")
            ]
        ) >= 1.0,
        "{}",
        m.0
    );
    // The same client in the default (opportunistic) mode reaches the
    // unmeshed web in plaintext, as it should.
    let (code, _) = curl(mesh, "client", &[web]);
    assert_eq!(code, 200);
}
