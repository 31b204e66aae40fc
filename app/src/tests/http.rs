//! `trellis app http`: every endpoint over HTTP/1.1 and h2c, WebSocket,
//! injected failures and shutdown.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{header, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::{within, Server};
use crate::http::{hex, pattern_byte, BoxError, FailCounter, HttpOpts, PatternBody};

type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

fn empty() -> ReqBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A request body fed through a channel, to prove streaming.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

enum Client {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

impl Client {
    async fn connect(addr: SocketAddr, h2: bool) -> Client {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        if h2 {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            Client::H2(send)
        } else {
            let (send, conn) = http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Client::H1(send)
        }
    }

    fn h2(&self) -> bool {
        matches!(self, Client::H2(_))
    }

    fn request(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: ReqBody,
    ) -> Request<ReqBody> {
        let b = if self.h2() {
            Request::builder()
                .uri(format!("http://{addr}{path}"))
                .version(Version::HTTP_2)
        } else {
            Request::builder()
                .uri(path)
                .header(header::HOST, addr.to_string())
        };
        b.method(method).body(body).unwrap()
    }

    async fn send(&mut self, req: Request<ReqBody>) -> Response<Incoming> {
        within("a response", async {
            match self {
                Client::H1(s) => {
                    s.ready().await.unwrap();
                    s.send_request(req).await.unwrap()
                }
                Client::H2(s) => {
                    s.ready().await.unwrap();
                    s.send_request(req).await.unwrap()
                }
            }
        })
        .await
    }

    async fn get(&mut self, addr: SocketAddr, path: &str) -> (http::response::Parts, Bytes) {
        let req = self.request(addr, Method::GET, path, empty());
        let (parts, body) = self.send(req).await.into_parts();
        (
            parts,
            within("a body", body.collect()).await.unwrap().to_bytes(),
        )
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn pattern(n: u64) -> Vec<u8> {
    (0..n).map(pattern_byte).collect()
}

// ---------------------------------------------------------------- HTTP server

#[tokio::test]
async fn http_get_root_over_h1_and_h2() {
    let server = Server::http("web-0", 0.0).await;
    for h2 in [false, true] {
        let mut c = Client::connect(server.addr, h2).await;
        let (parts, body) = c.get(server.addr, "/some/where").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(
            parts.version,
            if h2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            }
        );
        assert_eq!(parts.headers["x-served-by"], "web-0");
        assert_eq!(body, format!("web-0: hello from {}\n", server.addr));
    }
    server.stop().await;
}

#[tokio::test]
async fn http_status_answers_the_code() {
    let server = Server::http("s", 0.0).await;
    for h2 in [false, true] {
        let mut c = Client::connect(server.addr, h2).await;
        for (path, want) in [
            ("/status/200", 200),
            ("/status/418", 418),
            ("/status/503", 503),
            ("/status/204", 204),
            ("/status/99", 400),
            ("/status/1000", 400),
            ("/status/abc", 400),
        ] {
            let (parts, body) = c.get(server.addr, path).await;
            assert_eq!(parts.status.as_u16(), want, "{path} h2={h2}");
            assert_eq!(parts.headers["x-served-by"], "s");
            if want == 204 {
                assert!(body.is_empty());
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn http_bytes_streams_the_pattern_with_content_length() {
    let server = Server::http("b", 0.0).await;
    let n: u64 = 3 * 64 * 1024 + 1017;
    let want = sha256_hex(&pattern(n));
    for h2 in [false, true] {
        let mut c = Client::connect(server.addr, h2).await;
        let req = c.request(server.addr, Method::GET, &format!("/bytes/{n}"), empty());
        let resp = c.send(req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()[header::CONTENT_LENGTH],
            n.to_string().as_str()
        );
        // Hash frame by frame, as a 100 MB download would be checked.
        let mut body = resp.into_body();
        let (mut hasher, mut count, mut frames) = (Sha256::new(), 0u64, 0);
        while let Some(frame) = within("a frame", body.frame()).await {
            if let Some(d) = frame.unwrap().data_ref() {
                hasher.update(d);
                count += d.len() as u64;
                frames += 1;
            }
        }
        assert_eq!(count, n);
        assert!(frames > 1, "the body arrived in one frame: not streamed");
        assert_eq!(hex(&hasher.finalize()), want, "h2={h2}");

        let (parts, body) = c.get(server.addr, "/bytes/0").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(body.is_empty());
        let (parts, _) = c.get(server.addr, "/bytes/lots").await;
        assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    }
    server.stop().await;
}

#[tokio::test]
async fn pattern_body_yields_exact_bytes() {
    let pattern_buf: Bytes = (0..(64 * 1024 + 251)).map(pattern_byte).collect();
    for len in [0u64, 1, 250, 251, 252, 64 * 1024, 64 * 1024 + 1, 200_000] {
        let body = PatternBody {
            pattern: pattern_buf.clone(),
            offset: 0,
            len,
        };
        assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(len));
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got.as_ref(), pattern(len).as_slice(), "len {len}");
    }
}

#[tokio::test]
async fn http_sha256_hashes_a_streamed_upload() {
    let server = Server::http("h", 0.0).await;
    // Odd-sized chunks, several megabytes in all.
    let chunks: Vec<Bytes> = (0..40u32)
        .map(|i| Bytes::from(vec![(i % 256) as u8; 100_003 + i as usize * 7]))
        .collect();
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let want = serde_json::json!({ "bytes": whole.len(), "sha256": sha256_hex(&whole) });
    for h2 in [false, true] {
        let mut c = Client::connect(server.addr, h2).await;
        for method in [Method::POST, Method::PUT] {
            let frames = chunks
                .clone()
                .into_iter()
                .map(|b| Ok::<_, BoxError>(Frame::data(b)));
            let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
            let req = c.request(server.addr, method.clone(), "/sha256", body);
            let (parts, body) = c.send(req).await.into_parts();
            let body = within("a body", body.collect()).await.unwrap().to_bytes();
            assert_eq!(parts.status, StatusCode::OK, "{method} h2={h2}");
            let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(got, want, "{method} h2={h2}");
        }
        let (parts, _) = c.get(server.addr, "/sha256").await;
        assert_eq!(parts.status, StatusCode::METHOD_NOT_ALLOWED);
    }
    server.stop().await;
}

#[tokio::test]
async fn http_echo_streams_the_body_back() {
    let server = Server::http("e", 0.0).await;
    for h2 in [false, true] {
        let mut c = Client::connect(server.addr, h2).await;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut req = c.request(
            server.addr,
            Method::POST,
            "/echo?x=1",
            ChannelBody(rx).boxed_unsync(),
        );
        req.headers_mut()
            .insert(header::CONTENT_TYPE, "text/x-test".parse().unwrap());
        tx.send(Bytes::from_static(b"first ")).await.unwrap();
        let resp = c.send(req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-method"], "POST");
        assert_eq!(resp.headers()["x-path"], "/echo?x=1");
        assert_eq!(
            resp.headers()["x-version"],
            if h2 { "HTTP/2" } else { "HTTP/1.1" }
        );
        assert_eq!(
            resp.headers()["x-authority"],
            server.addr.to_string().as_str()
        );
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/x-test");
        let mut body = resp.into_body();
        // The first chunk comes back while the request body is still open:
        // the server streams, it does not buffer the whole body.
        let first = within("the first echoed chunk", body.frame())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "first ");
        tx.send(Bytes::from_static(b"second")).await.unwrap();
        drop(tx);
        let rest = within("the rest", body.collect()).await.unwrap().to_bytes();
        assert_eq!(rest, "second", "h2={h2}");
    }
    server.stop().await;
}

#[tokio::test]
async fn http_delay_waits_then_answers() {
    let server = Server::http("d", 0.0).await;
    let mut c = Client::connect(server.addr, false).await;
    let began = Instant::now();
    let (parts, body) = c.get(server.addr, "/delay/150").await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(began.elapsed() >= Duration::from_millis(150));
    assert_eq!(body, "d: waited 150ms\n");
    let (parts, _) = c.get(server.addr, "/delay/600001").await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    server.stop().await;
}

#[tokio::test]
async fn http_trailers_arrive_over_h2_and_h1_with_te() {
    let server = Server::http("t", 0.0).await;
    for h2 in [true, false] {
        let mut c = Client::connect(server.addr, h2).await;
        let mut req = c.request(server.addr, Method::GET, "/trailers", empty());
        if !h2 {
            req.headers_mut()
                .insert(header::TE, "trailers".parse().unwrap());
        }
        let resp = c.send(req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let collected = within("the body", resp.into_body().collect())
            .await
            .unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["x-trailer"], "done", "h2={h2}");
        assert_eq!(collected.to_bytes(), "t: trailers follow\n");
    }
    server.stop().await;
}

#[tokio::test]
async fn http_fail_rate_fails_an_exact_fraction() {
    let server = Server::http("f", 0.25).await;
    let mut c = Client::connect(server.addr, false).await;
    let mut codes = Vec::new();
    for _ in 0..20 {
        codes.push(c.get(server.addr, "/").await.0.status.as_u16());
    }
    let failed: Vec<usize> = (0..20)
        .filter(|&i| codes[i] == 503)
        .map(|i| i + 1)
        .collect();
    assert_eq!(failed, vec![4, 8, 12, 16, 20]);
    // Probes never fail, and do not move the counter.
    for _ in 0..8 {
        assert_eq!(
            c.get(server.addr, "/healthz").await.0.status,
            StatusCode::OK
        );
    }
    let (parts, body) = c.get(server.addr, "/").await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["x-served-by"], "f");
    assert!(body.starts_with(b"f: hello"));
    server.stop().await;
}

#[test]
fn fail_counter_is_exact_for_any_prefix() {
    for (rate, n) in [
        (0.0, 100u64),
        (1.0, 100),
        (0.1, 1000),
        (0.333333, 999),
        (0.57, 100),
    ] {
        let counter = FailCounter::new((rate * 1e6_f64).round() as u64);
        let mut failed = 0u64;
        for i in 1..=n {
            failed += u64::from(counter.next_fails());
            let want = i * (rate * 1e6_f64).round() as u64 / 1_000_000;
            assert_eq!(failed, want, "rate {rate} after {i}");
        }
    }
}

#[test]
fn http_opts_refuse_bad_input() {
    assert!(HttpOpts::new("bad\nname".into(), 0.0).is_err());
    assert!(HttpOpts::new("ok".into(), 1.5).is_err());
    assert!(HttpOpts::new("ok".into(), -0.1).is_err());
    assert!(HttpOpts::new("ok".into(), 1.0).is_ok());
}

#[tokio::test]
async fn http_websocket_echoes_messages() {
    let server = Server::http("w", 0.0).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut ws, resp) = within(
        "the websocket handshake",
        tokio_tungstenite::client_async(format!("ws://{}/ws", server.addr), stream),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["x-served-by"], "w");
    let big = vec![7u8; 200_000];
    for msg in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::binary(big),
        Message::text("last"),
    ] {
        ws.send(msg.clone()).await.unwrap();
        let got = within("an echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(got, msg);
    }
    ws.send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    let got = within("a pong", ws.next()).await.unwrap().unwrap();
    assert_eq!(got, Message::Pong(Bytes::from_static(b"p")));
    ws.close(None).await.unwrap();
    // The server answers the close, then the stream ends.
    loop {
        match within("the close", ws.next()).await {
            Some(Ok(Message::Close(_))) => continue,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(_)) | None => break,
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn http_websocket_needs_an_upgrade() {
    let server = Server::http("w", 0.0).await;
    let mut c = Client::connect(server.addr, false).await;
    assert_eq!(
        c.get(server.addr, "/ws").await.0.status,
        StatusCode::BAD_REQUEST
    );
    let mut c = Client::connect(server.addr, true).await;
    assert_eq!(
        c.get(server.addr, "/ws").await.0.status,
        StatusCode::BAD_REQUEST
    );
    server.stop().await;
}

#[tokio::test]
async fn http_answers_a_request_after_the_client_half_closes() {
    let server = Server::http("hc", 0.0).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /status/202 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    within("the response and close", stream.read_to_end(&mut got))
        .await
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 202 Accepted\r\n"), "{got}");
    server.stop().await;
}

#[tokio::test]
async fn http_shutdown_closes_idle_connections_and_returns() {
    let server = Server::http("g", 0.0).await;
    let mut h1 = Client::connect(server.addr, false).await;
    let mut h2 = Client::connect(server.addr, true).await;
    assert_eq!(h1.get(server.addr, "/").await.0.status, StatusCode::OK);
    assert_eq!(h2.get(server.addr, "/").await.0.status, StatusCode::OK);
    let addr = server.addr;
    server.stop().await;
    // Both connections are closed by the server, and nothing listens.
    for c in [h1, h2] {
        match c {
            Client::H1(mut s) => assert!(within("h1 closed", s.ready()).await.is_err()),
            Client::H2(mut s) => assert!(within("h2 closed", s.ready()).await.is_err()),
        }
    }
    assert!(TcpStream::connect(addr).await.is_err());
}
