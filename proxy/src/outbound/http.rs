//! Outbound HTTP to one destination (a meshed pod, or plaintext to the
//! original destination), one request at a time, in stages:
//!
//! ```text
//! label ──► prepare ─────────────────────────► send ─────────────────────────────► respond
//! (route,   (no h2c upgrade offer; a tunnel:    (meshed: HTTP/2 in mutual TLS, the   (client's HTTP version,
//!  peer)     its own connection; else           app's version in trellis-orig-proto; recorded when the body
//!            hop-by-hop headers off)            else the HTTP/1 pool or HTTP/2)      ends)
//! ```

use std::sync::Arc;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use trellis_core::addr::OrigDstAddr;

use crate::body::ReqBody;
use crate::conn::ListenerContext;
use crate::detect::Protocol;
use crate::error::ProxyError;
use crate::http::headers::{
    into_mesh_request, remove_hop_by_hop, socket_authority, strip_h2c_upgrade, wants_tunnel,
};
use crate::http::record::Handles;
use crate::http::{respond, server, tunnel, ProxyBody, Recorder};
use crate::mesh::Destination;
use crate::metrics::RouteLabels;

/// What every request on one outbound HTTP connection shares.
struct Connection {
    ctx: Arc<ListenerContext>,
    /// The golden-metric handles of this connection's requests.
    handles: Arc<Handles>,
    orig_dst: OrigDstAddr,
    /// The original destination as an authority: a meshed request's when
    /// an HTTP/1 client sent no Host header.
    authority: Authority,
    /// Meshed: mutual TLS to this destination. `None`: plaintext.
    mesh: Option<Arc<Destination>>,
    client: Protocol,
}

/// Serves one outbound HTTP connection to one destination until it closes.
pub(super) async fn serve<I>(
    ctx: &Arc<ListenerContext>,
    io: I,
    orig_dst: OrigDstAddr,
    client: Protocol,
    mesh: Option<Arc<Destination>>,
) -> Result<(), ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(Connection {
        ctx: ctx.clone(),
        handles: Arc::default(),
        orig_dst,
        authority: socket_authority(orig_dst),
        mesh,
        client,
    });
    let handle = move |req| Arc::clone(&conn).handle(req);
    server::serve(io, client, ctx.server_limits(), &ctx.shutdown, handle).await
}

impl Connection {
    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let recorder = self.label(&req);
        // The upstream request continues the client span.
        recorder.span.inject(req.headers_mut());
        let result = self.send(req).await;
        respond::deliver(
            result.map(|r| (r, None)),
            recorder,
            self.client != Protocol::H2,
        )
    }

    /// Stage 1: the request's metric labels, and its timing started.
    fn label(&self, req: &Request<Incoming>) -> Recorder {
        let ctx = &self.ctx;
        let peer = match &self.mesh {
            Some(dst) => dst.peer.clone(),
            None => ctx.no_peer.clone(),
        };
        let labels = RouteLabels {
            direction: ctx.direction,
            service: ctx.service_label(req),
            route: ctx.default_route.clone(),
            tls: self.mesh.is_some(),
            peer,
        };
        ctx.start_request(self.orig_dst, req, &self.handles, labels)
    }

    /// Stages 2 and 3: the request prepared for the upstream, and sent.
    async fn send(&self, mut req: Request<Incoming>) -> Result<Response<Incoming>, ProxyError> {
        let ctx = &self.ctx;
        strip_h2c_upgrade(req.headers_mut());
        if wants_tunnel(&req) {
            let mesh = self.mesh.as_deref();
            return tunnel::forward_to(&ctx.upstreams, &ctx.shutdown, self.orig_dst, mesh, req)
                .await;
        }
        remove_hop_by_hop(req.headers_mut());
        let mut req = req.map(ReqBody::Stream);
        let client_h1 = self.client != Protocol::H2;
        match &self.mesh {
            Some(dst) => {
                into_mesh_request(&mut req, client_h1, &self.authority);
                ctx.upstreams.send_mesh(self.orig_dst, dst, req).await
            }
            None if client_h1 => ctx.upstreams.send_http1(self.orig_dst, req).await,
            None => ctx.upstreams.send_http2(self.orig_dst, req).await,
        }
    }
}
