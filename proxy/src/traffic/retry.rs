//! Whether to retry a failed try, and after how long: [`decide`], a pure
//! function of the route's [`RetryPolicy`] and the facts of the
//! [`Attempt`].
//!
//! A failure is retried only when all of these hold, checked in this order
//! (the first that fails is the [`Why`] of a [`RetryDecision::NoRetry`]):
//!
//! 1. the outcome is retryable: an HTTP status the policy lists (single
//!    codes, or ranges such as 5xx), a `grpc-status` code it lists (a gRPC
//!    response is judged by its `grpc-status` alone when it has one), a
//!    connect error, a per-try timeout, or a reset after sending;
//! 2. the request may be sent again: its method is idempotent (`GET HEAD
//!    OPTIONS PUT DELETE TRACE`), or the policy makes every method
//!    retryable, or the request never left (a connect error), or the
//!    server answered with a `grpc-status` the policy lists (every gRPC
//!    call is a `POST`, so listing a code is the explicit marking, as in
//!    gRPC's own retry policy);
//! 3. its body was fully buffered for replay (at most [`REPLAY_LIMIT`]
//!    bytes; larger bodies are streamed and cannot be sent twice);
//! 4. fewer than `limit` retries were made;
//! 5. the backoff ends before the route's request timeout;
//! 6. the route's retry budget pays for it — asked last, through the
//!    `withdraw` callback, so the budget is spent only on retries that
//!    happen, and `BudgetExhausted` means exactly "this failure would have
//!    been retried": the `trellis_http_retry_budget_exhausted_total` count.
//!
//! Backoff is the workspace's one ([`trellis_core::backoff`]): retry `n`
//! (from 0) waits a uniformly random time in `[0, min(max, base × 2ⁿ)]`,
//! the randomness passed in as [`Attempt::jitter`].

use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use trellis_core::backoff::Exponential;

use super::budget::RetryBudget;
use super::route::Timeouts;

/// Envoy's backoff between retries: 25 ms, doubling, at most 250 ms.
pub const DEFAULT_BACKOFF: Exponential =
    Exponential::new(Duration::from_millis(25), Duration::from_millis(250));

/// Largest request body buffered for replay (64 KiB): the body module's
/// buffer limit, restated here because it decides retryability.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// gRPC status codes (as tonic numbers them) that policies commonly name.
pub mod grpc_code {
    pub const CANCELLED: i32 = 1;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
}

/// A rule's retry policy: from the Gateway API retry fields and the
/// `retry.trellis.dev/*` annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries per request, at most (not counting the first try).
    pub limit: u32,
    /// Retryable HTTP statuses.
    pub http_statuses: Vec<StatusRange>,
    /// Retryable `grpc-status` codes.
    pub grpc_codes: Vec<i32>,
    /// Limit on each try; `None`: the rule's backend-request timeout.
    pub per_try_timeout: Option<Duration>,
    pub backoff: Exponential,
    /// Retries the route may make, relative to its traffic.
    pub budget: RetryBudget,
    /// Retry every method, not only the idempotent ones.
    pub non_idempotent: bool,
}

impl Default for RetryPolicy {
    /// Two retries of 5xx and `UNAVAILABLE`, Envoy's backoff
    /// ([`DEFAULT_BACKOFF`]), the default budget.
    fn default() -> Self {
        Self {
            limit: 2,
            http_statuses: vec![StatusRange::class(5)],
            grpc_codes: vec![grpc_code::UNAVAILABLE],
            per_try_timeout: None,
            backoff: DEFAULT_BACKOFF,
            budget: RetryBudget::default(),
            non_idempotent: false,
        }
    }
}

/// HTTP statuses `from..=to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub from: u16,
    pub to: u16,
}

impl StatusRange {
    pub fn single(code: u16) -> Self {
        Self {
            from: code,
            to: code,
        }
    }
    /// A class: `class(5)` is 500–599.
    pub fn class(hundreds: u16) -> Self {
        let from = hundreds.saturating_mul(100);
        Self {
            from,
            to: from.saturating_add(99),
        }
    }
    pub fn contains(&self, status: StatusCode) -> bool {
        (self.from..=self.to).contains(&status.as_u16())
    }
}

/// What happened to one try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryOutcome {
    /// A response: its status and, for gRPC, its `grpc-status` (from the
    /// headers of a trailers-only response, or from the trailers).
    Response {
        status: StatusCode,
        grpc_status: Option<i32>,
    },
    /// No connection: the request never left the proxy.
    ConnectError,
    /// The try outlived its per-try timeout.
    PerTryTimeout,
    /// The connection or stream broke after the request was sent.
    Reset,
}

/// The facts of a failed try that [`decide`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub method: &'a Method,
    /// `Some(len)`: the whole body was buffered, `len` bytes (0: no body);
    /// `None`: it is being streamed and cannot be replayed.
    pub body_buffered: Option<u64>,
    pub outcome: TryOutcome,
    /// Retries already made for this request.
    pub retries: u32,
    /// Time left until the route's request timeout; `None`: no timeout.
    pub remaining: Option<Duration>,
    /// Uniform in `[0, 1)`: the backoff's jitter.
    pub jitter: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    Retry {
        after: Duration,
        reason: RetryReason,
    },
    NoRetry(Why),
}

/// Why a try is retried: the `reason` label of `trellis_http_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// A 5xx status listed by a range.
    Status5xx,
    /// Any other listed status.
    StatusCode,
    GrpcStatus,
    ConnectError,
    PerTryTimeout,
    Reset,
}

impl RetryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status5xx => "status_5xx",
            Self::StatusCode => "status_code",
            Self::GrpcStatus => "grpc_status",
            Self::ConnectError => "connect_error",
            Self::PerTryTimeout => "per_try_timeout",
            Self::Reset => "reset",
        }
    }
}

/// Why a failure passes through to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Why {
    /// A success, or a failure the policy does not retry.
    NotRetryable,
    NonIdempotent,
    BodyNotBuffered,
    LimitReached,
    /// The backoff would end at or past the route's request timeout.
    Deadline,
    BudgetExhausted,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotRetryable => "not_retryable",
            Self::NonIdempotent => "non_idempotent",
            Self::BodyNotBuffered => "body_not_buffered",
            Self::LimitReached => "limit_reached",
            Self::Deadline => "deadline",
            Self::BudgetExhausted => "budget_exhausted",
        }
    }
}

/// Retry or not; `withdraw` takes one retry from the route's budget and is
/// called only when every other condition allows the retry.
pub fn decide(
    policy: &RetryPolicy,
    attempt: &Attempt<'_>,
    withdraw: impl FnOnce() -> bool,
) -> RetryDecision {
    use RetryDecision::NoRetry;
    let Some(reason) = retryable(policy, attempt.outcome) else {
        return NoRetry(Why::NotRetryable);
    };
    let explicit = matches!(reason, RetryReason::ConnectError | RetryReason::GrpcStatus);
    if !(explicit || policy.non_idempotent || is_idempotent(attempt.method)) {
        return NoRetry(Why::NonIdempotent);
    }
    if attempt.body_buffered.is_none_or(|len| len > REPLAY_LIMIT) {
        return NoRetry(Why::BodyNotBuffered);
    }
    if attempt.retries >= policy.limit {
        return NoRetry(Why::LimitReached);
    }
    let after = policy.backoff.delay(attempt.retries, attempt.jitter);
    if attempt.remaining.is_some_and(|left| after >= left) {
        return NoRetry(Why::Deadline);
    }
    if !withdraw() {
        return NoRetry(Why::BudgetExhausted);
    }
    RetryDecision::Retry { after, reason }
}

fn retryable(policy: &RetryPolicy, outcome: TryOutcome) -> Option<RetryReason> {
    match outcome {
        TryOutcome::ConnectError => Some(RetryReason::ConnectError),
        TryOutcome::PerTryTimeout => Some(RetryReason::PerTryTimeout),
        TryOutcome::Reset => Some(RetryReason::Reset),
        TryOutcome::Response {
            grpc_status: Some(code),
            ..
        } => policy
            .grpc_codes
            .contains(&code)
            .then_some(RetryReason::GrpcStatus),
        TryOutcome::Response { status, .. } => {
            let listed = policy.http_statuses.iter().filter(|r| r.contains(status));
            let mut reason = None;
            for range in listed {
                if range.from == range.to || !status.is_server_error() {
                    return Some(RetryReason::StatusCode);
                }
                reason = Some(RetryReason::Status5xx);
            }
            reason
        }
    }
}

/// RFC 9110's idempotent methods.
pub fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(method)
}

/// The `grpc-status` of a response's headers or trailers, if it has one.
pub fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The limit on one try: the policy's per-try timeout, else the rule's
/// backend-request timeout, and never past the request's deadline.
pub fn try_timeout(
    policy: Option<&RetryPolicy>,
    timeouts: Timeouts,
    remaining: Option<Duration>,
) -> Option<Duration> {
    let per_try = policy
        .and_then(|p| p.per_try_timeout)
        .or(timeouts.backend_request);
    match (per_try, remaining) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests;
