//! The command line of `trellis-controller`: no subcommand serves
//! (configured by `TRELLIS_CONTROLLER_*` variables); `crd` prints the
//! AuthorizationPolicy CustomResourceDefinition.

use clap::{Parser, Subcommand};
use trellis_core::config::env_help;

use crate::config::VARIABLES;

#[derive(Parser)]
#[command(
    name = "trellis-controller",
    version,
    about = "The Trellis controller: discovery, routes and inbound policy, streamed to proxies",
    after_help = env_help("ENVIRONMENT (when serving; name, default, meaning):", VARIABLES)
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print the policy.trellis.dev AuthorizationPolicy CRD (YAML).
    Crd,
}

/// Runs a subcommand; the error is for the terminal.
pub fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Crd => {
            let yaml = crate::crd::crd_yaml().map_err(|e| e.to_string())?;
            trellis_core::out!("{yaml}");
        }
    }
    Ok(())
}
