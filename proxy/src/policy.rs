//! Inbound policy: who may reach this pod, decided as a pure function of
//! the policy and the facts of a connection (and, for HTTP, a request).
//!
//! The default policy (mesh-wide, per namespace or pod, per port) says what
//! happens when no authorization applies:
//!
//! | default | plaintext peer | meshed peer |
//! |---|---|---|
//! | `all-unauthenticated` | allowed | allowed |
//! | `all-authenticated` | denied | allowed |
//! | `deny` | denied | denied |
//! | `audit` | allowed, counted as would-deny | allowed |
//!
//! Authorizations (the `policy.trellis.dev` resource) name identities or
//! namespaces that may reach some ports, optionally only some HTTP methods
//! and path prefixes. Once any authorization selects a port, only traffic
//! matching one of them reaches it (under `audit`, the rest is allowed and
//! counted).
//!
//! **Probes.** A kubelet probe (an HTTP `GET` on a declared probe port and
//! path, or a gRPC health check `POST /grpc.health.v1.Health/Check` on a
//! declared gRPC probe port) is allowed under every policy — but only from
//! a plaintext client at a probe source (the node, whence kubelet sends
//! them: [`ConnFacts::probe_source`]). The same request from anywhere else
//! is decided like any other: a pod cannot pass for kubelet.
//!
//! **Tunnels.** A request that asks to become a tunnel (`Upgrade`,
//! `CONNECT`) is decided as a connection ([`Policy::authorize_tunnel`]):
//! whatever bytes follow cannot be checked request by request, so only an
//! authorization that covers the whole connection (no method or path
//! constraint) or a default that allows the peer lets it through, and the
//! probe exemption never applies.

use trellis_core::spiffe::SpiffeId;

/// The inbound policy of one pod, read from the policy file the local mesh
/// writes or converted from the controller's stream
/// ([`crate::discovery::inbound_policy`]): the contract's type
/// ([`trellis_core::contract::files`]), so the file's writer and its reader
/// share one definition. What it decides is [`Authorize`].
pub use trellis_core::contract::files::{Authorization, Policy, Probe};
pub use trellis_core::policy::DefaultPolicy;

/// The facts of one inbound connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnFacts<'a> {
    /// The destination port on this pod.
    pub port: u16,
    /// The peer's verified identity; `None` for plaintext or non-mesh TLS.
    pub peer: Option<&'a SpiffeId>,
    /// The client's address is one kubelet probes come from (the node).
    pub probe_source: bool,
}

/// An HTTP request's facts.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    pub path: &'a str,
}

/// What to do, and why (the reason is a metric label and a log field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow(&'static str),
    Deny(&'static str),
    /// Allowed under `audit`; the stricter policy would have denied it.
    AuditAllow(&'static str),
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        !matches!(self, Self::Deny(_))
    }
    pub fn reason(self) -> &'static str {
        match self {
            Self::Allow(r) | Self::Deny(r) | Self::AuditAllow(r) => r,
        }
    }
}

/// What a [`Policy`] decides: the proxy's meaning of the contract's type.
pub trait Authorize {
    /// Decides an opaque TCP connection (authorizations with HTTP
    /// constraints do not apply to it).
    fn authorize_connection(&self, conn: ConnFacts<'_>) -> Decision;
    /// Decides one HTTP request (its path already normalised).
    fn authorize_request(&self, conn: ConnFacts<'_>, req: RequestFacts<'_>) -> Decision;
    /// Decides a request that asks to become a tunnel: as a connection.
    fn authorize_tunnel(&self, conn: ConnFacts<'_>) -> Decision;
}

impl Authorize for Policy {
    fn authorize_connection(&self, conn: ConnFacts<'_>) -> Decision {
        decide(self, conn, None)
    }

    fn authorize_request(&self, conn: ConnFacts<'_>, req: RequestFacts<'_>) -> Decision {
        if is_probe(self, conn, req) {
            return Decision::Allow("probe");
        }
        decide(self, conn, Some(req))
    }

    fn authorize_tunnel(&self, conn: ConnFacts<'_>) -> Decision {
        decide(self, conn, None)
    }
}

fn is_probe(policy: &Policy, conn: ConnFacts<'_>, req: RequestFacts<'_>) -> bool {
    if conn.peer.is_some() || !conn.probe_source {
        return false;
    }
    let grpc_health =
        req.method.eq_ignore_ascii_case("POST") && path_is(req.path, GRPC_HEALTH_CHECK);
    let get = req.method.eq_ignore_ascii_case("GET");
    policy.probes.iter().any(|p| {
        p.port == conn.port
            && ((get && path_is(req.path, &p.path)) || (grpc_health && p.path == GRPC_HEALTH_CHECK))
    })
}

fn decide(policy: &Policy, conn: ConnFacts<'_>, req: Option<RequestFacts<'_>>) -> Decision {
    let default = policy.default_for(conn.port);
    let selecting: Vec<&Authorization> = policy
        .authorizations
        .iter()
        .filter(|a| a.ports.is_empty() || a.ports.iter().any(|r| r.contains(conn.port)))
        .collect();
    if !selecting.is_empty() {
        if selecting.iter().any(|a| allows(a, conn, req)) {
            return Decision::Allow("authorized");
        }
        return match default {
            DefaultPolicy::Audit => Decision::AuditAllow("unauthorized"),
            _ => Decision::Deny("unauthorized"),
        };
    }
    match (default, conn.peer) {
        (DefaultPolicy::AllUnauthenticated, _) => Decision::Allow("all_unauthenticated"),
        (DefaultPolicy::AllAuthenticated | DefaultPolicy::Audit, Some(_)) => {
            Decision::Allow("authenticated")
        }
        (DefaultPolicy::AllAuthenticated, None) => Decision::Deny("unauthenticated"),
        (DefaultPolicy::Audit, None) => Decision::AuditAllow("unauthenticated"),
        (DefaultPolicy::Deny, _) => Decision::Deny("default_deny"),
    }
}

/// Whether `a` lets this peer (and request) in.
fn allows(a: &Authorization, conn: ConnFacts<'_>, req: Option<RequestFacts<'_>>) -> bool {
    let Some(peer) = conn.peer else { return false };
    let who = a.identities.iter().any(|i| i == &peer.to_string())
        || a.namespaces.iter().any(|n| n == peer.namespace());
    if !who {
        return false;
    }
    let http_constrained = !a.methods.is_empty() || !a.path_prefixes.is_empty();
    match req {
        None => !http_constrained,
        Some(r) => {
            (a.methods.is_empty() || a.methods.iter().any(|m| m.eq_ignore_ascii_case(r.method)))
                && (a.path_prefixes.is_empty()
                    || a.path_prefixes.iter().any(|p| path_has_prefix(r.path, p)))
        }
    }
}

/// The path of a kubelet gRPC probe; a gRPC probe is declared with it.
pub const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// `path` without its query equals `want`.
fn path_is(path: &str, want: &str) -> bool {
    path.split('?').next() == Some(want)
}

/// Prefix match on whole segments: `/api` matches `/api` and `/api/x`, not
/// `/apix`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let path = path.split('?').next().unwrap_or("");
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests;
