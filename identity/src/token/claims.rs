//! The claims of a projected ServiceAccount token, and the pure check of
//! them against what this service expects (issuer, audience, time, and the
//! `kubernetes.io` claims agreeing with `sub`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{ServiceAccount, TokenError, LEEWAY_SECS};

/// A projected ServiceAccount token's payload (the parts read here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectedClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audiences>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(
        rename = "kubernetes.io",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub kubernetes: Option<KubernetesClaims>,
}

/// `aud`: one string or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audiences {
    One(String),
    Many(Vec<String>),
}

impl Audiences {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(a) => vec![a.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serviceaccount: Option<NamedRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<NamedRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NamedRef>,
}

/// An object reference inside `kubernetes.io` (`{name, uid}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// What a token must say to be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectations {
    pub issuer: String,
    pub audience: String,
}

/// Checks verified claims at `now` (unix seconds): issuer, audience,
/// `exp` (required), `nbf` (if present), then that `sub` is
/// `system:serviceaccount:NS:SA` and the `kubernetes.io` claims name the
/// same namespace and ServiceAccount.
pub fn check_claims(
    claims: &ProjectedClaims,
    expect: &Expectations,
    now: i64,
) -> Result<ServiceAccount, TokenError> {
    match &claims.iss {
        Some(iss) if *iss == expect.issuer => {}
        other => {
            return Err(TokenError::WrongIssuer {
                got: other.clone().unwrap_or_default(),
                want: expect.issuer.clone(),
            })
        }
    }
    let aud = claims
        .aud
        .as_ref()
        .map(Audiences::to_vec)
        .unwrap_or_default();
    if !aud.contains(&expect.audience) {
        return Err(TokenError::WrongAudience {
            got: aud,
            want: expect.audience.clone(),
        });
    }
    let exp = claims
        .exp
        .ok_or_else(|| TokenError::Malformed("no exp claim".into()))?;
    if now > exp.saturating_add(LEEWAY_SECS) {
        return Err(TokenError::Expired { exp, now });
    }
    if let Some(nbf) = claims.nbf {
        if nbf > now.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::NotYetValid { nbf, now });
        }
    }
    let sub = claims.sub.as_deref().unwrap_or_default();
    let sa = ServiceAccount::from_username(sub).ok_or_else(|| {
        TokenError::ClaimsMismatch(format!("sub {sub:?} is not system:serviceaccount:NS:SA"))
    })?;
    let k8s = claims
        .kubernetes
        .as_ref()
        .ok_or_else(|| TokenError::ClaimsMismatch("no kubernetes.io claim".into()))?;
    if k8s.namespace.as_deref() != Some(sa.namespace.as_str()) {
        return Err(TokenError::ClaimsMismatch(format!(
            "kubernetes.io namespace {:?} but sub names {:?}",
            k8s.namespace.as_deref().unwrap_or_default(),
            sa.namespace
        )));
    }
    let k8s_sa = k8s.serviceaccount.as_ref().map(|r| r.name.as_str());
    if k8s_sa != Some(sa.name.as_str()) {
        return Err(TokenError::ClaimsMismatch(format!(
            "kubernetes.io serviceaccount {:?} but sub names {:?}",
            k8s_sa.unwrap_or_default(),
            sa.name
        )));
    }
    Ok(sa)
}

/// What a token *claims*, read without verifying anything: the `sub`,
/// `exp`, `aud` and bound pod of a JWT payload. Only for uses where a lie
/// cannot help the liar: choosing which rate-limit bucket a request draws
/// from, shortening how long a reviewed token is cached, shortening (never
/// lengthening) the lifetime of a certificate issued after the token *was*
/// verified, and naming, in a refusal the API server decided, what the
/// token said it was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnverifiedClaims {
    pub sub: Option<String>,
    pub exp: Option<i64>,
    /// At most [`MAX_AUDIENCES`], each a bounded string.
    pub aud: Vec<String>,
    /// `kubernetes.io.namespace` and `kubernetes.io.pod.name`.
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

/// A `sub` longer than this is ignored (a ServiceAccount username is at
/// most `system:serviceaccount:` plus two 253-byte names).
const MAX_SUB_BYTES: usize = 600;
/// Longer audiences, namespaces and pod names are ignored (a Kubernetes
/// name is at most 253 bytes).
const MAX_NAME_BYTES: usize = 253;
/// Audiences past this many are ignored.
pub const MAX_AUDIENCES: usize = 8;

impl UnverifiedClaims {
    /// Reads the payload of `header.payload.signature`; anything unreadable
    /// reads as no claims.
    pub fn peek(token: &str) -> Self {
        let Some(payload) = token.split('.').nth(1) else {
            return Self::default();
        };
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(payload) else {
            return Self::default();
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return Self::default();
        };
        let name = |v: Option<&serde_json::Value>| {
            v.and_then(|s| s.as_str())
                .filter(|s| !s.is_empty() && s.len() <= MAX_NAME_BYTES)
                .map(str::to_string)
        };
        let aud = match v.get("aud") {
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .take(MAX_AUDIENCES)
                .filter_map(|a| name(Some(a)))
                .collect(),
            one => name(one).into_iter().collect(),
        };
        let k8s = v.get("kubernetes.io");
        Self {
            sub: v
                .get("sub")
                .and_then(|s| s.as_str())
                .filter(|s| !s.is_empty() && s.len() <= MAX_SUB_BYTES)
                .map(str::to_string),
            exp: v.get("exp").and_then(|e| e.as_i64()),
            aud,
            namespace: name(k8s.and_then(|k| k.get("namespace"))),
            pod: name(k8s.and_then(|k| k.get("pod")).and_then(|p| p.get("name"))),
        }
    }
}
