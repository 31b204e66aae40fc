//! Outbound opaque TCP (and TLS that is not the mesh's): one upstream per
//! connection, then bytes copied both ways until both sides close.

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::Instant;
use trellis_core::addr::OrigDstAddr;

use super::{endpoint_destination, Target};
use crate::conn::{ConnLog, ListenerContext};
use crate::error::ProxyError;
use crate::io::{copy_both, copy_opaque, ClientIo};
use crate::service::ServiceState;

/// Forwards one opaque connection to its target.
pub(super) async fn forward(
    ctx: &ListenerContext,
    target: Target,
    orig_dst: OrigDstAddr,
    stream: TcpStream,
    prefix: Bytes,
    log: &mut ConnLog,
) -> Result<(), ProxyError> {
    match target {
        Target::Mesh(dst) => {
            log.open(dst.peer.clone(), true);
            let mut upstream = ctx
                .upstreams
                .connect_mesh(orig_dst, dst.tcp.clone())
                .await?;
            let mut client = ClientIo::new(stream, prefix, log.counts.clone());
            copy_both(&mut client, &mut upstream)
                .await
                .map(drop)
                .map_err(|e| ProxyError::copy_failed(orig_dst, e))
        }
        Target::Service(svc) => to_service(ctx, &svc, stream, prefix, log).await,
        Target::Plain => {
            log.open(ctx.no_peer.clone(), false);
            let upstream = ctx.upstreams.connect(orig_dst).await?;
            copy_opaque(stream, prefix, upstream, &log.counts)
                .await
                .map(drop)
                .map_err(|e| ProxyError::copy_failed(orig_dst, e))
        }
    }
}

/// To a service: one endpoint per connection, by the balancer; a
/// connection that fails is tried once more on another pick.
async fn to_service(
    ctx: &ListenerContext,
    svc: &Arc<ServiceState>,
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
        let dest = match endpoint_destination(ctx, addr, ep.identity.as_ref()) {
            Ok(d) => d,
            Err(e) => {
                svc.finish(BACKEND, ep.addr, started.elapsed(), false);
                last_err = Some(e);
                continue;
            }
        };
        match &dest {
            Some(dst) => match ctx.upstreams.connect_mesh(addr, dst.tcp.clone()).await {
                Ok(mut upstream) => {
                    svc.finish(BACKEND, ep.addr, started.elapsed(), true);
                    log.open(dst.peer.clone(), true);
                    let mut client = ClientIo::new(stream, prefix, log.counts.clone());
                    return copy_both(&mut client, &mut upstream)
                        .await
                        .map(drop)
                        .map_err(|e| ProxyError::copy_failed(addr, e));
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
                    return copy_opaque(stream, prefix, upstream, &log.counts)
                        .await
                        .map(drop)
                        .map_err(|e| ProxyError::copy_failed(addr, e));
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
