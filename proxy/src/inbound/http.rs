//! Inbound HTTP, one request at a time, in stages:
//!
//! ```text
//! label ──► admit ──────────────────────────► to the application ──────────► respond
//! (route,   (no h2c upgrade offer; the path    (a tunnel: its own connection;  (client's HTTP version,
//!  peer)     normalised, 400 if ambiguous;      else hop-by-hop headers off,    recorded when the body
//!            the policy: per request, or for    HTTP/1 or HTTP/2 as the app     ends)
//!            the connection for a tunnel)       speaks it)
//! ```

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use trellis_core::addr::OrigDstAddr;

use super::Peer;
use crate::body::ReqBody;
use crate::conn::ListenerContext;
use crate::detect::Protocol;
use crate::error::ProxyError;
use crate::http::headers::{
    from_mesh_request, normalize_request_path, remove_hop_by_hop, strip_h2c_upgrade, wants_tunnel,
};
use crate::http::record::Handles;
use crate::http::{respond, server, tunnel, ProxyBody, Recorder};
use crate::metrics::RouteLabels;
use crate::policy::{Authorize, ConnFacts, RequestFacts};

/// What every request on one inbound HTTP connection shares.
struct Connection {
    ctx: Arc<ListenerContext>,
    /// The golden-metric handles of this connection's requests.
    handles: Arc<Handles>,
    orig_dst: OrigDstAddr,
    peer: Peer,
    /// The client's HTTP version: HTTP/2 from a peer proxy, whatever the
    /// application behind it speaks.
    client: Protocol,
}

/// Serves one inbound HTTP connection until it closes.
pub(super) async fn serve<I>(
    ctx: &Arc<ListenerContext>,
    io: I,
    orig_dst: OrigDstAddr,
    client: Protocol,
    peer: Peer,
) -> Result<(), ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(Connection {
        ctx: ctx.clone(),
        handles: Arc::default(),
        orig_dst,
        peer,
        client,
    });
    let handle = move |req| Arc::clone(&conn).handle(req);
    server::serve(io, client, ctx.server_limits(), &ctx.shutdown, handle).await
}

impl Connection {
    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let recorder = self.label(&req);
        if let Err(e) = self.admit(&mut req) {
            return respond::refused(e, recorder);
        }
        // The application's request continues the server span.
        recorder.span.inject(req.headers_mut());
        let result = self.to_application(req).await;
        respond::deliver(
            result.map(|r| (r, None)),
            recorder,
            self.client != Protocol::H2,
        )
    }

    /// Stage 1: the request's metric labels, and its timing started.
    fn label(&self, req: &Request<Incoming>) -> Recorder {
        let ctx = &self.ctx;
        let (peer, tls) = match &self.peer {
            Peer::Mesh { label, .. } => (label.clone(), true),
            Peer::Plain { .. } => (ctx.no_peer.clone(), false),
        };
        let labels = RouteLabels {
            direction: ctx.direction,
            service: ctx.service_label(req),
            route: ctx.default_route.clone(),
            tls,
            peer,
        };
        ctx.start_request(self.orig_dst, req, &self.handles, labels)
    }

    /// Stage 2: what every request passes before it reaches the
    /// application: no offer to switch to h2c (what would follow is a
    /// connection of requests nobody authorized), its path normalised as
    /// the application will read it (refused when ambiguous), then the
    /// policy — per request, or for the whole connection when the request
    /// asks to become a tunnel.
    fn admit(&self, req: &mut Request<Incoming>) -> Result<(), ProxyError> {
        let ctx = &self.ctx;
        let port = self.orig_dst.get().port();
        let (peer, probe_source) = match &self.peer {
            Peer::Mesh { id, .. } => (Some(id), false),
            Peer::Plain { probe_source } => (None, *probe_source),
        };
        let peer_id = || peer.map(ToString::to_string).unwrap_or_default();
        strip_h2c_upgrade(req.headers_mut());
        if let Err(e) = normalize_request_path(req) {
            tracing::info!(
                peer.identity = peer_id(),
                port,
                reason = e.reason(),
                "request path refused"
            );
            return Err(e.into());
        }
        let conn = ConnFacts {
            port,
            peer,
            probe_source,
        };
        let policy = ctx.mesh.policy();
        let tunnel = wants_tunnel(req);
        let decision = if tunnel {
            policy.authorize_tunnel(conn)
        } else {
            policy.authorize_request(
                conn,
                RequestFacts {
                    method: req.method().as_str(),
                    path: req.uri().path(),
                },
            )
        };
        ctx.metrics.authz(ctx.direction, port, decision);
        if decision.is_allowed() {
            return Ok(());
        }
        tracing::info!(
            peer.identity = peer_id(),
            port,
            reason = decision.reason(),
            tunnel,
            "request refused by policy"
        );
        Err(ProxyError::Forbidden {
            reason: decision.reason(),
        })
    }

    /// Stage 3: the request to the application, in the HTTP version it
    /// speaks (a peer proxy says so in `trellis-orig-proto`).
    async fn to_application(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let ctx = &self.ctx;
        if wants_tunnel(&req) {
            return tunnel::forward_to(&ctx.upstreams, &ctx.shutdown, self.orig_dst, None, req)
                .await;
        }
        remove_hop_by_hop(req.headers_mut());
        let mut req = req.map(ReqBody::Stream);
        let app_h1 = match self.peer {
            Peer::Mesh { .. } => from_mesh_request(&mut req),
            Peer::Plain { .. } => self.client != Protocol::H2,
        };
        if app_h1 {
            ctx.upstreams.send_http1(self.orig_dst, req).await
        } else {
            ctx.upstreams.send_http2(self.orig_dst, req).await
        }
    }
}
