//! Peak-EWMA latency estimate of one endpoint (Finagle's, as Linkerd and
//! tower use it).
//!
//! With `E` the estimate after the last sample at `t`, and
//! `w = exp(−(now − t) / decay)`:
//!
//! - the first sample replaces the default estimate a new endpoint starts
//!   with (a guess is worth less than a measurement);
//! - a sample `r` above the current value replaces it at once (peak
//!   sensitivity: a slow endpoint is avoided immediately);
//! - a sample at or below it is blended in, `E·w + r·(1 − w)`: the longer
//!   since the last sample, the more the new one counts;
//! - between samples the value read is `E·w`, decaying towards zero, so
//!   an endpoint that stopped getting traffic because it looked slow looks
//!   cheaper as time passes and is tried again.
//!
//! Values are kept in nanoseconds as `f64`.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub(super) struct PeakEwma {
    estimate: f64,
    /// The last sample; `None` before the first (the default estimate holds
    /// without decay).
    updated: Option<Instant>,
}

impl PeakEwma {
    pub(super) fn new(initial: Duration) -> Self {
        Self {
            estimate: nanos(initial),
            updated: None,
        }
    }

    /// The estimate at `now`, in nanoseconds.
    pub(super) fn get(&self, now: Instant, decay: Duration) -> f64 {
        self.estimate * self.weight(now, decay)
    }

    /// Adds a sample. `raise_only`: a sample that would lower the estimate
    /// is ignored (a fast failure must not make an endpoint look good).
    pub(super) fn observe(
        &mut self,
        now: Instant,
        rtt: Duration,
        decay: Duration,
        raise_only: bool,
    ) {
        let rtt = nanos(rtt);
        let w = self.weight(now, decay);
        let current = self.estimate * w;
        let first = self.updated.is_none();
        if rtt > current || (first && !raise_only) {
            self.estimate = rtt;
        } else if raise_only {
            return;
        } else {
            self.estimate = current + rtt * (1.0 - w);
        }
        // A sample older than the last keeps the later time (no negative Δ).
        self.updated = Some(self.updated.map_or(now, |t| t.max(now)));
    }

    fn weight(&self, now: Instant, decay: Duration) -> f64 {
        let Some(t) = self.updated else { return 1.0 };
        let elapsed = nanos(now.saturating_duration_since(t));
        let decay = nanos(decay).max(1.0);
        (-elapsed / decay).exp()
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}
