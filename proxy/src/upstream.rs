//! Connections to upstreams: plain TCP connects with a timeout, a keep-alive
//! pool of HTTP/1 connections, and one multiplexed HTTP/2 connection per
//! destination, in a bounded [`pool`] that drops idle connections. HTTP/2
//! connections send keep-alive pings, so a dead peer is noticed before a
//! request waits on it.
//!
//! Pools are keyed by the original destination: a transparent proxy sends a
//! request where the client sent it, whatever its Host header says. A
//! meshed connection is reused only for the identities it was verified
//! for: an address now serving another workload gets a new connection.

mod pool;

use std::sync::Arc;
use std::time::{Duration, Instant};

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

use trellis_core::spiffe::SpiffeId;

use self::pool::{Pool, Reusable};
use crate::body::ReqBody;
use crate::error::ProxyError;
use crate::mesh::Destination;

/// HTTP/2 connections pooled at most, plaintext and meshed each.
const H2_POOL_MAX: usize = 1024;
/// Keep-alive pings on HTTP/2 connections: every interval, and the
/// connection is closed when one is not answered within the timeout.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

type H2Sender = http2::SendRequest<ReqBody>;

impl Reusable for H2Sender {
    fn is_closed(&self) -> bool {
        http2::SendRequest::is_closed(self)
    }
}

/// A meshed connection and the identities it was verified for.
#[derive(Clone)]
struct MeshSender {
    sender: H2Sender,
    identities: Vec<SpiffeId>,
}

impl Reusable for MeshSender {
    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

pub struct Upstreams {
    connect_timeout: Duration,
    http1: Client<HttpConnector, ReqBody>,
    http2: Pool<OrigDstAddr, H2Sender>,
    /// HTTP/2 inside mutual TLS to meshed destinations.
    mesh: Pool<OrigDstAddr, MeshSender>,
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
            http2: Pool::new(H2_POOL_MAX, pool_idle_timeout),
            mesh: Pool::new(H2_POOL_MAX, pool_idle_timeout),
        }
    }

    /// Drops idle and closed HTTP/2 connections (insertions do too; this is
    /// for a proxy that makes no new ones). Returns how many stay pooled.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        self.http2.sweep(now) + self.mesh.sweep(now)
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

    async fn http2_sender(&self, addr: OrigDstAddr) -> Result<H2Sender, ProxyError> {
        if let Some(s) = self.http2.get(&addr, Instant::now(), |_| true) {
            return Ok(s);
        }
        // Connect without holding the lock. Two first requests racing each
        // open a connection; the later one replaces the earlier in the
        // cache, and the earlier closes once its requests finish.
        let tcp = self.connect(addr).await?;
        let sender = h2_handshake(addr, tcp).await?;
        self.http2.insert(addr, sender.clone(), Instant::now());
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
        let fits = |c: &MeshSender| c.identities == dest.identities;
        let mut sender = match self.mesh.get(&addr, Instant::now(), fits) {
            Some(c) => c.sender,
            None => {
                let tls = self.connect_mesh(addr, dest.h2.clone()).await?;
                let sender = h2_handshake(addr, tls).await?;
                let conn = MeshSender {
                    sender: sender.clone(),
                    identities: dest.identities.clone(),
                };
                self.mesh.insert(addr, conn, Instant::now());
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

async fn h2_handshake<I>(addr: OrigDstAddr, io: I) -> Result<H2Sender, ProxyError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .keep_alive_while_idle(true)
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
