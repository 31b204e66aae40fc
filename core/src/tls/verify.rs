//! Certificate verification by SPIFFE identity: the chain against the current
//! roots (webpki), then the leaf's one URI SAN (x509-parser).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::extensions::GeneralName;

use super::error::to_system_time;
use super::roots::{hex, TrustRoots};
use super::{provider, TlsError};
use crate::spiffe::SpiffeId;

/// The SPIFFE ID in a peer's leaf certificate (the first of `certs`): its
/// exactly one URI SAN, parsed strictly. Other SAN types are ignored.
///
/// This does not verify the certificate: use it on the peer certificates of
/// a connection whose handshake our verifiers accepted.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Result<SpiffeId, TlsError> {
    let leaf = certs.first().ok_or(TlsError::NoCertificate)?;
    Ok(Leaf::parse(leaf)?.id)
}

/// What a mesh leaf certificate says about itself.
pub(crate) struct Leaf {
    pub(crate) id: SpiffeId,
    pub(crate) serial: String,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    /// `sha256:<hex>` of the SubjectPublicKeyInfo (DER).
    pub(crate) key_fingerprint: String,
}

impl Leaf {
    pub(crate) fn parse(der: &CertificateDer<'_>) -> Result<Self, TlsError> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| TlsError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(TlsError::Malformed(
                "trailing bytes after the certificate".into(),
            ));
        }
        let san = cert
            .subject_alternative_name()
            .map_err(|e| TlsError::Malformed(format!("subject alternative name: {e}")))?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect();
        let uri = match uris.as_slice() {
            [] => return Err(TlsError::NoUriSan),
            [one] => *one,
            several => {
                return Err(TlsError::SeveralUriSans {
                    uris: several.iter().map(|u| u.to_string()).collect(),
                })
            }
        };
        let id = uri.parse().map_err(|source| TlsError::NotSpiffe {
            uri: uri.to_string(),
            source,
        })?;
        // Before 1970 reads as 1970: only the order of instants matters here.
        let time = |t: &x509_parser::time::ASN1Time| {
            UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        Ok(Self {
            id,
            serial: hex(cert.raw_serial()),
            not_before: time(&cert.validity().not_before),
            not_after: time(&cert.validity().not_after),
            key_fingerprint: {
                let hash: [u8; 32] = Sha256::digest(cert.public_key().raw).into();
                format!("sha256:{}", hex(&hash))
            },
        })
    }
}

/// Which extended key usage the chain is checked for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Usage {
    Server,
    Client,
}

impl Usage {
    fn key_usage(self) -> KeyUsage {
        match self {
            Self::Server => KeyUsage::server_auth(),
            Self::Client => KeyUsage::client_auth(),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Server => "serverAuth",
            Self::Client => "clientAuth",
        }
    }
}

/// Verifies that `end_entity` chains through `intermediates` to one of the
/// current roots, at `now`, for `usage`.
pub(crate) fn verify_chain(
    roots: &TrustRoots,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: Usage,
) -> Result<(), TlsError> {
    let cert =
        EndEntityCert::try_from(end_entity).map_err(|e| TlsError::Malformed(format!("{e:?}")))?;
    let roots = roots.current();
    cert.verify_for_usage(
        algorithms().all,
        &roots.anchors,
        intermediates,
        now,
        usage.key_usage(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| chain_error(e, usage))
}

fn chain_error(err: webpki::Error, usage: Usage) -> TlsError {
    use webpki::Error as E;
    match err {
        E::CertExpired { time, not_after } => TlsError::Expired {
            not_after: to_system_time(not_after),
            now: to_system_time(time),
        },
        E::CertNotValidYet { time, not_before } => TlsError::NotYetValid {
            not_before: to_system_time(not_before),
            now: to_system_time(time),
        },
        E::UnknownIssuer => TlsError::UnknownIssuer,
        E::RequiredEkuNotFoundContext(_) => TlsError::WrongUsage(usage.name()),
        E::InvalidSignatureForPublicKey => TlsError::BadSignature,
        E::BadDer | E::BadDerTime | E::TrailingData(_) => TlsError::Malformed(format!("{err:?}")),
        E::CaUsedAsEndEntity => {
            TlsError::Chain("a CA certificate is used as a workload certificate".into())
        }
        other => TlsError::Chain(format!("{other:?}")),
    }
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
}

fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General(
        "TLS 1.2 is not allowed in the mesh".into(),
    ))
}

/// Client side: verifies a server's chain and that its SPIFFE ID is one of
/// `expected`. The `ServerName` of the connection is ignored.
#[derive(Debug)]
pub(crate) struct ServerIdVerifier {
    pub(crate) roots: Arc<TrustRoots>,
    pub(crate) expected: Vec<SpiffeId>,
}

impl ServerIdVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), TlsError> {
        verify_chain(&self.roots, end_entity, intermediates, now, Usage::Server)?;
        let got = Leaf::parse(end_entity)?.id;
        if self.expected.contains(&got) {
            Ok(())
        } else {
            Err(TlsError::WrongIdentity {
                expected: self.expected.clone(),
                got,
            })
        }
    }
}

impl ServerCertVerifier for ServerIdVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Server side: requires a client certificate chaining to the current roots
/// and carrying a SPIFFE ID of our trust domain. Which identities may reach
/// what is authorization policy, decided after the handshake.
#[derive(Debug)]
pub(crate) struct ClientIdVerifier {
    pub(crate) roots: Arc<TrustRoots>,
    pub(crate) trust_domain: String,
}

impl ClientIdVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), TlsError> {
        verify_chain(&self.roots, end_entity, intermediates, now, Usage::Client)?;
        let got = Leaf::parse(end_entity)?.id;
        if got.trust_domain() == self.trust_domain {
            Ok(())
        } else {
            Err(TlsError::ForeignTrustDomain {
                trust_domain: self.trust_domain.clone(),
                got,
            })
        }
    }
}

impl ClientCertVerifier for ClientIdVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: the roots change at run time, and our clients have one
    /// certificate to offer anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}
