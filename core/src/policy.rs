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
