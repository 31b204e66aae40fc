//! `Upgrade` (WebSocket over HTTP/1.1) and `CONNECT`: a dedicated upstream
//! connection (an upgraded connection cannot go back to a pool), then a
//! byte tunnel once both sides agree.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use trellis_core::addr::OrigDstAddr;
use trellis_core::shutdown::Shutdown;

use crate::error::ProxyError;
use crate::mesh::Destination;
use crate::upstream::Upstreams;

/// Tunnels `req` to `addr`, inside mutual TLS when `mesh_dst` is given.
pub async fn forward_to(
    upstreams: &Upstreams,
    shutdown: &Shutdown,
    addr: OrigDstAddr,
    mesh_dst: Option<&Destination>,
    mut req: Request<Incoming>,
) -> Result<Response<Incoming>, ProxyError> {
    let upstream_err = |e: hyper::Error| ProxyError::Upstream {
        addr,
        source: Box::new(e),
    };
    // To a meshed destination the tunnel runs inside mutual TLS.
    let mut sender = match mesh_dst {
        Some(dst) => {
            let tls = upstreams.connect_mesh(addr, dst.tcp.clone()).await?;
            handshake(shutdown, tls).await.map_err(upstream_err)?
        }
        None => {
            let tcp = upstreams.connect(addr).await?;
            handshake(shutdown, tcp).await.map_err(upstream_err)?
        }
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let is_connect = req.method() == Method::CONNECT;
    let mut rsp = sender.send_request(req).await.map_err(upstream_err)?;
    let agreed = if is_connect {
        rsp.status().is_success()
    } else {
        rsp.status() == StatusCode::SWITCHING_PROTOCOLS
    };
    if agreed {
        let upstream_upgrade = hyper::upgrade::on(&mut rsp);
        shutdown.spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                        Ok((up, down)) => {
                            tracing::debug!(bytes.up = up, bytes.down = down, "tunnel closed")
                        }
                        Err(e) => tracing::debug!(error = %e, "tunnel closed"),
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
    }
    Ok(rsp)
}

async fn handshake<I>(
    shutdown: &Shutdown,
    io: I,
) -> Result<hyper::client::conn::http1::SendRequest<Incoming>, hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    shutdown.spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "tunnel upstream connection ended");
        }
    });
    Ok(sender)
}
