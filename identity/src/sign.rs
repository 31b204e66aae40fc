//! Signs workload leaf certificates. Pure: no IO; the time is an argument.
//!
//! A leaf carries exactly one URI SAN, the SPIFFE ID it is given (which the
//! service derives from the verified token, never from the CSR), an empty
//! subject (so the SAN is critical, RFC 5280 §4.2.1.6), key usage
//! digitalSignature, extended key usage serverAuth + clientAuth, CA:false
//! and a random serial. It is valid from `now − skew` to `now + lifetime`,
//! never past the issuer's own notAfter.
//!
//! [`leaf_lifetime`] shortens the lifetime to what is left of the token the
//! request was verified with: a certificate never outlives the credential
//! it was issued for.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    PublicKeyData, SanType,
};
use rustls_pki_types::CertificateDer;
use trellis_core::spiffe::SpiffeId;

use crate::ca::Issuer;
use crate::clock::{from_unix_secs, random_serial, set_validity, unix_secs};

/// How long leaves live and how far they are back-dated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignPolicy {
    /// Default 24 h.
    pub lifetime: Duration,
    /// notBefore back-dating for clock skew; default 1 min.
    pub skew: Duration,
}

impl Default for SignPolicy {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(24 * 3600),
            skew: Duration::from_secs(60),
        }
    }
}

/// Shortest certificate issued for a token about to expire; a token with
/// less life left is refused (the proxy re-reads its token file on every
/// attempt, and the kubelet rotates projected tokens at 80 % of their life,
/// so a live proxy never meets this). A configured lifetime below this
/// floor is the floor instead.
pub const MIN_TOKEN_BOUND_LIFETIME: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the token expires at {exp} (unix seconds; now {now}), in less than the shortest certificate lifetime ({min}s); send a fresher token"
)]
pub struct TokenExpiresSoon {
    pub exp: i64,
    pub now: i64,
    pub min: u64,
}

/// The lifetime of a leaf issued at `now` for a token expiring at
/// `token_exp` (unix seconds; `None`: the token states no expiry): the
/// policy's lifetime, cut to the token's remaining life when that is
/// shorter. Refuses when the token has less than
/// `min(MIN_TOKEN_BOUND_LIFETIME, policy.lifetime)` left.
pub fn leaf_lifetime(
    policy: &SignPolicy,
    token_exp: Option<i64>,
    now: SystemTime,
) -> Result<Duration, TokenExpiresSoon> {
    let Some(exp) = token_exp else {
        return Ok(policy.lifetime);
    };
    let now_secs = unix_secs(now);
    // Whole seconds from the start of the current second: `now + left`,
    // truncated as the certificate records it, is at most `exp`.
    let left = Duration::from_secs(u64::try_from(exp.saturating_sub(now_secs)).unwrap_or(0));
    let floor = MIN_TOKEN_BOUND_LIFETIME.min(policy.lifetime);
    if left < floor {
        return Err(TokenExpiresSoon {
            exp,
            now: now_secs,
            min: floor.as_secs(),
        });
    }
    Ok(policy.lifetime.min(left))
}

/// An issued leaf and the chain to send with it.
#[derive(Debug, Clone)]
pub struct SignedLeaf {
    pub leaf_der: CertificateDer<'static>,
    /// The issuer certificate and any further intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
    /// Lower-case hex, for logs.
    pub serial: String,
}

impl SignedLeaf {
    pub fn not_after_unix(&self) -> i64 {
        unix_secs(self.not_after)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the issuer expired at {0} (unix seconds)")]
    IssuerExpired(i64),
    #[error("the SPIFFE ID {0} cannot be written as a URI SAN")]
    BadIdentity(String),
    #[error(transparent)]
    Random(#[from] crate::clock::RandomError),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Signs a leaf for `key` naming `id`, as of `now`.
pub fn sign_leaf(
    issuer: &Issuer,
    key: &impl PublicKeyData,
    id: &SpiffeId,
    policy: &SignPolicy,
    now: SystemTime,
) -> Result<SignedLeaf, SignError> {
    if unix_secs(now) >= issuer.not_after_unix() {
        return Err(SignError::IssuerExpired(issuer.not_after_unix()));
    }
    let uri = id.to_string();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        uri.clone()
            .try_into()
            .map_err(|_| SignError::BadIdentity(uri))?,
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let serial = random_serial()?;
    let serial_hex = crate::clock::hex(serial.as_ref());
    params.serial_number = Some(serial);
    let not_before = now.checked_sub(policy.skew).unwrap_or(now);
    // Whole seconds, as the certificate records them.
    let not_after = from_unix_secs(unix_secs(
        now.checked_add(policy.lifetime)
            .unwrap_or(issuer.not_after())
            .min(issuer.not_after()),
    ));
    set_validity(&mut params, not_before, not_after);
    let cert = params
        .signed_by(key, issuer.signer())
        .map_err(|e| SignError::Sign(e.to_string()))?;
    Ok(SignedLeaf {
        leaf_der: cert.der().clone(),
        chain: issuer.chain().to_vec(),
        not_after,
        serial: serial_hex,
    })
}

#[cfg(test)]
mod tests;
