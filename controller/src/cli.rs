//! The command line of `trellis-controller`: no subcommand serves
//! (configured by `TRELLIS_CONTROLLER_*` variables); `crd` prints the
//! AuthorizationPolicy CustomResourceDefinition.

use clap::{Parser, Subcommand};

use crate::config::VARIABLES;

#[derive(Parser)]
#[command(
    name = "trellis-controller",
    version,
    about = "The Trellis controller: discovery, routes and inbound policy, streamed to proxies",
    after_help = env_help()
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

fn env_help() -> String {
    let mut s = String::from("ENVIRONMENT (when serving; name, default, meaning):\n");
    for (name, default, what) in VARIABLES {
        s.push_str(&format!("  {name:<42} {default:<20} {what}\n"));
    }
    s
}

/// Runs a subcommand; the error is for the terminal.
pub fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Crd => {
            let yaml = crate::crd::crd_yaml().map_err(|e| e.to_string())?;
            print!("{yaml}");
        }
    }
    Ok(())
}
