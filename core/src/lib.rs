//! Shared pieces of Trellis that every binary uses.
//!
//! - [`addr`]: newtypes for addresses that mean something specific.
//! - [`config`]: reading typed configuration from a source (the environment,
//!   or a map in tests), collecting every error before reporting.
//! - [`shutdown`]: the one drain mechanism for listeners and tasks.
//! - [`spiffe`]: workload identity names (SPIFFE IDs).
//! - [`telemetry`]: tracing setup and process metrics.
//! - [`tls`]: mutual TLS between sidecars, authenticated by SPIFFE identity.

pub mod addr;
pub mod config;
pub mod policy;
pub mod shutdown;
pub mod spiffe;
pub mod telemetry;
pub mod tls;
