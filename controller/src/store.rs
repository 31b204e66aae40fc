//! The in-memory store of Kubernetes objects that both sources feed, and
//! the snapshots it publishes.
//!
//! Sources change the store ([`Store::apply`], [`Store::delete`],
//! [`Store::replace_kind`], [`Store::replace_all`]); each change marks it
//! dirty. The controller's publisher ([`Store::publish`], called whenever
//! [`Store::changed`] resolves) builds one new [`Snapshot`] from the
//! objects as they are then and the last snapshot ([`Snapshot::next`]:
//! each kind's map is shared until it changes, and so are the lookups built
//! from it) — changes that arrive while it builds are coalesced into the
//! next one — and sends it on a `watch` channel that the shared answers
//! follow.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

use crate::index::{Settings, Snapshot};
use crate::objects::{Key, Kind, Object, Objects};

pub struct Store {
    inner: Mutex<Inner>,
    dirty: Notify,
    tx: watch::Sender<Arc<Snapshot>>,
}

#[derive(Default)]
struct Inner {
    objects: Objects,
    synced: bool,
    version: u64,
}

impl Store {
    pub fn new(settings: Settings) -> Arc<Self> {
        let settings = Arc::new(settings);
        let (tx, _) = watch::channel(Arc::new(Snapshot::empty(settings.clone())));
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            dirty: Notify::new(),
            tx,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind, still
        // usable: take it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed_now(&self) {
        self.dirty.notify_one();
    }

    /// Follows the snapshots as they are published.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// The latest published snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Adds or replaces one object.
    pub fn apply(&self, o: Object) {
        self.lock().objects.insert(o);
        self.changed_now();
    }

    /// Removes one object.
    pub fn delete(&self, kind: Kind, key: &Key) {
        if self.lock().objects.remove(kind, key) {
            self.changed_now();
        }
    }

    /// Replaces every object of `kind` (a watch's fresh listing).
    pub fn replace_kind(&self, kind: Kind, objects: Vec<Object>) {
        {
            let mut inner = self.lock();
            inner.objects.clear(kind);
            for o in objects.into_iter().filter(|o| o.kind() == kind) {
                inner.objects.insert(o);
            }
        }
        self.changed_now();
    }

    /// Replaces every object (the file source's new state) and marks the
    /// store synced. Unchanged objects: nothing is published.
    pub fn replace_all(&self, objects: Objects) {
        {
            let mut inner = self.lock();
            let mut objects = objects;
            // Unchanged objects keep the store's copy: the new file's is
            // dropped now, not held beside it by the old snapshot.
            let unchanged = objects.share_unchanged(&inner.objects);
            if unchanged && inner.synced {
                return;
            }
            inner.objects = objects;
            inner.synced = true;
        }
        self.changed_now();
    }

    /// The source has delivered its complete first state.
    pub fn set_synced(&self) {
        let mut inner = self.lock();
        if !inner.synced {
            inner.synced = true;
            drop(inner);
            self.changed_now();
        }
    }

    /// Resolves when the store has changed since the last publish.
    pub async fn changed(&self) {
        self.dirty.notified().await;
    }

    /// Builds a snapshot of the objects as they are now and publishes it.
    pub fn publish(&self) -> Arc<Snapshot> {
        let (objects, synced, version) = {
            let mut inner = self.lock();
            inner.version += 1;
            (inner.objects.clone(), inner.synced, inner.version)
        };
        let prev = self.current();
        let snap = Arc::new(Snapshot::next(&prev, objects, version, synced));
        self.tx.send_replace(snap.clone());
        snap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::DefaultPolicy;
    use k8s_openapi::api::core::v1::Namespace;

    fn settings() -> Settings {
        Settings {
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            default_inbound: DefaultPolicy::AllUnauthenticated,
        }
    }

    fn ns(name: &str) -> Object {
        let mut n = Namespace::default();
        n.metadata.name = Some(name.into());
        crate::objects::Watched::into_object(n)
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_published_as_snapshots() {
        let store = Store::new(settings());
        let mut rx = store.subscribe();
        assert!(!rx.borrow_and_update().synced);
        store.apply(ns("a"));
        store.apply(ns("b"));
        store.changed().await; // both changes: one wake-up
        let snap = store.publish();
        assert_eq!(snap.objects().count(Kind::Namespace), 2);
        assert!(!snap.synced);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().version, snap.version);

        store.delete(Kind::Namespace, &Key::new("", "a"));
        store.set_synced();
        store.changed().await;
        let snap = store.publish();
        assert!(snap.synced);
        assert_eq!(snap.objects().count(Kind::Namespace), 1);

        store.replace_kind(Kind::Namespace, vec![ns("c"), ns("d"), ns("e")]);
        store.changed().await;
        assert_eq!(store.publish().objects().count(Kind::Namespace), 3);

        // The same objects again: nothing to publish.
        let same = store.current().objects().clone();
        store.replace_all(same);
        let woke =
            tokio::time::timeout(std::time::Duration::from_millis(50), store.changed()).await;
        assert!(
            woke.is_err(),
            "an unchanged state must not wake the publisher"
        );
    }
}
