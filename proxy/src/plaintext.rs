//! When an outbound connection may leave in plaintext: the one decision
//! that keeps an "mTLS-only" mesh from being downgraded by a controller
//! that is slow, absent, or lying.
//!
//! Under [`OutboundMtls::Opportunistic`] (the default) the proxy speaks
//! mutual TLS to every destination the controller names with an identity,
//! and plaintext to the rest — except a destination it has already seen
//! meshed: that one is never sent plaintext again, whatever the controller
//! later says or fails to say.
//!
//! Under [`OutboundMtls::Required`] nothing leaves in plaintext but to the
//! operator's explicit exceptions (`TRELLIS_PROXY_PLAINTEXT_DESTINATIONS`):
//! a destination the controller has not answered about, does not know, or
//! names without an identity is refused, and so is every destination while
//! this proxy has no identity of its own.
//!
//! Every refusal is counted (`trellis_outbound_plaintext_refused_total`,
//! by reason) and logged by the caller.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::RwLock;

use ipnet::IpNet;

pub use trellis_core::policy::OutboundMtls;

/// Why a connection would go out in plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The controller did not answer in time.
    Unresolved,
    /// The controller (and the destinations file) do not know it.
    Unknown,
    /// The controller names it without an identity.
    NoIdentity,
    /// It has an identity, but this proxy has none to speak mTLS with.
    NoLocalIdentity,
}

impl Why {
    /// The refusal's reason label.
    fn refusal(self) -> &'static str {
        match self {
            Self::Unresolved => "unresolved_destination",
            Self::Unknown => "unknown_destination",
            Self::NoIdentity => "endpoint_without_identity",
            Self::NoLocalIdentity => "no_local_identity",
        }
    }
}

/// Destinations remembered as meshed, at most (then the memory starts
/// again: a bound on memory, not a weakening under `required`).
const MAX_KNOWN_MESHED: usize = 65_536;

#[derive(Debug, Default)]
pub struct PlaintextPolicy {
    mode: OutboundMtls,
    /// Plaintext is allowed to these under `required`.
    exceptions: Vec<IpNet>,
    /// Read on every request to a meshed endpoint, written once per new
    /// destination: a read lock on the hot path.
    known_meshed: RwLock<HashSet<SocketAddr>>,
}

impl PlaintextPolicy {
    pub fn new(mode: OutboundMtls, exceptions: Vec<IpNet>) -> Self {
        Self {
            mode,
            exceptions,
            known_meshed: RwLock::default(),
        }
    }

    pub fn mode(&self) -> OutboundMtls {
        self.mode
    }

    /// `dst` was reached over mutual TLS: never plaintext from now on.
    pub fn seen_meshed(&self, dst: SocketAddr) {
        let known = self.known_meshed.read().unwrap_or_else(|p| p.into_inner());
        if known.contains(&dst) {
            return;
        }
        drop(known);
        let mut known = self.known_meshed.write().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_KNOWN_MESHED && !known.contains(&dst) {
            known.clear();
        }
        known.insert(dst);
    }

    /// May a connection to `dst` go out in plaintext, `why` being the
    /// reason it would? `Err` carries the refusal's reason label.
    pub fn check(&self, dst: SocketAddr, why: Why) -> Result<(), &'static str> {
        if self.exceptions.iter().any(|n| n.contains(&dst.ip())) {
            return Ok(());
        }
        match self.mode {
            OutboundMtls::Required => Err(why.refusal()),
            OutboundMtls::Opportunistic => {
                let known = self.known_meshed.read().unwrap_or_else(|p| p.into_inner());
                if matches!(why, Why::Unresolved | Why::Unknown | Why::NoIdentity)
                    && known.contains(&dst)
                {
                    Err("known_meshed_destination")
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Parses `TRELLIS_PROXY_PLAINTEXT_DESTINATIONS`: addresses and CIDRs,
/// comma-separated.
pub fn parse_exceptions(s: &str) -> Result<Vec<IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{p:?} is not an address or a CIDR"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn required_refuses_every_plaintext_reason_but_the_exceptions() {
        let p = PlaintextPolicy::new(
            OutboundMtls::Required,
            parse_exceptions("10.9.0.0/16, 192.168.1.5").unwrap(),
        );
        for (why, reason) in [
            (Why::Unresolved, "unresolved_destination"),
            (Why::Unknown, "unknown_destination"),
            (Why::NoIdentity, "endpoint_without_identity"),
            (Why::NoLocalIdentity, "no_local_identity"),
        ] {
            assert_eq!(p.check(addr("10.1.0.7:80"), why), Err(reason));
            assert_eq!(p.check(addr("10.9.3.4:80"), why), Ok(()));
            assert_eq!(p.check(addr("192.168.1.5:443"), why), Ok(()));
        }
    }

    #[test]
    fn opportunistic_never_downgrades_a_destination_seen_meshed() {
        let p = PlaintextPolicy::new(OutboundMtls::Opportunistic, Vec::new());
        let web = addr("10.1.0.7:8080");
        assert_eq!(p.check(web, Why::Unresolved), Ok(()));
        assert_eq!(p.check(web, Why::NoIdentity), Ok(()));
        p.seen_meshed(web);
        for why in [Why::Unresolved, Why::Unknown, Why::NoIdentity] {
            assert_eq!(p.check(web, why), Err("known_meshed_destination"));
        }
        // Another port of the same pod is another destination.
        assert_eq!(p.check(addr("10.1.0.7:9090"), Why::Unknown), Ok(()));
        // Without an identity of its own the proxy cannot do better.
        assert_eq!(p.check(web, Why::NoLocalIdentity), Ok(()));
    }

    #[test]
    fn modes_and_exceptions_parse() {
        assert_eq!("required".parse(), Ok(OutboundMtls::Required));
        assert_eq!("opportunistic".parse(), Ok(OutboundMtls::Opportunistic));
        assert!("strict"
            .parse::<OutboundMtls>()
            .unwrap_err()
            .contains("strict"));
        assert!(parse_exceptions("10.0.0.0/8,nope")
            .unwrap_err()
            .contains("nope"));
        assert_eq!(parse_exceptions(" ").unwrap(), Vec::<IpNet>::new());
    }
}
