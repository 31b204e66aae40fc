//! Admission: what a `Certify` request must pass *before* its token is
//! verified, so that a flood of bad tokens costs little and cannot starve
//! other callers. In order:
//!
//! 1. **rate** — a token bucket per client ([`RateLimiter`]). A client is
//!    the caller's IP address (as the gRPC server sees it) together with the
//!    `sub` its token claims, read unverified ([`ClientKey`]): workloads
//!    behind one address (host-network pods, a test) get a bucket each, while
//!    every request from an address also draws from that address's own bucket,
//!    [`ADDRESS_SHARE`] times larger, so inventing subjects does not buy an
//!    address more than that. A garbage token (no readable `sub`) is the
//!    address's "no subject" client.
//! 2. **remembered refusals** — a token refused before for the caller's
//!    fault is answered from [`RefusalCache`] (keyed by the token's SHA-256,
//!    never the token) for a short TTL: a repeated bad token costs no
//!    TokenReview.
//! 3. **concurrency** — at most [`Limits::max_concurrent`] verifications run
//!    at once ([`VerifySlots`]); when all are busy the request is refused at
//!    once rather than queued.
//!
//! Over-limit requests are refused with `RESOURCE_EXHAUSTED` without being
//! verified. Every structure is bounded; time is an argument (tokio's
//! `Instant`, so tests run on paused time).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::token::TokenError;

/// An address's own bucket is this many times a client's (rate and burst).
pub const ADDRESS_SHARE: u32 = 4;
/// Buckets remembered at most (clients and addresses together).
pub const MAX_TRACKED_CLIENTS: usize = 10_000;
/// Refusals remembered at most.
pub const MAX_CACHED_REFUSALS: usize = 10_000;

/// The admission settings (from [`crate::Config`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Requests per second a client's bucket refills by.
    pub rate: f64,
    /// Requests a client may make at once after being idle.
    pub burst: u32,
    /// Verifications running at once, over all clients.
    pub max_concurrent: usize,
    /// How long a refused token is answered from memory (zero: never).
    pub refusal_ttl: Duration,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Limited {
    #[error("too many requests from this client; retry later")]
    Rate,
    #[error("too many verifications in progress; retry later")]
    Concurrency,
}

impl Limited {
    /// The refusal's reason code (status message, log).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Rate => "rate_limited",
            Self::Concurrency => "concurrency_limited",
        }
    }

    /// The label of `trellis_identity_requests_limited_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Rate => "rate",
            Self::Concurrency => "concurrency",
        }
    }
}

/// The three admission checks, shared by the handler and the maintenance
/// task (which forgets refusals when the verifier's keys change).
pub struct Admission {
    pub rate: RateLimiter,
    pub refusals: RefusalCache,
    pub slots: VerifySlots,
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self {
            rate: RateLimiter::new(limits.rate, limits.burst, MAX_TRACKED_CLIENTS),
            refusals: RefusalCache::new(limits.refusal_ttl, MAX_CACHED_REFUSALS),
            slots: VerifySlots::new(limits.max_concurrent),
        }
    }
}

/// A token bucket: holds up to `burst` tokens, refills at `rate` per
/// second; a request takes one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: f64,
    /// When `tokens` was last brought up to date (also: last seen).
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = self.last.max(now);
    }

    /// Takes a token if there is one.
    pub(crate) fn try_take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled completely by `now` (forgetting it
    /// then changes nothing: a new bucket starts full).
    pub(crate) fn is_full(&self, rate: f64, burst: f64, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, burst, now);
        b.tokens >= burst
    }
}

/// Who a request counts against: the caller's address and the (hashed,
/// unverified) subject its token claims, if it has a readable one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    addr: IpAddr,
    subject: Option<[u8; 16]>,
}

impl ClientKey {
    pub fn new(addr: IpAddr, claimed_subject: Option<&str>) -> Self {
        let subject = claimed_subject.map(|s| {
            let hash: [u8; 32] = Sha256::digest(s.as_bytes()).into();
            let mut short = [0u8; 16];
            short.copy_from_slice(&hash[..16]);
            short
        });
        Self { addr, subject }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BucketKey {
    Client(ClientKey),
    Address(IpAddr),
}

/// Token buckets per client and per address, at most `capacity` of them.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    capacity: usize,
    buckets: Mutex<HashMap<BucketKey, TokenBucket>>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: u32, capacity: usize) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            capacity: capacity.max(2),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<BucketKey, TokenBucket>> {
        // Every update is a single map operation on plain data: a panic
        // elsewhere cannot leave it inconsistent, so a poisoned lock is used.
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a token from the client's bucket, then from its address's.
    /// A request refused by its own bucket does not draw on the address's,
    /// so one client hammering away leaves its neighbours their share.
    pub fn check(&self, client: ClientKey, now: Instant) -> Result<(), Limited> {
        let share = f64::from(ADDRESS_SHARE);
        let mut buckets = self.lock();
        if !self.take(&mut buckets, BucketKey::Client(client), 1.0, now) {
            return Err(Limited::Rate);
        }
        if !self.take(&mut buckets, BucketKey::Address(client.addr), share, now) {
            return Err(Limited::Rate);
        }
        Ok(())
    }

    fn take(
        &self,
        buckets: &mut HashMap<BucketKey, TokenBucket>,
        key: BucketKey,
        scale: f64,
        now: Instant,
    ) -> bool {
        let (rate, burst) = (self.rate * scale, self.burst * scale);
        if !buckets.contains_key(&key) && buckets.len() >= self.capacity {
            self.evict(buckets, now);
        }
        buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::full(burst, now))
            .try_take(rate, burst, now)
    }

    /// Makes room: forgets every bucket that has refilled (an idle client),
    /// and if none has, the least recently seen one. O(n), only when full.
    fn evict(&self, buckets: &mut HashMap<BucketKey, TokenBucket>, now: Instant) {
        let share = f64::from(ADDRESS_SHARE);
        buckets.retain(|k, b| {
            let scale = if matches!(k, BucketKey::Address(_)) {
                share
            } else {
                1.0
            };
            !b.is_full(self.rate * scale, self.burst * scale, now)
        });
        if buckets.len() >= self.capacity {
            let oldest = buckets.iter().min_by_key(|(_, b)| b.last).map(|(k, _)| *k);
            if let Some(k) = oldest {
                buckets.remove(&k);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.lock().len()
    }
}

/// The key of a token in [`RefusalCache`]: its SHA-256.
pub type TokenHash = [u8; 32];

struct Refusals {
    entries: HashMap<TokenHash, (TokenError, Instant)>,
    /// Insertion order, for expiry and eviction (all entries share one TTL,
    /// so the oldest is also the soonest to expire).
    order: VecDeque<(TokenHash, Instant)>,
}

/// Tokens refused for the caller's fault, by hash, each for a fixed TTL;
/// at most `capacity`, the oldest evicted first.
///
/// The TTL is not shortened to the token's `exp`: past it the token is
/// refused anyway, so remembering the refusal is harmless. What the TTL
/// bounds is how long a refusal that could turn into a success (a token
/// signed by a key the JWKS file does not list yet) sticks; for that case
/// the cache is also emptied whenever the verifier's keys change.
pub struct RefusalCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Refusals>,
}

impl RefusalCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            inner: Mutex::new(Refusals {
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    pub fn key(token: &str) -> TokenHash {
        Sha256::digest(token.as_bytes()).into()
    }

    fn lock(&self) -> MutexGuard<'_, Refusals> {
        // As for the rate limiter: single-step updates of plain data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The remembered refusal of this token, if any, as of `now`.
    pub fn get(&self, key: &TokenHash, now: Instant) -> Option<TokenError> {
        let mut r = self.lock();
        match r.entries.get(key) {
            Some((e, until)) if now < *until => Some(e.clone()),
            Some(_) => {
                r.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers a refusal. Refusals that are not the caller's fault (the
    /// reviewer was unavailable) are not remembered.
    pub fn insert(&self, key: TokenHash, refusal: &TokenError, now: Instant) {
        if self.ttl.is_zero() || refusal.is_unavailable() {
            return;
        }
        let until = now + self.ttl;
        let mut r = self.lock();
        // Expired entries leave from the front, then the oldest while full.
        // `order` has an element for every entry (and possibly stale ones for
        // entries already gone), so bounding it bounds both.
        while let Some(&(k, u)) = r.order.front() {
            if u > now && r.order.len() < self.capacity {
                break;
            }
            r.order.pop_front();
            // Only if the map still holds this very entry, not a newer one.
            if r.entries.get(&k).is_some_and(|(_, eu)| *eu == u) {
                r.entries.remove(&k);
            }
        }
        r.entries.insert(key, (refusal.clone(), until));
        r.order.push_back((key, until));
    }

    /// Forgets every refusal (the verifier's keys changed).
    pub fn clear(&self) {
        let mut r = self.lock();
        r.entries.clear();
        r.order.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// The global bound on verifications in progress.
pub struct VerifySlots(Arc<Semaphore>);

impl VerifySlots {
    pub fn new(n: usize) -> Self {
        Self(Arc::new(Semaphore::new(n.max(1))))
    }

    /// A slot, held until the returned permit is dropped; none free is
    /// [`Limited::Concurrency`] at once (no queueing).
    pub fn try_acquire(&self) -> Result<OwnedSemaphorePermit, Limited> {
        self.0
            .clone()
            .try_acquire_owned()
            .map_err(|_| Limited::Concurrency)
    }
}

#[cfg(test)]
mod tests;
