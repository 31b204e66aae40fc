//! `trellis-app`: the small programs that run inside pods of the local mesh,
//! for the demo and the end-to-end tests. Mesh files run them as
//! `{trellis} app …` (every file in `examples/`): `trellis app` runs this
//! binary, found beside `trellis`, so the user-facing CLI does not carry
//! them.
//!
//! Servers (each binds eagerly, logs `listening on …` once, and stops on
//! SIGTERM/SIGINT through the one [`Shutdown`] mechanism):
//!
//! - `http` ([`http`]): HTTP/1.1 and h2c on one port, with endpoints for echo,
//!   status codes, large streamed downloads and uploads, delays, trailers and
//!   WebSocket echo, plus optional injected failures.
//! - `banner` ([`tcp`]): a server-speaks-first line protocol (SMTP-like), the
//!   case a proxy must not stall by waiting for the client to speak.
//! - `tcp-echo` ([`tcp`]): plain TCP echo with correct half-close.
//!
//! Clients (always bounded; each prints one JSON line on stdout):
//!
//! - `load` ([`load`]): a fixed-rate HTTP/1.1 or h2c load generator.
//! - `banner-client` ([`tcp`]): checks the `banner` protocol end to end.
//!
//! Every server is an `async fn serve(listener, opts, shutdown)` so that tests
//! start it in-process on a listener bound to port 0.

// `println!`/`eprintln!` panic on a closed pipe: print through
// trellis_core::{out, outln, errln}.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod http;
mod load;
mod tcp;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use futures_util::FutureExt as _;
use tokio::net::{TcpListener, TcpStream};
use trellis_core::shutdown::Shutdown;
use trellis_core::{errln, outln};

/// How long servers let in-flight connections finish after a signal.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    name = "trellis-app",
    version,
    about = "Small programs that run inside pods of the local mesh (demo and tests); also `trellis app`"
)]
struct Cli {
    #[command(subcommand)]
    command: AppCommand,
}

#[derive(clap::Subcommand, Debug)]
enum AppCommand {
    /// HTTP/1.1 and h2c server: /, /echo, /status/CODE, /bytes/N, /sha256,
    /// /delay/MS, /trailers, /ws.
    Http(http::HttpArgs),
    /// Server-speaks-first line protocol (SMTP-like): `220` banner, `250` per
    /// line, `QUIT` → `221`.
    Banner(tcp::BannerArgs),
    /// Plain TCP echo, with half-close.
    TcpEcho(tcp::EchoArgs),
    /// Bounded, fixed-rate HTTP load generator; prints a JSON summary.
    Load(load::LoadArgs),
    /// Client of `banner`: checks the banner and every reply; prints a JSON
    /// summary and fails on any mismatch.
    BannerClient(tcp::BannerClientArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("trellis-app: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: AppCommand) -> anyhow::Result<()> {
    trellis_core::telemetry::init_logging("info", trellis_core::telemetry::LogFormat::Plain);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        match cmd {
            AppCommand::Http(args) => {
                let opts =
                    http::HttpOpts::new(args.name, args.fail_rate)?.with_latency(args.latency);
                let listener = bind(args.listen).await?;
                until_signal(|sd| http::serve(listener, opts, sd)).await
            }
            AppCommand::Banner(args) => {
                let opts = tcp::BannerOpts::new(args.name)?;
                let listener = bind(args.listen).await?;
                until_signal(|sd| tcp::serve_banner(listener, opts, sd)).await
            }
            AppCommand::TcpEcho(args) => {
                let listener = bind(args.listen).await?;
                until_signal(|sd| tcp::serve_echo(listener, sd)).await
            }
            AppCommand::Load(args) => {
                let plan = load::LoadPlan::from_args(&args)?;
                let summary = until_signal(|sd| load::run(plan, sd)).await?;
                outln!("{}", serde_json::to_string(&summary)?);
                Ok(())
            }
            AppCommand::BannerClient(args) => {
                let result = tcp::banner_client(&args.opts()).await;
                outln!("{}", serde_json::to_string(&result)?);
                match result.error {
                    None => Ok(()),
                    Some(e) => Err(anyhow::anyhow!("banner-client: {e}")),
                }
            }
        }
    })
}

/// Binds `addr`, failing with a message that names it.
async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Runs `body` with a [`Shutdown`] that begins on SIGTERM or SIGINT.
async fn until_signal<F, Fut, T>(body: F) -> anyhow::Result<T>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let shutdown = Shutdown::new();
    let mut signal = Box::pin(trellis_core::shutdown::signal());
    // Poll once now so the handlers are installed before anything announces
    // itself ready: a SIGTERM sent right after `listening on` is then ours.
    match (&mut signal).now_or_never() {
        Some(res) => {
            let name = res.context("installing signal handlers")?;
            tracing::info!("{name}: shutting down");
            shutdown.begin();
        }
        None => {
            let watcher = shutdown.clone();
            tokio::spawn(async move {
                match signal.await {
                    Ok(name) => tracing::info!("{name}: shutting down"),
                    Err(error) => tracing::warn!(%error, "signal handlers failed; shutting down"),
                }
                watcher.begin();
            });
        }
    }
    body(shutdown).await
}

/// Accepts connections until shutdown begins, running `on_conn` for each in a
/// task that shutdown tracks; then waits for those tasks, at most
/// [`DRAIN_GRACE`].
async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: &Shutdown, mut on_conn: F)
where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = shutdown.signaled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                shutdown.spawn(on_conn(stream, peer));
            }
            Err(error) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    let left = shutdown.drained(DRAIN_GRACE).await;
    if left > 0 {
        tracing::info!(
            connections = left,
            "closing connections still open after the grace period"
        );
    }
}

/// Parses a duration such as `10s`, `500ms`, `2m`, `1h` or `1.5s`; a bare
/// number is seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 10s, 500ms, 2m, 1h"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {s:?}: use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("invalid duration {s:?}: {e}"))
}
