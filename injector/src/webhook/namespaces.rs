//! Namespaces' labels and annotations, from a cache: the decision needs
//! them for every pod, and a GET per review would put the API server on
//! the admission path twice.
//!
//! [`Namespaces`] is the seam: [`ClusterNamespaces`] is a kube-rs
//! reflector over a metadata-only watch of Namespaces; tests use
//! [`StaticNamespaces`]. A namespace made a moment before its first pod
//! may not have reached the cache yet, so [`lookup`] polls for it a short,
//! bounded while before deciding without it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use trellis_core::shutdown::Shutdown;

use super::metrics::Metrics;
use crate::NamespaceInfo;

/// How often [`lookup`] looks again for a namespace not yet cached.
const POLL: Duration = Duration::from_millis(20);

/// Where namespaces are looked up. Implementations answer from memory.
pub trait Namespaces: Send + Sync + 'static {
    /// The namespace's labels and annotations, if it is cached.
    fn get(&self, name: &str) -> Option<NamespaceInfo>;
    /// Whether the cache has been filled by a complete listing.
    fn synced(&self) -> bool;
}

/// What [`lookup`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(NamespaceInfo),
    /// Not in the cache after the wait: the name, without labels or
    /// annotations.
    Missing(NamespaceInfo),
}

impl Lookup {
    pub fn info(&self) -> &NamespaceInfo {
        match self {
            Self::Found(ns) | Self::Missing(ns) => ns,
        }
    }
}

/// Looks `name` up, polling for at most `wait` while it is missing.
pub async fn lookup(namespaces: &dyn Namespaces, name: &str, wait: Duration) -> Lookup {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(ns) = namespaces.get(name) {
            return Lookup::Found(ns);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Lookup::Missing(NamespaceInfo {
                name: name.to_string(),
                ..Default::default()
            });
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

/// A fixed (but changeable) set of namespaces, for tests and tools.
#[derive(Debug, Default)]
pub struct StaticNamespaces {
    map: RwLock<BTreeMap<String, NamespaceInfo>>,
    synced: AtomicBool,
}

impl StaticNamespaces {
    /// Synced, holding `namespaces`.
    pub fn new(namespaces: impl IntoIterator<Item = NamespaceInfo>) -> Self {
        let s = Self::default();
        for ns in namespaces {
            s.insert(ns);
        }
        s.set_synced(true);
        s
    }

    pub fn insert(&self, ns: NamespaceInfo) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.insert(ns.name.clone(), ns);
    }

    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Release);
    }
}

impl Namespaces for StaticNamespaces {
    fn get(&self, name: &str) -> Option<NamespaceInfo> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(name).cloned()
    }

    fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

type NamespaceMeta = PartialObjectMeta<Namespace>;

/// The cluster's namespaces: a reflector over a metadata-only watch
/// (labels and annotations are all the decision reads). Needs `list` and
/// `watch` on `namespaces`.
pub struct ClusterNamespaces {
    store: Store<NamespaceMeta>,
    synced: Arc<AtomicBool>,
}

impl ClusterNamespaces {
    /// Starts the watch, as a task that ends with `shutdown`. Failures are
    /// logged, counted and retried with kube-rs's default backoff; the
    /// cache keeps its contents meanwhile.
    pub fn start(client: kube::Client, metrics: Arc<Metrics>, shutdown: &Shutdown) -> Arc<Self> {
        let (store, writer) = reflector::store::<NamespaceMeta>();
        let synced = Arc::new(AtomicBool::new(false));
        let api: Api<NamespaceMeta> = Api::all(client);
        let events = watcher(api, watcher::Config::default())
            .modify(|ns| ns.metadata.managed_fields = None)
            .default_backoff();
        let events = reflector::reflector(writer, events);
        let (flag, stop) = (synced.clone(), shutdown.clone());
        shutdown.spawn(async move {
            let mut events = std::pin::pin!(events);
            loop {
                let event = tokio::select! {
                    () = stop.signaled() => return,
                    event = events.next() => event,
                };
                match event {
                    Some(Ok(Event::InitDone)) => {
                        if !flag.swap(true, Ordering::AcqRel) {
                            tracing::info!("namespace cache synced");
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        metrics.namespace_watch_error();
                        tracing::warn!(%error, "namespace watch failed; retrying with backoff, keeping the cache");
                    }
                    None => {
                        tracing::error!("namespace watch ended");
                        return;
                    }
                }
            }
        });
        Arc::new(Self { store, synced })
    }
}

impl Namespaces for ClusterNamespaces {
    fn get(&self, name: &str) -> Option<NamespaceInfo> {
        let ns = self.store.get(&ObjectRef::new(name))?;
        Some(NamespaceInfo {
            name: name.to_string(),
            labels: ns.metadata.labels.clone().unwrap_or_default(),
            annotations: ns.metadata.annotations.clone().unwrap_or_default(),
        })
    }

    fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str) -> NamespaceInfo {
        NamespaceInfo {
            name: name.into(),
            annotations: [("trellis.dev/inject".to_string(), "enabled".to_string())].into(),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn found_at_once() {
        let cache = StaticNamespaces::new([ns("demo")]);
        let start = tokio::time::Instant::now();
        let got = lookup(&cache, "demo", Duration::from_secs(1)).await;
        assert_eq!(got, Lookup::Found(ns("demo")));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn missing_after_the_wait_with_the_name_only() {
        let cache = StaticNamespaces::new([]);
        let start = tokio::time::Instant::now();
        let got = lookup(&cache, "new", Duration::from_secs(1)).await;
        assert_eq!(
            got,
            Lookup::Missing(NamespaceInfo {
                name: "new".into(),
                ..Default::default()
            })
        );
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(got.info().name, "new");
    }

    #[tokio::test(start_paused = true)]
    async fn found_when_it_arrives_during_the_wait() {
        let cache = Arc::new(StaticNamespaces::new([]));
        let later = cache.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            later.insert(ns("late"));
        });
        let start = tokio::time::Instant::now();
        let got = lookup(cache.as_ref(), "late", Duration::from_secs(1)).await;
        assert_eq!(got, Lookup::Found(ns("late")));
        assert!(
            start.elapsed() < Duration::from_millis(400),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn static_namespaces_report_their_sync() {
        let cache = StaticNamespaces::default();
        assert!(!cache.synced());
        cache.set_synced(true);
        assert!(cache.synced());
    }

    /// The real cache against kube-rs's mock API server: a metadata-only
    /// LIST fills it (and marks it synced), a WATCH event adds to it.
    #[tokio::test]
    async fn the_cluster_cache_follows_list_and_watch() {
        type Req = http::Request<kube::client::Body>;
        let (svc, mut handle) = tower_test::mock::pair::<Req, http::Response<String>>();
        let client = kube::Client::new(svc, "default");
        let shutdown = Shutdown::new();
        let cache = ClusterNamespaces::start(client, Arc::new(Metrics::new()), &shutdown);
        assert!(!cache.synced());

        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.uri().path(), "/api/v1/namespaces");
        assert!(!req.uri().query().unwrap_or_default().contains("watch=true"));
        let accept = req.headers()[http::header::ACCEPT].to_str().unwrap();
        assert!(accept.contains("as=PartialObjectMetadataList"), "{accept}");
        let meta = |name: &str, key: &str, value: &str| {
            serde_json::json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": name, "resourceVersion": "1", "annotations": {key: value}},
            })
        };
        let list = serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
            "metadata": {"resourceVersion": "1"},
            "items": [meta("shop", "trellis.dev/inject", "enabled")],
        });
        send.send_response(http::Response::new(list.to_string()));

        let (req, send) = handle.next_request().await.unwrap();
        assert!(req.uri().query().unwrap_or_default().contains("watch=true"));
        let added = serde_json::json!({
            "type": "ADDED",
            "object": meta("late", "config.trellis.dev/proxy-log-level", "debug"),
        });
        send.send_response(http::Response::new(format!("{added}\n")));

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while cache.get("late").is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watch event never arrived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(cache.synced());
        let shop = cache.get("shop").unwrap();
        assert_eq!(shop.annotations["trellis.dev/inject"], "enabled");
        assert_eq!(
            cache.get("late").unwrap().annotations["config.trellis.dev/proxy-log-level"],
            "debug"
        );
        assert_eq!(cache.get("absent"), None);
        shutdown.begin();
    }
}
