//! Outbound: the pod's own connections, redirected to the outbound
//! listener.
//!
//! ```text
//! Detected ──► resolve the original destination ──┬─ HTTP ─┬─ a service ──► balanced: per request (outbound/balanced.rs)
//!              (controller, destinations file,    │        └─ one destination ──► per request (outbound/http.rs)
//!               outbound mTLS policy)             └─ anything else ──► tcp: one endpoint, copy (outbound/tcp.rs)
//! ```
//!
//! A meshed destination is reached over mutual TLS, verifying its SPIFFE ID:
//! HTTP as HTTP/2 (ALPN `trellis.h2`), anything else as a byte stream (ALPN
//! `trellis.tcp`). Anything else goes as it is (the client's own TLS
//! untouched) to the original destination, if the outbound mTLS policy
//! allows plaintext there ([`crate::plaintext`]).

mod balanced;
mod http;
mod tcp;

use std::sync::Arc;

use trellis_core::addr::OrigDstAddr;

use crate::conn::{Accepted, ConnLog, Detected, ListenerContext};
use crate::detect::Protocol;
use crate::error::ProxyError;
use crate::io::ClientIo;
use crate::mesh::{Destination, Mesh};
use crate::metrics::Metrics;
use crate::plaintext::Why;
use crate::service::{Resolution, ServiceState};

/// Where an outbound connection goes.
pub enum Target {
    /// A service the controller resolved: balanced.
    Service(Arc<ServiceState>),
    /// One meshed destination: mutual TLS to it.
    Mesh(Arc<Destination>),
    /// As it is, to the original destination.
    Plain,
}

/// Serves one outbound connection: resolves where it goes, then forwards
/// it as what it was detected to be.
pub async fn serve(
    ctx: &Arc<ListenerContext>,
    d: Detected,
    log: &mut ConnLog,
) -> Result<(), ProxyError> {
    let Accepted {
        stream, orig_dst, ..
    } = d.accepted;
    let http = matches!(d.protocol, Protocol::Http1 | Protocol::H2);
    let target = match resolve(ctx, orig_dst).await {
        Ok(t) => t,
        Err(e) if http => {
            // Each request is answered with the refusal's reason.
            log.open(ctx.no_peer.clone(), false);
            let io = ClientIo::new(stream, d.prefix, log.counts.clone());
            let limits = ctx.server_limits();
            let verdict = e.verdict();
            let _ =
                crate::http::server::refuse(io, d.protocol, verdict, limits, &ctx.shutdown).await;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if !http {
        return tcp::forward(ctx, target, orig_dst, stream, d.prefix, log).await;
    }
    match &target {
        Target::Mesh(dst) => log.open(dst.peer.clone(), true),
        // Per request: the peer and TLS of each request's endpoint are in
        // the HTTP metrics.
        Target::Service(_) | Target::Plain => log.open(ctx.no_peer.clone(), false),
    }
    let io = ClientIo::new(stream, d.prefix, log.counts.clone());
    match target {
        Target::Service(svc) => balanced::serve(ctx, io, orig_dst, d.protocol, svc).await,
        Target::Mesh(dst) => http::serve(ctx, io, orig_dst, d.protocol, Some(dst)).await,
        Target::Plain => http::serve(ctx, io, orig_dst, d.protocol, None).await,
    }
}

/// What the original destination is, from the proxy's one source of
/// destinations: the controller (a service; a pod, whose identity says
/// whether it is meshed; or unknown), or without a controller the
/// destinations file. What is not meshed goes in plaintext, as addressed,
/// if the outbound mTLS policy lets it ([`crate::plaintext`]).
async fn resolve(ctx: &ListenerContext, orig_dst: OrigDstAddr) -> Result<Target, ProxyError> {
    let (Some(services), Some(cc)) = (&ctx.services, &ctx.config.controller) else {
        return match ctx.mesh.destination(orig_dst.get()) {
            Some(dst) => Ok(meshed(ctx, orig_dst, dst)),
            None => plaintext(ctx, orig_dst, Why::Unknown),
        };
    };
    match services.resolve(orig_dst, cc.resolve_timeout).await {
        Some(Resolution::Service(svc)) => Ok(Target::Service(svc)),
        Some(Resolution::Endpoint(ep)) => match &ep.identity {
            Some(id) => match ctx.mesh.destination_for(id) {
                Some(dst) => Ok(meshed(ctx, orig_dst, dst)),
                None => plaintext(ctx, orig_dst, Why::NoLocalIdentity),
            },
            None => plaintext(ctx, orig_dst, Why::NoIdentity),
        },
        Some(Resolution::Unknown) => {
            ctx.metrics.traffic.unknown_destinations.inc();
            plaintext(ctx, orig_dst, Why::Unknown)
        }
        None => plaintext(ctx, orig_dst, Why::Unresolved),
    }
}

/// A meshed destination, remembered as one.
fn meshed(ctx: &ListenerContext, orig_dst: OrigDstAddr, dst: Arc<Destination>) -> Target {
    ctx.mesh.outbound.seen_meshed(orig_dst.get());
    Target::Mesh(dst)
}

/// Plaintext to `orig_dst`, if the outbound mTLS policy allows it.
fn plaintext(ctx: &ListenerContext, orig_dst: OrigDstAddr, why: Why) -> Result<Target, ProxyError> {
    check_plaintext(&ctx.mesh, &ctx.metrics, orig_dst, why).map(|()| Target::Plain)
}

/// Asks the outbound mTLS policy whether `dst` may be reached in
/// plaintext; a refusal is counted, logged and returned as the error.
fn check_plaintext(
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

/// How to reach one endpoint of a service: mutual TLS to its identity, or
/// plaintext when the outbound mTLS policy allows it: an endpoint named
/// without an identity, or a meshed one while this proxy has no identity
/// of its own (its proxy then refuses it under `all-authenticated`).
fn endpoint_destination(
    ctx: &ListenerContext,
    addr: OrigDstAddr,
    id: Option<&trellis_core::spiffe::SpiffeId>,
) -> Result<Option<Arc<Destination>>, ProxyError> {
    let why = match id {
        Some(id) => match ctx.mesh.destination_for(id) {
            Some(dest) => {
                ctx.mesh.outbound.seen_meshed(addr.get());
                return Ok(Some(dest));
            }
            None => {
                tracing::warn!(identity = %id, "meshed endpoint, but this proxy has no identity");
                Why::NoLocalIdentity
            }
        },
        None => Why::NoIdentity,
    };
    check_plaintext(&ctx.mesh, &ctx.metrics, addr, why)?;
    Ok(None)
}
