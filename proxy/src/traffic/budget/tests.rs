use std::sync::Arc;

use super::*;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn budget(ratio: f64, min_per_sec: u32, t0: Instant) -> Budget {
    let config = RetryBudget {
        ratio,
        min_per_sec,
        ttl: Duration::from_secs(10),
    };
    Budget::new(&config, t0).unwrap()
}

/// Withdraws at `now` until refused; how many were allowed.
fn drain(b: &mut Budget, now: Instant) -> u64 {
    let mut n = 0;
    while b.try_withdraw(now) {
        n += 1;
        assert!(n < 1_000_000, "budget never runs out");
    }
    n
}

#[test]
fn ratio_of_requests_plus_the_floor() {
    let t0 = Instant::now();
    let mut b = budget(0.2, 10, t0);
    // 1000 requests over 5 s, then a burst of retries.
    for i in 0..1000 {
        b.deposit(t0 + secs(f64::from(i) * 0.005));
    }
    assert_eq!(b.available(t0 + secs(5.0)), 300);
    assert_eq!(drain(&mut b, t0 + secs(5.0)), 200 + 100);
    assert_eq!(b.available(t0 + secs(5.0)), 0);
}

#[test]
fn arithmetic_table() {
    // (ratio, min per second, requests, retries allowed), all at one instant.
    let cases = [
        (0.2, 10, 1000, 300),
        (0.2, 10, 0, 100),
        (0.2, 0, 1000, 200),
        (0.0, 0, 1000, 0),
        (0.0, 5, 1000, 50),
        (0.25, 0, 3, 0),
        (0.25, 0, 4, 1),
        (0.1, 0, 999, 99),
        (1.0, 1, 7, 17),
        (2.5, 0, 10, 25),
        (1000.0, 0, 1, 1000),
    ];
    for (ratio, min, requests, want) in cases {
        let t0 = Instant::now();
        let mut b = budget(ratio, min, t0);
        for _ in 0..requests {
            b.deposit(t0);
        }
        assert_eq!(
            drain(&mut b, t0),
            want,
            "ratio {ratio}, min {min}, {requests} requests"
        );
    }
}

#[test]
fn the_budget_refills_once_the_window_has_passed() {
    let t0 = Instant::now();
    let mut b = budget(0.2, 10, t0);
    for _ in 0..1000 {
        b.deposit(t0);
    }
    assert_eq!(drain(&mut b, t0), 300);
    // The window covers at least the last 10 s: slice 0 (deposits and
    // withdrawals alike) stays in it until 11 s.
    assert_eq!(b.available(t0 + secs(10.999)), 0);
    // Then only the floor is left: the requests left with their slice.
    assert_eq!(b.available(t0 + secs(11.0)), 100);
    for _ in 0..50 {
        b.deposit(t0 + secs(11.0));
    }
    assert_eq!(drain(&mut b, t0 + secs(11.5)), 110);
    // A long pause expires everything.
    assert_eq!(b.available(t0 + Duration::from_secs(3600)), 100);
}

#[test]
fn zero_traffic_gets_only_the_floor_in_any_window() {
    let t0 = Instant::now();
    let mut b = budget(0.2, 10, t0);
    // Try to retry every 10 ms for a minute.
    let mut granted = Vec::new();
    for i in 0..6000u32 {
        let t = t0 + Duration::from_millis(u64::from(i) * 10);
        if b.try_withdraw(t) {
            granted.push(t);
        }
    }
    for &start in &granted {
        let in_window = granted
            .iter()
            .filter(|&&t| t >= start && t < start + Duration::from_secs(10))
            .count();
        assert!(in_window <= 100, "{in_window} retries within 10 s");
    }
    // Roughly the floor's rate over the minute (the window is 10-11 s).
    assert!((500..=600).contains(&granted.len()), "{}", granted.len());
}

#[test]
fn full_outage_stays_within_ratio_plus_floor() {
    let t0 = Instant::now();
    let mut b = budget(0.2, 10, t0);
    // 100 requests a second for two minutes, every one failing and asking
    // for a retry.
    let mut deposits = Vec::new();
    let mut retries = Vec::new();
    for i in 0..12_000u64 {
        let t = t0 + Duration::from_millis(i * 10);
        b.deposit(t);
        deposits.push(t);
        if b.try_withdraw(t) {
            retries.push(t);
        }
    }
    // Every 10 s interval: ratio × its requests (and the slice before it)
    // plus the floor.
    let ttl = Duration::from_secs(10);
    for s in 0..110u64 {
        let start = t0 + Duration::from_secs(s);
        let end = start + ttl;
        let from = start.checked_sub(Duration::from_secs(1)).unwrap_or(t0);
        let n_retries = retries.iter().filter(|&&t| t >= start && t < end).count();
        let n_requests = deposits.iter().filter(|&&t| t >= from && t < end).count();
        let bound = (0.2 * n_requests as f64).floor() as usize + 100;
        assert!(
            n_retries <= bound,
            "at {s} s: {n_retries} retries > {bound}"
        );
    }
    // Over the run: close to 20 % of 12,000 plus 10 a second.
    let total = retries.len();
    assert!((3000..=3700).contains(&total), "{total} retries");
}

#[test]
fn clock_skew_between_callers_is_harmless() {
    let t0 = Instant::now();
    let mut b = budget(0.2, 0, t0 + secs(5.0));
    // Earlier than the budget's creation, then earlier than the last call.
    for _ in 0..10 {
        b.deposit(t0);
    }
    b.deposit(t0 + secs(20.0));
    for _ in 0..9 {
        b.deposit(t0 + secs(19.0));
    }
    assert_eq!(drain(&mut b, t0 + secs(19.5)), 2);
}

#[test]
fn invalid_budgets_are_refused() {
    let ok = RetryBudget::default();
    assert_eq!(ok.validate(), Ok(()));
    let bad = [
        RetryBudget { ratio: -0.1, ..ok },
        RetryBudget {
            ratio: 1000.5,
            ..ok
        },
        RetryBudget {
            ratio: f64::NAN,
            ..ok
        },
        RetryBudget {
            ttl: Duration::ZERO,
            ..ok
        },
        RetryBudget {
            ttl: Duration::from_millis(999),
            ..ok
        },
        RetryBudget {
            ttl: Duration::from_secs(61),
            ..ok
        },
    ];
    for config in bad {
        assert!(Budget::new(&config, Instant::now()).is_err(), "{config:?}");
    }
    let err = RetryBudget { ratio: -1.0, ..ok }.validate().unwrap_err();
    assert_eq!(
        err.to_string(),
        "retry budget ratio -1 is not a number within 0 and 1000"
    );
}

#[test]
fn shared_between_threads() {
    let t0 = Instant::now();
    let shared = Arc::new(SharedBudget::new(&RetryBudget::default(), t0).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let b = shared.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    b.deposit(t0);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(shared.available(t0), 900);
    let granted = (0..1000).filter(|_| shared.try_withdraw(t0)).count();
    assert_eq!(granted, 900);
}
