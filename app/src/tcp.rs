//! Opaque TCP programs: `banner` (server speaks first), its client
//! `banner-client`, and `tcp-echo`.
//!
//! The banner protocol, SMTP-like, line-based with CRLF endings:
//!
//! ```text
//! S: 220 NAME ready
//! C: hello            S: 250 hello        (once per line)
//! C: QUIT             S: 221 bye          (server closes)
//! ```
//!
//! A line longer than [`MAX_LINE`] gets `500 line too long` and the
//! connection is closed; on shutdown the server says `421 NAME shutting down`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader,
};
use tokio::net::{TcpListener, TcpStream};
use trellis_core::shutdown::Shutdown;

/// The longest line, in bytes without its ending, that `banner` accepts.
pub(crate) const MAX_LINE: usize = 4096;

#[derive(clap::Args, Debug)]
pub struct BannerArgs {
    /// Address to listen on, e.g. 0.0.0.0:2525.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: SocketAddr,
    /// Name announced in the `220` banner.
    #[arg(long, default_value = "banner")]
    pub(crate) name: String,
}

#[derive(clap::Args, Debug)]
pub struct EchoArgs {
    /// Address to listen on, e.g. 0.0.0.0:7000.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: SocketAddr,
}

#[derive(clap::Args, Debug)]
pub struct BannerClientArgs {
    /// Server to talk to, HOST:PORT (names resolve through the system resolver, /etc/hosts included).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) addr: String,
    /// Lines to send before QUIT.
    #[arg(long, default_value_t = 3)]
    pub(crate) lines: u32,
    /// How long to wait for connecting and for each reply.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub(crate) timeout: Duration,
}

impl BannerClientArgs {
    pub(crate) fn opts(&self) -> BannerClientOpts {
        BannerClientOpts {
            addr: self.addr.clone(),
            lines: self.lines,
            timeout: self.timeout,
        }
    }
}

/// What the banner server needs to know.
#[derive(Debug, Clone)]
pub(crate) struct BannerOpts {
    name: Arc<str>,
}

impl BannerOpts {
    pub(crate) fn new(name: String) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !name.is_empty() && !name.contains(['\r', '\n']),
            "--name {name:?} must be non-empty and on one line"
        );
        Ok(Self { name: name.into() })
    }
}

/// Serves the banner protocol on `listener` until `shutdown` begins.
pub(crate) async fn serve_banner(
    listener: TcpListener,
    opts: BannerOpts,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let local = listener
        .local_addr()
        .context("reading the listener's address")?;
    tracing::info!(name = %opts.name, "listening on {local} (banner protocol)");
    super::accept_loop(listener, &shutdown, |stream, peer| {
        let name = opts.name.clone();
        let shutdown = shutdown.clone();
        async move {
            if let Err(error) = banner_conn(stream, &name, &shutdown).await {
                tracing::debug!(client.addr = %peer, %error, "banner connection ended with an error");
            }
        }
    })
    .await;
    Ok(())
}

async fn banner_conn(mut stream: TcpStream, name: &str, shutdown: &Shutdown) -> io::Result<()> {
    let (r, mut w) = stream.split();
    let mut r = BufReader::new(r);
    w.write_all(format!("220 {name} ready\r\n").as_bytes())
        .await?;
    let mut line = Vec::with_capacity(128);
    loop {
        let read = tokio::select! {
            read = read_line(&mut r, &mut line) => read?,
            _ = shutdown.signaled() => {
                w.write_all(format!("421 {name} shutting down\r\n").as_bytes()).await?;
                return w.shutdown().await;
            }
        };
        match read {
            LineRead::Eof => return Ok(()),
            LineRead::TooLong => {
                w.write_all(b"500 line too long\r\n").await?;
                return w.shutdown().await;
            }
            LineRead::Got => {}
        }
        if line.eq_ignore_ascii_case(b"QUIT") {
            w.write_all(b"221 bye\r\n").await?;
            return w.shutdown().await;
        }
        let mut reply = Vec::with_capacity(line.len() + 6);
        reply.extend_from_slice(b"250 ");
        reply.extend_from_slice(&line);
        reply.extend_from_slice(b"\r\n");
        w.write_all(&reply).await?;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// `buf` holds a line, without its ending (a last line may lack one).
    Got,
    Eof,
    TooLong,
}

/// Reads one line into `buf` (cleared first), at most [`MAX_LINE`] bytes plus
/// its `\r\n` or `\n` ending, which is removed.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<LineRead> {
    buf.clear();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 2)
        .read_until(b'\n', buf)
        .await?;
    if n == 0 {
        return Ok(LineRead::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.len() > MAX_LINE {
        return Ok(LineRead::TooLong);
    }
    Ok(LineRead::Got)
}

/// Echoes every byte on `listener`'s connections until `shutdown` begins.
/// After the client's EOF, the rest is written back and then the write side
/// is shut down, so half-closing clients get everything.
pub(crate) async fn serve_echo(listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let local = listener
        .local_addr()
        .context("reading the listener's address")?;
    tracing::info!("listening on {local} (TCP echo)");
    super::accept_loop(listener, &shutdown, |mut stream, peer| {
        let shutdown = shutdown.clone();
        async move {
            let (mut r, mut w) = stream.split();
            let echo = async {
                tokio::io::copy(&mut r, &mut w).await?;
                w.shutdown().await
            };
            tokio::select! {
                result = echo => if let Err(error) = result {
                    tracing::debug!(client.addr = %peer, %error, "echo connection ended with an error");
                },
                _ = shutdown.signaled() => {}
            }
        }
    })
    .await;
    Ok(())
}

/// What `banner-client` does.
#[derive(Debug, Clone)]
pub(crate) struct BannerClientOpts {
    pub(crate) addr: String,
    pub(crate) lines: u32,
    pub(crate) timeout: Duration,
}

/// The JSON line `banner-client` prints.
#[derive(Debug, Serialize)]
pub(crate) struct BannerReport {
    pub(crate) addr: String,
    /// The address actually connected to.
    pub(crate) peer: Option<String>,
    pub(crate) ok: bool,
    pub(crate) banner: Option<String>,
    pub(crate) lines: u32,
    pub(crate) replies_ok: u32,
    pub(crate) elapsed_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BannerClientError {
    #[error("resolving {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("{addr} resolved to no address")]
    NoAddress { addr: String },
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("timed out after {timeout:?} {what}")]
    Timeout { what: String, timeout: Duration },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("connection closed {what}")]
    Closed { what: String },
    #[error("{what}: expected {expected:?}, got {got:?}")]
    Mismatch {
        what: String,
        expected: String,
        got: String,
    },
}

/// Talks the banner protocol with `opts.addr`: checks the `220` banner, one
/// `250` echo per line, `221` after QUIT, then the server's close.
pub(crate) async fn banner_client(opts: &BannerClientOpts) -> BannerReport {
    let started = Instant::now();
    let mut report = BannerReport {
        addr: opts.addr.clone(),
        peer: None,
        ok: false,
        banner: None,
        lines: opts.lines,
        replies_ok: 0,
        elapsed_ms: 0.0,
        error: None,
    };
    let result = banner_conversation(opts, &mut report).await;
    report.elapsed_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    match result {
        Ok(()) => report.ok = true,
        Err(e) => report.error = Some(e.to_string()),
    }
    report
}

async fn banner_conversation(
    opts: &BannerClientOpts,
    report: &mut BannerReport,
) -> Result<(), BannerClientError> {
    let timeout = opts.timeout;
    let mut stream = connect(&opts.addr, timeout).await?;
    report.peer = stream.peer_addr().ok().map(|a| a.to_string());
    let (r, mut w) = stream.split();
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();

    let banner = reply(&mut r, &mut buf, timeout, "waiting for the banner").await?;
    report.banner = Some(banner.clone());
    if !banner.starts_with("220 ") {
        return Err(mismatch("banner", "220 …", banner));
    }
    for i in 1..=opts.lines {
        let line = format!("line {i}");
        let what = format!("sending {line:?}");
        step(
            &what,
            timeout,
            w.write_all(format!("{line}\r\n").as_bytes()),
        )
        .await?;
        let got = reply(
            &mut r,
            &mut buf,
            timeout,
            &format!("waiting for the reply to {line:?}"),
        )
        .await?;
        let expected = format!("250 {line}");
        if got != expected {
            return Err(mismatch(&format!("reply to {line:?}"), &expected, got));
        }
        report.replies_ok += 1;
    }
    step("sending QUIT", timeout, w.write_all(b"QUIT\r\n")).await?;
    let bye = reply(&mut r, &mut buf, timeout, "waiting for the reply to QUIT").await?;
    if !bye.starts_with("221") {
        return Err(mismatch("reply to QUIT", "221 bye", bye));
    }
    buf.clear();
    let n = step(
        "waiting for the server to close",
        timeout,
        r.read_buf(&mut buf),
    )
    .await?;
    if n != 0 {
        let got = String::from_utf8_lossy(&buf).into_owned();
        return Err(mismatch("after QUIT", "the server to close", got));
    }
    Ok(())
}

fn mismatch(what: &str, expected: &str, got: String) -> BannerClientError {
    BannerClientError::Mismatch {
        what: what.to_owned(),
        expected: expected.to_owned(),
        got,
    }
}

/// Resolves `addr` with the system resolver and connects to the first
/// address that answers.
pub(crate) async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, BannerClientError> {
    let resolve = tokio::net::lookup_host(addr);
    let addrs: Vec<SocketAddr> = tokio::time::timeout(timeout, resolve)
        .await
        .map_err(|_| BannerClientError::Timeout {
            what: format!("resolving {addr}"),
            timeout,
        })?
        .map_err(|source| BannerClientError::Resolve {
            addr: addr.to_owned(),
            source,
        })?
        .collect();
    let mut last = BannerClientError::NoAddress {
        addr: addr.to_owned(),
    };
    for a in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(a)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(source)) => {
                last = BannerClientError::Connect {
                    addr: a.to_string(),
                    source,
                }
            }
            Err(_) => {
                last = BannerClientError::Timeout {
                    what: format!("connecting to {a}"),
                    timeout,
                }
            }
        }
    }
    Err(last)
}

async fn step<T>(
    what: &str,
    timeout: Duration,
    fut: impl Future<Output = io::Result<T>>,
) -> Result<T, BannerClientError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(BannerClientError::Io {
            what: what.to_owned(),
            source,
        }),
        Err(_) => Err(BannerClientError::Timeout {
            what: what.to_owned(),
            timeout,
        }),
    }
}

async fn reply<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    timeout: Duration,
    what: &str,
) -> Result<String, BannerClientError> {
    match step(what, timeout, read_line(r, buf)).await? {
        LineRead::Got => Ok(String::from_utf8_lossy(buf).into_owned()),
        LineRead::Eof => Err(BannerClientError::Closed {
            what: what.to_owned(),
        }),
        LineRead::TooLong => Err(BannerClientError::Mismatch {
            what: what.to_owned(),
            expected: "a line".into(),
            got: format!("more than {MAX_LINE} bytes without a line ending"),
        }),
    }
}
