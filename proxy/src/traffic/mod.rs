//! Traffic management, the "decide" half: pure functions and plain state
//! machines that say what to do with an outbound request. Nothing here does
//! IO, spawns a task or reads the clock; time comes in as
//! [`std::time::Instant`] / [`std::time::Duration`] arguments and
//! randomness as numbers or a caller's [`rand::Rng`], so every decision is
//! reproducible in a table test.
//!
//! For one request to a service the forwarding path asks, in order:
//!
//! 1. [`route::select`]: which route and rule of the service's
//!    [`route::RouteTable`] apply (Gateway API `HTTPRoute`/`GRPCRoute`
//!    precedence). The route's name is the `route` label of the golden
//!    metrics; no match means the `default` route and the service itself.
//! 2. [`split::choose_backend`]: which of the rule's weighted backends (a
//!    traffic split) takes the request.
//! 3. [`balance::Balancer::pick`]: which endpoint of that backend, by
//!    power-of-two-choices over peak-EWMA latency, skipping endpoints that
//!    failure accrual has ejected.
//! 4. After a failed try, [`retry::decide`]: retry (after how long, for which
//!    `reason`) or let the failure through — which consults the route's
//!    [`budget::Budget`] last, so a retry is only paid for when everything
//!    else allows it.
//!
//! The IO half (buffering bodies for replay, timers, sockets, metrics)
//! executes these plans elsewhere.

pub mod balance;
pub mod budget;
pub mod retry;
pub mod route;
pub mod split;
