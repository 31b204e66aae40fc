//! A pod's inbound policy: its default (pod annotation, else namespace
//! annotation, else the mesh-wide setting), per-port overrides, the HTTP
//! probes of its containers, and the authorization policies selecting it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use trellis_api::discovery::v1 as pb;
use trellis_core::spiffe::SpiffeId;

use super::annotations::{parse_port_policies, DEFAULT_INBOUND_POLICY, PORT_INBOUND_POLICY};
use super::reads::Reads;
use super::{annotation, Problem, Snapshot};
use crate::crd::AuthorizationPolicy;
use crate::objects::{Key, Kind};

pub use trellis_core::policy::DefaultPolicy;

/// The inbound policy of pod `namespace/name`; `None` while the pod is not
/// known (the proxy then keeps waiting: no default stands in for a policy
/// that may be stricter).
pub fn inbound(snap: &Snapshot, namespace: &str, name: &str) -> Option<pb::InboundPolicy> {
    inbound_reading(&Reads::new(snap), namespace, name)
}

/// [`inbound`], reading through `r`.
pub(crate) fn inbound_reading(r: &Reads, namespace: &str, name: &str) -> Option<pb::InboundPolicy> {
    let pod = r.pod(&Key::new(namespace, name))?;
    let ns = r.namespace(namespace);
    let parse = |v: Option<&str>| v.and_then(|v| v.trim().parse::<DefaultPolicy>().ok());
    let default = parse(pod.annotation(DEFAULT_INBOUND_POLICY))
        .or_else(|| parse(ns.and_then(|n| annotation(n.as_ref(), DEFAULT_INBOUND_POLICY))))
        .unwrap_or(r.settings().default_inbound);
    let port_policies = pod
        .annotation(PORT_INBOUND_POLICY)
        .and_then(|v| parse_port_policies(v).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|(port, p)| (u32::from(port), p.to_string()))
        .collect();
    let labels = &pod.labels;
    let trust_domain = &r.settings().trust_domain;
    let authorizations = r
        .policies_in(namespace)
        .filter(|p| selects(&p.spec.pod_selector, labels).unwrap_or(false))
        .filter_map(|p| authorization(trust_domain, p, &mut Vec::new()))
        .collect();
    Some(pb::InboundPolicy {
        default_policy: default.to_string(),
        port_policies,
        probes: pod
            .probes
            .iter()
            .map(|(port, path)| pb::Probe {
                port: u32::from(*port),
                path: path.clone(),
            })
            .collect(),
        authorizations,
    })
}

/// Whether `selector` selects a pod with `labels`; an error names an
/// expression it cannot evaluate (and then it selects nothing).
pub(crate) fn selects(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let mut by_expression = true;
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => {
                return Err(format!(
                    "matchExpressions operator {other:?} is not In, NotIn, Exists or DoesNotExist"
                ))
            }
        };
        by_expression &= ok;
    }
    Ok(by_label && by_expression)
}

/// Compiles a policy into the proxy's `Authorization`, recording what is
/// wrong with it. Never broadens a policy: an identity that is not a SPIFFE
/// ID is left out (it could match no one anyway), and a policy whose every
/// port is invalid is left out entirely (`ports: []` would mean all).
pub(crate) fn authorization(
    trust_domain: &str,
    p: &AuthorizationPolicy,
    problems: &mut Vec<Problem>,
) -> Option<pb::Authorization> {
    let namespace = p.metadata.namespace.clone().unwrap_or_default();
    let name = p.metadata.name.clone().unwrap_or_default();
    let mut problem = |field: &'static str, value: String, message: String| {
        problems.push(Problem {
            kind: Kind::AuthorizationPolicy,
            namespace: namespace.clone(),
            name: name.clone(),
            field,
            value,
            message,
        })
    };
    let spec = &p.spec;
    if let Err(e) = selects(&spec.pod_selector, &BTreeMap::new()) {
        problem("spec.podSelector", String::new(), e);
    }
    let ports: Vec<String> = spec
        .ports
        .iter()
        .filter(|p| **p != 0)
        .map(u16::to_string)
        .collect();
    if ports.len() != spec.ports.len() {
        problem(
            "spec.ports",
            "0".into(),
            "port 0 is not a port (1-65535); left out".into(),
        );
        if ports.is_empty() {
            problem(
                "spec.ports",
                "0".into(),
                "no valid port left: the policy is not applied (an empty list would mean every port)"
                    .into(),
            );
            return None;
        }
    }
    let mut identities = BTreeSet::new();
    for id in &spec.from.identities {
        match id.parse::<SpiffeId>() {
            Ok(s) => {
                if s.trust_domain() != trust_domain {
                    problem(
                        "spec.from.identities",
                        id.clone(),
                        format!("in trust domain {:?}, not this mesh's {trust_domain:?}: no peer can match it", s.trust_domain()),
                    );
                }
                identities.insert(id.clone());
            }
            Err(e) => problem(
                "spec.from.identities",
                id.clone(),
                format!("not a SPIFFE ID ({e}); left out"),
            ),
        }
    }
    for sa in &spec.from.service_accounts {
        let ns = sa.namespace.as_deref().unwrap_or(&namespace);
        match SpiffeId::new(trust_domain, ns, &sa.name) {
            Ok(id) => drop(identities.insert(id.to_string())),
            Err(e) => problem(
                "spec.from.serviceAccounts",
                format!("{ns}/{}", sa.name),
                format!("{e}; left out"),
            ),
        }
    }
    let namespaces: BTreeSet<String> = spec.from.namespaces.iter().cloned().collect();
    if identities.is_empty() && namespaces.is_empty() {
        problem(
            "spec.from",
            String::new(),
            "lets no one in (no valid identity, service account or namespace)".into(),
        );
    }
    let http = spec.http.clone().unwrap_or_default();
    let mut methods = BTreeSet::new();
    for m in &http.methods {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
            problem(
                "spec.http.methods",
                m.clone(),
                "not an HTTP method: it matches no request".into(),
            );
        }
        methods.insert(m.to_ascii_uppercase());
    }
    for prefix in &http.path_prefixes {
        if !prefix.starts_with('/') {
            problem(
                "spec.http.pathPrefixes",
                prefix.clone(),
                "does not start with '/': it matches no request".into(),
            );
        }
    }
    Some(pb::Authorization {
        name,
        ports,
        identities: identities.into_iter().collect(),
        namespaces: namespaces.into_iter().collect(),
        methods: methods.into_iter().collect(),
        path_prefixes: http.path_prefixes,
    })
}
