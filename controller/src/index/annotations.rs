//! Trellis's annotations, parsed. Pure; each parser names what it refuses.
//!
//! On routes (HTTPRoute, GRPCRoute), where the Gateway API has no field,
//! the keys of [`ROUTE_ANNOTATIONS`] (key, value syntax, default): the one
//! table the controller, the CLI's mesh file validation (through
//! [`route_annotations`] and [`unknown_route_annotation_message`]) and
//! `docs/mesh-file.md` share. An unknown key under either prefix is
//! reported with the closest known one.
//!
//! Any `retry.trellis.dev/*` annotation the table names turns retries on.
//! Durations are the Gateway API's (GEP-2257): `500ms`, `10s`, `1h30m`.
//! A bad value is reported and that one setting left at its default; the
//! route applies all the same.
//!
//! On Services, Pods and Namespaces: `config.trellis.dev/opaque-ports`
//! (`25,443,4000-4010`), `config.trellis.dev/default-inbound-policy` and
//! `config.trellis.dev/port-inbound-policy` (`8080=deny,9090=audit`).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use trellis_api::discovery::v1 as pb;
use trellis_core::config::{parse_ports, PortRange};

use super::inbound::DefaultPolicy;

pub const RETRY_PREFIX: &str = "retry.trellis.dev/";
pub const TIMEOUT_PREFIX: &str = "timeout.trellis.dev/";
pub const RETRY_LIMIT: &str = "retry.trellis.dev/limit";
pub const RETRY_HTTP_STATUSES: &str = "retry.trellis.dev/http-statuses";
pub const RETRY_GRPC_CODES: &str = "retry.trellis.dev/grpc-codes";
pub const RETRY_PER_TRY_TIMEOUT: &str = "retry.trellis.dev/per-try-timeout";
pub const RETRY_BACKOFF: &str = "retry.trellis.dev/backoff";
pub const RETRY_BUDGET_RATIO: &str = "retry.trellis.dev/budget-ratio";
pub const RETRY_BUDGET_MIN_PER_SECOND: &str = "retry.trellis.dev/budget-min-per-second";
pub const RETRY_BUDGET_TTL: &str = "retry.trellis.dev/budget-ttl";
pub const RETRY_NON_IDEMPOTENT: &str = "retry.trellis.dev/non-idempotent";
pub const TIMEOUT_REQUEST: &str = "timeout.trellis.dev/request";
pub const TIMEOUT_BACKEND_REQUEST: &str = "timeout.trellis.dev/backend-request";
/// The label of an annotation under a Trellis prefix that none of these
/// names (a typo, most likely).
pub const UNKNOWN_ROUTE_ANNOTATION: &str = "unknown";

pub const OPAQUE_PORTS: &str = "config.trellis.dev/opaque-ports";
pub const DEFAULT_INBOUND_POLICY: &str = "config.trellis.dev/default-inbound-policy";
pub const PORT_INBOUND_POLICY: &str = "config.trellis.dev/port-inbound-policy";

/// One route annotation: its key, the syntax of its value, and what
/// applies without it. The one table the controller, the CLI's mesh file
/// validation and `docs/mesh-file.md` (checked by a CLI test) read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteAnnotation {
    pub key: &'static str,
    pub syntax: &'static str,
    pub default: &'static str,
}

/// Every `retry.trellis.dev/*` and `timeout.trellis.dev/*` key.
pub const ROUTE_ANNOTATIONS: [RouteAnnotation; 11] = [
    RouteAnnotation {
        key: RETRY_LIMIT,
        syntax: "retries per request, a whole number, e.g. 3",
        default: "2",
    },
    RouteAnnotation {
        key: RETRY_HTTP_STATUSES,
        syntax: "HTTP status codes, classes and ranges, e.g. 5xx,429 or 502-504",
        default: "5xx",
    },
    RouteAnnotation {
        key: RETRY_GRPC_CODES,
        syntax: "gRPC status names (kebab-case or SCREAMING_SNAKE) or numbers 1-16, e.g. unavailable,resource-exhausted,14",
        default: "unavailable",
    },
    RouteAnnotation {
        key: RETRY_PER_TRY_TIMEOUT,
        syntax: "a duration, e.g. 500ms",
        default: "the rule's backend-request timeout",
    },
    RouteAnnotation {
        key: RETRY_BACKOFF,
        syntax: "a duration (base; the maximum is ten times it) or base-max, e.g. 25ms or 25ms-250ms",
        default: "25ms-250ms",
    },
    RouteAnnotation {
        key: RETRY_BUDGET_RATIO,
        syntax: "retries as a share of requests, a number from 0 to 1000, e.g. 0.2",
        default: "0.2",
    },
    RouteAnnotation {
        key: RETRY_BUDGET_MIN_PER_SECOND,
        syntax: "retries a second always allowed, a whole number",
        default: "10",
    },
    RouteAnnotation {
        key: RETRY_BUDGET_TTL,
        syntax: "the budget's window, a duration from 1s to 60s",
        default: "10s",
    },
    RouteAnnotation {
        key: RETRY_NON_IDEMPOTENT,
        syntax: "true or false: retry POST and PATCH too",
        default: "false",
    },
    RouteAnnotation {
        key: TIMEOUT_REQUEST,
        syntax: "a duration for the whole request, retries included, e.g. 10s; 0s: none",
        default: "none",
    },
    RouteAnnotation {
        key: TIMEOUT_BACKEND_REQUEST,
        syntax: "a duration for each try, e.g. 2s; 0s: none",
        default: "none",
    },
];

fn is_retry_key(k: &str) -> bool {
    k.starts_with(RETRY_PREFIX) && ROUTE_ANNOTATIONS.iter().any(|a| a.key == k)
}

/// Whether `key` is under a Trellis route prefix but names no annotation.
pub fn is_unknown_route_annotation(key: &str) -> bool {
    (key.starts_with(RETRY_PREFIX) || key.starts_with(TIMEOUT_PREFIX))
        && !ROUTE_ANNOTATIONS.iter().any(|a| a.key == key)
}

/// Why `key` (under a Trellis route prefix) is refused: the closest known
/// key, and all of them.
pub fn unknown_route_annotation_message(key: &str) -> String {
    let known: Vec<&str> = ROUTE_ANNOTATIONS.iter().map(|a| a.key).collect();
    unknown_key_message(key, &known)
}

/// "unknown annotation KEY (did you mean …?); known: …": the closest of
/// `known` (within four edits), and all of them.
pub fn unknown_key_message(key: &str, known: &[&str]) -> String {
    let closest = known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .min()
        .filter(|(d, _)| *d <= 4)
        .map(|(_, k)| format!(" (did you mean {k}?)"))
        .unwrap_or_default();
    format!(
        "unknown annotation {key:?}{closest}; known: {}",
        known.join(", ")
    )
}

/// Levenshtein distance, by characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

pub const DEFAULT_RETRY_LIMIT: u32 = 2;
pub const DEFAULT_BACKOFF_BASE_MS: u64 = 25;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 250;
pub const DEFAULT_BUDGET_RATIO: f64 = 0.2;
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;
pub const DEFAULT_BUDGET_TTL_MS: u64 = 10_000;
/// gRPC `UNAVAILABLE`.
pub const GRPC_UNAVAILABLE: u32 = 14;

/// One refused annotation: which (a fixed label), its value, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub value: String,
    pub message: String,
}

/// What a route's annotations say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteAnnotations {
    /// `None`: no retry annotation, no retries.
    pub retry: Option<pb::RetryPolicy>,
    pub request_timeout: Option<Duration>,
    pub backend_request_timeout: Option<Duration>,
}

/// Reads a route's `retry.trellis.dev/*` and `timeout.trellis.dev/*`
/// annotations; every refused value comes back with the reason, and its
/// setting keeps its default.
pub fn route_annotations(
    annotations: &BTreeMap<String, String>,
) -> (RouteAnnotations, Vec<AnnotationError>) {
    let mut errors = Vec::new();
    for (k, v) in annotations {
        if is_unknown_route_annotation(k) {
            errors.push(AnnotationError {
                annotation: UNKNOWN_ROUTE_ANNOTATION,
                value: format!("{k}={v}"),
                message: unknown_route_annotation_message(k),
            });
        }
    }
    let a = annotations;
    let e = &mut errors;
    let out = RouteAnnotations {
        request_timeout: setting(a, TIMEOUT_REQUEST, parse_gateway_duration, e),
        backend_request_timeout: setting(a, TIMEOUT_BACKEND_REQUEST, parse_gateway_duration, e),
        retry: None,
    };
    if !a.keys().any(|k| is_retry_key(k)) {
        return (out, errors);
    }
    let mut retry = default_retry();
    if let Some(n) = setting(a, RETRY_LIMIT, parse_limit, e) {
        retry.limit = n;
    }
    if let Some((codes, ranges)) = setting(a, RETRY_HTTP_STATUSES, parse_http_statuses, e) {
        retry.http_statuses = codes;
        retry.http_status_ranges = ranges;
    }
    if let Some(codes) = setting(a, RETRY_GRPC_CODES, parse_grpc_codes, e) {
        retry.grpc_codes = codes;
    }
    if let Some(d) = setting(a, RETRY_PER_TRY_TIMEOUT, parse_gateway_duration, e) {
        retry.per_try_timeout_ms = millis(d);
    }
    if let Some((base, max)) = setting(a, RETRY_BACKOFF, parse_backoff, e) {
        retry.backoff_base_ms = base;
        retry.backoff_max_ms = max;
    }
    let mut budget = default_budget();
    if let Some(r) = setting(a, RETRY_BUDGET_RATIO, parse_ratio, e) {
        budget.ratio = r;
    }
    if let Some(n) = setting(a, RETRY_BUDGET_MIN_PER_SECOND, parse_per_second, e) {
        budget.min_per_second = n;
    }
    if let Some(ms) = setting(a, RETRY_BUDGET_TTL, parse_ttl, e) {
        budget.ttl_ms = ms;
    }
    retry.budget = Some(budget);
    if let Some(b) = setting(a, RETRY_NON_IDEMPOTENT, parse_bool, e) {
        retry.non_idempotent = b;
    }
    (
        RouteAnnotations {
            retry: Some(retry),
            ..out
        },
        errors,
    )
}

/// The value of `key` parsed, if it is set and parses; a refusal is
/// recorded in `errors`.
fn setting<T>(
    annotations: &BTreeMap<String, String>,
    key: &'static str,
    parse: impl Fn(&str) -> Result<T, String>,
    errors: &mut Vec<AnnotationError>,
) -> Option<T> {
    let raw = annotations.get(key)?;
    match parse(raw.trim()) {
        Ok(v) => Some(v),
        Err(message) => {
            errors.push(AnnotationError {
                annotation: key,
                value: raw.clone(),
                message,
            });
            None
        }
    }
}

/// The policy a route with retry annotations starts from: the proxy's
/// defaults, spelled out so the wire says exactly what applies.
pub fn default_retry() -> pb::RetryPolicy {
    pb::RetryPolicy {
        limit: DEFAULT_RETRY_LIMIT,
        http_statuses: Vec::new(),
        http_status_ranges: vec![pb::StatusRange { from: 500, to: 599 }],
        grpc_codes: vec![GRPC_UNAVAILABLE],
        per_try_timeout_ms: 0,
        backoff_base_ms: DEFAULT_BACKOFF_BASE_MS,
        backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
        budget: Some(default_budget()),
        non_idempotent: false,
    }
}

fn default_budget() -> pb::RetryBudget {
    pb::RetryBudget {
        ratio: DEFAULT_BUDGET_RATIO,
        min_per_second: DEFAULT_BUDGET_MIN_PER_SECOND,
        ttl_ms: DEFAULT_BUDGET_TTL_MS,
    }
}

/// Whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A Gateway API duration (GEP-2257): `500ms`, `10s`, `1h30m`; `0s` is
/// zero (no timeout).
pub fn parse_gateway_duration(s: &str) -> Result<Duration, String> {
    gateway_api::Duration::from_str(s)
        .map(|d| Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
        .map_err(|_| {
            format!("{s:?} is not a duration: use whole numbers with h, m, s or ms, e.g. 500ms, 10s, 1h30m")
        })
}

fn parse_limit(s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .map_err(|_| format!("{s:?} is not a whole number of retries"))
}

/// `5xx,429,502-504`: codes (100-599), classes (`1xx`…`5xx`), and
/// inclusive ranges.
pub fn parse_http_statuses(s: &str) -> Result<(Vec<u32>, Vec<pb::StatusRange>), String> {
    let code = |p: &str| -> Result<u32, String> {
        match p.trim().parse::<u32>() {
            Ok(c) if (100..=599).contains(&c) => Ok(c),
            _ => Err(format!("{:?} is not an HTTP status (100-599)", p.trim())),
        }
    };
    let mut codes = Vec::new();
    let mut ranges = Vec::new();
    for part in s.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!("{s:?} has an empty entry"));
        }
        let lower = part.to_ascii_lowercase();
        if let Some(class) = lower.strip_suffix("xx") {
            match class.parse::<u32>() {
                Ok(c) if (1..=5).contains(&c) => ranges.push(pb::StatusRange {
                    from: c * 100,
                    to: c * 100 + 99,
                }),
                _ => return Err(format!("{part:?} is not a status class (1xx to 5xx)")),
            }
        } else if let Some((a, b)) = part.split_once('-') {
            let (from, to) = (code(a)?, code(b)?);
            if from > to {
                return Err(format!("the range {part:?} runs backwards"));
            }
            ranges.push(pb::StatusRange { from, to });
        } else {
            codes.push(code(part)?);
        }
    }
    Ok((codes, ranges))
}

/// gRPC status codes by number, and their names (kebab-case or
/// SCREAMING_SNAKE, any case), for `retry.trellis.dev/grpc-codes`.
const GRPC_CODES: [(&str, u32); 16] = [
    ("cancelled", 1),
    ("unknown", 2),
    ("invalid-argument", 3),
    ("deadline-exceeded", 4),
    ("not-found", 5),
    ("already-exists", 6),
    ("permission-denied", 7),
    ("resource-exhausted", 8),
    ("failed-precondition", 9),
    ("aborted", 10),
    ("out-of-range", 11),
    ("unimplemented", 12),
    ("internal", 13),
    ("unavailable", 14),
    ("data-loss", 15),
    ("unauthenticated", 16),
];

pub fn parse_grpc_codes(s: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!("{s:?} has an empty entry"));
        }
        let c = match part.parse::<u32>() {
            Ok(n) if (1..=16).contains(&n) => n,
            Ok(_) => return Err(format!("{part:?} is not a retryable gRPC code (1-16)")),
            Err(_) => {
                let name = part.to_ascii_lowercase().replace('_', "-");
                GRPC_CODES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, c)| *c)
                    .ok_or_else(|| {
                        format!("{part:?} is not a gRPC status name (e.g. unavailable, resource-exhausted) or number")
                    })?
            }
        };
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// `25ms` (base; the maximum is ten times it) or `25ms-250ms`.
pub fn parse_backoff(s: &str) -> Result<(u64, u64), String> {
    let (base, max) = match s.split_once('-') {
        Some((a, b)) => (
            parse_gateway_duration(a.trim())?,
            Some(parse_gateway_duration(b.trim())?),
        ),
        None => (parse_gateway_duration(s)?, None),
    };
    if base.is_zero() {
        return Err(format!("{s:?}: the backoff base must be more than zero"));
    }
    let base = millis(base);
    let max = max.map_or(base.saturating_mul(10), millis);
    if max < base {
        return Err(format!("{s:?}: the maximum is below the base"));
    }
    Ok((base, max))
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && (0.0..=1000.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{s:?} is not a ratio from 0 to 1000 (0.2 is 20 % extra load)"
        )),
    }
}

fn parse_per_second(s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .map_err(|_| format!("{s:?} is not a whole number of retries a second"))
}

fn parse_ttl(s: &str) -> Result<u64, String> {
    let d = parse_gateway_duration(s)?;
    if (Duration::from_secs(1)..=Duration::from_secs(60)).contains(&d) {
        Ok(millis(d))
    } else {
        Err(format!("{s:?}: the budget window must be from 1s to 60s"))
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

/// `config.trellis.dev/opaque-ports`: `25,443,4000-4010`.
pub fn parse_opaque_ports(s: &str) -> Result<Vec<PortRange>, String> {
    parse_ports(s)
}

/// `config.trellis.dev/port-inbound-policy`: `8080=deny,9090=audit`.
pub fn parse_port_policies(s: &str) -> Result<BTreeMap<u16, DefaultPolicy>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (port, policy) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not PORT=POLICY (e.g. 8080=deny)"))?;
        let port = match port.trim().parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("{:?} is not a port (1-65535)", port.trim())),
            Ok(p) => p,
        };
        let policy: DefaultPolicy = policy.trim().parse()?;
        if out.insert(port, policy).is_some() {
            return Err(format!("port {port} is given twice"));
        }
    }
    Ok(out)
}
