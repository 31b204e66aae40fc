//! The controller's routes (`trellis.discovery.v1` `HttpRoute` and
//! `GrpcRoute`) turned into the proxy's [`RouteTable`]. Pure.
//!
//! A rule the proxy cannot use (a malformed path, an expression that does
//! not compile) is dropped with its route's name and the reason, rather
//! than refusing the whole snapshot: the service's other routes and its
//! endpoints stay usable, and the request the bad rule would have caught
//! falls through to the next match or the `default` route.

use std::time::Duration;

use http::Method;
use trellis_api::discovery::v1 as pb;
use trellis_core::backoff::Exponential;

use crate::traffic::budget::RetryBudget;
use crate::traffic::retry::{RetryPolicy, StatusRange};
use crate::traffic::route::{
    BackendRef, GrpcMatch, GrpcMethodMatch, HeaderMatch, HttpMatch, PathMatch, Pattern, QueryMatch,
    Route, RouteError, RouteName, RouteTable, Rule, Timeouts, ValueMatch, WeightedBackend,
};

/// The table, and the rules left out (route name, reason).
pub fn route_table(http: &[pb::HttpRoute], grpc: &[pb::GrpcRoute]) -> (RouteTable, Vec<String>) {
    let mut dropped = Vec::new();
    let mut table = RouteTable::default();
    for r in http {
        let mut rules = Vec::with_capacity(r.rules.len());
        for (i, rule) in r.rules.iter().enumerate() {
            match http_rule(rule) {
                Ok(rule) => rules.push(rule),
                Err(e) => dropped.push(format!("{}/{} rule {i}: {e}", r.namespace, r.name)),
            }
        }
        table.routes.push(Route {
            name: RouteName::new(&r.name),
            rules,
        });
    }
    for r in grpc {
        let mut rules = Vec::with_capacity(r.rules.len());
        for (i, rule) in r.rules.iter().enumerate() {
            match grpc_rule(rule) {
                Ok(rule) => rules.push(rule),
                Err(e) => dropped.push(format!("{}/{} rule {i}: {e}", r.namespace, r.name)),
            }
        }
        table.grpc_routes.push(Route {
            name: RouteName::new(&r.name),
            rules,
        });
    }
    (table, dropped)
}

/// Why a rule was left out.
#[derive(Debug, thiserror::Error)]
enum RuleError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("invalid method {0:?}")]
    Method(String),
}

fn http_rule(r: &pb::HttpRule) -> Result<Rule<HttpMatch>, RuleError> {
    Ok(Rule {
        matches: r.matches.iter().map(http_match).collect::<Result<_, _>>()?,
        backends: backends(&r.backends),
        timeouts: timeouts(r.timeouts.as_ref()),
        retry: r.retry.as_ref().map(retry),
    })
}

fn grpc_rule(r: &pb::GrpcRule) -> Result<Rule<GrpcMatch>, RuleError> {
    Ok(Rule {
        matches: r.matches.iter().map(grpc_match).collect::<Result<_, _>>()?,
        backends: backends(&r.backends),
        timeouts: timeouts(r.timeouts.as_ref()),
        retry: r.retry.as_ref().map(retry),
    })
}

fn http_match(m: &pb::HttpMatch) -> Result<HttpMatch, RuleError> {
    let path = match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
        None => None,
        Some(pb::path_match::Kind::Exact(p)) => Some(PathMatch::exact(p)?),
        Some(pb::path_match::Kind::Prefix(p)) => Some(PathMatch::prefix(p)?),
        Some(pb::path_match::Kind::Regex(p)) => Some(PathMatch::regex(p)?),
    };
    let method = if m.method.is_empty() {
        None
    } else {
        Some(
            Method::from_bytes(m.method.as_bytes())
                .map_err(|_| RuleError::Method(m.method.clone()))?,
        )
    };
    Ok(HttpMatch {
        path,
        method,
        headers: m
            .headers
            .iter()
            .map(header_match)
            .collect::<Result<_, _>>()?,
        query: m
            .query
            .iter()
            .map(|q| {
                Ok(QueryMatch {
                    name: q.name.clone(),
                    value: value_match(q.value.as_ref().map(|v| match v {
                        pb::query_match::Value::Exact(s) => (false, s.as_str()),
                        pb::query_match::Value::Regex(s) => (true, s.as_str()),
                    }))?,
                })
            })
            .collect::<Result<_, RouteError>>()?,
    })
}

fn grpc_match(m: &pb::GrpcMatch) -> Result<GrpcMatch, RuleError> {
    let given = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let method = match (given(&m.service), given(&m.method), m.regex) {
        (None, None, _) => None,
        (service, method, false) => Some(GrpcMethodMatch::Exact { service, method }),
        (service, method, true) => Some(GrpcMethodMatch::RegularExpression {
            service: service.as_deref().map(Pattern::new).transpose()?,
            method: method.as_deref().map(Pattern::new).transpose()?,
        }),
    };
    Ok(GrpcMatch {
        method,
        headers: m
            .headers
            .iter()
            .map(header_match)
            .collect::<Result<_, _>>()?,
    })
}

fn header_match(h: &pb::HeaderMatch) -> Result<HeaderMatch, RouteError> {
    let value = value_match(h.value.as_ref().map(|v| match v {
        pb::header_match::Value::Exact(s) => (false, s.as_str()),
        pb::header_match::Value::Regex(s) => (true, s.as_str()),
    }))?;
    HeaderMatch::new(&h.name.to_ascii_lowercase(), value)
}

/// `(is_regex, text)`; absent: matches only the empty value.
fn value_match(v: Option<(bool, &str)>) -> Result<ValueMatch, RouteError> {
    match v {
        None => Ok(ValueMatch::Exact(String::new())),
        Some((false, s)) => Ok(ValueMatch::Exact(s.to_string())),
        Some((true, s)) => ValueMatch::regex(s),
    }
}

fn backends(b: &[pb::WeightedBackend]) -> Vec<WeightedBackend> {
    b.iter()
        .map(|b| WeightedBackend {
            backend: BackendRef::new(&b.authority),
            weight: b.weight,
        })
        .collect()
}

fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn timeouts(t: Option<&pb::Timeouts>) -> Timeouts {
    t.map(|t| Timeouts {
        request: millis(t.request_ms),
        backend_request: millis(t.backend_request_ms),
    })
    .unwrap_or_default()
}

fn retry(r: &pb::RetryPolicy) -> RetryPolicy {
    let defaults = RetryPolicy::default();
    let code = |c: u32| u16::try_from(c).unwrap_or(u16::MAX);
    let mut http_statuses: Vec<StatusRange> = r
        .http_statuses
        .iter()
        .map(|c| StatusRange::single(code(*c)))
        .collect();
    http_statuses.extend(r.http_status_ranges.iter().map(|s| StatusRange {
        from: code(s.from),
        to: code(s.to),
    }));
    let budget = r
        .budget
        .as_ref()
        .map(|b| RetryBudget {
            ratio: b.ratio,
            min_per_sec: b.min_per_second,
            ttl: millis(b.ttl_ms).unwrap_or(defaults.budget.ttl),
        })
        .filter(|b| b.validate().is_ok())
        .unwrap_or(defaults.budget);
    let base = millis(r.backoff_base_ms).unwrap_or(defaults.backoff.base);
    RetryPolicy {
        limit: r.limit,
        http_statuses,
        grpc_codes: r
            .grpc_codes
            .iter()
            .filter_map(|c| i32::try_from(*c).ok())
            .collect(),
        per_try_timeout: millis(r.per_try_timeout_ms),
        backoff: Exponential::new(
            base,
            millis(r.backoff_max_ms)
                .unwrap_or(defaults.backoff.max)
                .max(base),
        ),
        budget,
        non_idempotent: r.non_idempotent,
    }
}

#[cfg(test)]
mod tests;
