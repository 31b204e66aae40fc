//! Leaf signing: SAN from the given identity, extensions, validity, chain.

use std::time::UNIX_EPOCH;

use super::*;
use crate::ca::verify_chain;
use crate::csr;
use crate::testutil::{ca, csr_with, id, uri, DAY};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

#[test]
fn leaf_names_the_given_identity_and_chains_to_the_root() {
    let (_, issuer) = ca();
    // The CSR asks for another identity: the check refuses it...
    let granted = id("demo", "web");
    let (key, der) = csr_with(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        vec![uri("spiffe://cluster.local/ns/kube-system/sa/admin")],
        false,
    );
    assert_eq!(
        csr::check(&der, &granted).unwrap_err().reason(),
        "csr_san_mismatch"
    );
    // ...and even signing its key directly names only the given identity.
    let now = SystemTime::now();
    let policy = SignPolicy {
        lifetime: Duration::from_secs(3600),
        skew: Duration::from_secs(90),
    };
    let leaf = sign_leaf(&issuer, &key, &granted, &policy, now).unwrap();
    let (_, x509) = X509Certificate::from_der(&leaf.leaf_der).unwrap();
    let sans: Vec<String> = x509
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => u.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(sans, ["spiffe://cluster.local/ns/demo/sa/web"]);
    assert!(x509.subject().iter().next().is_none(), "empty subject");
    let san_ext = x509
        .extensions()
        .iter()
        .find(|e| {
            matches!(
                e.parsed_extension(),
                ParsedExtension::SubjectAlternativeName(_)
            )
        })
        .unwrap();
    assert!(
        san_ext.critical,
        "SAN must be critical with an empty subject"
    );
    assert_eq!(
        x509.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );

    // Validity window.
    let now_s = unix_secs(now);
    assert_eq!(x509.validity().not_before.timestamp(), now_s - 90);
    assert_eq!(x509.validity().not_after.timestamp(), now_s + 3600);
    assert_eq!(leaf.not_after_unix(), now_s + 3600);

    // Not a CA; digitalSignature; serverAuth + clientAuth.
    assert!(!x509.basic_constraints().unwrap().unwrap().value.ca);
    let ku = x509.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);

    // The chain verifies with webpki against the root, for both usages.
    assert_eq!(leaf.chain, issuer.chain());
    verify_chain(&leaf.leaf_der, &leaf.chain, issuer.roots(), now).unwrap();
    // And not against another CA's root.
    let (_, other) = ca();
    let e = verify_chain(&leaf.leaf_der, &leaf.chain, other.roots(), now).unwrap_err();
    assert!(e.contains("none of the trust roots"), "{e}");
}

#[test]
fn serials_differ_for_the_same_key() {
    let (_, issuer) = ca();
    let (key, _) = crate::testutil::csr();
    let now = SystemTime::now();
    let a = sign_leaf(&issuer, &key, &id("a", "b"), &SignPolicy::default(), now).unwrap();
    let b = sign_leaf(&issuer, &key, &id("a", "b"), &SignPolicy::default(), now).unwrap();
    assert_ne!(a.serial, b.serial);
    assert_eq!(a.serial.len(), 32);
}

#[test]
fn leaves_never_outlive_the_issuer_and_an_expired_issuer_signs_nothing() {
    let now = SystemTime::now();
    let b = crate::ca::bootstrap_at("cluster.local", now, 3650 * DAY, DAY).unwrap();
    let issuer = crate::testutil::issuer_of(&b);
    let (key, _) = crate::testutil::csr();
    let long = SignPolicy {
        lifetime: 30 * DAY,
        skew: Duration::from_secs(60),
    };
    let leaf = sign_leaf(&issuer, &key, &id("a", "b"), &long, now).unwrap();
    assert_eq!(leaf.not_after_unix(), issuer.not_after_unix());
    let later =
        UNIX_EPOCH + Duration::from_secs(u64::try_from(issuer.not_after_unix()).unwrap() + 1);
    assert!(matches!(
        sign_leaf(&issuer, &key, &id("a", "b"), &long, later),
        Err(SignError::IssuerExpired(_))
    ));
}

#[test]
fn lifetime_is_capped_by_the_tokens_remaining_life() {
    let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_700);
    let t = 1_700_000_000i64;
    let s = Duration::from_secs;
    let day = SignPolicy::default();
    let short = SignPolicy {
        lifetime: s(30),
        skew: s(60),
    };
    // (policy, token exp, lifetime or the floor refused)
    let table: &[(SignPolicy, Option<i64>, Result<Duration, u64>)] = &[
        // No exp stated: the policy's lifetime.
        (day, None, Ok(s(86_400))),
        // The token outlives the policy: the policy's lifetime.
        (day, Some(t + 2 * 86_400), Ok(s(86_400))),
        (day, Some(t + 86_400), Ok(s(86_400))),
        // The token expires sooner: its remaining life.
        (day, Some(t + 3600), Ok(s(3600))),
        (day, Some(t + 60), Ok(s(60))),
        // Less than the floor left, or expired: refused.
        (day, Some(t + 59), Err(60)),
        (day, Some(t), Err(60)),
        (day, Some(t - 10), Err(60)),
        (day, Some(i64::MIN), Err(60)),
        // A configured lifetime under the floor is the floor.
        (short, Some(t + 3600), Ok(s(30))),
        (short, Some(t + 30), Ok(s(30))),
        (short, Some(t + 29), Err(30)),
        (day, Some(i64::MAX), Ok(s(86_400))),
    ];
    for (policy, exp, want) in table {
        let got = leaf_lifetime(policy, *exp, now).map_err(|e| e.min);
        assert_eq!(got, *want, "{policy:?} exp {exp:?}");
    }
    let e = leaf_lifetime(&day, Some(t + 5), now).unwrap_err();
    assert_eq!((e.exp, e.now), (t + 5, t));
    assert!(e.to_string().contains("fresher token"), "{e}");
}

#[test]
fn a_capped_leaf_never_outlives_the_token() {
    let (_, issuer) = ca();
    let (key, _) = csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, vec![], false);
    let now = SystemTime::now();
    let exp = unix_secs(now) + 600;
    let policy = SignPolicy::default();
    let lifetime = leaf_lifetime(&policy, Some(exp), now).unwrap();
    let capped = SignPolicy { lifetime, ..policy };
    let leaf = sign_leaf(&issuer, &key, &id("demo", "web"), &capped, now).unwrap();
    assert!(leaf.not_after_unix() <= exp);
    assert!(leaf.not_after_unix() >= exp - 1);
    let (_, cert) = X509Certificate::from_der(leaf.leaf_der.as_ref()).unwrap();
    assert_eq!(cert.validity().not_after.timestamp(), leaf.not_after_unix());
}
