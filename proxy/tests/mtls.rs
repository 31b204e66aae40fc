//! Mutual TLS between two in-process proxies: a client sidecar's outbound
//! side and a server sidecar's inbound side, with certificates from a test
//! CA, and the server's inbound policy; and a proxy renewing its
//! certificate from the real identity service, in-process.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_core::contract::files::{DestinationEntry, DestinationsFile};
use trellis_proxy::mesh::Mesh;
use trellis_proxy::policy::{Authorization, DefaultPolicy, Policy};

const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/demo/sa/web";
const OTHER: &str = "spiffe://cluster.local/ns/demo/sa/other";

struct Pair {
    client: TestProxy,
    server: TestProxy,
    server_mesh: std::sync::Arc<Mesh>,
}

/// A server sidecar in front of `app`, and a client sidecar (identity
/// `client_id`) that sends everything to the server sidecar, expecting
/// `expect` there.
async fn pair(
    ca: &TestCa,
    app: SocketAddr,
    policy: DefaultPolicy,
    client_id: &str,
    expect: &str,
) -> Pair {
    let roots = ca.roots();
    let server_mesh = Mesh::new(Some(ca.creds(SERVER, &roots)), policy).unwrap();
    let (server, server_mesh) = start_mesh_proxy(app, server_mesh).await;
    let client_mesh = Mesh::new(
        Some(ca.creds(client_id, &roots)),
        DefaultPolicy::AllUnauthenticated,
    )
    .unwrap();
    client_mesh
        .set_destinations(DestinationsFile {
            destinations: vec![DestinationEntry {
                addr: server.inbound,
                identities: vec![expect.to_string()],
            }],
        })
        .unwrap();
    let (client, _) = start_mesh_proxy(server.inbound, client_mesh).await;
    Pair {
        client,
        server,
        server_mesh,
    }
}

/// Successful requests over mTLS with `peer`, summed over services.
fn with_peer(metrics: &str, direction: &str, peer: &str) -> f64 {
    let prefix = format!(r#"trellis_http_requests_total{{direction="{direction}","#);
    let labels =
        format!(r#"tls="true",peer="{peer}",status_code="200",classification="success"}}"#);
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn http_travels_in_mutual_tls_and_both_sides_know_their_peer() {
    let ca = TestCa::new("mesh");
    let app = http_upstream().await;
    let p = pair(&ca, app, DefaultPolicy::AllAuthenticated, CLIENT, SERVER).await;
    let h1 = h1_client();
    for _ in 0..5 {
        let (status, headers, body) = get(&h1, p.client.outbound, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-upstream"], "yes");
        assert_eq!(&body[..], b"hello");
    }
    let h2 = h2_client();
    let (status, _, body) = get(&h2, p.client.outbound, "/").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));

    let c = metrics(p.client.admin).await;
    let s = metrics(p.server.admin).await;
    assert_eq!(with_peer(&c, "outbound", SERVER), 6.0, "{c}");
    assert_eq!(with_peer(&s, "inbound", CLIENT), 6.0, "{s}");
    assert!(
        s.contains(&format!(
            r#"trellis_tcp_connections_total{{direction="inbound",peer="{CLIENT}",tls="true"}}"#
        )),
        "{s}"
    );
}

#[tokio::test]
async fn upgrades_and_opaque_tcp_cross_the_mesh() {
    let ca = TestCa::new("mesh");
    let app = http_upstream().await;
    let p = pair(&ca, app, DefaultPolicy::AllAuthenticated, CLIENT, SERVER).await;
    let mut s = TcpStream::connect(p.client.outbound).await.unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"through the tunnel").await.unwrap();
    let mut echo = [0u8; 18];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"through the tunnel");

    let banner = banner_upstream().await;
    let p = pair(&ca, banner, DefaultPolicy::AllAuthenticated, CLIENT, SERVER).await;
    let mut s = TcpStream::connect(p.client.outbound).await.unwrap();
    let mut buf = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"220 ready\r\n");
    s.write_all(b"HELO\r\n").await.unwrap();
    let mut echo = [0u8; 6];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"HELO\r\n");
}

#[tokio::test]
async fn all_authenticated_refuses_plaintext_and_audit_counts_it() {
    let ca = TestCa::new("mesh");
    let app = http_upstream().await;
    let p = pair(&ca, app, DefaultPolicy::AllAuthenticated, CLIENT, SERVER).await;
    // A plaintext client straight to the server sidecar's inbound side.
    let plain = h1_client();
    let (status, headers, body) = get(&plain, p.server.inbound, "/").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["trellis-proxy-error"], "unauthenticated");
    assert_eq!(&body[..], b"trellis-proxy: unauthenticated\n");
    // The meshed client still gets through.
    let (status, _, _) = get(&h1_client(), p.client.outbound, "/").await;
    assert_eq!(status, StatusCode::OK);
    let m = metrics(p.server.admin).await;
    let port = app.port();
    assert!(m.contains(&format!(r#"trellis_authz_denied_total{{direction="inbound",port="{port}",reason="unauthenticated"}} 1"#)), "{m}");
    assert!(m.contains(&format!(r#"trellis_authz_allowed_total{{direction="inbound",port="{port}",reason="authenticated"}} 1"#)), "{m}");

    p.server_mesh.set_policy(Policy {
        default_policy: DefaultPolicy::Audit,
        ..Policy::default()
    });
    let (status, _, _) = get(&plain, p.server.inbound, "/").await;
    assert_eq!(status, StatusCode::OK);
    let m = metrics(p.server.admin).await;
    assert!(m.contains(&format!(r#"trellis_authz_allowed_total{{direction="inbound",port="{port}",reason="audit_unauthenticated"}} 1"#)), "{m}");
}

#[tokio::test]
async fn refused_opaque_connections_never_reach_the_app() {
    // An app that records whether anyone connected.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let ca = TestCa::new("mesh");
    let p = pair(&ca, app, DefaultPolicy::AllAuthenticated, CLIENT, SERVER).await;
    let mut s = TcpStream::connect(p.server.inbound).await.unwrap();
    s.write_all(b"\x00\x01 opaque bytes").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("closed");
    assert!(out.is_empty());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), listener.accept())
            .await
            .is_err(),
        "the app saw a refused connection"
    );
    let m = metrics(p.server.admin).await;
    assert!(m.contains(r#"reason="unauthenticated"} 1"#), "{m}");
}

#[tokio::test]
async fn wrong_identity_and_foreign_ca_fail_the_handshake() {
    let ca = TestCa::new("mesh");
    let app = http_upstream().await;
    // The client expects someone else at the server's address.
    let p = pair(&ca, app, DefaultPolicy::AllAuthenticated, CLIENT, OTHER).await;
    let (status, headers, _) = get(&h1_client(), p.client.outbound, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["trellis-proxy-error"], "wrong_identity");
    let m = metrics(p.client.admin).await;
    assert!(m.contains(r#"trellis_tls_handshake_failures_total{direction="outbound",reason="wrong_identity"} 1"#), "{m}");

    // A client whose certificate comes from another CA.
    let foreign = TestCa::new("foreign");
    let roots = foreign.roots();
    let server_roots = ca.roots();
    let server_mesh = Mesh::new(
        Some(ca.creds(SERVER, &server_roots)),
        DefaultPolicy::AllAuthenticated,
    )
    .unwrap();
    let (server, _) = start_mesh_proxy(app, server_mesh).await;
    // The foreign client trusts both CAs, so only the server can refuse.
    let both = std::sync::Arc::new(
        trellis_core::tls::TrustRoots::from_pem(
            format!("{}{}", ca.root_pem, foreign.root_pem).as_bytes(),
        )
        .unwrap(),
    );
    let _ = roots;
    let client_mesh = Mesh::new(
        Some(foreign.creds(CLIENT, &both)),
        DefaultPolicy::AllUnauthenticated,
    )
    .unwrap();
    client_mesh
        .set_destinations(DestinationsFile {
            destinations: vec![DestinationEntry {
                addr: server.inbound,
                identities: vec![SERVER.into()],
            }],
        })
        .unwrap();
    let (client, _) = start_mesh_proxy(server.inbound, client_mesh).await;
    let status = h1_client()
        .request(
            http::Request::get(format!("http://{}/", client.outbound))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .map(|r| r.status());
    assert_ne!(status.ok(), Some(StatusCode::OK));
    let admin = server.admin;
    assert!(
        eventually(Duration::from_secs(5), || async move {
            metrics(admin).await.contains(r#"trellis_tls_handshake_failures_total{direction="inbound",reason="unknown_issuer"} 1"#)
        })
        .await
    );
}

#[tokio::test]
async fn an_authorization_lets_one_identity_in_and_keeps_another_out() {
    let ca = TestCa::new("mesh");
    let app = http_upstream().await;
    let a = pair(&ca, app, DefaultPolicy::AllAuthenticated, CLIENT, SERVER).await;
    a.server_mesh.set_policy(Policy {
        default_policy: DefaultPolicy::AllAuthenticated,
        authorizations: vec![Authorization {
            name: "only-client".into(),
            ports: vec![],
            identities: vec![CLIENT.into()],
            namespaces: vec![],
            methods: vec![],
            path_prefixes: vec![],
        }],
        ..Policy::default()
    });
    let (status, _, _) = get(&h1_client(), a.client.outbound, "/").await;
    assert_eq!(status, StatusCode::OK);

    // Another meshed identity, through its own sidecar, to the same server.
    let roots = ca.roots();
    let other_mesh = Mesh::new(
        Some(ca.creds(OTHER, &roots)),
        DefaultPolicy::AllUnauthenticated,
    )
    .unwrap();
    other_mesh
        .set_destinations(DestinationsFile {
            destinations: vec![DestinationEntry {
                addr: a.server.inbound,
                identities: vec![SERVER.into()],
            }],
        })
        .unwrap();
    let (other, _) = start_mesh_proxy(a.server.inbound, other_mesh).await;
    let (status, headers, _) = get(&h1_client(), other.outbound, "/").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["trellis-proxy-error"], "unauthorized");
}

/// The proxy against the real identity service (in-process, JWKS tokens
/// from a local signer, 10 s certificates): each renewal brings a new key,
/// and the old certificate serves until the new one is in place.
#[tokio::test]
async fn each_renewal_brings_a_new_key_and_the_old_one_serves_until_then() {
    use trellis_core::test_support::http_get;

    let identity = support::identity::TestIdentity::start("10s").await;
    identity.write_token();
    let issued = identity.metrics.clone();
    let app = http_upstream().await;
    let vars = identity.proxy_vars();
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let proxy = start_proxy(app, &vars).await;

    // (serial, key fingerprint) from /identity; None while pending.
    let current = async || {
        let (status, body) = http_get(proxy.admin, "/identity").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["identity"], SERVER, "{body}");
        (status == 200).then(|| {
            assert_eq!(v["state"], "ready", "{body}");
            let key = v["key"].as_str().unwrap().to_string();
            assert!(key.starts_with("sha256:") && key.len() == 71, "{body}");
            (v["serial"].as_str().unwrap().to_string(), key)
        })
    };
    let mut seen = Vec::new();
    let first =
        trellis_core::test_support::eventually("the first certificate", async || current().await)
            .await;
    seen.push(first);
    // Two renewals (at about 7 s each): every certificate has a key of its
    // own, and /identity is never without a certificate in between.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal within 30 s: {seen:?}"
        );
        let now = current()
            .await
            .expect("the old certificate serves until the new one arrives");
        if now.0 != seen[seen.len() - 1].0 {
            seen.push(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys: std::collections::HashSet<_> = seen.iter().map(|(_, k)| k.clone()).collect();
    assert_eq!(keys.len(), 3, "one key per certificate: {seen:?}");
    assert!(issued.issued_total() >= 3);

    proxy.shutdown.begin();
    let _ = proxy.task.await;
    identity.stop().await;
}
