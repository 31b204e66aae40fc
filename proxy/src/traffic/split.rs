//! Weighted choice among a rule's backends: a traffic split.
//!
//! Gateway API semantics: each backend gets `weight / sum(weights)` of the
//! requests; a backend of weight 0 gets none; when every weight is 0 there
//! is no backend and the request fails with 500. A rule that names no
//! backend sends to its parent service.
//!
//! The choice is a pure function of the weights and one uniform random
//! `u32`: the random number is scaled onto `[0, total)` by
//! multiply-and-shift (no modulo, so no bias beyond `total / 2³²`) and the
//! backend whose cumulative weight first exceeds it wins. The same inputs
//! always give the same backend.

use super::route::{BackendRef, WeightedBackend};

/// Index of the item chosen for `random` (uniform over all of `u32`), by
/// the weights `weight` gives; `None` when every weight is 0 (or there are
/// no items).
pub fn pick_by<T>(items: &[T], weight: impl Fn(&T) -> u32, random: u32) -> Option<usize> {
    let total: u64 = items.iter().map(|i| u64::from(weight(i))).sum();
    if total == 0 {
        return None;
    }
    // (random × total) / 2³², always below total.
    let target = (u128::from(random) * u128::from(total)) >> 32;
    let mut cumulative = 0u128;
    for (index, item) in items.iter().enumerate() {
        cumulative += u128::from(weight(item));
        if cumulative > target {
            return Some(index);
        }
    }
    None
}

/// [`pick_by`] over plain weights.
pub fn pick(weights: &[u32], random: u32) -> Option<usize> {
    pick_by(weights, |w| *w, random)
}

/// [`pick`] with a random number uniform in `[0, 1)`; values outside are
/// clamped.
pub fn pick_f64(weights: &[u32], random: f64) -> Option<usize> {
    // Saturating float-to-int cast: NaN gives 0, ≥ 1 gives u32::MAX.
    let random = (random * 4_294_967_296.0) as u32;
    pick(weights, random)
}

/// Where a rule sends one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice<'a> {
    /// The rule names no backend: the route's parent service.
    Parent,
    Backend(&'a BackendRef),
    /// Every backend has weight 0: answer 500.
    NoneAvailable,
}

/// The backend of `backends` that takes a request, for `random` uniform
/// over `u32`.
pub fn choose_backend(backends: &[WeightedBackend], random: u32) -> BackendChoice<'_> {
    if backends.is_empty() {
        return BackendChoice::Parent;
    }
    match pick_by(backends, |b| b.weight, random).and_then(|i| backends.get(i)) {
        Some(b) => BackendChoice::Backend(&b.backend),
        None => BackendChoice::NoneAvailable,
    }
}

#[cfg(test)]
mod tests;
