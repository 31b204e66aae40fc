//! Why a connection or request failed, and the one place that decides what
//! each failure means: the HTTP status sent back, the reason label, the log
//! level.

use std::io;
use std::time::Duration;

use http::StatusCode;
use trellis_core::addr::OrigDstAddr;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no original destination for the connection: {0}")]
    NoOrigDst(#[source] io::Error),
    #[error("original destination {0} is the proxy's own listener; refusing a loop")]
    Loop(OrigDstAddr),
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout {
        addr: OrigDstAddr,
        timeout: Duration,
    },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: OrigDstAddr,
        #[source]
        source: io::Error,
    },
    #[error("upstream {addr}: {source}")]
    Upstream {
        addr: OrigDstAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("client connection: {0}")]
    Client(#[source] io::Error),
    #[error("mutual TLS with {addr} failed ({reason}): {source}")]
    TlsHandshake {
        addr: OrigDstAddr,
        reason: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("refused by inbound policy: {reason}")]
    Forbidden { reason: &'static str },
    #[error("request path refused: {0}")]
    BadPath(#[from] crate::path::PathError),
    #[error("original destination {0} is not an address of this pod; refusing to relay")]
    ForeignDestination(OrigDstAddr),
    #[error("{dst}: plaintext refused, mutual TLS is required ({reason})")]
    PlaintextRefused {
        dst: OrigDstAddr,
        reason: &'static str,
    },
    #[error("{service}: no response within the route's timeout of {timeout:?}")]
    RequestTimeout { service: String, timeout: Duration },
    #[error("{service}: no endpoint available")]
    NoEndpoints { service: String },
    #[error("{service}: the route's backends all have weight 0 or are unknown")]
    NoBackend { service: String },
}

/// What a failure means for the client, the metrics and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Status for an HTTP client (a TCP client's connection is reset).
    pub status: StatusCode,
    /// gRPC status code for a gRPC client.
    pub grpc_status: u32,
    /// Short reason code: a metric label and the `trellis-proxy-error` header.
    pub reason: &'static str,
    /// Whether this is worth a warning (the proxy or upstream misbehaved)
    /// rather than a debug line (a client went away).
    pub warn: bool,
}

impl ProxyError {
    pub fn verdict(&self) -> Verdict {
        const UNAVAILABLE: u32 = 14;
        const DEADLINE_EXCEEDED: u32 = 4;
        const PERMISSION_DENIED: u32 = 7;
        const INTERNAL: u32 = 13;
        const INVALID_ARGUMENT: u32 = 3;
        let (status, grpc_status, reason, warn) = match self {
            Self::NoOrigDst(_) => (StatusCode::BAD_GATEWAY, UNAVAILABLE, "no_orig_dst", true),
            Self::Loop(_) => (StatusCode::FORBIDDEN, PERMISSION_DENIED, "loop", true),
            Self::ConnectTimeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                DEADLINE_EXCEEDED,
                "connect_timeout",
                true,
            ),
            Self::Connect { .. } => (StatusCode::BAD_GATEWAY, UNAVAILABLE, "connect_failed", true),
            Self::Upstream { .. } => (StatusCode::BAD_GATEWAY, UNAVAILABLE, "upstream_error", true),
            Self::Client(_) => (StatusCode::BAD_REQUEST, UNAVAILABLE, "client_error", false),
            Self::TlsHandshake { reason, .. } => {
                (StatusCode::BAD_GATEWAY, UNAVAILABLE, *reason, true)
            }
            Self::Forbidden { reason } => {
                (StatusCode::FORBIDDEN, PERMISSION_DENIED, *reason, false)
            }
            Self::BadPath(e) => (StatusCode::BAD_REQUEST, INVALID_ARGUMENT, e.reason(), false),
            // Someone routed another address through this pod: an attack
            // or a misconfiguration, worth a warning either way.
            Self::ForeignDestination(_) => (
                StatusCode::FORBIDDEN,
                PERMISSION_DENIED,
                "foreign_destination",
                true,
            ),
            Self::PlaintextRefused { reason, .. } => {
                (StatusCode::FORBIDDEN, PERMISSION_DENIED, *reason, true)
            }
            Self::RequestTimeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                DEADLINE_EXCEEDED,
                "request_timeout",
                false,
            ),
            Self::NoEndpoints { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                UNAVAILABLE,
                "no_endpoints",
                true,
            ),
            // Gateway API: a request to a rule without a usable backend gets 500.
            Self::NoBackend { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                INTERNAL,
                "no_backend",
                true,
            ),
        };
        Verdict {
            status,
            grpc_status,
            reason,
            warn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let addr = OrigDstAddr(([10, 0, 0, 1], 80).into());
        let refused = ProxyError::Connect {
            addr,
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(refused.verdict().status, StatusCode::BAD_GATEWAY);
        assert_eq!(refused.verdict().reason, "connect_failed");
        let timeout = ProxyError::ConnectTimeout {
            addr,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(timeout.verdict().status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(timeout.verdict().grpc_status, 4);
        assert!(timeout.to_string().contains("10.0.0.1:80"));
        assert_eq!(
            ProxyError::Loop(addr).verdict().status,
            StatusCode::FORBIDDEN
        );
    }
}
