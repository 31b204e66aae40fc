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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use trellis_core::config::PortRange;
use trellis_core::spiffe::SpiffeId;

pub use trellis_core::policy::DefaultPolicy;

/// The inbound policy of one pod, as the local mesh (and later the
/// controller) hands it to the proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    pub default_policy: DefaultPolicy,
    /// Per-port overrides of the default.
    #[serde(default)]
    pub ports: BTreeMap<u16, DefaultPolicy>,
    #[serde(default)]
    pub probes: Vec<Probe>,
    #[serde(default)]
    pub authorizations: Vec<Authorization>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            default_policy: DefaultPolicy::AllUnauthenticated,
            ports: BTreeMap::new(),
            probes: Vec::new(),
            authorizations: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    pub port: u16,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    pub name: String,
    /// Ports it applies to; empty: every port.
    #[serde(default, with = "port_ranges")]
    pub ports: Vec<PortRange>,
    /// Identities allowed (exact SPIFFE IDs).
    #[serde(default)]
    pub identities: Vec<String>,
    /// Namespaces whose meshed workloads are allowed.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// HTTP methods allowed; empty: any. An authorization with methods or
    /// paths applies to HTTP requests only, never to opaque TCP.
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub path_prefixes: Vec<String>,
}

mod port_ranges {
    use super::PortRange;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[PortRange], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PortRange>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum P {
            N(u16),
            S(String),
        }
        Vec::<P>::deserialize(d)?
            .into_iter()
            .map(|p| match p {
                P::N(n) => format!("{n}").parse(),
                P::S(s) => s.parse(),
            })
            .collect::<Result<_, String>>()
            .map_err(serde::de::Error::custom)
    }
}

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

impl Policy {
    /// The default in force on `port`.
    pub fn default_for(&self, port: u16) -> DefaultPolicy {
        self.ports
            .get(&port)
            .copied()
            .unwrap_or(self.default_policy)
    }

    /// Decides an opaque TCP connection (authorizations with HTTP
    /// constraints do not apply to it).
    pub fn authorize_connection(&self, conn: ConnFacts<'_>) -> Decision {
        self.decide(conn, None)
    }

    /// Decides one HTTP request (its path already normalised).
    pub fn authorize_request(&self, conn: ConnFacts<'_>, req: RequestFacts<'_>) -> Decision {
        if self.is_probe(conn, req) {
            return Decision::Allow("probe");
        }
        self.decide(conn, Some(req))
    }

    /// Decides a request that asks to become a tunnel: as a connection.
    pub fn authorize_tunnel(&self, conn: ConnFacts<'_>) -> Decision {
        self.decide(conn, None)
    }

    fn is_probe(&self, conn: ConnFacts<'_>, req: RequestFacts<'_>) -> bool {
        if conn.peer.is_some() || !conn.probe_source {
            return false;
        }
        let grpc_health =
            req.method.eq_ignore_ascii_case("POST") && path_is(req.path, GRPC_HEALTH_CHECK);
        let get = req.method.eq_ignore_ascii_case("GET");
        self.probes.iter().any(|p| {
            p.port == conn.port
                && ((get && path_is(req.path, &p.path))
                    || (grpc_health && p.path == GRPC_HEALTH_CHECK))
        })
    }

    fn decide(&self, conn: ConnFacts<'_>, req: Option<RequestFacts<'_>>) -> Decision {
        let default = self.default_for(conn.port);
        let selecting: Vec<&Authorization> = self
            .authorizations
            .iter()
            .filter(|a| a.ports.is_empty() || a.ports.iter().any(|r| r.contains(conn.port)))
            .collect();
        if !selecting.is_empty() {
            if selecting.iter().any(|a| a.allows(conn, req)) {
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
}

impl Authorization {
    fn allows(&self, conn: ConnFacts<'_>, req: Option<RequestFacts<'_>>) -> bool {
        let Some(peer) = conn.peer else { return false };
        let who = self.identities.iter().any(|i| i == &peer.to_string())
            || self.namespaces.iter().any(|n| n == peer.namespace());
        if !who {
            return false;
        }
        let http_constrained = !self.methods.is_empty() || !self.path_prefixes.is_empty();
        match req {
            None => !http_constrained,
            Some(r) => {
                (self.methods.is_empty()
                    || self
                        .methods
                        .iter()
                        .any(|m| m.eq_ignore_ascii_case(r.method)))
                    && (self.path_prefixes.is_empty()
                        || self
                            .path_prefixes
                            .iter()
                            .any(|p| path_has_prefix(r.path, p)))
            }
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
