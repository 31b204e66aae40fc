//! What went wrong, in words that name the input, and as a short reason code.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::{CertificateError, OtherError};
use rustls_pki_types::UnixTime;

use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Errors of trust roots, credentials and certificate verification.
///
/// In a handshake, certificate errors reach rustls as
/// `rustls::Error::InvalidCertificate(..)`: expiry, unknown issuer, key usage
/// and bad signatures as rustls's own [`CertificateError`] kinds (so the peer
/// gets the matching alert), identity problems as
/// `CertificateError::Other` wrapping this type (see
/// [`TlsError::in_io_error`] and [`HandshakeFailure`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid PEM in the trust bundle: {0}")]
    Pem(String),
    #[error("the trust bundle holds no certificate")]
    NoRoots,
    #[error("certificate #{index} of the trust bundle is not a usable root: {reason}")]
    BadRoot { index: usize, reason: String },
    #[error("no certificate presented")]
    NoCertificate,
    #[error("certificate is not valid X.509: {0}")]
    Malformed(String),
    #[error("certificate has no URI SAN (a mesh certificate carries its SPIFFE ID as one)")]
    NoUriSan,
    #[error("certificate has {} URI SANs ({}); a mesh certificate has exactly one", .uris.len(), .uris.join(", "))]
    SeveralUriSans { uris: Vec<String> },
    #[error("URI SAN {uri:?} is not a SPIFFE ID: {source}")]
    NotSpiffe {
        uri: String,
        #[source]
        source: SpiffeIdError,
    },
    #[error("wrong identity: expected {}, got {got}", one_of(.expected))]
    WrongIdentity {
        expected: Vec<SpiffeId>,
        got: SpiffeId,
    },
    #[error("peer {got} is not of this mesh's trust domain {trust_domain:?}")]
    ForeignTrustDomain { trust_domain: String, got: SpiffeId },
    #[error("certificate expired at {} (now {})", rfc3339(*.not_after), rfc3339(*.now))]
    Expired {
        not_after: SystemTime,
        now: SystemTime,
    },
    #[error("certificate is not valid before {} (now {})", rfc3339(*.not_before), rfc3339(*.now))]
    NotYetValid {
        not_before: SystemTime,
        now: SystemTime,
    },
    #[error("unknown issuer: the certificate chain does not lead to a current trust root")]
    UnknownIssuer,
    #[error("certificate is not valid for {0} (extended key usage)")]
    WrongUsage(&'static str),
    #[error("bad signature in the certificate chain")]
    BadSignature,
    #[error("certificate chain rejected: {0}")]
    Chain(String),
    #[error("private key: {0}")]
    Key(String),
    #[error("private key does not match the certificate's public key")]
    KeyMismatch,
    #[error("a client configuration needs at least one expected server identity")]
    NoExpectedIdentity,
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

fn one_of(ids: &[SpiffeId]) -> String {
    match ids {
        [one] => one.to_string(),
        many => {
            let list: Vec<String> = many.iter().map(ToString::to_string).collect();
            format!("one of [{}]", list.join(", "))
        }
    }
}

fn rfc3339(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(t)
}

pub(crate) fn to_system_time(t: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.as_secs())
}

fn to_unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

impl TlsError {
    /// The classification of this error, for metrics and logs.
    pub fn failure(&self) -> HandshakeFailure {
        match self {
            Self::WrongIdentity { .. } | Self::ForeignTrustDomain { .. } => {
                HandshakeFailure::WrongIdentity
            }
            Self::NoUriSan | Self::SeveralUriSans { .. } | Self::NotSpiffe { .. } => {
                HandshakeFailure::BadIdentity
            }
            Self::UnknownIssuer => HandshakeFailure::UnknownIssuer,
            Self::Expired { .. } | Self::NotYetValid { .. } => HandshakeFailure::Expired,
            Self::NoCertificate => HandshakeFailure::NoCertificate,
            _ => HandshakeFailure::BadCertificate,
        }
    }

    /// This module's error inside a rustls error, where a verifier put it
    /// (identity problems: wrong identity, no or several URI SANs, …).
    pub fn in_rustls_error(err: &rustls::Error) -> Option<&TlsError> {
        match err {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                other.0.downcast_ref::<TlsError>()
            }
            _ => None,
        }
    }

    /// This module's error inside the `io::Error` of a failed tokio-rustls
    /// handshake (tokio-rustls wraps the `rustls::Error`).
    pub fn in_io_error(err: &io::Error) -> Option<&TlsError> {
        rustls_error(err).and_then(Self::in_rustls_error)
    }
}

fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

impl From<TlsError> for rustls::Error {
    fn from(err: TlsError) -> Self {
        let kind = match err {
            TlsError::Expired { not_after, now } => CertificateError::ExpiredContext {
                time: to_unix_time(now),
                not_after: to_unix_time(not_after),
            },
            TlsError::NotYetValid { not_before, now } => CertificateError::NotValidYetContext {
                time: to_unix_time(now),
                not_before: to_unix_time(not_before),
            },
            TlsError::UnknownIssuer => CertificateError::UnknownIssuer,
            TlsError::WrongUsage(_) => CertificateError::InvalidPurpose,
            TlsError::BadSignature => CertificateError::BadSignature,
            TlsError::Malformed(_) => CertificateError::BadEncoding,
            TlsError::NoCertificate => return rustls::Error::NoCertificatesPresented,
            other => CertificateError::Other(OtherError(Arc::new(other))),
        };
        rustls::Error::InvalidCertificate(kind)
    }
}

/// Why a handshake failed, as a short, bounded reason code (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The peer's SPIFFE ID is not the expected one (client side), or not of
    /// this mesh's trust domain (server side).
    WrongIdentity,
    /// The peer's certificate carries no usable SPIFFE ID (none, several, or
    /// a URI that is not a SPIFFE ID).
    BadIdentity,
    /// The peer's chain does not lead to a current trust root.
    UnknownIssuer,
    /// The peer's certificate is expired or not yet valid.
    Expired,
    /// The client presented no certificate.
    NoCertificate,
    /// Any other problem with the peer's certificate.
    BadCertificate,
    /// The peer refused us: it sent a fatal alert (it did not accept our
    /// certificate, protocol version, ALPN, …).
    PeerRefused,
    /// A protocol problem on our side: no common version or ALPN protocol, a
    /// malformed or unexpected message.
    Protocol,
    /// The transport failed or closed during the handshake.
    Io,
}

impl HandshakeFailure {
    /// Classifies the error of a failed tokio-rustls handshake (or of a read
    /// right after it: in TLS 1.3 a client learns that the server refused its
    /// certificate only on its first read).
    pub fn from_io(err: &io::Error) -> Self {
        match rustls_error(err) {
            Some(err) => Self::from_rustls(err),
            None => Self::Io,
        }
    }

    pub fn from_rustls(err: &rustls::Error) -> Self {
        use rustls::Error as E;
        match err {
            E::InvalidCertificate(kind) => match kind {
                CertificateError::Other(_) => TlsError::in_rustls_error(err)
                    .map(TlsError::failure)
                    .unwrap_or(Self::BadCertificate),
                CertificateError::UnknownIssuer => Self::UnknownIssuer,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Self::Expired,
                _ => Self::BadCertificate,
            },
            E::NoCertificatesPresented => Self::NoCertificate,
            E::AlertReceived(_) => Self::PeerRefused,
            _ => Self::Protocol,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::WrongIdentity => "wrong_identity",
            Self::BadIdentity => "bad_identity",
            Self::UnknownIssuer => "unknown_issuer",
            Self::Expired => "expired",
            Self::NoCertificate => "no_certificate",
            Self::BadCertificate => "bad_certificate",
            Self::PeerRefused => "peer_refused",
            Self::Protocol => "protocol",
            Self::Io => "io",
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
