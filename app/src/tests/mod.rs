//! In-process tests of `trellis app …`: every server runs on a listener bound
//! to `127.0.0.1:0`; every wait is bounded.

// Tests: a panic with its message is how a failure is reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http;
mod load;
mod tcp;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use trellis_core::shutdown::Shutdown;

use super::http::HttpOpts;
use super::tcp::BannerOpts;
use super::{parse_duration, AppCommand};

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?}: {what}"),
    }
}

struct Server {
    addr: SocketAddr,
    shutdown: Shutdown,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start<F, Fut>(serve: F) -> Server
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(serve(listener, shutdown.clone()));
        Server {
            addr,
            shutdown,
            task,
        }
    }

    async fn http(name: &str, fail_rate: f64) -> Server {
        let opts = HttpOpts::new(name.into(), fail_rate).unwrap();
        Self::start(|l, sd| super::http::serve(l, opts, sd)).await
    }

    async fn banner(name: &str) -> Server {
        let opts = BannerOpts::new(name.into()).unwrap();
        Self::start(|l, sd| crate::tcp::serve_banner(l, opts, sd)).await
    }

    async fn echo() -> Server {
        Self::start(crate::tcp::serve_echo).await
    }

    async fn stop(self) {
        self.shutdown.begin();
        within("the server to stop", self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// An address where nothing listens.
async fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

// ---------------------------------------------------------------- CLI

#[derive(Parser, Debug)]
struct TestCli {
    #[command(subcommand)]
    cmd: AppCommand,
}

fn parse(args: &[&str]) -> Result<AppCommand, clap::Error> {
    TestCli::try_parse_from(std::iter::once("app").chain(args.iter().copied())).map(|c| c.cmd)
}

#[test]
fn cli_names_and_flags() {
    let cmd = parse(&[
        "http",
        "--listen",
        "0.0.0.0:8080",
        "--name",
        "web-0",
        "--fail-rate",
        "0.1",
    ])
    .unwrap();
    assert!(matches!(cmd, AppCommand::Http(ref a) if a.name == "web-0" && a.fail_rate == 0.1));
    assert!(parse(&["http", "--listen", "0.0.0.0:8080", "--fail-rate", "2"]).is_err());
    assert!(parse(&["http"]).is_err(), "--listen is required");
    assert!(matches!(
        parse(&["banner", "--listen", "127.0.0.1:2525"]).unwrap(),
        AppCommand::Banner(_)
    ));
    assert!(matches!(
        parse(&["tcp-echo", "--listen", "[::1]:7000"]).unwrap(),
        AppCommand::TcpEcho(_)
    ));
    let cmd = parse(&["banner-client", "--addr", "mail.demo:25", "--lines", "4"]).unwrap();
    assert!(
        matches!(cmd, AppCommand::BannerClient(ref a) if a.lines == 4 && a.timeout == Duration::from_secs(10))
    );

    let unbounded = parse(&["load", "--url", "http://x/"]).unwrap_err();
    assert_eq!(
        unbounded.kind(),
        clap::error::ErrorKind::MissingRequiredArgument
    );
    let cmd = parse(&[
        "load",
        "--url",
        "http://x/",
        "--rps",
        "50",
        "--duration",
        "10s",
        "--h2",
        "--concurrency",
        "4",
        "--host",
        "y",
    ])
    .unwrap();
    let AppCommand::Load(a) = cmd else {
        panic!("not load")
    };
    assert_eq!(
        (a.rps, a.duration, a.h2, a.concurrency, a.host.as_deref()),
        (50, Some(Duration::from_secs(10)), true, 4, Some("y"))
    );
    assert!(parse(&["load", "--url", "http://x/", "--requests", "10"]).is_ok());
}

#[test]
fn durations_parse() {
    for (s, want) in [
        ("10s", Duration::from_secs(10)),
        ("500ms", Duration::from_millis(500)),
        ("2m", Duration::from_secs(120)),
        ("1h", Duration::from_secs(3600)),
        ("1.5s", Duration::from_millis(1500)),
        ("7", Duration::from_secs(7)),
    ] {
        assert_eq!(parse_duration(s), Ok(want), "{s}");
    }
    for bad in ["", "s", "10x", "-1s", "1.2.3s", "ms10"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}
