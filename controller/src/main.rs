//! `trellis-controller`: serve discovery to proxies (no subcommand;
//! configured by `TRELLIS_CONTROLLER_*` variables, listed by `--help`), or
//! print the AuthorizationPolicy CRD (`crd`).

use std::process::ExitCode;

use clap::Parser;
use trellis_controller::cli::Cli;
use trellis_controller::config::Config;
use trellis_core::config::EnvSource;
use trellis_core::shutdown::{self, Shutdown};

/// Exit code for bad configuration or arguments (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    let Some(command) = cli.command else {
        return serve();
    };
    match trellis_controller::cli::run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-controller: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> ExitCode {
    let config = match Config::from_source(&EnvSource) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("trellis-controller: {errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    trellis_core::telemetry::init_logging(&config.log, config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("trellis-controller")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trellis-controller: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let grace = config.shutdown_grace;
    let shutdown = Shutdown::new();
    let mut running = tokio::spawn(trellis_controller::run(config, shutdown.clone()));
    let ended_early = tokio::select! {
        sig = shutdown::signal() => {
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
            tracing::error!(error = %e, "controller failed");
            eprintln!("trellis-controller: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %e, "controller task failed");
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
