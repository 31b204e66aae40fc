//! A bounded cache of verified tokens, keyed by the token's SHA-256 (the
//! token itself is not kept), each entry valid until a deadline (the
//! token's `exp`, or sooner).

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::ServiceAccount;

pub(crate) type TokenKey = [u8; 32];

pub(crate) struct TokenCache {
    entries: Mutex<HashMap<TokenKey, (ServiceAccount, i64)>>,
    capacity: usize,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn key(token: &str) -> TokenKey {
        Sha256::digest(token.as_bytes()).into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, (ServiceAccount, i64)>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every operation is a single map call), so a poisoned lock is used.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ServiceAccount for a token verified before, if still valid at `now`.
    pub(crate) fn get(&self, key: &TokenKey, now: i64) -> Option<ServiceAccount> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((sa, until)) if now <= *until => Some(sa.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers a verified token until `until`. When full, expired entries
    /// go first, then the one expiring soonest.
    pub(crate) fn insert(&self, key: TokenKey, sa: ServiceAccount, until: i64, now: i64) {
        if until < now {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, u)| *u >= now);
            if entries.len() >= self.capacity {
                let soonest = entries.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| *k);
                if let Some(k) = soonest {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(key, (sa, until));
    }

    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(n: &str) -> ServiceAccount {
        ServiceAccount {
            namespace: "ns".into(),
            name: n.into(),
        }
    }

    #[test]
    fn entries_expire_and_capacity_is_bounded() {
        let c = TokenCache::new(2);
        let (a, b, d) = (
            TokenCache::key("a"),
            TokenCache::key("b"),
            TokenCache::key("d"),
        );
        c.insert(a, sa("a"), 100, 0);
        c.insert(b, sa("b"), 50, 0);
        assert_eq!(c.get(&a, 10), Some(sa("a")));
        assert_eq!(c.get(&b, 51), None, "expired");
        c.insert(b, sa("b"), 50, 0);
        c.insert(d, sa("d"), 200, 0); // full: b (soonest) goes
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&b, 0), None);
        assert_eq!(c.get(&d, 0), Some(sa("d")));
        c.insert(TokenCache::key("old"), sa("old"), 5, 10); // already expired: ignored
        assert_eq!(c.len(), 2);
        c.clear();
        assert_eq!(c.get(&a, 0), None);
    }
}
