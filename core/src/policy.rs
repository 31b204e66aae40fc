//! The inbound policies of SPEC.md, shared by the proxy (which enforces
//! them), the controller (which computes them) and the local mesh (which
//! writes them): one name, one spelling.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a pod's port lets in when no authorization selects it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// SPEC.md's mesh-wide default.
    #[default]
    AllUnauthenticated,
    AllAuthenticated,
    Deny,
    Audit,
}

impl FromStr for DefaultPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all-unauthenticated" => Ok(Self::AllUnauthenticated),
            "all-authenticated" => Ok(Self::AllAuthenticated),
            "deny" => Ok(Self::Deny),
            "audit" => Ok(Self::Audit),
            other => Err(format!(
                "unknown inbound policy {other:?}: use all-unauthenticated, all-authenticated, deny or audit"
            )),
        }
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AllUnauthenticated => "all-unauthenticated",
            Self::AllAuthenticated => "all-authenticated",
            Self::Deny => "deny",
            Self::Audit => "audit",
        })
    }
}

/// Whether a proxy may send plaintext (`TRELLIS_PROXY_OUTBOUND_MTLS`, the
/// `config.trellis.dev/outbound-mtls` annotation, the chart's
/// `proxy.outboundMtls`, the mesh file's `outboundMtls`). Ordered from
/// weakest to strictest, as a floor compares them.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum OutboundMtls {
    /// Mutual TLS to every destination known as meshed; plaintext to the
    /// rest.
    #[default]
    Opportunistic,
    /// No plaintext, but to the operator's listed exceptions.
    Required,
}

impl FromStr for OutboundMtls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "opportunistic" => Ok(Self::Opportunistic),
            "required" => Ok(Self::Required),
            other => Err(format!(
                "{other:?} is not an outbound mTLS mode: use opportunistic or required"
            )),
        }
    }
}

impl fmt::Display for OutboundMtls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Opportunistic => "opportunistic",
            Self::Required => "required",
        })
    }
}
