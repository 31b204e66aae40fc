use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const HALF: u32 = 1 << 31;

#[test]
fn pick_table() {
    // (weights, random, chosen index)
    let cases: &[(&[u32], u32, Option<usize>)] = &[
        (&[], 0, None),
        (&[0], 7, None),
        (&[0, 0, 0], u32::MAX, None),
        (&[5], 0, Some(0)),
        (&[5], u32::MAX, Some(0)),
        (&[0, 3], 0, Some(1)),
        (&[0, 3], u32::MAX, Some(1)),
        (&[3, 0], u32::MAX, Some(0)),
        (&[1, 1], 0, Some(0)),
        (&[1, 1], HALF - 1, Some(0)),
        (&[1, 1], HALF, Some(1)),
        (&[1, 1], u32::MAX, Some(1)),
        // 90/10: the first 90 % of the range goes to the first backend.
        (
            &[90, 10],
            (u64::from(u32::MAX) * 9 / 10) as u32 - 1,
            Some(0),
        ),
        (
            &[90, 10],
            (u64::from(u32::MAX) * 9 / 10) as u32 + 2,
            Some(1),
        ),
        // Zero weights in the middle are skipped, not chosen.
        (&[1, 0, 1], HALF - 1, Some(0)),
        (&[1, 0, 1], HALF, Some(2)),
        // Weights summing past u32::MAX.
        (&[u32::MAX, u32::MAX], HALF - 1, Some(0)),
        (&[u32::MAX, u32::MAX], HALF, Some(1)),
    ];
    for &(weights, random, want) in cases {
        assert_eq!(pick(weights, random), want, "{weights:?} {random}");
    }
}

#[test]
fn pick_f64_maps_onto_the_u32_range() {
    let w = [1, 1];
    assert_eq!(pick_f64(&w, 0.0), Some(0));
    assert_eq!(pick_f64(&w, 0.4999), Some(0));
    assert_eq!(pick_f64(&w, 0.5), Some(1));
    assert_eq!(pick_f64(&w, 0.9999999), Some(1));
    // Out of range or NaN: clamped, never a panic.
    assert_eq!(pick_f64(&w, 1.5), Some(1));
    assert_eq!(pick_f64(&w, -1.0), Some(0));
    assert_eq!(pick_f64(&w, f64::NAN), Some(0));
    assert_eq!(pick_f64(&[0, 0], 0.3), None);
}

#[test]
fn same_input_same_choice() {
    let w = [3, 1, 6];
    for r in [0, 1, 12345, HALF, u32::MAX] {
        assert_eq!(pick(&w, r), pick(&w, r));
    }
}

#[test]
fn sweeping_the_range_gives_exact_proportions() {
    // Every 2^12-th random value: 2^20 samples spread evenly over u32.
    let weights = [90, 10, 0, 25];
    let mut counts = [0u64; 4];
    for i in 0..(1u64 << 20) {
        let r = (i << 12) as u32;
        counts[pick(&weights, r).unwrap()] += 1;
    }
    let total: u64 = counts.iter().sum();
    for (w, c) in weights.iter().zip(counts) {
        let want = total as f64 * f64::from(*w) / 125.0;
        assert!((c as f64 - want).abs() <= 1.0, "{w}: {c} vs {want}");
    }
}

#[test]
fn ninety_ten_over_a_seeded_rng_is_within_one_percent() {
    let mut rng = StdRng::seed_from_u64(0x7e_1115);
    let backends = [
        WeightedBackend {
            backend: BackendRef::new("web-v1:80"),
            weight: 90,
        },
        WeightedBackend {
            backend: BackendRef::new("web-v2:80"),
            weight: 10,
        },
    ];
    let n = 100_000;
    let mut v1 = 0;
    for _ in 0..n {
        match choose_backend(&backends, rng.random()) {
            BackendChoice::Backend(b) if b.as_str() == "web-v1:80" => v1 += 1,
            BackendChoice::Backend(_) => {}
            other => panic!("{other:?}"),
        }
    }
    let share = f64::from(v1) / f64::from(n);
    assert!((share - 0.9).abs() < 0.01, "web-v1 got {share}");
}

#[test]
fn choose_backend_table() {
    let b = |name: &str, weight| WeightedBackend {
        backend: BackendRef::new(name),
        weight,
    };
    assert_eq!(choose_backend(&[], 0), BackendChoice::Parent);
    assert_eq!(
        choose_backend(&[b("a", 0), b("b", 0)], 0),
        BackendChoice::NoneAvailable
    );
    let only = [b("a", 0), b("b", 1)];
    for r in [0, HALF, u32::MAX] {
        assert_eq!(
            choose_backend(&only, r),
            BackendChoice::Backend(&BackendRef::new("b"))
        );
    }
}
