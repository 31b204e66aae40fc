//! Shared pieces of Trellis that every binary uses.
//!
//! - [`addr`]: newtypes for addresses that mean something specific.
//! - [`admin`]: the admin endpoints (`/metrics`, `/ready`, `/live`,
//!   `/config`) and their server.
//! - [`backoff`]: the one backoff of every retry loop: exponential,
//!   capped, with full jitter.
//! - [`capture`]: the pod's traffic-capture rules (`trellis-proxy init`
//!   and the CNI plugin `trellis-cni` install the same ones).
//! - [`config`]: reading typed configuration from a source (the environment,
//!   or a map in tests), collecting every error before reporting; the
//!   `--help` listing of the variables.
//! - [`contract`]: the proxy's contract with whoever starts or feeds it:
//!   its variable names, ports and user id, and the policy and
//!   destinations files it reads.
//! - [`service`]: what a control-plane binary does around its own work:
//!   command line, logging, runtime, signals, drain, exit code.
//! - [`shutdown`]: the one drain mechanism for listeners and tasks.
//! - [`spiffe`]: workload identity names (SPIFFE IDs).
//! - [`stdio`]: stdout and stderr that a closed pipe cannot panic
//!   (`out!`, `outln!`, `errln!`), and a lossy log writer.
//! - [`telemetry`]: tracing setup, process metrics, the metrics registry.
//! - [`tls`]: mutual TLS between sidecars, authenticated by SPIFFE identity.
//! - `test_support` (feature `test-support`, for dev-dependencies):
//!   temporary directories, bounded polling, a plain HTTP GET.

// `println!`/`eprintln!` panic on a closed pipe (`| tee` killed by the
// same Ctrl-C): print through trellis_core::{out, outln, errln}.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod addr;
pub mod admin;
pub mod backoff;
pub mod capture;
pub mod config;
pub mod contract;
pub mod policy;
pub mod service;
pub mod shutdown;
pub mod spiffe;
pub mod stdio;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod tls;
