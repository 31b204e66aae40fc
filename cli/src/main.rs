//! `trellis`, the command line.
//!
//! - `trellis mesh up|status|exec|down` — the local mesh ([`mesh`]).
//! - `trellis inject -f FILE` — a manifest with the sidecar injected ([`inject`]).
//! - `trellis demo` — a built-in local mesh with traffic and a live table ([`demo`]).
//! - `trellis app …` — the small programs the demo and the tests run inside
//!   pods: HTTP echo servers, a server-speaks-first TCP service, a load
//!   generator. They are the `trellis-app` binary (`app/`); this runs it
//!   ([`app`]).

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
    ///
    /// Injected: v1 Pods, apps/v1 Deployments, StatefulSets, DaemonSets and
    /// ReplicaSets, batch/v1 Jobs and CronJobs, and v1 Lists of them. Every
    /// other document (a Service, an Argo Rollout, a ReplicationController, a
    /// Pod without apiVersion, ...) is printed unchanged, and stderr says which
    /// document it was, its kind and name, and why it was not injected.
    ///
    /// Output: YAML in gives YAML out; JSON in (one or more JSON objects) gives
    /// pretty-printed JSON out, keys in the input's order. A document that is
    /// not injected is printed exactly as written, comments included. An
    /// injected document keeps its key order (added fields come after the
    /// existing ones) and the comment lines above and below it, but loses the
    /// comments inside it and its anchors; its strings are quoted wherever
    /// Kubernetes' YAML 1.1 reader would otherwise read them as booleans,
    /// numbers or null ("on", "yes", "0x1F", "1_000", ...).
    ///
    /// Exit status: 0 when every document was processed (injected, skipped by
    /// the injector's rules, or passed through); 1 when a document could not be
    /// read or injected (for instance a Deployment without spec.template):
    /// that document is reported and printed unchanged, and every other
    /// document is still injected and printed. With --strict, also 1 when a
    /// pod template was left without a proxy (see --strict).
    Inject(inject::InjectArgs),
    /// Small programs that run inside pods of the local mesh (demo and tests).
    ///
    /// `trellis app ARGS` runs `trellis-app ARGS` (beside `trellis`, or
    /// `$TRELLIS_APP_BIN`): `trellis app --help` lists the programs.
    App(app::AppArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mesh(args) => mesh::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Inject(args) => inject::run(args),
        Command::App(args) => app::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("trellis: {e:#}");
            if e.chain().any(|c| c.is::<trellis_mesh::Interrupted>()) {
                ExitCode::from(trellis_mesh::EXIT_INTERRUPTED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
