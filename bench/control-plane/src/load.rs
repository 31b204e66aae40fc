//! The load client: one HTTP/2 connection per simulated proxy, each with
//! an `Inbound` stream for its own pod and a `Resolve` stream for one
//! service (targets Zipf-skewed: a few services are resolved by many
//! proxies, most by few or none). Every stream keeps its latest answer and
//! when it arrived in a `watch` channel that the churn's waiters follow.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use trellis_api::discovery::v1 as pb;
use trellis_api::discovery::v1::discovery_client::DiscoveryClient;

use crate::cluster::{Cluster, PROXIES_PER_FRONTEND};

/// A stream's latest answer.
#[derive(Debug, Clone)]
pub enum Answer {
    None,
    Resolution(Instant, pb::Resolution),
    Inbound(Instant, pb::InboundPolicy),
}

impl Answer {
    pub fn at(&self) -> Option<Instant> {
        match self {
            Answer::None => None,
            Answer::Resolution(t, _) | Answer::Inbound(t, _) => Some(*t),
        }
    }
}

/// What one stream asks.
#[derive(Debug, Clone)]
pub enum Ask {
    Resolve {
        service: usize,
        target: String,
        client_namespace: String,
    },
    Inbound {
        service: usize,
        namespace: String,
        pod: String,
    },
}

pub struct Stream {
    pub answer: watch::Receiver<Answer>,
    /// Messages received since the churn began, and changes that were
    /// meant to reach this stream.
    pub received_in_churn: AtomicU64,
    pub expected_in_churn: AtomicU64,
}

pub struct Load {
    pub streams: Vec<Arc<Stream>>,
    /// Stream indexes by service: those resolving it, and the Inbound
    /// streams of its pods.
    pub resolving: Vec<Vec<usize>>,
    pub inbound: Vec<Vec<usize>>,
    pub answered: Arc<AtomicUsize>,
    pub messages: Arc<AtomicU64>,
    pub errors: Arc<AtomicU64>,
    pub counting: Arc<std::sync::atomic::AtomicBool>,
}

/// Every proxy's two asks, deterministic for a scale.
pub fn plan(cluster: &Cluster) -> Vec<(Ask, Ask)> {
    let n = cluster.services.len();
    // Zipf (s = 1) over a shuffled order of the services.
    let weights: Vec<f64> = (1..=n).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(n);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let rank_to_service = |r: usize| (r * 7919 + 13) % n;
    let mut rng = StdRng::seed_from_u64(18);
    let mut out = Vec::new();
    for s in &cluster.services[..cluster.scale.frontends()] {
        for slot in 0..PROXIES_PER_FRONTEND {
            let u: f64 = rng.random();
            let rank = cdf.partition_point(|c| *c < u).min(n - 1);
            let target = &cluster.services[rank_to_service(rank)];
            out.push((
                Ask::Inbound {
                    service: s.idx,
                    namespace: s.namespace.clone(),
                    pod: s.pod_name(0, slot),
                },
                Ask::Resolve {
                    service: target.idx,
                    target: target.target(),
                    client_namespace: s.namespace.clone(),
                },
            ));
        }
    }
    out
}

/// Connects every proxy and opens its streams; returns once all are open
/// (not yet answered: see [`Load::answered`]).
pub async fn open(addr: SocketAddr, cluster: &Cluster, services: usize) -> anyhow::Result<Load> {
    let proxies = plan(cluster);
    let mut load = Load {
        streams: Vec::new(),
        resolving: vec![Vec::new(); services],
        inbound: vec![Vec::new(); services],
        answered: Arc::new(AtomicUsize::new(0)),
        messages: Arc::new(AtomicU64::new(0)),
        errors: Arc::new(AtomicU64::new(0)),
        counting: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(30))
        .http2_keep_alive_interval(Duration::from_secs(30));
    let started = Instant::now();
    let total = proxies.len();
    let channels: Vec<anyhow::Result<Channel>> = futures_util::stream::iter(0..total)
        .map(|_| {
            let e = endpoint.clone();
            async move { Ok(e.connect().await?) }
        })
        .buffered(128)
        .collect()
        .await;
    eprintln!(
        "[load] {total} proxy connections in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for ((inbound, resolve), channel) in proxies.into_iter().zip(channels) {
        let channel = channel?;
        for ask in [inbound, resolve] {
            let i = load.streams.len();
            match &ask {
                Ask::Resolve { service, .. } => load.resolving[*service].push(i),
                Ask::Inbound { service, .. } => load.inbound[*service].push(i),
            }
            let (tx, rx) = watch::channel(Answer::None);
            let stream = Arc::new(Stream {
                answer: rx,
                received_in_churn: AtomicU64::new(0),
                expected_in_churn: AtomicU64::new(0),
            });
            load.streams.push(stream.clone());
            tokio::spawn(follow(
                DiscoveryClient::new(channel.clone()).max_decoding_message_size(64 << 20),
                ask,
                tx,
                stream,
                load.answered.clone(),
                load.messages.clone(),
                load.errors.clone(),
                load.counting.clone(),
            ));
        }
    }
    Ok(load)
}

#[allow(clippy::too_many_arguments)] // One task's shared counters, spelled out.
async fn follow(
    mut client: DiscoveryClient<Channel>,
    ask: Ask,
    tx: watch::Sender<Answer>,
    stream: Arc<Stream>,
    answered: Arc<AtomicUsize>,
    messages: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    counting: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut first = true;
    let mut on_message = |answer: Answer| {
        tx.send_replace(answer);
        messages.fetch_add(1, Ordering::Relaxed);
        if counting.load(Ordering::Relaxed) {
            stream.received_in_churn.fetch_add(1, Ordering::Relaxed);
        }
        if first {
            first = false;
            answered.fetch_add(1, Ordering::Relaxed);
        }
    };
    let result: Result<(), tonic::Status> = async {
        match ask {
            Ask::Resolve {
                target,
                client_namespace,
                ..
            } => {
                let mut s = client
                    .resolve(pb::ResolveRequest {
                        target,
                        client_namespace,
                    })
                    .await?
                    .into_inner();
                while let Some(m) = s.message().await? {
                    on_message(Answer::Resolution(Instant::now(), m));
                }
            }
            Ask::Inbound { namespace, pod, .. } => {
                let mut s = client
                    .inbound(pb::InboundRequest { namespace, pod })
                    .await?
                    .into_inner();
                while let Some(m) = s.message().await? {
                    on_message(Answer::Inbound(Instant::now(), m));
                }
            }
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// A random stream-free choice helper for the churn.
pub fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> Option<T> {
    (!items.is_empty()).then(|| items[rng.random_range(0..items.len())])
}
