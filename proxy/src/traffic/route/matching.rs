//! Matching a request against a [`RouteTable`]: each match that applies
//! yields a rank, a tuple ordered by the Gateway API's precedence criteria
//! (see the parent module); the highest rank wins, and the first route and
//! rule win a tie. One pass over the table, no allocation, except to
//! percent-decode a query parameter that needs it.

use std::borrow::Cow;

use super::{
    GrpcMatch, GrpcMethodMatch, HttpMatch, PathMatch, Pattern, QueryMatch, RequestFacts, Route,
    RouteKind, RouteTable, Selected,
};

/// The route and rule for `req`, or `None` when no rule matches (the
/// request goes to the service itself, under the `default` route).
pub fn select<'t>(table: &'t RouteTable, req: &RequestFacts<'_>) -> Option<Selected<'t>> {
    if let Some((service, method)) = req.grpc() {
        if !table.grpc_routes.is_empty() {
            let rank = |m: &GrpcMatch| m.rank(req, service, method);
            return best(
                &table.grpc_routes,
                rank,
                GrpcRank::default(),
                RouteKind::Grpc,
            );
        }
    }
    best(
        &table.routes,
        |m| m.rank(req),
        HttpRank::default(),
        RouteKind::Http,
    )
}

/// The highest-ranked rule; a rule without matches ranks as `any`.
fn best<'t, M, K: Ord + Copy>(
    routes: &'t [Route<M>],
    rank: impl Fn(&M) -> Option<K>,
    any: K,
    kind: RouteKind,
) -> Option<Selected<'t>> {
    let mut best: Option<(K, Selected<'t>)> = None;
    for route in routes {
        for (index, rule) in route.rules.iter().enumerate() {
            let key = if rule.matches.is_empty() {
                Some(any)
            } else {
                rule.matches.iter().filter_map(&rank).max()
            };
            let Some(key) = key else { continue };
            // Strictly greater: on a tie the earlier route and rule stay.
            if best.as_ref().is_none_or(|(b, _)| key > *b) {
                let selected = Selected {
                    route: &route.name,
                    kind,
                    rule: index,
                    backends: &rule.backends,
                    timeouts: rule.timeouts,
                    retry: rule.retry.as_ref(),
                };
                best = Some((key, selected));
            }
        }
    }
    best.map(|(_, s)| s)
}

/// How specifically a path matched; later variants rank higher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
enum PathRank {
    /// No path constraint, or `PathPrefix /`.
    #[default]
    Any,
    Regex,
    /// Characters in the prefix, trailing `/` excluded.
    Prefix(usize),
    Exact,
}

/// Field order is precedence order (derived `Ord` compares in order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct HttpRank {
    path: PathRank,
    method: bool,
    headers: usize,
    query: usize,
}

impl HttpMatch {
    fn rank(&self, req: &RequestFacts<'_>) -> Option<HttpRank> {
        let path = match &self.path {
            None => PathRank::Any,
            Some(p) => p.rank(req.uri.path())?,
        };
        if self.method.as_ref().is_some_and(|m| m != req.method) {
            return None;
        }
        if !self.headers.iter().all(|h| h.matches(req.headers)) {
            return None;
        }
        let query = req.uri.query().unwrap_or("");
        if !self.query.iter().all(|q| q.matches(query)) {
            return None;
        }
        Some(HttpRank {
            path,
            method: self.method.is_some(),
            headers: self.headers.len(),
            query: self.query.len(),
        })
    }
}

impl PathMatch {
    fn rank(&self, path: &str) -> Option<PathRank> {
        match self {
            Self::Exact(p) => (p == path).then_some(PathRank::Exact),
            Self::RegularExpression(p) => p.is_match(path).then_some(PathRank::Regex),
            Self::PathPrefix(prefix) => {
                let prefix = prefix.trim_end_matches('/');
                if prefix.is_empty() {
                    return Some(PathRank::Any);
                }
                let rest = path.strip_prefix(prefix)?;
                (rest.is_empty() || rest.starts_with('/')).then_some(PathRank::Prefix(prefix.len()))
            }
        }
    }
}

impl QueryMatch {
    /// Against the first parameter named `self.name` in `query`.
    fn matches(&self, query: &str) -> bool {
        let first = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(name, _)| percent_decode(name) == self.name.as_str());
        first.is_some_and(|(_, value)| self.value.matches(&percent_decode(value)))
    }
}

/// `%XX` escapes decoded; the input unchanged when it has none, or when
/// decoding would not give UTF-8.
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes.get(i), bytes.get(i + 1), bytes.get(i + 2)) {
            (Some(b'%'), Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_or(Cow::Borrowed(s), Cow::Owned)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// How specifically a gRPC service or method name matched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
enum NameRank {
    #[default]
    Any,
    Regex,
    /// Characters in the exact name.
    Exact(usize),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct GrpcRank {
    service: NameRank,
    method: NameRank,
    headers: usize,
}

impl GrpcMatch {
    fn rank(&self, req: &RequestFacts<'_>, service: &str, method: &str) -> Option<GrpcRank> {
        let (s, m) = match &self.method {
            None => (NameRank::Any, NameRank::Any),
            Some(GrpcMethodMatch::Exact {
                service: want_s,
                method: want_m,
            }) => (
                exact(want_s.as_deref(), service)?,
                exact(want_m.as_deref(), method)?,
            ),
            Some(GrpcMethodMatch::RegularExpression {
                service: want_s,
                method: want_m,
            }) => (
                regex(want_s.as_ref(), service)?,
                regex(want_m.as_ref(), method)?,
            ),
        };
        if !self.headers.iter().all(|h| h.matches(req.headers)) {
            return None;
        }
        Some(GrpcRank {
            service: s,
            method: m,
            headers: self.headers.len(),
        })
    }
}

fn exact(want: Option<&str>, got: &str) -> Option<NameRank> {
    match want {
        None => Some(NameRank::Any),
        Some(w) => (w == got).then_some(NameRank::Exact(w.len())),
    }
}

fn regex(want: Option<&Pattern>, got: &str) -> Option<NameRank> {
    match want {
        None => Some(NameRank::Any),
        Some(p) => p.is_match(got).then_some(NameRank::Regex),
    }
}
