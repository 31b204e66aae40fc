//! `trellis`, the command line.
//!
//! - `trellis mesh up|status|exec|down` — the local mesh ([`mesh`]).
//! - `trellis inject -f FILE` — a manifest with the sidecar injected ([`inject`]).
//! - `trellis demo` — a built-in local mesh with traffic and a live table ([`demo`]).
//! - `trellis app …` — the small programs the demo and the tests run inside
//!   pods: HTTP echo servers, a server-speaks-first TCP service, a load
//!   generator ([`app`]).

// `println!`/`eprintln!` panic on a closed pipe (`| tee` killed by the
// same Ctrl-C): print through trellis_core::{out, outln, errln}.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod app;
mod demo;
mod inject;
mod mesh;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trellis_core::errln;

#[derive(Parser, Debug)]
#[command(name = "trellis", version, about = "Trellis service mesh command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a local mesh on this host: network namespaces as pods (root).
    Mesh(mesh::MeshArgs),
    /// Start a built-in local mesh, send traffic through it, show golden metrics.
    Demo(demo::DemoArgs),
    /// Print a manifest with the Trellis proxy injected into every pod template.
    Inject(inject::InjectArgs),
    /// Small programs that run inside pods of the local mesh (demo and tests).
    #[command(subcommand)]
    App(app::AppCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mesh(args) => mesh::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Inject(args) => inject::run(args),
        Command::App(cmd) => app::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("trellis: {e:#}");
            if e.chain().any(|c| c.is::<mesh::Interrupted>()) {
                ExitCode::from(mesh::EXIT_INTERRUPTED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
