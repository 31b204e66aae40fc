//! Inbound: connections to this pod, redirected to the inbound listener.
//!
//! ```text
//! Detected ─┬─ TLS offering a mesh ALPN ─► terminate: the peer proxy's verified identity
//!           │       ├─ trellis.h2 ─► http: per request (inbound/http.rs)
//!           │       └─ trellis.tcp ─► authorize the connection ─► copy to the application
//!           ├─ HTTP/1, HTTP/2 ───────────► http: per request, as an unauthenticated peer
//!           └─ anything else ────────────► authorize the connection ─► copy to the application
//! ```
//!
//! Nothing reaches the application before the inbound policy has allowed
//! it: an opaque connection is decided before its first byte is copied, an
//! HTTP request before it is sent.

mod http;

use std::sync::Arc;

use tokio::net::TcpStream;
use trellis_core::addr::OrigDstAddr;
use trellis_core::spiffe::SpiffeId;
use trellis_core::tls::{self, HandshakeFailure};

use crate::conn::{Accepted, ConnLog, Detected, ListenerContext};
use crate::detect::Protocol;
use crate::error::ProxyError;
use crate::io::{copy_both, copy_opaque, ClientIo};
use crate::mesh::ALPN_H2;
use crate::metrics::Label;
use crate::policy::{Authorize, ConnFacts};

/// Who is on the other end of an inbound connection.
pub enum Peer {
    /// Another proxy, over mutual TLS: its verified identity, and that
    /// identity as the metrics' `peer` label.
    Mesh { id: SpiffeId, label: Label },
    /// Anyone else, in plaintext; `probe_source` when its address is one
    /// kubelet probes come from.
    Plain { probe_source: bool },
}

/// Serves one inbound connection, as what it was detected to be.
pub async fn serve(
    ctx: &Arc<ListenerContext>,
    d: Detected,
    log: &mut ConnLog,
) -> Result<(), ProxyError> {
    let Accepted {
        stream,
        client,
        orig_dst,
    } = d.accepted;
    match (d.protocol, d.mesh_alpn) {
        (Protocol::Tls, Some(alpn)) => {
            let io = ClientIo::new(stream, d.prefix, log.counts.clone());
            from_mesh(ctx, io, orig_dst, alpn, log).await
        }
        (Protocol::Http1 | Protocol::H2, _) => {
            log.open(ctx.no_peer.clone(), false);
            let peer = Peer::Plain {
                probe_source: ctx.probe_sources.contains(client.get().ip()),
            };
            let io = ClientIo::new(stream, d.prefix, log.counts.clone());
            http::serve(ctx, io, orig_dst, d.protocol, peer).await
        }
        _ => {
            log.open(ctx.no_peer.clone(), false);
            authorize_connection(ctx, orig_dst, None)?;
            let upstream = ctx.upstreams.connect(orig_dst).await?;
            copy_opaque(stream, d.prefix, upstream, &log.counts)
                .await
                .map(drop)
                .map_err(|e| ProxyError::copy_failed(orig_dst, e))
        }
    }
}

/// Mutual TLS from another proxy: terminate it, take the peer's identity
/// from its certificate, then serve HTTP/2 or copy bytes, as the ALPN says.
async fn from_mesh(
    ctx: &Arc<ListenerContext>,
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
    let id = tls::peer_identity(conn.peer_certificates().unwrap_or_default())
        .map_err(|e| handshake_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    let label = Label::new(&id.to_string());
    log.open(label.clone(), true);
    if alpn == ALPN_H2 {
        let peer = Peer::Mesh { id, label };
        http::serve(ctx, tls, orig_dst, Protocol::H2, peer).await
    } else {
        authorize_connection(ctx, orig_dst, Some(&id))?;
        let mut upstream = ctx.upstreams.connect(orig_dst).await?;
        copy_both(&mut tls, &mut upstream)
            .await
            .map(drop)
            .map_err(|e| ProxyError::copy_failed(orig_dst, e))
    }
}

/// Decides an opaque inbound connection; refused ones close before any
/// byte reaches the application.
fn authorize_connection(
    ctx: &ListenerContext,
    orig_dst: OrigDstAddr,
    peer: Option<&SpiffeId>,
) -> Result<(), ProxyError> {
    let port = orig_dst.get().port();
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
