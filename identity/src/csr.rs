//! Checks a workload's certification request (PKCS#10, DER) before anything
//! is signed. Pure: bytes in, the public key to certify or a typed refusal
//! out. These bytes come from the network, so parsing never panics and the
//! checks are strict:
//!
//! 1. DER PKCS#10 v1 with nothing after it, at most [`MAX_CSR_BYTES`];
//! 2. the key is ECDSA P-256 (an uncompressed point);
//! 3. the self-signature (ECDSA with SHA-256 or SHA-384) verifies;
//! 4. requested extensions: no SAN, or exactly one — the URI SAN that will be
//!    granted (which comes from the token, never from here); no CA bit.
//!
//! Nothing else in the request (subject, other extensions) is used.

use rcgen::{PublicKeyData, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::SignatureVerificationAlgorithm;
use trellis_core::spiffe::SpiffeId;
use x509_parser::certification_request::{X509CertificationRequest, X509CertificationRequestInfo};
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension, X509Extension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS9_EXTENSION_REQUEST,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_X509_EXT_BASIC_CONSTRAINTS,
    OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;

/// The largest CSR accepted. A P-256 CSR with one URI SAN is ~300 bytes.
pub const MAX_CSR_BYTES: usize = 8 * 1024;

/// Why a CSR was refused. [`CsrError::reason`] is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is empty")]
    Empty,
    #[error("the CSR is {0} bytes; at most {MAX_CSR_BYTES} are accepted")]
    TooLarge(usize),
    #[error("the CSR is not a DER PKCS#10 request: {0}")]
    Malformed(String),
    #[error("the CSR's key is not ECDSA P-256: {0}")]
    UnsupportedKey(String),
    #[error("the CSR is signed with {0}, not ECDSA with SHA-256 or SHA-384")]
    UnsupportedSignatureAlgorithm(String),
    #[error("the CSR's self-signature does not verify")]
    BadSignature,
    #[error("the CSR asks for SAN {asked}; the only SAN that can be granted is {granted}")]
    SanMismatch { asked: String, granted: String },
    #[error("the CSR asks for a CA certificate")]
    CaRequested,
}

impl CsrError {
    /// A short, stable reason code (metric label, log field).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty | Self::TooLarge(_) | Self::Malformed(_) => "bad_csr",
            Self::UnsupportedKey(_) => "csr_unsupported_key",
            Self::UnsupportedSignatureAlgorithm(_) => "csr_unsupported_algorithm",
            Self::BadSignature => "csr_bad_signature",
            Self::SanMismatch { .. } => "csr_san_mismatch",
            Self::CaRequested => "csr_ca_requested",
        }
    }
}

/// A checked ECDSA P-256 public key (the uncompressed point), ready to be
/// certified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrPublicKey {
    point: Vec<u8>,
}

impl CsrPublicKey {
    /// The uncompressed point (65 bytes, `04 || x || y`).
    pub fn point(&self) -> &[u8] {
        &self.point
    }
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// Checks `der` as a request for `granted` and returns its public key.
pub fn check(der: &[u8], granted: &SpiffeId) -> Result<CsrPublicKey, CsrError> {
    if der.is_empty() {
        return Err(CsrError::Empty);
    }
    if der.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge(der.len()));
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(format!(
            "{} bytes after the request",
            rest.len()
        )));
    }
    let info = &csr.certification_request_info;
    if info.version.0 != 0 {
        return Err(CsrError::Malformed(format!(
            "version {} (only v1 exists)",
            info.version.0
        )));
    }
    let point = p256_point(info)?;
    let alg: &dyn SignatureVerificationAlgorithm = match &csr.signature_algorithm.algorithm {
        oid if *oid == OID_SIG_ECDSA_WITH_SHA256 => webpki::ring::ECDSA_P256_SHA256,
        oid if *oid == OID_SIG_ECDSA_WITH_SHA384 => webpki::ring::ECDSA_P256_SHA384,
        other => {
            return Err(CsrError::UnsupportedSignatureAlgorithm(
                other.to_id_string(),
            ))
        }
    };
    alg.verify_signature(point, info.raw, &csr.signature_value.data)
        .map_err(|_| CsrError::BadSignature)?;
    for attr in info.iter_attributes() {
        if attr.oid != OID_PKCS9_EXTENSION_REQUEST {
            continue; // e.g. a challenge password: not used
        }
        match attr.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(req) => {
                check_extensions(&req.extensions, granted)?
            }
            _ => return Err(CsrError::Malformed("unreadable extension request".into())),
        }
    }
    // More than one extension request could hide a second SAN list.
    let requests = info
        .iter_attributes()
        .filter(|a| a.oid == OID_PKCS9_EXTENSION_REQUEST)
        .count();
    if requests > 1 {
        return Err(CsrError::Malformed(
            "more than one extension request".into(),
        ));
    }
    Ok(CsrPublicKey {
        point: point.to_vec(),
    })
}

/// The request's key, if it is an uncompressed ECDSA P-256 point.
fn p256_point<'a>(info: &'a X509CertificationRequestInfo<'_>) -> Result<&'a [u8], CsrError> {
    let spki = &info.subject_pki;
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(CsrError::UnsupportedKey(format!(
            "algorithm {}",
            spki.algorithm.algorithm.to_id_string()
        )));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    match curve {
        Some(c) if c == OID_EC_P256 => {}
        Some(c) => {
            return Err(CsrError::UnsupportedKey(format!(
                "curve {}",
                c.to_id_string()
            )))
        }
        None => return Err(CsrError::UnsupportedKey("no named curve".into())),
    }
    let point: &'a [u8] = &spki.subject_public_key.data;
    if point.len() != 65 || point.first() != Some(&0x04) {
        return Err(CsrError::UnsupportedKey(
            "not an uncompressed P-256 point".into(),
        ));
    }
    Ok(point)
}

/// Requested extensions: at most one SAN naming exactly `granted`, no CA.
fn check_extensions(extensions: &[X509Extension<'_>], granted: &SpiffeId) -> Result<(), CsrError> {
    let granted_uri = granted.to_string();
    let mut seen = Vec::with_capacity(extensions.len());
    for ext in extensions {
        if seen.contains(&&ext.oid) {
            return Err(CsrError::Malformed(format!(
                "extension {} requested twice",
                ext.oid.to_id_string()
            )));
        }
        seen.push(&ext.oid);
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                let names = &san.general_names;
                let only_granted =
                    matches!(names.as_slice(), [GeneralName::URI(u)] if *u == granted_uri);
                if !only_granted {
                    let asked = names.iter().map(describe).collect::<Vec<_>>().join(", ");
                    return Err(CsrError::SanMismatch {
                        asked: if asked.is_empty() {
                            "(an empty list)".into()
                        } else {
                            asked
                        },
                        granted: granted_uri,
                    });
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(CsrError::CaRequested),
            ParsedExtension::ParseError { error }
                if ext.oid == OID_X509_EXT_SUBJECT_ALT_NAME
                    || ext.oid == OID_X509_EXT_BASIC_CONSTRAINTS =>
            {
                return Err(CsrError::Malformed(format!(
                    "extension {}: {error}",
                    ext.oid.to_id_string()
                )));
            }
            _ => {} // not copied into the certificate, so harmless
        }
    }
    Ok(())
}

/// A SAN for an error message: quoted (control characters escaped) and
/// bounded, since it comes from the caller.
fn describe(name: &GeneralName<'_>) -> String {
    let (kind, value) = match name {
        GeneralName::URI(u) => ("URI", format!("{u:?}")),
        GeneralName::DNSName(d) => ("DNS", format!("{d:?}")),
        GeneralName::RFC822Name(e) => ("email", format!("{e:?}")),
        GeneralName::IPAddress(ip) => ("IP", format!("{ip:02x?}")),
        _ => ("other", String::new()),
    };
    let value: String = value.chars().take(120).collect();
    format!("{kind}:{value}")
}

#[cfg(test)]
mod tests;
