//! The CA's signing material: the issuer (a CA certificate and its key)
//! and the trust-root bundle, read from PEM files as mounted from a Secret
//! and a ConfigMap.
//!
//! - The issuer is usually an intermediate under a root kept offline, but
//!   it may be a root itself: a self-signed CA that is also in the trust
//!   roots, as the chart's Sprig `genCAWithKey` fallback makes. Leaves are
//!   then sent with that root as their chain, which verifies the same.
//! - The key may be PKCS#8, SEC1 or PKCS#1 PEM (see `key.rs`).
//! - [`Issuer::from_pem`] validates before anything is used: the issuer is a
//!   CA, is within its validity window, matches its key, and a probe leaf it
//!   signs verifies against the roots exactly as a client would verify it.
//!   A failure says which of these did not hold.
//! - [`CaStore`] holds the current issuer behind an atomic pointer and
//!   [`CaStore::reload`] re-reads the files: changed content is validated
//!   and swapped in; bad content is reported and the old issuer kept.
//! - [`bootstrap()`] makes a fresh root and issuer (ECDSA P-256) for the
//!   local mesh and as a chart's fallback.

mod bootstrap;
mod key;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rcgen::KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use trellis_core::spiffe::SpiffeId;
use x509_parser::prelude::{FromDer, X509Certificate};

#[cfg(test)]
pub(crate) use bootstrap::bootstrap_at;
pub(crate) use bootstrap::write_file;
pub use bootstrap::{bootstrap, write_bundle, Bundle};

use crate::clock::{from_unix_secs, unix_secs};
use crate::sign::{self, SignPolicy};

/// Why the issuer or the roots were refused.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: not PEM certificates ({reason})")]
    Pem { what: &'static str, reason: String },
    #[error("{what}: no certificate found")]
    Empty { what: &'static str },
    #[error("trust roots: {0}")]
    Roots(String),
    #[error("issuer certificate cannot be parsed: {0}")]
    BadCert(String),
    #[error("issuer certificate is not a CA (basicConstraints cA is not true)")]
    NotCa,
    #[error("issuer certificate's key usage does not allow signing certificates (keyCertSign)")]
    NoCertSign,
    #[error("issuer certificate expired at {not_after} (unix seconds; now {now})")]
    Expired { not_after: i64, now: i64 },
    #[error("issuer certificate is not valid before {not_before} (unix seconds; now {now})")]
    NotYetValid { not_before: i64, now: i64 },
    #[error("issuer key cannot be used: {0} (accepted: {accepted})", accepted = key::ACCEPTED)]
    BadKey(String),
    #[error("issuer key does not belong to the issuer certificate")]
    KeyMismatch,
    #[error("issuer does not chain to the trust roots ({roots} root(s)): {reason}")]
    DoesNotChain { roots: usize, reason: String },
    #[error("generating the CA: {0}")]
    Generate(String),
    #[error("{0}")]
    Invalid(String),
}

/// The issuer and the trust roots it chains to, validated together.
pub struct Issuer {
    signer: rcgen::Issuer<'static, KeyPair>,
    /// The issuer certificate, then any further intermediates up to a root.
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    not_after: i64,
    subject: String,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is never printed.
        f.debug_struct("Issuer")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("chain", &self.chain.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Reads and validates an issuer: `cert_pem` holds the issuer
    /// certificate first, optionally followed by further intermediates (or
    /// just the root, when the issuer is one); `key_pem` its key (PKCS#8,
    /// SEC1 or PKCS#1); `roots_pem` the trust roots.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        roots_pem: &[u8],
        now: SystemTime,
    ) -> Result<Self, CaError> {
        // The proxies' own check of the bundle, so what starts here is
        // what they accept.
        trellis_core::tls::TrustRoots::from_pem(roots_pem)
            .map_err(|e| CaError::Roots(e.to_string()))?;
        let roots = parse_certs("trust roots", roots_pem)?;
        let chain = parse_certs("issuer certificate", cert_pem)?;
        let first = chain.first().ok_or(CaError::Empty {
            what: "issuer certificate",
        })?;
        let (rest, x509) =
            X509Certificate::from_der(first).map_err(|e| CaError::BadCert(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CaError::BadCert(
                "trailing bytes after the certificate".into(),
            ));
        }
        match x509.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            _ => return Err(CaError::NotCa),
        }
        if let Ok(Some(ku)) = x509.key_usage() {
            if !ku.value.key_cert_sign() {
                return Err(CaError::NoCertSign);
            }
        }
        let now_s = unix_secs(now);
        let not_before = x509.validity().not_before.timestamp();
        let not_after = x509.validity().not_after.timestamp();
        if now_s < not_before {
            return Err(CaError::NotYetValid {
                not_before,
                now: now_s,
            });
        }
        if now_s >= not_after {
            return Err(CaError::Expired {
                not_after,
                now: now_s,
            });
        }
        let key = key::key_pair_from_pem(key_pem).map_err(CaError::BadKey)?;
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch);
        }
        // rcgen re-encodes the subject for the leaves' issuer field; it
        // supports one attribute per RDN (and would panic on an empty one).
        if x509.subject().iter().any(|rdn| rdn.iter().count() != 1) {
            return Err(CaError::BadCert(
                "subject has an empty or multi-valued RDN, which this CA cannot copy".into(),
            ));
        }
        let subject = x509.subject().to_string();
        let signer = rcgen::Issuer::from_ca_cert_der(first, key)
            .map_err(|e| CaError::BadCert(e.to_string()))?;
        let issuer = Issuer {
            signer,
            chain,
            roots,
            not_after,
            subject,
        };
        issuer.probe(now)?;
        Ok(issuer)
    }

    /// Signs a short probe leaf and verifies it against the roots as a
    /// client would: this proves the whole chain (names, signatures, CA
    /// constraints, validity) and that the key signs for the certificate.
    fn probe(&self, now: SystemTime) -> Result<(), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        let id = SpiffeId::new("probe.invalid", "probe", "probe")
            .map_err(|e| CaError::Generate(e.to_string()))?;
        let policy = SignPolicy {
            lifetime: Duration::from_secs(60),
            skew: Duration::ZERO,
        };
        let leaf =
            sign::sign_leaf(self, &key, &id, &policy, now).map_err(|e| CaError::DoesNotChain {
                roots: self.roots.len(),
                reason: format!("signing a probe certificate failed: {e}"),
            })?;
        verify_chain(&leaf.leaf_der, &self.chain, &self.roots, now).map_err(|reason| {
            CaError::DoesNotChain {
                roots: self.roots.len(),
                reason,
            }
        })
    }

    pub(crate) fn signer(&self) -> &rcgen::Issuer<'static, KeyPair> {
        &self.signer
    }

    /// The issuer certificate and any further intermediates, as sent after
    /// a leaf (the issuer certificate is the root when the issuer is one).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The issuer certificate's notAfter, in Unix seconds.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after
    }

    pub fn not_after(&self) -> SystemTime {
        from_unix_secs(self.not_after)
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// Verifies `leaf` with `intermediates` up to one of `roots`, for both TLS
/// client and server use, at `now`. The reason on failure is for people.
pub fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<(), String> {
    let anchors = roots
        .iter()
        .map(webpki::anchor_from_trusted_cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("unusable trust root: {e:?}"))?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("unusable leaf: {e:?}"))?;
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let time = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(algs, &anchors, intermediates, time, usage, None, None)
            .map_err(|e| match e {
                webpki::Error::UnknownIssuer => "signed by none of the trust roots (UnknownIssuer)".to_string(),
                webpki::Error::InvalidSignatureForPublicKey => {
                    "signed by none of the trust roots: a certificate of the right name has another key \
                     (InvalidSignatureForPublicKey)"
                        .to_string()
                }
                other => format!("{other:?}"),
            })?;
    }
    Ok(())
}

/// All certificates in a PEM text, in order.
pub(crate) fn parse_certs(
    what: &'static str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CaError::Empty { what });
    }
    Ok(certs)
}

/// Where the issuer and the roots are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub roots: PathBuf,
}

impl IssuerFiles {
    /// The three files' contents, and a fingerprint of them together.
    fn read(&self) -> Result<([Vec<u8>; 3], [u8; 32]), CaError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| CaError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let contents = [read(&self.cert)?, read(&self.key)?, read(&self.roots)?];
        let mut h = Sha256::new();
        for c in &contents {
            h.update((c.len() as u64).to_be_bytes());
            h.update(c);
        }
        Ok((contents, h.finalize().into()))
    }
}

/// The current issuer, swapped atomically when its files change.
pub struct CaStore {
    files: IssuerFiles,
    current: ArcSwap<Issuer>,
    /// Fingerprint of the last content looked at, good or bad, so a bad
    /// file is reported once rather than at every poll.
    seen: Mutex<[u8; 32]>,
    changes: watch::Sender<u64>,
}

impl CaStore {
    /// Reads and validates the files; refuses (with the reason) when the
    /// issuer cannot be used.
    pub fn load(files: IssuerFiles, now: SystemTime) -> Result<Self, CaError> {
        let ([cert, key, roots], fingerprint) = files.read()?;
        let issuer = Issuer::from_pem(&cert, &key, &roots, now)?;
        Ok(Self {
            files,
            current: ArcSwap::from_pointee(issuer),
            seen: Mutex::new(fingerprint),
            changes: watch::Sender::new(0),
        })
    }

    pub fn current(&self) -> Arc<Issuer> {
        self.current.load_full()
    }

    /// Counts issuer changes; a receiver wakes on each.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Re-reads the files. `Ok(true)`: new content was valid and is now
    /// current. `Ok(false)`: nothing changed (or a bad change was already
    /// reported). `Err`: the files cannot be read, or their new content is
    /// refused; the old issuer stays current either way.
    pub fn reload(&self, now: SystemTime) -> Result<bool, CaError> {
        let ([cert, key, roots], fingerprint) = self.files.read()?;
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == fingerprint {
                return Ok(false);
            }
            *seen = fingerprint;
        }
        let issuer = Issuer::from_pem(&cert, &key, &roots, now)?;
        self.current.store(Arc::new(issuer));
        self.changes.send_modify(|n| *n += 1);
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
