//! Gateway API routes with a Service parent (GAMMA), compiled once per
//! snapshot into what the wire needs: matches as protobuf, backends as
//! service references, timeouts, and the retry policy of the route's
//! annotations. What cannot be used is recorded as a [`Problem`] and left
//! out: a bad value (the rule applies without it), or a whole rule that
//! cannot be served as written — a filter (Trellis applies none yet), a
//! regular expression that does not compile, a path that does not start
//! with `/` — as the Gateway API asks: an invalid rule is dropped, never
//! served half. What the route's status says (`status.rs`) comes from the
//! same facts: the rules dropped ([`CompiledRoute::invalid_rules`]) and
//! what its references resolve to ([`Verdict`]).

use std::collections::BTreeMap;

use gateway_api::grpcroutes::{
    GrpcRoute, GrpcRouteRulesMatches, GrpcRouteRulesMatchesHeadersType,
    GrpcRouteRulesMatchesMethodType,
};
use gateway_api::httproutes::{
    HttpRoute, HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType,
    HttpRouteRulesMatchesMethod, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType, HttpRouteRulesTimeouts,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use trellis_api::discovery::v1 as pb;

use super::annotations::{millis, parse_gateway_duration, route_annotations, RouteAnnotations};
use super::Problem;
use crate::objects::{Key, Kind};

/// A route, compiled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CompiledRoute {
    pub kind: Kind,
    pub key: Key,
    pub created: Option<Time>,
    /// `metadata.generation` (the status's `observedGeneration`).
    pub generation: Option<i64>,
    /// Its Service parents (other parents, such as Gateways, are not ours).
    pub parents: Vec<Parent>,
    /// The rules served: the spec's, less the invalid ones.
    pub rules: Rules,
    /// How many rules the spec has (0: the Gateway API's default rule).
    pub spec_rules: usize,
    /// The spec's rules left out, and why.
    pub invalid_rules: Vec<InvalidRule>,
    /// What its references resolve to (set by [`check_references`]).
    pub verdict: Verdict,
}

impl CompiledRoute {
    /// Whether any rule is served (a route whose every rule is invalid is
    /// not attached: `Accepted: False`).
    pub fn serves(&self) -> bool {
        self.spec_rules == 0 || self.invalid_rules.len() < self.spec_rules
    }
}

/// A rule of the spec that is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidRule {
    /// Its index in `spec.rules`.
    pub index: usize,
    pub reasons: Vec<String>,
    /// Its backends and timeouts, checked all the same (so that one fix
    /// does not just uncover the next mistake).
    pub backends: Vec<BackendTarget>,
    pub timeouts: Option<pb::Timeouts>,
}

/// What a route's references resolve to, for its status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// One per [`CompiledRoute::parents`], in order.
    pub parents: Vec<ParentVerdict>,
    /// The backendRefs that do not resolve, in spec order.
    pub unresolved: Vec<Unresolved>,
}

/// Whether a Service parent exists and has the port the ref names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParentVerdict {
    Attached,
    /// No such Service.
    NoService,
    /// The Service has no port of this number (or name, for a
    /// `sectionName`).
    NoPort(String),
}

/// A backendRef that does not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unresolved {
    pub reason: UnresolvedReason,
    pub message: String,
}

/// The Gateway API's reasons for `ResolvedRefs: False`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnresolvedReason {
    /// Not a Service (`InvalidKind`).
    InvalidKind,
    /// No such Service, or no such port of it (`BackendNotFound`).
    BackendNotFound,
}

impl UnresolvedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UnresolvedReason::InvalidKind => "InvalidKind",
            UnresolvedReason::BackendNotFound => "BackendNotFound",
        }
    }
}

/// A `parentRef` naming a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parent {
    pub service: Key,
    /// Only this service port, when given.
    pub port: Option<u16>,
    /// Only the service port of this name, when given.
    pub section: Option<String>,
    /// The ref as the spec writes it (the status echoes it).
    pub spec: ParentRef,
}

/// A `parentRef`, field for field as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ParentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

impl Parent {
    /// Whether this parent ref covers `service`'s port `port` (named `name`).
    pub fn covers(&self, service: &Key, port: u16, name: Option<&str>) -> bool {
        &self.service == service
            && self.port.is_none_or(|p| p == port)
            && self
                .section
                .as_deref()
                .is_none_or(|s| Some(s) == name.filter(|n| !n.is_empty()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Rules {
    Http(Vec<Rule<pb::HttpMatch>>),
    Grpc(Vec<Rule<pb::GrpcMatch>>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rule<M> {
    pub matches: Vec<M>,
    pub backends: Vec<BackendTarget>,
    pub timeouts: Option<pb::Timeouts>,
    pub retry: Option<pb::RetryPolicy>,
}

/// Where a rule sends traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackendTarget {
    pub target: Target,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A Service port; `None`: the parent's port.
    Service { service: Key, port: Option<u16> },
    /// A backendRef the controller cannot resolve (another kind): requests
    /// sent to it fail, as the Gateway API asks.
    Invalid(String),
}

/// Records problems of one route.
struct Problems<'a> {
    kind: Kind,
    key: &'a Key,
    out: &'a mut Vec<Problem>,
    /// Why the rule being compiled is invalid (empty: it is not).
    rule_invalid: Vec<String>,
}

impl<'a> Problems<'a> {
    fn new(kind: Kind, key: &'a Key, out: &'a mut Vec<Problem>) -> Self {
        Self {
            kind,
            key,
            out,
            rule_invalid: Vec::new(),
        }
    }

    fn push(&mut self, field: &'static str, value: impl Into<String>, message: impl Into<String>) {
        self.out.push(Problem {
            kind: self.kind,
            namespace: self.key.namespace.clone(),
            name: self.key.name.clone(),
            field,
            value: value.into(),
            message: message.into(),
        });
    }

    /// A problem that makes the whole rule invalid: left out.
    fn invalid_rule(&mut self, field: &'static str, value: impl Into<String>, why: String) {
        let value = value.into();
        self.push(
            field,
            value.clone(),
            format!("{why}; this rule is left out"),
        );
        self.rule_invalid.push(format!("{field}={value:?}: {why}"));
    }
}

/// The common shape of HTTPRoute and GRPCRoute references.
struct Ref<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<i32>,
}

impl Ref<'_> {
    fn spec(&self, section: Option<&str>) -> ParentRef {
        ParentRef {
            group: self.group.map(str::to_string),
            kind: self.kind.map(str::to_string),
            name: self.name.to_string(),
            namespace: self.namespace.map(str::to_string),
            port: self.port,
            section_name: section.map(str::to_string),
        }
    }
}

fn is_core_group(group: Option<&str>) -> bool {
    matches!(group, Some("" | "core"))
}

/// The Service parents of a route. The Gateway API's defaults for a
/// parentRef are group `gateway.networking.k8s.io` and kind `Gateway`: a
/// Service parent says `group: ""` (or `core`) and `kind: Service`.
fn parents<'a>(
    refs: impl Iterator<Item = (Ref<'a>, Option<&'a str>)>,
    route_ns: &str,
    problems: &mut Problems<'_>,
) -> Vec<Parent> {
    let mut out = Vec::new();
    for (r, section) in refs {
        if !(is_core_group(r.group) && r.kind == Some("Service")) {
            continue;
        }
        let port = match r.port.map(u16::try_from) {
            None => None,
            Some(Ok(p)) if p != 0 => Some(p),
            Some(_) => {
                problems.push(
                    "spec.parentRefs.port",
                    format!("{:?}", r.port),
                    "not a port (1-65535); this parent is ignored",
                );
                continue;
            }
        };
        let parent = Parent {
            service: Key::new(r.namespace.unwrap_or(route_ns), r.name),
            port,
            section: section.map(str::to_string),
            spec: r.spec(section),
        };
        if !out.contains(&parent) {
            out.push(parent);
        }
    }
    out
}

fn backend(
    r: Ref<'_>,
    weight: Option<i32>,
    route_ns: &str,
    problems: &mut Problems<'_>,
) -> BackendTarget {
    let weight = match weight {
        None => 1,
        Some(w) => u32::try_from(w).unwrap_or_else(|_| {
            problems.push(
                "spec.rules.backendRefs.weight",
                w.to_string(),
                "negative; taken as 0",
            );
            0
        }),
    };
    let namespace = r.namespace.unwrap_or(route_ns);
    let service_kind =
        (r.group.is_none() || is_core_group(r.group)) && r.kind.is_none_or(|k| k == "Service");
    if !service_kind {
        let what = format!(
            "{}/{}",
            r.group.unwrap_or_default(),
            r.kind.unwrap_or_default()
        );
        problems.push(
            "spec.rules.backendRefs",
            format!("{what} {namespace}/{}", r.name),
            "only Service backends are supported; requests for this backend fail",
        );
        return BackendTarget {
            target: Target::Invalid(format!("invalid:{what}/{namespace}/{}", r.name)),
            weight,
        };
    }
    let port = match r.port.map(u16::try_from) {
        None => None,
        Some(Ok(p)) if p != 0 => Some(p),
        Some(_) => {
            problems.push(
                "spec.rules.backendRefs.port",
                format!("{:?}", r.port),
                "not a port (1-65535); the parent's port is used",
            );
            None
        }
    };
    BackendTarget {
        target: Target::Service {
            service: Key::new(namespace, r.name),
            port,
        },
        weight,
    }
}

/// Filters (header modifiers, redirects, rewrites, mirrors) are not
/// applied by the proxy: a rule with any is invalid (serving it without
/// them would do something else than it says), said once per rule.
fn unsupported_filters(types: Vec<String>, problems: &mut Problems<'_>) {
    if !types.is_empty() {
        problems.invalid_rule(
            "spec.rules.filters",
            types.join(", "),
            "filters are not supported by Trellis yet".into(),
        );
    }
}

fn check_regex(problems: &mut Problems<'_>, field: &'static str, re: &str) {
    if let Err(e) = regex::Regex::new(re) {
        problems.invalid_rule(field, re, format!("not a regular expression ({e})"));
    }
}

fn key_of(namespace: Option<&String>, name: Option<&String>) -> Key {
    Key::new(
        namespace.map(String::as_str).unwrap_or_default(),
        name.map(String::as_str).unwrap_or_default(),
    )
}

fn annotations_of(
    annotations: Option<&BTreeMap<String, String>>,
    problems: &mut Problems<'_>,
) -> RouteAnnotations {
    let empty = BTreeMap::new();
    let (parsed, errors) = route_annotations(annotations.unwrap_or(&empty));
    for e in errors {
        problems.push(
            e.annotation,
            e.value,
            format!("{}; the route applies without this setting", e.message),
        );
    }
    parsed
}

/// The rule's timeouts: the spec's fields where set (HTTPRoute), else the
/// route's annotations.
fn timeouts(
    spec: Option<&HttpRouteRulesTimeouts>,
    ann: &RouteAnnotations,
    problems: &mut Problems<'_>,
) -> Option<pb::Timeouts> {
    let mut field = |name: &'static str, v: Option<&String>| {
        v.and_then(|s| match parse_gateway_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(
                    name,
                    s.clone(),
                    format!("{e}; the annotation or no timeout applies"),
                );
                None
            }
        })
    };
    let request = field(
        "spec.rules.timeouts.request",
        spec.and_then(|t| t.request.as_ref()),
    )
    .or(ann.request_timeout);
    let backend = field(
        "spec.rules.timeouts.backendRequest",
        spec.and_then(|t| t.backend_request.as_ref()),
    )
    .or(ann.backend_request_timeout);
    let t = pb::Timeouts {
        request_ms: request.map_or(0, millis),
        backend_request_ms: backend.map_or(0, millis),
    };
    (t != pb::Timeouts::default()).then_some(t)
}

/// A `parentRef` or `backendRef` of either route kind: the Gateway API's
/// generated types differ per kind but share these fields.
macro_rules! gateway_ref {
    ($r:expr) => {
        Ref {
            group: $r.group.as_deref(),
            kind: $r.kind.as_deref(),
            name: &$r.name,
            namespace: $r.namespace.as_deref(),
            port: $r.port,
        }
    };
}

/// The types of the filters of a rule and of its backends, of either
/// route kind (`RequestHeaderModifier`, …), in order.
macro_rules! filter_types {
    ($rule:expr) => {
        $rule
            .filters
            .iter()
            .flatten()
            .map(|f| &f.r#type)
            .map(|t| {
                serde_json::to_value(t)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{t:?}"))
            })
            .chain($rule.backend_refs.iter().flatten().flat_map(|b| {
                b.filters.iter().flatten().map(|f| {
                    serde_json::to_value(&f.r#type)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_else(|| format!("{:?}", f.r#type))
                })
            }))
            .collect::<Vec<String>>()
    };
}

/// One rule, as read from either route kind.
struct RuleParts<'a, M> {
    matches: Vec<M>,
    backends: Vec<(Ref<'a>, Option<i32>)>,
    /// The spec's timeouts (HTTPRoute only).
    timeouts: Option<&'a HttpRouteRulesTimeouts>,
}

/// What HTTPRoute and GRPCRoute compile alike: key, annotations, parents,
/// backends, timeouts, retries, and the Gateway API's default rule when
/// there is none. `rule` reads one rule's kind-specific parts (its filters
/// checked, its matches converted), in the order problems are reported.
fn compile<'a, R, M>(
    kind: Kind,
    meta: &'a ObjectMeta,
    parent_refs: impl Iterator<Item = (Ref<'a>, Option<&'a str>)>,
    spec_rules: &'a [R],
    rule: impl Fn(&'a R, &mut Problems<'_>) -> RuleParts<'a, M>,
    wrap: fn(Vec<Rule<M>>) -> Rules,
    problems: &mut Vec<Problem>,
) -> CompiledRoute {
    let key = key_of(meta.namespace.as_ref(), meta.name.as_ref());
    let mut p = Problems::new(kind, &key, problems);
    let ann = annotations_of(meta.annotations.as_ref(), &mut p);
    let parents = parents(parent_refs, &key.namespace, &mut p);
    let mut rules = Vec::new();
    let mut invalid_rules = Vec::new();
    for (index, r) in spec_rules.iter().enumerate() {
        p.rule_invalid.clear();
        let parts = rule(r, &mut p);
        let backends = parts
            .backends
            .into_iter()
            .map(|(r, weight)| backend(r, weight, &key.namespace, &mut p))
            .collect();
        let timeouts = timeouts(parts.timeouts, &ann, &mut p);
        if !p.rule_invalid.is_empty() {
            invalid_rules.push(InvalidRule {
                index,
                reasons: std::mem::take(&mut p.rule_invalid),
                backends,
                timeouts,
            });
            continue;
        }
        rules.push(Rule {
            matches: parts.matches,
            backends,
            timeouts,
            retry: ann.retry.clone(),
        });
    }
    if spec_rules.is_empty() {
        // The Gateway API's default: one rule matching every request.
        rules.push(Rule {
            matches: Vec::new(),
            backends: Vec::new(),
            timeouts: timeouts(None, &ann, &mut p),
            retry: ann.retry.clone(),
        });
    }
    CompiledRoute {
        kind,
        created: meta.creation_timestamp.clone(),
        generation: meta.generation,
        parents,
        rules: wrap(rules),
        spec_rules: spec_rules.len(),
        invalid_rules,
        verdict: Verdict::default(),
        key,
    }
}

pub(crate) fn compile_http(route: &HttpRoute, problems: &mut Vec<Problem>) -> CompiledRoute {
    let parent_refs = route.spec.parent_refs.iter().flatten();
    compile(
        Kind::HttpRoute,
        &route.metadata,
        parent_refs.map(|r| (gateway_ref!(r), r.section_name.as_deref())),
        route.spec.rules.as_deref().unwrap_or_default(),
        |rule, p| {
            unsupported_filters(filter_types!(rule), p);
            RuleParts {
                matches: rule
                    .matches
                    .iter()
                    .flatten()
                    .map(|m| http_match(m, p))
                    .collect(),
                backends: rule
                    .backend_refs
                    .iter()
                    .flatten()
                    .map(|b| (gateway_ref!(b), b.weight))
                    .collect(),
                timeouts: rule.timeouts.as_ref(),
            }
        },
        Rules::Http,
        problems,
    )
}

fn http_match(m: &HttpRouteRulesMatches, p: &mut Problems<'_>) -> pb::HttpMatch {
    use pb::path_match::Kind as PathKind;
    let path = m.path.as_ref().map(|path| {
        let value = path.value.clone().unwrap_or_else(|| "/".into());
        let kind = match path.r#type {
            Some(HttpRouteRulesMatchesPathType::Exact) => PathKind::Exact(value),
            Some(HttpRouteRulesMatchesPathType::RegularExpression) => {
                check_regex(p, "spec.rules.matches.path", &value);
                PathKind::Regex(value)
            }
            Some(HttpRouteRulesMatchesPathType::PathPrefix) | None => PathKind::Prefix(value),
        };
        if let PathKind::Exact(v) | PathKind::Prefix(v) = &kind {
            if !v.starts_with('/') {
                p.invalid_rule(
                    "spec.rules.matches.path",
                    v.clone(),
                    "must start with '/'".into(),
                );
            }
        }
        pb::PathMatch { kind: Some(kind) }
    });
    let method = m.method.as_ref().map_or("", |m| match m {
        HttpRouteRulesMatchesMethod::Get => "GET",
        HttpRouteRulesMatchesMethod::Head => "HEAD",
        HttpRouteRulesMatchesMethod::Post => "POST",
        HttpRouteRulesMatchesMethod::Put => "PUT",
        HttpRouteRulesMatchesMethod::Delete => "DELETE",
        HttpRouteRulesMatchesMethod::Connect => "CONNECT",
        HttpRouteRulesMatchesMethod::Options => "OPTIONS",
        HttpRouteRulesMatchesMethod::Trace => "TRACE",
        HttpRouteRulesMatchesMethod::Patch => "PATCH",
    });
    let headers = m
        .headers
        .iter()
        .flatten()
        .map(|h| {
            let regex = h.r#type == Some(HttpRouteRulesMatchesHeadersType::RegularExpression);
            header(p, &h.name, &h.value, regex)
        })
        .collect();
    let query = m
        .query_params
        .iter()
        .flatten()
        .map(|q| {
            use pb::query_match::Value;
            let value = if q.r#type == Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression)
            {
                check_regex(p, "spec.rules.matches.queryParams", &q.value);
                Value::Regex(q.value.clone())
            } else {
                Value::Exact(q.value.clone())
            };
            pb::QueryMatch {
                name: q.name.clone(),
                value: Some(value),
            }
        })
        .collect();
    pb::HttpMatch {
        path,
        method: method.to_string(),
        headers,
        query,
    }
}

fn header(p: &mut Problems<'_>, name: &str, value: &str, regex: bool) -> pb::HeaderMatch {
    use pb::header_match::Value;
    let value = if regex {
        check_regex(p, "spec.rules.matches.headers", value);
        Value::Regex(value.to_string())
    } else {
        Value::Exact(value.to_string())
    };
    pb::HeaderMatch {
        name: name.to_ascii_lowercase(),
        value: Some(value),
    }
}

pub(crate) fn compile_grpc(route: &GrpcRoute, problems: &mut Vec<Problem>) -> CompiledRoute {
    let parent_refs = route.spec.parent_refs.iter().flatten();
    compile(
        Kind::GrpcRoute,
        &route.metadata,
        parent_refs.map(|r| (gateway_ref!(r), r.section_name.as_deref())),
        route.spec.rules.as_deref().unwrap_or_default(),
        |rule, p| {
            unsupported_filters(filter_types!(rule), p);
            RuleParts {
                matches: rule
                    .matches
                    .iter()
                    .flatten()
                    .map(|m| grpc_match(m, p))
                    .collect(),
                backends: rule
                    .backend_refs
                    .iter()
                    .flatten()
                    .map(|b| (gateway_ref!(b), b.weight))
                    .collect(),
                timeouts: None,
            }
        },
        Rules::Grpc,
        problems,
    )
}

fn grpc_match(m: &GrpcRouteRulesMatches, p: &mut Problems<'_>) -> pb::GrpcMatch {
    let (service, method, regex) = match &m.method {
        None => (String::new(), String::new(), false),
        Some(method) => {
            let regex = method.r#type == Some(GrpcRouteRulesMatchesMethodType::RegularExpression);
            let service = method.service.clone().unwrap_or_default();
            let name = method.method.clone().unwrap_or_default();
            if regex {
                for v in [&service, &name].into_iter().filter(|v| !v.is_empty()) {
                    check_regex(p, "spec.rules.matches.method", v);
                }
            }
            (service, name, regex)
        }
    };
    let headers = m
        .headers
        .iter()
        .flatten()
        .map(|h| {
            let regex = h.r#type == Some(GrpcRouteRulesMatchesHeadersType::RegularExpression);
            header(p, &h.name, &h.value, regex)
        })
        .collect();
    pb::GrpcMatch {
        service,
        method,
        regex,
        headers,
    }
}

/// A Service's ports, for [`check_references`]: number and name.
pub(crate) type ServicePorts = Vec<(u16, Option<String>)>;

/// What a compiled route refers to that is not there, or cannot work:
/// parents and backends naming no Service (or no port of it), rules whose
/// backends all weigh 0, a per-try timeout longer than the whole request.
/// The same mistakes `trellis mesh up` refuses in a mesh file; here they
/// are reported and the route applies as compiled. `ports` gives each
/// Service's ports. The answer is the route's [`Verdict`] (its status).
pub(crate) fn check_references(
    route: &CompiledRoute,
    ports: &impl Fn(&Key) -> Option<ServicePorts>,
    problems: &mut Vec<Problem>,
) -> Verdict {
    let mut p = Problems::new(route.kind, &route.key, problems);
    let mut verdict = Verdict::default();
    for parent in &route.parents {
        let found = match ports(&parent.service) {
            None => {
                p.push(
                    "spec.parentRefs",
                    parent.service.to_string(),
                    "no such Service; the route applies to nothing",
                );
                ParentVerdict::NoService
            }
            Some(have) => {
                let numbers: Vec<u16> = have.iter().map(|(n, _)| *n).collect();
                let by_name = |s: &str| have.iter().any(|(_, n)| n.as_deref() == Some(s));
                if let Some(port) = parent.port.filter(|port| !numbers.contains(port)) {
                    p.push(
                        "spec.parentRefs.port",
                        format!("{}:{port}", parent.service),
                        format!(
                            "the Service has no port {port}; accepted: {}",
                            join(&numbers)
                        ),
                    );
                    ParentVerdict::NoPort(port.to_string())
                } else if let Some(section) = parent.section.as_deref().filter(|s| !by_name(s)) {
                    p.push(
                        "spec.parentRefs.sectionName",
                        format!("{} {section}", parent.service),
                        format!("the Service has no port named {section:?}; the route applies to none of its ports"),
                    );
                    ParentVerdict::NoPort(format!("{section:?}"))
                } else {
                    ParentVerdict::Attached
                }
            }
        };
        verdict.parents.push(found);
    }
    let mut check_rule = |backends: &[BackendTarget], timeouts: Option<&pb::Timeouts>| {
        for b in backends {
            let (service, port) = match &b.target {
                Target::Service { service, port } => (service, port),
                Target::Invalid(what) => {
                    let what = what.strip_prefix("invalid:").unwrap_or(what);
                    verdict.unresolved.push(Unresolved {
                        reason: UnresolvedReason::InvalidKind,
                        message: format!(
                            "backendRef {what} is not a Service (only Services are supported)"
                        ),
                    });
                    continue;
                }
            };
            match ports(service) {
                None => {
                    p.push(
                        "spec.rules.backendRefs",
                        service.to_string(),
                        "no such Service; requests for this backend fail",
                    );
                    verdict.unresolved.push(Unresolved {
                        reason: UnresolvedReason::BackendNotFound,
                        message: format!("Service {service} not found"),
                    });
                }
                Some(have) => {
                    let numbers: Vec<u16> = have.iter().map(|(n, _)| *n).collect();
                    if let Some(port) = port.filter(|port| !numbers.contains(port)) {
                        p.push(
                            "spec.rules.backendRefs.port",
                            format!("{service}:{port}"),
                            format!(
                                "the Service has no port {port}; accepted: {}",
                                join(&numbers)
                            ),
                        );
                        verdict.unresolved.push(Unresolved {
                            reason: UnresolvedReason::BackendNotFound,
                            message: format!("Service {service} has no port {port}"),
                        });
                    }
                }
            }
        }
        if !backends.is_empty() && backends.iter().all(|b| b.weight == 0) {
            p.push(
                "spec.rules.backendRefs.weight",
                "0",
                "every backend has weight 0: every request of this rule fails",
            );
        }
        if let Some(t) = timeouts {
            if t.request_ms != 0 && t.backend_request_ms > t.request_ms {
                p.push(
                    "spec.rules.timeouts.backendRequest",
                    format!("{}ms", t.backend_request_ms),
                    format!(
                        "longer than the request timeout ({}ms), which includes every try",
                        t.request_ms
                    ),
                );
            }
        }
    };
    match &route.rules {
        Rules::Http(rules) => rules
            .iter()
            .for_each(|r| check_rule(&r.backends, r.timeouts.as_ref())),
        Rules::Grpc(rules) => rules
            .iter()
            .for_each(|r| check_rule(&r.backends, r.timeouts.as_ref())),
    }
    for r in &route.invalid_rules {
        check_rule(&r.backends, r.timeouts.as_ref());
    }
    verdict
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The order routes take precedence in: oldest first, then by namespace
/// and name (the Gateway API's tie-breakers).
pub(crate) fn precedence(a: &CompiledRoute, b: &CompiledRoute) -> std::cmp::Ordering {
    (&a.created, &a.key, a.kind).cmp(&(&b.created, &b.key, b.kind))
}
