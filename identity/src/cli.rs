//! The command line of `trellis-identity`: no subcommand serves (configured
//! by `TRELLIS_IDENTITY_*` variables); the subcommands make key material.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use trellis_core::config::{env_help, parse_duration};

use crate::config::VARIABLES;
use crate::token::{LocalIssuer, DEFAULT_AUDIENCE, DEFAULT_TOKEN_ISSUER};

#[derive(Parser)]
#[command(
    name = "trellis-identity",
    version,
    about = "The Trellis mesh CA",
    after_help = env_help("ENVIRONMENT (when serving; name, default, meaning):", VARIABLES)
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Make a new root and issuer; write roots.pem, issuer.crt, issuer.key (0600).
    Bootstrap {
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "87600h", value_parser = parse_duration)]
        root_lifetime: Duration,
        #[arg(long, default_value = "8760h", value_parser = parse_duration)]
        issuer_lifetime: Duration,
        /// Replace files that exist.
        #[arg(long)]
        force: bool,
    },
    /// Make a token-signing key; write token.key (0600) and jwks.json.
    TokenKey {
        #[arg(long)]
        out: PathBuf,
        /// Replace files that exist.
        #[arg(long)]
        force: bool,
    },
    /// Print a ServiceAccount token signed with a key from `token-key`.
    Token {
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = DEFAULT_TOKEN_ISSUER)]
        issuer: String,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        #[arg(long, default_value = "local")]
        pod: String,
        #[arg(long, default_value = DEFAULT_AUDIENCE)]
        audience: String,
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        lifetime: Duration,
    },
}

/// Runs a subcommand; the error is for the terminal.
pub fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Bootstrap {
            trust_domain,
            out,
            root_lifetime,
            issuer_lifetime,
            force,
        } => {
            let bundle = crate::bootstrap(&trust_domain, root_lifetime, issuer_lifetime)
                .map_err(|e| e.to_string())?;
            crate::ca::write_bundle(&out, &bundle, force).map_err(|e| e.to_string())?;
            trellis_core::errln!(
                "wrote roots.pem, issuer.crt, issuer.key in {}",
                out.display()
            );
        }
        Command::TokenKey { out, force } => {
            crate::token::write_token_key(&out, DEFAULT_TOKEN_ISSUER, force)
                .map_err(|e| e.to_string())?;
            trellis_core::errln!("wrote token.key, jwks.json in {}", out.display());
        }
        Command::Token {
            key,
            issuer,
            namespace,
            service_account,
            pod,
            audience,
            lifetime,
        } => {
            let pem = std::fs::read_to_string(&key)
                .map_err(|e| format!("reading {}: {e}", key.display()))?;
            let signer = LocalIssuer::from_pem(&issuer, &pem).map_err(|e| e.to_string())?;
            let token = signer
                .sign(&namespace, &service_account, &pod, &audience, lifetime)
                .map_err(|e| e.to_string())?;
            trellis_core::outln!("{token}");
        }
    }
    Ok(())
}
