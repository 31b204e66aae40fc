//! `trellis app banner`, `banner-client` and `tcp-echo`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::{free_addr, within, Server};
use crate::tcp::{self, BannerClientOpts, BannerOpts};

async fn read_line(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    let mut line = String::new();
    within("a line", r.read_line(&mut line)).await.unwrap();
    line
}

#[tokio::test]
async fn banner_speaks_first_and_answers_each_line() {
    let server = Server::banner("mail-0").await;
    let (r, mut w) = TcpStream::connect(server.addr).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    // Nothing sent yet: the server speaks first.
    assert_eq!(read_line(&mut r).await, "220 mail-0 ready\r\n");
    w.write_all(b"HELO client\r\nsecond line\n").await.unwrap();
    assert_eq!(read_line(&mut r).await, "250 HELO client\r\n");
    assert_eq!(read_line(&mut r).await, "250 second line\r\n");
    w.write_all(b"quit\r\n").await.unwrap();
    assert_eq!(read_line(&mut r).await, "221 bye\r\n");
    let mut rest = Vec::new();
    within("the close", r.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn banner_refuses_an_endless_line() {
    let server = Server::banner("b").await;
    let (r, mut w) = TcpStream::connect(server.addr).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    assert_eq!(read_line(&mut r).await, "220 b ready\r\n");
    w.write_all(&vec![b'x'; tcp::MAX_LINE + 100]).await.unwrap();
    assert_eq!(read_line(&mut r).await, "500 line too long\r\n");
    server.stop().await;
}

#[tokio::test]
async fn banner_says_421_on_shutdown() {
    let server = Server::banner("b").await;
    let (r, _w) = TcpStream::connect(server.addr).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    assert_eq!(read_line(&mut r).await, "220 b ready\r\n");
    server.shutdown.begin();
    assert_eq!(read_line(&mut r).await, "421 b shutting down\r\n");
    server.stop().await;
}

#[test]
fn banner_name_must_be_one_line() {
    assert!(BannerOpts::new("a\r\nb".into()).is_err());
    assert!(BannerOpts::new(String::new()).is_err());
}

fn client_opts(addr: SocketAddr, lines: u32) -> BannerClientOpts {
    BannerClientOpts {
        addr: addr.to_string(),
        lines,
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn banner_client_passes_against_the_banner_server() {
    let server = Server::banner("smtp").await;
    let report = within(
        "banner-client",
        tcp::banner_client(&client_opts(server.addr, 5)),
    )
    .await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.replies_ok, 5);
    assert_eq!(report.banner.as_deref(), Some("220 smtp ready"));
    assert_eq!(report.peer, Some(server.addr.to_string()));
    assert!(report.error.is_none());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["ok"], true);
    assert!(json.get("error").is_none());
    server.stop().await;
}

/// A server that sends `script` line by line, one per line received after
/// the first, then closes.
async fn scripted(script: &'static [&'static str]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        for (i, line) in script.iter().enumerate() {
            if i > 0 {
                let mut got = String::new();
                r.read_line(&mut got).await.unwrap();
            }
            w.write_all(line.as_bytes()).await.unwrap();
        }
    });
    addr
}

#[tokio::test]
async fn banner_client_reports_a_mismatch() {
    let addr = scripted(&["220 x ready\r\n", "250 line 1\r\n", "250 wrong\r\n"]).await;
    let report = within("banner-client", tcp::banner_client(&client_opts(addr, 3))).await;
    assert!(!report.ok);
    assert_eq!(report.replies_ok, 1);
    let error = report.error.unwrap();
    assert!(
        error.contains("\"250 line 2\"") && error.contains("\"250 wrong\""),
        "{error}"
    );

    let addr = scripted(&["554 no service\r\n"]).await;
    let report = within("banner-client", tcp::banner_client(&client_opts(addr, 1))).await;
    assert!(!report.ok);
    assert!(report.error.unwrap().contains("554 no service"));

    let addr = scripted(&["220 x ready\r\n"]).await;
    let report = within("banner-client", tcp::banner_client(&client_opts(addr, 1))).await;
    assert!(!report.ok);
    assert!(report.error.unwrap().contains("connection closed"));
}

#[tokio::test]
async fn banner_client_reports_a_refused_connection() {
    let addr = free_addr().await;
    let report = within("banner-client", tcp::banner_client(&client_opts(addr, 1))).await;
    assert!(!report.ok);
    assert!(report.error.unwrap().contains("connecting to"));
}

#[tokio::test]
async fn tcp_echo_returns_everything_after_half_close() {
    let server = Server::echo().await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let (mut r, mut w) = TcpStream::connect(server.addr).await.unwrap().into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        // Half-close: no more from us, but keep reading.
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::new();
    within("the echo and its EOF", r.read_to_end(&mut got))
        .await
        .unwrap();
    let _w = writer.await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    server.stop().await;
}
