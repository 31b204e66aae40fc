//! `trellis-identity`: run the mesh CA (no subcommand; configured by
//! `TRELLIS_IDENTITY_*` variables, listed by `--help`), or make key
//! material: `bootstrap` (a root and issuer), `token-key` and `token` (the
//! local mesh's stand-in for the API server's token signer).

// `println!`/`eprintln!` panic on a closed pipe: print through
// trellis_core::{out, outln, errln}.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use trellis_core::config::EnvSource;
use trellis_core::service;
use trellis_identity::cli::Cli;
use trellis_identity::config::Config;

const NAME: &str = "trellis-identity";

fn main() -> ExitCode {
    let cli: Cli = match service::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        None => serve(),
        Some(command) => service::exit_code(NAME, trellis_identity::cli::run(command)),
    }
}

fn serve() -> ExitCode {
    let config = match Config::from_source(&EnvSource) {
        Ok(c) => c,
        Err(errors) => return service::config_error(NAME, &errors),
    };
    service::run(NAME, config.service.clone(), move |shutdown| {
        trellis_identity::run(config, shutdown)
    })
}
