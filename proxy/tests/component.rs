//! The real proxy, in process, with a fake original-destination lookup and
//! upstream servers on loopback.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_core::contract::proxy_env;

const OUT_OK: &str = r#"trellis_http_requests_total{direction="outbound",service="web.demo.svc.cluster.local:80",route="default",tls="false",peer="",status_code="200",classification="success"}"#;

#[tokio::test]
async fn http1_requests_are_forwarded_and_counted_exactly() {
    let up = http_upstream().await;
    let proxy = start_proxy(up, &[]).await;
    let client = h1_client();
    for _ in 0..25 {
        let (status, headers, body) = get(&client, proxy.outbound, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-upstream"], "yes");
        assert_eq!(&body[..], b"hello");
    }
    let (status, _, _) = get(&client, proxy.outbound, "/status/503").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let m = metrics(proxy.admin).await;
    assert_eq!(sample(&m, OUT_OK), Some(25.0), "{m}");
    let failed = r#"trellis_http_requests_total{direction="outbound",service="web.demo.svc.cluster.local:80",route="default",tls="false",peer="",status_code="503",classification="failure"}"#;
    assert_eq!(sample(&m, failed), Some(1.0), "{m}");
    let count = r#"trellis_http_request_duration_seconds_count{direction="outbound",service="web.demo.svc.cluster.local:80",route="default",tls="false",peer=""}"#;
    assert_eq!(sample(&m, count), Some(26.0), "{m}");
    // One keep-alive client connection, detected as HTTP/1 once.
    assert_eq!(
        sample(
            &m,
            r#"trellis_protocol_detections_total{direction="outbound",protocol="http1",reason="detected"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn h2_prior_knowledge_is_forwarded_as_h2() {
    let up = http_upstream().await;
    let proxy = start_proxy(up, &[]).await;
    let client = h2_client();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let client = client.clone();
        let addr = proxy.outbound;
        tasks.push(tokio::spawn(async move {
            // Sent to the proxy's address, with the authority the app meant.
            let req = Request::get(format!("http://{addr}/delay/20"))
                .header("host", "web.demo.svc.cluster.local")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let rsp = client.request(req).await.unwrap();
            assert_eq!(rsp.version(), http::Version::HTTP_2);
            rsp.status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let m = metrics(proxy.admin).await;
    assert!(
        m.contains(r#"trellis_protocol_detections_total{direction="outbound",protocol="h2",reason="detected"} 1"#),
        "{m}"
    );
    let total: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("trellis_http_requests_total{direction=\"outbound\"")
                && l.contains("status_code=\"200\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 10.0, "{m}");
}

#[tokio::test]
async fn grpc_failure_in_trailers_is_a_failure() {
    let up = http_upstream().await;
    let proxy = start_proxy(up, &[]).await;
    let client = h2_client();
    let req = Request::post(format!("http://{}/grpc-fail", proxy.outbound))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let rsp = client.request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let collected = rsp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
    let m = metrics(proxy.admin).await;
    assert!(
        m.lines().any(
            |l| l.starts_with("trellis_http_requests_total{direction=\"outbound\"")
                && l.contains("status_code=\"200\",classification=\"failure\"} 1")
        ),
        "{m}"
    );
}

#[tokio::test]
async fn streamed_body_round_trips() {
    let up = http_upstream().await;
    let proxy = start_proxy(up, &[]).await;
    let client = h1_client();
    let payload: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    let req = Request::post(format!("http://{}/echo", proxy.outbound))
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    let rsp = client.request(req).await.unwrap();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), payload.len());
    assert!(body[..] == payload[..]);
}

#[tokio::test]
async fn server_speaks_first_is_not_stalled() {
    let up = banner_upstream().await;
    let proxy = start_proxy(up, &[(proxy_env::DETECT_TIMEOUT, "200ms")]).await;
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("banner within 5s")
        .unwrap();
    assert_eq!(&buf, b"220 ready\r\n");
    // The banner waited for the detection timeout and no longer.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    s.write_all(b"PING\r\n").await.unwrap();
    let mut echo = [0u8; 6];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"PING\r\n");
    drop(s);
    let admin = proxy.admin;
    assert!(
        eventually(Duration::from_secs(5), || async move {
            let m = metrics(admin).await;
            m.contains(r#"trellis_protocol_detections_total{direction="outbound",protocol="opaque",reason="timeout"} 1"#)
                && m.contains(r#"trellis_tcp_connections_open{direction="outbound",peer="",tls="false"} 0"#)
        })
        .await
    );
}

#[tokio::test]
async fn opaque_ports_skip_detection() {
    let up = banner_upstream().await;
    let port = up.port().to_string();
    let proxy = start_proxy(
        up,
        &[
            (proxy_env::OPAQUE_PORTS, &port),
            (proxy_env::DETECT_TIMEOUT, "10s"),
        ],
    )
    .await;
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    let mut buf = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
        .await
        .expect("no detection wait on an opaque port")
        .unwrap();
    assert_eq!(&buf, b"220 ready\r\n");
    let m = metrics(proxy.admin).await;
    assert!(
        m.contains(r#"protocol="opaque",reason="opaque_port"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn upgrade_becomes_a_tunnel() {
    let up = http_upstream().await;
    let proxy = start_proxy(up, &[]).await;
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
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
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    s.write_all(b"raw bytes after upgrade").await.unwrap();
    let mut echo = [0u8; 23];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"raw bytes after upgrade");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let up = http_upstream().await;
    let proxy = start_proxy(up, &[(proxy_env::MAX_HEADER_BYTES, "8192")]).await;
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    let big = "a".repeat(16 * 1024);
    s.write_all(format!("GET / HTTP/1.1\r\nHost: web\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let up = http_upstream().await;
    let proxy = start_proxy(up, &[(proxy_env::HEADER_READ_TIMEOUT, "300ms")]).await;
    let mut slow = TcpStream::connect(proxy.outbound).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: ")
        .await
        .unwrap();
    // Meanwhile others are served.
    let client = h1_client();
    let (status, _, _) = get(&client, proxy.outbound, "/").await;
    assert_eq!(status, StatusCode::OK);
    // The slow client's connection is closed by the proxy.
    let mut out = Vec::new();
    let res = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out)).await;
    assert!(res.is_ok(), "proxy kept the slow connection open");
}

#[tokio::test]
async fn unreachable_upstream_gets_502_and_counts_a_failure() {
    // A port with nothing listening: bind, note the port, close.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let proxy = start_proxy(dead, &[]).await;
    let client = h1_client();
    let (status, headers, body) = get(&client, proxy.outbound, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["trellis-proxy-error"], "connect_failed");
    assert_eq!(&body[..], b"trellis-proxy: connect_failed\n");
    let m = metrics(proxy.admin).await;
    assert!(
        m.contains(r#"status_code="502",classification="failure"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn connections_to_the_proxy_itself_are_refused() {
    // The fake lookup says the original destination is the outbound listener.
    let placeholder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = placeholder.local_addr().unwrap();
    drop(placeholder);
    let proxy = start_proxy(addr, &[(proxy_env::OUTBOUND_LISTEN, &addr.to_string())]).await;
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut out = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("closed promptly");
    assert!(
        n.is_err() || out.is_empty(),
        "got a response through a loop: {out:?}"
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let up = http_upstream().await;
    let proxy = start_proxy(up, &[]).await;
    let client = h1_client();
    let addr = proxy.outbound;
    let in_flight = tokio::spawn(async move { get(&client, addr, "/delay/300").await });
    let admin = proxy.admin;
    // Wait until the request has reached the proxy.
    assert!(
        eventually(Duration::from_secs(5), || async move {
            metrics(admin).await.contains(
                r#"trellis_tcp_connections_open{direction="outbound",peer="",tls="false"} 1"#,
            )
        })
        .await
    );
    proxy.shutdown.begin();
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"delayed");
    assert_eq!(proxy.shutdown.drained(Duration::from_secs(5)).await, 0);
    proxy.task.await.unwrap();
    assert!(
        TcpStream::connect(proxy.outbound).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn admin_endpoints() {
    let up = http_upstream().await;
    let proxy = start_proxy(up, &[]).await;
    // Every documented path answers; without identity `/identity` says so
    // (404 with a body), unlike an unknown path (the router's empty 404).
    let documented = trellis_proxy::admin::PATHS.map(|p| {
        let want = match p {
            "/identity" => "404",
            _ => "200",
        };
        (p, want)
    });
    for (path, want) in documented.into_iter().chain([("/nope", "404")]) {
        let mut s = TcpStream::connect(proxy.admin).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with(&format!("HTTP/1.1 {want}")),
            "{path}: {out}"
        );
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert_eq!(body.is_empty(), path == "/nope", "{path}: {out}");
        if path == "/identity" {
            assert!(out.contains("runs without identity"), "{out}");
        }
        if path == "/config" {
            assert!(out.contains(r#""detect_timeout":"100ms""#), "{out}");
        }
    }
}

#[tokio::test]
async fn ipv6_listeners_accept_ipv6_clients() {
    let up = http_upstream().await;
    let proxy = start_proxy(up, &[(proxy_env::IPV6, "on")]).await;
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, proxy.outbound.port()));
    let client = h1_client();
    let (status, _, body) = get(&client, v6, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"hello");
}
