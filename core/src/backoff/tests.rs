// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn delays_are_exponential_capped_with_full_jitter() {
    let b = Exponential::new(ms(10), ms(70));
    // (attempt, unit, delay)
    let cases = [
        (0, 1.0, ms(10)),
        (1, 1.0, ms(20)),
        (2, 1.0, ms(40)),
        (3, 1.0, ms(70)),
        (30, 1.0, ms(70)),
        (u32::MAX, 1.0, ms(70)),
        (2, 0.0, ms(0)),
        (2, 0.25, ms(10)),
        (3, 0.5, ms(35)),
        (2, 7.0, ms(40)),
        (2, -1.0, ms(0)),
        (2, f64::NAN, ms(0)),
    ];
    for (attempt, unit, want) in cases {
        assert_eq!(
            b.delay(attempt, unit),
            want,
            "attempt {attempt}, unit {unit}"
        );
    }
    let huge = Exponential::new(Duration::MAX, Duration::MAX);
    assert_eq!(huge.delay(5, 1.0), Duration::MAX);
    assert!(huge.delay(5, 0.5) <= Duration::MAX);
}

#[test]
fn ceilings_double_to_the_cap_and_a_lower_cap_applies() {
    let b = Exponential::new(Duration::from_secs(10), Duration::from_secs(300));
    let ceilings: Vec<u64> = (0..7).map(|n| b.ceiling(n).as_secs()).collect();
    assert_eq!(ceilings, [10, 20, 40, 80, 160, 300, 300]);
    assert_eq!(b.ceiling(31), Duration::from_secs(300));
    assert_eq!(b.ceiling(32), Duration::from_secs(300));
    let low = b.capped(Duration::from_secs(25));
    let ceilings: Vec<u64> = (0..4).map(|n| low.ceiling(n).as_secs()).collect();
    assert_eq!(ceilings, [10, 20, 25, 25]);
    // A cap is never raised.
    assert_eq!(b.capped(Duration::MAX), b);
}

#[test]
fn a_backoff_counts_its_waits_draws_each_and_starts_over_on_reset() {
    let draws = [1.0, 0.5, 0.0, 1.0, 0.25];
    let mut next = draws.into_iter().cycle();
    let mut b = Backoff::with_random(Exponential::new(ms(100), ms(1000)), move || {
        next.next().unwrap()
    });
    let waits: Vec<Duration> = (0..5).map(|_| b.next_wait()).collect();
    assert_eq!(waits, [ms(100), ms(100), ms(0), ms(800), ms(250)]);
    assert_eq!(b.attempts(), 5);
    b.reset();
    assert_eq!(b.attempts(), 0);
    // The sixth draw (1.0, the cycle again), from the first ceiling.
    assert_eq!(b.next_wait(), ms(100));
    // A lower cap for one wait; the policy's stays.
    assert_eq!(b.next_wait_at_most(ms(50)), ms(25));
    assert_eq!(b.policy().max, ms(1000));
}

#[test]
fn without_jitter_every_wait_is_the_ceiling() {
    let policy = Exponential::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut b = Backoff::without_jitter(policy);
    let waits: Vec<u64> = (0..7).map(|_| b.next_wait().as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
}

#[test]
fn random_backoffs_differ_and_stay_under_the_ceilings() {
    let policy = Exponential::new(ms(250), Duration::from_secs(10));
    let schedule = || {
        let mut b = Backoff::new(policy);
        (0..10).map(|_| b.next_wait()).collect::<Vec<_>>()
    };
    let (a, b) = (schedule(), schedule());
    // Twenty independent draws alike to the nanosecond: not by chance.
    assert_ne!(a, b);
    for (n, (x, y)) in (0..).zip(a.iter().zip(&b)) {
        assert!(
            *x <= policy.ceiling(n) && *y <= policy.ceiling(n),
            "{n}: {a:?} {b:?}"
        );
    }
}

proptest! {
    #[test]
    fn a_delay_lies_in_zero_to_its_ceiling_and_grows_with_the_draw(
        base in 0u64..10_000_000,
        max in 0u64..100_000_000,
        attempt in 0u32..40,
        u in 0.0f64..=1.0,
        v in 0.0f64..=1.0,
    ) {
        let b = Exponential::new(Duration::from_micros(base), Duration::from_micros(max));
        let ceiling = b.ceiling(attempt);
        prop_assert!(ceiling <= b.max);
        prop_assert!(ceiling <= b.ceiling(attempt.saturating_add(1)));
        let (lo, hi) = if u <= v { (u, v) } else { (v, u) };
        prop_assert!(b.delay(attempt, lo) <= b.delay(attempt, hi));
        prop_assert!(b.delay(attempt, hi) <= ceiling);
    }
}
