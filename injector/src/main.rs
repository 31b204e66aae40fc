//! `trellis-injector`: the mutating admission webhook that adds the Trellis
//! proxy to pods (no subcommand; configured by `TRELLIS_INJECTOR_*`
//! variables, listed by `--help`).

// `println!`/`eprintln!` panic on a closed pipe: print through
// trellis_core::{out, outln, errln}.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::Parser;
use trellis_core::config::{env_help, EnvSource};
use trellis_core::service;
use trellis_injector::webhook::config::{Config, VARIABLES};

const NAME: &str = "trellis-injector";

#[derive(Parser)]
#[command(
    name = "trellis-injector",
    version,
    about = "The Trellis injector: a mutating admission webhook that adds the trellis-proxy sidecar to pods",
    after_help = env_help("ENVIRONMENT (name, default, meaning):", VARIABLES)
)]
struct Cli {}

fn main() -> ExitCode {
    if let Err(code) = service::parse_args::<Cli>() {
        return code;
    }
    let (config, injector) = match Config::load(&EnvSource) {
        Ok(c) => c,
        Err(errors) => return service::config_error(NAME, &errors),
    };
    service::run(NAME, config.service.clone(), move |shutdown| {
        trellis_injector::webhook::run(config, injector, shutdown)
    })
}
