//! rustls configurations for mesh mTLS: TLS 1.3 only, ring, our verifiers,
//! the current certificate, no session resumption.
//!
//! Resumption is off on both sides because a resumed TLS 1.3 session skips
//! certificate verification: with it, a peer whose root was just removed
//! could keep opening connections on an old ticket. Mesh connections are
//! long-lived and pooled, so a full handshake each time costs little.

use std::sync::Arc;

use rustls::client::{ResolvesClientCert, Resumption};
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};

use super::creds::{CurrentClientCert, CurrentServerCert};
use super::verify::{ClientIdVerifier, ServerIdVerifier};
use super::{provider, Credentials, TlsError, TrustRoots};
use crate::spiffe::SpiffeId;

/// The server side of mesh mTLS: requires a client certificate chaining to
/// the current roots with a SPIFFE ID of our trust domain (verified at each
/// handshake, so a root rotation applies to new connections at once),
/// presents the current certificate, and offers `alpn` (in order of
/// preference; a client offering ALPN with none of them is refused, one
/// offering none gets no ALPN).
///
/// Build it once and share it: it reads `creds` at each handshake.
pub fn server_config(
    creds: &Arc<Credentials>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = ClientIdVerifier {
        roots: creds.roots().clone(),
        trust_domain: creds.id().trust_domain().to_string(),
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(CurrentServerCert(creds.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client side of mesh mTLS: presents the current certificate, and
/// verifies that the server's chain leads to the current roots and that its
/// SPIFFE ID is one of `expected` (at least one).
///
/// The `ServerName` given to `connect` is not checked and not sent (SNI is
/// off): pass the destination's IP address, `ServerName::IpAddress(ip.into())`.
/// Build one configuration per expected identity and reuse it.
pub fn client_config(
    creds: &Arc<Credentials>,
    expected: Vec<SpiffeId>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let resolver = Arc::new(CurrentClientCert(creds.clone()));
    build_client(creds.roots(), expected, alpn, Some(resolver))
}

/// The client side without a client certificate, for a proxy's first call
/// to the identity service before it has one: verifies the server's chain and
/// SPIFFE ID only. Otherwise as [`client_config`].
pub fn client_config_anonymous(
    roots: &Arc<TrustRoots>,
    expected: Vec<SpiffeId>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    build_client(roots, expected, alpn, None)
}

fn build_client(
    roots: &Arc<TrustRoots>,
    expected: Vec<SpiffeId>,
    alpn: &[&[u8]],
    cert: Option<Arc<dyn ResolvesClientCert>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    if expected.is_empty() {
        return Err(TlsError::NoExpectedIdentity);
    }
    let verifier = ServerIdVerifier {
        roots: roots.clone(),
        expected,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match cert {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    Ok(Arc::new(config))
}
