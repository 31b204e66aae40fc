//! The life of one proxied connection, in phases:
//!
//! ```text
//! accept ──► Accepted ──► detect ──► Detected ──► forward (HTTP | opaque) ──► record
//!  (client addr,          (first bytes,           (connect the original
//!   original dst,          or timeout,             destination, stream
//!   loop check)            or opaque port)         both ways)
//! ```
//!
//! Inbound and outbound connections run the same phases today; they differ
//! in their `direction` (metrics, logs). Mutual TLS and authorization (issue
//! 3) add an authenticate/authorize phase between accept and detect.
//! Every exit goes through the [`ConnLog`] guard, which writes the access log
//! event and settles the TCP metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;
use tokio::time::Instant;
use trellis_core::addr::{ClientAddr, OrigDstAddr};
use trellis_core::shutdown::Shutdown;

use crate::config::Config;
use crate::detect::{self, Protocol, Reason};
use crate::error::ProxyError;
use crate::http::{self, HttpContext, ServerLimits};
use crate::io::{copy_opaque, ByteCounts, ClientIo};
use crate::metrics::{Direction, Label, Metrics, TcpLabels};
use crate::orig_dst::OrigDstLookup;
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
    if let Err(e) = forward(&ctx, detected, &log.counts).await {
        log.failed(e)
    }
}

/// Phase 1: the original destination, refusing connections to the proxy
/// itself (which would loop forever).
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

/// Phase 2: protocol detection, skipped for opaque ports.
async fn detect(
    ctx: &ListenerContext,
    mut a: Accepted,
    counts: &ByteCounts,
) -> Result<Detected, ProxyError> {
    let (protocol, reason, prefix) = if ctx.config.is_opaque_port(a.orig_dst.get().port()) {
        (Protocol::Opaque, Reason::OpaquePort, Default::default())
    } else {
        detect::detect(&mut a.stream, ctx.config.detect_timeout)
            .await
            .map_err(ProxyError::Client)?
    };
    counts.add_read(prefix.len());
    ctx.metrics.detected(ctx.direction, protocol, reason);
    Ok(Detected {
        accepted: a,
        protocol,
        prefix: prefix.freeze(),
    })
}

/// Phase 3: forward to the original destination, by protocol.
async fn forward(
    ctx: &ListenerContext,
    d: Detected,
    counts: &Arc<ByteCounts>,
) -> Result<(), ProxyError> {
    let Accepted {
        stream, orig_dst, ..
    } = d.accepted;
    match d.protocol {
        Protocol::Http1 | Protocol::H2 => {
            let hctx = Arc::new(HttpContext {
                direction: ctx.direction,
                orig_dst,
                dst_authority: authority(orig_dst),
                protocol: d.protocol,
                upstreams: ctx.upstreams.clone(),
                metrics: ctx.metrics.clone(),
                route: ctx.default_route.clone(),
                peer: ctx.no_peer.clone(),
                tls: false,
                shutdown: ctx.shutdown.clone(),
            });
            let limits = ServerLimits {
                header_read_timeout: ctx.config.header_read_timeout,
                max_header_bytes: ctx.config.max_header_bytes,
            };
            let io = ClientIo::new(stream, d.prefix, counts.clone());
            http::serve(io, hctx, limits)
                .await
                .map_err(|e| ProxyError::Client(std::io::Error::other(e)))
        }
        // TLS that is not for the mesh passes through untouched.
        Protocol::Tls | Protocol::Opaque => {
            let upstream = ctx.upstreams.connect(orig_dst).await?;
            copy_opaque(stream, d.prefix, upstream, counts)
                .await
                .map(drop)
                .map_err(ProxyError::Client)
        }
    }
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
    open: Gauge,
    bytes: Counter,
}

impl ConnLog {
    fn start(ctx: &ListenerContext, client: ClientAddr) -> Self {
        let labels = TcpLabels {
            direction: ctx.direction,
            peer: ctx.no_peer.clone(),
            tls: false,
        };
        ctx.metrics.tcp_total.get_or_create(&labels).inc();
        let open = ctx.metrics.tcp_open.get_or_create_owned(&labels);
        open.inc();
        Self {
            direction: ctx.direction,
            client,
            orig_dst: None,
            protocol: None,
            error: None,
            start: Instant::now(),
            counts: Arc::new(ByteCounts::default()),
            open,
            bytes: ctx.metrics.tcp_bytes.get_or_create_owned(&labels),
        }
    }

    fn failed(&mut self, e: ProxyError) {
        self.error = Some(e);
    }
}

impl Drop for ConnLog {
    fn drop(&mut self) {
        self.open.dec();
        let (read, written) = (self.counts.read(), self.counts.written());
        self.bytes.inc_by(read + written);
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
