//! Answers shared between streams, computed again only when one of their
//! inputs changed.
//!
//! Each distinct question — a Resolve target and client namespace, an
//! Inbound pod — has one entry, however many streams ask it: its answer
//! (on a `watch` channel the streams follow), and the [`Topic`]s it read
//! (`index::reads`). When the store publishes a snapshot, [`Answers::run`]
//! lists the topics that changed, finds the questions that read them
//! (through a topic → questions map), computes only those again, and sends
//! only the answers that differ. A change to one service thus costs the
//! questions about that service, and wakes only their streams.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use trellis_api::discovery::v1 as pb;
use trellis_core::shutdown::Shutdown;

use crate::index::reads::{changes, Reads, Topic};
use crate::index::{self, Snapshot};
use crate::metrics::{Metrics, Rpc};
use crate::store::Store;

/// A question a stream asks: what it reads, and its answer.
pub(crate) trait Question: Clone + Eq + Hash + Send + 'static {
    type Answer: PartialEq + Send + Sync + 'static;
    const RPC: Rpc;
    /// `None`: no answer yet (the stream waits).
    fn answer(&self, r: &Reads) -> Option<Self::Answer>;
    fn table(tables: &mut Tables) -> &mut Table<Self>;
}

/// `Resolve(target, client_namespace)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ResolveQuestion {
    pub target: SocketAddr,
    pub client_namespace: String,
}

impl Question for ResolveQuestion {
    type Answer = pb::Resolution;
    const RPC: Rpc = Rpc::Resolve;
    fn answer(&self, r: &Reads) -> Option<pb::Resolution> {
        Some(index::resolve_reading(
            r,
            self.target,
            &self.client_namespace,
        ))
    }
    fn table(tables: &mut Tables) -> &mut Table<Self> {
        &mut tables.resolve
    }
}

/// `Inbound(namespace, pod)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct InboundQuestion {
    pub namespace: String,
    pub pod: String,
}

impl Question for InboundQuestion {
    type Answer = pb::InboundPolicy;
    const RPC: Rpc = Rpc::Inbound;
    fn answer(&self, r: &Reads) -> Option<pb::InboundPolicy> {
        index::inbound_reading(r, &self.namespace, &self.pod)
    }
    fn table(tables: &mut Tables) -> &mut Table<Self> {
        &mut tables.inbound
    }
}

/// The latest answer to a question: `None` before there is one.
pub(crate) type Latest<T> = watch::Receiver<Option<Arc<T>>>;

pub(crate) struct Answers {
    tables: Mutex<Tables>,
    metrics: Arc<Metrics>,
}

pub(crate) struct Tables {
    /// The snapshot every answer is of.
    snap: Arc<Snapshot>,
    resolve: Table<ResolveQuestion>,
    inbound: Table<InboundQuestion>,
}

pub(crate) struct Table<Q: Question> {
    entries: HashMap<Q, Entry<Q::Answer>>,
    by_topic: HashMap<Topic, HashSet<Q>>,
}

struct Entry<T> {
    tx: watch::Sender<Option<Arc<T>>>,
    topics: BTreeSet<Topic>,
    streams: usize,
}

impl<Q: Question> Default for Table<Q> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            by_topic: HashMap::new(),
        }
    }
}

impl<Q: Question> Table<Q> {
    /// Computes `q`'s answer in `snap` and files it under what it read.
    fn compute(&mut self, q: &Q, snap: &Snapshot, metrics: &Metrics) -> Option<Q::Answer> {
        // Before the source's first complete state there is no answer
        // (and nothing read: the synced snapshot computes every one).
        let (answer, topics) = if snap.synced {
            let reads = Reads::new(snap);
            let answer = q.answer(&reads);
            metrics.answer_computed(Q::RPC);
            (answer, reads.into_topics())
        } else {
            (None, BTreeSet::new())
        };
        let Some(entry) = self.entries.get_mut(q) else {
            return answer;
        };
        for t in entry.topics.difference(&topics) {
            if let Some(qs) = self.by_topic.get_mut(t) {
                qs.remove(q);
                if qs.is_empty() {
                    self.by_topic.remove(t);
                }
            }
        }
        for t in topics.difference(&entry.topics) {
            self.by_topic
                .entry(t.clone())
                .or_default()
                .insert(q.clone());
        }
        entry.topics = topics;
        answer
    }

    fn subscribe(&mut self, q: &Q, snap: &Snapshot, metrics: &Metrics) -> Latest<Q::Answer> {
        if let Some(entry) = self.entries.get_mut(q) {
            entry.streams += 1;
            return entry.tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        self.entries.insert(
            q.clone(),
            Entry {
                tx,
                topics: BTreeSet::new(),
                streams: 1,
            },
        );
        let answer = self.compute(q, snap, metrics);
        if let Some(entry) = self.entries.get(q) {
            entry.tx.send_replace(answer.map(Arc::new));
        }
        rx
    }

    fn unsubscribe(&mut self, q: &Q) {
        let Some(entry) = self.entries.get_mut(q) else {
            return;
        };
        entry.streams -= 1;
        if entry.streams > 0 {
            return;
        }
        if let Some(entry) = self.entries.remove(q) {
            for t in &entry.topics {
                if let Some(qs) = self.by_topic.get_mut(t) {
                    qs.remove(q);
                    if qs.is_empty() {
                        self.by_topic.remove(t);
                    }
                }
            }
        }
    }

    /// Computes again the answers that read a changed topic (`None`:
    /// every answer), sending those that differ.
    fn update(&mut self, changed: Option<&HashSet<Topic>>, snap: &Snapshot, metrics: &Metrics) {
        let dirty: Vec<Q> = match changed {
            None => self.entries.keys().cloned().collect(),
            Some(topics) => {
                let mut dirty = HashSet::new();
                for t in topics {
                    dirty.extend(self.by_topic.get(t).into_iter().flatten().cloned());
                }
                dirty.into_iter().collect()
            }
        };
        for q in dirty {
            let answer = self.compute(&q, snap, metrics);
            if let Some(entry) = self.entries.get(&q) {
                entry.tx.send_if_modified(|now| {
                    if now.as_deref() == answer.as_ref() {
                        return false;
                    }
                    *now = answer.map(Arc::new);
                    true
                });
            }
        }
    }
}

impl Answers {
    pub fn new(snap: Arc<Snapshot>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            tables: Mutex::new(Tables {
                snap,
                resolve: Table::default(),
                inbound: Table::default(),
            }),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock leaves plain data behind, still
        // usable: take it.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows `q`'s answer until the subscription is dropped.
    pub fn subscribe<Q: Question>(self: &Arc<Self>, q: Q) -> Subscription<Q> {
        let mut tables = self.lock();
        let snap = tables.snap.clone();
        let rx = Q::table(&mut tables).subscribe(&q, &snap, &self.metrics);
        Subscription {
            rx,
            answers: self.clone(),
            question: q,
        }
    }

    /// Brings every answer to `snap`.
    pub fn update(&self, snap: Arc<Snapshot>) {
        let mut tables = self.lock();
        let changed = changes(&tables.snap, &snap);
        tables
            .resolve
            .update(changed.as_ref(), &snap, &self.metrics);
        tables
            .inbound
            .update(changed.as_ref(), &snap, &self.metrics);
        tables.snap = snap;
        let questions = (tables.resolve.entries.len(), tables.inbound.entries.len());
        drop(tables);
        self.metrics.questions(Rpc::Resolve, questions.0);
        self.metrics.questions(Rpc::Inbound, questions.1);
    }

    /// Follows the store's snapshots until `shutdown`.
    pub async fn run(self: Arc<Self>, store: Arc<Store>, shutdown: Shutdown) {
        let mut snapshots = store.subscribe();
        // The snapshot published before this task began counts too.
        snapshots.mark_changed();
        loop {
            tokio::select! {
                () = shutdown.signaled() => return,
                changed = snapshots.changed() => if changed.is_err() { return },
            }
            let snap = snapshots.borrow_and_update().clone();
            self.update(snap);
        }
    }
}

/// One stream's hold on a shared answer.
pub(crate) struct Subscription<Q: Question> {
    pub rx: Latest<Q::Answer>,
    answers: Arc<Answers>,
    question: Q,
}

impl<Q: Question> Drop for Subscription<Q> {
    fn drop(&mut self) {
        Q::table(&mut self.answers.lock()).unsubscribe(&self.question);
    }
}

#[cfg(test)]
pub(crate) mod tests;
