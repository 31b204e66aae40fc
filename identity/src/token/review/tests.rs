//! TokenReview answers interpreted (each refusal named), and the verifier
//! against kube-rs's mock API server.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::UserInfo;

use super::*;

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
        interpret_review(Some(&ok), aud, &UnverifiedClaims::default(), 0),
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
        let got = interpret_review(s.as_ref(), aud, &UnverifiedClaims::default(), 0).unwrap_err();
        assert_eq!(got.reason(), *want, "{s:?}: {got}");
    }
}

/// What kube-apiservers write in `status.error`, by cause.
#[test]
fn the_api_servers_words_name_the_cause() {
    use ApiRefusal::*;
    let cases = [
        (
            r#"[invalid bearer token, token audiences ["api"] is invalid for the target audiences ["identity.trellis.dev"]]"#,
            WrongAudience,
        ),
        (
            "[invalid bearer token, service account token has expired]",
            Expired,
        ),
        ("[invalid bearer token, Token has expired.]", Expired),
        (
            r#"[invalid bearer token, serviceaccounts "web" not found]"#,
            ServiceAccountDeleted,
        ),
        (r#"serviceaccount "web" not found"#, ServiceAccountDeleted),
        (
            "service account UID (1f0c) does not match claim (9a2e)",
            ServiceAccountDeleted,
        ),
        (
            "service account demo/web has been deleted",
            ServiceAccountDeleted,
        ),
        (
            "ServiceAccount demo/web has been deleted",
            ServiceAccountDeleted,
        ),
        (
            "[invalid bearer token, service account token has been invalidated]",
            PodDeleted,
        ),
        (
            "pod UID (1f0c) does not match service account pod ref claim (9a2e)",
            PodDeleted,
        ),
        (
            "[invalid bearer token, square/go-jose: error in cryptographic primitive]",
            Other,
        ),
        ("not authenticated", Other),
        ("", Other),
    ];
    for (words, cause) in cases {
        assert_eq!(api_refusal(words), cause, "{words}");
    }
}

/// A token's claims, as `UnverifiedClaims::peek` reads them.
fn claimed_by_web_0() -> UnverifiedClaims {
    UnverifiedClaims {
        sub: Some("system:serviceaccount:demo:web".into()),
        exp: Some(1_000),
        aud: vec!["api".into()],
        namespace: Some("demo".into()),
        pod: Some("web-0".into()),
    }
}

/// Wrong audience, expired, ServiceAccount deleted, pod deleted: each
/// refused with its own reason, and a message that says which.
#[test]
fn each_refusal_says_why() {
    let aud = "identity.trellis.dev";
    let refused = |words: &str, claimed: &UnverifiedClaims| {
        let st = TokenReviewStatus {
            authenticated: Some(false),
            error: Some(words.to_string()),
            ..Default::default()
        };
        interpret_review(Some(&st), aud, claimed, 2_000).unwrap_err()
    };
    let web0 = claimed_by_web_0();
    let cases = [
        (
            r#"[invalid bearer token, token audiences ["api"] is invalid for the target audiences ["identity.trellis.dev"]]"#,
            "wrong_audience",
            r#"the token's audience ["api"] does not include "identity.trellis.dev""#.to_string(),
        ),
        (
            "[invalid bearer token, service account token has expired]",
            "expired_token",
            "the token expired at 1000 (unix seconds; now 2000)".to_string(),
        ),
        (
            r#"[invalid bearer token, serviceaccounts "web" not found]"#,
            "service_account_deleted",
            r#"the token's ServiceAccount demo/web was deleted (one made again under the same name is another account, which does not revive the token); the API server said: [invalid bearer token, serviceaccounts "web" not found]"#.to_string(),
        ),
        (
            "[invalid bearer token, service account token has been invalidated]",
            "pod_deleted",
            "the pod the token is bound to, demo/web-0, was deleted, which invalidates the token (a pod made again under the same name does not revive it); the API server said: [invalid bearer token, service account token has been invalidated]".to_string(),
        ),
        (
            "[invalid bearer token, square/go-jose: error in cryptographic primitive]",
            "not_authenticated",
            "the API server did not authenticate the token: [invalid bearer token, square/go-jose: error in cryptographic primitive]".to_string(),
        ),
    ];
    let mut messages = std::collections::HashSet::new();
    for (words, reason, message) in cases {
        let e = refused(words, &web0);
        assert_eq!((e.reason(), e.to_string()), (reason, message), "{words}");
        assert!(messages.insert(e.to_string()));
    }
    // Claims that cannot fill in the names: still refused, in the API
    // server's words where no name can be given.
    let none = UnverifiedClaims::default();
    let e = refused(
        "[invalid bearer token, service account token has expired]",
        &none,
    );
    assert_eq!(e.reason(), "not_authenticated");
    assert!(e.to_string().contains("token has expired"), "{e}");
    let e = refused("service account token has been invalidated", &none);
    assert_eq!(e.reason(), "not_authenticated");
    let e = refused(r#"serviceaccounts "web" not found"#, &none);
    assert_eq!(e.reason(), "service_account_deleted");
    assert!(e.to_string().contains("(not named in the token)"), "{e}");
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

/// A JWT-shaped token for demo/web in pod demo/web-0 (the API server
/// is a mock: the signature is never checked).
fn token(tag: &str) -> String {
    let payload = serde_json::json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": "system:serviceaccount:demo:web",
        "aud": ["identity.trellis.dev"],
        "exp": unix_secs(SystemTime::now()) + 3600,
        "jti": tag,
        "kubernetes.io": {
            "namespace": "demo",
            "serviceaccount": {"name": "web", "uid": "6d3c"},
            "pod": {"name": "web-0", "uid": "9a2e"},
        },
    });
    format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(payload.to_string()))
}

async fn refuse_with(handle: &mut Mock, error: &str) {
    let (req, send) = handle.next_request().await.expect("a TokenReview request");
    let body = req.into_body().collect_bytes().await.unwrap();
    let review: TokenReview = serde_json::from_slice(&body).unwrap();
    let status = TokenReviewStatus {
        authenticated: Some(false),
        error: Some(error.to_string()),
        ..Default::default()
    };
    let body = serde_json::to_string(&TokenReview {
        status: Some(status),
        ..review
    })
    .unwrap();
    send.send_response(http::Response::builder().status(201).body(body).unwrap());
}

#[tokio::test]
async fn the_tokens_of_a_deleted_pod_and_serviceaccount_are_refused_as_such() {
    let (verifier, mut api) = mock_verifier();
    let (pod_a, pod_b) = (token("a"), token("b"));
    let (got, ()) = tokio::join!(
        verifier.verify(&pod_a),
        refuse_with(
            &mut api,
            "[invalid bearer token, service account token has been invalidated]"
        )
    );
    let e = got.unwrap_err();
    assert_eq!(e.reason(), "pod_deleted");
    assert!(
        e.to_string()
            .starts_with("the pod the token is bound to, demo/web-0, was deleted"),
        "{e}"
    );

    let (got, ()) = tokio::join!(
        verifier.verify(&pod_b),
        refuse_with(
            &mut api,
            r#"[invalid bearer token, serviceaccounts "web" not found]"#
        )
    );
    let e = got.unwrap_err();
    assert_eq!(e.reason(), "service_account_deleted");
    assert!(
        e.to_string()
            .starts_with("the token's ServiceAccount demo/web was deleted"),
        "{e}"
    );
}
