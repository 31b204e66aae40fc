//! The chained CNI plugin (skeleton).

use std::process::ExitCode;

/// Runs one CNI command, as the container runtime asked for it.
pub fn main() -> ExitCode {
    ExitCode::FAILURE
}
