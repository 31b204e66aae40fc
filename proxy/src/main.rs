//! `trellis-proxy` — run the sidecar (no arguments), or `trellis-proxy init`
//! to install the pod's traffic-capture rules (the init container).

// `println!`/`eprintln!` panic on a closed pipe (`| tee` killed by the
// same Ctrl-C): print through trellis_core::{out, outln, errln}.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::sync::Arc;

use trellis_core::config::{env_help, EnvSource};
use trellis_core::service::{self, EXIT_CONFIG};
use trellis_core::shutdown::{self, Shutdown};
use trellis_core::{errln, stdio};
use trellis_proxy::config::{Config, VARIABLES};
use trellis_proxy::orig_dst::SoOriginalDst;
use trellis_proxy::Proxy;

fn main() -> ExitCode {
    let mut argv = std::env::args();
    match argv.nth(1).as_deref() {
        Some("init") => return init(),
        Some("-h" | "--help") => return help(),
        Some("-V" | "--version") => {
            // A closed stdout (`| true`) ends the output, as clap does.
            let _ = stdio::write_out(format_args!(
                "trellis-proxy {}\n",
                env!("CARGO_PKG_VERSION")
            ));
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            errln!("trellis-proxy: unknown argument {other:?} (try --help)");
            return ExitCode::from(EXIT_CONFIG);
        }
        None => {}
    }
    let config = match Config::from_source(&EnvSource) {
        Ok(c) => c,
        Err(errors) => return service::config_error("trellis-proxy", &errors),
    };
    trellis_core::telemetry::init_logging(&config.log, config.log_format);
    // One worker (the sidecar default) runs on the main thread with no
    // work-stealing machinery; more workers get the multi-thread scheduler.
    let mut builder = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.worker_threads);
        b
    };
    let runtime = match builder.thread_name("trellis-proxy").enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            errln!("trellis-proxy: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let grace = config.shutdown_grace;
    let proxy = match Proxy::bind(config, Arc::new(SoOriginalDst)).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            errln!("trellis-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = Shutdown::new();
    let running = tokio::spawn(proxy.run(shutdown.clone()));
    match shutdown::signal().await {
        Ok(sig) => tracing::info!(signal = sig, grace = ?grace, "shutting down"),
        Err(e) => tracing::error!(error = %e, "cannot listen for signals; shutting down"),
    }
    shutdown.begin();
    let _ = running.await;
    let left = shutdown.drained(grace).await;
    if left > 0 {
        tracing::warn!(
            connections = left,
            "grace period over; closing remaining connections"
        );
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

fn init() -> ExitCode {
    use clap::Parser;

    /// `trellis-proxy init [ARGS]`: installs the pod's traffic-capture rules.
    #[derive(Parser)]
    #[command(
        name = "trellis-proxy init",
        version,
        about = "Install the pod's traffic-capture rules (iptables)"
    )]
    struct InitCli {
        #[command(flatten)]
        args: trellis_core::capture::InitArgs,
    }

    // Skip argv[0]: clap then takes "init" as the program name.
    let cli = InitCli::parse_from(std::env::args().skip(1));
    trellis_core::telemetry::init_logging("info", trellis_core::telemetry::LogFormat::Plain);
    match trellis_core::capture::run(&cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("trellis-proxy init: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `--help`: exits 0, like clap's `--help`, also when stdout is a closed
/// pipe (`trellis-proxy --help | true`), which ends the output.
fn help() -> ExitCode {
    let _ = stdio::write_out(format_args!(
        "trellis-proxy {}: the Trellis sidecar proxy\n\n\
         USAGE:\n  trellis-proxy            run the proxy (configured by environment)\n  \
         trellis-proxy init ...   install the pod's capture rules (see `trellis-proxy init --help`)\n\n\
         {}",
        env!("CARGO_PKG_VERSION"),
        env_help("ENVIRONMENT (name, default, meaning):", VARIABLES)
    ));
    ExitCode::SUCCESS
}
