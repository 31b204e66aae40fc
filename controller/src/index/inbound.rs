//! A pod's inbound policy: its default (pod annotation, else namespace
//! annotation, else the mesh-wide setting), per-port overrides, the HTTP
//! probes of its containers, and the authorization policies selecting it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use trellis_api::discovery::v1 as pb;
use trellis_core::spiffe::SpiffeId;

use super::annotations::{parse_port_policies, DEFAULT_INBOUND_POLICY, PORT_INBOUND_POLICY};
use super::{annotation, Problem, Snapshot, PROXY_CONTAINER};
use crate::crd::AuthorizationPolicy;
use crate::objects::{Key, Kind};

pub use trellis_core::policy::DefaultPolicy;

/// The inbound policy of pod `namespace/name`; `None` while the pod is not
/// known (the proxy then keeps waiting: no default stands in for a policy
/// that may be stricter).
pub fn inbound(snap: &Snapshot, namespace: &str, name: &str) -> Option<pb::InboundPolicy> {
    let pod = snap.objects.pods.get(&Key::new(namespace, name))?;
    let ns = snap.objects.namespaces.get(&Key::new("", namespace));
    let parse = |v: Option<&str>| v.and_then(|v| v.trim().parse::<DefaultPolicy>().ok());
    let default = parse(annotation(pod.as_ref(), DEFAULT_INBOUND_POLICY))
        .or_else(|| parse(ns.and_then(|n| annotation(n.as_ref(), DEFAULT_INBOUND_POLICY))))
        .unwrap_or(snap.settings.default_inbound);
    let port_policies = annotation(pod.as_ref(), PORT_INBOUND_POLICY)
        .and_then(|v| parse_port_policies(v).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|(port, p)| (u32::from(port), p.to_string()))
        .collect();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let authorizations = snap
        .objects
        .authorization_policies
        .range(Key::new(namespace, "")..)
        .take_while(|(k, _)| k.namespace == namespace)
        .filter(|(_, p)| selects(&p.spec.pod_selector, &labels).unwrap_or(false))
        .filter_map(|(_, p)| authorization(&snap.settings.trust_domain, p, &mut Vec::new()))
        .collect();
    Some(pb::InboundPolicy {
        default_policy: default.to_string(),
        port_policies,
        probes: probes(pod),
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

/// The path of a kubelet gRPC probe's request.
const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// The HTTP and gRPC probes of the pod's containers (and native sidecars), other
/// than the proxy's own: kubelet requests to them are always let in.
fn probes(pod: &Pod) -> Vec<pb::Probe> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let containers: Vec<&Container> = spec.containers.iter().chain(sidecars).collect();
    let mut out = BTreeSet::new();
    for c in &containers {
        if c.name == PROXY_CONTAINER {
            continue;
        }
        let probes = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe];
        // A gRPC probe is the kubelet calling the standard health service
        // over HTTP/2 on that port.
        for grpc in probes
            .iter()
            .copied()
            .flatten()
            .filter_map(|p| p.grpc.as_ref())
        {
            if let Some(port) = u16::try_from(grpc.port).ok().filter(|p| *p != 0) {
                out.insert((port, GRPC_HEALTH_CHECK.to_string()));
            }
        }
        for get in probes
            .into_iter()
            .flatten()
            .filter_map(|p| p.http_get.as_ref())
        {
            let port = match &get.port {
                IntOrString::Int(n) => u16::try_from(*n).ok(),
                IntOrString::String(s) => s
                    .parse::<u16>()
                    .ok()
                    .or_else(|| named_port(c, s))
                    .or_else(|| containers.iter().find_map(|o| named_port(o, s))),
            };
            let Some(port) = port.filter(|p| *p != 0) else {
                continue;
            };
            let path = get.path.clone().filter(|p| !p.is_empty());
            out.insert((port, path.unwrap_or_else(|| "/".into())));
        }
    }
    out.into_iter()
        .map(|(port, path)| pb::Probe {
            port: u32::from(port),
            path,
        })
        .collect()
}

/// The number of container port `name`.
pub(crate) fn named_port(c: &Container, name: &str) -> Option<u16> {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
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
