//! `trellis-identity`: run the mesh CA (no subcommand; configured by
//! `TRELLIS_IDENTITY_*` variables, listed by `--help`), or make key
//! material: `bootstrap` (a root and issuer), `token-key` and `token` (the
//! local mesh's stand-in for the API server's token signer).

use std::process::ExitCode;

use clap::Parser;
use trellis_core::config::EnvSource;
use trellis_core::shutdown::{self, Shutdown};
use trellis_identity::cli::Cli;
use trellis_identity::config::Config;

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
    match trellis_identity::cli::run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-identity: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> ExitCode {
    let config = match Config::from_source(&EnvSource) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("trellis-identity: {errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    trellis_core::telemetry::init_logging(&config.log, config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("trellis-identity")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trellis-identity: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let grace = config.shutdown_grace;
    let started = match trellis_identity::verifier_from_config(&config).await {
        Ok(verifier) => trellis_identity::Server::bind(config, verifier).await,
        Err(e) => Err(e),
    };
    let server = match started {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            eprintln!("trellis-identity: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = Shutdown::new();
    let mut running = tokio::spawn(server.run(shutdown.clone()));
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
            tracing::error!(error = %e, "serving failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %e, "server task failed");
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
