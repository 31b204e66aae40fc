//! The life of one proxied connection, in phases:
//!
//! ```text
//! accept ──► Accepted ──► detect ──► Detected ──► forward (HTTP | opaque) ──► record
//!  (client addr,          (first bytes,           (connect the original
//!   original dst,          or timeout,             destination, stream
//!   loop check)            or opaque port)         both ways)
//! ```
//!
//! Forwarding depends on the direction and what was detected:
//!
//! - outbound to a meshed destination: mutual TLS to the peer proxy,
//!   verifying its SPIFFE ID — HTTP as HTTP/2 (ALPN `trellis.h2`), anything
//!   else as a byte stream (ALPN `trellis.tcp`); to anything else: plaintext
//!   (or the client's own TLS, untouched) to the original destination;
//! - inbound mesh TLS (a ClientHello offering a mesh ALPN): terminated, the
//!   peer's identity taken from its certificate, then authorized;
//! - inbound anything else: authorized as an unauthenticated peer (HTTP per
//!   request, opaque TCP before a byte reaches the application).
//!
//! Every exit goes through the [`ConnLog`] guard, which writes the access log
//! event and settles the TCP metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;
use tokio::time::Instant;
use trellis_core::addr::{ClientAddr, OrigDstAddr};
use trellis_core::shutdown::Shutdown;

use crate::config::Config;
use crate::detect::{self, Protocol, Reason};
use crate::error::ProxyError;
use crate::http::{self, HttpContext, InboundAuthz, ServerLimits};
use crate::io::{copy_opaque, ByteCounts, ClientIo};
use crate::mesh::{Destination, Mesh, ALPN_H2, ALPN_TCP};
use crate::metrics::{Direction, Label, Metrics, TcpLabels};
use crate::orig_dst::OrigDstLookup;
use crate::plaintext::Why;
use crate::policy::{Authorize, ConnFacts};
use crate::probe::ProbeSources;
use crate::service::{Resolution, ServiceState, Services};
use crate::upstream::Upstreams;
use trellis_core::spiffe::SpiffeId;
use trellis_core::tls::{self, HandshakeFailure, Sniff};

/// What every connection of one listener shares.
pub struct ListenerContext {
    pub direction: Direction,
    pub config: Arc<Config>,
    pub orig_dst: Arc<dyn OrigDstLookup>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    /// The proxy's own listening ports: a connection whose original
    /// destination is one of them (on this host) would loop.
    pub own_ports: Vec<u16>,
    pub default_route: Label,
    pub no_peer: Label,
    pub mesh: Arc<Mesh>,
    /// Destinations, routes and endpoints from the controller, if one is
    /// configured.
    pub services: Option<Arc<Services>>,
    /// Where kubelet probes come from.
    pub probe_sources: Arc<ProbeSources>,
}

/// Phase 1 done: who connected, and where they meant to go.
pub struct Accepted {
    pub stream: TcpStream,
    pub client: ClientAddr,
    pub orig_dst: OrigDstAddr,
}

/// Phase 2 done: what the client speaks, with the bytes already read.
pub struct Detected {
    pub accepted: Accepted,
    pub protocol: Protocol,
    pub prefix: Bytes,
    /// Inbound TLS for the mesh: the mesh ALPN the ClientHello offers.
    pub mesh_alpn: Option<&'static [u8]>,
}

/// Runs one connection through every phase.
pub async fn handle(ctx: Arc<ListenerContext>, stream: TcpStream, client: ClientAddr) {
    let mut log = ConnLog::start(&ctx, client);
    let accepted = match accept(&ctx, stream, client) {
        Ok(a) => a,
        Err(e) => return log.failed(e),
    };
    log.orig_dst = Some(accepted.orig_dst);
    let detected = match detect(&ctx, accepted, &log.counts).await {
        Ok(d) => d,
        Err(e) => return log.failed(e),
    };
    log.protocol = Some(detected.protocol);
    if let Err(e) = forward(&ctx, detected, &mut log).await {
        ctx.metrics.tls_failure(ctx.direction, &e);
        log.failed(e)
    }
}

/// Phase 1: the original destination, refusing connections to the proxy
/// itself (which would loop forever) and, inbound, connections meant for
/// an address that is not this pod's (which the proxy would otherwise
/// relay as uid 7102, past the pod's outbound capture).
fn accept(
    ctx: &ListenerContext,
    stream: TcpStream,
    client: ClientAddr,
) -> Result<Accepted, ProxyError> {
    let orig_dst = ctx
        .orig_dst
        .orig_dst(&stream)
        .map_err(ProxyError::NoOrigDst)?;
    let local = stream.local_addr().map_err(ProxyError::Client)?;
    if is_loop(orig_dst.get(), local, &ctx.own_ports) {
        return Err(ProxyError::Loop(orig_dst));
    }
    if ctx.direction == Direction::Inbound && !is_own_address(orig_dst.get(), local) {
        let refused = crate::policy::Decision::Deny("foreign_destination");
        ctx.metrics
            .authz(ctx.direction, orig_dst.get().port(), refused);
        return Err(ProxyError::ForeignDestination(orig_dst));
    }
    Ok(Accepted {
        stream,
        client,
        orig_dst,
    })
}

/// A connection loops when its original destination is the socket it
/// arrived on (it was not redirected: someone dialled the proxy port), or
/// one of the proxy's own ports on a local address.
pub(crate) fn is_loop(orig_dst: SocketAddr, local: SocketAddr, own_ports: &[u16]) -> bool {
    if orig_dst == local {
        return true;
    }
    let ip = orig_dst.ip();
    own_ports.contains(&orig_dst.port())
        && (ip.is_loopback() || ip.is_unspecified() || ip == local.ip())
}

/// Whether an inbound connection's original destination is an address of
/// this pod. Redirected inbound connections arrive on the pod's address
/// (the socket's local address: the fast path); any other local address
/// of the pod is recognised by binding to it. A loopback destination never
/// arrives from outside, so it is refused.
pub(crate) fn is_own_address(orig_dst: SocketAddr, local: SocketAddr) -> bool {
    let ip = orig_dst.ip();
    if ip == local.ip() {
        return true;
    }
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    let domain = socket2::Domain::for_address(orig_dst);
    socket2::Socket::new(domain, socket2::Type::DGRAM, None)
        .and_then(|s| s.bind(&SocketAddr::new(ip, 0).into()))
        .is_ok()
}

/// Phase 2: protocol detection, skipped for opaque ports.
async fn detect(
    ctx: &ListenerContext,
    mut a: Accepted,
    counts: &ByteCounts,
) -> Result<Detected, ProxyError> {
    let opaque_port = ctx.config.is_opaque_port(a.orig_dst.get().port());
    // Inbound with an identity, even an opaque port may receive mesh TLS
    // from a peer proxy (which always speaks first), so it is looked for;
    // anything else there is opaque.
    let look_for_mesh_tls = ctx.direction == Direction::Inbound && ctx.mesh.server.is_some();
    let (protocol, reason, prefix): (Protocol, Reason, BytesMut) =
        if opaque_port && !look_for_mesh_tls {
            (Protocol::Opaque, Reason::OpaquePort, Default::default())
        } else {
            let (p, r, prefix) = detect::detect(&mut a.stream, ctx.config.detect_timeout)
                .await
                .map_err(ProxyError::Client)?;
            match p {
                Protocol::Http1 | Protocol::H2 if opaque_port => {
                    (Protocol::Opaque, Reason::OpaquePort, prefix)
                }
                _ => (p, r, prefix),
            }
        };
    let mut prefix = prefix;
    let mut mesh_alpn = None;
    if protocol == Protocol::Tls && ctx.direction == Direction::Inbound && ctx.mesh.server.is_some()
    {
        mesh_alpn = sniff_mesh_alpn(&mut a.stream, &mut prefix, ctx.config.detect_timeout).await?;
    }
    counts.add_read(prefix.len());
    ctx.metrics.detected(ctx.direction, protocol, reason);
    Ok(Detected {
        accepted: a,
        protocol,
        prefix: prefix.freeze(),
        mesh_alpn,
    })
}

/// Largest ClientHello read before giving up on it as mesh TLS.
const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// Reads the rest of a TLS ClientHello and returns the mesh ALPN it offers,
/// if any (then the proxy terminates it; otherwise it passes through).
async fn sniff_mesh_alpn(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<Option<&'static [u8]>, ProxyError> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tls::sniff_client_hello(buf) {
            Sniff::ClientHello { alpn, .. } => {
                return Ok([ALPN_H2, ALPN_TCP]
                    .into_iter()
                    .find(|m| alpn.iter().any(|a| a == m)))
            }
            Sniff::NotTls => return Ok(None),
            Sniff::NeedMore if buf.len() >= MAX_CLIENT_HELLO => return Ok(None),
            Sniff::NeedMore => {
                match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
                    Err(_) | Ok(Ok(0)) => return Ok(None),
                    Ok(Err(e)) => return Err(ProxyError::Client(e)),
                    Ok(Ok(_)) => {}
                }
            }
        }
    }
}

/// Phase 3: forward to the original destination, by direction and protocol.
async fn forward(ctx: &ListenerContext, d: Detected, log: &mut ConnLog) -> Result<(), ProxyError> {
    let Accepted {
        stream,
        orig_dst,
        client,
    } = d.accepted;
    let port = orig_dst.get().port();
    let counts = log.counts.clone();
    match (ctx.direction, d.protocol, d.mesh_alpn) {
        (Direction::Inbound, Protocol::Tls, Some(alpn)) => {
            let io = ClientIo::new(stream, d.prefix, counts);
            inbound_mesh(ctx, io, orig_dst, alpn, log).await
        }
        (Direction::Inbound, Protocol::Http1 | Protocol::H2, _) => {
            log.open(ctx.no_peer.clone(), false);
            let inbound = Some(InboundAuthz {
                mesh: ctx.mesh.clone(),
                port,
                peer: None,
                probe_source: ctx.probe_sources.contains(client.get().ip()),
            });
            let hctx = http_context(ctx, orig_dst, d.protocol, Outbound::Plain, inbound, false);
            let io = ClientIo::new(stream, d.prefix, counts);
            serve_http(ctx, io, hctx).await
        }
        (Direction::Outbound, Protocol::Http1 | Protocol::H2, _) => {
            let target = match outbound_target(ctx, orig_dst).await {
                Ok(t) => t,
                Err(e) => {
                    // Each request is answered with the refusal's reason.
                    log.open(ctx.no_peer.clone(), false);
                    let io = ClientIo::new(stream, d.prefix, counts);
                    let _ = http::refuse(io, d.protocol, e.verdict(), limits(ctx)).await;
                    return Err(e);
                }
            };
            match &target {
                Outbound::Mesh(dst) => log.open(dst.peer.clone(), true),
                // Per request: the peer and TLS of each request's endpoint
                // are in the HTTP metrics.
                Outbound::Service(_) | Outbound::Plain => log.open(ctx.no_peer.clone(), false),
            }
            let hctx = http_context(ctx, orig_dst, d.protocol, target, None, false);
            let io = ClientIo::new(stream, d.prefix, counts);
            serve_http(ctx, io, hctx).await
        }
        (Direction::Outbound, _, _) => match outbound_target(ctx, orig_dst).await? {
            Outbound::Mesh(dst) => {
                log.open(dst.peer.clone(), true);
                let mut upstream = ctx
                    .upstreams
                    .connect_mesh(orig_dst, dst.tcp.clone())
                    .await?;
                let mut client = ClientIo::new(stream, d.prefix, counts);
                copy(&mut client, &mut upstream).await
            }
            Outbound::Service(svc) => opaque_to_service(ctx, &svc, stream, d.prefix, log).await,
            Outbound::Plain => {
                log.open(ctx.no_peer.clone(), false);
                // TLS that is not for the mesh passes through untouched.
                let upstream = ctx.upstreams.connect(orig_dst).await?;
                copy_opaque(stream, d.prefix, upstream, &counts)
                    .await
                    .map(drop)
                    .map_err(ProxyError::Client)
            }
        },
        (Direction::Inbound, _, _) => {
            log.open(ctx.no_peer.clone(), false);
            authorize_connection(ctx, port, None)?;
            let upstream = ctx.upstreams.connect(orig_dst).await?;
            copy_opaque(stream, d.prefix, upstream, &counts)
                .await
                .map(drop)
                .map_err(ProxyError::Client)
        }
    }
}

/// Where an outbound connection goes.
enum Outbound {
    /// A service the controller resolved: balanced.
    Service(Arc<ServiceState>),
    /// One meshed destination: mutual TLS to it.
    Mesh(Arc<Destination>),
    /// As it is, to the original destination.
    Plain,
}

/// What the original destination is: the controller's answer first (a
/// service, or a pod whose identity says whether it is meshed); then, for
/// what the controller does not know or has not answered about, the
/// destinations file; else plaintext, as addressed and counted — if the
/// outbound mTLS policy lets it go in plaintext ([`crate::plaintext`]).
async fn outbound_target(
    ctx: &ListenerContext,
    orig_dst: OrigDstAddr,
) -> Result<Outbound, ProxyError> {
    let mut why = Why::Unknown;
    if let (Some(services), Some(cc)) = (&ctx.services, &ctx.config.controller) {
        match services.resolve(orig_dst, cc.resolve_timeout).await {
            Some(Resolution::Service(svc)) => return Ok(Outbound::Service(svc)),
            Some(Resolution::Endpoint(ep)) => match &ep.identity {
                Some(id) => match ctx.mesh.destination_for(id) {
                    Some(dst) => return Ok(meshed(ctx, orig_dst, dst)),
                    None => why = Why::NoLocalIdentity,
                },
                None => return plaintext(ctx, orig_dst, Why::NoIdentity),
            },
            Some(Resolution::Unknown) => {}
            None => why = Why::Unresolved,
        }
    }
    match ctx.mesh.destination(orig_dst.get()) {
        Some(dst) => Ok(meshed(ctx, orig_dst, dst)),
        None => {
            if ctx.services.is_some() && why == Why::Unknown {
                ctx.metrics.traffic.unknown_destinations.inc();
            }
            plaintext(ctx, orig_dst, why)
        }
    }
}

/// A meshed destination, remembered as one.
fn meshed(ctx: &ListenerContext, orig_dst: OrigDstAddr, dst: Arc<Destination>) -> Outbound {
    ctx.mesh.outbound.seen_meshed(orig_dst.get());
    Outbound::Mesh(dst)
}

/// Plaintext to `orig_dst`, if the outbound mTLS policy allows it.
fn plaintext(
    ctx: &ListenerContext,
    orig_dst: OrigDstAddr,
    why: Why,
) -> Result<Outbound, ProxyError> {
    check_plaintext(&ctx.mesh, &ctx.metrics, orig_dst, why).map(|()| Outbound::Plain)
}

/// Asks the outbound mTLS policy whether `dst` may be reached in
/// plaintext; a refusal is counted, logged and returned as the error.
pub(crate) fn check_plaintext(
    mesh: &Mesh,
    metrics: &Metrics,
    dst: OrigDstAddr,
    why: Why,
) -> Result<(), ProxyError> {
    mesh.outbound.check(dst.get(), why).map_err(|reason| {
        metrics
            .traffic
            .plaintext_refused
            .get_or_create(&crate::metrics::ReasonLabels { reason })
            .inc();
        tracing::warn!(dst.addr = %dst, reason, "plaintext refused: mutual TLS is required");
        ProxyError::PlaintextRefused { dst, reason }
    })
}

/// Opaque TCP to a service: one endpoint per connection, by the balancer;
/// a connection that fails is tried once more on another pick.
async fn opaque_to_service(
    ctx: &ListenerContext,
    svc: &ServiceState,
    stream: TcpStream,
    prefix: Bytes,
    log: &mut ConnLog,
) -> Result<(), ProxyError> {
    const BACKEND: usize = 0;
    let mut last_err = None;
    for _ in 0..2 {
        let Some(ep) = svc.pick(BACKEND) else {
            break;
        };
        let addr = OrigDstAddr::from(ep.addr);
        let started = Instant::now();
        let dest = ep
            .identity
            .as_ref()
            .and_then(|id| ctx.mesh.destination_for(id));
        if dest.is_none() {
            let why = if ep.identity.is_some() {
                Why::NoLocalIdentity
            } else {
                Why::NoIdentity
            };
            if let Err(e) = check_plaintext(&ctx.mesh, &ctx.metrics, addr, why) {
                svc.finish(BACKEND, ep.addr, started.elapsed(), false);
                last_err = Some(e);
                continue;
            }
        }
        match &dest {
            Some(dst) => match ctx.upstreams.connect_mesh(addr, dst.tcp.clone()).await {
                Ok(mut upstream) => {
                    svc.finish(BACKEND, ep.addr, started.elapsed(), true);
                    log.open(dst.peer.clone(), true);
                    let mut client = ClientIo::new(stream, prefix, log.counts.clone());
                    return copy(&mut client, &mut upstream).await;
                }
                Err(e) => {
                    svc.finish(BACKEND, ep.addr, started.elapsed(), false);
                    ctx.metrics.tls_failure(ctx.direction, &e);
                    last_err = Some(e);
                }
            },
            None => match ctx.upstreams.connect(addr).await {
                Ok(upstream) => {
                    svc.finish(BACKEND, ep.addr, started.elapsed(), true);
                    log.open(ctx.no_peer.clone(), false);
                    let counts = log.counts.clone();
                    return copy_opaque(stream, prefix, upstream, &counts)
                        .await
                        .map(drop)
                        .map_err(ProxyError::Client);
                }
                Err(e) => {
                    svc.finish(BACKEND, ep.addr, started.elapsed(), false);
                    last_err = Some(e);
                }
            },
        }
    }
    Err(last_err.unwrap_or_else(|| ProxyError::NoEndpoints {
        service: svc.service().to_string(),
    }))
}

/// Inbound mutual TLS from another proxy: terminate, learn the peer's
/// identity, then serve HTTP/2 or copy bytes, as the ALPN says.
async fn inbound_mesh(
    ctx: &ListenerContext,
    io: ClientIo<TcpStream>,
    orig_dst: OrigDstAddr,
    alpn: &'static [u8],
    log: &mut ConnLog,
) -> Result<(), ProxyError> {
    let Some(server) = ctx.mesh.server.clone() else {
        return Err(ProxyError::Forbidden {
            reason: "no_identity",
        });
    };
    let handshake_err = |source: std::io::Error| ProxyError::TlsHandshake {
        addr: orig_dst,
        reason: HandshakeFailure::from_io(&source).as_str(),
        source,
    };
    let accepting = tokio_rustls::TlsAcceptor::from(server).accept(io);
    let mut tls = match tokio::time::timeout(ctx.config.connect_timeout, accepting).await {
        Err(_) => return Err(handshake_err(std::io::ErrorKind::TimedOut.into())),
        Ok(r) => r.map_err(handshake_err)?,
    };
    let (_, conn) = tls.get_ref();
    let peer = tls::peer_identity(conn.peer_certificates().unwrap_or_default())
        .map_err(|e| handshake_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    let peer_label = Label::new(&peer.to_string());
    log.open(peer_label.clone(), true);
    let port = orig_dst.get().port();
    if alpn == ALPN_H2 {
        let inbound = Some(InboundAuthz {
            mesh: ctx.mesh.clone(),
            port,
            peer: Some(peer),
            probe_source: false,
        });
        let hctx = http_context(ctx, orig_dst, Protocol::H2, Outbound::Plain, inbound, true);
        let hctx = with_peer(hctx, peer_label);
        serve_http(ctx, tls, hctx).await
    } else {
        authorize_connection(ctx, port, Some(&peer))?;
        let mut upstream = ctx.upstreams.connect(orig_dst).await?;
        copy(&mut tls, &mut upstream).await
    }
}

/// Decides an opaque inbound connection; refused ones close before any
/// byte reaches the application.
fn authorize_connection(
    ctx: &ListenerContext,
    port: u16,
    peer: Option<&SpiffeId>,
) -> Result<(), ProxyError> {
    let decision = ctx.mesh.policy().authorize_connection(ConnFacts {
        port,
        peer,
        probe_source: false,
    });
    ctx.metrics.authz(ctx.direction, port, decision);
    if decision.is_allowed() {
        Ok(())
    } else {
        Err(ProxyError::Forbidden {
            reason: decision.reason(),
        })
    }
}

fn http_context(
    ctx: &ListenerContext,
    orig_dst: OrigDstAddr,
    protocol: Protocol,
    target: Outbound,
    inbound: Option<InboundAuthz>,
    from_mesh: bool,
) -> HttpContext {
    let (mesh_dst, service) = match target {
        Outbound::Mesh(d) => (Some(d), None),
        Outbound::Service(s) => (None, Some(s)),
        Outbound::Plain => (None, None),
    };
    HttpContext {
        direction: ctx.direction,
        orig_dst,
        dst_authority: authority(orig_dst),
        protocol,
        upstreams: ctx.upstreams.clone(),
        metrics: ctx.metrics.clone(),
        route: ctx.default_route.clone(),
        tls: mesh_dst.is_some() || from_mesh,
        peer: mesh_dst
            .as_ref()
            .map(|m| m.peer.clone())
            .unwrap_or_else(|| ctx.no_peer.clone()),
        shutdown: ctx.shutdown.clone(),
        mesh_dst,
        inbound,
        from_mesh,
        service,
        mesh: ctx.mesh.clone(),
    }
}

/// The context with the peer's identity as the `peer` label.
fn with_peer(mut hctx: HttpContext, peer: Label) -> HttpContext {
    hctx.peer = peer;
    hctx
}

async fn serve_http<I>(ctx: &ListenerContext, io: I, hctx: HttpContext) -> Result<(), ProxyError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    http::serve(io, Arc::new(hctx), limits(ctx))
        .await
        .map_err(|e| ProxyError::Client(std::io::Error::other(e)))
}

fn limits(ctx: &ListenerContext) -> ServerLimits {
    ServerLimits {
        header_read_timeout: ctx.config.header_read_timeout,
        max_header_bytes: ctx.config.max_header_bytes,
    }
}

/// Copies bytes both ways until both sides close (half-close passed on).
async fn copy<A, B>(a: &mut A, b: &mut B) -> Result<(), ProxyError>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional(a, b)
        .await
        .map(drop)
        .map_err(ProxyError::Client)
}

fn authority(addr: OrigDstAddr) -> ::http::uri::Authority {
    // A socket address always renders as a valid authority.
    ::http::uri::Authority::try_from(addr.to_string())
        .unwrap_or_else(|_| ::http::uri::Authority::from_static("invalid"))
}

/// Writes one access-log event per connection, and settles its TCP metrics,
/// however the connection ends.
struct ConnLog {
    direction: Direction,
    client: ClientAddr,
    orig_dst: Option<OrigDstAddr>,
    protocol: Option<Protocol>,
    error: Option<ProxyError>,
    start: Instant,
    counts: Arc<ByteCounts>,
    metrics: Arc<Metrics>,
    no_peer: Label,
    /// The connection's gauge and byte counter, once its peer is known.
    tcp: Option<(Gauge, Counter)>,
}

impl ConnLog {
    fn start(ctx: &ListenerContext, client: ClientAddr) -> Self {
        Self {
            direction: ctx.direction,
            client,
            orig_dst: None,
            protocol: None,
            error: None,
            start: Instant::now(),
            counts: Arc::new(ByteCounts::default()),
            metrics: ctx.metrics.clone(),
            no_peer: ctx.no_peer.clone(),
            tcp: None,
        }
    }

    /// Counts the connection under its final labels (peer, TLS).
    fn open(&mut self, peer: Label, tls: bool) {
        if self.tcp.is_some() {
            return;
        }
        let labels = TcpLabels {
            direction: self.direction,
            peer,
            tls,
        };
        self.metrics.tcp_total.get_or_create(&labels).inc();
        let open = self.metrics.tcp_open.get_or_create_owned(&labels);
        open.inc();
        self.tcp = Some((open, self.metrics.tcp_bytes.get_or_create_owned(&labels)));
    }

    fn failed(&mut self, e: ProxyError) {
        self.error = Some(e);
    }
}

impl Drop for ConnLog {
    fn drop(&mut self) {
        // A connection that failed before its peer was known still counts.
        self.open(self.no_peer.clone(), false);
        let (read, written) = (self.counts.read(), self.counts.written());
        if let Some((open, bytes)) = &self.tcp {
            open.dec();
            bytes.inc_by(read + written);
        }
        let duration: Duration = self.start.elapsed();
        let dst = self.orig_dst.map(|d| d.to_string()).unwrap_or_default();
        let protocol = self.protocol.map(Protocol::as_str).unwrap_or("");
        let direction = self.direction.as_str();
        match &self.error {
            None => tracing::info!(
                target: "trellis::access",
                direction, client.addr = %self.client, dst.addr = %dst, protocol,
                bytes.read = read, bytes.written = written,
                duration_ms = duration.as_millis() as u64,
                "connection closed"
            ),
            Some(e) => {
                let v = e.verdict();
                if v.warn {
                    tracing::warn!(
                        target: "trellis::access",
                        direction, client.addr = %self.client, dst.addr = %dst, protocol,
                        bytes.read = read, bytes.written = written,
                        duration_ms = duration.as_millis() as u64, reason = v.reason, error = %e,
                        "connection failed"
                    )
                } else {
                    tracing::info!(
                        target: "trellis::access",
                        direction, client.addr = %self.client, dst.addr = %dst, protocol,
                        bytes.read = read, bytes.written = written,
                        duration_ms = duration.as_millis() as u64, reason = v.reason, error = %e,
                        "connection closed with error"
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pods_own_addresses_are_served_inbound() {
        let local: SocketAddr = "127.0.0.1:7143".parse().unwrap();
        // The address the connection arrived on, and any other address of
        // this host.
        assert!(is_own_address("127.0.0.1:8080".parse().unwrap(), local));
        let pod: SocketAddr = "10.0.0.5:7143".parse().unwrap();
        assert!(is_own_address("10.0.0.5:8080".parse().unwrap(), pod));
        // Loopback arriving from outside, or an address that is not local.
        assert!(!is_own_address("127.0.0.1:8080".parse().unwrap(), pod));
        assert!(!is_own_address("192.0.2.77:8080".parse().unwrap(), pod));
        assert!(!is_own_address("0.0.0.0:8080".parse().unwrap(), pod));
    }

    #[test]
    fn loops_are_detected() {
        let own = [7140, 7143];
        let local: SocketAddr = "10.0.0.5:7143".parse().unwrap();
        // Not redirected: someone dialled the proxy port directly.
        assert!(is_loop(local, local, &own));
        assert!(is_loop("127.0.0.1:7140".parse().unwrap(), local, &own));
        assert!(is_loop("10.0.0.5:7140".parse().unwrap(), local, &own));
        // Redirected traffic to an app, or to another pod's proxy port.
        assert!(!is_loop("10.0.0.5:8080".parse().unwrap(), local, &own));
        assert!(!is_loop("10.0.0.6:7143".parse().unwrap(), local, &own));
    }
}
