//! The data plane end to end, as root: a local mesh of network namespaces,
//! the real capture rules and proxies, real clients (curl, h2load, grpcio,
//! websockets) and servers. Each check asserts the response and that the
//! proxies' counters moved by exactly the number of requests sent.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sha2::{Digest, Sha256};
use trellis_e2e::{bin, eventually, require_tool, Mesh, Metrics};

const MESH: &str = r#"
name: {mesh}
workloads:
  - name: web
    namespace: e2e
    serviceAccount: web
    ports: [8080]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:{port}", --name, "{name}"]
  - name: mail
    namespace: e2e
    serviceAccount: mail
    ports: [2525]
    command: ["{trellis}", app, banner, --listen, "0.0.0.0:{port}", --name, "{name}"]
  - name: grpc
    namespace: e2e
    serviceAccount: grpc
    ports: [50051]
    command: [/usr/bin/python3, "{repo}/scripts/grpc_echo.py", serve, --port, "{port}", --name, "{name}"]
  - name: client
    namespace: e2e
    serviceAccount: client
    command: [sleep, infinity]
services:
  - {name: web, namespace: e2e, selector: web, ports: [{port: 80, targetPort: 8080}]}
  - {name: mail, namespace: e2e, selector: mail, ports: [{port: 25, targetPort: 2525}]}
  - {name: grpc, namespace: e2e, selector: grpc, ports: [{port: 50051, targetPort: 50051}]}
"#;

const WEB: &str = "web.e2e.svc.cluster.local:80";
const GRPC: &str = "grpc.e2e.svc.cluster.local:50051";

/// Successful requests for `service` seen by one proxy in one direction.
fn ok(m: &Metrics, direction: &str, service: &str) -> f64 {
    m.sum(
        "trellis_http_requests_total",
        &[
            ("direction", direction),
            ("service", service),
            ("classification", "success"),
        ],
    )
}

/// Counts on both sides of the proxy pair, before and after `f`.
fn deltas(mesh: &Mesh, server: &str, service: &str, f: impl FnOnce()) -> (f64, f64) {
    let (c0, s0) = (mesh.metrics("client"), mesh.metrics(server));
    f();
    let (c1, s1) = (mesh.metrics("client"), mesh.metrics(server));
    (
        ok(&c1, "outbound", service) - ok(&c0, "outbound", service),
        ok(&s1, "inbound", service) - ok(&s0, "inbound", service),
    )
}

#[test]
fn netns_http_grpc_and_websocket_through_a_proxy_pair() {
    for t in ["curl", "h2load", "promtool"] {
        require_tool(t);
    }
    let mesh = Mesh::up("dp", MESH);

    // HTTP/1.1: 20 requests on one keep-alive connection.
    let (client, server) = deltas(&mesh, "web", WEB, || {
        let out = mesh.exec_ok(
            "client",
            &[
                "curl",
                "-sS",
                "--fail",
                "-w",
                "\n%{http_code} %{http_version}\n",
                "http://web.e2e.svc.cluster.local/?n=[1-20]",
            ],
        );
        assert_eq!(out.lines().filter(|l| *l == "200 1.1").count(), 20, "{out}");
        assert!(out.contains("web-0: hello"), "{out}");
    });
    assert_eq!((client, server), (20.0, 20.0), "HTTP/1.1 counters");

    // HTTP/2 with prior knowledge: 200 requests, 2 connections, 10 streams each.
    let (client, server) = deltas(&mesh, "web", WEB, || {
        let out = mesh.exec_ok(
            "client",
            &[
                "h2load",
                "-n",
                "200",
                "-c",
                "2",
                "-m",
                "10",
                "http://web.e2e.svc.cluster.local/",
            ],
        );
        assert!(out.contains("200 succeeded, 0 failed, 0 errored"), "{out}");
        assert!(out.contains("Application protocol: h2c"), "{out}");
    });
    assert_eq!((client, server), (200.0, 200.0), "HTTP/2 counters");

    // gRPC: 10 unary calls, one server-streaming call, one bidi call.
    let grpc_echo = format!("{}/scripts/grpc_echo.py", trellis_e2e::repo().display());
    let (client, server) = deltas(&mesh, "grpc", GRPC, || {
        for (kind, count) in [("unary", "10"), ("server-stream", "5"), ("bidi", "7")] {
            let out = mesh.exec_ok(
                "client",
                &[
                    "/usr/bin/python3",
                    &grpc_echo,
                    "call",
                    "--target",
                    GRPC,
                    "--kind",
                    kind,
                    "--count",
                    count,
                ],
            );
            assert!(
                out.contains("\"ok\": true") || out.contains("\"ok\":true"),
                "{kind}: {out}"
            );
        }
    });
    assert_eq!(
        (client, server),
        (12.0, 12.0),
        "gRPC counters (10 unary + 2 streams)"
    );

    // WebSocket: an Upgrade, then messages both ways through the tunnel.
    let ws = r#"
import asyncio, websockets
async def main():
    async with websockets.connect("ws://web.e2e.svc.cluster.local/ws") as ws:
        for i in range(5):
            await ws.send(f"message {i}")
            got = await ws.recv()
            assert got == f"message {i}", got
    print("websocket ok")
asyncio.run(main())
"#;
    let out = mesh.exec_ok("client", &["/usr/bin/python3", "-c", ws]);
    assert!(out.contains("websocket ok"), "{out}");

    // Every proxy's /metrics passes promtool's checks.
    for pod in ["client", "web", "grpc", "mail"] {
        mesh.sh(
            pod,
            "curl -sS --fail http://127.0.0.1:7191/metrics | promtool check metrics",
        );
    }
}

/// The pattern `trellis app http` serves at `/bytes/N`.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn netns_opaque_tcp_large_transfers_and_slow_clients() {
    require_tool("curl");
    let mesh = Mesh::up("dq", MESH);
    let trellis = bin("trellis");
    let trellis = trellis.to_str().unwrap();

    // A server-speaks-first protocol on a port nobody declared opaque: the
    // client waits for the banner, so both proxies must give up detection
    // after the detection timeout (300 ms) instead of stalling.
    let (c0, m0) = (mesh.metrics("client"), mesh.metrics("mail"));
    let out = mesh.exec_ok(
        "client",
        &[
            trellis,
            "app",
            "banner-client",
            "--addr",
            "mail.e2e.svc.cluster.local:25",
            "--lines",
            "3",
        ],
    );
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["ok"], true, "{out}");
    assert_eq!(summary["replies_ok"], 3, "{out}");
    let elapsed = summary["elapsed_ms"].as_f64().unwrap();
    assert!(
        elapsed < 3000.0,
        "banner took {elapsed} ms: detection stalled"
    );
    let detections = |m: &Metrics, d: &str, protocol: &str, reason: &str| {
        m.sum(
            "trellis_protocol_detections_total",
            &[("direction", d), ("protocol", protocol), ("reason", reason)],
        )
    };
    let (c1, m1) = (mesh.metrics("client"), mesh.metrics("mail"));
    // The client's proxy gave up waiting and went opaque; the server's proxy
    // saw its peer's mutual TLS at once (a peer proxy always speaks first).
    assert_eq!(
        detections(&c1, "outbound", "opaque", "timeout")
            - detections(&c0, "outbound", "opaque", "timeout"),
        1.0
    );
    assert_eq!(
        detections(&m1, "inbound", "tls", "detected")
            - detections(&m0, "inbound", "tls", "detected"),
        1.0
    );

    // 100 MB download and upload, byte-exact.
    const SIZE: usize = 100 * 1024 * 1024;
    let body = pattern(SIZE);
    let want = hex(Sha256::digest(&body));
    let (client, server) = deltas(&mesh, "web", WEB, || {
        let out = mesh.sh(
            "client",
            &format!("curl -sS --fail http://web.e2e.svc.cluster.local/bytes/{SIZE} | sha256sum"),
        );
        assert_eq!(
            out.split_whitespace().next(),
            Some(want.as_str()),
            "download checksum"
        );
    });
    assert_eq!((client, server), (1.0, 1.0));
    let file = mesh.dir.join("upload.bin");
    std::fs::write(&file, &body).unwrap();
    drop(body);
    let (client, server) = deltas(&mesh, "web", WEB, || {
        let out = mesh.exec_ok(
            "client",
            &[
                "curl",
                "-sS",
                "--fail",
                "-T",
                file.to_str().unwrap(),
                "http://web.e2e.svc.cluster.local/sha256",
            ],
        );
        let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(got["bytes"], SIZE, "{out}");
        assert_eq!(got["sha256"], want.as_str(), "upload checksum");
    });
    assert_eq!((client, server), (1.0, 1.0));

    // A client that never finishes its headers holds no one hostage: others
    // are served meanwhile, and the proxy closes it after its header timeout.
    let slow = r#"
import socket, subprocess, time
s = socket.create_connection(("web.e2e.svc.cluster.local", 80))
s.sendall(b"GET / HTTP/1.1\r\nHost: web.e2e.svc.cluster.local\r\nX-Slow: ")
t0 = time.monotonic()
for _ in range(5):
    code = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://web.e2e.svc.cluster.local/"],
                          capture_output=True, text=True, timeout=10).stdout
    assert code == "200", code
s.settimeout(30)
rest = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    rest += chunk
print(f"closed after {time.monotonic() - t0:.1f}s; got {rest[:12]!r}")
"#;
    let out = mesh.exec_ok("client", &["/usr/bin/python3", "-c", slow]);
    let secs: f64 = out
        .split("closed after ")
        .nth(1)
        .and_then(|s| s.split('s').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(secs < 20.0, "slow client held for {secs}s: {out}");

    // Connections all closed afterwards.
    assert!(eventually(Duration::from_secs(10), || {
        mesh.metrics("client")
            .sum("trellis_tcp_connections_open", &[("direction", "outbound")])
            == 0.0
    }));
}
