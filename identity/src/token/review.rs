//! Token verification by the API server: a TokenReview with audience
//! [`super::DEFAULT_AUDIENCE`] (configurable). The answer is interpreted by
//! the pure [`interpret_review`]; results are cached briefly so a burst of
//! renewals is not a burst of reviews.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};

use super::cache::TokenCache;
use super::{check_size, ServiceAccount, TokenError, TokenVerifier};
use crate::clock::unix_secs;

/// How long a positive review is trusted (a deleted pod's token stops
/// working within this time), at most until the token's own `exp`.
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
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| TokenError::Unavailable(e.to_string()))?;
        let sa = interpret_review(reviewed.status.as_ref(), &self.audience)?;
        let ttl = i64::try_from(REVIEW_CACHE_TTL.as_secs()).unwrap_or(60);
        let until = unverified_exp(token).map_or(now + ttl, |exp| exp.min(now + ttl));
        self.cache.insert(key, sa.clone(), until, now);
        Ok(sa)
    }
}

/// What a TokenReview's status means for us: authenticated, for our
/// audience (an audience-unaware answer is refused), and a ServiceAccount
/// username `system:serviceaccount:NS:SA`.
pub fn interpret_review(
    status: Option<&TokenReviewStatus>,
    audience: &str,
) -> Result<ServiceAccount, TokenError> {
    let status =
        status.ok_or_else(|| TokenError::Unavailable("the TokenReview has no status".into()))?;
    if status.authenticated != Some(true) {
        let why = status
            .error
            .clone()
            .unwrap_or_else(|| "not authenticated".into());
        return Err(TokenError::NotAuthenticated(why));
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

/// The `exp` claim of a JWT, read without verification: only ever used to
/// shorten how long a reviewed token is cached.
fn unverified_exp(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")?.as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(auth: Option<bool>, auds: Option<&[&str]>, user: Option<&str>) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: auth,
            audiences: auds.map(|a| a.iter().map(|s| s.to_string()).collect()),
            user: user.map(|u| UserInfo {
                username: Some(u.to_string()),
                ..Default::default()
            }),
            error: None,
        }
    }

    #[test]
    fn review_interpretation_table() {
        let aud = "identity.trellis.dev";
        let ok = status(
            Some(true),
            Some(&[aud]),
            Some("system:serviceaccount:demo:web"),
        );
        assert_eq!(
            interpret_review(Some(&ok), aud),
            Ok(ServiceAccount {
                namespace: "demo".into(),
                name: "web".into()
            })
        );
        let cases: &[(Option<TokenReviewStatus>, &str)] = &[
            (None, "token_review_unavailable"),
            (
                Some(status(Some(false), Some(&[aud]), None)),
                "not_authenticated",
            ),
            (
                Some(status(
                    None,
                    Some(&[aud]),
                    Some("system:serviceaccount:a:b"),
                )),
                "not_authenticated",
            ),
            (
                Some(status(Some(true), None, Some("system:serviceaccount:a:b"))),
                "wrong_audience",
            ),
            (
                Some(status(
                    Some(true),
                    Some(&["other"]),
                    Some("system:serviceaccount:a:b"),
                )),
                "wrong_audience",
            ),
            (
                Some(status(Some(true), Some(&[aud]), Some("alice"))),
                "claims_mismatch",
            ),
            (
                Some(status(
                    Some(true),
                    Some(&[aud]),
                    Some("system:serviceaccount:a"),
                )),
                "claims_mismatch",
            ),
            (
                Some(status(
                    Some(true),
                    Some(&[aud]),
                    Some("system:serviceaccount:a:b:c"),
                )),
                "claims_mismatch",
            ),
            (
                Some(status(Some(true), Some(&[aud]), None)),
                "claims_mismatch",
            ),
        ];
        for (s, want) in cases {
            let got = interpret_review(s.as_ref(), aud).unwrap_err();
            assert_eq!(got.reason(), *want, "{s:?}: {got}");
        }
    }

    #[test]
    fn unverified_exp_reads_only_well_formed_payloads() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"exp":1234}"#);
        assert_eq!(unverified_exp(&format!("h.{payload}.s")), Some(1234));
        assert_eq!(unverified_exp("h.!!.s"), None);
        assert_eq!(unverified_exp("nodots"), None);
    }
}
