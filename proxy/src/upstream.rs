//! Connections to upstreams: plain TCP connects with a timeout, a keep-alive
//! pool of HTTP/1 connections ([`H1Pool`]), and one multiplexed HTTP/2
//! connection per destination, in a bounded [`pool`] that drops idle
//! connections. HTTP/2 connections send keep-alive pings, so a dead peer is
//! noticed before a request waits on it.
//!
//! Pools are keyed by the original destination: a transparent proxy sends a
//! request where the client sent it, whatever its Host header says. A
//! meshed connection is reused only for the identities it was verified
//! for: an address now serving another workload gets a new connection.

mod pool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
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

/// Idle HTTP/1 connections kept per destination, at most.
const H1_IDLE_PER_DST: usize = 256;

type H1Sender = http1::SendRequest<ReqBody>;
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
    http1: H1Pool,
    http2: Pool<OrigDstAddr, H2Sender>,
    /// HTTP/2 inside mutual TLS to meshed destinations.
    mesh: Pool<OrigDstAddr, MeshSender>,
}

impl Upstreams {
    pub fn new(connect_timeout: Duration, pool_idle_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            http1: H1Pool::new(pool_idle_timeout),
            http2: Pool::new(H2_POOL_MAX, pool_idle_timeout),
            mesh: Pool::new(H2_POOL_MAX, pool_idle_timeout),
        }
    }

    /// Drops idle and closed connections (insertions and checkouts do too;
    /// this is for a proxy that makes no new ones). Returns how many stay
    /// pooled.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        self.http1.sweep(now) + self.http2.sweep(now) + self.mesh.sweep(now)
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

    /// Sends an HTTP/1 request to `addr` over a pooled keep-alive
    /// connection, or a new one. The request goes in origin form (path and
    /// query); its Host header travels unchanged. A request that a pooled
    /// connection did not take (it closed meanwhile) is sent once more, on a
    /// new connection.
    pub async fn send_http1(
        &self,
        addr: OrigDstAddr,
        mut req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
        let upstream_err = |e: hyper::Error| ProxyError::Upstream {
            addr,
            source: Box::new(e),
        };
        if let Some(mut sender) = self.http1.checkout(addr, Instant::now()) {
            match sender.try_send_request(req).await {
                Ok(rsp) => {
                    self.http1.checkin(addr, sender, Instant::now());
                    return Ok(rsp);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection closed while pooled.
                    Some(unsent) => req = unsent,
                    None => return Err(upstream_err(e.into_error())),
                },
            }
        }
        // Boxed, as every rare connect path here: a connecting future
        // (TCP, TLS, handshake) is kilobytes, and inline it would make every
        // request's future as large, copied and allocated per request.
        let mut sender = Box::pin(self.h1_connect(addr)).await?;
        let rsp = sender.send_request(req).await.map_err(upstream_err)?;
        self.http1.checkin(addr, sender, Instant::now());
        Ok(rsp)
    }

    async fn h1_connect(&self, addr: OrigDstAddr) -> Result<H1Sender, ProxyError> {
        let tcp = self.connect(addr).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| ProxyError::Upstream {
                addr,
                source: Box::new(e),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(dst.addr = %addr, error = %e, "upstream HTTP/1 connection ended");
            }
        });
        Ok(sender)
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
        // cache, and the earlier closes once its requests finish. Boxed:
        // see send_http1.
        let sender = Box::pin(async {
            let tcp = self.connect(addr).await?;
            h2_handshake(addr, tcp).await
        })
        .await?;
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
                // Boxed: see send_http1.
                let sender = Box::pin(async {
                    let tls = self.connect_mesh(addr, dest.h2.clone()).await?;
                    h2_handshake(addr, tls).await
                })
                .await?;
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

/// Idle keep-alive HTTP/1 connections, by destination. A connection goes
/// back as soon as its response head has arrived (its body may still be
/// streaming) and is handed out again only once hyper says it is ready for
/// another request: the most recently used first, so few connections stay
/// warm. Closed ones, and ones unused for the idle timeout, are dropped.
struct H1Pool {
    idle: Mutex<HashMap<OrigDstAddr, Vec<(H1Sender, Instant)>>>,
    timeout: Duration,
}

impl H1Pool {
    fn new(timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OrigDstAddr, Vec<(H1Sender, Instant)>>> {
        // A map of connections stays consistent even if a holder panicked.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pooled connection to `addr` ready for a request, if there is one.
    fn checkout(&self, addr: OrigDstAddr, now: Instant) -> Option<H1Sender> {
        let mut idle = self.lock();
        let list = idle.get_mut(&addr)?;
        list.retain(|(s, used)| {
            !s.is_closed() && now.saturating_duration_since(*used) < self.timeout
        });
        let ready = list.iter().rposition(|(s, _)| s.is_ready())?;
        Some(list.remove(ready).0)
    }

    fn checkin(&self, addr: OrigDstAddr, sender: H1Sender, now: Instant) {
        let mut idle = self.lock();
        let list = idle.entry(addr).or_default();
        if list.len() < H1_IDLE_PER_DST {
            list.push((sender, now));
        }
    }

    /// Drops closed and idle connections; returns how many are left.
    fn sweep(&self, now: Instant) -> usize {
        let mut idle = self.lock();
        idle.retain(|_, list| {
            list.retain(|(s, used)| {
                !s.is_closed() && now.saturating_duration_since(*used) < self.timeout
            });
            !list.is_empty()
        });
        idle.values().map(Vec::len).sum()
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
