//! What an answer depends on. Answers read a snapshot only through
//! [`Reads`], which records every lookup as a [`Topic`] (found or not: a
//! service that appears later changes the answer too); [`changes`] lists
//! the topics that differ between two snapshots. An answer whose topics
//! did not change is the same in the new snapshot, so it is not computed
//! again (`crate::answers`).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{CompiledRoute, Settings, Snapshot, SERVICE_NAME_LABEL};
use crate::crd::AuthorizationPolicy;
use crate::objects::{ByKey, Key, PodInfo};

/// One input of an answer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Topic {
    /// A Namespace (its annotations).
    Namespace(String),
    Service(Key),
    Pod(Key),
    /// The EndpointSlices of a service.
    SlicesOf(Key),
    /// The routes attached to a service, compiled.
    RoutesOf(Key),
    /// Which service port is at a cluster IP and port.
    ServiceAt(IpAddr, u16),
    /// Which running pod has an IP.
    PodAt(IpAddr),
    /// The AuthorizationPolicies of a namespace.
    Policies(String),
}

/// A snapshot as one answer reads it: every lookup recorded.
pub(crate) struct Reads<'a> {
    snap: &'a Snapshot,
    topics: RefCell<BTreeSet<Topic>>,
}

impl<'a> Reads<'a> {
    pub fn new(snap: &'a Snapshot) -> Self {
        Self {
            snap,
            topics: RefCell::new(BTreeSet::new()),
        }
    }

    /// The topics read so far.
    pub fn into_topics(self) -> BTreeSet<Topic> {
        self.topics.into_inner()
    }

    fn read(&self, t: Topic) {
        self.topics.borrow_mut().insert(t);
    }

    pub fn settings(&self) -> &'a Settings {
        &self.snap.settings
    }

    pub fn namespace(&self, name: &str) -> Option<&'a Arc<Namespace>> {
        self.read(Topic::Namespace(name.to_string()));
        self.snap.objects.namespaces.get(&Key::new("", name))
    }

    pub fn service(&self, key: &Key) -> Option<&'a Arc<Service>> {
        self.read(Topic::Service(key.clone()));
        self.snap.objects.services.get(key)
    }

    pub fn pod(&self, key: &Key) -> Option<&'a Arc<PodInfo>> {
        self.read(Topic::Pod(key.clone()));
        self.snap.objects.pods.get(key)
    }

    /// The service and the index of its port at `ip:port`.
    pub fn service_at(&self, ip: IpAddr, port: u16) -> Option<&'a (Key, usize)> {
        self.read(Topic::ServiceAt(ip, port));
        self.snap.services_by_addr.get(&(ip, port))
    }

    /// The running pod with `ip`.
    pub fn pod_at(&self, ip: IpAddr) -> Option<&'a Arc<PodInfo>> {
        self.read(Topic::PodAt(ip));
        let key = self.snap.pods_by_ip.get(&ip)?;
        self.pod(key)
    }

    pub fn slices_of(&self, service: &Key) -> impl Iterator<Item = &'a Arc<EndpointSlice>> {
        self.read(Topic::SlicesOf(service.clone()));
        let snap = self.snap;
        snap.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| snap.objects.endpoint_slices.get(k))
    }

    pub fn routes_of(&self, service: &Key) -> impl Iterator<Item = &'a Arc<CompiledRoute>> {
        self.read(Topic::RoutesOf(service.clone()));
        self.snap
            .routes
            .by_parent
            .get(service)
            .into_iter()
            .flatten()
    }

    pub fn policies_in(
        &self,
        namespace: &str,
    ) -> impl Iterator<Item = &'a Arc<AuthorizationPolicy>> {
        self.read(Topic::Policies(namespace.to_string()));
        let ns = namespace.to_string();
        self.snap
            .objects
            .authorization_policies
            .range(Key::new(namespace, "")..)
            .take_while(move |(k, _)| k.namespace == ns)
            .map(|(_, p)| p)
    }
}

/// What differs between two snapshots, as topics; `None` when everything
/// may differ (the settings, or whether the source is synced).
pub(crate) fn changes(old: &Snapshot, new: &Snapshot) -> Option<HashSet<Topic>> {
    if old.synced != new.synced || old.settings != new.settings {
        return None;
    }
    let mut out = HashSet::new();
    let (o, n) = (&old.objects, &new.objects);
    diff(&o.namespaces, &n.namespaces, |k, _| {
        out.insert(Topic::Namespace(k.name.clone()));
    });
    diff(&o.pods, &n.pods, |k, pod| {
        out.insert(Topic::Pod(k.clone()));
        out.extend(pod.ips.iter().map(|ip| Topic::PodAt(*ip)));
    });
    diff(&o.services, &n.services, |k, svc| {
        out.insert(Topic::Service(k.clone()));
        let spec = svc.spec.as_ref();
        let ips = spec
            .into_iter()
            .flat_map(|s| s.cluster_ip.iter().chain(s.cluster_ips.iter().flatten()))
            .filter_map(|ip| ip.parse::<IpAddr>().ok());
        let ports: Vec<u16> = spec
            .into_iter()
            .flat_map(|s| s.ports.iter().flatten())
            .filter_map(|p| u16::try_from(p.port).ok())
            .collect();
        for ip in ips {
            out.extend(ports.iter().map(|port| Topic::ServiceAt(ip, *port)));
        }
    });
    diff(&o.endpoint_slices, &n.endpoint_slices, |k, slice| {
        let labels = slice.metadata.labels.as_ref();
        if let Some(service) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) {
            out.insert(Topic::SlicesOf(Key::new(&k.namespace, service)));
        }
    });
    diff(
        &o.authorization_policies,
        &n.authorization_policies,
        |k, _| {
            out.insert(Topic::Policies(k.namespace.clone()));
        },
    );
    // Routes are compiled again when they or the services change:
    // compare what each service has attached.
    if !Arc::ptr_eq(&old.routes, &new.routes) {
        let (o, n) = (&old.routes.by_parent, &new.routes.by_parent);
        let parents: BTreeSet<&Key> = o.keys().chain(n.keys()).collect();
        for p in parents {
            if o.get(p) != n.get(p) {
                out.insert(Topic::RoutesOf(p.clone()));
            }
        }
    }
    Some(out)
}

/// Calls `changed` with the key and each version (old, new) of every
/// object that differs between `old` and `new`: a merge of two ordered
/// maps, where an object shared by both snapshots costs one pointer
/// comparison.
fn diff<T: PartialEq>(old: &ByKey<T>, new: &ByKey<T>, mut changed: impl FnMut(&Key, &T)) {
    if Arc::ptr_eq(old, new) {
        return;
    }
    let mut o = old.iter().peekable();
    let mut n = new.iter().peekable();
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => return,
            (Some((k, a)), None) => {
                changed(k, a);
                o.next();
            }
            (None, Some((k, b))) => {
                changed(k, b);
                n.next();
            }
            (Some((ka, a)), Some((kb, b))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    changed(ka, a);
                    o.next();
                }
                std::cmp::Ordering::Greater => {
                    changed(kb, b);
                    n.next();
                }
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(a, b) && a != b {
                        changed(ka, a);
                        changed(kb, b);
                    }
                    o.next();
                    n.next();
                }
            },
        }
    }
}
