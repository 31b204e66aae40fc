//! Why a connection or request failed, and the one place that decides what
//! each failure means ([`ProxyError::verdict`]): whose fault it is
//! ([`Fault`]: the client, the upstream, the proxy, or a policy), whether
//! another try may repeat it ([`Retry`]), the HTTP and gRPC status sent
//! back, the reason label, and the log level. Logs, the golden metrics'
//! classification, the retry decision and failure accrual all read the
//! verdict; none of them looks at the variants.

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
    #[error("client connection: {0}")]
    ClientHttp(#[source] hyper::Error),
    #[error("upstream {addr} reset the stream: {source}")]
    UpstreamIo {
        addr: OrigDstAddr,
        #[source]
        source: io::Error,
    },
    #[error("{service}: no response within the try's timeout of {timeout:?}")]
    TryTimeout { service: String, timeout: Duration },
    #[error("building the upstream request: {0}")]
    Internal(String),
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

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client: it went away, sent something unparseable, or was slow.
    /// Logged at debug; never counts against an endpoint.
    Client,
    /// The destination: refused, reset, timed out, failed its handshake.
    /// Counts against the endpoint (failure accrual) and is logged as a
    /// warning.
    Upstream,
    /// The proxy itself (a missing original destination, a request it
    /// could not build, a route without a usable backend): a warning.
    Proxy,
    /// A decision the proxy made on purpose: refused by the inbound policy
    /// or the outbound mTLS policy, a timeout the route asked for, a loop.
    Policy,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
            Self::Proxy => "proxy",
            Self::Policy => "policy",
        }
    }
}

/// Whether another try could succeed where this one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nothing reached the upstream (connect refused or timed out, TLS
    /// handshake failed): any request may be tried again elsewhere.
    NeverSent,
    /// The upstream may have seen the request (reset, per-try timeout):
    /// only what the route's retry policy allows for such a failure.
    MaybeSent,
    /// Trying again cannot help (the client's fault, a policy's refusal,
    /// the route's own timeout).
    No,
}

/// What a failure means for the client, the metrics and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub fault: Fault,
    pub retry: Retry,
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
    /// The one reading of a failure that everything else uses.
    pub fn verdict(&self) -> Verdict {
        use Fault::{Client, Policy, Proxy, Upstream};
        use Retry::{MaybeSent, NeverSent, No};
        const UNAVAILABLE: u32 = 14;
        const DEADLINE_EXCEEDED: u32 = 4;
        const PERMISSION_DENIED: u32 = 7;
        const INTERNAL: u32 = 13;
        const INVALID_ARGUMENT: u32 = 3;
        const CANCELLED: u32 = 1;
        let forbidden = (StatusCode::FORBIDDEN, PERMISSION_DENIED);
        let bad_gateway = (StatusCode::BAD_GATEWAY, UNAVAILABLE);
        let timeout = (StatusCode::GATEWAY_TIMEOUT, DEADLINE_EXCEEDED);
        let ((status, grpc_status), fault, retry, reason) = match self {
            Self::NoOrigDst(_) => (bad_gateway, Proxy, No, "no_orig_dst"),
            Self::Loop(_) => (forbidden, Policy, No, "loop"),
            Self::ConnectTimeout { .. } => (timeout, Upstream, NeverSent, "connect_timeout"),
            Self::Connect { .. } => (bad_gateway, Upstream, NeverSent, "connect_failed"),
            Self::TlsHandshake { reason, .. } => (bad_gateway, Upstream, NeverSent, *reason),
            Self::Upstream { .. } | Self::UpstreamIo { .. } => {
                (bad_gateway, Upstream, MaybeSent, "upstream_error")
            }
            Self::TryTimeout { .. } => (timeout, Upstream, MaybeSent, "try_timeout"),
            Self::Client(_) | Self::ClientHttp(_) => (
                (StatusCode::BAD_REQUEST, CANCELLED),
                Client,
                No,
                "client_error",
            ),
            Self::Forbidden { reason } => (forbidden, Policy, No, *reason),
            Self::BadPath(e) => (
                (StatusCode::BAD_REQUEST, INVALID_ARGUMENT),
                Client,
                No,
                e.reason(),
            ),
            // Someone routed another address through this pod: an attack
            // or a misconfiguration.
            Self::ForeignDestination(_) => (forbidden, Policy, No, "foreign_destination"),
            Self::PlaintextRefused { reason, .. } => (forbidden, Policy, No, *reason),
            Self::RequestTimeout { .. } => (timeout, Policy, No, "request_timeout"),
            Self::NoEndpoints { .. } => (
                (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
                Upstream,
                No,
                "no_endpoints",
            ),
            // Gateway API: a request to a rule without a usable backend gets 500.
            Self::NoBackend { .. } => (
                (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL),
                Proxy,
                No,
                "no_backend",
            ),
            Self::Internal(_) => (
                (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL),
                Proxy,
                No,
                "internal",
            ),
        };
        // Worth a warning: the upstream or the proxy misbehaved, or a
        // refusal that means an attack or a misconfiguration (a loop, a
        // foreign destination, plaintext where mTLS is required). A client
        // going away, or a request the inbound policy refused, is routine.
        let warn = match fault {
            Upstream | Proxy => true,
            Client => false,
            Policy => matches!(
                self,
                Self::Loop(_) | Self::ForeignDestination(_) | Self::PlaintextRefused { .. }
            ),
        };
        Verdict {
            fault,
            retry,
            status,
            grpc_status,
            reason,
            warn,
        }
    }

    /// Logs a failed request (connections log theirs in the access log):
    /// a warning when the verdict says so, else at debug.
    pub fn log_request(&self, dst: &dyn std::fmt::Display) {
        let v = self.verdict();
        if v.warn {
            tracing::warn!(dst = %dst, error = %self, reason = v.reason, fault = v.fault.as_str(), "request failed");
        } else {
            tracing::debug!(dst = %dst, error = %self, reason = v.reason, fault = v.fault.as_str(), "request failed");
        }
    }

    /// A failed opaque copy: the side whose socket failed is at fault.
    pub fn copy_failed(addr: OrigDstAddr, e: crate::io::CopyError) -> Self {
        match e.side {
            crate::io::Side::Client => Self::Client(e.source),
            crate::io::Side::Upstream => Self::UpstreamIo {
                addr,
                source: e.source,
            },
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

    #[test]
    fn faults_and_retries() {
        let addr = OrigDstAddr(([10, 0, 0, 1], 80).into());
        let refused = ProxyError::Connect {
            addr,
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(refused.verdict().fault, Fault::Upstream);
        assert_eq!(refused.verdict().retry, Retry::NeverSent);
        let reset = ProxyError::UpstreamIo {
            addr,
            source: io::Error::from(io::ErrorKind::ConnectionReset),
        };
        assert_eq!(reset.verdict().fault, Fault::Upstream);
        assert_eq!(reset.verdict().retry, Retry::MaybeSent);
        assert!(reset.verdict().warn);
        let gone = ProxyError::Client(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(gone.verdict().fault, Fault::Client);
        assert!(!gone.verdict().warn);
        let denied = ProxyError::Forbidden {
            reason: "unauthorized",
        };
        assert_eq!(denied.verdict().fault, Fault::Policy);
        assert_eq!(denied.verdict().retry, Retry::No);
        assert!(!denied.verdict().warn);
        let timeout = ProxyError::RequestTimeout {
            service: "web".into(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(timeout.verdict().retry, Retry::No);
        let copy = crate::io::CopyError {
            side: crate::io::Side::Upstream,
            source: io::Error::from(io::ErrorKind::ConnectionReset),
        };
        assert_eq!(
            ProxyError::copy_failed(addr, copy).verdict().fault,
            Fault::Upstream
        );
    }
}
