//! Token verification by the API server: a TokenReview with audience
//! [`super::DEFAULT_AUDIENCE`] (configurable). The answer is interpreted by
//! the pure [`interpret_review`]; results are cached briefly so a burst of
//! renewals is not a burst of reviews.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};

use super::cache::TokenCache;
use super::{check_size, ServiceAccount, TokenError, TokenVerifier, UnverifiedClaims};
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
        let sa = interpret_review(reviewed.status.as_ref(), &self.audience)?;
        let ttl = i64::try_from(REVIEW_CACHE_TTL.as_secs()).unwrap_or(60);
        // The token's own exp, unverified: it can only shorten the entry.
        let until = UnverifiedClaims::peek(token)
            .exp
            .map_or(now + ttl, |exp| exp.min(now + ttl));
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

    type Mock = tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<String>>;

    /// A verifier whose API server is a kube-rs mock service: the test
    /// sees each request and answers it.
    fn mock_verifier() -> (TokenReviewVerifier, Mock) {
        let (svc, handle) = tower_test::mock::pair();
        let client = kube::Client::new(svc, "default");
        (
            TokenReviewVerifier::new(client, "identity.trellis.dev"),
            handle,
        )
    }

    /// Takes the next request, checks it is the TokenReview kube-rs must
    /// send for `token`, and answers `status` with HTTP `code`.
    async fn answer_review(
        handle: &mut Mock,
        token: &str,
        code: u16,
        status: Option<TokenReviewStatus>,
    ) {
        let (req, send) = handle.next_request().await.expect("a TokenReview request");
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(
            req.uri().path(),
            "/apis/authentication.k8s.io/v1/tokenreviews"
        );
        let body = req.into_body().collect_bytes().await.unwrap();
        let review: TokenReview = serde_json::from_slice(&body).unwrap();
        assert_eq!(review.spec.token, token);
        assert_eq!(
            review.spec.audiences,
            Some(vec!["identity.trellis.dev".to_string()])
        );
        let body = if code == 201 {
            serde_json::to_string(&TokenReview { status, ..review }).unwrap()
        } else {
            // What the API server sends on refusal: a Status object.
            serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "tokenreviews.authentication.k8s.io is forbidden",
                "reason": "Forbidden", "code": code
            })
            .to_string()
        };
        send.send_response(http::Response::builder().status(code).body(body).unwrap());
    }

    #[tokio::test]
    async fn reviews_through_the_api_server_and_caches_the_answer() {
        let (verifier, mut api) = mock_verifier();
        let sa = ServiceAccount {
            namespace: "demo".into(),
            name: "web".into(),
        };
        let ok = status(
            Some(true),
            Some(&["identity.trellis.dev"]),
            Some("system:serviceaccount:demo:web"),
        );
        let (got, ()) = tokio::join!(
            verifier.verify("token-a"),
            answer_review(&mut api, "token-a", 201, Some(ok))
        );
        assert_eq!(got, Ok(sa.clone()));
        // The same token again: answered from the cache, no request.
        assert_eq!(verifier.verify("token-a").await, Ok(sa));

        // Refused by the API server, and the API server refusing us.
        let no = status(Some(false), None, None);
        let (got, ()) = tokio::join!(
            verifier.verify("token-b"),
            answer_review(&mut api, "token-b", 201, Some(no))
        );
        assert_eq!(got.unwrap_err().reason(), "not_authenticated");
        let (got, ()) = tokio::join!(
            verifier.verify("token-c"),
            answer_review(&mut api, "token-c", 403, None)
        );
        let err = got.unwrap_err();
        assert_eq!(err.reason(), "token_review_unavailable");
        assert!(err.to_string().contains("forbidden"), "{err}");
        // The verifier caches no refusal (the service does, for the
        // caller's faults only; see `admission`): the next try asks again.
        let ok = status(
            Some(true),
            Some(&["identity.trellis.dev"]),
            Some("system:serviceaccount:demo:api"),
        );
        let (got, ()) = tokio::join!(
            verifier.verify("token-c"),
            answer_review(&mut api, "token-c", 201, Some(ok))
        );
        assert_eq!(got.unwrap().name, "api");
    }
}
