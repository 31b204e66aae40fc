//! The outbound routes of one service and the choice of route for a
//! request, with Gateway API (GAMMA) semantics.
//!
//! A [`RouteTable`] holds a service's `HTTPRoute`s and `GRPCRoute`s, each a
//! list of [`Rule`]s; a rule has matches (any of them selects it), weighted
//! backends, timeouts and an optional retry policy. The controller sends
//! routes already in the Gateway API's cross-route order (oldest first,
//! then by `namespace/name`); [`select`] applies precedence among the
//! matches themselves:
//!
//! - HTTP, across all rules of all routes, the match with: an `Exact` path;
//!   else the longest `PathPrefix` (in characters, trailing `/` ignored);
//!   else a `RegularExpression` path; else no path constraint (`PathPrefix
//!   /`, the Gateway API default). Then a method match; then the most header
//!   matches; then the most query matches; then the first route, and within
//!   it the first rule. Placing a regex below every real prefix but above
//!   `/` is our choice (the Gateway API leaves regex precedence to the
//!   implementation): it keeps a rule with a regex reachable next to the
//!   usual catch-all rule.
//! - gRPC, the match with the longest exact service name (a regex service
//!   below any exact one, none below both), then likewise the method, then
//!   the most header matches, then first route and rule.
//!
//! A gRPC request (`content-type: application/grpc…`, path
//! `/SERVICE/METHOD`) is matched against the `GRPCRoute`s when the service
//! has any, and against its `HTTPRoute`s otherwise; the two kinds are never
//! merged. A rule without matches matches every request of its kind.
//!
//! Matching rules: paths are compared as sent (no percent-decoding or dot
//! segment removal); `PathPrefix` matches whole segments (`/foo` matches
//! `/foo` and `/foo/bar`, not `/foobar`); header names are
//! case-insensitive, values case-sensitive, and a repeated header matches
//! when any of its values does; query names and values are compared
//! percent-decoded, and a repeated parameter by its first occurrence. Every
//! `RegularExpression` must match the whole value; expressions are compiled
//! once, when the table is built ([`Pattern::new`]), never per request.

mod matching;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, Method, Uri};
use regex::{Regex, RegexBuilder};

use super::retry::RetryPolicy;

pub use matching::select;

/// Cap on a compiled expression's size: route config comes from the
/// controller, but one huge expression must not take the proxy's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("invalid regular expression {pattern:?}: {reason}")]
    Regex { pattern: String, reason: String },
    #[error("path {0:?} does not start with '/'")]
    Path(String),
    #[error("invalid header name {0:?}")]
    HeaderName(String),
}

/// A route's name: the `route` label of the golden metrics. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteName(Arc<str>);

impl RouteName {
    pub fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A backend a rule sends requests to: the authority of a service
/// (`NAME.NAMESPACE.svc.cluster.local:PORT`) whose endpoints the
/// controller resolved alongside the routes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendRef(Arc<str>);

impl BackendRef {
    pub fn new(authority: &str) -> Self {
        Self(Arc::from(authority))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackendRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A regular expression that must match a whole value, compiled once.
#[derive(Clone)]
pub struct Pattern {
    source: Arc<str>,
    regex: Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, RouteError> {
        let regex = RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| RouteError::Regex {
                pattern: source.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            source: Arc::from(source),
            regex,
        })
    }
    /// The expression as configured (without the anchors added to it).
    pub fn as_str(&self) -> &str {
        &self.source
    }
    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// The routes of one service: a snapshot, rebuilt whenever the controller
/// sends a new one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteTable {
    /// `HTTPRoute`s, in cross-route precedence order.
    pub routes: Vec<Route<HttpMatch>>,
    /// `GRPCRoute`s, in cross-route precedence order.
    pub grpc_routes: Vec<Route<GrpcMatch>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route<M> {
    pub name: RouteName,
    pub rules: Vec<Rule<M>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule<M> {
    /// Any of these selects the rule; none: every request of the route's kind.
    pub matches: Vec<M>,
    /// Where matching requests go; empty: the parent service itself.
    pub backends: Vec<WeightedBackend>,
    pub timeouts: Timeouts,
    /// `None`: failures are not retried.
    pub retry: Option<RetryPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedBackend {
    pub backend: BackendRef,
    /// Relative weight; 0 sends nothing to it (Gateway API).
    pub weight: u32,
}

/// Gateway API `timeouts`; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole request, retries and backoff included: on expiry the
    /// client gets 504 (gRPC: `DEADLINE_EXCEEDED`).
    pub request: Option<Duration>,
    /// Each try against a backend.
    pub backend_request: Option<Duration>,
}

/// One `HTTPRouteMatch`: every field given must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpMatch {
    /// `None`: any path (the Gateway API default, `PathPrefix /`).
    pub path: Option<PathMatch>,
    pub method: Option<Method>,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    Exact(String),
    /// Whole segments; a trailing `/` is ignored.
    PathPrefix(String),
    RegularExpression(Pattern),
}

impl PathMatch {
    pub fn exact(path: &str) -> Result<Self, RouteError> {
        absolute(path).map(|p| Self::Exact(p.to_owned()))
    }
    pub fn prefix(path: &str) -> Result<Self, RouteError> {
        absolute(path).map(|p| Self::PathPrefix(p.to_owned()))
    }
    pub fn regex(pattern: &str) -> Result<Self, RouteError> {
        Pattern::new(pattern).map(Self::RegularExpression)
    }
}

fn absolute(path: &str) -> Result<&str, RouteError> {
    if path.starts_with('/') {
        Ok(path)
    } else {
        Err(RouteError::Path(path.to_owned()))
    }
}

/// How a header or query value is compared.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueMatch {
    Exact(String),
    RegularExpression(Pattern),
}

impl ValueMatch {
    pub fn regex(pattern: &str) -> Result<Self, RouteError> {
        Pattern::new(pattern).map(Self::RegularExpression)
    }
    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => v == value,
            Self::RegularExpression(p) => p.is_match(value),
        }
    }
    fn matches_bytes(&self, value: &[u8]) -> bool {
        match self {
            Self::Exact(v) => v.as_bytes() == value,
            // A value that is not UTF-8 matches no expression.
            Self::RegularExpression(p) => std::str::from_utf8(value).is_ok_and(|v| p.is_match(v)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: ValueMatch,
}

impl HeaderMatch {
    pub fn new(name: &str, value: ValueMatch) -> Result<Self, RouteError> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| RouteError::HeaderName(name.to_owned()))?;
        Ok(Self { name, value })
    }
    fn matches(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(&self.name)
            .iter()
            .any(|v| self.value.matches_bytes(v.as_bytes()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryMatch {
    /// Case-sensitive, compared percent-decoded.
    pub name: String,
    pub value: ValueMatch,
}

/// One `GRPCRouteMatch`: every field given must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GrpcMatch {
    /// `None`: any service and method.
    pub method: Option<GrpcMethodMatch>,
    pub headers: Vec<HeaderMatch>,
}

/// `GRPCMethodMatch`: service (`package.Service`) and method names, either
/// compared exactly or as expressions; `None` matches any.
#[derive(Debug, Clone, PartialEq)]
pub enum GrpcMethodMatch {
    Exact {
        service: Option<String>,
        method: Option<String>,
    },
    RegularExpression {
        service: Option<Pattern>,
        method: Option<Pattern>,
    },
}

/// What routing may look at in a request, borrowed from its head.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestFacts<'a> {
    pub fn new(parts: &'a http::request::Parts) -> Self {
        Self {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        }
    }
    pub fn of<B>(req: &'a http::Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
        }
    }
    /// `(service, method)` when this is a gRPC call: a `content-type` of
    /// `application/grpc` (or `application/grpc+…`) and a path
    /// `/SERVICE/METHOD`.
    pub fn grpc(&self) -> Option<(&'a str, &'a str)> {
        let ct = self.headers.get(http::header::CONTENT_TYPE)?.as_bytes();
        let rest = ct.strip_prefix(b"application/grpc")?;
        if !(rest.is_empty() || rest.starts_with(b"+") || rest.starts_with(b";")) {
            return None;
        }
        let (service, method) = self.uri.path().strip_prefix('/')?.split_once('/')?;
        if service.is_empty() || method.is_empty() || method.contains('/') {
            return None;
        }
        Some((service, method))
    }
}

/// The plan [`select`] returns: which route and rule apply, and what the
/// rule says to do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selected<'t> {
    pub route: &'t RouteName,
    pub kind: RouteKind,
    /// Index of the rule within the route.
    pub rule: usize,
    pub backends: &'t [WeightedBackend],
    pub timeouts: Timeouts,
    pub retry: Option<&'t RetryPolicy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Http,
    Grpc,
}

#[cfg(test)]
mod tests;
