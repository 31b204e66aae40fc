//! Trust bundles, credentials and identity extraction, without handshakes.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use sha2::Digest as _;

use super::fixtures::*;
use crate::tls::*;

#[test]
fn trust_roots_refuse_empty_and_invalid_bundles() {
    let ca = Ca::new("mesh");
    assert!(matches!(TrustRoots::from_pem(b""), Err(TlsError::NoRoots)));
    assert!(matches!(
        TrustRoots::from_pem(b"just text\n"),
        Err(TlsError::NoRoots)
    ));
    let key_only = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    assert!(matches!(
        TrustRoots::from_pem(key_only),
        Err(TlsError::NoRoots)
    ));
    let bad_base64 = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        TrustRoots::from_pem(bad_base64),
        Err(TlsError::Pem(_))
    ));
    let not_a_cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        TrustRoots::from_pem(not_a_cert),
        Err(TlsError::BadRoot { index: 0, .. })
    ));
    let unterminated = format!("{}-----BEGIN CERTIFICATE-----\nAAAA\n", ca.root_pem);
    assert!(TrustRoots::from_pem(unterminated.as_bytes()).is_err());

    // A workload certificate is not a root.
    let leaf = ca.leaf(&id("demo", "web"));
    let err = TrustRoots::from_pem(format!("{}{}", ca.root_pem, leaf.pem).as_bytes()).unwrap_err();
    assert!(matches!(err, TlsError::BadRoot { index: 1, .. }), "{err}");
    assert!(err.to_string().contains("not a CA"), "{err}");

    // A bad replacement keeps the current roots.
    let roots = ca.roots();
    let before = roots.fingerprint();
    assert!(roots.replace_from_pem(b"").is_err());
    assert_eq!(roots.fingerprint(), before);

    let err = TrustRoots::load(Path::new("/nonexistent/trellis/ca.pem")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/trellis/ca.pem"),
        "{err}"
    );
}

#[test]
fn fingerprint_depends_on_the_certificates_only() {
    let (a, b) = (Ca::new("a"), Ca::new("b"));
    let plain = TrustRoots::from_pem(a.root_pem.as_bytes()).unwrap();
    let decorated = format!("# mesh root\n\n{}\n\n", a.root_pem.replace('\n', "\r\n"));
    let decorated = TrustRoots::from_pem(decorated.as_bytes()).unwrap();
    assert_eq!(plain.fingerprint(), decorated.fingerprint());
    assert!(plain.fingerprint().starts_with("sha256:"));
    assert_eq!(plain.fingerprint().len(), "sha256:".len() + 64);
    assert_ne!(plain.fingerprint(), b.roots().fingerprint());
}

#[test]
fn credentials_start_unready_and_report_the_current_certificate() {
    let ca = Ca::new("mesh");
    let web = id("demo", "web");
    let creds = Credentials::new(web.clone(), ca.roots());
    assert!(!creds.is_ready());
    assert_eq!(creds.info(), None);
    assert_eq!(creds.id(), &web);

    let leaf = ca.leaf(&web);
    let info = creds.set(leaf.key(), leaf.chain.clone()).unwrap();
    assert!(creds.is_ready());
    assert_eq!(creds.info(), Some(info.clone()));
    assert_eq!(
        info.not_before,
        UNIX_EPOCH + Duration::from_secs(1_704_067_200)
    ); // 2024-01-01
    assert_eq!(
        info.not_after,
        UNIX_EPOCH + Duration::from_secs(4_102_444_800)
    ); // 2100-01-01
    let (_, x509) = x509_parser::parse_x509_certificate(leaf.chain[0].as_ref()).unwrap();
    assert_eq!(info.serial, x509.raw_serial_as_string().replace(':', ""));
    // The key fingerprint is the SubjectPublicKeyInfo's, and a new key
    // (a renewal) shows a new one.
    let spki: [u8; 32] = sha2::Sha256::digest(x509.public_key().raw).into();
    assert_eq!(
        info.key_fingerprint,
        format!("sha256:{}", crate::tls::roots::hex(&spki))
    );
    let renewed = ca.leaf(&web);
    let next = creds.set(renewed.key(), renewed.chain.clone()).unwrap();
    assert_ne!(next.key_fingerprint, info.key_fingerprint);
}

#[test]
fn set_refuses_bad_certificates_and_keeps_the_current_one() {
    let (ca, other) = (Ca::new("mesh"), Ca::new("other"));
    let web = id("demo", "web");
    let creds = ca.creds(&web, &ca.roots());
    let current = creds.info();

    let api = ca.leaf(&id("demo", "api"));
    let err = creds.set(api.key(), api.chain.clone()).unwrap_err();
    assert!(matches!(err, TlsError::WrongIdentity { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("expected spiffe://cluster.local/ns/demo/sa/web"),
        "{err}"
    );

    let (mine, someone_else) = (ca.leaf(&web), ca.leaf(&web));
    let err = creds
        .set(someone_else.key(), mine.chain.clone())
        .unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch), "{err}");

    let foreign = other.leaf(&web);
    let err = creds.set(foreign.key(), foreign.chain.clone()).unwrap_err();
    assert!(matches!(err, TlsError::UnknownIssuer), "{err}");

    let leaf_only = ca.leaf(&web);
    let err = creds
        .set(leaf_only.key(), leaf_only.chain[..1].to_vec())
        .unwrap_err();
    assert!(matches!(err, TlsError::UnknownIssuer), "{err}");

    let expired = ca.leaf_with(vec![uri(&web.to_string())], Some((2020, 2021)));
    let err = creds.set(expired.key(), expired.chain.clone()).unwrap_err();
    assert!(matches!(err, TlsError::Expired { .. }), "{err}");
    assert!(
        err.to_string().contains("expired at 2021-01-01T00:00:00Z"),
        "{err}"
    );

    let server_only = ca.leaf_custom(|params| {
        params.subject_alt_names = vec![uri(&web.to_string())];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    });
    let err = creds
        .set(server_only.key(), server_only.chain.clone())
        .unwrap_err();
    assert!(matches!(err, TlsError::WrongUsage("clientAuth")), "{err}");

    let err = creds.set(mine.key(), vec![]).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate), "{err}");

    assert_eq!(creds.info(), current);
}

#[test]
fn peer_identity_needs_exactly_one_spiffe_uri_san() {
    let ca = Ca::new("mesh");
    let leaf = |sans| ca.leaf_with(sans, None).chain;

    let web = id("demo", "web");
    let both = leaf(vec![dns("web.demo.svc"), uri(&web.to_string())]);
    assert_eq!(peer_identity(&both).unwrap(), web);

    let two = leaf(vec![
        uri("spiffe://cluster.local/ns/a/sa/a"),
        uri("spiffe://cluster.local/ns/b/sa/b"),
    ]);
    let err = peer_identity(&two).unwrap_err();
    assert!(
        matches!(err, TlsError::SeveralUriSans { ref uris } if uris.len() == 2),
        "{err}"
    );
    assert_eq!(err.failure(), HandshakeFailure::BadIdentity);

    let err = peer_identity(&leaf(vec![dns("web.demo.svc")])).unwrap_err();
    assert!(matches!(err, TlsError::NoUriSan), "{err}");

    let err =
        peer_identity(&leaf(vec![uri("spiffe://cluster.local/ns/a/sa/b/extra")])).unwrap_err();
    assert!(matches!(err, TlsError::NotSpiffe { .. }), "{err}");

    assert!(matches!(peer_identity(&[]), Err(TlsError::NoCertificate)));
    let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
    assert!(matches!(
        peer_identity(&[garbage]),
        Err(TlsError::Malformed(_))
    ));
}

#[test]
fn handshake_failure_codes_are_stable() {
    let codes = [
        (HandshakeFailure::WrongIdentity, "wrong_identity"),
        (HandshakeFailure::BadIdentity, "bad_identity"),
        (HandshakeFailure::UnknownIssuer, "unknown_issuer"),
        (HandshakeFailure::Expired, "expired"),
        (HandshakeFailure::NoCertificate, "no_certificate"),
        (HandshakeFailure::BadCertificate, "bad_certificate"),
        (HandshakeFailure::PeerRefused, "peer_refused"),
        (HandshakeFailure::Protocol, "protocol"),
        (HandshakeFailure::Io, "io"),
    ];
    for (failure, code) in codes {
        assert_eq!(failure.as_str(), code);
    }
    let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
    assert_eq!(HandshakeFailure::from_io(&eof), HandshakeFailure::Io);
    let wrapped: rustls::Error = TlsError::UnknownIssuer.into();
    assert!(matches!(
        wrapped,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    ));
}
