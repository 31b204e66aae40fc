//! `trellis-injector`: the mutating admission webhook.
//!
//! Not implemented yet: this binary is a placeholder so the workspace has the
//! layout of SPEC.md. Issue 5 builds it. It refuses to run rather than
//! pretend to work.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("trellis-injector is not implemented yet (issue 5); nothing was started");
    ExitCode::from(69) // EX_UNAVAILABLE
}
