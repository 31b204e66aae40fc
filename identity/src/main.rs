//! `trellis-identity`: the mesh CA (ServiceAccount token verification, CSR signing).
//!
//! Not implemented yet: this binary is a placeholder so the workspace has the
//! layout of SPEC.md. Issue 3 builds it. It refuses to run rather than
//! pretend to work.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("trellis-identity is not implemented yet (issue 3); nothing was started");
    ExitCode::from(69) // EX_UNAVAILABLE
}
