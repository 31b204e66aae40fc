//! Peak-EWMA latency estimate of one endpoint (Finagle's, as Linkerd and
//! tower use it), fed through a spike filter so that it stays fair to
//! equal replicas.
//!
//! **The filter.** The estimate jumps only on what the endpoint's last
//! [`WINDOW`] samples agree on, not on each raw sample. One or two slow
//! samples in a row (a scheduling hiccup, a GC pause, a cold cache) do not
//! move it; an endpoint that is really slow answers slowly every time, and
//! the estimate rises to the fastest of a window of slow answers. Likewise
//! it falls at once to the slowest of a window of fast answers: an
//! endpoint that recovered is believed after three of them, where a plain
//! EWMA would take most of a decay period.
//! An endpoint with fewer than two samples has no estimate
//! ([`PeakEwma::get`] answers `None`) and the balancer costs it as an
//! average one of its backend. (A fixed guess that never decays starved new
//! replicas: an unmeasured endpoint at 30 ms lost every comparison against
//! measured ones at 1 ms, for ever.)
//!
//! **The estimate.** With `E` the estimate when it was last set at `t`, and
//! `w = exp(−(now − t) / decay)`:
//!
//! - `lo`, the lowest sample of the window, above the current value `E·w`
//!   replaces it at once (peak sensitivity: a slow endpoint is avoided
//!   immediately);
//! - `hi`, the highest of the window, below `E·w` replaces it too (a
//!   recovered endpoint is taken back);
//! - otherwise the new sample `r` is blended in, `E·w + r·(1 − w)`: the
//!   longer since the last sample, the more the new one counts;
//! - between samples the value read is `E·w`, decaying towards zero, so
//!   an endpoint that stopped getting traffic because it looked slow looks
//!   cheaper as time passes and is tried again.
//!
//! Values are kept in nanoseconds as `f64`.

use std::time::{Duration, Instant};

/// Samples the spike filter looks back over.
pub(super) const WINDOW: usize = 3;

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PeakEwma {
    /// The last samples, newest at `recent[(next + WINDOW - 1) % WINDOW]`.
    recent: [f64; WINDOW],
    /// Samples taken, up to `WINDOW`.
    taken: usize,
    /// Where the next sample goes.
    next: usize,
    /// `None` until two samples were taken.
    estimate: Option<Estimate>,
    /// When the last sample was taken.
    sampled: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Estimate {
    value: f64,
    /// When `value` was last set: the origin of its decay.
    updated: Instant,
}

impl PeakEwma {
    /// The estimate at `now`, in nanoseconds; `None` before two samples.
    pub(super) fn get(&self, now: Instant, decay: Duration) -> Option<f64> {
        self.estimate
            .map(|e| e.value * weight(e.updated, now, decay))
    }

    /// When the last sample was taken, if ever.
    pub(super) fn sampled(&self) -> Option<Instant> {
        self.sampled
    }

    /// Adds a sample. `raise_only` (a failed request's): the sample may
    /// raise the estimate but never lower it, so a fast failure does not
    /// make an endpoint look good.
    pub(super) fn observe(
        &mut self,
        now: Instant,
        rtt: Duration,
        decay: Duration,
        raise_only: bool,
    ) {
        let r = nanos(rtt);
        self.recent[self.next] = r;
        self.next = (self.next + 1) % WINDOW;
        self.taken = (self.taken + 1).min(WINDOW);
        self.sampled = Some(self.sampled.map_or(now, |t| t.max(now)));
        if self.taken < 2 {
            return;
        }
        let window = &self.recent[..self.taken];
        let lo = window.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = window.iter().copied().fold(0.0, f64::max);
        let Some(e) = self.estimate.as_mut() else {
            if !raise_only {
                self.estimate = Some(Estimate {
                    value: lo,
                    updated: now,
                });
            }
            return;
        };
        let w = weight(e.updated, now, decay);
        let current = e.value * w;
        if lo > current {
            e.value = lo;
        } else if raise_only {
            return;
        } else if hi < current {
            e.value = hi;
        } else {
            e.value = current + r * (1.0 - w);
        }
        // A sample older than the last keeps the later time (no negative Δ).
        e.updated = e.updated.max(now);
    }
}

fn weight(updated: Instant, now: Instant, decay: Duration) -> f64 {
    let elapsed = nanos(now.saturating_duration_since(updated));
    let decay = nanos(decay).max(1.0);
    (-elapsed / decay).exp()
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}
