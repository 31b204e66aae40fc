//! The identity service's own TLS: a serving certificate it issues to
//! itself (SPIFFE ID `spiffe://<td>/ns/<namespace>/sa/<service-account>`),
//! swapped in place on renewal, and a TLS 1.3-only rustls server config
//! (ALPN `h2`, ring) that presents it. No client certificate is asked for:
//! callers authenticate with their ServiceAccount token.
//!
//! Why not `trellis_core::tls::server_config`: that one is for mesh mTLS
//! and requires a client certificate, which a proxy asking for its first
//! certificate does not have. Clients of this service do use the core's
//! verifier (see [`trellis_api::client`]).

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use trellis_core::spiffe::SpiffeId;

use crate::ca::Issuer;
use crate::sign::{sign_leaf, SignError, SignPolicy, SignedLeaf};

pub use trellis_api::client::ALPN_H2;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("making a key: {0}")]
    Key(String),
    #[error("issuing the serving certificate: {0}")]
    Sign(#[from] SignError),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

struct Served {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

/// The current serving certificate and key.
pub struct ServingCert {
    identity: SpiffeId,
    current: ArcSwapOption<Served>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after())
            .finish()
    }
}

impl ServingCert {
    /// Nothing to serve until [`Self::renew`] succeeds once.
    pub fn new(identity: SpiffeId) -> Self {
        Self {
            identity,
            current: ArcSwapOption::empty(),
        }
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// Makes a new key, has `issuer` certify it, and serves it from now on.
    pub fn renew(
        &self,
        issuer: &Issuer,
        policy: &SignPolicy,
        now: SystemTime,
    ) -> Result<SignedLeaf, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let leaf = sign_leaf(issuer, &key, &self.identity, policy, now)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(&der)?;
        let mut chain = Vec::with_capacity(1 + leaf.chain.len());
        chain.push(leaf.leaf_der.clone());
        chain.extend(leaf.chain.iter().cloned());
        self.current.store(Some(Arc::new(Served {
            key: Arc::new(CertifiedKey::new(chain, signer)),
            not_after: leaf.not_after,
        })));
        Ok(leaf)
    }

    pub fn not_after(&self) -> Option<SystemTime> {
        self.current.load().as_ref().map(|s| s.not_after)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|s| s.key.clone())
    }
}

/// TLS 1.3 only, ALPN `h2`, presenting `cert`.
pub fn server_config(cert: Arc<ServingCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption: every connection verifies the current certificate, as
    // on mesh connections (and the mesh's clients do not resume anyway).
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}
