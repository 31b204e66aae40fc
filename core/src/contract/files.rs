//! The files the proxy reads and others write, as JSON: the pod's inbound
//! policy ([`Policy`], at [`proxy_env::POLICY_FILE`](super::proxy_env::POLICY_FILE))
//! and the meshed destinations ([`DestinationsFile`], at
//! [`proxy_env::DESTINATIONS_FILE`](super::proxy_env::DESTINATIONS_FILE)).
//! The local mesh writes them and the proxy reads them with these same
//! types; unknown fields are refused, so a writer cannot drift unseen.
//!
//! ```json
//! {"defaultPolicy": "all-authenticated",
//!  "ports": {"9090": "all-unauthenticated"},
//!  "probes": [{"port": 8080, "path": "/healthz"}],
//!  "authorizations": [{"name": "web-from-client", "ports": [8080, "9000-9010"],
//!                      "identities": ["spiffe://cluster.local/ns/demo/sa/client"],
//!                      "namespaces": [], "methods": ["GET"], "pathPrefixes": ["/api"]}]}
//!
//! {"destinations": [{"addr": "10.77.0.2:8080",
//!                    "identities": ["spiffe://cluster.local/ns/demo/sa/web"]}]}
//! ```
//!
//! What a policy decides is the proxy's (`trellis_proxy::policy`); the
//! controller sends the same model over gRPC.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::PortRange;
use crate::policy::DefaultPolicy;

/// The inbound policy of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

impl Policy {
    /// The default in force on `port`.
    pub fn default_for(&self, port: u16) -> DefaultPolicy {
        self.ports
            .get(&port)
            .copied()
            .unwrap_or(self.default_policy)
    }
}

/// A kubelet probe the pod declares: an HTTP `GET` of `path` on `port`, or
/// gRPC's health check when `path` is `/grpc.health.v1.Health/Check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    pub port: u16,
    pub path: String,
}

/// Who may reach which ports (the `policy.trellis.dev` resource, flattened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// A port list: a port as a number (`8080`, or `"8080"`), a range as a
/// string (`"4000-4010"`).
mod port_ranges {
    use super::PortRange;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Port(u16),
        Text(String),
    }

    pub fn serialize<S: Serializer>(v: &[PortRange], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|r| {
            if r.first == r.last {
                Entry::Port(r.first)
            } else {
                Entry::Text(r.to_string())
            }
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PortRange>, D::Error> {
        Vec::<Entry>::deserialize(d)?
            .into_iter()
            .map(|e| match e {
                Entry::Port(n) => n.to_string().parse(),
                Entry::Text(s) => s.parse(),
            })
            .collect::<Result<_, String>>()
            .map_err(serde::de::Error::custom)
    }
}

/// The meshed destinations: every address the proxy must originate mutual
/// TLS to, with the identities a server there may prove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationsFile {
    pub destinations: Vec<DestinationEntry>,
}

/// A meshed address, and the identities a server there may prove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationEntry {
    pub addr: SocketAddr,
    pub identities: Vec<String>,
}
