use std::cell::Cell;

use super::*;

const KIB: u64 = 1024;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn status(code: u16) -> TryOutcome {
    TryOutcome::Response {
        status: StatusCode::from_u16(code).unwrap(),
        grpc_status: None,
    }
}

fn grpc(code: i32) -> TryOutcome {
    TryOutcome::Response {
        status: StatusCode::OK,
        grpc_status: Some(code),
    }
}

/// Limit 2, 5xx, 429 and `UNAVAILABLE`, backoff 20 ms doubling to 100 ms.
fn policy() -> RetryPolicy {
    RetryPolicy {
        limit: 2,
        http_statuses: vec![StatusRange::class(5), StatusRange::single(429)],
        grpc_codes: vec![grpc_code::UNAVAILABLE],
        backoff: Exponential::new(ms(20), ms(100)),
        ..RetryPolicy::default()
    }
}

/// (method, outcome, body buffered, budget allows, remaining, retries made,
/// decision)
type Row = (
    Method,
    TryOutcome,
    Option<u64>,
    bool,
    Option<Duration>,
    u32,
    RetryDecision,
);

#[test]
fn decision_table() {
    use RetryDecision::{NoRetry, Retry};
    use RetryReason::*;
    let retry = |after: u64, reason| Retry {
        after: ms(after),
        reason,
    };
    let (get, post) = (Method::GET, Method::POST);
    // Jitter 0.5: retry n waits half of min(100, 20 × 2ⁿ) ms.
    #[rustfmt::skip]
    let cases: Vec<Row> = vec![
        // What is retryable.
        (get.clone(), status(503), Some(0), true, None, 0, retry(10, Status5xx)),
        (get.clone(), status(500), Some(0), true, None, 0, retry(10, Status5xx)),
        (get.clone(), status(429), Some(0), true, None, 0, retry(10, StatusCode)),
        (get.clone(), status(404), Some(0), true, None, 0, NoRetry(Why::NotRetryable)),
        (get.clone(), status(200), Some(0), true, None, 0, NoRetry(Why::NotRetryable)),
        (get.clone(), TryOutcome::ConnectError, Some(0), true, None, 0, retry(10, ConnectError)),
        (get.clone(), TryOutcome::PerTryTimeout, Some(0), true, None, 0, retry(10, PerTryTimeout)),
        (get.clone(), TryOutcome::Reset, Some(0), true, None, 0, retry(10, Reset)),
        // gRPC: judged by grpc-status, whatever the HTTP status.
        (post.clone(), grpc(14), Some(5), true, None, 0, retry(10, GrpcStatus)),
        (post.clone(), grpc(3), Some(5), true, None, 0, NoRetry(Why::NotRetryable)),
        (post.clone(), grpc(0), Some(5), true, None, 0, NoRetry(Why::NotRetryable)),
        // Methods.
        (Method::HEAD, status(503), Some(0), true, None, 0, retry(10, Status5xx)),
        (Method::OPTIONS, status(503), Some(0), true, None, 0, retry(10, Status5xx)),
        (Method::PUT, status(503), Some(10), true, None, 0, retry(10, Status5xx)),
        (Method::DELETE, status(503), Some(0), true, None, 0, retry(10, Status5xx)),
        (Method::TRACE, status(503), Some(0), true, None, 0, retry(10, Status5xx)),
        (post.clone(), status(503), Some(10), true, None, 0, NoRetry(Why::NonIdempotent)),
        (Method::PATCH, status(503), Some(10), true, None, 0, NoRetry(Why::NonIdempotent)),
        (post.clone(), TryOutcome::Reset, Some(10), true, None, 0, NoRetry(Why::NonIdempotent)),
        (post.clone(), TryOutcome::PerTryTimeout, Some(10), true, None, 0, NoRetry(Why::NonIdempotent)),
        // A request that never left may be sent again, whatever its method.
        (post.clone(), TryOutcome::ConnectError, Some(10), true, None, 0, retry(10, ConnectError)),
        // Bodies: buffered up to 64 KiB, else streamed.
        (Method::PUT, status(503), Some(64 * KIB), true, None, 0, retry(10, Status5xx)),
        (Method::PUT, status(503), Some(64 * KIB + 1), true, None, 0, NoRetry(Why::BodyNotBuffered)),
        (Method::PUT, status(503), None, true, None, 0, NoRetry(Why::BodyNotBuffered)),
        (post.clone(), TryOutcome::ConnectError, None, true, None, 0, NoRetry(Why::BodyNotBuffered)),
        // Attempts: backoff doubles, limit 2.
        (get.clone(), status(503), Some(0), true, None, 1, retry(20, Status5xx)),
        (get.clone(), status(503), Some(0), true, None, 2, NoRetry(Why::LimitReached)),
        (get.clone(), status(503), Some(0), true, None, 9, NoRetry(Why::LimitReached)),
        // Deadline: the backoff must end before the route's timeout.
        (get.clone(), status(503), Some(0), true, Some(ms(11)), 0, retry(10, Status5xx)),
        (get.clone(), status(503), Some(0), true, Some(ms(10)), 0, NoRetry(Why::Deadline)),
        (get.clone(), status(503), Some(0), true, Some(ms(0)), 0, NoRetry(Why::Deadline)),
        (get.clone(), status(503), Some(0), true, Some(ms(15)), 1, NoRetry(Why::Deadline)),
        // Budget: asked last.
        (get.clone(), status(503), Some(0), false, None, 0, NoRetry(Why::BudgetExhausted)),
        (get.clone(), status(503), Some(0), false, Some(ms(5)), 0, NoRetry(Why::Deadline)),
        (get.clone(), status(503), Some(0), false, None, 2, NoRetry(Why::LimitReached)),
        (get.clone(), status(404), Some(0), false, None, 0, NoRetry(Why::NotRetryable)),
    ];
    let policy = policy();
    for (method, outcome, body, budget, remaining, retries, want) in cases {
        let attempt = Attempt {
            method: &method,
            body_buffered: body,
            outcome,
            retries,
            remaining,
            jitter: 0.5,
        };
        let asked = Cell::new(false);
        let got = decide(&policy, &attempt, || {
            asked.set(true);
            budget
        });
        assert_eq!(got, want, "{attempt:?} budget={budget}");
        // The budget is asked exactly when all else allows the retry.
        let all_else_allows = matches!(got, Retry { .. } | NoRetry(Why::BudgetExhausted));
        assert_eq!(asked.get(), all_else_allows, "{attempt:?}");
    }
}

#[test]
fn policy_switches() {
    let post = Method::POST;
    let attempt = Attempt {
        method: &post,
        body_buffered: Some(0),
        outcome: status(502),
        retries: 0,
        remaining: None,
        jitter: 0.0,
    };
    let mut p = policy();
    assert_eq!(
        decide(&p, &attempt, || true),
        RetryDecision::NoRetry(Why::NonIdempotent)
    );
    p.non_idempotent = true;
    let want = RetryDecision::Retry {
        after: Duration::ZERO,
        reason: RetryReason::Status5xx,
    };
    assert_eq!(decide(&p, &attempt, || true), want);
    p.limit = 0;
    assert_eq!(
        decide(&p, &attempt, || true),
        RetryDecision::NoRetry(Why::LimitReached)
    );
    // A single code listed inside a listed class is reported as a code.
    let mut p = policy();
    p.non_idempotent = true;
    p.http_statuses.push(StatusRange::single(502));
    assert!(matches!(
        decide(&p, &attempt, || true),
        RetryDecision::Retry {
            reason: RetryReason::StatusCode,
            ..
        }
    ));
    // No statuses listed: nothing but connection failures is retried.
    p.http_statuses.clear();
    p.grpc_codes.clear();
    assert_eq!(
        decide(&p, &attempt, || true),
        RetryDecision::NoRetry(Why::NotRetryable)
    );
    let grpc_attempt = Attempt {
        outcome: grpc(14),
        ..attempt
    };
    assert_eq!(
        decide(&p, &grpc_attempt, || true),
        RetryDecision::NoRetry(Why::NotRetryable)
    );
}

#[test]
fn status_ranges() {
    let r = StatusRange::class(5);
    assert_eq!((r.from, r.to), (500, 599));
    assert!(r.contains(StatusCode::INTERNAL_SERVER_ERROR));
    assert!(r.contains(StatusCode::from_u16(599).unwrap()));
    assert!(!r.contains(StatusCode::from_u16(600).unwrap()));
    assert!(!r.contains(StatusCode::from_u16(499).unwrap()));
    assert!(StatusRange::single(429).contains(StatusCode::TOO_MANY_REQUESTS));
    // No overflow on nonsense input.
    assert_eq!(StatusRange::class(700).to, u16::MAX);
}

#[test]
fn labels() {
    let reasons = [
        (RetryReason::Status5xx, "status_5xx"),
        (RetryReason::StatusCode, "status_code"),
        (RetryReason::GrpcStatus, "grpc_status"),
        (RetryReason::ConnectError, "connect_error"),
        (RetryReason::PerTryTimeout, "per_try_timeout"),
        (RetryReason::Reset, "reset"),
    ];
    for (r, s) in reasons {
        assert_eq!(r.as_str(), s);
    }
    assert_eq!(Why::BudgetExhausted.as_str(), "budget_exhausted");
}

#[test]
fn grpc_status_header() {
    let mut h = HeaderMap::new();
    assert_eq!(grpc_status(&h), None);
    h.insert("grpc-status", "14".parse().unwrap());
    assert_eq!(grpc_status(&h), Some(14));
    h.insert("grpc-status", "x".parse().unwrap());
    assert_eq!(grpc_status(&h), None);
}

#[test]
fn try_timeout_table() {
    let p = RetryPolicy {
        per_try_timeout: Some(ms(100)),
        ..RetryPolicy::default()
    };
    let t = |backend_request: Option<u64>| Timeouts {
        request: Some(ms(1000)),
        backend_request: backend_request.map(ms),
    };
    // (policy, timeouts, remaining) → limit of the try
    let cases = [
        (None, t(None), None, None),
        (None, t(None), Some(ms(50)), Some(ms(50))),
        (None, t(Some(300)), None, Some(ms(300))),
        (None, t(Some(300)), Some(ms(50)), Some(ms(50))),
        (Some(&p), t(Some(300)), None, Some(ms(100))),
        (Some(&p), t(None), Some(ms(500)), Some(ms(100))),
        (Some(&p), t(None), Some(ms(70)), Some(ms(70))),
    ];
    for (policy, timeouts, remaining, want) in cases {
        assert_eq!(
            try_timeout(policy, timeouts, remaining),
            want,
            "{timeouts:?} {remaining:?}"
        );
    }
}
