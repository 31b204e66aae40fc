//! Issuer validation (each refusal and its reason), bootstrap files, reload.

use std::os::unix::fs::PermissionsExt as _;

use super::*;
use crate::testutil::{ca, csr, id, TempDir, DAY};

fn from_bundle(b: &Bundle, now: SystemTime) -> Result<Issuer, CaError> {
    Issuer::from_pem(
        b.issuer_cert_pem.as_bytes(),
        b.issuer_key_pem.as_bytes(),
        b.roots_pem.as_bytes(),
        now,
    )
}

#[test]
fn bootstrap_makes_a_valid_ca() {
    let (b, issuer) = ca();
    assert_eq!(issuer.roots().len(), 1);
    assert_eq!(issuer.chain().len(), 1);
    assert!(
        issuer.subject().contains("Trellis issuer (cluster.local)"),
        "{}",
        issuer.subject()
    );
    let left = issuer.not_after_unix() - unix_secs(SystemTime::now());
    assert!((364 * 86_400..=365 * 86_400).contains(&left), "{left}");
    assert!(
        !format!("{b:?}").contains("PRIVATE KEY"),
        "Debug leaks the key"
    );
    assert!(bootstrap("Not A Domain", DAY, DAY).is_err());
}

#[test]
fn expired_issuer_is_refused_with_its_expiry() {
    let past = SystemTime::now() - 10 * DAY;
    let b = bootstrap_at("cluster.local", past, 3650 * DAY, DAY).unwrap();
    let e = from_bundle(&b, SystemTime::now()).unwrap_err();
    assert!(matches!(e, CaError::Expired { .. }), "{e}");
    assert!(e.to_string().contains("expired at"), "{e}");
    // The same issuer was fine while it was valid.
    assert!(from_bundle(&b, past + DAY / 2).is_ok());
    let e = from_bundle(&b, past - DAY).unwrap_err();
    assert!(matches!(e, CaError::NotYetValid { .. }), "{e}");
}

#[test]
fn issuer_of_another_ca_does_not_chain() {
    let (a, _) = ca();
    let (b, _) = ca();
    let mixed = Bundle {
        roots_pem: b.roots_pem.clone(),
        ..a.clone()
    };
    let e = from_bundle(&mixed, SystemTime::now()).unwrap_err();
    assert!(matches!(e, CaError::DoesNotChain { roots: 1, .. }), "{e}");
    assert!(e.to_string().contains("none of the trust roots"), "{e}");
    // Both roots in the bundle (a rotation in progress): fine.
    let both = Bundle {
        roots_pem: format!("{}{}", b.roots_pem, a.roots_pem),
        ..a.clone()
    };
    assert_eq!(
        from_bundle(&both, SystemTime::now()).unwrap().roots().len(),
        2
    );
}

#[test]
fn wrong_key_and_non_ca_issuers_are_refused() {
    let (a, issuer) = ca();
    let (b, _) = ca();
    let wrong_key = Bundle {
        issuer_key_pem: b.issuer_key_pem.clone(),
        ..a.clone()
    };
    assert!(matches!(
        from_bundle(&wrong_key, SystemTime::now()),
        Err(CaError::KeyMismatch)
    ));

    // A leaf used as an issuer.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = sign::sign_leaf(
        &issuer,
        &key,
        &id("a", "b"),
        &SignPolicy::default(),
        SystemTime::now(),
    )
    .unwrap();
    let leaf_pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &leaf.leaf_der)
    );
    let not_ca = Bundle {
        issuer_cert_pem: leaf_pem,
        issuer_key_pem: key.serialize_pem(),
        ..a.clone()
    };
    assert!(matches!(
        from_bundle(&not_ca, SystemTime::now()),
        Err(CaError::NotCa)
    ));

    let garbage = Bundle {
        issuer_key_pem: "not a key".into(),
        ..a.clone()
    };
    assert!(matches!(
        from_bundle(&garbage, SystemTime::now()),
        Err(CaError::BadKey(_))
    ));
    let no_roots = Bundle {
        roots_pem: String::new(),
        ..a.clone()
    };
    let e = from_bundle(&no_roots, SystemTime::now()).unwrap_err();
    assert!(matches!(e, CaError::Roots(_)), "{e}");
    // A leaf is not a trust root.
    let leaf_as_root = Bundle {
        roots_pem: not_ca.issuer_cert_pem.clone(),
        ..a
    };
    let e = from_bundle(&leaf_as_root, SystemTime::now()).unwrap_err();
    assert!(matches!(e, CaError::Roots(_)), "{e}");
}

#[test]
fn write_bundle_sets_modes_and_refuses_to_overwrite() {
    let dir = TempDir::new("identity-bundle");
    let (b, _) = ca();
    write_bundle(dir.path(), &b, false).unwrap();
    let mode = |n: &str| {
        std::fs::metadata(dir.path().join(n))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("issuer.key"), 0o600);
    assert_eq!(mode("issuer.crt"), 0o644);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("roots.pem")).unwrap(),
        b.roots_pem
    );
    assert!(matches!(
        write_bundle(dir.path(), &b, false),
        Err(CaError::Write { .. })
    ));
    write_bundle(dir.path(), &b, true).unwrap();
}

fn files_in(dir: &TempDir, b: &Bundle) -> IssuerFiles {
    IssuerFiles {
        cert: dir.write("issuer.crt", &b.issuer_cert_pem),
        key: dir.write("issuer.key", &b.issuer_key_pem),
        roots: dir.write("roots.pem", &b.roots_pem),
    }
}

#[test]
fn reload_takes_new_files_and_keeps_the_old_on_bad_ones() {
    let dir = TempDir::new("identity-reload");
    let (first, _) = ca();
    let store = CaStore::load(files_in(&dir, &first), SystemTime::now()).unwrap();
    let mut changes = store.subscribe();
    let before = store.current();
    assert!(!store.reload(SystemTime::now()).unwrap(), "unchanged files");

    let (second, _) = ca();
    files_in(&dir, &second);
    assert!(store.reload(SystemTime::now()).unwrap());
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();
    let after = store.current();
    assert_ne!(before.chain()[0], after.chain()[0]);

    // A bad key: refused once, the second issuer stays.
    dir.write("issuer.key", "garbage");
    assert!(matches!(
        store.reload(SystemTime::now()),
        Err(CaError::BadKey(_))
    ));
    assert!(!store.reload(SystemTime::now()).unwrap(), "reported once");
    assert_eq!(store.current().chain()[0], after.chain()[0]);
    assert!(!changes.has_changed().unwrap());

    // A missing file: an error each time, the issuer stays.
    std::fs::remove_file(dir.path().join("roots.pem")).unwrap();
    assert!(matches!(
        store.reload(SystemTime::now()),
        Err(CaError::Read { .. })
    ));
    assert_eq!(store.current().chain()[0], after.chain()[0]);

    // Fixed: taken.
    files_in(&dir, &first);
    assert!(store.reload(SystemTime::now()).unwrap());
    assert_eq!(store.current().chain()[0], before.chain()[0]);
    // Issuing still works with what is current.
    let (key, _) = csr();
    sign::sign_leaf(
        &store.current(),
        &key,
        &id("a", "b"),
        &SignPolicy::default(),
        SystemTime::now(),
    )
    .unwrap();
}

#[test]
fn load_refuses_a_bad_issuer_with_the_reason() {
    let dir = TempDir::new("identity-load");
    let past = SystemTime::now() - 10 * DAY;
    let expired = bootstrap_at("cluster.local", past, 3650 * DAY, DAY).unwrap();
    let e = CaStore::load(files_in(&dir, &expired), SystemTime::now())
        .err()
        .unwrap();
    assert!(e.to_string().contains("expired"), "{e}");
    let missing = IssuerFiles {
        cert: dir.path().join("nope.crt"),
        ..files_in(&dir, &expired)
    };
    let e = CaStore::load(missing, SystemTime::now()).err().unwrap();
    assert!(e.to_string().contains("nope.crt"), "{e}");
}

// CAs made as the chart's Sprig fallback makes them (Go crypto/x509; see
// tests/data/sprig-ca/gen.go): one self-signed certificate that is both the
// trust root and the issuer, and its key in the form Sprig writes it.

/// (certificate, key) PEM of a fixture in tests/data/sprig-ca/.
macro_rules! sprig {
    ($dir:literal) => {
        (
            include_str!(concat!("../../tests/data/sprig-ca/", $dir, "/ca.crt")),
            include_str!(concat!("../../tests/data/sprig-ca/", $dir, "/ca.key")),
        )
    };
}

/// The fixture as a bundle: the one certificate is the roots and the issuer.
fn sprig_bundle((crt, key): (&str, &str)) -> Bundle {
    Bundle {
        roots_pem: crt.into(),
        issuer_cert_pem: crt.into(),
        issuer_key_pem: key.into(),
    }
}

/// Signs a leaf for a fresh CSR key and checks it verifies against the
/// roots sent alone and sent with the chain, through this crate's check
/// and through the mesh's own credential check.
fn signs_leaves_that_verify(issuer: &Issuer) {
    let now = SystemTime::now();
    let (key, _) = csr();
    let id = id("demo", "web");
    let leaf = sign::sign_leaf(issuer, &key, &id, &SignPolicy::default(), now).unwrap();
    assert_eq!(leaf.chain, issuer.chain());
    verify_chain(&leaf.leaf_der, &[], issuer.roots(), now).unwrap();
    verify_chain(&leaf.leaf_der, &leaf.chain, issuer.roots(), now).unwrap();
    let roots = trellis_core::tls::TrustRoots::from_pem(pem_of(issuer.roots()).as_bytes()).unwrap();
    let creds = trellis_core::tls::Credentials::new(id, std::sync::Arc::new(roots));
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    for chain in [vec![], leaf.chain.clone()] {
        let mut full = vec![leaf.leaf_der.clone()];
        full.extend(chain);
        creds.set(key_der.clone_key(), full).unwrap();
    }
}

fn pem_of(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| {
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, c)
            )
        })
        .collect()
}

#[test]
fn sprig_ecdsa_ca_with_its_sec1_key_is_root_and_issuer() {
    let pair = sprig!("ecdsa-p256");
    assert!(pair.1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    let issuer = from_bundle(&sprig_bundle(pair), SystemTime::now()).unwrap();
    assert_eq!(issuer.chain(), issuer.roots());
    assert_eq!(issuer.chain().len(), 1);
    assert!(
        issuer.subject().contains("Trellis root (cluster.local)"),
        "{}",
        issuer.subject()
    );
    assert!(issuer.signer().key().algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256);
    signs_leaves_that_verify(&issuer);

    // As `openssl ecparam -genkey` writes it: the curve's parameters first.
    let with_params = format!(
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
        pair.1
    );
    let b = Bundle {
        issuer_key_pem: with_params,
        ..sprig_bundle(pair)
    };
    from_bundle(&b, SystemTime::now()).unwrap();

    // Beside other roots (a rotation): still fine.
    let (other, _) = ca();
    let b = Bundle {
        roots_pem: format!("{}{}", other.roots_pem, pair.0),
        ..sprig_bundle(pair)
    };
    signs_leaves_that_verify(&from_bundle(&b, SystemTime::now()).unwrap());
}

#[test]
fn sprig_cas_of_the_other_key_types() {
    // P-384 (SEC1) and Ed25519 (PKCS#8) sign; RSA (PKCS#1, 4096 bits, as
    // genPrivateKey "rsa" makes it) too, once wrapped in PKCS#8.
    for (pair, alg) in [
        (sprig!("ecdsa-p384"), &rcgen::PKCS_ECDSA_P384_SHA384),
        (sprig!("ed25519"), &rcgen::PKCS_ED25519),
        (sprig!("rsa"), &rcgen::PKCS_RSA_SHA256),
    ] {
        let issuer = from_bundle(&sprig_bundle(pair), SystemTime::now())
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert!(issuer.signer().key().algorithm() == alg, "{alg:?}");
        signs_leaves_that_verify(&issuer);
    }
    assert!(sprig!("rsa")
        .1
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
}

#[test]
fn sprig_ca_with_a_key_that_is_not_its_own_is_refused() {
    let p256 = sprig!("ecdsa-p256");
    let (ours, _) = ca();
    for key in [
        sprig!("ecdsa-p384").1,
        sprig!("rsa").1,
        sprig!("ed25519").1,
        ours.issuer_key_pem.as_str(),
    ] {
        let b = Bundle {
            issuer_key_pem: key.into(),
            ..sprig_bundle(p256)
        };
        let e = from_bundle(&b, SystemTime::now()).unwrap_err();
        assert!(matches!(e, CaError::KeyMismatch), "{e}");
    }
    let b = Bundle {
        issuer_key_pem: p256.1.into(),
        ..sprig_bundle(sprig!("rsa"))
    };
    assert!(matches!(
        from_bundle(&b, SystemTime::now()),
        Err(CaError::KeyMismatch)
    ));
    // A key in a form that does not work says which forms do.
    let b = Bundle {
        issuer_key_pem: "-----BEGIN DSA PRIVATE KEY-----\nAAAA\n-----END DSA PRIVATE KEY-----\n"
            .into(),
        ..sprig_bundle(p256)
    };
    let e = from_bundle(&b, SystemTime::now()).unwrap_err().to_string();
    assert!(
        e.contains("\"DSA PRIVATE KEY\"") && e.contains("SEC1 \"EC PRIVATE KEY\""),
        "{e}"
    );
}

#[test]
fn a_self_signed_issuer_missing_from_the_roots_does_not_chain() {
    let (ours, _) = ca();
    let b = Bundle {
        roots_pem: ours.roots_pem,
        ..sprig_bundle(sprig!("ecdsa-p256"))
    };
    let e = from_bundle(&b, SystemTime::now()).unwrap_err();
    assert!(matches!(e, CaError::DoesNotChain { roots: 1, .. }), "{e}");
}
