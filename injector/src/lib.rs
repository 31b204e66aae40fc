//! Trellis injection: the pure decision and patch ([`inject`]), shared by
//! the admission webhook ([`webhook`]) and `trellis inject` ([`manifest`]).

// `println!`/`eprintln!` panic on a closed pipe: print through
// trellis_core::{out, outln, errln}.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod config;
pub mod floor;
pub mod inject;
pub mod manifest;
pub mod pod_security;
mod quantity;
pub mod webhook;

pub use config::InjectorConfig;
pub use inject::{inject, NamespaceInfo, Outcome, Refusal, SkipReason, Violation};
