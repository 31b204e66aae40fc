//! ServiceAccount token verification: who is asking for a certificate.
//!
//! One trait, [`TokenVerifier`], with two real implementations:
//! - [`TokenReviewVerifier`] asks the API server (TokenReview): the
//!   default, and the chart's only mode. Besides signature, issuer,
//!   audience and expiry, the API server checks that the objects the token
//!   is bound to still exist with the uids it names: the token of a deleted
//!   pod or ServiceAccount is refused ([`TokenError::PodDeleted`],
//!   [`TokenError::ServiceAccountDeleted`]) — up to
//!   [`REVIEW_CACHE_TTL`] late, for a token reviewed just before.
//!   One API call per token not in the cache.
//! - [`JwksVerifier`] checks projected ServiceAccount JWTs locally against
//!   the issuer's JWKS (a file, reloaded when it changes): no API server,
//!   which is what the local mesh has. It sees only the token: the token of
//!   a deleted pod or ServiceAccount keeps getting certificates until it
//!   expires (one hour for the injector's tokens).
//!
//! Both cache what they verified (bounded, until the token expires), and
//! both refuse with a typed [`TokenError`] whose [`TokenError::reason`] is
//! the metric label. [`LocalIssuer`] plays the API server for the local
//! mesh and tests: it signs tokens and publishes its JWKS, so the same
//! verification path runs there.

mod cache;
mod claims;
mod jwks;
mod local;
mod review;

use std::future::Future;

pub use claims::{
    check_claims, Audiences, Expectations, KubernetesClaims, NamedRef, ProjectedClaims,
    UnverifiedClaims, MAX_AUDIENCES,
};
pub use jwks::JwksVerifier;
pub use local::{write_token_key, LocalIssuer};
pub use review::{
    api_refusal, interpret_review, ApiRefusal, TokenReviewVerifier, REVIEW_CACHE_TTL,
};

/// The audience tokens must be minted for.
pub const DEFAULT_AUDIENCE: &str = "identity.trellis.dev";
/// The issuer of projected tokens in a default cluster.
pub const DEFAULT_TOKEN_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Longer tokens are refused unread (projected tokens are ~1 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Allowed clock difference for `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: i64 = 30;

/// A verified ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    /// Parses `system:serviceaccount:<namespace>:<name>` (the TokenReview
    /// username and the JWT `sub`).
    pub fn from_username(username: &str) -> Option<Self> {
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (namespace, name) = rest.split_once(':')?;
        if namespace.is_empty() || name.is_empty() || name.contains(':') {
            return None;
        }
        Some(Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token was sent")]
    Missing,
    #[error("the token is {0} bytes; at most {MAX_TOKEN_BYTES} are accepted")]
    TooLarge(usize),
    #[error("the token is not a readable JWT: {0}")]
    Malformed(String),
    #[error("the token names signing key {0:?}, which the issuer does not publish")]
    UnknownKey(String),
    #[error("the token's signature does not verify with the issuer's keys")]
    BadSignature,
    #[error("the token expired at {exp} (unix seconds; now {now})")]
    Expired { exp: i64, now: i64 },
    #[error("the token is not valid before {nbf} (unix seconds; now {now})")]
    NotYetValid { nbf: i64, now: i64 },
    #[error("the token's audience {got:?} does not include {want:?}")]
    WrongAudience { got: Vec<String>, want: String },
    #[error("the token's issuer {got:?} is not {want:?}")]
    WrongIssuer { got: String, want: String },
    #[error("the token's claims disagree: {0}")]
    ClaimsMismatch(String),
    /// The API server (TokenReview) found the token's ServiceAccount gone.
    #[error("the token's ServiceAccount {service_account} was deleted (one made again under the same name is another account, which does not revive the token); the API server said: {detail}")]
    ServiceAccountDeleted {
        service_account: String,
        detail: String,
    },
    /// The API server (TokenReview) found the pod the token is bound to
    /// gone. A JWKS verifier cannot know (see [`JwksVerifier`]).
    #[error("the pod the token is bound to, {pod}, was deleted, which invalidates the token (a pod made again under the same name does not revive it); the API server said: {detail}")]
    PodDeleted { pod: String, detail: String },
    /// The API server refused the token for another reason, in its words.
    #[error("the API server did not authenticate the token: {0}")]
    NotAuthenticated(String),
    #[error("the token could not be reviewed: {0}")]
    Unavailable(String),
}

impl TokenError {
    /// A short, stable reason code (metric label, log field).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing | Self::TooLarge(_) | Self::Malformed(_) => "bad_token",
            Self::UnknownKey(_) | Self::BadSignature => "bad_signature",
            Self::Expired { .. } => "expired_token",
            Self::NotYetValid { .. } => "token_not_yet_valid",
            Self::WrongAudience { .. } => "wrong_audience",
            Self::WrongIssuer { .. } => "wrong_issuer",
            Self::ClaimsMismatch(_) => "claims_mismatch",
            Self::ServiceAccountDeleted { .. } => "service_account_deleted",
            Self::PodDeleted { .. } => "pod_deleted",
            Self::NotAuthenticated(_) => "not_authenticated",
            Self::Unavailable(_) => "token_review_unavailable",
        }
    }

    /// The refusal is ours (the reviewer could not be reached), not the
    /// caller's: it may succeed when retried.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Problems with verification keys or signing keys (not with a token).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("JWKS is not valid JSON with a \"keys\" array: {0}")]
    Json(String),
    #[error("JWKS has no usable ES256 or RS256 signing key ({0})")]
    NoKeys(String),
    #[error("bad key: {0}")]
    Key(String),
    #[error("signing a token failed: {0}")]
    Sign(String),
}

/// Checks a token and says whose it is.
pub trait TokenVerifier: Send + Sync + 'static {
    fn verify(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<ServiceAccount, TokenError>> + Send;

    /// Re-reads whatever the verifier reads from files (a JWKS); called at
    /// each reload interval. `Ok(true)` when something changed.
    fn refresh(&self) -> Result<bool, KeyError> {
        Ok(false)
    }
}

/// The verifier chosen by configuration.
pub enum AnyVerifier {
    Jwks(JwksVerifier),
    Kubernetes(TokenReviewVerifier),
}

impl TokenVerifier for AnyVerifier {
    async fn verify(&self, token: &str) -> Result<ServiceAccount, TokenError> {
        match self {
            Self::Jwks(v) => v.verify(token).await,
            Self::Kubernetes(v) => v.verify(token).await,
        }
    }

    fn refresh(&self) -> Result<bool, KeyError> {
        match self {
            Self::Jwks(v) => v.refresh(),
            Self::Kubernetes(v) => v.refresh(),
        }
    }
}

/// Size checks common to every verifier.
fn check_size(token: &str) -> Result<(), TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge(token.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
