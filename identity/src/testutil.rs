//! Fixtures for unit tests: CSRs, a CA (temporary directories come from
//! `trellis_core::test_support`).

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, SanType, SignatureAlgorithm,
};
use trellis_core::spiffe::SpiffeId;
pub(crate) use trellis_core::test_support::TempDir;

use crate::ca::{bootstrap, Bundle, Issuer};

pub(crate) fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).unwrap()
}

pub(crate) const DAY: Duration = Duration::from_secs(24 * 3600);

/// A fresh CA for cluster.local and its validated issuer.
pub(crate) fn ca() -> (Bundle, Issuer) {
    let b = bootstrap("cluster.local", 3650 * DAY, 365 * DAY).unwrap();
    let i = issuer_of(&b);
    (b, i)
}

pub(crate) fn issuer_of(b: &Bundle) -> Issuer {
    Issuer::from_pem(
        b.issuer_cert_pem.as_bytes(),
        b.issuer_key_pem.as_bytes(),
        b.roots_pem.as_bytes(),
        SystemTime::now(),
    )
    .unwrap()
}

/// A CSR (DER) for a new key of `alg` with these SANs and CA bit, and the
/// subject CN `aaaaaaaa` (tests tamper with it).
pub(crate) fn csr_with(
    alg: &'static SignatureAlgorithm,
    sans: Vec<SanType>,
    ca: bool,
) -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "aaaaaaaa");
    p.distinguished_name = dn;
    p.subject_alt_names = sans;
    if ca {
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let der = p.serialize_request(&key).unwrap().der().to_vec();
    (key, der)
}

/// A P-256 CSR without SANs.
pub(crate) fn csr() -> (KeyPair, Vec<u8>) {
    csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, vec![], false)
}

pub(crate) fn uri(s: &str) -> SanType {
    SanType::URI(s.to_string().try_into().unwrap())
}

/// Runs openssl with `args`; the test fails if openssl is missing.
pub(crate) fn openssl(args: &[&str]) -> std::process::Output {
    std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed (scripts/install-deps.sh)")
}
