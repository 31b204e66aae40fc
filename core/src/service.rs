//! What every control-plane binary (identity, controller, injector) does
//! around its own work, done once: the command line, the settings every
//! service shares, logging, the runtime, signals, the drain and the exit
//! code.
//!
//! A binary's `main` reads:
//!
//! ```text
//! parse_args ─► Config::from_source ─► run(name, settings, |shutdown| serve(config, shutdown))
//!  (exit 64)     (exit 64: config_error)   logging, runtime, SIGTERM/SIGINT or an early end,
//!                                          Shutdown::begin, the drain, ExitCode
//! ```
//!
//! (or, for a one-shot subcommand, `exit_code(name, subcommand())`).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;

use crate::config::{serialize_display, serialize_duration, ConfigErrors, Reader, Source};
use crate::shutdown::{self, Shutdown};
use crate::telemetry::{self, parse_log_filter, LogFormat};

/// Exit code for bad configuration or arguments (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// Worker threads of every control-plane service: their work is light (a
/// review, a signature, a snapshot diff).
const WORKER_THREADS: usize = 2;

/// The settings every service reads besides its own: `<PREFIX>SHUTDOWN_GRACE`,
/// `<PREFIX>LOG` and `<PREFIX>LOG_FORMAT`. A binary's config holds them as
/// `#[serde(flatten)] service: Settings`, so `/config` shows them as three
/// fields of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// After SIGTERM, how long in-flight work may take.
    #[serde(serialize_with = "serialize_duration")]
    pub shutdown_grace: Duration,
    /// A log filter (tracing-subscriber syntax).
    pub log: String,
    #[serde(serialize_with = "serialize_display")]
    pub log_format: LogFormat,
}

impl Settings {
    /// Reads the three variables named by `prefix` (e.g.
    /// `TRELLIS_INJECTOR_`); unset, they are `grace`, `info` and `plain`.
    pub fn read<S: Source + ?Sized>(r: &mut Reader<'_, S>, prefix: &str, grace: Duration) -> Self {
        Self {
            shutdown_grace: r.duration(&format!("{prefix}SHUTDOWN_GRACE"), grace),
            log: r.parse_with(&format!("{prefix}LOG"), "info".into(), parse_log_filter),
            log_format: r.get(&format!("{prefix}LOG_FORMAT"), LogFormat::Plain),
        }
    }
}

/// Parses the command line. A usage error exits 64 and `--help` or
/// `--version` exits 0, each after clap has printed its text.
pub fn parse_args<C: clap::Parser>() -> Result<C, ExitCode> {
    C::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(EXIT_CONFIG)
        } else {
            ExitCode::SUCCESS // --help, --version
        }
    })
}

/// Reports every bad variable on stderr: exit 64.
pub fn config_error(name: &str, errors: &ConfigErrors) -> ExitCode {
    let _ = crate::stdio::write_err(format_args!("{name}: {errors}"));
    ExitCode::from(EXIT_CONFIG)
}

/// The exit code of a one-shot subcommand: 0, or 1 with its error on
/// stderr after `name: `.
pub fn exit_code(name: &str, result: Result<(), impl fmt::Display>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::errln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a service to its end: starts logging and a runtime, runs `serve`
/// with a [`Shutdown`] until SIGTERM or SIGINT (or until it ends by
/// itself), begins the shutdown, waits for `serve`, then for tracked tasks
/// at most `settings.shutdown_grace`.
///
/// Exits 0 when `serve` ended with `Ok`, 1 when it failed (its error is
/// logged and printed on stderr after `name: `) or panicked.
pub fn run<F, Fut, E>(name: &str, settings: Settings, serve: F) -> ExitCode
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    telemetry::init_logging(&settings.log, settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .thread_name(name)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            crate::errln!("{name}: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(supervise(
        name,
        settings.shutdown_grace,
        serve,
        shutdown::signal(),
    ))
}

/// [`run`] within the runtime, until `signal` resolves (tests pass a
/// future of their own for SIGTERM).
async fn supervise<F, Fut, E>(
    name: &str,
    grace: Duration,
    serve: F,
    signal: impl Future<Output = io::Result<&'static str>>,
) -> ExitCode
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    // "injector failed" rather than "trellis-injector failed".
    let what = name.strip_prefix("trellis-").unwrap_or(name);
    let shutdown = Shutdown::new();
    let mut running = tokio::spawn(serve(shutdown.clone()));
    let ended_early = tokio::select! {
        sig = signal => {
            match sig {
                Ok(sig) => tracing::info!(signal = sig, "shutting down"),
                Err(e) => tracing::error!(error = %e, "cannot listen for signals; shutting down"),
            }
            None
        }
        ended = &mut running => Some(ended),
    };
    shutdown.begin();
    let ended = match ended_early {
        Some(ended) => ended,
        None => running.await,
    };
    let code = match ended {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "{what} failed");
            crate::errln!("{name}: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %e, "{what} task failed");
            ExitCode::FAILURE
        }
    };
    let left = shutdown.drained(grace).await;
    if left > 0 {
        tracing::warn!(tasks = left, "grace period over; stopping anyway");
    }
    tracing::info!("stopped");
    code
}

/// A listener that could not be bound: start-up fails with it.
#[derive(Debug, thiserror::Error)]
#[error("binding {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// Binds `addr` (eagerly: a service fails start-up rather than serve
/// without a listener); returns the listener and its real address (the
/// port chosen when `addr` asked for `:0`).
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BindError> {
    let bind_error = |source| BindError { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests;
