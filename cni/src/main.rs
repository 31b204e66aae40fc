//! `trellis-cni` — a CNI plugin when the container runtime runs it
//! (`CNI_COMMAND` set), else the node installer: `trellis-cni install`,
//! `trellis-cni uninstall`.

// `println!`/`eprintln!` panic on a closed pipe: print through
// trellis_core::{out, outln, errln}.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::Duration;

use trellis_cni::install::{self, InstallArgs};
use trellis_core::service::{self, Settings};
use trellis_core::telemetry::{self, LogFormat};

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return trellis_cni::plugin::main();
    }
    installer()
}

/// The node installer's command line.
#[derive(clap::Parser)]
#[command(
    name = "trellis-cni",
    version,
    about = "The trellis-cni node installer (run by the container runtime, with CNI_COMMAND set, it is the CNI plugin)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Copy the plugin onto the node and chain it into the node's network
    /// configuration; keep it there until SIGTERM, then take it out.
    Install(InstallArgs),
    /// Take the plugin out of the node's network configuration and remove
    /// its files.
    Uninstall(InstallArgs),
}

fn installer() -> ExitCode {
    let cli = match service::parse_args::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        Command::Install(args) => {
            let settings = Settings {
                // The uninstall after SIGTERM runs inside `install::run`,
                // before the drain; nothing else is tracked.
                shutdown_grace: Duration::from_secs(1),
                log: args.log_level.clone(),
                log_format: LogFormat::Plain,
            };
            service::run("trellis-cni install", settings, move |shutdown| {
                install::run(args, shutdown)
            })
        }
        Command::Uninstall(args) => {
            telemetry::init_logging(&args.log_level, LogFormat::Plain);
            service::exit_code("trellis-cni uninstall", install::uninstall(&args))
        }
    }
}
