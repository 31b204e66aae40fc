//! Token verification by the API server: a TokenReview with audience
//! [`super::DEFAULT_AUDIENCE`] (configurable). The answer is interpreted by
//! the pure [`interpret_review`]; results are cached briefly so a burst of
//! renewals is not a burst of reviews.
//!
//! The API server says why it refused a token only in words
//! (`status.error`, e.g. `[invalid bearer token, service account token has
//! been invalidated]`). [`api_refusal`] reads the causes a caller can act
//! on from them — wrong audience, expired, ServiceAccount deleted, bound pod
//! deleted — so that each is refused with its own reason and message, the
//! API server's words kept; anything else stays `not_authenticated` with
//! those words. Reading them decides only how a refusal is named, never
//! whether a token is accepted.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};

use super::cache::TokenCache;
use super::{check_size, ServiceAccount, TokenError, TokenVerifier, UnverifiedClaims};
use crate::clock::unix_secs;

/// How long a positive review is trusted (a deleted pod's token stops
/// getting certificates within this time), at most until the token's own
/// `exp`.
pub const REVIEW_CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_CAPACITY: usize = 10_000;

/// Verifies tokens with the API server's TokenReview.
pub struct TokenReviewVerifier {
    client: kube::Client,
    audience: String,
    cache: TokenCache,
}

impl TokenReviewVerifier {
    pub fn new(client: kube::Client, audience: &str) -> Self {
        Self {
            client,
            audience: audience.to_string(),
            cache: TokenCache::new(CACHE_CAPACITY),
        }
    }
}

impl TokenVerifier for TokenReviewVerifier {
    async fn verify(&self, token: &str) -> Result<ServiceAccount, TokenError> {
        check_size(token)?;
        let now = unix_secs(SystemTime::now());
        let key = TokenCache::key(token);
        if let Some(sa) = self.cache.get(&key, now) {
            return Ok(sa);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| TokenError::Unavailable(e.to_string()))?;
        // What the token says of itself, unverified: it names a refusal the
        // API server decided, and can only shorten the cache entry.
        let claimed = UnverifiedClaims::peek(token);
        let sa = interpret_review(reviewed.status.as_ref(), &self.audience, &claimed, now)?;
        let ttl = i64::try_from(REVIEW_CACHE_TTL.as_secs()).unwrap_or(60);
        let until = claimed.exp.map_or(now + ttl, |exp| exp.min(now + ttl));
        self.cache.insert(key, sa.clone(), until, now);
        Ok(sa)
    }
}

/// What a TokenReview's status means for us: authenticated, for our
/// audience (an audience-unaware answer is refused), and a ServiceAccount
/// username `system:serviceaccount:NS:SA`. A refusal is named by
/// [`api_refusal`], with what the token `claimed` (unverified) filling in
/// the names, at `now` (unix seconds).
pub fn interpret_review(
    status: Option<&TokenReviewStatus>,
    audience: &str,
    claimed: &UnverifiedClaims,
    now: i64,
) -> Result<ServiceAccount, TokenError> {
    let status =
        status.ok_or_else(|| TokenError::Unavailable("the TokenReview has no status".into()))?;
    if status.authenticated != Some(true) {
        let detail = status
            .error
            .clone()
            .unwrap_or_else(|| "not authenticated".into());
        return Err(refusal(&detail, audience, claimed, now));
    }
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(TokenError::WrongAudience {
            got: audiences,
            want: audience.to_string(),
        });
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    ServiceAccount::from_username(username).ok_or_else(|| {
        TokenError::ClaimsMismatch(format!("user {username:?} is not a ServiceAccount"))
    })
}

/// A cause of refusal the API server states in `status.error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRefusal {
    WrongAudience,
    Expired,
    ServiceAccountDeleted,
    PodDeleted,
    /// Another, or none recognised.
    Other,
}

/// Reads the cause out of a TokenReview's `status.error`. The API server
/// joins its authenticators' errors (`[invalid bearer token, …]`); the
/// ServiceAccount authenticator's are, by Kubernetes version:
///
/// | cause | words |
/// |---|---|
/// | audience | `token audiences ["a"] is invalid for the target audiences ["b"]` |
/// | expired | `service account token has expired`; before 1.23 `Token has expired.` |
/// | ServiceAccount deleted | `serviceaccounts "web" not found` (or `serviceaccount …`), `service account UID (…) does not match claim (…)`, `service account NS/NAME has been deleted` (`ServiceAccount …` before 1.23) |
/// | bound pod deleted | `service account token has been invalidated`, `pod UID (…) does not match service account pod ref claim (…)` |
pub fn api_refusal(error: &str) -> ApiRefusal {
    let e = error.to_ascii_lowercase();
    let has = |needle: &str| e.contains(needle);
    if has("token audiences") && has("is invalid for the target audiences") {
        ApiRefusal::WrongAudience
    } else if has("token has expired") {
        ApiRefusal::Expired
    } else if ((has("serviceaccount \"") || has("serviceaccounts \"")) && has("not found"))
        || (has("service account uid") && has("does not match claim"))
        || ((has("service account ") || has("serviceaccount ")) && has("has been deleted"))
    {
        ApiRefusal::ServiceAccountDeleted
    } else if has("service account token has been invalidated")
        || (has("pod uid") && has("does not match service account pod ref claim"))
    {
        ApiRefusal::PodDeleted
    } else {
        ApiRefusal::Other
    }
}

/// The refusal for the API server's `detail`, named by [`api_refusal`] and
/// the token's claims; `not_authenticated` with the API server's words
/// when the claims cannot fill in the names.
fn refusal(detail: &str, audience: &str, claimed: &UnverifiedClaims, now: i64) -> TokenError {
    let not_authenticated = || TokenError::NotAuthenticated(detail.to_string());
    match api_refusal(detail) {
        ApiRefusal::WrongAudience => TokenError::WrongAudience {
            got: claimed.aud.clone(),
            want: audience.to_string(),
        },
        ApiRefusal::Expired => match claimed.exp {
            Some(exp) => TokenError::Expired { exp, now },
            None => not_authenticated(),
        },
        ApiRefusal::ServiceAccountDeleted => TokenError::ServiceAccountDeleted {
            service_account: claimed
                .sub
                .as_deref()
                .and_then(ServiceAccount::from_username)
                .map_or_else(
                    || "(not named in the token)".to_string(),
                    |sa| format!("{}/{}", sa.namespace, sa.name),
                ),
            detail: detail.to_string(),
        },
        ApiRefusal::PodDeleted => match (&claimed.namespace, &claimed.pod) {
            (Some(ns), Some(pod)) => TokenError::PodDeleted {
                pod: format!("{ns}/{pod}"),
                detail: detail.to_string(),
            },
            // Bound to another kind of object (a Secret).
            _ => not_authenticated(),
        },
        ApiRefusal::Other => not_authenticated(),
    }
}

#[cfg(test)]
mod tests;
