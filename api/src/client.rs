//! A client of the identity service: [`connect`] opens a gRPC channel over
//! TLS 1.3 that accepts the server only if its certificate chains to the
//! current trust roots and its URI SAN is exactly the expected SPIFFE ID.
//! The verification is the mesh's own
//! ([`trellis_core::tls::client_config_anonymous`]): a proxy has no
//! certificate yet when it first calls, so none is presented.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::IdentityClient;
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};
use trellis_core::spiffe::SpiffeId;
use trellis_core::tls::{client_config_anonymous, TlsError, TrustRoots};

/// gRPC runs over HTTP/2; the identity service offers `h2` by ALPN.
pub const ALPN_H2: &[u8] = b"h2";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("address {0:?} is not host:port")]
    Address(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("connecting to the identity service at {addr}: {reason}")]
    Connect { addr: String, reason: String },
}

/// Connects to the identity service at `addr` (`host:port`), verifying it
/// against `roots` (read at each handshake, so a root rotation applies to
/// the next connection) as `expected_identity`. The TLS handshake happens
/// here: a server with another identity is an error from this call.
pub async fn connect(
    addr: &str,
    roots: &Arc<TrustRoots>,
    expected_identity: &SpiffeId,
) -> Result<IdentityClient<Channel>, ConnectError> {
    let config = client_config_anonymous(roots, vec![expected_identity.clone()], &[ALPN_H2])?;
    // The scheme is `http` because TLS is done by the connector below, not
    // by tonic; the bytes on the wire are TLS all the same.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| ConnectError::Address(addr.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT);
    let connector = TlsConnect {
        tls: tokio_rustls::TlsConnector::from(config),
    };
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| ConnectError::Connect {
            addr: addr.to_string(),
            reason: error_chain(&e),
        })?;
    Ok(IdentityClient::new(channel))
}

/// An error and its sources, joined: tonic's top-level message alone
/// ("transport error") hides the handshake failure. A certificate refused
/// by the mesh's verifier is told in its words.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let tls = s
            .downcast_ref::<std::io::Error>()
            .and_then(TlsError::in_io_error)
            .or_else(|| {
                s.downcast_ref::<rustls::Error>()
                    .and_then(TlsError::in_rustls_error)
            });
        if let Some(tls) = tls {
            parts.push(format!("TLS handshake refused: {tls}"));
            break;
        }
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Dials TCP and runs the TLS handshake, for tonic's channel.
#[derive(Clone)]
struct TlsConnect {
    tls: tokio_rustls::TlsConnector,
}

type TlsIo = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tonic::codegen::Service<Uri> for TlsConnect {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TlsIo, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let invalid = |what: &str| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string())
            };
            let host = uri
                .host()
                .ok_or_else(|| invalid("no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            // Neither checked nor sent (the SPIFFE ID is the server's name).
            let name = ServerName::try_from(host).map_err(|_| invalid("bad host name"))?;
            let stream = tls.connect(name, tcp).await?;
            if stream.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
                return Err(std::io::Error::other("the server did not agree to ALPN h2"));
            }
            Ok(TokioIo::new(stream))
        })
    }
}
