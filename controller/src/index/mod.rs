//! The index: pure functions from a [`Snapshot`] of the store to the
//! answers proxies ask for. No IO, no clock: everything here is decided
//! from the objects alone and tested from tables (`tests.rs`).
//!
//! - [`Snapshot::new`] (or [`Snapshot::next`], keeping the last snapshot's
//!   parts for kinds that did not change) builds, once per change of the store, the lookups
//!   every answer needs (service by cluster IP and port, pod by IP,
//!   EndpointSlices by service, routes by parent service, each route
//!   compiled once) and the [`Problem`]s found on the way (bad annotation
//!   values, unusable route fields), which the controller logs, counts and
//!   shows at `/warnings`.
//! - [`resolve`]: `Resolve(target, client_namespace)` → `Resolution`.
//! - [`inbound()`]: `Inbound(namespace, pod)` → `InboundPolicy`.
//! - `reads`: both read a snapshot only through `Reads`, which records
//!   what each answer depends on.

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
    services_by_addr: Arc<HashMap<(IpAddr, u16), (Key, usize)>>,
    /// Pod IP → running pod.
    pods_by_ip: Arc<HashMap<IpAddr, Key>>,
    /// Service → its EndpointSlices.
    slices_by_service: Arc<HashMap<Key, Vec<Key>>>,
    routes: Arc<Routes>,
    /// The problems of each part, kept with it.
    parts: Parts,
    problems: Vec<Problem>,
}

/// Every route, compiled, in precedence order, and by parent service.
#[derive(Debug, Default, PartialEq)]
struct Routes {
    all: Vec<Arc<CompiledRoute>>,
    /// Service → the routes naming it as a parent, in precedence order.
    by_parent: HashMap<Key, Vec<Arc<CompiledRoute>>>,
    problems: Vec<Problem>,
}

/// The problems found in each kind (routes': with `Routes`).
#[derive(Debug, Default, Clone)]
struct Parts {
    services: Arc<Vec<Problem>>,
    pods: Arc<Vec<Problem>>,
    namespaces: Arc<Vec<Problem>>,
    policies: Arc<Vec<Problem>>,
}

/// The part of `prev` for maps that have not changed since (the same
/// `Arc`s), else `build()`.
fn reuse<T>(unchanged: bool, prev: Option<&Arc<T>>, build: impl FnOnce() -> T) -> Arc<T> {
    match prev {
        Some(p) if unchanged => p.clone(),
        _ => Arc::new(build()),
    }
}

impl Snapshot {
    /// Indexes `objects`. Pure.
    pub fn new(objects: Objects, settings: Arc<Settings>, version: u64, synced: bool) -> Self {
        Self::build(objects, settings, version, synced, None)
    }

    /// Indexes `objects`, keeping the parts of `prev` whose objects have
    /// not changed (each kind's map is shared until changed): a change
    /// to an EndpointSlice rebuilds the slices' lookup only. The same as
    /// [`Snapshot::new`], cheaper. Pure.
    pub fn next(prev: &Snapshot, objects: Objects, version: u64, synced: bool) -> Self {
        let settings = prev.settings.clone();
        Self::build(objects, settings, version, synced, Some(prev))
    }

    fn build(
        objects: Objects,
        settings: Arc<Settings>,
        version: u64,
        synced: bool,
        prev: Option<&Snapshot>,
    ) -> Self {
        let o = &objects;
        // Which kinds are the previous snapshot's own maps.
        let po = prev.map(|p| &p.objects);
        let services = po.is_some_and(|p| Arc::ptr_eq(&p.services, &o.services));
        let pods = po.is_some_and(|p| Arc::ptr_eq(&p.pods, &o.pods));
        let namespaces = po.is_some_and(|p| Arc::ptr_eq(&p.namespaces, &o.namespaces));
        let slices = po.is_some_and(|p| Arc::ptr_eq(&p.endpoint_slices, &o.endpoint_slices));
        let routes = services
            && po.is_some_and(|p| {
                Arc::ptr_eq(&p.http_routes, &o.http_routes)
                    && Arc::ptr_eq(&p.grpc_routes, &o.grpc_routes)
            });
        let policies = po
            .is_some_and(|p| Arc::ptr_eq(&p.authorization_policies, &o.authorization_policies))
            && prev.is_some_and(|p| p.settings == settings);

        let (services_by_addr, service_problems) = if services {
            let p = prev.map(|p| (p.services_by_addr.clone(), p.parts.services.clone()));
            p.unwrap_or_default()
        } else {
            let (m, pr) = index_services(o);
            (Arc::new(m), Arc::new(pr))
        };
        let (pods_by_ip, pod_problems) = if pods {
            let p = prev.map(|p| (p.pods_by_ip.clone(), p.parts.pods.clone()));
            p.unwrap_or_default()
        } else {
            let (m, pr) = index_pods(o);
            (Arc::new(m), Arc::new(pr))
        };
        let parts = Parts {
            services: service_problems,
            pods: pod_problems,
            namespaces: reuse(namespaces, prev.map(|p| &p.parts.namespaces), || {
                check_namespaces(o)
            }),
            policies: reuse(policies, prev.map(|p| &p.parts.policies), || {
                let mut problems = Vec::new();
                for p in o.authorization_policies.values() {
                    inbound::authorization(&settings.trust_domain, p, &mut problems);
                }
                problems
            }),
        };
        let slices_by_service = reuse(slices, prev.map(|p| &p.slices_by_service), || {
            index_slices(o)
        });
        let routes = reuse(routes, prev.map(|p| &p.routes), || compile_routes(o));

        let mut problems: Vec<Problem> = [
            &parts.services,
            &parts.pods,
            &parts.namespaces,
            &parts.policies,
        ]
        .into_iter()
        .flat_map(|p| p.iter().cloned())
        .chain(routes.problems.iter().cloned())
        .collect();
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
            routes,
            parts,
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
        &self.routes.all
    }

    /// The routes and the services they attach to (for `/routes`).
    pub fn route_summaries(&self) -> Vec<RouteSummary> {
        self.routes
            .all
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

type ServicesByAddr = HashMap<(IpAddr, u16), (Key, usize)>;

fn index_services(objects: &Objects) -> (ServicesByAddr, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut services_by_addr = HashMap::new();
    for (key, svc) in objects.services.iter() {
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
    (services_by_addr, problems)
}

fn index_pods(objects: &Objects) -> (HashMap<IpAddr, Key>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut pods_by_ip = HashMap::new();
    for (key, pod) in objects.pods.iter() {
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
    (pods_by_ip, problems)
}

fn check_namespaces(objects: &Objects) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (key, ns) in objects.namespaces.iter() {
        let ann = ns.metadata.annotations.as_ref();
        check_opaque_ports(Kind::Namespace, key, ann, &mut problems);
        check_inbound_annotations(Kind::Namespace, key, ann, &mut problems);
    }
    problems
}

fn index_slices(objects: &Objects) -> HashMap<Key, Vec<Key>> {
    let mut slices_by_service: HashMap<Key, Vec<Key>> = HashMap::new();
    for (key, slice) in objects.endpoint_slices.iter() {
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
    slices_by_service
}

/// Compiles every route (their verdicts read the services).
fn compile_routes(objects: &Objects) -> Routes {
    let mut problems = Vec::new();
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
    let mut all: Vec<Arc<CompiledRoute>> = compiled.into_iter().map(Arc::new).collect();
    all.sort_by(|a, b| routes::precedence(a, b));
    let mut by_parent: HashMap<Key, Vec<Arc<CompiledRoute>>> = HashMap::new();
    // A route none of whose rules is valid is not attached (its status
    // says `Accepted: False`).
    for r in all.iter().filter(|r| r.serves()) {
        let services: BTreeSet<&Key> = r.parents.iter().map(|p| &p.service).collect();
        for s in services {
            by_parent.entry(s.clone()).or_default().push(r.clone());
        }
    }
    Routes {
        all,
        by_parent,
        problems,
    }
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
