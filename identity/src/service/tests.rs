//! The Certify handler with a fake verifier: derivation, codes, metrics.

use std::collections::HashMap;

use super::*;
use crate::ca::{CaStore, IssuerFiles};
use crate::testutil::{ca, csr, csr_with, uri, TempDir};
use crate::token::ServiceAccount;

/// Answers from a table: token → ServiceAccount or refusal.
struct FakeVerifier(HashMap<String, Result<ServiceAccount, TokenError>>);

impl TokenVerifier for FakeVerifier {
    async fn verify(&self, token: &str) -> Result<ServiceAccount, TokenError> {
        self.0
            .get(token)
            .cloned()
            .unwrap_or(Err(TokenError::BadSignature))
    }
}

fn sa(ns: &str, name: &str) -> Result<ServiceAccount, TokenError> {
    Ok(ServiceAccount {
        namespace: ns.into(),
        name: name.into(),
    })
}

struct Fixture {
    certifier: Certifier<FakeVerifier>,
    metrics: Arc<Metrics>,
    _dir: TempDir,
}

fn fixture() -> Fixture {
    let dir = TempDir::new("identity-service");
    let (b, _) = ca();
    let files = IssuerFiles {
        cert: dir.write("issuer.crt", &b.issuer_cert_pem),
        key: dir.write("issuer.key", &b.issuer_key_pem),
        roots: dir.write("roots.pem", &b.roots_pem),
    };
    let store = Arc::new(CaStore::load(files, SystemTime::now()).unwrap());
    let verifier = FakeVerifier(HashMap::from([
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
    ]));
    let metrics = Arc::new(Metrics::new());
    let certifier = Certifier::new(
        Arc::new(verifier),
        store,
        "cluster.local",
        SignPolicy::default(),
        metrics.clone(),
    );
    Fixture {
        certifier,
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
