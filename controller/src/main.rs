//! `trellis-controller`: serve discovery to proxies (no subcommand;
//! configured by `TRELLIS_CONTROLLER_*` variables, listed by `--help`), or
//! print the AuthorizationPolicy CRD (`crd`).

// `println!`/`eprintln!` panic on a closed pipe: print through
// trellis_core::{out, outln, errln}.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use trellis_controller::cli::Cli;
use trellis_controller::config::Config;
use trellis_core::config::EnvSource;
use trellis_core::service;

const NAME: &str = "trellis-controller";

fn main() -> ExitCode {
    let cli: Cli = match service::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        None => serve(),
        Some(command) => service::exit_code(NAME, trellis_controller::cli::run(command)),
    }
}

fn serve() -> ExitCode {
    let config = match Config::from_source(&EnvSource) {
        Ok(c) => c,
        Err(errors) => return service::config_error(NAME, &errors),
    };
    service::run(NAME, config.service.clone(), move |shutdown| {
        trellis_controller::run(config, shutdown)
    })
}
