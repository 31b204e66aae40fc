//! CSR checks: good requests, each refusal, and a bounded mutation sweep.

use super::*;
use crate::testutil::{csr, csr_with, id, openssl, uri, TempDir};
use rcgen::{SanType, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};

fn granted() -> SpiffeId {
    id("demo", "web")
}

#[test]
fn good_csr_without_san_gives_its_key() {
    let (key, der) = csr();
    let got = check(&der, &granted()).unwrap();
    assert_eq!(got.der_bytes(), key.public_key_raw());
}

#[test]
fn good_csr_with_exactly_the_granted_uri() {
    let (_, der) = csr_with(
        &PKCS_ECDSA_P256_SHA256,
        vec![uri("spiffe://cluster.local/ns/demo/sa/web")],
        false,
    );
    assert!(check(&der, &granted()).is_ok());
}

#[test]
fn wrong_curves_and_algorithms_are_refused() {
    for alg in [&PKCS_ECDSA_P384_SHA384, &PKCS_ED25519] {
        let (_, der) = csr_with(alg, vec![], false);
        let e = check(&der, &granted()).unwrap_err();
        assert_eq!(e.reason(), "csr_unsupported_key", "{e}");
    }
    // RSA: rcgen with ring cannot make RSA keys, openssl can.
    let dir = TempDir::new("identity-rsa-csr");
    let out = dir.path().join("rsa.csr");
    let o = openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "/dev/null",
        "-subj",
        "/CN=rsa",
        "-outform",
        "DER",
        "-out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let der = std::fs::read(&out).unwrap();
    let e = check(&der, &granted()).unwrap_err();
    assert!(
        matches!(&e, CsrError::UnsupportedKey(m) if m.contains("1.2.840.113549.1.1.1")),
        "{e}"
    );
}

#[test]
fn tampered_request_fails_its_signature() {
    let (_, mut der) = csr();
    let at = der.windows(8).position(|w| w == b"aaaaaaaa").unwrap();
    der[at] = b'b';
    assert_eq!(check(&der, &granted()), Err(CsrError::BadSignature));
    // A flipped signature byte: the last byte is inside the ECDSA `s`.
    let (_, mut der) = csr();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    assert_eq!(check(&der, &granted()), Err(CsrError::BadSignature));
}

#[test]
fn extra_or_other_sans_are_refused() {
    let mine = "spiffe://cluster.local/ns/demo/sa/web";
    let cases: Vec<Vec<SanType>> = vec![
        vec![
            uri(mine),
            SanType::DnsName("web.demo.svc".try_into().unwrap()),
        ],
        vec![uri("spiffe://cluster.local/ns/kube-system/sa/admin")],
        vec![uri("spiffe://other.domain/ns/demo/sa/web")],
        vec![uri(mine), uri(mine)],
        vec![SanType::DnsName("web".try_into().unwrap())],
        vec![SanType::IpAddress("10.0.0.1".parse().unwrap())],
    ];
    for sans in cases {
        let (_, der) = csr_with(&PKCS_ECDSA_P256_SHA256, sans.clone(), false);
        let e = check(&der, &granted()).unwrap_err();
        assert_eq!(e.reason(), "csr_san_mismatch", "{sans:?}: {e}");
        assert!(e.to_string().contains(mine), "{e}");
    }
}

#[test]
fn ca_requests_are_refused() {
    let (_, der) = csr_with(&PKCS_ECDSA_P256_SHA256, vec![], true);
    assert_eq!(check(&der, &granted()), Err(CsrError::CaRequested));
}

#[test]
fn framing_errors() {
    assert_eq!(check(&[], &granted()), Err(CsrError::Empty));
    assert_eq!(
        check(&vec![0x30; MAX_CSR_BYTES + 1], &granted()),
        Err(CsrError::TooLarge(MAX_CSR_BYTES + 1))
    );
    let (_, mut der) = csr();
    der.push(0);
    assert_eq!(check(&der, &granted()).unwrap_err().reason(), "bad_csr");
    assert_eq!(
        check(b"-----BEGIN CERTIFICATE REQUEST-----", &granted())
            .unwrap_err()
            .reason(),
        "bad_csr"
    );
}

#[test]
fn san_descriptions_are_escaped_and_bounded() {
    let long = format!("spiffe://x/{}\u{7}", "a".repeat(500));
    let d = describe(&GeneralName::URI(&long));
    assert!(
        d.len() < 140 && d.starts_with("URI:") && !d.contains('\u{7}'),
        "{d}"
    );
}

/// A deterministic stand-in for the fuzz target: random bytes and
/// mutations of a valid CSR (flips, truncations, insertions) never panic,
/// and nothing mutated is accepted with a different key.
#[test]
fn check_never_panics_on_mutated_input() {
    let (key, good) = csr_with(
        &PKCS_ECDSA_P256_SHA256,
        vec![uri("spiffe://cluster.local/ns/demo/sa/web")],
        false,
    );
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let g = granted();
    for i in 0..20_000 {
        let mut input = good.clone();
        match i % 4 {
            0 => {
                let len = (next() % 600) as usize;
                input = (0..len).map(|_| next() as u8).collect();
            }
            1 => {
                for _ in 0..(1 + next() % 4) {
                    let at = (next() as usize) % input.len();
                    input[at] ^= 1 << (next() % 8);
                }
            }
            2 => input.truncate((next() as usize) % input.len()),
            _ => {
                let at = (next() as usize) % input.len();
                input.insert(at, next() as u8);
            }
        }
        if let Ok(k) = check(&input, &g) {
            assert_eq!(
                k.der_bytes(),
                key.public_key_raw(),
                "mutation {i} accepted with another key"
            );
        }
    }
}
