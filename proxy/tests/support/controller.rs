//! A fake controller: the real `Discovery` gRPC service on loopback,
//! answering from state the test sets, and pushing a new snapshot to every
//! open stream whenever the test changes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;

use futures_util::Stream;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use trellis_api::discovery::v1 as pb;
use trellis_api::discovery::v1::discovery_server::{Discovery, DiscoveryServer};

#[derive(Clone, Default)]
struct State {
    resolutions: HashMap<String, pb::Resolution>,
    inbound: Option<pb::InboundPolicy>,
    stopped: bool,
}

pub struct FakeController {
    pub addr: SocketAddr,
    state: watch::Sender<State>,
    task: tokio::task::JoinHandle<()>,
}

struct Service {
    state: watch::Receiver<State>,
}

type Snapshots<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Streams `pick(state)` now and after every change, skipping repeats and
/// states where it has nothing to say; ends with UNAVAILABLE once the
/// controller is stopped.
fn snapshots<T, F>(mut rx: watch::Receiver<State>, pick: F) -> Snapshots<T>
where
    T: Clone + PartialEq + Send + Sync + 'static,
    F: Fn(&State) -> Option<T> + Send + Sync + 'static,
{
    let (tx, out) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let (now, stopped) = {
                let s = rx.borrow_and_update();
                (pick(&s), s.stopped)
            };
            if stopped {
                let _ = tx.send(Err(Status::unavailable("stopped"))).await;
                return;
            }
            if let Some(now) = now {
                if last.as_ref() != Some(&now) {
                    if tx.send(Ok(now.clone())).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
    Box::pin(futures_util::stream::unfold(out, |mut out| async move {
        out.recv().await.map(|item| (item, out))
    }))
}

#[tonic::async_trait]
impl Discovery for Service {
    type ResolveStream = Snapshots<pb::Resolution>;
    type InboundStream = Snapshots<pb::InboundPolicy>;

    async fn resolve(
        &self,
        req: Request<pb::ResolveRequest>,
    ) -> Result<Response<Self::ResolveStream>, Status> {
        if self.state.borrow().stopped {
            return Err(Status::unavailable("stopped"));
        }
        let target = req.into_inner().target;
        Ok(Response::new(snapshots(self.state.clone(), move |s| {
            Some(s.resolutions.get(&target).cloned().unwrap_or_default())
        })))
    }

    async fn inbound(
        &self,
        _req: Request<pb::InboundRequest>,
    ) -> Result<Response<Self::InboundStream>, Status> {
        if self.state.borrow().stopped {
            return Err(Status::unavailable("stopped"));
        }
        Ok(Response::new(snapshots(self.state.clone(), |s| {
            s.inbound.clone()
        })))
    }
}

impl FakeController {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (state, rx) = watch::channel(State::default());
        let server = tonic::transport::Server::builder()
            .add_service(DiscoveryServer::new(Service { state: rx }))
            .serve_with_incoming(TcpIncoming::from(listener));
        let task = tokio::spawn(async move {
            let _ = server.await;
        });
        Self { addr, state, task }
    }

    /// Sets what `Resolve(target)` answers (and pushes it to open streams).
    pub fn resolve(&self, target: &str, r: pb::Resolution) {
        self.state
            .send_modify(|s| drop(s.resolutions.insert(target.to_string(), r)));
    }

    pub fn inbound(&self, p: pb::InboundPolicy) {
        self.state.send_modify(|s| s.inbound = Some(p));
    }

    /// Stops serving: open streams break, new connections are refused.
    pub fn stop(&self) {
        self.state.send_modify(|s| s.stopped = true);
        self.task.abort();
    }
}

/// A service resolution with one backend (the service itself).
pub fn service(authority: &str, endpoints: &[(SocketAddr, &str)]) -> pb::Resolution {
    pb::Resolution {
        kind: pb::resolution::Kind::Service as i32,
        authority: authority.to_string(),
        protocol: pb::ProtocolHint::Http1 as i32,
        http_routes: Vec::new(),
        grpc_routes: Vec::new(),
        backends: vec![backend(authority, endpoints)],
    }
}

pub fn backend(authority: &str, endpoints: &[(SocketAddr, &str)]) -> pb::Backend {
    pb::Backend {
        authority: authority.to_string(),
        endpoints: endpoints
            .iter()
            .map(|(addr, name)| pb::Endpoint {
                addr: addr.to_string(),
                weight: 1,
                identity: String::new(),
                namespace: "test".into(),
                workload: (*name).to_string(),
                pod: (*name).to_string(),
                protocol: 0,
            })
            .collect(),
    }
}
