//! `trellis app …`: runs `trellis-app …` (`app/`), the small programs that
//! run inside pods of the local mesh — HTTP and TCP servers, a load
//! generator — for the demo and the tests. They are a binary of their own,
//! so the user-facing `trellis` does not carry them; the subcommand stays
//! because mesh files run them by this name (`{trellis} app http …`, as in
//! every file in `examples/`), and so does `trellis demo`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

/// Environment variable naming the `trellis-app` binary (else: beside
/// `trellis`).
pub const APP_BIN_ENV: &str = "TRELLIS_APP_BIN";

/// Small programs that run inside pods of the local mesh (demo and tests).
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct AppArgs {
    /// `trellis-app`'s arguments: `http`, `banner`, `tcp-echo`, `load` or
    /// `banner-client`, then its flags (`trellis app --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// Replaces this process with `trellis-app ARGS`: its stdio, signals and
/// exit status are the program's own, and its pid is the one `up` and the
/// supervisor recorded.
pub fn run(args: AppArgs) -> anyhow::Result<()> {
    let bin = app_bin()?;
    let err = Command::new(&bin).args(&args.args).exec();
    Err(err).with_context(|| format!("cannot run {}", bin.display()))
}

/// `$TRELLIS_APP_BIN`, else `trellis-app` beside this `trellis`.
pub fn app_bin() -> anyhow::Result<PathBuf> {
    let bin = match std::env::var_os(APP_BIN_ENV) {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .context("cannot find the trellis binary itself")?
            .with_file_name("trellis-app"),
    };
    if !bin.is_file() {
        bail!(
            "`trellis app` runs trellis-app, not found at {} (build it with `cargo build --workspace`, or set {APP_BIN_ENV})",
            bin.display()
        );
    }
    Ok(bin)
}
