//! What each route's `status.parents` must say, a pure function of a
//! snapshot and the time ([`plan`]): the entries Trellis owns (one per
//! Service `parentRef`, `controllerName` [`CONTROLLER_NAME`]), and the
//! write that puts them in place when they differ from what the route
//! shows. No IO; table tests in `plan/tests.rs`.
//!
//! Conditions of each entry (the Gateway API's types and reasons):
//!
//! | type | status, reason | when |
//! |---|---|---|
//! | `Accepted` | `True`, `Accepted` | the Service (and the port or port name the ref names) exists and a rule is served |
//! | | `False`, `NoMatchingParent` | no such Service, or no such port of it |
//! | | `False`, `UnsupportedValue` | no rule is valid (each has a filter, a bad regex or a path without `/`): nothing is served |
//! | `ResolvedRefs` | `True`, `ResolvedRefs` | every backendRef (of every rule, served or left out) is a Service port that exists |
//! | | `False`, `InvalidKind` | a backendRef is not a Service (requests for it fail) |
//! | | `False`, `BackendNotFound` | a backendRef names a Service, or a port of it, that does not exist |
//! | `PartiallyInvalid` | `True`, `UnsupportedValue` | some rules are invalid and left out, others served (absent otherwise) |
//!
//! A `parentRef` that is not a Service (a Gateway, another kind) gets no
//! entry: the Gateway API leaves each parent's entry to the controller of
//! that parent. Every condition carries the route's `generation` as
//! `observedGeneration`; `lastTransitionTime` is kept from the route's
//! current entry when the condition's status did not change, so the same
//! facts always give the same entries and a write is followed by none.
//! Other controllers' entries are kept as they are, in their place.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::index::{CompiledRoute, ParentRef, ParentVerdict, Snapshot};
use crate::objects::{Key, Kind};

/// The `controllerName` of Trellis's entries.
pub const CONTROLLER_NAME: &str = "trellis.dev/controller";
/// The longest condition message written (the API allows 32768).
const MAX_MESSAGE: usize = 1024;

/// One entry of `status.parents`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ParentStatus {
    pub parent_ref: ParentRef,
    pub controller_name: String,
    pub conditions: Vec<Condition>,
}

/// One route's status to write.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Write {
    pub kind: Kind,
    pub key: Key,
    /// The version the entries were planned from (the write's
    /// precondition).
    pub resource_version: String,
    /// The whole new `status.parents`: other controllers' entries as they
    /// are, then ours.
    pub parents: Vec<Value>,
}

impl Write {
    /// The JSON merge patch of the status subresource.
    pub fn patch(&self) -> Value {
        serde_json::json!({
            "metadata": {"resourceVersion": self.resource_version},
            "status": {"parents": self.parents},
        })
    }
}

/// The writes that bring every route's entries in line, in precedence
/// order. `now` stamps the conditions whose status changes.
pub(crate) fn plan(snap: &Snapshot, now: &Time) -> Vec<Write> {
    snap.routes()
        .iter()
        .filter_map(|route| {
            let (rv, current) = current(snap, route.kind, &route.key)?;
            let (mine, others): (Vec<Value>, Vec<Value>) = current
                .into_iter()
                .partition(|p| p["controllerName"] == CONTROLLER_NAME);
            let mine: Vec<ParentStatus> = mine
                .into_iter()
                .filter_map(|v| serde_json::from_value(v).ok())
                .collect();
            let want = entries(route, &mine, now);
            if same(&want, &mine) {
                return None;
            }
            let parents = others
                .into_iter()
                .chain(want.iter().filter_map(|p| serde_json::to_value(p).ok()))
                .collect();
            Some(Write {
                kind: route.kind,
                key: route.key.clone(),
                resource_version: rv?,
                parents,
            })
        })
        .collect()
}

/// The route's resourceVersion and its `status.parents`, as JSON.
fn current(snap: &Snapshot, kind: Kind, key: &Key) -> Option<(Option<String>, Vec<Value>)> {
    let objects = snap.objects();
    let (meta, status) = match kind {
        Kind::HttpRoute => {
            let r = objects.http_routes.get(key)?;
            (&r.metadata, serde_json::to_value(&r.status).ok())
        }
        Kind::GrpcRoute => {
            let r = objects.grpc_routes.get(key)?;
            (&r.metadata, serde_json::to_value(&r.status).ok())
        }
        _ => return None,
    };
    let parents = status
        .and_then(|s| s.get("parents").cloned())
        .and_then(|p| serde_json::from_value::<Vec<Value>>(p).ok())
        .unwrap_or_default();
    Some((meta.resource_version.clone(), parents))
}

/// Whether two lists of our entries say the same (order of entries and of
/// conditions aside).
fn same(a: &[ParentStatus], b: &[ParentStatus]) -> bool {
    let norm = |list: &[ParentStatus]| {
        let mut out: Vec<String> = list
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p.conditions.sort_by(|x, y| x.type_.cmp(&y.type_));
                serde_json::to_string(&p).unwrap_or_default()
            })
            .collect();
        out.sort();
        out
    };
    norm(a) == norm(b)
}

/// Our entries for `route`, `mine` being those it carries now.
pub(crate) fn entries(
    route: &CompiledRoute,
    mine: &[ParentStatus],
    now: &Time,
) -> Vec<ParentStatus> {
    let resolved = resolved_refs(route);
    let partial = partially_invalid(route);
    route
        .parents
        .iter()
        .zip(&route.verdict.parents)
        .map(|(parent, verdict)| {
            let was: BTreeMap<&str, &Condition> = mine
                .iter()
                .find(|m| m.parent_ref == parent.spec)
                .map(|m| m.conditions.iter().map(|c| (c.type_.as_str(), c)).collect())
                .unwrap_or_default();
            let mut conditions = vec![accepted(route, &parent.service, verdict), resolved.clone()];
            conditions.extend(partial.clone());
            let conditions = conditions
                .into_iter()
                .map(|(type_, status, reason, message)| {
                    let kept = was
                        .get(type_)
                        .filter(|c| c.status == status)
                        .map(|c| c.last_transition_time.clone());
                    Condition {
                        type_: type_.into(),
                        status: status.into(),
                        reason: reason.into(),
                        message: bounded(message),
                        observed_generation: route.generation,
                        last_transition_time: kept.unwrap_or_else(|| now.clone()),
                    }
                })
                .collect();
            ParentStatus {
                parent_ref: parent.spec.clone(),
                controller_name: CONTROLLER_NAME.into(),
                conditions,
            }
        })
        .collect()
}

/// (type, status, reason, message).
type Cond = (&'static str, &'static str, &'static str, String);

fn accepted(route: &CompiledRoute, service: &Key, verdict: &ParentVerdict) -> Cond {
    match verdict {
        ParentVerdict::NoService => (
            "Accepted",
            "False",
            "NoMatchingParent",
            format!("Service {service} not found"),
        ),
        ParentVerdict::NoPort(port) => (
            "Accepted",
            "False",
            "NoMatchingParent",
            format!("Service {service} has no port {port}"),
        ),
        ParentVerdict::Attached if !route.serves() => (
            "Accepted",
            "False",
            "UnsupportedValue",
            format!(
                "no rule is valid, nothing is served: {}",
                invalid_rules(route)
            ),
        ),
        ParentVerdict::Attached => ("Accepted", "True", "Accepted", "accepted by Trellis".into()),
    }
}

fn resolved_refs(route: &CompiledRoute) -> Cond {
    match route.verdict.unresolved.first() {
        None => (
            "ResolvedRefs",
            "True",
            "ResolvedRefs",
            "every backendRef resolves".into(),
        ),
        Some(first) => {
            let messages: Vec<&str> = route
                .verdict
                .unresolved
                .iter()
                .map(|u| u.message.as_str())
                .collect();
            (
                "ResolvedRefs",
                "False",
                first.reason.as_str(),
                messages.join("; "),
            )
        }
    }
}

fn partially_invalid(route: &CompiledRoute) -> Option<Cond> {
    (route.serves() && !route.invalid_rules.is_empty()).then(|| {
        (
            "PartiallyInvalid",
            "True",
            "UnsupportedValue",
            format!("left out: {}", invalid_rules(route)),
        )
    })
}

/// `rule 0: REASON, REASON; rule 2: …`.
fn invalid_rules(route: &CompiledRoute) -> String {
    route
        .invalid_rules
        .iter()
        .map(|r| format!("rule {}: {}", r.index, r.reasons.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

#[cfg(test)]
mod tests;
