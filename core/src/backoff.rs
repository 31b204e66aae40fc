//! The one backoff of Trellis: exponential from a base, capped, with full
//! jitter. Every retry loop that waits goes through it.
//!
//! Wait `n` (0 for the first after a success) is uniformly random in
//! `[0, min(max, base · 2ⁿ)]`: AWS's "full jitter" (Marc Brooker,
//! "Exponential Backoff And Jitter", 2015). Clients that failed together —
//! every proxy when the controller restarts — spread over the whole
//! window instead of coming back in the same instant, and on average wait
//! half the ceiling.
//!
//! - [`Exponential`]: the policy (base and cap), and the pure
//!   [`Exponential::delay`]`(attempt, unit)` that the tables test.
//! - [`Backoff`]: a retry loop's state: [`Backoff::next_wait`] after each
//!   failure, [`Backoff::reset`] after a success. Its randomness is
//!   injectable ([`Backoff::with_random`]); [`Backoff::without_jitter`]
//!   always waits the whole ceiling, for the restart backoffs that copy
//!   kubelet's (deterministic, and shown to users as they are).

use std::time::Duration;

/// Exponential backoff, capped: the ceiling of wait `n` is
/// `min(max, base · 2ⁿ)`, and the wait is uniform below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exponential {
    /// The ceiling of the first wait.
    pub base: Duration,
    /// The ceiling of every wait.
    pub max: Duration,
}

impl Exponential {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The longest wait `attempt` (0 for the first) can be:
    /// `min(max, base · 2^attempt)`, without overflow.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Wait `attempt` (0 for the first) with full jitter: `unit`, uniform in
    /// `[0, 1]`, times the ceiling. Values outside are clamped, NaN counts
    /// as 0; 1 gives the ceiling exactly.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        if unit >= 1.0 {
            return ceiling;
        }
        let unit = if unit.is_nan() { 0.0 } else { unit.max(0.0) };
        // Rounding near `Duration::MAX` could overflow: keep the ceiling then.
        Duration::try_from_secs_f64(ceiling.as_secs_f64() * unit)
            .map_or(ceiling, |d| d.min(ceiling))
    }

    /// The same policy with its cap lowered to `cap` (never raised).
    pub fn capped(self, cap: Duration) -> Self {
        Self {
            max: self.max.min(cap),
            ..self
        }
    }
}

/// A retry loop's backoff: the policy, the waits taken since the last
/// success, and where the jitter comes from (`random`, uniform in
/// `[0, 1]`).
#[derive(Debug, Clone)]
pub struct Backoff<R = fn() -> f64> {
    policy: Exponential,
    /// Waits taken since the last [`Backoff::reset`].
    attempt: u32,
    random: R,
}

impl Backoff {
    /// Full jitter from the thread's random generator: every process, and
    /// every loop, draws its own.
    pub fn new(policy: Exponential) -> Self {
        Self::with_random(policy, rand::random::<f64>)
    }

    /// Always the whole ceiling: no jitter.
    pub fn without_jitter(policy: Exponential) -> Self {
        Self::with_random(policy, || 1.0)
    }
}

impl<R: FnMut() -> f64> Backoff<R> {
    /// Jitter from `random` (tests: a fixed sequence, a seeded generator).
    pub fn with_random(policy: Exponential, random: R) -> Self {
        Self {
            policy,
            attempt: 0,
            random,
        }
    }

    /// The wait after a failure, counting it.
    pub fn next_wait(&mut self) -> Duration {
        self.next_wait_at_most(self.policy.max)
    }

    /// The wait after a failure, counting it, with the cap lowered to
    /// `cap` for this one wait: a site's own limit on top of the policy
    /// (the proxy's certificate renewal never waits past what is left of
    /// the certificate).
    pub fn next_wait_at_most(&mut self, cap: Duration) -> Duration {
        let wait = self.policy.capped(cap).delay(self.attempt, (self.random)());
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

    pub fn policy(&self) -> Exponential {
        self.policy
    }
}

#[cfg(test)]
mod tests;
