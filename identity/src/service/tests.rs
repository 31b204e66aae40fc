//! The Certify handler with a fake verifier: derivation, codes, metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::*;
use crate::admission::Limits;
use crate::ca::{CaStore, IssuerFiles};
use crate::testutil::{ca, csr, csr_with, uri, TempDir};
use crate::token::ServiceAccount;

/// Answers from a table: token → ServiceAccount or refusal; counts the
/// calls, and while `gate` has no permits, holds each call until it has.
struct FakeVerifier {
    table: HashMap<String, Result<ServiceAccount, TokenError>>,
    calls: AtomicUsize,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl TokenVerifier for FakeVerifier {
    async fn verify(&self, token: &str) -> Result<ServiceAccount, TokenError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            let _pass = gate.acquire().await.unwrap();
        }
        self.table
            .get(token)
            .cloned()
            .unwrap_or(Err(TokenError::BadSignature))
    }
}

const LIMITS: Limits = Limits {
    rate: 5.0,
    burst: 20,
    max_concurrent: 64,
    refusal_ttl: Duration::from_secs(60),
};

/// A JWT-shaped token whose payload says `exp` (the fake verifier does not
/// look inside; the lifetime cap does).
fn token_expiring(exp: i64) -> String {
    let payload = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"sub":"system:serviceaccount:demo:web","exp":{exp}}}"#
    ));
    format!("e30.{payload}.sig")
}

fn sa(ns: &str, name: &str) -> Result<ServiceAccount, TokenError> {
    Ok(ServiceAccount {
        namespace: ns.into(),
        name: name.into(),
    })
}

struct Fixture {
    certifier: Certifier<FakeVerifier>,
    verifier: Arc<FakeVerifier>,
    metrics: Arc<Metrics>,
    _dir: TempDir,
}

fn fixture() -> Fixture {
    fixture_with(LIMITS, None, &[])
}

fn fixture_with(
    limits: Limits,
    gate: Option<Arc<tokio::sync::Semaphore>>,
    more: &[(String, Result<ServiceAccount, TokenError>)],
) -> Fixture {
    let dir = TempDir::new("identity-service");
    let (b, _) = ca();
    let files = IssuerFiles {
        cert: dir.write("issuer.crt", &b.issuer_cert_pem),
        key: dir.write("issuer.key", &b.issuer_key_pem),
        roots: dir.write("roots.pem", &b.roots_pem),
    };
    let store = Arc::new(CaStore::load(files, SystemTime::now()).unwrap());
    let mut table = HashMap::from([
        ("web".to_string(), sa("demo", "web")),
        ("upper".to_string(), sa("Demo", "web")),
        (
            "down".to_string(),
            Err(TokenError::Unavailable("API server unreachable".into())),
        ),
        (
            "old".to_string(),
            Err(TokenError::Expired { exp: 1, now: 2 }),
        ),
        (
            "gone-pod".to_string(),
            Err(TokenError::PodDeleted {
                pod: "demo/web-0".into(),
                detail: "service account token has been invalidated".into(),
            }),
        ),
        (
            "gone-sa".to_string(),
            Err(TokenError::ServiceAccountDeleted {
                service_account: "demo/web".into(),
                detail: "serviceaccounts \"web\" not found".into(),
            }),
        ),
    ]);
    table.extend(more.iter().cloned());
    let verifier = Arc::new(FakeVerifier {
        table,
        calls: AtomicUsize::new(0),
        gate,
    });
    let metrics = Arc::new(Metrics::new());
    let certifier = Certifier::new(
        verifier.clone(),
        store,
        "cluster.local",
        SignPolicy::default(),
        Arc::new(Admission::new(limits)),
        metrics.clone(),
    );
    Fixture {
        certifier,
        verifier,
        metrics,
        _dir: dir,
    }
}

fn req(token: &str, csr_der: Vec<u8>) -> CertifyRequest {
    CertifyRequest {
        csr_der,
        token: token.to_string(),
    }
}

#[tokio::test]
async fn identity_is_derived_from_the_token() {
    let f = fixture();
    let (key, der) = csr();
    let (resp, serial) = f
        .certifier
        .decide(&req("web", der), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(serial.len(), 32);
    assert_eq!(resp.identity, "spiffe://cluster.local/ns/demo/sa/web");
    assert_eq!(resp.intermediates_der.len(), 1);
    let leaf = rustls_pki_types::CertificateDer::from(resp.leaf_der.clone());
    assert_eq!(
        trellis_core::tls::peer_identity(&[leaf])
            .unwrap()
            .to_string(),
        "spiffe://cluster.local/ns/demo/sa/web"
    );
    let (_, x509) = x509_parser::parse_x509_certificate(&resp.leaf_der).unwrap();
    assert_eq!(
        x509.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    assert_eq!(x509.validity().not_after.timestamp(), resp.not_after_unix);
}

/// What a caller reads for each refusal of its token: the reason, then
/// why in words (the real-API tests check these against a kube-apiserver).
#[tokio::test]
async fn token_refusals_say_why() {
    let f = fixture();
    for (token, says) in [
        ("old", "expired_token: the token expired at 1 (unix seconds; now 2)"),
        (
            "gone-pod",
            "pod_deleted: the pod the token is bound to, demo/web-0, was deleted, which invalidates the token",
        ),
        (
            "gone-sa",
            "service_account_deleted: the token's ServiceAccount demo/web was deleted",
        ),
    ] {
        let status = f
            .certifier
            .certify(Request::new(req(token, csr().1)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token}");
        assert!(
            status.message().starts_with(says),
            "{token}: {}",
            status.message()
        );
    }
}

#[tokio::test]
async fn each_refusal_has_its_code_and_reason() {
    let f = fixture();
    let other_san = csr_with(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        vec![uri("spiffe://cluster.local/ns/kube-system/sa/admin")],
        false,
    )
    .1;
    let p384 = csr_with(&rcgen::PKCS_ECDSA_P384_SHA384, vec![], false).1;
    let ca_bit = csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, vec![], true).1;
    let cases: Vec<(CertifyRequest, Code, &str)> = vec![
        (
            req("forged", csr().1),
            Code::Unauthenticated,
            "bad_signature",
        ),
        (req("old", csr().1), Code::Unauthenticated, "expired_token"),
        (
            req("gone-pod", csr().1),
            Code::Unauthenticated,
            "pod_deleted",
        ),
        (
            req("gone-sa", csr().1),
            Code::Unauthenticated,
            "service_account_deleted",
        ),
        (
            req("down", csr().1),
            Code::Unavailable,
            "token_review_unavailable",
        ),
        (
            req("upper", csr().1),
            Code::PermissionDenied,
            "invalid_identity",
        ),
        (req("web", vec![]), Code::InvalidArgument, "bad_csr"),
        (
            req("web", b"garbage".to_vec()),
            Code::InvalidArgument,
            "bad_csr",
        ),
        (
            req("web", other_san),
            Code::InvalidArgument,
            "csr_san_mismatch",
        ),
        (
            req("web", p384),
            Code::InvalidArgument,
            "csr_unsupported_key",
        ),
        (
            req("web", ca_bit),
            Code::InvalidArgument,
            "csr_ca_requested",
        ),
    ];
    for (r, code, reason) in cases {
        let before = f.metrics.refusals_total(reason);
        let status = f.certifier.certify(Request::new(r)).await.unwrap_err();
        assert_eq!(status.code(), code, "{reason}: {status:?}");
        assert!(status.message().starts_with(reason), "{}", status.message());
        assert_eq!(f.metrics.refusals_total(reason), before + 1, "{reason}");
    }
    assert_eq!(f.metrics.issued_total(), 0);
    let ok = f
        .certifier
        .certify(Request::new(req("web", csr().1)))
        .await
        .unwrap();
    assert_eq!(
        ok.get_ref().identity,
        "spiffe://cluster.local/ns/demo/sa/web"
    );
    assert_eq!(f.metrics.issued_total(), 1);
}

#[tokio::test]
async fn an_expired_issuer_is_our_fault_not_the_callers() {
    let f = fixture();
    let later = f.certifier.ca.current().not_after() + std::time::Duration::from_secs(1);
    let e = f
        .certifier
        .decide(&req("web", csr().1), later)
        .await
        .unwrap_err();
    assert_eq!(
        e.classify(),
        (Code::Unavailable, "issuer_expired", Level::Error)
    );
}

impl Fixture {
    fn calls(&self) -> usize {
        self.verifier.calls.load(Ordering::SeqCst)
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_token_is_answered_from_memory_until_the_ttl() {
    let f = fixture();
    let status = f
        .certifier
        .certify(Request::new(req("forged", csr().1)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(f.calls(), 1);
    // Again: the same answer, without verifying.
    for _ in 0..3 {
        let again = f
            .certifier
            .certify(Request::new(req("forged", csr().1)))
            .await
            .unwrap_err();
        assert_eq!(again.code(), Code::Unauthenticated);
        assert!(again.message().starts_with("bad_signature"), "{again:?}");
        assert!(again.message().contains("refused before"), "{again:?}");
    }
    assert_eq!(f.calls(), 1);
    assert_eq!(f.metrics.refusals_cached_total(), 3);
    assert_eq!(f.metrics.refusals_total("bad_signature"), 4);
    // Our own failure is not remembered: asked every time.
    for _ in 0..2 {
        let _ = f
            .certifier
            .certify(Request::new(req("down", csr().1)))
            .await;
    }
    assert_eq!(f.calls(), 3);
    // Nor is a bad CSR with a good token (the token was fine).
    for _ in 0..2 {
        let _ = f.certifier.certify(Request::new(req("web", vec![]))).await;
    }
    assert_eq!(f.calls(), 5);
    // After the TTL the token is verified again.
    tokio::time::advance(Duration::from_secs(61)).await;
    let _ = f
        .certifier
        .certify(Request::new(req("forged", csr().1)))
        .await;
    assert_eq!(f.calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn over_the_rate_requests_are_refused_unverified() {
    let f = fixture();
    let mut exhausted = 0;
    for _ in 0..50 {
        // Distinct bad tokens: nothing to remember, only the rate limits.
        let token = format!("bogus-{exhausted}-{}", f.calls());
        match f
            .certifier
            .certify(Request::new(req(&token, csr().1)))
            .await
        {
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().starts_with("rate_limited"), "{s:?}");
                exhausted += 1;
            }
            Err(s) => assert_eq!(s.code(), Code::Unauthenticated),
            Ok(_) => panic!("a bogus token was accepted"),
        }
    }
    assert_eq!(f.calls(), 20, "the burst");
    assert_eq!(exhausted, 30);
    assert_eq!(f.metrics.limited_total("rate"), 30);
    // Another workload (another claimed subject) is still served.
    let web = token_expiring(crate::clock::unix_secs(SystemTime::now()) + 3600);
    let f2 = fixture_with(LIMITS, None, &[(web.clone(), sa("demo", "web"))]);
    for i in 0..20 {
        let _ = f2
            .certifier
            .certify(Request::new(req(&format!("bogus-{i}"), csr().1)))
            .await;
    }
    assert!(f2
        .certifier
        .certify(Request::new(req("bogus-x", csr().1)))
        .await
        .is_err_and(|s| s.code() == Code::ResourceExhausted));
    let ok = f2.certifier.certify(Request::new(req(&web, csr().1))).await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test(start_paused = true)]
async fn verifications_beyond_the_limit_are_refused_at_once() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let limits = Limits {
        max_concurrent: 2,
        ..LIMITS
    };
    let f = Arc::new(fixture_with(limits, Some(gate.clone()), &[]));
    let held: Vec<_> = (0..2)
        .map(|i| {
            let f = f.clone();
            tokio::spawn(async move {
                let r = req(&format!("slow-{i}"), csr().1);
                f.certifier.certify(Request::new(r)).await
            })
        })
        .collect();
    // Both are inside the verifier (paused time: this is bounded by the
    // auto-advance, not by the wall clock).
    trellis_core::test_support::eventually("both verifications started", async || {
        (f.calls() == 2).then_some(())
    })
    .await;
    let status = f
        .certifier
        .certify(Request::new(req("third", csr().1)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().starts_with("concurrency_limited"),
        "{status:?}"
    );
    assert_eq!(f.calls(), 2, "refused without verifying");
    assert_eq!(f.metrics.limited_total("concurrency"), 1);
    gate.add_permits(2);
    for h in held {
        assert_eq!(h.await.unwrap().unwrap_err().code(), Code::Unauthenticated);
    }
    // Slots are free again.
    let _ = f
        .certifier
        .certify(Request::new(req("fourth", csr().1)))
        .await;
    assert_eq!(f.calls(), 3);
}

#[tokio::test]
async fn the_certificate_lives_no_longer_than_the_token() {
    let now = crate::clock::unix_secs(SystemTime::now());
    let (soon, later, dying) = (
        token_expiring(now + 600),
        token_expiring(now + 10 * 86_400),
        token_expiring(now + 20),
    );
    let f = fixture_with(
        LIMITS,
        None,
        &[
            (soon.clone(), sa("demo", "web")),
            (later.clone(), sa("demo", "web")),
            (dying.clone(), sa("demo", "web")),
        ],
    );
    let at = SystemTime::now();
    let t = crate::clock::unix_secs(at);
    // (token, expected notAfter)
    for (token, want) in [
        (&soon, now + 600),
        (&later, t + 86_400),
        (&"web".to_string(), t + 86_400),
    ] {
        let (resp, _) = f.certifier.decide(&req(token, csr().1), at).await.unwrap();
        assert_eq!(resp.not_after_unix, want);
    }
    let e = f
        .certifier
        .decide(&req(&dying, csr().1), at)
        .await
        .unwrap_err();
    assert_eq!(
        e.classify(),
        (Code::Unauthenticated, "token_expires_soon", Level::Info)
    );
}
