//! `trellis-controller`: discovery, routes and policy streamed to proxies.
//!
//! Not implemented yet: this binary is a placeholder so the workspace has the
//! layout of SPEC.md. Issue 4 builds it. It refuses to run rather than
//! pretend to work.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("trellis-controller is not implemented yet (issue 4); nothing was started");
    ExitCode::from(69) // EX_UNAVAILABLE
}
