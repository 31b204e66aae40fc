use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::ewma::PeakEwma;
use super::*;

const DECAY: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn balancer(keys: &[&'static str]) -> Balancer<&'static str> {
    let mut b = Balancer::new(BalancerConfig::default(), 7);
    b.update_endpoints(keys.iter().copied());
    b
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= b.abs() * 1e-9 + 1e-6
}

/// Two samples of `rtt` at `now`: what makes an estimate.
fn measured(rtt: Duration, now: Instant) -> PeakEwma {
    let mut e = PeakEwma::default();
    e.observe(now, rtt, DECAY, false);
    e.observe(now, rtt, DECAY, false);
    e
}

#[test]
fn ewma_is_unmeasured_until_two_samples() {
    let t0 = Instant::now();
    let mut e = PeakEwma::default();
    assert_eq!(e.get(t0, DECAY), None);
    e.observe(t0, ms(40), DECAY, false);
    assert_eq!(e.get(t0, DECAY), None);
    // The lower of the two: one slow first answer does not brand it.
    e.observe(t0, ms(4), DECAY, false);
    assert!(close(e.get(t0, DECAY).unwrap(), 4e6));
    // Failures alone make no estimate.
    let mut e = PeakEwma::default();
    e.observe(t0, ms(1), DECAY, true);
    e.observe(t0, ms(1), DECAY, true);
    assert_eq!(e.get(t0, DECAY), None);
}

#[test]
fn ewma_rises_at_once_when_the_whole_window_is_slow() {
    let t0 = Instant::now();
    let mut e = measured(ms(10), t0);
    e.observe(t0, ms(500), DECAY, false);
    e.observe(t0, ms(800), DECAY, false);
    assert!(close(e.get(t0, DECAY).unwrap(), 10e6));
    // The window is all slow: the lowest of it replaces the estimate,
    // however recent the last.
    e.observe(t0, ms(900), DECAY, false);
    assert!(close(e.get(t0, DECAY).unwrap(), 500e6));
    e.observe(t0, ms(1000), DECAY, false);
    assert!(close(e.get(t0, DECAY).unwrap(), 800e6));
    // A lower sample at the same instant changes nothing (w = 1).
    e.observe(t0, ms(1), DECAY, false);
    assert!(close(e.get(t0, DECAY).unwrap(), 800e6));
}

#[test]
fn ewma_ignores_hiccups() {
    let t0 = Instant::now();
    let mut e = measured(ms(1), t0);
    // Two slow answers in a row, then normal ones: nothing moves.
    let t1 = t0 + ms(1);
    e.observe(t1, ms(50), DECAY, false);
    e.observe(t1, ms(70), DECAY, false);
    e.observe(t1, ms(1), DECAY, false);
    let w = (-1e-4f64).exp();
    assert!(close(e.get(t1, DECAY).unwrap(), 1e6 * w + 1e6 * (1.0 - w)));
}

#[test]
fn ewma_lower_samples_blend_with_the_decay_time_constant() {
    let t0 = Instant::now();
    let mut e = measured(ms(100), t0);
    // One time constant later: 100·e⁻¹ + 10·(1 − e⁻¹), once the window has
    // only 10 ms samples.
    let w = (-1.0f64).exp();
    let at = t0 + DECAY;
    assert!(close(e.get(at, DECAY).unwrap(), 100e6 * w));
    e.observe(at, ms(10), DECAY, false);
    let want = 100e6 * w + 10e6 * (1.0 - w);
    assert!(close(e.get(at, DECAY).unwrap(), want));
    // Long after, a sample all but replaces the estimate.
    let later = at + DECAY * 20;
    e.observe(later, ms(10), DECAY, false);
    assert!(close(e.get(later, DECAY).unwrap(), 10e6));
    // Between samples the value decays towards zero.
    assert!(close(e.get(later + DECAY, DECAY).unwrap(), 10e6 * w));
}

#[test]
fn ewma_raise_only_ignores_good_looking_samples() {
    let t0 = Instant::now();
    let mut e = measured(ms(50), t0);
    e.observe(t0 + DECAY, ms(1), DECAY, true);
    assert!(close(
        e.get(t0 + DECAY, DECAY).unwrap(),
        50e6 * (-1.0f64).exp()
    ));
    // A window of slow failures raises it.
    for _ in 0..3 {
        e.observe(t0 + DECAY, ms(90), DECAY, true);
    }
    assert!(close(e.get(t0 + DECAY, DECAY).unwrap(), 90e6));
}

#[test]
fn cost_is_latency_times_pending_plus_one() {
    let t0 = Instant::now();
    let mut b = balancer(&["a"]);
    // Nothing measured: the default.
    assert!(close(b.cost(&"a", t0).unwrap(), 30e6));
    b.start(&"a");
    b.start(&"a");
    assert_eq!(b.pending(&"a"), Some(2));
    assert!(close(b.cost(&"a", t0).unwrap(), 90e6));
    // Two responses make the estimate.
    b.finish(&"a", t0, ms(60), Outcome::Success);
    b.finish(&"a", t0, ms(60), Outcome::Success);
    assert!(close(b.cost(&"a", t0).unwrap(), 60e6));
    b.start(&"a");
    assert!(close(b.cost(&"a", t0).unwrap(), 120e6));
}

#[test]
fn an_unmeasured_endpoint_costs_the_backends_average() {
    let t0 = Instant::now();
    let mut b = balancer(&["a", "b", "new"]);
    for (k, latency) in [("a", 2), ("b", 4)] {
        answer(&mut b, k, t0, ms(latency));
    }
    assert!(close(b.cost(&"new", t0).unwrap(), 3e6));
}

/// A replica's simulated response time: `base` with ±30 % noise, and a
/// hiccup of 10× one time in a hundred.
fn noisy(base: Duration, rng: &mut StdRng) -> Duration {
    use rand::Rng;
    let hiccup = if rng.random_bool(0.01) { 10.0 } else { 1.0 };
    base.mul_f64(rng.random_range(0.7..1.3) * hiccup)
}

/// Sends `n` requests one after another (the clock advancing by each
/// response time) and counts where each went.
fn sequential(
    b: &mut Balancer<&'static str>,
    n: usize,
    now: &mut Instant,
    latency: impl Fn(&str, &mut StdRng) -> Duration,
    rng: &mut StdRng,
) -> HashMap<&'static str, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let k = b.pick(*now, rng).expect("endpoints");
        b.start(&k);
        let took = latency(k, rng);
        *now += took;
        b.finish(&k, *now, took, Outcome::Success);
        *counts.entry(k).or_default() += 1;
    }
    counts
}

fn assert_even(counts: &HashMap<&'static str, usize>, keys: &[&'static str], n: usize) {
    let share = n / keys.len();
    for k in keys {
        let got = counts.get(k).copied().unwrap_or(0);
        assert!(
            got.abs_diff(share) * 10 <= share,
            "{k} got {got} of {n} (even share {share}): {counts:?}"
        );
    }
}

#[test]
fn equal_replicas_share_evenly_one_request_at_a_time() {
    let keys = ["a", "b", "c"];
    for seed in 0..50 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut b = Balancer::new(BalancerConfig::default(), seed);
        b.update_endpoints(keys);
        let mut now = Instant::now();
        let counts = sequential(&mut b, 600, &mut now, |_, r| noisy(ms(1), r), &mut rng);
        assert_even(&counts, &keys, 600);
    }
}

/// Eight requests in flight; each replica answers in 1 ms ± 30 %, and with
/// `hiccups` one answer in a hundred takes ten times as long.
fn concurrent(seed: u64, hiccups: bool) -> HashMap<&'static str, usize> {
    use rand::Rng;
    let keys = ["a", "b", "c"];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut b = Balancer::new(BalancerConfig::default(), seed);
    b.update_endpoints(keys);
    let mut now = Instant::now();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    // The one due first finishes next.
    let mut in_flight: Vec<(Instant, &'static str, Duration)> = Vec::new();
    for _ in 0..600 {
        if in_flight.len() == 8 {
            in_flight.sort_by_key(|f| std::cmp::Reverse(f.0));
            let (due, k, took) = in_flight.pop().expect("eight");
            now = now.max(due);
            b.finish(&k, now, took, Outcome::Success);
        }
        let k = b.pick(now, &mut rng).expect("endpoints");
        b.start(&k);
        let took = if hiccups {
            noisy(ms(1), &mut rng)
        } else {
            ms(1).mul_f64(rng.random_range(0.7..1.3))
        };
        in_flight.push((now + took, k, took));
        *counts.entry(k).or_default() += 1;
        now += Duration::from_micros(rng.random_range(50..250));
    }
    counts
}

#[test]
fn equal_replicas_share_evenly_under_concurrency() {
    for seed in 0..50 {
        assert_even(&concurrent(seed, false), &["a", "b", "c"], 600);
    }
    // A replica stuck on a slow answer holds a request longer and is given
    // fewer meanwhile (the load term), but none is starved.
    for seed in 0..50 {
        let counts = concurrent(seed, true);
        for k in ["a", "b", "c"] {
            let got = counts.get(k).copied().unwrap_or(0);
            assert!((150..=250).contains(&got), "{k}: {counts:?}");
        }
    }
}

#[test]
fn new_replicas_get_their_share_at_once() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut b = balancer(&["a"]);
    let mut now = Instant::now();
    sequential(&mut b, 1000, &mut now, |_, r| noisy(ms(1), r), &mut rng);
    // Scaled 1 → 3: the two new replicas (never measured) are not starved
    // by a guess; the next 600 requests split evenly.
    b.update_endpoints(["a", "b", "c"]);
    let counts = sequential(&mut b, 600, &mut now, |_, r| noisy(ms(1), r), &mut rng);
    assert_even(&counts, &["a", "b", "c"], 600);
}

#[test]
fn a_slow_replica_gets_less_and_a_recovered_one_is_tried_again() {
    let mut rng = StdRng::seed_from_u64(12);
    let mut b = balancer(&["a", "b", "slow"]);
    let mut now = Instant::now();
    let slow = |k: &str, r: &mut StdRng| {
        if k == "slow" {
            noisy(ms(40), r)
        } else {
            noisy(ms(1), r)
        }
    };
    let counts = sequential(&mut b, 3000, &mut now, slow, &mut rng);
    let to_slow = counts.get("slow").copied().unwrap_or(0);
    assert!(
        to_slow <= 30,
        "the slow replica got {to_slow} of 3000: {counts:?}"
    );
    // It recovers: as its estimate decays it is tried again, and from its
    // first fast answer on it takes its share.
    let mut recovered = 0;
    for _ in 0..120 {
        let counts = sequential(&mut b, 600, &mut now, |_, r| noisy(ms(1), r), &mut rng);
        recovered += 1;
        if counts.get("slow").copied().unwrap_or(0) >= 150 {
            break;
        }
    }
    // 600 requests take about 0.6 s here; τ = 1 s decays 40 ms to the
    // others' level within a few seconds.
    assert!(
        recovered < 120,
        "the recovered replica was never tried again"
    );
    let counts = sequential(&mut b, 600, &mut now, |_, r| noisy(ms(1), r), &mut rng);
    assert_even(&counts, &["a", "b", "slow"], 600);
}

#[test]
fn new_replicas_of_a_quiet_service_are_used_too() {
    // One request every 2 s: no estimate is ever fresh.
    let mut b = balancer(&["a"]);
    let mut now = Instant::now();
    let mut rng = StdRng::seed_from_u64(14);
    for _ in 0..5 {
        sequential(&mut b, 1, &mut now, |_, _| ms(1), &mut rng);
        now += Duration::from_secs(2);
    }
    b.update_endpoints(["a", "b", "c"]);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for _ in 0..30 {
        for (k, n) in sequential(&mut b, 1, &mut now, |_, _| ms(1), &mut rng) {
            *counts.entry(k).or_default() += n;
        }
        now += Duration::from_secs(2);
    }
    for k in ["a", "b", "c"] {
        assert!(counts.get(k).copied().unwrap_or(0) >= 6, "{counts:?}");
    }
}

#[test]
fn an_endpoint_measured_under_load_is_not_shunned_once_the_load_is_gone() {
    // "a" answered slowly while it alone took a burst; then "b" and "c"
    // join and measure fast. Once its estimate is stale, "a" is tried
    // again, and three fast answers take it back.
    let mut rng = StdRng::seed_from_u64(15);
    let mut b = balancer(&["a"]);
    let mut now = Instant::now();
    sequential(&mut b, 50, &mut now, |_, r| noisy(ms(8), r), &mut rng);
    b.update_endpoints(["a", "b", "c"]);
    let fast = |_: &str, r: &mut StdRng| noisy(ms(1), r);
    // About 3 s of traffic, one request at a time.
    sequential(&mut b, 2500, &mut now, fast, &mut rng);
    let counts = sequential(&mut b, 600, &mut now, fast, &mut rng);
    assert_even(&counts, &["a", "b", "c"], 600);
}

#[test]
fn a_never_picked_endpoint_is_not_starved_by_measured_ones() {
    // The bug this balancer once had: two replicas measured at ~1 ms, a
    // third never picked kept its 30 ms starting guess and lost every
    // comparison for ever.
    let mut rng = StdRng::seed_from_u64(13);
    let mut b = balancer(&["a", "b"]);
    let mut now = Instant::now();
    sequential(&mut b, 500, &mut now, |_, r| noisy(ms(1), r), &mut rng);
    b.update_endpoints(["a", "b", "c"]);
    let counts = sequential(&mut b, 30, &mut now, |_, r| noisy(ms(1), r), &mut rng);
    assert!(counts.get("c").copied().unwrap_or(0) >= 8, "{counts:?}");
}

#[test]
fn p2c_prefers_the_cheaper_endpoint() {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(1);
    let mut b = balancer(&["fast", "slow"]);
    answer(&mut b, "slow", t0, ms(200));
    answer(&mut b, "fast", t0, ms(5));
    assert!(close(b.cost(&"slow", t0).unwrap(), 200e6));
    // Two endpoints: both are always the two choices.
    for _ in 0..100 {
        assert_eq!(b.pick(t0, &mut rng), Some("fast"));
    }
    // Enough requests in flight make the fast one the dearer.
    for _ in 0..40 {
        b.start(&"fast");
    }
    assert_eq!(b.pick(t0, &mut rng), Some("slow"));
}

#[test]
fn p2c_never_picks_the_most_expensive_of_three() {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(2);
    let mut b = balancer(&["a", "b", "c"]);
    for (k, latency) in [("a", 10), ("b", 20), ("c", 300)] {
        answer(&mut b, k, t0, ms(latency));
    }
    let mut counts = [0; 3];
    for _ in 0..3000 {
        match b.pick(t0, &mut rng) {
            Some("a") => counts[0] += 1,
            Some("b") => counts[1] += 1,
            other => panic!("picked {other:?}"),
        }
    }
    // "a" wins both pairs it is in (2/3), "b" only the pair with "c".
    assert!((1800..2200).contains(&counts[0]), "{counts:?}");
    assert!((800..1200).contains(&counts[1]), "{counts:?}");
}

#[test]
fn a_slow_idle_endpoint_is_tried_again_as_its_estimate_decays() {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(3);
    let mut b = balancer(&["steady", "was-slow"]);
    answer(&mut b, "was-slow", t0, Duration::from_secs(2));
    let later = t0 + Duration::from_secs(60);
    answer(&mut b, "steady", later, ms(20));
    assert_eq!(b.pick(t0, &mut rng), Some("steady"));
    // 2 s decayed over 60 s is next to nothing: cheaper than 20 ms.
    assert_eq!(b.pick(later, &mut rng), Some("was-slow"));
}

/// Two answers from `key` after `latency`, at `now`: an estimate.
fn answer(b: &mut Balancer<&'static str>, key: &'static str, now: Instant, latency: Duration) {
    for _ in 0..2 {
        b.start(&key);
        b.finish(&key, now, latency, Outcome::Success);
    }
}

/// Fails `key` `n` times at `now`.
fn fail(b: &mut Balancer<&'static str>, key: &'static str, n: u32, now: Instant) {
    for _ in 0..n {
        b.start(&key);
        b.finish(&key, now, ms(1), Outcome::Failure);
    }
}

#[test]
fn seven_consecutive_failures_eject() {
    let t0 = Instant::now();
    let mut b = balancer(&["a", "b"]);
    fail(&mut b, "a", 6, t0);
    assert_eq!(b.health(&"a", t0), Some(Health::Healthy));
    // A success resets the count.
    answer(&mut b, "a", t0, ms(1));
    fail(&mut b, "a", 6, t0);
    assert_eq!(b.health(&"a", t0), Some(Health::Healthy));
    fail(&mut b, "a", 1, t0);
    assert_eq!(b.health(&"a", t0), Some(Health::Ejected));
    let mut rng = StdRng::seed_from_u64(4);
    for _ in 0..50 {
        assert_eq!(b.pick(t0, &mut rng), Some("b"));
    }
}

/// When `key`'s current ejection ends: the first instant, in 10 ms steps
/// from `from`, at which it awaits its probe.
fn ejection_end(b: &Balancer<&'static str>, key: &'static str, from: Instant) -> Duration {
    let mut d = Duration::ZERO;
    while b.health(&key, from + d) == Some(Health::Ejected) {
        d += ms(10);
        assert!(d < Duration::from_secs(3600));
    }
    d
}

#[test]
fn probe_success_readmits_probe_failure_ejects_for_longer() {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(5);
    let mut b = balancer(&["a", "b"]);
    fail(&mut b, "a", 7, t0);
    // First ejection: 1 s, jittered to between 0.5 s and 1 s.
    let first = ejection_end(&b, "a", t0);
    assert!((ms(500)..=ms(1000)).contains(&first), "{first:?}");
    let t1 = t0 + first;
    assert_eq!(b.health(&"a", t1), Some(Health::AwaitingProbe));
    // Make "a" the cheaper, so it is picked as soon as it may be.
    answer(&mut b, "b", t1, Duration::from_secs(5));
    b.start(&"b");
    assert_eq!(b.pick(t1, &mut rng), Some("a"));
    b.start(&"a");
    assert_eq!(b.health(&"a", t1), Some(Health::Probing));
    // Exactly one probe: "a" is not picked while it is out.
    for _ in 0..50 {
        assert_eq!(b.pick(t1, &mut rng), Some("b"));
    }
    // The probe fails: ejected again, for 2 s jittered.
    b.finish(&"a", t1, ms(1), Outcome::Failure);
    let second = ejection_end(&b, "a", t1);
    assert!((ms(1000)..=ms(2000)).contains(&second), "{second:?}");
    // Then 4 s; this probe succeeds and readmits it.
    let t2 = t1 + second;
    b.start(&"a");
    b.finish(&"a", t2, ms(1), Outcome::Failure);
    let third = ejection_end(&b, "a", t2);
    assert!((ms(2000)..=ms(4000)).contains(&third), "{third:?}");
    let t3 = t2 + third;
    answer(&mut b, "a", t3, ms(1));
    assert_eq!(b.health(&"a", t3), Some(Health::Healthy));
    // Readmission resets the backoff: the next ejection is 1 s again.
    fail(&mut b, "a", 7, t3);
    let again = ejection_end(&b, "a", t3);
    assert!((ms(500)..=ms(1000)).contains(&again), "{again:?}");
}

#[test]
fn backoff_is_capped() {
    let t0 = Instant::now();
    let mut b = balancer(&["a", "b"]);
    fail(&mut b, "a", 7, t0);
    let mut now = t0;
    for _ in 0..12 {
        now += ejection_end(&b, "a", now);
        fail(&mut b, "a", 1, now);
    }
    let last = ejection_end(&b, "a", now);
    assert!(
        (Duration::from_secs(30)..=Duration::from_secs(60)).contains(&last),
        "{last:?}"
    );
}

#[test]
fn stale_outcomes_do_not_change_health() {
    let t0 = Instant::now();
    let mut b = balancer(&["a", "b"]);
    // Two requests in flight when "a" is ejected.
    b.start(&"a");
    b.start(&"a");
    fail(&mut b, "a", 7, t0);
    b.finish(&"a", t0, ms(1), Outcome::Success);
    assert_eq!(b.health(&"a", t0), Some(Health::Ejected));
    let end = t0 + ejection_end(&b, "a", t0);
    b.finish(&"a", end, ms(1), Outcome::Success);
    assert_eq!(b.health(&"a", end), Some(Health::AwaitingProbe));
    assert_eq!(b.pending(&"a"), Some(0));
}

#[test]
fn never_ejects_the_last_available_endpoint() {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(6);
    let mut b = balancer(&["only"]);
    fail(&mut b, "only", 50, t0);
    assert_eq!(b.health(&"only", t0), Some(Health::Healthy));
    assert_eq!(b.pick(t0, &mut rng), Some("only"));

    let mut b = balancer(&["a", "b"]);
    fail(&mut b, "a", 7, t0);
    fail(&mut b, "b", 20, t0);
    assert_eq!(b.health(&"a", t0), Some(Health::Ejected));
    assert_eq!(b.health(&"b", t0), Some(Health::Healthy));
    assert_eq!(b.pick(t0, &mut rng), Some("b"));
}

#[test]
fn least_bad_when_nothing_may_take_a_request() {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(8);
    let mut b = balancer(&["a", "b", "c"]);
    fail(&mut b, "a", 7, t0);
    fail(&mut b, "b", 7, t0 + ms(1));
    assert_eq!(b.health(&"b", t0 + ms(1)), Some(Health::Ejected));
    // Discovery removes the one healthy endpoint: all left are ejected, and
    // the pick is the one back soonest.
    b.update_endpoints(["a", "b"]);
    let end_a = ejection_end(&b, "a", t0);
    let end_b = ejection_end(&b, "b", t0);
    let soonest = if end_a <= end_b { "a" } else { "b" };
    assert_eq!(b.pick(t0 + ms(2), &mut rng), Some(soonest));
    // Picking it makes it the probe; while it is out, the other stays
    // ejected and the probing one is still the least bad.
    b.start(&soonest);
    assert_eq!(b.health(&soonest, t0 + ms(2)), Some(Health::Probing));
    assert_eq!(b.pick(t0 + ms(2), &mut rng), Some(soonest));
}

#[test]
fn update_keeps_state_of_remaining_endpoints() {
    let t0 = Instant::now();
    let mut b = balancer(&["a", "b"]);
    b.start(&"a");
    answer(&mut b, "b", t0, ms(400));
    fail(&mut b, "a", 7, t0);
    b.update_endpoints(["b", "c", "c"]);
    assert_eq!(b.len(), 2);
    assert_eq!(b.health(&"a", t0), None);
    assert!(close(b.cost(&"b", t0).unwrap(), 400e6));
    assert!(close(b.cost(&"c", t0).unwrap(), 400e6));
    // "a" returns as a new endpoint; a late finish for a removed one is
    // ignored.
    b.finish(&"z", t0, ms(1), Outcome::Failure);
    b.update_endpoints(["a", "b"]);
    assert_eq!(b.health(&"a", t0), Some(Health::Healthy));
    assert_eq!(b.pending(&"a"), Some(0));
    b.update_endpoints([]);
    assert!(b.is_empty());
    assert_eq!(b.pick(t0, &mut StdRng::seed_from_u64(9)), None);
}

#[derive(Debug, Clone)]
enum Op {
    /// Pick, and start a request to what was picked.
    Request,
    /// Finish the `n`-th request in flight (modulo their number).
    Finish {
        n: usize,
        latency_ms: u64,
        ok: bool,
    },
    /// A finish for any key, in flight or not.
    Stray {
        key: u8,
        ok: bool,
    },
    Advance {
        ms: u64,
    },
    /// Keep the endpoints whose bit is set in `mask` (of 6 possible).
    Update {
        mask: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Request),
        6 => (any::<usize>(), 0..500u64, prop::bool::weighted(0.3))
            .prop_map(|(n, latency_ms, ok)| Op::Finish { n, latency_ms, ok }),
        1 => (0..6u8, any::<bool>()).prop_map(|(key, ok)| Op::Stray { key, ok }),
        2 => (0..5000u64).prop_map(|ms| Op::Advance { ms }),
        1 => any::<u8>().prop_map(|mask| Op::Update { mask }),
    ]
}

fn count(b: &Balancer<u8>, now: Instant, keys: &[u8], h: &[Health]) -> usize {
    keys.iter()
        .filter(|k| b.health(k, now).is_some_and(|x| h.contains(&x)))
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn picks_respect_ejection(
        ops in prop::collection::vec(op(), 1..300),
        seed in any::<u64>(),
        threshold in 1..4u32,
    ) {
        use Health::*;
        let config = BalancerConfig { failure_threshold: threshold, ..BalancerConfig::default() };
        let mut b = Balancer::new(config, seed);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut keys: Vec<u8> = (0..4).collect();
        b.update_endpoints(keys.clone());
        let mut now = Instant::now();
        let mut in_flight: Vec<u8> = Vec::new();
        for op in ops {
            let available_before = count(&b, now, &keys, &[Healthy, AwaitingProbe, Probing]);
            match op {
                Op::Request => {
                    let picked = b.pick(now, &mut rng);
                    prop_assert_eq!(picked.is_some(), !keys.is_empty());
                    let Some(k) = picked else { continue };
                    prop_assert!(keys.contains(&k));
                    let h = b.health(&k, now);
                    // Never an ejected endpoint while another is not ejected.
                    if count(&b, now, &keys, &[Healthy, AwaitingProbe, Probing]) > 0 {
                        prop_assert_ne!(h, Some(Ejected));
                    }
                    // A second request to a probing endpoint only when no
                    // endpoint may take one under the rules.
                    if h == Some(Probing) {
                        prop_assert_eq!(count(&b, now, &keys, &[Healthy, AwaitingProbe]), 0);
                    }
                    b.start(&k);
                    in_flight.push(k);
                }
                Op::Finish { n, latency_ms, ok } => {
                    if in_flight.is_empty() { continue; }
                    let k = in_flight.swap_remove(n % in_flight.len());
                    let outcome = if ok { Outcome::Success } else { Outcome::Failure };
                    b.finish(&k, now, Duration::from_millis(latency_ms), outcome);
                    // A failure never takes out the last available endpoint.
                    if available_before > 0 {
                        prop_assert!(count(&b, now, &keys, &[Healthy, AwaitingProbe, Probing]) > 0);
                    }
                }
                Op::Stray { key, ok } => {
                    let outcome = if ok { Outcome::Success } else { Outcome::Failure };
                    b.finish(&key, now, Duration::from_millis(1), outcome);
                    if available_before > 0 {
                        prop_assert!(count(&b, now, &keys, &[Healthy, AwaitingProbe, Probing]) > 0);
                    }
                }
                Op::Advance { ms } => now += Duration::from_millis(ms),
                Op::Update { mask } => {
                    keys = (0..6).filter(|i| mask & (1 << i) != 0).collect();
                    b.update_endpoints(keys.clone());
                    prop_assert_eq!(b.len(), keys.len());
                }
            }
        }
    }

    #[test]
    fn an_all_ejected_set_still_yields_a_pick(n in 1..6u8, seed in any::<u64>(), later_ms in 0..3000u64) {
        let t0 = Instant::now();
        let mut b = Balancer::new(BalancerConfig::default(), seed);
        let mut rng = StdRng::seed_from_u64(seed);
        // One spare endpoint lets every other one be ejected; then it goes.
        b.update_endpoints(0..=n);
        for k in 0..n {
            for _ in 0..7 {
                b.start(&k);
                b.finish(&k, t0, Duration::from_millis(1), Outcome::Failure);
            }
            prop_assert_eq!(b.health(&k, t0), Some(Health::Ejected));
        }
        b.update_endpoints(0..n);
        let now = t0 + Duration::from_millis(later_ms);
        let k = b.pick(now, &mut rng);
        prop_assert!(k.is_some_and(|k| k < n));
    }
}
