//! The index: pure functions from a [`Snapshot`] of the store to the
//! answers proxies ask for. No IO, no clock: everything here is decided
//! from the objects alone and tested from tables (`tests.rs`).
//!
//! - [`Snapshot::new`] builds, once per change of the store, the lookups
//!   every answer needs (service by cluster IP and port, pod by IP,
//!   EndpointSlices by service, routes by parent service, each route
//!   compiled once) and the [`Problem`]s found on the way (bad annotation
//!   values, unusable route fields), which the controller logs, counts and
//!   shows at `/warnings`.
//! - [`resolve`]: `Resolve(target, client_namespace)` → `Resolution`.
//! - [`inbound()`]: `Inbound(namespace, pod)` → `InboundPolicy`.

pub mod annotations;
mod inbound;
pub(crate) mod reads;
mod resolve;
mod routes;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

pub(crate) use inbound::inbound_reading;
pub use inbound::{inbound, DefaultPolicy};
pub use resolve::resolve;
pub(crate) use resolve::resolve_reading;
use routes::Rules;
pub(crate) use routes::{CompiledRoute, ParentRef, ParentVerdict};

use crate::objects::{Key, Kind, Objects};
use annotations::{
    parse_opaque_ports, parse_port_policies, DEFAULT_INBOUND_POLICY, OPAQUE_PORTS,
    PORT_INBOUND_POLICY,
};

/// The container the injector adds: a pod that has it is meshed.
pub const PROXY_CONTAINER: &str = "trellis-proxy";
/// The label EndpointSlices name their service by.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the index needs besides the objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub trust_domain: String,
    pub cluster_domain: String,
    pub default_inbound: DefaultPolicy,
}

/// Something wrong with an object that the controller worked around: the
/// object still applies, without the bad value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Problem {
    #[serde(serialize_with = "ser_kind")]
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The annotation or field at fault, from a fixed vocabulary (it is
    /// the `annotation` label of `trellis_controller_annotation_errors`).
    pub field: &'static str,
    pub value: String,
    pub message: String,
}

fn ser_kind<S: serde::Serializer>(k: &Kind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}/{}: {}={:?}: {}",
            self.kind, self.namespace, self.name, self.field, self.value, self.message
        )
    }
}

/// One consistent view of the store, with the lookups built from it.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every snapshot the store publishes.
    pub version: u64,
    /// Whether the source has delivered a complete first state; streams
    /// answer nothing before.
    pub synced: bool,
    pub(crate) objects: Objects,
    pub(crate) settings: Arc<Settings>,
    /// (cluster IP, service port) → service and the index of its port.
    services_by_addr: HashMap<(IpAddr, u16), (Key, usize)>,
    /// Pod IP → running pod.
    pods_by_ip: HashMap<IpAddr, Key>,
    /// Service → its EndpointSlices.
    slices_by_service: HashMap<Key, Vec<Key>>,
    /// Service → the routes naming it as a parent, in precedence order.
    routes_by_parent: HashMap<Key, Vec<Arc<CompiledRoute>>>,
    routes: Vec<Arc<CompiledRoute>>,
    problems: Vec<Problem>,
}

impl Snapshot {
    /// Indexes `objects`. Pure.
    pub fn new(objects: Objects, settings: Arc<Settings>, version: u64, synced: bool) -> Self {
        let mut problems = Vec::new();
        let mut services_by_addr = HashMap::new();
        for (key, svc) in &objects.services {
            let Some(spec) = &svc.spec else { continue };
            let ips: BTreeSet<IpAddr> = spec
                .cluster_ip
                .iter()
                .chain(spec.cluster_ips.iter().flatten())
                .filter_map(|ip| ip.parse().ok())
                .collect();
            for (i, port) in spec.ports.iter().flatten().enumerate() {
                let tcp = port.protocol.as_deref().is_none_or(|p| p == "TCP");
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                if tcp {
                    for ip in &ips {
                        services_by_addr.insert((*ip, number), (key.clone(), i));
                    }
                }
            }
            check_opaque_ports(
                Kind::Service,
                key,
                svc.metadata.annotations.as_ref(),
                &mut problems,
            );
        }

        let mut pods_by_ip = HashMap::new();
        for (key, pod) in &objects.pods {
            if pod.running {
                for ip in pod.ips.iter().copied() {
                    // Two running pods with one IP: the first by name wins,
                    // so the answer does not flap.
                    pods_by_ip.entry(ip).or_insert_with(|| key.clone());
                }
            }
            let ann = Some(&pod.annotations);
            check_opaque_ports(Kind::Pod, key, ann, &mut problems);
            check_inbound_annotations(Kind::Pod, key, ann, &mut problems);
        }
        for (key, ns) in &objects.namespaces {
            let ann = ns.metadata.annotations.as_ref();
            check_opaque_ports(Kind::Namespace, key, ann, &mut problems);
            check_inbound_annotations(Kind::Namespace, key, ann, &mut problems);
        }

        let mut slices_by_service: HashMap<Key, Vec<Key>> = HashMap::new();
        for (key, slice) in &objects.endpoint_slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let Some(service) = service {
                slices_by_service
                    .entry(Key::new(&key.namespace, service))
                    .or_default()
                    .push(key.clone());
            }
        }

        let mut compiled: Vec<CompiledRoute> = Vec::new();
        for r in objects.http_routes.values() {
            compiled.push(routes::compile_http(r, &mut problems));
        }
        for r in objects.grpc_routes.values() {
            compiled.push(routes::compile_grpc(r, &mut problems));
        }
        let service_ports = |key: &Key| {
            objects.services.get(key).map(|svc| {
                svc.spec
                    .iter()
                    .flat_map(|s| s.ports.iter().flatten())
                    .filter_map(|p| Some((u16::try_from(p.port).ok()?, p.name.clone())))
                    .collect::<routes::ServicePorts>()
            })
        };
        for r in &mut compiled {
            r.verdict = routes::check_references(r, &service_ports, &mut problems);
        }
        let mut routes: Vec<Arc<CompiledRoute>> = compiled.into_iter().map(Arc::new).collect();
        routes.sort_by(|a, b| routes::precedence(a, b));
        let mut routes_by_parent: HashMap<Key, Vec<Arc<CompiledRoute>>> = HashMap::new();
        // A route none of whose rules is valid is not attached (its status
        // says `Accepted: False`).
        for r in routes.iter().filter(|r| r.serves()) {
            let services: BTreeSet<&Key> = r.parents.iter().map(|p| &p.service).collect();
            for s in services {
                routes_by_parent
                    .entry(s.clone())
                    .or_default()
                    .push(r.clone());
            }
        }

        for p in objects.authorization_policies.values() {
            inbound::authorization(&settings.trust_domain, p, &mut problems);
        }
        problems.sort();
        problems.dedup();
        Self {
            version,
            synced,
            objects,
            settings,
            services_by_addr,
            pods_by_ip,
            slices_by_service,
            routes_by_parent,
            routes,
            problems,
        }
    }

    /// An empty, unsynced snapshot (what streams see before the source's
    /// first state).
    pub fn empty(settings: Arc<Settings>) -> Self {
        Self::new(Objects::default(), settings, 0, false)
    }

    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// Everything the controller worked around in this snapshot, sorted.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The problems, each with the `resourceVersion` of the object it is
    /// about: the controller logs and counts each once per object version
    /// (a changed object that still has the problem is reported again).
    pub fn versioned_problems(&self) -> BTreeSet<(Problem, Option<String>)> {
        self.problems
            .iter()
            .map(|p| {
                let key = Key::new(&p.namespace, &p.name);
                (p.clone(), self.objects.resource_version(p.kind, &key))
            })
            .collect()
    }

    /// Every route, compiled, in precedence order (the route status
    /// writer reads their verdicts).
    pub(crate) fn routes(&self) -> &[Arc<CompiledRoute>] {
        &self.routes
    }

    /// The routes and the services they attach to (for `/routes`).
    pub fn route_summaries(&self) -> Vec<RouteSummary> {
        self.routes
            .iter()
            .map(|r| RouteSummary {
                kind: r.kind.as_str(),
                namespace: r.key.namespace.clone(),
                name: r.key.name.clone(),
                parents: r
                    .parents
                    .iter()
                    .map(|p| {
                        let mut s = p.service.to_string();
                        if let Some(port) = p.port {
                            s.push_str(&format!(":{port}"));
                        }
                        if let Some(section) = &p.section {
                            s.push_str(&format!(" ({section})"));
                        }
                        s
                    })
                    .collect(),
                rules: match &r.rules {
                    Rules::Http(rules) => rules.len(),
                    Rules::Grpc(rules) => rules.len(),
                },
                warnings: self
                    .problems
                    .iter()
                    .filter(|p| {
                        p.kind == r.kind && p.namespace == r.key.namespace && p.name == r.key.name
                    })
                    .map(|p| format!("{}={:?}: {}", p.field, p.value, p.message))
                    .collect(),
            })
            .collect()
    }
}

/// A route as `/routes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RouteSummary {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// `NS/SERVICE[:PORT][ (SECTION)]`.
    pub parents: Vec<String>,
    pub rules: usize,
    pub warnings: Vec<String>,
}

fn check_opaque_ports(
    kind: Kind,
    key: &Key,
    ann: Option<&BTreeMap<String, String>>,
    problems: &mut Vec<Problem>,
) {
    if let Some(v) = ann.and_then(|a| a.get(OPAQUE_PORTS)) {
        if let Err(e) = parse_opaque_ports(v) {
            problems.push(problem(
                kind,
                key,
                OPAQUE_PORTS,
                v,
                &format!("{e}; no port is opaque by this annotation"),
            ));
        }
    }
}

fn check_inbound_annotations(
    kind: Kind,
    key: &Key,
    ann: Option<&BTreeMap<String, String>>,
    problems: &mut Vec<Problem>,
) {
    let Some(ann) = ann else { return };
    if let Some(v) = ann.get(DEFAULT_INBOUND_POLICY) {
        if let Err(e) = v.trim().parse::<DefaultPolicy>() {
            let next = if kind == Kind::Pod {
                "the namespace's or the mesh-wide default applies"
            } else {
                "the mesh-wide default applies"
            };
            problems.push(problem(
                kind,
                key,
                DEFAULT_INBOUND_POLICY,
                v,
                &format!("{e}; {next}"),
            ));
        }
    }
    if kind == Kind::Pod {
        if let Some(v) = ann.get(PORT_INBOUND_POLICY) {
            if let Err(e) = parse_port_policies(v) {
                problems.push(problem(
                    kind,
                    key,
                    PORT_INBOUND_POLICY,
                    v,
                    &format!("{e}; no per-port override applies"),
                ));
            }
        }
    }
}

fn problem(kind: Kind, key: &Key, field: &'static str, value: &str, message: &str) -> Problem {
    Problem {
        kind,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        field,
        value: value.to_string(),
        message: message.to_string(),
    }
}

/// An annotation of an object.
pub(crate) fn annotation<'a, K: kube::Resource>(o: &'a K, key: &str) -> Option<&'a str> {
    o.meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}
