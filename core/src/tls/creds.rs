//! This workload's identity and its current certificate, swapped on renewal.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use sha2::{Digest, Sha256};

use super::roots::hex;
use super::verify::{verify_chain, Leaf, Usage};
use super::{provider, TlsError, TrustRoots};
use crate::spiffe::SpiffeId;

/// Facts about the current certificate, for `/identity`, metrics and the
/// renewal schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The serial number, lower-case hex.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// `sha256:<hex>` of the certificate that signed it (the first
    /// intermediate of the chain; empty without one): tells which issuer a
    /// workload's certificate comes from, e.g. during a CA rotation.
    pub issuer_fingerprint: String,
    /// `sha256:<hex>` of the certificate's public key (SubjectPublicKeyInfo,
    /// DER): changes when a renewal brings a new key.
    pub key_fingerprint: String,
}

/// This workload's SPIFFE ID and its current certificate and key.
///
/// Starts without a certificate ([`Credentials::is_ready`] is false); the
/// configurations of this module present whatever certificate is current at
/// each handshake, so [`Credentials::set`] on renewal applies to the next
/// handshake and leaves established connections alone.
pub struct Credentials {
    id: SpiffeId,
    roots: Arc<TrustRoots>,
    current: ArcSwapOption<Current>,
}

struct Current {
    key: Arc<CertifiedKey>,
    info: CertInfo,
}

impl Credentials {
    pub fn new(id: SpiffeId, roots: Arc<TrustRoots>) -> Self {
        Self {
            id,
            roots,
            current: ArcSwapOption::empty(),
        }
    }

    /// Makes `chain` (leaf first, then intermediates) and `key_der` the
    /// current certificate, after checking that the leaf's one URI SAN is
    /// this workload's ID, that the key is the leaf's, and that the chain
    /// leads to a current root now, for both server and client use. On error
    /// the current certificate stays.
    pub fn set(
        &self,
        key_der: PrivateKeyDer<'static>,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<CertInfo, TlsError> {
        let (leaf_der, intermediates) = chain.split_first().ok_or(TlsError::NoCertificate)?;
        let leaf = Leaf::parse(leaf_der)?;
        if leaf.id != self.id {
            return Err(TlsError::WrongIdentity {
                expected: vec![self.id.clone()],
                got: leaf.id,
            });
        }
        let now = UnixTime::now();
        verify_chain(&self.roots, leaf_der, intermediates, now, Usage::Server)?;
        verify_chain(&self.roots, leaf_der, intermediates, now, Usage::Client)?;

        let issuer_fingerprint = intermediates
            .first()
            .map(|c| {
                let hash: [u8; 32] = Sha256::digest(c.as_ref()).into();
                format!("sha256:{}", hex(&hash))
            })
            .unwrap_or_default();
        let signing_key = provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let key = CertifiedKey::new(chain, signing_key);
        match key.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::KeyMismatch)
            }
            Err(e) => {
                return Err(TlsError::Key(format!(
                    "cannot compare the key with the certificate: {e}"
                )))
            }
        }

        let info = CertInfo {
            serial: leaf.serial,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            issuer_fingerprint,
            key_fingerprint: leaf.key_fingerprint,
        };
        self.current.store(Some(Arc::new(Current {
            key: Arc::new(key),
            info: info.clone(),
        })));
        Ok(info)
    }

    /// Whether a certificate has been set.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    pub fn roots(&self) -> &Arc<TrustRoots> {
        &self.roots
    }

    /// The current certificate's facts, if there is one.
    pub fn info(&self) -> Option<CertInfo> {
        self.current.load().as_ref().map(|c| c.info.clone())
    }

    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|c| c.key.clone())
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.id.to_string())
            .field("cert", &self.info())
            .finish()
    }
}

/// Presents the current certificate to clients (none before the first
/// [`Credentials::set`]: the handshake then fails).
#[derive(Debug)]
pub(crate) struct CurrentServerCert(pub(crate) Arc<Credentials>);

impl ResolvesServerCert for CurrentServerCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }
}

/// Presents the current certificate to servers.
#[derive(Debug)]
pub(crate) struct CurrentClientCert(pub(crate) Arc<Credentials>);

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }

    fn has_certs(&self) -> bool {
        self.0.is_ready()
    }
}
