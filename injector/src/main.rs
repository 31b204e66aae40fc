//! `trellis-injector`: the mutating admission webhook that adds the Trellis
//! proxy to pods (no subcommand; configured by `TRELLIS_INJECTOR_*`
//! variables, listed by `--help`).

use std::process::ExitCode;

use clap::Parser;
use trellis_core::config::EnvSource;
use trellis_core::shutdown::{self, Shutdown};
use trellis_injector::webhook::config::{Config, VARIABLES};
use trellis_injector::InjectorConfig;

/// Exit code for bad configuration or arguments (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "trellis-injector",
    version,
    about = "The Trellis injector: a mutating admission webhook that adds the trellis-proxy sidecar to pods",
    after_help = env_help()
)]
struct Cli {}

fn env_help() -> String {
    let mut s = String::from("ENVIRONMENT (name, default, meaning):\n");
    for (name, default, what) in VARIABLES {
        s.push_str(&format!("  {name:<36} {default:<34} {what}\n"));
    }
    s
}

fn main() -> ExitCode {
    if let Err(e) = Cli::try_parse() {
        let _ = e.print();
        return if e.use_stderr() {
            ExitCode::from(EXIT_CONFIG)
        } else {
            ExitCode::SUCCESS // --help, --version
        };
    }
    let (config, injector) = match Config::load(&EnvSource) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("trellis-injector: {errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    trellis_core::telemetry::init_logging(&config.log, config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("trellis-injector")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trellis-injector: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, injector))
}

async fn run(config: Config, injector: InjectorConfig) -> ExitCode {
    let grace = config.shutdown_grace;
    let shutdown = Shutdown::new();
    let mut running = tokio::spawn(trellis_injector::webhook::run(
        config,
        injector,
        shutdown.clone(),
    ));
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
            tracing::error!(error = %e, "injector failed");
            eprintln!("trellis-injector: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %e, "injector task failed");
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
