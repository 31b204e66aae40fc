//! The `trellis.discovery.v1.Discovery` service. Each stream follows the
//! shared answer to its question (`crate::answers`): computed once for
//! every stream that asks it, again only when something it read changed,
//! and sent only when it differs from the last one sent. No stream answers
//! before the source's first complete state.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Request, Response, Status};
use trellis_api::discovery::v1 as pb;
use trellis_api::discovery::v1::discovery_server::Discovery;
use trellis_core::shutdown::Shutdown;

use crate::answers::{Answers, InboundQuestion, Question, ResolveQuestion, Subscription};
use crate::metrics::{Metrics, OpenStream};

pub(crate) struct DiscoveryService {
    pub answers: Arc<Answers>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
}

type Snapshots<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One stream's state between items.
struct Follow<Q: Question> {
    sub: Subscription<Q>,
    last: Option<Arc<Q::Answer>>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    ended: bool,
    _open: OpenStream,
}

impl DiscoveryService {
    /// A stream of the answers to `q`, deduplicated; ends with UNAVAILABLE
    /// when the controller shuts down.
    fn follow<Q>(&self, q: Q) -> Snapshots<Q::Answer>
    where
        Q: Question,
        Q::Answer: Clone,
    {
        let state = Follow {
            sub: self.answers.subscribe(q),
            last: None,
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            ended: false,
            _open: self.metrics.stream_opened(Q::RPC),
        };
        Box::pin(futures_util::stream::unfold(state, |mut s| async move {
            if s.ended {
                return None;
            }
            loop {
                let now = s.sub.rx.borrow_and_update().clone();
                if let Some(now) = now {
                    if s.last.as_deref() != Some(&*now) {
                        s.last = Some(now.clone());
                        s.metrics.update_sent(Q::RPC);
                        return Some((Ok(Q::Answer::clone(&now)), s));
                    }
                }
                tokio::select! {
                    changed = s.sub.rx.changed() => if changed.is_err() { return None },
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
        Ok(Response::new(self.follow(ResolveQuestion {
            target,
            client_namespace: client_ns,
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
        Ok(Response::new(self.follow(InboundQuestion {
            namespace: req.namespace,
            pod: req.pod,
        })))
    }
}
