//! The issuer's private key: read from the PEM forms CAs come in, and
//! handed to rcgen (which signs with ring) as the PKCS#8 it requires.
//!
//! - `PRIVATE KEY` (PKCS#8; [`super::bootstrap()`], `openssl genpkey`,
//!   Sprig `genPrivateKey "ed25519"`): used as is, ECDSA P-256/P-384, RSA
//!   or Ed25519.
//! - `EC PRIVATE KEY` (SEC1; Sprig `genPrivateKey "ecdsa"`, `openssl
//!   ecparam -genkey`, Go's `x509.MarshalECPrivateKey`): wrapped in PKCS#8,
//!   P-256 or P-384 with a named curve.
//! - `RSA PRIVATE KEY` (PKCS#1; Sprig `genPrivateKey "rsa"` and `genCA`,
//!   `openssl genrsa -traditional`): wrapped in PKCS#8, 2048 to 4096 bits
//!   (what ring signs with).
//!
//! The wrapping only re-labels the key (RFC 5208 `PrivateKeyInfo` around
//! the unchanged SEC1 or PKCS#1 structure); ring then parses and checks it
//! as any PKCS#8 key. Encrypted keys, DSA keys and other curves are refused
//! with a reason that lists what works.

use rcgen::KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use x509_parser::asn1_rs::{Any, Class, FromDer, Oid, Sequence, Tag};

/// The formats [`key_pair_from_pem`] reads, for error messages.
pub(crate) const ACCEPTED: &str = "PKCS#8 \"PRIVATE KEY\" (ECDSA P-256/P-384, RSA, Ed25519), \
     SEC1 \"EC PRIVATE KEY\" (P-256, P-384) or PKCS#1 \"RSA PRIVATE KEY\", unencrypted";

// DER contents (no tag, no length) of the OIDs involved.
/// id-ecPublicKey, 1.2.840.10045.2.1 (RFC 5480).
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// secp256r1 (P-256), 1.2.840.10045.3.1.7.
const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp384r1 (P-384), 1.3.132.0.34.
const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// rsaEncryption, 1.2.840.113549.1.1.1 (RFC 8017).
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// The first private key in `pem`, in any of the [`ACCEPTED`] forms. The
/// error is a reason for people and names the input's form.
pub(crate) fn key_pair_from_pem(pem: &[u8]) -> Result<KeyPair, String> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err("the key is encrypted; store it unencrypted".into());
    }
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => match labels(&text).as_slice() {
            [] => "no PEM private key found".to_string(),
            found => format!("no private key of a known form; found {}", found.join(", ")),
        },
        other => format!("not PEM: {other}"),
    })?;
    // What the key is, for the error, and what may be wrong with it.
    let (form, hint, pkcs8) = match &key {
        PrivateKeyDer::Pkcs8(k) => ("PKCS#8 key", "", k.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Sec1(k) => {
            let curve = match sec1_curve(k.secret_sec1_der()) {
                Some(oid) if oid == P256 || oid == P384 => oid,
                Some(oid) => {
                    return Err(format!(
                        "SEC1 EC key on curve {}, not P-256 or P-384",
                        oid_string(&oid)
                    ))
                }
                None => {
                    return Err("SEC1 EC key without a named curve (explicit or absent \
                         parameters); re-encode it with a named curve"
                        .into())
                }
            };
            let alg = [der(0x06, EC_PUBLIC_KEY), der(0x06, &curve)].concat();
            let hint = " (is its public key missing or not its own?)";
            ("SEC1 EC key", hint, pkcs8(&alg, k.secret_sec1_der()))
        }
        PrivateKeyDer::Pkcs1(k) => {
            let alg = [der(0x06, RSA_ENCRYPTION), der(0x05, &[])].concat();
            let hint = " (RSA keys of 2048 to 4096 bits work)";
            ("PKCS#1 RSA key", hint, pkcs8(&alg, k.secret_pkcs1_der()))
        }
        // `PrivateKeyDer` is non-exhaustive.
        _ => return Err("a private key of an unknown form".into()),
    };
    KeyPair::try_from(pkcs8).map_err(|e| format!("{form} cannot be used for signing: {e}{hint}"))
}

/// The named curve in a SEC1 `ECPrivateKey` (RFC 5915: `SEQUENCE { version,
/// privateKey, [0] parameters OPTIONAL, [1] publicKey OPTIONAL }`), as OID
/// content bytes; `None` if it has none or does not parse.
fn sec1_curve(sec1: &[u8]) -> Option<Vec<u8>> {
    let (_, seq) = Sequence::from_der(sec1).ok()?;
    let mut rest: &[u8] = &seq.content;
    while !rest.is_empty() {
        let (next, item) = Any::from_der(rest).ok()?;
        rest = next;
        if item.class() == Class::ContextSpecific && item.tag() == Tag(0) {
            let (_, oid) = Oid::from_der(item.data).ok()?;
            return Some(oid.as_bytes().to_vec());
        }
    }
    None
}

fn oid_string(content: &[u8]) -> String {
    Oid::new(content.into()).to_id_string()
}

/// RFC 5208 `PrivateKeyInfo { version 0, algorithm, privateKey }`, where
/// `alg` is the AlgorithmIdentifier's contents.
fn pkcs8(alg: &[u8], key: &[u8]) -> Vec<u8> {
    let body = [der(0x02, &[0]), der(0x30, alg), der(0x04, key)].concat();
    der(0x30, &body)
}

/// One DER element: `tag`, the definite length, `body`.
fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match u8::try_from(body.len()) {
        Ok(n) if n < 0x80 => out.push(n),
        _ => {
            let len = body.len().to_be_bytes();
            let skip = len.iter().take_while(|b| **b == 0).count();
            let n = len.len() - skip;
            // At most size_of::<usize>() (8) length bytes: fits the 7 bits.
            out.push(0x80 | n as u8);
            out.extend_from_slice(&len[skip..]);
        }
    }
    out.extend_from_slice(body);
    out
}

/// The BEGIN labels in a PEM text, quoted, for "found …" messages.
fn labels(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .map(|l| format!("\"{l}\""))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_short_and_long() {
        assert_eq!(der(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        assert_eq!(der(0x04, &[0; 127])[..2], [0x04, 127]);
        assert_eq!(der(0x04, &[0; 128])[..3], [0x04, 0x81, 128]);
        assert_eq!(der(0x04, &[0; 256])[..4], [0x04, 0x82, 1, 0]);
        assert_eq!(der(0x04, &[0; 256]).len(), 260);
    }

    #[test]
    fn a_pkcs8_key_round_trips() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let back = key_pair_from_pem(key.serialize_pem().as_bytes()).unwrap();
        assert_eq!(back.public_key_raw(), key.public_key_raw());
        assert_eq!(back.algorithm(), &rcgen::PKCS_ECDSA_P384_SHA384);
    }

    #[test]
    fn refusals_name_the_problem_and_the_accepted_forms() {
        let cases = [
            ("", "no PEM private key found"),
            ("not a key", "no PEM private key found"),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
                "encrypted",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                 DEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
                "encrypted",
            ),
            (
                "-----BEGIN DSA PRIVATE KEY-----\nAAAA\n-----END DSA PRIVATE KEY-----\n",
                "found \"DSA PRIVATE KEY\"",
            ),
            (
                "-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n",
                "without a named curve",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----\n",
                "PKCS#1 RSA key cannot be used",
            ),
        ];
        for (pem, reason) in cases {
            let e = key_pair_from_pem(pem.as_bytes()).err().unwrap();
            assert!(e.contains(reason), "{pem:?}: {e}");
        }
    }

    #[test]
    fn an_rsa_key_ring_cannot_sign_with_says_which_sizes_work() {
        // openssl genrsa -traditional 1024
        let small = "-----BEGIN RSA PRIVATE KEY-----\n\
            MIICWwIBAAKBgQDMH31hvJbhPB/MbIFgmDL9QSAO+ZUsLPi7aTDOE4mG+9SQlw/I\n\
            OzsFa2mrMESw8+uRio/btX2nxjefWj7oMZgoLwKK5kvqApXvQUaTPQ+3Njqv533B\n\
            z7frRX7D2CKnn5eev+AbQskSzwRQPAd+XcFknWmA802SziiS3qnG7GrvfwIDAQAB\n\
            AoGACfqwIosZxUEvPMtBN/u44nDApHrHNDWuo1rtK+YAnzzIk5kPCHb817L8o4Xk\n\
            ldIW/jKL/e3NitpB9eRvluJ10crAi1w+2xMq/wcG05tHzkMwctM8wORMbk1OMe6g\n\
            /aMrXmSAEWMVDZNs3YiUMEmsl7ZdzPMIzpS2BdNgWVGYlsECQQDlGN4SCUOYgy13\n\
            HveUTn7ZqWbYF72yy2nbHmuQmPL634Vm7y8VdhPInYQ66vUGM+m+ZaRba23VNRuB\n\
            i6gkXl9JAkEA5BfZMMR2UAUoihYjpAH5zNmseyM1kScar17OyQ/qpKOFEDH4Y8fq\n\
            2hoEI32gNFOFgEreH+SSeWHYaRa2wYEwhwJAbbLDmxVOhbfCTHjKifwwJ19DPJPZ\n\
            pMRcEqz1So7CQjhHc2tyOy+H95bdGy0oWGkBMscOtSuystW0LwrFX2zE6QJAST6T\n\
            QwLDj1yosPb9COyNf8eiiIQ87lilTA1gz9XpnmbYEuRJBBmtg8346ECuEj+Dzje8\n\
            bndixdGywcRGeYr3vwJAWvVAPFWbaEt98hkqUhzAf4iiIOBW+kkzzQv3QhYzuNz8\n\
            IU1xEZJTiC1OcYnngPoGe464aHnJMtL85qvSzqXjag==\n\
            -----END RSA PRIVATE KEY-----\n";
        let e = key_pair_from_pem(small.as_bytes()).err().unwrap();
        assert!(
            e.starts_with("PKCS#1 RSA key cannot be used") && e.contains("2048 to 4096 bits"),
            "{e}"
        );
    }

    #[test]
    fn a_sec1_key_on_another_curve_is_named() {
        // openssl ecparam -name secp256k1 -genkey -noout
        let k1 = "-----BEGIN EC PRIVATE KEY-----\n\
            MHQCAQEEICUflIi/4RQmCybB03cT8WbNXcc9bqORfjExDBa5jQp8oAcGBSuBBAAK\n\
            oUQDQgAEkKfNPYkQu+CybQcLxM9ew6GIx9C+/u1ScEBOzEzjKw4LgMb2ihYQpne2\n\
            n3cZC0mx2j3PLPubIoWIIRY6Ack93w==\n\
            -----END EC PRIVATE KEY-----\n";
        let e = key_pair_from_pem(k1.as_bytes()).err().unwrap();
        assert!(e.contains("curve 1.3.132.0.10, not P-256"), "{e}");
    }
}
