//! The life of one proxied connection, in phases shared by both listeners:
//!
//! ```text
//! accept ──► Accepted ──► detect ──► Detected ──► inbound::serve | outbound::serve ──► record
//!  (client addr,          (first bytes,            (each direction's own
//!   original dst,          or timeout,              pipeline: see those
//!   loop check)            or opaque port)          modules)
//! ```
//!
//! Every exit goes through the [`ConnLog`] guard, which writes the access log
//! event (with whose fault a failure was) and settles the TCP metrics.

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
use trellis_core::tls::{self, Sniff};

use crate::config::Config;
use crate::detect::{self, Protocol, Reason};
use crate::error::ProxyError;
use crate::http::record::Handles;
use crate::http::{Recorder, ServerLimits};
use crate::io::ByteCounts;
use crate::mesh::{Mesh, ALPN_H2, ALPN_TCP};
use crate::metrics::{Direction, Label, Metrics, RouteLabels, TcpLabels};
use crate::orig_dst::OrigDstLookup;
use crate::probe::ProbeSources;
use crate::service::Services;
use crate::upstream::Upstreams;

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
    /// Request spans, when a collector is configured.
    pub tracing: crate::trace::Tracing,
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
    let forwarded = match ctx.direction {
        Direction::Inbound => crate::inbound::serve(&ctx, detected, &mut log).await,
        Direction::Outbound => crate::outbound::serve(&ctx, detected, &mut log).await,
    };
    if let Err(e) = forwarded {
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

impl ListenerContext {
    /// Starts a request's golden metrics under `labels` (through its
    /// connection's metric `handles`), and its span.
    pub fn start_request<B>(
        &self,
        orig_dst: OrigDstAddr,
        req: &http::Request<B>,
        handles: &Arc<Handles>,
        labels: RouteLabels,
    ) -> Recorder {
        tracing::debug!(method = %req.method(), route = %labels.route, "request");
        let span = self.tracing.request(self.direction, orig_dst, req);
        let grpc = crate::http::headers::is_grpc(req.headers());
        Recorder::start(self.metrics.clone(), handles.clone(), labels, grpc, span)
    }

    /// The `service` label of a request to no particular service: its
    /// authority (without a port: the scheme's, 80 for http).
    pub fn service_label<B>(&self, req: &http::Request<B>) -> Label {
        let authority = crate::http::headers::authority_of(req).unwrap_or("");
        self.metrics.services.get(authority, 80)
    }

    /// Limits of the HTTP servers on client connections.
    pub fn server_limits(&self) -> ServerLimits {
        ServerLimits {
            header_read_timeout: self.config.header_read_timeout,
            max_header_bytes: self.config.max_header_bytes,
        }
    }
}

/// Writes one access-log event per connection, and settles its TCP metrics,
/// however the connection ends.
pub struct ConnLog {
    direction: Direction,
    client: ClientAddr,
    orig_dst: Option<OrigDstAddr>,
    protocol: Option<Protocol>,
    error: Option<ProxyError>,
    start: Instant,
    pub counts: Arc<ByteCounts>,
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
    pub fn open(&mut self, peer: Label, tls: bool) {
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
                        duration_ms = duration.as_millis() as u64, reason = v.reason, fault = v.fault.as_str(), error = %e,
                        "connection failed"
                    )
                } else {
                    tracing::info!(
                        target: "trellis::access",
                        direction, client.addr = %self.client, dst.addr = %dst, protocol,
                        bytes.read = read, bytes.written = written,
                        duration_ms = duration.as_millis() as u64, reason = v.reason, fault = v.fault.as_str(), error = %e,
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

    /// What one connection's task holds, at most: its future, whose size is
    /// that of its largest phase. An idle keep-alive connection pays it
    /// (beside hyper's own buffers), so it must not grow unnoticed.
    #[tokio::test]
    async fn the_per_connection_future_stays_small() {
        let config = Config::from_source(&trellis_core::config::MapSource::default()).unwrap();
        let mesh = Mesh::new(None, config.default_inbound_policy).unwrap();
        let ctx = Arc::new(ListenerContext {
            direction: Direction::Inbound,
            orig_dst: Arc::new(crate::orig_dst::FixedOrigDst(([127, 0, 0, 1], 1).into())),
            upstreams: Arc::new(Upstreams::new(
                Duration::from_secs(1),
                Duration::from_secs(1),
            )),
            metrics: Arc::new(Metrics::new()),
            shutdown: Shutdown::new(),
            own_ports: Vec::new(),
            default_route: Label::new("default"),
            no_peer: Label::new(""),
            mesh: Arc::new(mesh),
            services: None,
            probe_sources: Arc::new(ProbeSources::resolve(&[])),
            tracing: crate::trace::Tracing::OFF,
            config: Arc::new(config),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let client = ClientAddr(stream.local_addr().unwrap());
        let future = handle(ctx, stream, client);
        let size = std::mem::size_of_val(&future);
        // 9,800 bytes in the test (debug) build when this test was written;
        // a phase that needs more belongs in a Box.
        assert!(
            size <= 10 * 1024,
            "the per-connection future is {size} bytes"
        );
    }

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
