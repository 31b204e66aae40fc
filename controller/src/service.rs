//! The `trellis.discovery.v1.Discovery` service. Each stream follows the
//! store's snapshots: on every new snapshot it recomputes its answer with
//! the index and sends it only if it differs from the last one sent. No
//! stream answers before the source's first complete state.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use trellis_api::discovery::v1 as pb;
use trellis_api::discovery::v1::discovery_server::Discovery;
use trellis_core::shutdown::Shutdown;

use crate::index::{self, Snapshot};
use crate::metrics::{Metrics, OpenStream, Rpc};
use crate::store::Store;

pub(crate) struct DiscoveryService {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
}

type Snapshots<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One stream's state between items.
struct Follow<T, F> {
    rx: watch::Receiver<Arc<Snapshot>>,
    answer: F,
    last: Option<T>,
    rpc: Rpc,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    ended: bool,
    _open: OpenStream,
}

impl DiscoveryService {
    /// A stream of `answer(snapshot)`, deduplicated; ends with UNAVAILABLE
    /// when the controller shuts down.
    fn follow<T, F>(&self, rpc: Rpc, answer: F) -> Snapshots<T>
    where
        T: Clone + PartialEq + Send + Sync + 'static,
        F: Fn(&Snapshot) -> Option<T> + Send + Sync + 'static,
    {
        let state = Follow {
            rx: self.store.subscribe(),
            answer,
            last: None,
            rpc,
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            ended: false,
            _open: self.metrics.stream_opened(rpc),
        };
        Box::pin(futures_util::stream::unfold(state, |mut s| async move {
            if s.ended {
                return None;
            }
            loop {
                let snap = s.rx.borrow_and_update().clone();
                if snap.synced {
                    if let Some(now) = (s.answer)(&snap) {
                        if s.last.as_ref() != Some(&now) {
                            s.last = Some(now.clone());
                            s.metrics.update_sent(s.rpc);
                            return Some((Ok(now), s));
                        }
                    }
                }
                tokio::select! {
                    changed = s.rx.changed() => if changed.is_err() { return None },
                    () = s.shutdown.signaled() => {
                        s.ended = true;
                        return Some((Err(Status::unavailable("the controller is shutting down")), s));
                    }
                }
            }
        }))
    }
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type ResolveStream = Snapshots<pb::Resolution>;
    type InboundStream = Snapshots<pb::InboundPolicy>;

    async fn resolve(
        &self,
        req: Request<pb::ResolveRequest>,
    ) -> Result<Response<Self::ResolveStream>, Status> {
        let req = req.into_inner();
        let target: SocketAddr = req.target.parse().map_err(|_| {
            Status::invalid_argument(format!("target {:?} is not IP:PORT", req.target))
        })?;
        let client_ns = req.client_namespace;
        tracing::debug!(dst.addr = %target, client.namespace = %client_ns, "resolve stream opened");
        Ok(Response::new(self.follow(Rpc::Resolve, move |snap| {
            Some(index::resolve(snap, target, &client_ns))
        })))
    }

    async fn inbound(
        &self,
        req: Request<pb::InboundRequest>,
    ) -> Result<Response<Self::InboundStream>, Status> {
        let req = req.into_inner();
        if req.namespace.is_empty() || req.pod.is_empty() {
            return Err(Status::invalid_argument("namespace and pod are required"));
        }
        tracing::debug!(pod.namespace = %req.namespace, pod.name = %req.pod, "inbound stream opened");
        Ok(Response::new(self.follow(Rpc::Inbound, move |snap| {
            index::inbound(snap, &req.namespace, &req.pod)
        })))
    }
}
