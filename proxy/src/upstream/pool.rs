//! A bounded pool of multiplexed HTTP/2 connections, one per destination:
//! a connection unused for the idle timeout is dropped (hyper then closes
//! it once its streams end), and when the pool is full the least recently
//! used one makes room. Time is passed in, so the rules are tested without
//! a clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A pooled connection: whether it can still carry requests.
pub(crate) trait Reusable: Clone {
    fn is_closed(&self) -> bool;
}

struct Entry<V> {
    conn: V,
    last_used: Instant,
}

pub(crate) struct Pool<K, V> {
    entries: Mutex<HashMap<K, Entry<V>>>,
    max: usize,
    idle: Duration,
}

impl<K: Hash + Eq + Clone, V: Reusable> Pool<K, V> {
    pub(crate) fn new(max: usize, idle: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max: max.max(1),
            idle,
        }
    }

    /// The connection to `key`, if one is open, not idle too long, and
    /// `fits` (e.g. verified for the identities the caller expects). A
    /// connection that fails any of these is dropped from the pool.
    pub(crate) fn get(&self, key: &K, now: Instant, fits: impl Fn(&V) -> bool) -> Option<V> {
        let mut entries = self.lock();
        let entry = entries.get_mut(key)?;
        let usable = !entry.conn.is_closed()
            && now.saturating_duration_since(entry.last_used) < self.idle
            && fits(&entry.conn);
        if usable {
            entry.last_used = now;
            Some(entry.conn.clone())
        } else {
            entries.remove(key);
            None
        }
    }

    /// Pools `conn` for `key` (replacing any other), first dropping closed
    /// and idle connections and, if the pool is still full, the least
    /// recently used one.
    pub(crate) fn insert(&self, key: K, conn: V, now: Instant) {
        let mut entries = self.lock();
        self.drop_stale(&mut entries, now);
        if entries.len() >= self.max && !entries.contains_key(&key) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                entries.remove(&k);
            }
        }
        entries.insert(
            key,
            Entry {
                conn,
                last_used: now,
            },
        );
    }

    /// Drops closed and idle connections; returns how many are left.
    pub(crate) fn sweep(&self, now: Instant) -> usize {
        let mut entries = self.lock();
        self.drop_stale(&mut entries, now);
        entries.len()
    }

    fn drop_stale(&self, entries: &mut HashMap<K, Entry<V>>, now: Instant) {
        entries.retain(|_, e| {
            !e.conn.is_closed() && now.saturating_duration_since(e.last_used) < self.idle
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Entry<V>>> {
        // A map of connections stays consistent even if a holder panicked.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A connection whose closing the test controls; `id` tells them apart.
    #[derive(Clone)]
    struct Conn {
        id: u32,
        closed: Arc<AtomicBool>,
    }

    impl Conn {
        fn new(id: u32) -> Conn {
            Conn {
                id,
                closed: Arc::new(AtomicBool::new(false)),
            }
        }
    }

    impl Reusable for Conn {
        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::Relaxed)
        }
    }

    const IDLE: Duration = Duration::from_secs(90);

    fn id(c: Option<Conn>) -> Option<u32> {
        c.map(|c| c.id)
    }

    #[test]
    fn a_connection_is_reused_until_closed_or_idle_too_long() {
        let t0 = Instant::now();
        let pool = Pool::new(8, IDLE);
        let conn = Conn::new(1);
        pool.insert("a", conn.clone(), t0);
        assert_eq!(id(pool.get(&"a", t0 + IDLE / 2, |_| true)), Some(1));
        // Using it renews its idle time.
        assert_eq!(id(pool.get(&"a", t0 + IDLE, |_| true)), Some(1));
        assert_eq!(
            id(pool.get(&"a", t0 + IDLE * 2 + Duration::from_secs(1), |_| true)),
            None
        );
        assert_eq!(pool.sweep(t0), 0, "an idle connection left the pool");

        pool.insert("b", conn.clone(), t0);
        conn.closed.store(true, Ordering::Relaxed);
        assert_eq!(id(pool.get(&"b", t0, |_| true)), None, "closed");
    }

    #[test]
    fn a_connection_that_does_not_fit_is_replaced() {
        let t0 = Instant::now();
        let pool = Pool::new(8, IDLE);
        pool.insert("a", Conn::new(1), t0);
        assert_eq!(id(pool.get(&"a", t0, |c| c.id == 2)), None);
        assert_eq!(
            id(pool.get(&"a", t0, |_| true)),
            None,
            "dropped when it did not fit"
        );
    }

    #[test]
    fn a_full_pool_drops_the_least_recently_used() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let pool = Pool::new(2, IDLE);
        pool.insert("a", Conn::new(1), t0);
        pool.insert("b", Conn::new(2), t0 + s(1));
        // `a` is used after `b`: `b` is the least recently used.
        assert!(pool.get(&"a", t0 + s(2), |_| true).is_some());
        pool.insert("c", Conn::new(3), t0 + s(3));
        assert_eq!(pool.sweep(t0 + s(3)), 2);
        assert_eq!(id(pool.get(&"b", t0 + s(3), |_| true)), None);
        assert_eq!(id(pool.get(&"a", t0 + s(3), |_| true)), Some(1));
        assert_eq!(id(pool.get(&"c", t0 + s(3), |_| true)), Some(3));
        // Replacing a key never evicts another.
        pool.insert("a", Conn::new(4), t0 + s(4));
        assert_eq!(id(pool.get(&"c", t0 + s(4), |_| true)), Some(3));
    }

    #[test]
    fn sweeping_drops_closed_and_idle_connections_only() {
        let t0 = Instant::now();
        let pool = Pool::new(8, IDLE);
        let closed = Conn::new(1);
        pool.insert("closed", closed.clone(), t0);
        pool.insert("idle", Conn::new(2), t0);
        pool.insert("busy", Conn::new(3), t0 + IDLE);
        closed.closed.store(true, Ordering::Relaxed);
        assert_eq!(pool.sweep(t0 + IDLE + Duration::from_secs(1)), 1);
        assert_eq!(id(pool.get(&"busy", t0 + IDLE, |_| true)), Some(3));
    }
}
