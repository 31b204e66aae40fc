//! The mesh file's `routes:`, checked before anything starts. Pure.
//!
//! Every field of an entry is checked against the Gateway API subset the
//! controller compiles (HTTPRoute and GRPCRoute with a Service parent), and
//! each refusal names the field path and the accepted values, e.g.
//! `routes[0].rules[1].matches[0].path.type: "Prefix" is not accepted;
//! accepted: Exact, PathPrefix, RegularExpression`. The
//! `retry.trellis.dev/*` and `timeout.trellis.dev/*` annotations and
//! Gateway API durations are read by the controller's own parsers
//! ([`trellis_controller::index::annotations`]). A route that passes is then
//! compiled by the controller's own code
//! ([`super::controller::controller_problems`]): anything
//! it would still work around is refused too, so nothing reaches the
//! controller that it would only report on `/warnings`.
//!
//! The field lists below are also what `docs/mesh-file.md` is checked
//! against (`mesh/src/docs_tests.rs`).

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use trellis_controller::index::annotations::{
    edit_distance, is_unknown_route_annotation, parse_gateway_duration, route_annotations,
    unknown_route_annotation_message, ROUTE_ANNOTATIONS,
};

pub(crate) const ROUTE_FIELDS: [&str; 6] = [
    "name",
    "namespace",
    "kind",
    "parent",
    "annotations",
    "rules",
];
pub(crate) const PARENT_FIELDS: [&str; 2] = ["service", "port"];
pub(crate) const HTTP_RULE_FIELDS: [&str; 3] = ["matches", "backendRefs", "timeouts"];
pub(crate) const GRPC_RULE_FIELDS: [&str; 2] = ["matches", "backendRefs"];
pub(crate) const HTTP_MATCH_FIELDS: [&str; 4] = ["path", "headers", "queryParams", "method"];
pub(crate) const GRPC_MATCH_FIELDS: [&str; 2] = ["method", "headers"];
pub(crate) const PATH_FIELDS: [&str; 2] = ["type", "value"];
/// Header and query parameter matches.
pub(crate) const VALUE_MATCH_FIELDS: [&str; 3] = ["type", "name", "value"];
pub(crate) const GRPC_METHOD_FIELDS: [&str; 3] = ["type", "service", "method"];
pub(crate) const BACKEND_FIELDS: [&str; 6] =
    ["name", "namespace", "port", "weight", "group", "kind"];
pub(crate) const TIMEOUT_FIELDS: [&str; 2] = ["request", "backendRequest"];

pub(crate) const ROUTE_KINDS: [&str; 2] = ["HTTPRoute", "GRPCRoute"];
pub(crate) const PATH_TYPES: [&str; 3] = ["Exact", "PathPrefix", "RegularExpression"];
pub(crate) const VALUE_MATCH_TYPES: [&str; 2] = ["Exact", "RegularExpression"];
pub(crate) const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
/// A backendRef's `group` (the core API group) and `kind`.
pub(crate) const BACKEND_GROUPS: [&str; 2] = ["", "core"];
pub(crate) const BACKEND_KINDS: [&str; 1] = ["Service"];
/// The Gateway API's bound on a backendRef's weight.
pub(crate) const MAX_WEIGHT: u64 = 1_000_000;

/// The file's services: `(namespace, name)` → their ports.
pub(crate) type ServicePorts = BTreeMap<(String, String), Vec<u16>>;

/// Problems found, each `(field path, message)`.
#[derive(Default)]
struct Findings(Vec<(String, String)>);

impl Findings {
    fn push(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.0.push((path.into(), msg.into()));
    }

    /// `v` as a mapping whose keys are all in `known`.
    fn mapping<'v>(
        &mut self,
        path: &str,
        v: &'v Value,
        known: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Some(o) = v.as_object() else {
            self.push(
                path,
                format!("must be a mapping with fields {}", list(known)),
            );
            return None;
        };
        for key in o.keys().filter(|k| !known.contains(&k.as_str())) {
            self.push(format!("{path}.{key}"), unknown_field(key, known));
        }
        Some(o)
    }

    /// `v` as a list (absent: empty).
    fn sequence<'v>(&mut self, path: &str, v: Option<&'v Value>) -> &'v [Value] {
        match v {
            None => &[],
            Some(Value::Array(a)) => a,
            Some(_) => {
                self.push(path, "must be a list");
                &[]
            }
        }
    }

    /// An optional string field.
    fn string<'v>(&mut self, path: &str, v: Option<&'v Value>) -> Option<&'v str> {
        match v {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                self.push(path, format!("{other} is not a string"));
                None
            }
        }
    }

    /// A required, non-empty string field.
    fn required(&mut self, path: &str, v: Option<&Value>, what: &str) {
        match self.string(path, v) {
            None if v.is_none() => self.push(path, format!("required: {what}")),
            Some("") => self.push(path, format!("must not be empty: {what}")),
            _ => {}
        }
    }

    /// An optional string field that must be one of `accepted`.
    fn one_of<'v>(
        &mut self,
        path: &str,
        v: Option<&'v Value>,
        accepted: &[&str],
    ) -> Option<&'v str> {
        let s = self.string(path, v)?;
        if accepted.contains(&s) {
            Some(s)
        } else {
            self.push(path, not_accepted(s, accepted));
            None
        }
    }

    /// An optional port number.
    fn port(&mut self, path: &str, v: Option<&Value>) -> Option<u16> {
        let v = v?;
        match v.as_u64().map(u16::try_from) {
            Some(Ok(p)) if p != 0 => Some(p),
            _ => {
                self.push(path, format!("{v} is not a port (1-65535)"));
                None
            }
        }
    }
}

/// A regular expression the proxy could not compile.
fn check_regex(f: &mut Findings, path: &str, re: &str) {
    if let Err(e) = regex::Regex::new(re) {
        let why = e.to_string();
        let why = why.lines().last().unwrap_or_default().trim();
        f.push(path, format!("{re:?} is not a regular expression: {why}"));
    }
}

/// `` `a`, `b`, `c` ``.
fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The message for a field not in `known`, naming the closest one.
pub(crate) fn unknown_field(key: &str, known: &[&str]) -> String {
    let hint = known
        .iter()
        .map(|k| {
            (
                edit_distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                *k,
            )
        })
        .min()
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    let unsupported = if key == "filters" {
        " (filters are not supported by Trellis yet)"
    } else {
        ""
    };
    format!(
        "unknown field `{key}`{hint}{unsupported}; accepted: {}",
        list(known)
    )
}

/// The message for a value not in `accepted`.
pub(crate) fn not_accepted(value: &str, accepted: &[&str]) -> String {
    let shown: Vec<&str> = accepted
        .iter()
        .map(|a| if a.is_empty() { "\"\"" } else { *a })
        .collect();
    format!("{value:?} is not accepted; accepted: {}", shown.join(", "))
}

/// Checks one `routes:` entry at `path` (e.g. `routes[0]`); `services` are
/// the file's. Returns `(field path, message)` for each mistake.
pub(crate) fn check_route(path: &str, v: &Value, services: &ServicePorts) -> Vec<(String, String)> {
    let mut f = Findings::default();
    let Some(o) = f.mapping(path, v, &ROUTE_FIELDS) else {
        return f.0;
    };
    let namespace = o
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    f.required(&format!("{path}.name"), o.get("name"), "the route's name");
    f.string(&format!("{path}.namespace"), o.get("namespace"));
    let grpc = f.one_of(&format!("{path}.kind"), o.get("kind"), &ROUTE_KINDS) == Some("GRPCRoute");
    let parent_ports = check_parent(&mut f, path, o.get("parent"), namespace, services);
    check_annotations(&mut f, path, o.get("annotations"));
    match o.get("rules") {
        None => f.push(
            format!("{path}.rules"),
            "required: a list of rules (matches, backendRefs)",
        ),
        Some(rules) => {
            for (i, r) in f
                .sequence(&format!("{path}.rules"), Some(rules))
                .iter()
                .enumerate()
            {
                let rp = format!("{path}.rules[{i}]");
                check_rule(&mut f, &rp, r, grpc, namespace, parent_ports, services);
            }
        }
    }
    f.0
}

/// The parent: a service of the file and, optionally, one of its ports.
/// Returns the parent's port when one is given and valid.
fn check_parent(
    f: &mut Findings,
    path: &str,
    v: Option<&Value>,
    namespace: &str,
    services: &ServicePorts,
) -> Option<u16> {
    let pp = format!("{path}.parent");
    let Some(v) = v else {
        f.push(pp, "required: {service: NAME, port: PORT} (port optional)");
        return None;
    };
    let o = f.mapping(&pp, v, &PARENT_FIELDS)?;
    let port = f.port(&format!("{pp}.port"), o.get("port"));
    let service = match o.get("service") {
        None => {
            f.push(
                format!("{pp}.service"),
                "required: the service the route attaches to",
            );
            return None;
        }
        Some(s) => f.string(&format!("{pp}.service"), Some(s))?,
    };
    let ports = lookup(f, &format!("{pp}.service"), namespace, service, services)?;
    if let Some(p) = port {
        if !ports.contains(&p) {
            f.push(
                format!("{pp}.port"),
                format!(
                    "service {namespace}/{service} has no port {p}; accepted: {}",
                    join_ports(ports)
                ),
            );
            return None;
        }
    }
    port
}

fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ports of service `namespace/name`, or a mistake naming the file's
/// services.
fn lookup<'s>(
    f: &mut Findings,
    path: &str,
    namespace: &str,
    name: &str,
    services: &'s ServicePorts,
) -> Option<&'s [u16]> {
    if let Some(ports) = services.get(&(namespace.to_string(), name.to_string())) {
        return Some(ports);
    }
    let known: Vec<String> = services.keys().map(|(ns, n)| format!("{ns}/{n}")).collect();
    f.push(
        path,
        format!(
            "no service {namespace}/{name} in this file; accepted: {}",
            known.join(", ")
        ),
    );
    None
}

fn check_annotations(f: &mut Findings, path: &str, v: Option<&Value>) {
    let Some(v) = v else { return };
    let Some(o) = v.as_object() else {
        f.push(
            format!("{path}.annotations"),
            "must be a mapping of names to strings",
        );
        return;
    };
    let mut strings = BTreeMap::new();
    for (k, v) in o {
        let ap = format!("{path}.annotations[{k:?}]");
        match v.as_str() {
            None => f.push(ap, format!("{v} is not a string: quote it, e.g. \"{v}\"")),
            Some(_) if is_unknown_route_annotation(k) => {
                f.push(ap, unknown_route_annotation_message(k))
            }
            Some(s) => {
                strings.insert(k.clone(), s.to_string());
            }
        }
    }
    let (_, errors) = route_annotations(&strings);
    for e in errors {
        let syntax = ROUTE_ANNOTATIONS
            .iter()
            .find(|a| a.key == e.annotation)
            .map(|a| format!("; accepted: {}", a.syntax))
            .unwrap_or_default();
        f.push(
            format!("{path}.annotations[{:?}]", e.annotation),
            format!("{}{syntax}", e.message),
        );
    }
}

fn check_rule(
    f: &mut Findings,
    path: &str,
    v: &Value,
    grpc: bool,
    namespace: &str,
    parent_port: Option<u16>,
    services: &ServicePorts,
) {
    let fields: &[&str] = if grpc {
        &GRPC_RULE_FIELDS
    } else {
        &HTTP_RULE_FIELDS
    };
    let Some(o) = f.mapping(path, v, fields) else {
        return;
    };
    for (j, m) in f
        .sequence(&format!("{path}.matches"), o.get("matches"))
        .iter()
        .enumerate()
    {
        let mp = format!("{path}.matches[{j}]");
        if grpc {
            check_grpc_match(f, &mp, m);
        } else {
            check_http_match(f, &mp, m);
        }
    }
    let backends = f.sequence(&format!("{path}.backendRefs"), o.get("backendRefs"));
    let mut total_weight = 0u64;
    for (j, b) in backends.iter().enumerate() {
        let bp = format!("{path}.backendRefs[{j}]");
        total_weight =
            total_weight.saturating_add(check_backend(f, &bp, b, namespace, parent_port, services));
    }
    if !backends.is_empty() && total_weight == 0 {
        f.push(
            format!("{path}.backendRefs"),
            "every backend has weight 0: every request would fail; give one a weight of 1 or more",
        );
    }
    if !grpc {
        if let Some(t) = o.get("timeouts") {
            check_timeouts(f, &format!("{path}.timeouts"), t);
        }
    }
}

fn check_http_match(f: &mut Findings, path: &str, v: &Value) {
    let Some(o) = f.mapping(path, v, &HTTP_MATCH_FIELDS) else {
        return;
    };
    if let Some(p) = o.get("path") {
        let pp = format!("{path}.path");
        if let Some(po) = f.mapping(&pp, p, &PATH_FIELDS) {
            let kind = f.one_of(&format!("{pp}.type"), po.get("type"), &PATH_TYPES);
            let value = f.string(&format!("{pp}.value"), po.get("value"));
            if let Some(value) = value {
                if kind == Some("RegularExpression") {
                    check_regex(f, &format!("{pp}.value"), value);
                } else if !value.starts_with('/') {
                    f.push(
                        format!("{pp}.value"),
                        format!("{value:?} must start with '/'"),
                    );
                }
            }
        }
    }
    f.one_of(&format!("{path}.method"), o.get("method"), &HTTP_METHODS);
    check_value_matches(f, &format!("{path}.headers"), o.get("headers"));
    check_value_matches(f, &format!("{path}.queryParams"), o.get("queryParams"));
}

/// `headers` or `queryParams`: `{type, name, value}` each.
fn check_value_matches(f: &mut Findings, path: &str, v: Option<&Value>) {
    for (k, h) in f.sequence(path, v).iter().enumerate() {
        let hp = format!("{path}[{k}]");
        if let Some(o) = f.mapping(&hp, h, &VALUE_MATCH_FIELDS) {
            let kind = f.one_of(&format!("{hp}.type"), o.get("type"), &VALUE_MATCH_TYPES);
            f.required(&format!("{hp}.name"), o.get("name"), "the name to match");
            match o.get("value") {
                None => f.push(format!("{hp}.value"), "required: the value to match"),
                v => {
                    let value = f.string(&format!("{hp}.value"), v);
                    if let (Some("RegularExpression"), Some(value)) = (kind, value) {
                        check_regex(f, &format!("{hp}.value"), value);
                    }
                }
            }
        }
    }
}

fn check_grpc_match(f: &mut Findings, path: &str, v: &Value) {
    let Some(o) = f.mapping(path, v, &GRPC_MATCH_FIELDS) else {
        return;
    };
    if let Some(m) = o.get("method") {
        let mp = format!("{path}.method");
        if let Some(mo) = f.mapping(&mp, m, &GRPC_METHOD_FIELDS) {
            let kind = f.one_of(&format!("{mp}.type"), mo.get("type"), &VALUE_MATCH_TYPES);
            let service = f
                .string(&format!("{mp}.service"), mo.get("service"))
                .unwrap_or("");
            let method = f
                .string(&format!("{mp}.method"), mo.get("method"))
                .unwrap_or("");
            if service.is_empty() && method.is_empty() {
                f.push(
                    mp,
                    "give `service` (e.g. grpc.health.v1.Health), `method` (e.g. Check) or both",
                );
            } else if kind == Some("RegularExpression") {
                for (name, v) in [("service", service), ("method", method)] {
                    if !v.is_empty() {
                        check_regex(f, &format!("{mp}.{name}"), v);
                    }
                }
            } else {
                for (name, v) in [("service", service), ("method", method)] {
                    if v.contains('/') {
                        f.push(format!("{mp}.{name}"), format!("{v:?} must not contain '/': service and method are given separately"));
                    }
                }
            }
        }
    }
    check_value_matches(f, &format!("{path}.headers"), o.get("headers"));
}

/// One backendRef; returns its weight (1 when not given).
fn check_backend(
    f: &mut Findings,
    path: &str,
    v: &Value,
    route_namespace: &str,
    parent_port: Option<u16>,
    services: &ServicePorts,
) -> u64 {
    let Some(o) = f.mapping(path, v, &BACKEND_FIELDS) else {
        return 0;
    };
    f.one_of(&format!("{path}.group"), o.get("group"), &BACKEND_GROUPS);
    f.one_of(&format!("{path}.kind"), o.get("kind"), &BACKEND_KINDS);
    let namespace = f
        .string(&format!("{path}.namespace"), o.get("namespace"))
        .unwrap_or(route_namespace);
    let port = f.port(&format!("{path}.port"), o.get("port"));
    let weight = match o.get("weight") {
        None => 1,
        Some(w) => match w.as_u64() {
            Some(n) if n <= MAX_WEIGHT => n,
            _ => {
                f.push(
                    format!("{path}.weight"),
                    format!("{w} is not a weight; accepted: a whole number from 0 to {MAX_WEIGHT}"),
                );
                1
            }
        },
    };
    let np = format!("{path}.name");
    match o.get("name") {
        None => f.push(np, "required: a service of this file"),
        Some(n) => {
            if let Some(name) = f.string(&np, Some(n)) {
                if let Some(ports) = lookup(f, &np, namespace, name, services) {
                    // Without a port of its own, a backend gets the parent's.
                    let (wanted, which) = match (port, parent_port) {
                        (Some(p), _) => (Some(p), "port"),
                        (None, Some(p)) => (Some(p), "name"),
                        (None, None) => (None, ""),
                    };
                    if let Some(p) = wanted.filter(|p| !ports.contains(p)) {
                        let why = if which == "port" {
                            ""
                        } else {
                            " (a backendRef without a port uses the parent's)"
                        };
                        f.push(
                            format!("{path}.{which}"),
                            format!(
                                "service {namespace}/{name} has no port {p}{why}; accepted: {}",
                                join_ports(ports)
                            ),
                        );
                    }
                }
            }
        }
    }
    weight
}

fn check_timeouts(f: &mut Findings, path: &str, v: &Value) {
    let Some(o) = f.mapping(path, v, &TIMEOUT_FIELDS) else {
        return;
    };
    let mut read = |field: &str| {
        let p = format!("{path}.{field}");
        let s = f.string(&p, o.get(field))?;
        match parse_gateway_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                f.push(p, e);
                None
            }
        }
    };
    let request = read("request");
    let backend = read("backendRequest");
    if let (Some(r), Some(b)) = (request, backend) {
        if !r.is_zero() && b > r {
            f.push(
                format!("{path}.backendRequest"),
                "must not be longer than `request` (the whole request includes every try)",
            );
        }
    }
}

#[cfg(test)]
mod tests;
