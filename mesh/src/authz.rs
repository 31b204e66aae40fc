//! Inbound policy for the local mesh: the mesh file's `policies:` (the
//! `policy.trellis.dev` AuthorizationPolicy resource, flattened like the
//! file's services; its type, [`AuthorizationPolicy`], is the file's, in
//! [`spec`](super::spec)), their validation, and their compilation — with
//! the pod's default policy, per-port overrides and probes — into the
//! policy file each proxy reads (`TRELLIS_PROXY_POLICY_FILE`). Pure.
//!
//! ```yaml
//! policies:
//!   - name: web-from-client      # unique in its namespace
//!     namespace: demo            # default: default
//!     targetWorkload: web        # optional; omitted: every meshed workload of the namespace
//!     ports: [8080]              # optional; pod ports (not service ports); omitted: every port
//!     from:                      # who may connect; at least one entry
//!       identities: ["spiffe://cluster.local/ns/demo/sa/client"]
//!       serviceAccounts: [{name: client, namespace: demo}]   # namespace defaults to the policy's
//!       namespaces: [demo]       # any meshed workload of these namespaces
//!     http:                      # optional; when given, HTTP requests only (never opaque TCP)
//!       methods: [GET, HEAD]
//!       pathPrefixes: [/api]     # whole path segments: /api matches /api and /api/x
//! ```
//!
//! Semantics are the proxy's (`proxy/src/policy.rs`): once a policy selects
//! a port, only peers matching one of the policies selecting it get in
//! (under `audit`, the rest is let in and counted); ports no policy selects
//! follow the default policy. Probes (`GET` on a workload's declared probe
//! port and path) are always let in.

use std::collections::{BTreeMap, BTreeSet};

use trellis_core::config::PortRange;
use trellis_core::spiffe::SpiffeId;

use super::names::{self, check_label, check_subdomain};
use super::routes::HTTP_METHODS;
use super::spec::{AuthorizationPolicy, InboundPolicy, Overrides, Workload};

/// The proxy's policy file, and one entry of its `authorizations`: the
/// proxy's own types (the contract's), so what the mesh writes is what
/// the proxy reads.
pub use trellis_core::contract::files::{
    Authorization as ProxyAuthorization, Policy as ProxyPolicy,
};

/// `policies[0] (demo/web-from-client)`.
fn policy_path(i: usize, p: &AuthorizationPolicy) -> String {
    format!("policies[{i}] ({}/{})", p.namespace, p.name)
}

/// Every problem with the file's policies, each prefixed with its path.
pub(crate) fn validate(
    policies: &[AuthorizationPolicy],
    workloads: &[Workload],
    trust_domain: &str,
) -> Vec<String> {
    let mut errs = Vec::new();
    let mut push = |path: &str, msg: String| errs.push(format!("{path}: {msg}"));
    let mut seen = BTreeSet::new();
    for (i, p) in policies.iter().enumerate() {
        let path = policy_path(i, p);
        if let Err(e) = check_label(&p.name, 63) {
            push(&format!("{path}.name"), e);
        }
        if let Err(e) = check_label(&p.namespace, 63) {
            push(&format!("{path}.namespace"), e);
        }
        if !seen.insert((p.namespace.as_str(), p.name.as_str())) {
            push(
                &path,
                "a policy of this name already exists in this namespace".into(),
            );
        }

        let in_ns: Vec<&Workload> = workloads
            .iter()
            .filter(|w| w.namespace == p.namespace)
            .collect();
        let target = match &p.target_workload {
            Some(name) => match in_ns.iter().find(|w| &w.name == name) {
                None => {
                    push(
                        &format!("{path}.targetWorkload"),
                        format!(
                            "no workload named {name:?} in namespace {:?} (a policy targets workloads of its own namespace)",
                            p.namespace
                        ),
                    );
                    None
                }
                Some(w) if !w.meshed => {
                    push(
                        &format!("{path}.targetWorkload"),
                        format!(
                            "workload {}/{} is not meshed (`meshed: false`): no proxy would enforce this policy",
                            w.namespace, w.name
                        ),
                    );
                    None
                }
                Some(w) => Some(*w),
            },
            None => {
                if !in_ns.iter().any(|w| w.meshed) {
                    push(
                        &path,
                        format!(
                            "namespace {:?} has no meshed workload, so the policy selects nothing; set targetWorkload or fix namespace",
                            p.namespace
                        ),
                    );
                }
                None
            }
        };

        let mut ports = BTreeSet::new();
        for (j, &port) in p.ports.iter().enumerate() {
            let pp = format!("{path}.ports[{j}]");
            if port == 0 {
                push(&pp, "port 0 is not a port (1-65535)".into());
            } else if !ports.insert(port) {
                push(&pp, format!("port {port} is listed twice"));
            } else if let Some(w) = target {
                if !w.ports.contains(&port) {
                    push(
                        &pp,
                        format!(
                            "{port} is not one of workload {}/{}'s ports {:?} (policies name pod ports, not service ports)",
                            w.namespace, w.name, w.ports
                        ),
                    );
                }
            }
        }

        let from = &p.from;
        if from.identities.is_empty()
            && from.service_accounts.is_empty()
            && from.namespaces.is_empty()
        {
            push(
                &format!("{path}.from"),
                "lets no one in: list identities, serviceAccounts or namespaces".into(),
            );
        }
        for (j, id) in from.identities.iter().enumerate() {
            let ip = format!("{path}.from.identities[{j}]");
            match id.parse::<SpiffeId>() {
                Err(e) => push(&ip, format!("not a SPIFFE ID: {e}")),
                Ok(s) if s.trust_domain() != trust_domain => push(
                    &ip,
                    format!(
                        "{id:?} is in trust domain {:?}, but this mesh's is {trust_domain:?}: no peer could ever match it",
                        s.trust_domain()
                    ),
                ),
                Ok(_) => {}
            }
        }
        for (j, sa) in from.service_accounts.iter().enumerate() {
            let sp = format!("{path}.from.serviceAccounts[{j}]");
            if let Err(e) = check_subdomain(&sa.name) {
                push(&format!("{sp}.name"), e);
            }
            if let Some(ns) = &sa.namespace {
                if let Err(e) = check_label(ns, 63) {
                    push(&format!("{sp}.namespace"), e);
                }
            }
        }
        for (j, ns) in from.namespaces.iter().enumerate() {
            if let Err(e) = check_label(ns, 63) {
                push(&format!("{path}.from.namespaces[{j}]"), e);
            }
        }

        if let Some(http) = &p.http {
            if http.methods.is_empty() && http.path_prefixes.is_empty() {
                push(
                    &format!("{path}.http"),
                    "lists neither methods nor pathPrefixes; leave `http` out to match any traffic"
                        .into(),
                );
            }
            for (j, m) in http.methods.iter().enumerate() {
                if !HTTP_METHODS.contains(&m.to_ascii_uppercase().as_str()) {
                    push(
                        &format!("{path}.http.methods[{j}]"),
                        super::routes::not_accepted(m, &HTTP_METHODS),
                    );
                }
            }
            for (j, prefix) in http.path_prefixes.iter().enumerate() {
                if !prefix.starts_with('/') {
                    push(
                        &format!("{path}.http.pathPrefixes[{j}]"),
                        format!("{prefix:?} must start with '/'"),
                    );
                } else if prefix.contains(['?', '#']) || prefix.chars().any(char::is_whitespace) {
                    push(
                        &format!("{path}.http.pathPrefixes[{j}]"),
                        format!("{prefix:?} must be a path, without query, fragment or spaces"),
                    );
                }
            }
        }
    }
    errs
}

/// Every problem with a workload's `probes`.
pub(crate) fn validate_probes(path: &str, w: &Workload) -> Vec<String> {
    let mut errs = Vec::new();
    for (j, p) in w.probes.iter().enumerate() {
        let pp = format!("{path}.probes[{j}]");
        if !w.ports.contains(&p.port) {
            errs.push(format!(
                "{pp}.port: {} is not one of the workload's ports {:?}",
                p.port, w.ports
            ));
        }
        if !p.path.starts_with('/') || p.path.contains(['?', '#']) {
            errs.push(format!(
                "{pp}.path: {:?} must be a path starting with '/', without query or fragment",
                p.path
            ));
        }
    }
    errs
}

/// The policy file of one meshed pod: the default from its annotation or
/// the file, per-port overrides from its annotation, its workload's probes,
/// and the policies selecting it.
pub(crate) fn compile(
    trust_domain: &str,
    file_default: InboundPolicy,
    overrides: &Overrides,
    workload: &Workload,
    policies: &[AuthorizationPolicy],
) -> ProxyPolicy {
    let authorizations = policies
        .iter()
        .filter(|p| p.namespace == workload.namespace)
        .filter(|p| {
            p.target_workload
                .as_ref()
                .is_none_or(|t| *t == workload.name)
        })
        .map(|p| authorization(trust_domain, p))
        .collect();
    ProxyPolicy {
        default_policy: overrides.inbound_policy.unwrap_or(file_default),
        ports: overrides.port_inbound_policies.clone(),
        probes: workload.probes.clone(),
        authorizations,
    }
}

fn authorization(trust_domain: &str, p: &AuthorizationPolicy) -> ProxyAuthorization {
    let mut identities: Vec<String> = p.from.identities.clone();
    for sa in &p.from.service_accounts {
        let ns = sa.namespace.as_deref().unwrap_or(&p.namespace);
        identities.push(names::spiffe_id(trust_domain, ns, &sa.name));
    }
    dedup(&mut identities);
    let mut namespaces = p.from.namespaces.clone();
    dedup(&mut namespaces);
    let http = p.http.clone().unwrap_or_default();
    let mut methods: Vec<String> = http.methods.iter().map(|m| m.to_uppercase()).collect();
    dedup(&mut methods);
    ProxyAuthorization {
        name: p.name.clone(),
        ports: p.ports.iter().copied().map(PortRange::from).collect(),
        identities,
        namespaces,
        methods,
        path_prefixes: http.path_prefixes,
    }
}

/// Removes repeats, keeping the first of each.
fn dedup(v: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    v.retain(|s| seen.insert(s.clone()));
}

/// Sets a pod's default and per-port policies as the pod annotations the
/// controller reads (`config.trellis.dev/default-inbound-policy`, and
/// `config.trellis.dev/port-inbound-policy`, removed when there is no
/// per-port policy).
pub(crate) fn set_policy_annotations(
    annotations: &mut BTreeMap<String, String>,
    policy: &ProxyPolicy,
) {
    use super::spec::{DEFAULT_INBOUND_POLICY, PORT_INBOUND_POLICY};
    annotations.insert(
        DEFAULT_INBOUND_POLICY.to_string(),
        policy.default_policy.to_string(),
    );
    let ports: Vec<String> = policy
        .ports
        .iter()
        .map(|(port, p)| format!("{port}={p}"))
        .collect();
    if ports.is_empty() {
        annotations.remove(PORT_INBOUND_POLICY);
    } else {
        annotations.insert(PORT_INBOUND_POLICY.to_string(), ports.join(","));
    }
}

/// Parses `config.trellis.dev/port-inbound-policy`: `8080=deny,9090=audit`.
pub(crate) fn parse_port_policies(s: &str) -> Result<BTreeMap<u16, InboundPolicy>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (port, policy) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not PORT=POLICY (e.g. 8080=deny)"))?;
        let port = match port.trim().parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("{:?} is not a port (1-65535)", port.trim())),
            Ok(p) => p,
        };
        let policy = policy.trim().parse::<InboundPolicy>().ok().ok_or_else(|| {
            format!(
                "{:?} is not one of all-unauthenticated, all-authenticated, deny, audit",
                policy.trim()
            )
        })?;
        if out.insert(port, policy).is_some() {
            return Err(format!("port {port} is given twice"));
        }
    }
    if out.is_empty() {
        return Err("must list at least one PORT=POLICY".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
