//! The controller's one backoff: exponential, capped, with "equal jitter".
//! Every retry of the controller waits through it: the Kubernetes watches
//! ([`crate::watches`]), the trust roots distributor's writes
//! ([`crate::roots`]) and the route status writes ([`crate::status`]).
//!
//! The ceiling of the n-th wait (0 for the first) is
//! `min(first · 2ⁿ, max)`, and the wait is uniform in
//! `[ceiling / 2, ceiling]`: half fixed, half random. Until the cap, each
//! wait is at least as long as the one before (the lower bound of one is
//! the upper bound of the previous), so failures never speed up; at the
//! cap, waits spread over `[max / 2, max]`, so many replicas (or many
//! watches) that fail together do not retry in step.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// Waits taken since the last [`Backoff::reset`].
    attempt: u32,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            attempt: 0,
        }
    }

    /// The next wait (random jitter), counting it.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.wait(self.attempt, rand::random::<f64>());
        self.attempt = self.attempt.saturating_add(1);
        wait
    }

    /// Back to the first wait (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Waits taken since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The wait before retry `attempt` (0 for the first), `jitter` uniform
    /// in `[0, 1]` (clamped; NaN counts as 0). Pure.
    pub fn wait(&self, attempt: u32, jitter: f64) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        let ceiling = self.first.saturating_mul(factor).min(self.max);
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        let half = ceiling / 2;
        half + half.mul_f64(jitter)
    }

    /// The longest any wait can be.
    pub fn max(&self) -> Duration {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));

    #[test]
    fn waits_double_until_the_cap_within_half_and_whole_of_the_ceiling() {
        let ceilings = [1, 2, 4, 8, 10, 10, 10];
        for (attempt, ceiling) in ceilings.iter().enumerate() {
            let ceiling = Duration::from_secs(*ceiling);
            let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
            assert_eq!(B.wait(attempt, 0.0), ceiling / 2, "attempt {attempt}");
            assert_eq!(B.wait(attempt, 1.0), ceiling, "attempt {attempt}");
        }
        assert_eq!(B.wait(u32::MAX, 1.0), Duration::from_secs(10));
        assert_eq!(B.wait(0, f64::NAN), Duration::from_millis(500));
        assert_eq!(B.wait(0, 7.0), Duration::from_secs(1));
    }

    #[test]
    fn waits_never_shrink_before_the_cap_and_reset_starts_over() {
        let mut b = B.clone();
        let mut last = Duration::ZERO;
        for _ in 0..4 {
            let w = b.next_wait();
            assert!(w >= last, "{w:?} after {last:?}");
            last = w;
        }
        for _ in 0..20 {
            let w = b.next_wait();
            assert!(w >= Duration::from_secs(5) && w <= Duration::from_secs(10));
        }
        assert_eq!(b.attempts(), 24);
        b.reset();
        assert!(b.next_wait() <= Duration::from_secs(1));
    }
}
