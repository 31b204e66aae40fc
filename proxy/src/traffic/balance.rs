//! Per-request load balancing over a backend's endpoints, with failure
//! accrual: a state machine over endpoint keys, driven by the caller
//! ([`Balancer::pick`] → [`Balancer::start`] → [`Balancer::finish`]) and
//! told the time, so it is tested without sockets or clocks.
//!
//! **Choice.** Power of two choices over peak-EWMA latency (Linkerd's
//! balancer): two distinct endpoints drawn at random among those that may
//! take a request, then compared:
//!
//! 1. if their latency estimates ([`ewma`]) differ by more than noise
//!    ([`BalancerConfig::noise_ratio`] and [`BalancerConfig::noise_floor`]),
//!    the lower cost wins, cost being the estimate × (requests in flight +
//!    1);
//! 2. otherwise the one with fewer requests in flight wins;
//! 3. and between equally loaded ones, the one with the smaller recent
//!    share of picks (a count that decays by 1 % with every pick), then
//!    the one picked less recently.
//!
//! Step 3 is what spreads requests evenly over equal replicas: P2C with
//! this tie-break behaves like round robin when nothing tells the
//! endpoints apart (a coin toss would leave shares to chance), and an
//! endpoint that was passed over for a while — measured during a hiccup,
//! say — wins its ties until it has caught up.
//!
//! **No endpoint is starved by what is not known.** An endpoint without a
//! sample yet is costed as the average of the backend's recently measured
//! endpoints ([`BalancerConfig::default_rtt`] when none is), and having
//! never been picked it wins its ties: a new replica gets its share at
//! once. An estimate not refreshed for [`BalancerConfig::stale_after`]
//! counts for at most that average: an endpoint avoided because it looked
//! slow (or was measured while it was loaded) is tried again about once
//! per period, and taken back as soon as it answers fast again; one that is
//! still slow costs one request per period. A sample from a failed request may raise the
//! estimate but never lower it, so a backend that fails fast does not
//! attract traffic for it.
//!
//! **Failure accrual.** Each endpoint is in one of the [`Health`] states:
//!
//! - `Healthy` until `failure_threshold` consecutive failures (any success
//!   resets the count), then `Ejected` for a backoff: `ejection_base`
//!   doubling with each ejection up to `ejection_max`, then jittered down
//!   by up to half;
//! - `Ejected` until the backoff ends, then `AwaitingProbe`: it may be
//!   picked again, for one request;
//! - `Probing` while that request is in flight: its success readmits the
//!   endpoint (`Healthy`, backoff reset), its failure ejects it again with
//!   the next, longer backoff.
//!
//! Outcomes of requests started before an ejection (finishing while the
//! endpoint is `Ejected` or `AwaitingProbe`) update latency and the pending
//! count but not health; one that finishes while the probe is out is taken
//! for the probe's (requests carry no ticket, to keep them cheap).
//!
//! **Never all at once.** An endpoint is ejected only if some other
//! endpoint is not ejected; otherwise it stays `Healthy` (its failure count
//! kept, so the next failure tries again). Endpoints removed by discovery
//! can still leave only ejected ones; then, and whenever no endpoint may
//! take a request under the rules above, [`Balancer::pick`] chooses the
//! least bad: the cheapest `Probing` endpoint, else the `Ejected` one whose
//! backoff ends first. `pick` answers `None` only when there are no
//! endpoints.
//!
//! A pick scans the endpoints (O(n), no allocation); the caller keeps one
//! `Balancer` per backend behind a lock held for pick + start and for
//! finish.

mod ewma;

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use trellis_core::backoff::Exponential;

use ewma::PeakEwma;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalancerConfig {
    /// Time constant of the latency estimate.
    pub decay: Duration,
    /// Latency assumed of every endpoint while none of the backend's has
    /// answered yet (after that, an unanswered one is costed as their
    /// average).
    pub default_rtt: Duration,
    /// Two latency estimates are told apart only when the higher exceeds
    /// the lower by more than this factor…
    pub noise_ratio: f64,
    /// …and by more than this much; closer ones count as equal, and load,
    /// then recency, decide.
    pub noise_floor: Duration,
    /// An estimate without a new sample for this long counts for no more
    /// than the backend's average: how often an avoided endpoint is
    /// measured again.
    pub stale_after: Duration,
    /// Consecutive failures that eject an endpoint.
    pub failure_threshold: u32,
    /// Backoff of a first ejection; doubles with each further one.
    pub ejection_base: Duration,
    pub ejection_max: Duration,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            decay: Duration::from_secs(1),
            default_rtt: Duration::from_millis(30),
            noise_ratio: 2.0,
            noise_floor: Duration::from_millis(5),
            stale_after: Duration::from_millis(250),
            failure_threshold: 7,
            ejection_base: Duration::from_secs(1),
            ejection_max: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// An endpoint's state, as failure accrual sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Ejected,
    /// Backoff over: the next request to it is a probe.
    AwaitingProbe,
    /// The probe is in flight.
    Probing,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Healthy,
    /// Out until `until`, then awaiting its probe.
    Ejected {
        until: Instant,
    },
    Probing,
}

#[derive(Debug)]
struct Endpoint<K> {
    key: K,
    rtt: PeakEwma,
    pending: u32,
    /// When it was last picked (or joined), in picks of this balancer.
    last_pick: u64,
    /// Its recent share: picks, each worth less by [`SHARE_DECAY`] with
    /// every pick of the balancer since, as of `last_pick`.
    share: f64,
    /// Consecutive failures.
    failures: u32,
    /// Ejections since the endpoint was last readmitted: the backoff's
    /// exponent.
    ejections: u32,
    state: State,
}

impl<K> Endpoint<K> {
    fn health(&self, now: Instant) -> Health {
        match self.state {
            State::Healthy => Health::Healthy,
            State::Ejected { until } if now < until => Health::Ejected,
            State::Ejected { .. } => Health::AwaitingProbe,
            State::Probing => Health::Probing,
        }
    }
}

/// The endpoints of one backend and what the balancer knows of them.
#[derive(Debug)]
pub struct Balancer<K> {
    config: BalancerConfig,
    endpoints: Vec<Endpoint<K>>,
    index: HashMap<K, usize>,
    /// Requests started: the clock of `Endpoint::last_pick`.
    picks: u64,
    /// Jitter of ejection backoffs.
    rng: SmallRng,
}

impl<K: Clone + Eq + Hash> Balancer<K> {
    /// A balancer without endpoints; `seed` seeds the ejection jitter.
    pub fn new(config: BalancerConfig, seed: u64) -> Self {
        Self {
            config,
            endpoints: Vec::new(),
            index: HashMap::new(),
            picks: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
    pub fn health(&self, key: &K, now: Instant) -> Option<Health> {
        self.get(key).map(|e| e.health(now))
    }
    /// Requests started and not finished.
    pub fn pending(&self, key: &K) -> Option<u32> {
        self.get(key).map(|e| e.pending)
    }
    /// The cost the balancer compares: latency estimate × (pending + 1),
    /// in nanoseconds.
    pub fn cost(&self, key: &K, now: Instant) -> Option<f64> {
        let e = self.get(key)?;
        Some(self.cost_of(e, now, &mut Average::default()))
    }

    /// Replaces the endpoint set; endpoints that stay keep their state.
    pub fn update_endpoints(&mut self, keys: impl IntoIterator<Item = K>) {
        let mut old: HashMap<K, Endpoint<K>> = self
            .endpoints
            .drain(..)
            .map(|e| (e.key.clone(), e))
            .collect();
        self.index.clear();
        // A new endpoint joins with the others' average recent share, so
        // it neither floods (a share of 0 would win every tie until it had
        // caught up with history) nor starves.
        let shares: Vec<f64> = old.values().map(|e| self.share(e)).collect();
        let joining_share = if shares.is_empty() {
            0.0
        } else {
            shares.iter().sum::<f64>() / shares.len() as f64
        };
        for key in keys {
            if self.index.contains_key(&key) {
                continue;
            }
            let endpoint = old.remove(&key).unwrap_or_else(|| Endpoint {
                key: key.clone(),
                rtt: PeakEwma::default(),
                pending: 0,
                last_pick: self.picks,
                share: joining_share,
                failures: 0,
                ejections: 0,
                state: State::Healthy,
            });
            self.index.insert(key, self.endpoints.len());
            self.endpoints.push(endpoint);
        }
    }

    /// The endpoint for the next request; `None` only without endpoints.
    /// Call [`start`](Self::start) with it before the next pick.
    pub fn pick<R: Rng + ?Sized>(&self, now: Instant, rng: &mut R) -> Option<K> {
        let eligible =
            |e: &Endpoint<K>| matches!(e.health(now), Health::Healthy | Health::AwaitingProbe);
        let n = self.endpoints.iter().filter(|e| eligible(e)).count();
        let nth = |i: usize| self.endpoints.iter().filter(|e| eligible(e)).nth(i);
        let chosen = match n {
            0 => self.least_bad(now),
            1 => nth(0),
            _ => {
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                match (nth(a), nth(b)) {
                    (Some(x), Some(y)) => Some(self.better(x, y, now)),
                    (x, y) => x.or(y),
                }
            }
        };
        chosen.map(|e| e.key.clone())
    }

    /// The better of two candidates (the module doc's steps 1–3).
    fn better<'a>(&self, x: &'a Endpoint<K>, y: &'a Endpoint<K>, now: Instant) -> &'a Endpoint<K> {
        let mut average = Average::default();
        let lx = self.latency(x, now, &mut average);
        let ly = self.latency(y, now, &mut average);
        let (lo, hi) = if lx <= ly { (lx, ly) } else { (ly, lx) };
        let apart = hi > lo * self.config.noise_ratio
            && hi - lo > self.config.noise_floor.as_secs_f64() * 1e9;
        let y_wins = if apart {
            ly * (f64::from(y.pending) + 1.0) < lx * (f64::from(x.pending) + 1.0)
        } else if x.pending != y.pending {
            y.pending < x.pending
        } else {
            let (sx, sy) = (self.share(x), self.share(y));
            if sx == sy {
                y.last_pick < x.last_pick
            } else {
                sy < sx
            }
        };
        if y_wins {
            y
        } else {
            x
        }
    }

    /// An endpoint's recent share of picks, decayed to this pick.
    fn share(&self, e: &Endpoint<K>) -> f64 {
        let since = self.picks.wrapping_sub(e.last_pick);
        e.share * SHARE_DECAY.powi(i32::try_from(since).unwrap_or(i32::MAX))
    }

    /// An endpoint's latency estimate at `now`, in nanoseconds: its own
    /// while fresh; for one never measured, the backend's average; for a
    /// stale one, the lower of its own and that average.
    fn latency(&self, e: &Endpoint<K>, now: Instant, average: &mut Average) -> f64 {
        let decay = self.config.decay;
        let own = e.rtt.get(now, decay);
        if own.is_some() && self.fresh(e, now) {
            return own.unwrap_or_default();
        }
        let average = *average.0.get_or_insert_with(|| self.average(now));
        match (own, average) {
            (Some(own), Some(average)) => own.min(average),
            (Some(own), None) => own,
            (None, average) => average.unwrap_or(self.config.default_rtt.as_secs_f64() * 1e9),
        }
    }

    fn fresh(&self, e: &Endpoint<K>, now: Instant) -> bool {
        e.rtt
            .sampled()
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.stale_after)
    }

    /// The mean estimate of the endpoints measured recently; of all the
    /// measured ones when none was (a service with little traffic); `None`
    /// when none was ever measured.
    fn average(&self, now: Instant) -> Option<f64> {
        let decay = self.config.decay;
        let mean = |fresh_only: bool| {
            let (sum, n) = self
                .endpoints
                .iter()
                .filter(|e| !fresh_only || self.fresh(e, now))
                .filter_map(|e| e.rtt.get(now, decay))
                .fold((0.0, 0u32), |(sum, n), l| (sum + l, n + 1));
            (n > 0).then(|| sum / f64::from(n))
        };
        mean(true).or_else(|| mean(false))
    }

    fn cost_of(&self, e: &Endpoint<K>, now: Instant, average: &mut Average) -> f64 {
        self.latency(e, now, average) * (f64::from(e.pending) + 1.0)
    }

    /// When nothing may take a request: the cheapest probing endpoint,
    /// else the ejected one back soonest.
    fn least_bad(&self, now: Instant) -> Option<&Endpoint<K>> {
        let mut average = Average::default();
        let probing = self
            .endpoints
            .iter()
            .filter(|e| matches!(e.state, State::Probing))
            .map(|e| (self.cost_of(e, now, &mut average), e))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, e)| e);
        probing.or_else(|| {
            self.endpoints.iter().min_by_key(|e| match e.state {
                State::Ejected { until } => Some(until),
                _ => None,
            })
        })
    }

    /// A request to `key` starts. The first request to an endpoint out of
    /// ejection is its probe.
    pub fn start(&mut self, key: &K) {
        self.picks = self.picks.wrapping_add(1);
        let picks = self.picks;
        let share = self.get(key).map_or(0.0, |e| self.share(e));
        let Some(e) = self.get_mut(key) else { return };
        e.share = share + 1.0;
        e.pending = e.pending.saturating_add(1);
        e.last_pick = picks;
        if let State::Ejected { .. } = e.state {
            e.state = State::Probing;
        }
    }

    /// A request to `key` finished after `latency`. Unknown keys (an
    /// endpoint removed meanwhile) are ignored.
    pub fn finish(&mut self, key: &K, now: Instant, latency: Duration, outcome: Outcome) {
        let Some(&i) = self.index.get(key) else {
            return;
        };
        let decay = self.config.decay;
        let threshold = self.config.failure_threshold;
        let Some(e) = self.endpoints.get_mut(i) else {
            return;
        };
        e.pending = e.pending.saturating_sub(1);
        e.rtt
            .observe(now, latency, decay, outcome == Outcome::Failure);
        match (outcome, e.state) {
            (Outcome::Success, State::Probing) => {
                e.state = State::Healthy;
                e.failures = 0;
                e.ejections = 0;
            }
            (Outcome::Success, _) => e.failures = 0,
            (Outcome::Failure, State::Ejected { .. }) => {}
            (Outcome::Failure, State::Healthy) => {
                e.failures = e.failures.saturating_add(1);
                if e.failures >= threshold {
                    self.eject(i, now);
                }
            }
            (Outcome::Failure, State::Probing) => {
                e.failures = e.failures.saturating_add(1);
                self.eject(i, now);
            }
        }
    }

    /// Ejects endpoint `i` unless that would leave every endpoint ejected.
    fn eject(&mut self, i: usize, now: Instant) {
        let others_available = self
            .endpoints
            .iter()
            .enumerate()
            .any(|(j, e)| j != i && e.health(now) != Health::Ejected);
        if !others_available {
            if let Some(e) = self.endpoints.get_mut(i) {
                e.state = State::Healthy;
            }
            return;
        }
        let backoff = self.next_backoff(i);
        let Some(e) = self.endpoints.get_mut(i) else {
            return;
        };
        e.ejections = e.ejections.saturating_add(1);
        // Only an absurd `ejection_max` overflows an Instant: no ejection then.
        let until = now.checked_add(backoff).unwrap_or(now);
        e.state = State::Ejected { until };
    }

    /// The backoff of endpoint `i`'s next ejection: the ceiling of the
    /// workspace's backoff, jittered to between half and all of it. Not
    /// full jitter, deliberately: an ejection is a quarantine, not a wait
    /// between retries, and one drawn near zero would send the next
    /// request straight back to an endpoint that just failed
    /// `failure_threshold` times in a row.
    fn next_backoff(&mut self, i: usize) -> Duration {
        let ejections = self.endpoints.get(i).map_or(0, |e| e.ejections);
        let full = Exponential::new(self.config.ejection_base, self.config.ejection_max)
            .ceiling(ejections);
        let jitter: f64 = self.rng.random_range(0.5..=1.0);
        Duration::try_from_secs_f64(full.as_secs_f64() * jitter).map_or(full, |d| d.min(full))
    }

    fn get(&self, key: &K) -> Option<&Endpoint<K>> {
        self.index.get(key).and_then(|&i| self.endpoints.get(i))
    }
    fn get_mut(&mut self, key: &K) -> Option<&mut Endpoint<K>> {
        let i = *self.index.get(key)?;
        self.endpoints.get_mut(i)
    }
}

/// How much a pick still counts in an endpoint's recent share after each
/// later pick of the balancer: 0.99, a half-life of about 70 picks.
const SHARE_DECAY: f64 = 0.99;

/// The backend's average latency estimate ([`Balancer::average`]), worked
/// out at most once per decision.
#[derive(Default)]
struct Average(Option<Option<f64>>);

#[cfg(test)]
mod tests;
