//! Connections to upstreams: plain TCP connects with a timeout, a keep-alive
//! pool of HTTP/1 connections, and one multiplexed HTTP/2 connection per
//! destination.
//!
//! Pools are keyed by the original destination: a transparent proxy sends a
//! request where the client sent it, whatever its Host header says.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use trellis_core::addr::OrigDstAddr;
use trellis_core::tls::HandshakeFailure;

use crate::body::ReqBody;
use crate::error::ProxyError;
use crate::mesh::Destination;

type H2Senders = Mutex<HashMap<OrigDstAddr, http2::SendRequest<ReqBody>>>;

pub struct Upstreams {
    connect_timeout: Duration,
    http1: Client<HttpConnector, ReqBody>,
    http2: H2Senders,
    /// HTTP/2 inside mutual TLS to meshed destinations.
    mesh: H2Senders,
}

impl Upstreams {
    pub fn new(connect_timeout: Duration, pool_idle_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // The client's own Host header travels unchanged.
            .set_host(false)
            .build(connector);
        Self {
            connect_timeout,
            http1,
            http2: Mutex::new(HashMap::new()),
            mesh: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a TCP connection to `addr`, within the connect timeout.
    pub async fn connect(&self, addr: OrigDstAddr) -> Result<TcpStream, ProxyError> {
        let timeout = self.connect_timeout;
        match tokio::time::timeout(timeout, TcpStream::connect(addr.get())).await {
            Err(_) => Err(ProxyError::ConnectTimeout { addr, timeout }),
            Ok(Err(source)) => Err(ProxyError::Connect { addr, source }),
            Ok(Ok(s)) => {
                // Latency matters more than packet count for proxied traffic.
                let _ = s.set_nodelay(true);
                Ok(s)
            }
        }
    }

    /// Sends an HTTP/1 request over a pooled keep-alive connection. The
    /// request's URI must be absolute, naming the original destination.
    pub async fn send_http1(
        &self,
        addr: OrigDstAddr,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.http1.request(req).await.map_err(|e| {
            if e.is_connect() {
                let source = std::io::Error::other(e);
                ProxyError::Connect { addr, source }
            } else {
                ProxyError::Upstream {
                    addr,
                    source: Box::new(e),
                }
            }
        })
    }

    /// Sends an HTTP/2 request on the destination's multiplexed connection,
    /// opening it first if there is none.
    pub async fn send_http2(
        &self,
        addr: OrigDstAddr,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut sender = self.http2_sender(addr).await?;
        sender
            .send_request(req)
            .await
            .map_err(|e| ProxyError::Upstream {
                addr,
                source: Box::new(e),
            })
    }

    async fn http2_sender(
        &self,
        addr: OrigDstAddr,
    ) -> Result<http2::SendRequest<ReqBody>, ProxyError> {
        if let Some(s) = cached(&self.http2, addr) {
            return Ok(s);
        }
        // Connect without holding the lock. Two first requests racing each
        // open a connection; the later one replaces the earlier in the
        // cache, and the earlier closes once its requests finish.
        let tcp = self.connect(addr).await?;
        let sender = h2_handshake(addr, tcp).await?;
        lock(&self.http2).insert(addr, sender.clone());
        Ok(sender)
    }

    /// Opens mutual TLS to a meshed destination, verifying that it is one of
    /// the identities `config` expects.
    pub async fn connect_mesh(
        &self,
        addr: OrigDstAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<TlsStream<TcpStream>, ProxyError> {
        let tcp = self.connect(addr).await?;
        // The verifier checks the SPIFFE ID, not a name; SNI is off.
        let name = rustls_pki_types::ServerName::IpAddress(addr.get().ip().into());
        let connecting = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Err(_) => Err(ProxyError::ConnectTimeout {
                addr,
                timeout: self.connect_timeout,
            }),
            Ok(Err(source)) => Err(ProxyError::TlsHandshake {
                addr,
                reason: HandshakeFailure::from_io(&source).as_str(),
                source,
            }),
            Ok(Ok(tls)) => Ok(tls),
        }
    }

    /// Sends a request to a meshed destination over HTTP/2 inside mutual
    /// TLS, on one multiplexed connection per destination.
    pub async fn send_mesh(
        &self,
        addr: OrigDstAddr,
        dest: &Destination,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut sender = match cached(&self.mesh, addr) {
            Some(s) => s,
            None => {
                let tls = self.connect_mesh(addr, dest.h2.clone()).await?;
                let sender = h2_handshake(addr, tls).await?;
                lock(&self.mesh).insert(addr, sender.clone());
                sender
            }
        };
        sender
            .send_request(req)
            .await
            .map_err(|e| ProxyError::Upstream {
                addr,
                source: Box::new(e),
            })
    }
}

async fn h2_handshake<I>(
    addr: OrigDstAddr,
    io: I,
) -> Result<http2::SendRequest<ReqBody>, ProxyError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ProxyError::Upstream {
            addr,
            source: Box::new(e),
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(dst.addr = %addr, error = %e, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

fn cached(map: &H2Senders, addr: OrigDstAddr) -> Option<http2::SendRequest<ReqBody>> {
    let mut map = lock(map);
    match map.get(&addr) {
        Some(s) if !s.is_closed() => Some(s.clone()),
        Some(_) => {
            map.remove(&addr);
            None
        }
        None => None,
    }
}

fn lock(
    map: &H2Senders,
) -> std::sync::MutexGuard<'_, HashMap<OrigDstAddr, http2::SendRequest<ReqBody>>> {
    // A map of senders stays consistent even if a holder panicked.
    map.lock().unwrap_or_else(|p| p.into_inner())
}
