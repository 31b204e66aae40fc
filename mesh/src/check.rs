//! The mesh file's validation: everything that can be checked without
//! touching the system, every problem reported at once, each prefixed
//! with its path, e.g. `workloads[1] (demo/web).ports[0]`. A file that
//! passes becomes [`Checked`], what the plan is built from.
//!
//! Parsing ([`parse`], [`load`]) is strict: the types of [`spec`] refuse
//! unknown fields, and serde names the field path of the first syntax
//! error. Validation then goes through the file top-down: names, CIDRs and
//! lifetimes; each workload (ports, command placeholders, probes, env,
//! `config.trellis.dev/*` annotations, the floor); the pods' namespace and
//! interface names; services; `routes:` ([`routes`]); `policies:`
//! ([`authz`]); and, once all of that passed, what the controller's own
//! index would still report about the routes and policies
//! ([`controller::controller_problems`]).
//!
//! [`spec`]: super::spec

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use trellis_controller::index::annotations::{unknown_key_message, RETRY_PREFIX, TIMEOUT_PREFIX};
use trellis_core::config::parse_ports;
use trellis_core::contract::trace::{parse_collector, parse_sampling};
use trellis_injector::floor::{policy_rank, OutboundMtls};

use super::authz;
use super::controller;
use super::names::{self, check_label, check_subdomain, PROXY_PORTS};
use super::net::{Ipv4Cidr, PodAddresses};
use super::routes;
use super::spec::{
    InboundPolicy, MeshFile, MeshFloor, Overrides, Service, Workload, ANNOTATION_PREFIX,
    CONFIG_ANNOTATIONS, DEFAULT_INBOUND_POLICY, MAX_MESH_NAME_LEN, MAX_PODS, MAX_REPLICAS,
    OPAQUE_PORTS, OUTBOUND_MTLS, PORT_INBOUND_POLICY, PROXY_LOG_LEVEL, RESOURCE_ANNOTATIONS,
    SKIP_INBOUND_PORTS, SKIP_OUTBOUND_PORTS, TRACE_COLLECTOR, TRACE_SAMPLING,
};
use super::template;

/// The bounds `trellis-identity` accepts for certificate lifetimes.
const MIN_CERT_LIFETIME: Duration = Duration::from_secs(10);
const MAX_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a mesh file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read mesh file {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

/// Every problem found in one mesh file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    pub origin: String,
    pub errors: Vec<String>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} problem(s):", self.origin, self.errors.len())?;
        for e in &self.errors {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

/// A mesh file that passed validation, with the values validation parsed.
#[derive(Debug, Clone)]
pub struct Checked {
    pub file: MeshFile,
    pub pod_cidr: Ipv4Cidr,
    pub service_cidr: Ipv4Cidr,
    /// One per workload, in file order.
    pub overrides: Vec<Overrides>,
    pub cert_lifetime: Duration,
}

pub fn load(path: &Path) -> Result<Checked, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses and validates `text`; `origin` names it in messages.
pub fn parse(text: &str, origin: &str) -> Result<Checked, SpecError> {
    let file: MeshFile = serde_yaml_ng::from_str(text).map_err(|e| SpecError::Parse {
        origin: origin.to_string(),
        message: e.to_string(),
    })?;
    Ok(validate(file, origin)?)
}

struct Errors(Vec<String>);

impl Errors {
    fn push(&mut self, path: &str, msg: impl fmt::Display) {
        self.0.push(format!("{path}: {msg}"));
    }
}

fn check_trust_domain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')"
        ))
    }
}

fn check_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn workload_path(i: usize, w: &Workload) -> String {
    format!("workloads[{i}] ({}/{})", w.namespace, w.name)
}

fn service_path(i: usize, s: &Service) -> String {
    format!("services[{i}] ({}/{})", s.namespace, s.name)
}

/// Checks everything about `file` that can be checked without the system.
pub fn validate(file: MeshFile, origin: &str) -> Result<Checked, ValidationErrors> {
    let mut errs = Errors(Vec::new());

    if let Err(e) = check_label(&file.name, MAX_MESH_NAME_LEN) {
        errs.push("name", e);
    }
    if let Err(e) = check_trust_domain(&file.trust_domain) {
        errs.push("trustDomain", e);
    }
    let cert_lifetime = match trellis_core::config::parse_duration(&file.cert_lifetime) {
        Ok(d) if (MIN_CERT_LIFETIME..=MAX_CERT_LIFETIME).contains(&d) => Some(d),
        Ok(_) => {
            errs.push(
                "certLifetime",
                format!("{:?} must be 10s to 8760h", file.cert_lifetime),
            );
            None
        }
        Err(e) => {
            errs.push("certLifetime", e);
            None
        }
    };
    let pod_cidr = check_cidr(&mut errs, "podCidr", &file.pod_cidr);
    let service_cidr = check_cidr(&mut errs, "serviceCidr", &file.service_cidr);
    if let (Some(p), Some(s)) = (pod_cidr, service_cidr) {
        if p.overlaps(s) {
            errs.push("serviceCidr", format!("{s} overlaps podCidr {p}"));
        }
    }

    check_defaults_against_floor(&mut errs, &file);
    if let Some(c) = &file.tracing.collector {
        if let Err(e) = parse_collector(c) {
            errs.push("tracing.collector", format!("{c:?} {e}"));
        }
    }
    if let Some(r) = file.tracing.sampling {
        if !(0.0..=1.0).contains(&r) {
            errs.push("tracing.sampling", format!("{r} must be from 0 to 1"));
        }
    }
    if file.workloads.is_empty() {
        errs.push("workloads", "a mesh needs at least one workload");
    }
    let mut overrides = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, w) in file.workloads.iter().enumerate() {
        let path = workload_path(i, w);
        if !seen.insert((w.namespace.as_str(), w.name.as_str())) {
            errs.push(
                &path,
                "a workload of this name already exists in this namespace",
            );
        }
        overrides.push(check_workload(&mut errs, &path, w, &file.floor));
    }

    let mut total_pods: usize = 0;
    for w in &file.workloads {
        total_pods = total_pods.saturating_add(usize::try_from(w.replicas).unwrap_or(usize::MAX));
    }
    if total_pods > MAX_PODS {
        errs.push(
            "workloads",
            format!("{total_pods} pods in all; the local mesh runs at most {MAX_PODS}"),
        );
    }
    if let Some(p) = pod_cidr {
        let room = PodAddresses::new(p, file.ipv6).capacity();
        if total_pods as u64 > room {
            errs.push("podCidr", format!("{p} has room for {room} pods beside the gateway; the file asks for {total_pods}"));
        }
    }
    check_unique_names(&mut errs, &file);

    let mut seen = BTreeSet::new();
    for (i, s) in file.services.iter().enumerate() {
        let path = service_path(i, s);
        if !seen.insert((s.namespace.as_str(), s.name.as_str())) {
            errs.push(
                &path,
                "a service of this name already exists in this namespace",
            );
        }
        check_service(&mut errs, &path, s, &file.workloads);
    }
    if let Some(s) = service_cidr {
        if file.services.len() as u64 > s.host_capacity() {
            errs.push(
                "serviceCidr",
                format!(
                    "{s} has room for {} services; the file has {}",
                    s.host_capacity(),
                    file.services.len()
                ),
            );
        }
    }

    let service_ports: routes::ServicePorts = file
        .services
        .iter()
        .map(|s| {
            let ports = s.ports.iter().map(|p| p.port).collect();
            ((s.namespace.clone(), s.name.clone()), ports)
        })
        .collect();
    let mut route_names = BTreeSet::new();
    let mut clean_routes = Vec::new();
    for (i, v) in file.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        let found = routes::check_route(&path, v, &service_ports);
        if found.is_empty() {
            clean_routes.push((i, v.clone()));
        }
        for (field, msg) in found {
            errs.push(&field, msg);
        }
        let key = (
            v.get("namespace")
                .and_then(|n| n.as_str())
                .unwrap_or("default")
                .to_string(),
            v.get("kind")
                .and_then(|n| n.as_str())
                .unwrap_or("HTTPRoute")
                .to_string(),
            v.get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_string(),
        );
        if !route_names.insert(key.clone()) {
            errs.push(
                &format!("{path}.name"),
                format!("{} {}/{} is listed twice", key.1, key.0, key.2),
            );
        }
    }
    errs.0.extend(authz::validate(
        &file.policies,
        &file.workloads,
        &file.trust_domain,
    ));
    // A file that passed its own checks goes through the controller's: a
    // mistake only it would notice is refused here too, not left for its
    // `/warnings`.
    if errs.0.is_empty() {
        let policies: Vec<_> = file.policies.iter().enumerate().collect();
        errs.0.extend(controller::controller_problems(
            &file.trust_domain,
            &file.services,
            &clean_routes,
            &policies,
        ));
    }

    match (errs.0.is_empty(), pod_cidr, service_cidr, cert_lifetime) {
        (true, Some(pod_cidr), Some(service_cidr), Some(cert_lifetime)) => Ok(Checked {
            file,
            pod_cidr,
            service_cidr,
            overrides,
            cert_lifetime,
        }),
        _ => Err(ValidationErrors {
            origin: origin.to_string(),
            errors: errs.0,
        }),
    }
}

fn check_cidr(errs: &mut Errors, path: &str, s: &str) -> Option<Ipv4Cidr> {
    match s.parse::<Ipv4Cidr>() {
        Err(e) => {
            errs.push(path, e);
            None
        }
        Ok(c) => match c.unusable_reason() {
            Some(why) => {
                errs.push(path, format!("{c} cannot be used: {why}"));
                None
            }
            None => Some(c),
        },
    }
}

/// The file's own defaults may not be below its floor either.
fn check_defaults_against_floor(errs: &mut Errors, file: &MeshFile) {
    let floor = &file.floor;
    if let Some(min) = floor.default_inbound_policy {
        if policy_rank(file.default_inbound_policy) < policy_rank(min) {
            errs.push(
                "defaultInboundPolicy",
                format!(
                    "{} is weaker than floor.defaultInboundPolicy {min} (order: all-unauthenticated < audit < all-authenticated < deny)",
                    file.default_inbound_policy
                ),
            );
        }
    }
    if let Some(min) = floor.outbound_mtls {
        if file.outbound_mtls < min {
            errs.push(
                "outboundMtls",
                format!(
                    "{} is weaker than floor.outboundMtls {min}",
                    file.outbound_mtls
                ),
            );
        }
    }
}

/// A workload's overrides against the file's floor: each one below it is
/// refused with its path, its value and the floor.
fn check_floor(errs: &mut Errors, path: &str, w: &Workload, o: &Overrides, floor: &MeshFloor) {
    let p = |key: &str| format!("{path}.annotations[{key:?}]");
    if !floor.allow_opt_out && !w.meshed {
        errs.push(
            &format!("{path}.meshed"),
            "false is refused: floor.allowOptOut is false (every workload is meshed)",
        );
    }
    if let Some(min) = floor.default_inbound_policy {
        if let Some(asked) = o.inbound_policy {
            if policy_rank(asked) < policy_rank(min) {
                errs.push(
                    &p(DEFAULT_INBOUND_POLICY),
                    format!("{asked} is weaker than floor.defaultInboundPolicy {min}"),
                );
            }
        }
        for (port, asked) in &o.port_inbound_policies {
            if policy_rank(*asked) < policy_rank(min) {
                errs.push(
                    &p(PORT_INBOUND_POLICY),
                    format!("port {port}: {asked} is weaker than floor.defaultInboundPolicy {min}"),
                );
            }
        }
    }
    if let (Some(min), Some(asked)) = (floor.outbound_mtls, o.outbound_mtls) {
        if asked < min {
            errs.push(
                &p(OUTBOUND_MTLS),
                format!("{asked} is weaker than floor.outboundMtls {min}"),
            );
        }
    }
    for (key, list, allowance, field) in [
        (
            SKIP_INBOUND_PORTS,
            &o.skip_inbound_ports,
            &floor.skip_inbound_ports,
            "skipInboundPorts",
        ),
        (
            SKIP_OUTBOUND_PORTS,
            &o.skip_outbound_ports,
            &floor.skip_outbound_ports,
            "skipOutboundPorts",
        ),
    ] {
        let Some(ranges) = list.as_deref().and_then(|l| parse_ports(l).ok()) else {
            continue;
        };
        let (_, refused) = allowance.check(&ranges);
        if !refused.is_empty() {
            let refused: Vec<String> = refused.iter().map(ToString::to_string).collect();
            errs.push(
                &p(key),
                format!(
                    "ports {} are not allowed by floor.{field} ({allowance})",
                    refused.join(",")
                ),
            );
        }
    }
}

fn check_workload(errs: &mut Errors, path: &str, w: &Workload, floor: &MeshFloor) -> Overrides {
    // Replica names (`web-63`) must stay DNS labels.
    if let Err(e) = check_label(&w.name, 60) {
        errs.push(&format!("{path}.name"), e);
    }
    if let Err(e) = check_label(&w.namespace, 63) {
        errs.push(&format!("{path}.namespace"), e);
    }
    if let Err(e) = check_subdomain(&w.service_account) {
        errs.push(&format!("{path}.serviceAccount"), e);
    }
    if w.replicas > MAX_REPLICAS {
        errs.push(
            &format!("{path}.replicas"),
            format!(
                "{} is more than the local mesh's limit of {MAX_REPLICAS}",
                w.replicas
            ),
        );
    }
    let mut ports = BTreeSet::new();
    for (j, &port) in w.ports.iter().enumerate() {
        let p = format!("{path}.ports[{j}]");
        if port == 0 {
            errs.push(&p, "port 0 is not a port (1-65535)");
        } else if !ports.insert(port) {
            errs.push(&p, format!("port {port} is listed twice"));
        } else if w.meshed && PROXY_PORTS.iter().any(|(own, _)| *own == port) {
            let own = PROXY_PORTS.map(|(own, _)| own.to_string()).join(", ");
            errs.push(&p, format!("port {port} belongs to the sidecar proxy ({own}); pick another or set `meshed: false`"));
        }
    }
    if w.command.is_empty() {
        errs.push(&format!("{path}.command"), "must not be empty");
    }
    let sample = template::TemplateVars::sample(!w.ports.is_empty());
    for (j, arg) in w.command.iter().enumerate() {
        if let Err(e) = template::expand(arg, &sample) {
            errs.push(&format!("{path}.command[{j}]"), e);
        }
    }
    errs.0.extend(authz::validate_probes(path, w));
    for key in w.env.keys() {
        if !check_env_name(key) {
            errs.push(
                &format!("{path}.env.{key}"),
                "is not a valid environment variable name",
            );
        }
    }
    let o = check_annotations(errs, path, w);
    check_floor(errs, path, w, &o, floor);
    o
}

fn check_annotations(errs: &mut Errors, path: &str, w: &Workload) -> Overrides {
    let mut o = Overrides::default();
    for (key, value) in &w.annotations {
        let p = format!("{path}.annotations[{key:?}]");
        if key.starts_with(RETRY_PREFIX) || key.starts_with(TIMEOUT_PREFIX) {
            errs.push(
                &p,
                "retry and timeout annotations belong on a route: move it to routes[].annotations",
            );
            continue;
        }
        if !key.starts_with(ANNOTATION_PREFIX) {
            continue; // other annotations are the user's business
        }
        match key.as_str() {
            OPAQUE_PORTS | SKIP_INBOUND_PORTS | SKIP_OUTBOUND_PORTS => match parse_ports(value) {
                Err(e) => errs.push(&p, e),
                Ok(ranges) => {
                    let list = ranges.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",");
                    let slot = match key.as_str() {
                        OPAQUE_PORTS => &mut o.opaque_ports,
                        SKIP_INBOUND_PORTS => &mut o.skip_inbound_ports,
                        _ => &mut o.skip_outbound_ports,
                    };
                    *slot = (!list.is_empty()).then_some(list);
                }
            },
            PROXY_LOG_LEVEL => match trellis_core::telemetry::parse_log_filter(value) {
                Ok(v) if !v.trim().is_empty() => o.proxy_log_level = Some(v),
                Ok(_) => errs.push(&p, "must not be empty"),
                Err(e) => errs.push(&p, format!("{value:?} is not a log filter: {e}")),
            },
            DEFAULT_INBOUND_POLICY => match value.parse::<InboundPolicy>().ok() {
                Some(policy) => o.inbound_policy = Some(policy),
                None => errs.push(&p, format!("{value:?} is not one of all-unauthenticated, all-authenticated, deny, audit")),
            },
            PORT_INBOUND_POLICY => match authz::parse_port_policies(value) {
                Ok(ports) => o.port_inbound_policies = ports,
                Err(e) => errs.push(&p, e),
            },
            OUTBOUND_MTLS => match value.parse::<OutboundMtls>() {
                Ok(m) => o.outbound_mtls = Some(m),
                Err(_) => errs.push(&p, format!("{value:?} is not one of opportunistic, required")),
            },
            TRACE_COLLECTOR => match parse_collector(value) {
                Ok(c) => o.trace_collector = Some(c),
                Err(e) => errs.push(&p, format!("{value:?} {e}")),
            },
            TRACE_SAMPLING => match parse_sampling(value) {
                Ok(_) => o.trace_sampling = Some(value.trim().to_string()),
                Err(e) => errs.push(&p, format!("{value:?} {e}")),
            },
            k if RESOURCE_ANNOTATIONS.contains(&k) => {}
            _ => errs.push(&p, unknown_config_annotation(key)),
        }
    }
    if !w.meshed
        && (o.opaque_ports.is_some()
            || o.skip_inbound_ports.is_some()
            || o.skip_outbound_ports.is_some()
            || o.proxy_log_level.is_some()
            || o.outbound_mtls.is_some()
            || o.trace_collector.is_some()
            || o.trace_sampling.is_some()
            || !o.port_inbound_policies.is_empty())
    {
        errs.push(
            &format!("{path}.annotations"),
            "proxy overrides on an unmeshed workload (`meshed: false`) would have no effect",
        );
    }
    o
}

/// Why `key` (under `config.trellis.dev/`) is refused: the closest known
/// key, and all of them.
fn unknown_config_annotation(key: &str) -> String {
    unknown_key_message(key, &CONFIG_ANNOTATIONS)
}

/// Network namespace and interface names are derived from several names
/// joined by '-', so two different workloads could map to the same one.
fn check_unique_names(errs: &mut Errors, file: &MeshFile) {
    let mut netns = BTreeMap::new();
    let mut veths = BTreeMap::new();
    for (i, w) in file.workloads.iter().enumerate() {
        for r in 0..w.replicas.min(MAX_REPLICAS) {
            let ns = names::netns_name(&file.name, &w.namespace, &names::replica_name(&w.name, r));
            let veth = names::host_veth_name(&ns);
            if let Some(other) = netns.insert(ns.clone(), i) {
                if other != i {
                    errs.push(&workload_path(i, w), format!("its pods' network namespace {ns} collides with workloads[{other}]'s; rename one"));
                }
            } else if let Some(other) = veths.insert(veth.clone(), ns.clone()) {
                errs.push(
                    &workload_path(i, w),
                    format!("interface name {veth} collides with {other}'s; rename one"),
                );
            }
        }
    }
}

fn check_service(errs: &mut Errors, path: &str, s: &Service, workloads: &[Workload]) {
    if let Err(e) = check_label(&s.name, 63) {
        errs.push(&format!("{path}.name"), e);
    }
    if let Err(e) = check_label(&s.namespace, 63) {
        errs.push(&format!("{path}.namespace"), e);
    }
    let target = workloads
        .iter()
        .find(|w| w.name == s.selector && w.namespace == s.namespace);
    if target.is_none() {
        let elsewhere = workloads.iter().find(|w| w.name == s.selector).map(|w| {
            format!(" (there is one in namespace {:?}; a service selects workloads of its own namespace)", w.namespace)
        });
        errs.push(
            &format!("{path}.selector"),
            format!(
                "no workload named {:?} in namespace {:?}{}",
                s.selector,
                s.namespace,
                elsewhere.unwrap_or_default()
            ),
        );
    }
    if s.ports.is_empty() {
        errs.push(
            &format!("{path}.ports"),
            "a service needs at least one port",
        );
    }
    let mut seen = BTreeSet::new();
    for (j, p) in s.ports.iter().enumerate() {
        let pp = format!("{path}.ports[{j}]");
        if p.port == 0 {
            errs.push(&format!("{pp}.port"), "port 0 is not a port (1-65535)");
        } else if !seen.insert(p.port) {
            errs.push(
                &format!("{pp}.port"),
                format!("port {} is listed twice", p.port),
            );
        }
        if let Some(name) = &p.name {
            if let Err(e) = check_label(name, 15) {
                errs.push(&format!("{pp}.name"), e);
            }
        }
        if let Some(proto) = &p.app_protocol {
            let ok = !proto.is_empty()
                && proto.len() <= 63
                && proto
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'/' | b'_'));
            if !ok {
                errs.push(
                    &format!("{pp}.appProtocol"),
                    format!("{proto:?} is not an appProtocol such as http, h2c, grpc or tcp"),
                );
            }
        }
        if p.target() == 0 {
            errs.push(
                &format!("{pp}.targetPort"),
                "port 0 is not a port (1-65535)",
            );
        } else if let Some(w) = target {
            if !w.ports.contains(&p.target()) {
                errs.push(
                    &format!("{pp}.targetPort"),
                    format!(
                        "{} is not one of workload {}/{}'s ports {:?}",
                        p.target(),
                        w.namespace,
                        w.name,
                        w.ports
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
