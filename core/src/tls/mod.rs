//! Mutual TLS between sidecars, authenticated by SPIFFE identity.
//!
//! TLS 1.3 only, rustls with the ring provider (never the process-wide
//! default provider). The pieces:
//!
//! - [`TrustRoots`]: the mesh's trust roots from a PEM bundle, swapped
//!   atomically; [`watch_roots`] reloads them when the mounted file changes.
//! - [`Credentials`]: this workload's SPIFFE ID and its current certificate
//!   and key, swapped atomically on renewal ([`Credentials::set`] checks the
//!   new certificate before it is used).
//! - [`server_config`], [`client_config`], [`client_config_anonymous`]:
//!   rustls configurations that read the current roots and certificate *per
//!   handshake*, so a renewal or a root rotation applies to the next
//!   connection at once while established connections carry on untouched.
//! - [`peer_identity`]: the SPIFFE ID in a peer's leaf certificate.
//! - [`sniff_client_hello`]: what a buffered ClientHello asks for (ALPN, SNI),
//!   for the inbound side's protocol detection.
//! - [`TlsError`] and [`HandshakeFailure`]: what was wrong, and a short reason
//!   code for metrics and logs.
//!
//! Verification (both directions): the peer's chain must lead to a current
//! root (webpki, time = now, extended key usage serverAuth for servers and
//! clientAuth for clients), and its leaf must carry exactly one URI SAN that
//! is a SPIFFE ID. A client additionally checks that the server's ID is one of
//! the IDs it expects; a server accepts any client ID of its own trust domain
//! and leaves the finer decision to authorization policy. DNS names and SNI
//! play no part. Session resumption is off on both sides, so every connection
//! is verified in full against the roots of the moment.

mod config;
mod creds;
mod error;
mod roots;
mod sniff;
mod verify;

#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use config::{client_config, client_config_anonymous, server_config};
pub use creds::{CertInfo, Credentials};
pub use error::{HandshakeFailure, TlsError};
pub use roots::{watch_roots, TrustRoots};
pub use sniff::{sniff_client_hello, Sniff};
pub use verify::peer_identity;

/// The one crypto provider of the mesh: ring, built once.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
