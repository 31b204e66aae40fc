//! Retry budgets, as in Linkerd and Finagle: retries may add at most a
//! fixed fraction to a route's load, plus a small floor so that a route
//! with little traffic can still retry.
//!
//! Every original request [`deposit`](Budget::deposit)s; every retry must
//! [`try_withdraw`](Budget::try_withdraw). Over any window of `ttl`, the
//! retries allowed are
//!
//! ```text
//! ratio × requests + min_per_sec × ttl (seconds)
//! ```
//!
//! so when a backend fails everything, load is bounded by
//! `(1 + ratio) ×` the client's plus the floor, instead of multiplied by
//! the retry limit. Retries themselves deposit nothing.
//!
//! The window slides in slices of `ttl / SLICES`: counts are kept per
//! slice, and a slice's counts leave the window whole once time has moved
//! past it. The window is the current slice and the [`SLICES`] before it,
//! so it always covers at least the last `ttl` (at most one slice more):
//! over any interval of `ttl`, retries stay within `ratio ×` the requests
//! of that interval and the slice before it, plus `min_per_sec × ttl` —
//! with no traffic, never more than the floor. Totals over the window are
//! kept beside the slices, so both operations are O(1) (O([`SLICES`]) when
//! a long pause expires every slice). The arithmetic is exact: the ratio
//! is fixed to millionths, and counts and allowance are integers in those
//! units.
//!
//! Sharing: a [`Budget`] is plain state (`&mut self`); [`SharedBudget`]
//! puts it behind a `std::sync::Mutex`, one per route. Each operation
//! holds the lock for a few integer operations, so the lock is effectively
//! uncontended on a sidecar's few cores; atomics would need a CAS loop
//! over slice rotation plus totals to stay consistent, for no gain here.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Slices per `ttl`; the window keeps one more (the current slice).
pub const SLICES: usize = 10;
const SLOTS: usize = SLICES + 1;
/// Millionths: the resolution of `ratio`.
const SCALE: u128 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum BudgetError {
    #[error("retry budget ratio {0} is not a number within 0 and 1000")]
    Ratio(f64),
    #[error("retry budget window {0:?} is not within 1 s and 60 s")]
    Ttl(Duration),
}

/// A route's budget, as configured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Retries allowed per original request in the window.
    pub ratio: f64,
    /// Retries allowed per second of the window regardless of traffic.
    pub min_per_sec: u32,
    /// The window.
    pub ttl: Duration,
}

impl Default for RetryBudget {
    /// Linkerd's defaults: 20 % extra load, 10 retries a second, over 10 s.
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_sec: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

impl RetryBudget {
    pub fn validate(&self) -> Result<(), BudgetError> {
        if !(0.0..=1000.0).contains(&self.ratio) {
            return Err(BudgetError::Ratio(self.ratio));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.ttl) {
            return Err(BudgetError::Ttl(self.ttl));
        }
        Ok(())
    }
}

/// The live state of one budget.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Scaled allowance per deposit.
    ratio: u128,
    /// Scaled allowance of the window regardless of deposits.
    reserve: u128,
    epoch: Instant,
    slice: Duration,
    /// Number of the current slice, counted from `epoch`.
    head: u64,
    slices: [Slice; SLOTS],
    deposits: u64,
    withdrawals: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slice {
    deposits: u64,
    withdrawals: u64,
}

impl Budget {
    pub fn new(config: &RetryBudget, now: Instant) -> Result<Self, BudgetError> {
        config.validate()?;
        // Validated: 0 ≤ ratio ≤ 1000, so the scaled value fits.
        let ratio = (config.ratio * SCALE as f64).round() as u128;
        let reserve = u128::from(config.min_per_sec) * config.ttl.as_millis() * SCALE / 1000;
        Ok(Self {
            ratio,
            reserve,
            epoch: now,
            // Validated: ttl ≥ 1 s, so a slice is never zero.
            slice: config.ttl / SLICES as u32,
            head: 0,
            slices: [Slice::default(); SLOTS],
            deposits: 0,
            withdrawals: 0,
        })
    }

    /// Records an original request.
    pub fn deposit(&mut self, now: Instant) {
        let i = self.advance(now);
        self.slices[i].deposits += 1;
        self.deposits += 1;
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let i = self.advance(now);
        if self.available_now() == 0 {
            return false;
        }
        self.slices[i].withdrawals += 1;
        self.withdrawals += 1;
        true
    }

    /// Retries the budget would allow at `now`.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.advance(now);
        self.available_now()
    }

    fn available_now(&self) -> u64 {
        let allowance = (self.ratio * u128::from(self.deposits) + self.reserve) / SCALE;
        let left = allowance.saturating_sub(u128::from(self.withdrawals));
        u64::try_from(left).unwrap_or(u64::MAX)
    }

    /// Moves the window to `now`, expiring the slices it left; returns the
    /// index of the current slice. A `now` older than the current slice
    /// (callers racing for the lock) counts in the current slice.
    fn advance(&mut self, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos();
        let current = u64::try_from(elapsed / self.slice.as_nanos().max(1)).unwrap_or(u64::MAX);
        if current > self.head {
            let expired = (current - self.head).min(SLOTS as u64);
            for step in 1..=expired {
                let i = slot(self.head + step);
                let gone = std::mem::take(&mut self.slices[i]);
                self.deposits -= gone.deposits;
                self.withdrawals -= gone.withdrawals;
            }
            self.head = current;
        }
        slot(self.head)
    }
}

fn slot(slice: u64) -> usize {
    // The remainder is below SLOTS, so it fits any usize.
    (slice % SLOTS as u64) as usize
}

/// A [`Budget`] shared by the requests of one route.
#[derive(Debug)]
pub struct SharedBudget(Mutex<Budget>);

impl SharedBudget {
    pub fn new(config: &RetryBudget, now: Instant) -> Result<Self, BudgetError> {
        Budget::new(config, now).map(|b| Self(Mutex::new(b)))
    }
    pub fn deposit(&self, now: Instant) {
        self.lock().deposit(now);
    }
    pub fn try_withdraw(&self, now: Instant) -> bool {
        self.lock().try_withdraw(now)
    }
    pub fn available(&self, now: Instant) -> u64 {
        self.lock().available(now)
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Budget> {
        // Nothing under the lock can panic half-way through an update (plain
        // integer operations on totals that always cover the slices), so a
        // poisoned lock still guards consistent state.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
