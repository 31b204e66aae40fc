//! Workload identity names: SPIFFE IDs of the form
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsing is strict (it reads untrusted bytes from certificates and CSRs):
//! a lower-case trust domain of DNS characters, and namespace and service
//! account names that are Kubernetes DNS labels / subdomains.

use std::fmt;
use std::str::FromStr;

/// A workload's SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("{0:?} does not start with spiffe://")]
    Scheme(String),
    #[error(
        "{0:?} is not a trust domain (lower-case letters, digits, '.', '-', '_'; at most 255)"
    )]
    TrustDomain(String),
    #[error("{0:?} is not of the form /ns/<namespace>/sa/<serviceaccount>")]
    Path(String),
    #[error("{what} {value:?} is not a Kubernetes name (lower-case DNS, at most {max})")]
    Name {
        what: &'static str,
        value: String,
        max: usize,
    },
}

impl SpiffeId {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        check_trust_domain(trust_domain)?;
        check_name("namespace", namespace, 63)?;
        check_name("service account", service_account, 253)?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(SpiffeIdError::TrustDomain(td.to_string()))
    }
}

/// A Kubernetes DNS subdomain (RFC 1123): lower-case alphanumerics, '-' and
/// '.', starting and ending alphanumeric.
fn check_name(what: &'static str, value: &str, max: usize) -> Result<(), SpiffeIdError> {
    let bytes = value.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = !bytes.is_empty()
        && bytes.len() <= max
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-' || *b == b'.');
    if ok {
        Ok(())
    } else {
        Err(SpiffeIdError::Name {
            what,
            value: value.to_string(),
            max,
        })
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, SpiffeIdError> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_string()))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| SpiffeIdError::Path(s.to_string()))?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] => Self::new(td, ns, sa),
            _ => {
                check_trust_domain(td)?;
                Err(SpiffeIdError::Path(s.to_string()))
            }
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let good = [
            "spiffe://cluster.local/ns/demo/sa/web",
            "spiffe://example.org/ns/kube-system/sa/default",
            "spiffe://td_1/ns/a/sa/b.c",
        ];
        for s in good {
            let id: SpiffeId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
        }
        let bad = [
            "",
            "http://cluster.local/ns/a/sa/b",
            "spiffe://",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/ns/-a/sa/b",
            "spiffe://cluster.local/sa/b/ns/a",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            "spiffe://cluster.local/ns/a/sa/b#f",
            "spiffe://clu ster/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b%2f",
        ];
        for s in bad {
            assert!(s.parse::<SpiffeId>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn names_have_length_limits() {
        let long_ns = "a".repeat(64);
        assert!(SpiffeId::new("cluster.local", &long_ns, "sa").is_err());
        assert!(SpiffeId::new("cluster.local", &"a".repeat(63), "sa").is_ok());
    }

    #[test]
    fn parse_never_panics_on_arbitrary_input() {
        // A small deterministic sweep standing in for the fuzz target.
        let alphabet = b"spife:/nsa.-_AZ09 %?#";
        let mut x: u32 = 12345;
        for _ in 0..20_000 {
            let len = (x % 48) as usize;
            let s: String = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    alphabet[(x >> 16) as usize % alphabet.len()] as char
                })
                .collect();
            if let Ok(id) = s.parse::<SpiffeId>() {
                assert_eq!(id.to_string(), s);
            }
            x = x.wrapping_add(7);
        }
    }
}
