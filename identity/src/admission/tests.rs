//! Token buckets, the per-client limiter, the refusal cache and the
//! verification slots, on paused tokio time.

use std::net::Ipv4Addr;

use super::*;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

#[tokio::test(start_paused = true)]
async fn a_bucket_allows_its_burst_then_its_rate() {
    let (rate, burst) = (5.0, 20.0);
    let t0 = Instant::now();
    let mut b = TokenBucket::full(burst, t0);
    let taken = (0..100).filter(|_| b.try_take(rate, burst, t0)).count();
    assert_eq!(taken, 20, "the burst, at once");
    // (elapsed, tokens taken after waiting that long from empty)
    let table: &[(Duration, usize)] = &[(MS(100), 0), (MS(200), 1), (S(1), 5), (S(60), 20)];
    for (wait, want) in table {
        let start = Instant::now();
        while b.try_take(rate, burst, start) {} // empty it
        tokio::time::advance(*wait).await;
        let now = Instant::now();
        let got = (0..100).filter(|_| b.try_take(rate, burst, now)).count();
        assert_eq!(got, *want, "after {wait:?}");
    }
    // Refilled completely after burst / rate seconds of idleness.
    let now = Instant::now();
    assert!(!b.is_full(rate, burst, now));
    assert!(b.is_full(rate, burst, now + S(4)));
    // Time going backwards (a caller's stale `now`) takes nothing away.
    assert!(!b.try_take(rate, burst, now - S(1)));
}

#[tokio::test(start_paused = true)]
async fn one_client_over_its_limit_leaves_others_their_share() {
    let limiter = RateLimiter::new(5.0, 20, 1000);
    let now = Instant::now();
    let noisy = ClientKey::new(ip(1), None);
    let admitted = (0..500)
        .filter(|_| limiter.check(noisy, now).is_ok())
        .count();
    assert_eq!(admitted, 20);
    assert_eq!(limiter.check(noisy, now), Err(Limited::Rate));
    // Another workload behind the same address: its own bucket, and the
    // address's bucket was only drawn on by the noisy client's 20.
    let web = ClientKey::new(ip(1), Some("system:serviceaccount:demo:web"));
    assert_eq!(limiter.check(web, now), Ok(()));
    // Another address: untouched.
    assert_eq!(limiter.check(ClientKey::new(ip(2), None), now), Ok(()));
    // A second passes: five more for the noisy client.
    tokio::time::advance(S(1)).await;
    let now = Instant::now();
    let admitted = (0..100)
        .filter(|_| limiter.check(noisy, now).is_ok())
        .count();
    assert_eq!(admitted, 5);
}

#[tokio::test(start_paused = true)]
async fn invented_subjects_buy_an_address_at_most_its_share() {
    let limiter = RateLimiter::new(5.0, 20, 10_000);
    let now = Instant::now();
    let admitted = (0..1000)
        .filter(|i| {
            let sub = format!("system:serviceaccount:x:s{i}");
            limiter
                .check(ClientKey::new(ip(3), Some(&sub)), now)
                .is_ok()
        })
        .count();
    assert_eq!(admitted, 20 * ADDRESS_SHARE as usize);
}

#[tokio::test(start_paused = true)]
async fn client_state_is_bounded_and_idle_clients_go_first() {
    let limiter = RateLimiter::new(5.0, 20, 100);
    // Many clients, one request each, from many addresses, over time.
    for i in 0..1000u32 {
        tokio::time::advance(MS(1)).await;
        let addr = IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i));
        let _ = limiter.check(ClientKey::new(addr, None), Instant::now());
        assert!(limiter.tracked() <= 100, "{}", limiter.tracked());
    }

    // When no bucket has refilled, the least recently seen goes.
    let limiter = RateLimiter::new(0.001, 1, 4);
    let (a, b, c) = (
        ClientKey::new(ip(1), None),
        ClientKey::new(ip(2), None),
        ClientKey::new(ip(3), None),
    );
    for k in [a, b, c] {
        assert_eq!(limiter.check(k, Instant::now()), Ok(()));
        tokio::time::advance(MS(1)).await;
    }
    assert_eq!(limiter.tracked(), 4);
    // b and c are remembered (empty); a, the oldest, was forgotten.
    assert_eq!(limiter.check(c, Instant::now()), Err(Limited::Rate));
    assert_eq!(limiter.check(b, Instant::now()), Err(Limited::Rate));
    assert_eq!(limiter.check(a, Instant::now()), Ok(()));
}

fn refused() -> TokenError {
    TokenError::BadSignature
}

#[tokio::test(start_paused = true)]
async fn refusals_are_remembered_by_hash_until_the_ttl() {
    let cache = RefusalCache::new(S(60), 100);
    let (bad, other) = (RefusalCache::key("bad-token"), RefusalCache::key("other"));
    assert_ne!(bad, other);
    let now = Instant::now();
    assert_eq!(cache.get(&bad, now), None);
    cache.insert(bad, &refused(), now);
    assert_eq!(cache.get(&bad, now), Some(refused()), "hit");
    assert_eq!(cache.get(&other, now), None);
    tokio::time::advance(S(59)).await;
    assert_eq!(cache.get(&bad, Instant::now()), Some(refused()));
    tokio::time::advance(S(1)).await;
    assert_eq!(cache.get(&bad, Instant::now()), None, "expired");
    assert_eq!(cache.len(), 0, "an expired entry is dropped when met");
    // Our own failures are never remembered, nor anything with a zero TTL.
    let down = TokenError::Unavailable("API server unreachable".into());
    cache.insert(other, &down, Instant::now());
    assert_eq!(cache.get(&other, Instant::now()), None);
    let off = RefusalCache::new(Duration::ZERO, 100);
    off.insert(bad, &refused(), Instant::now());
    assert_eq!(off.get(&bad, Instant::now()), None);
    // Cleared when the verifier's keys change.
    cache.insert(bad, &refused(), Instant::now());
    cache.clear();
    assert_eq!(cache.get(&bad, Instant::now()), None);
}

#[tokio::test(start_paused = true)]
async fn the_refusal_cache_is_bounded_and_evicts_the_oldest() {
    let cache = RefusalCache::new(S(60), 10);
    let key = |i: usize| RefusalCache::key(&format!("t{i}"));
    for i in 0..25 {
        cache.insert(key(i), &refused(), Instant::now());
        tokio::time::advance(MS(10)).await;
        assert!(cache.len() <= 10);
    }
    let now = Instant::now();
    for i in 0..15 {
        assert_eq!(cache.get(&key(i), now), None, "t{i} evicted");
    }
    for i in 15..25 {
        assert_eq!(cache.get(&key(i), now), Some(refused()), "t{i} kept");
    }
    // The same token inserted twice (two concurrent misses) keeps one entry.
    cache.insert(key(30), &refused(), now);
    cache.insert(key(30), &refused(), now);
    assert!(cache.len() <= 10);
    assert_eq!(cache.get(&key(30), now), Some(refused()));
}

#[tokio::test(start_paused = true)]
async fn verifications_beyond_the_slots_are_refused_at_once() {
    let slots = VerifySlots::new(2);
    let a = slots.try_acquire().unwrap();
    let _b = slots.try_acquire().unwrap();
    assert_eq!(slots.try_acquire().err(), Some(Limited::Concurrency));
    drop(a);
    let _c = slots.try_acquire().unwrap();
    assert_eq!(slots.try_acquire().err(), Some(Limited::Concurrency));
    assert_eq!(Limited::Rate.reason(), "rate");
    assert_eq!(Limited::Concurrency.reason(), "concurrency");
}
