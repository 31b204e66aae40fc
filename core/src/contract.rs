//! The proxy's contract with whoever starts it or feeds it: the names of
//! the variables it reads ([`proxy_env`]), its ports and user id (SPEC.md:
//! proxy ports), and the files others write for it to read ([`files`]: the
//! pod's inbound policy, the meshed destinations).
//!
//! The proxy reads through these; the injector, the local mesh, the node
//! agent and the tests write through them. A renamed variable or field is
//! then a compile error in every producer, not a proxy failing in a pod; a
//! changed name, port or field is a visible change to `contract/tests.rs`,
//! which pins them to SPEC.md.

pub mod files;
pub mod proxy_env;
pub mod trace;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// The user id the proxy runs as; its own connections are never redirected.
pub const PROXY_UID: u32 = 7102;
/// The outbound listener: the pod's own connections, redirected there.
pub const OUTBOUND_PORT: u16 = 7140;
/// The inbound listener: connections to the pod, redirected there; meshed
/// peers arrive here over mutual TLS.
pub const INBOUND_PORT: u16 = 7143;
/// The admin server (`/metrics`, `/ready`, `/live`, …); never redirected.
pub const ADMIN_PORT: u16 = 7191;
/// The ports the proxy listens on, each with what it is: a meshed
/// application listening on one would collide with its sidecar.
pub const PROXY_PORTS: [(u16, &str); 3] = [
    (OUTBOUND_PORT, "outbound"),
    (INBOUND_PORT, "inbound"),
    (ADMIN_PORT, "admin"),
];

/// Where the outbound listener binds by default ([`proxy_env::OUTBOUND_LISTEN`]):
/// loopback only, as only the pod's own connections are redirected there.
pub const DEFAULT_OUTBOUND_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, OUTBOUND_PORT));
/// Where the inbound listener binds by default ([`proxy_env::INBOUND_LISTEN`]).
pub const DEFAULT_INBOUND_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, INBOUND_PORT));
/// Where the admin server binds by default ([`proxy_env::ADMIN_LISTEN`]).
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, ADMIN_PORT));

#[cfg(test)]
mod tests;
