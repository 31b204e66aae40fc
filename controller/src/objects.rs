//! The Kubernetes objects the controller reads, kept by kind in one typed
//! collection ([`Objects`]), and the trait ([`Watched`]) that both sources
//! use to turn a typed object into an [`Object`]: projected, as it arrives,
//! to the fields the index reads ([`project`]), the rest dropped at once.

mod project;

pub use project::PodInfo;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use serde::de::DeserializeOwned;

use crate::crd::AuthorizationPolicy;

/// The kinds of object the controller reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    HttpRoute,
    GrpcRoute,
    AuthorizationPolicy,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::AuthorizationPolicy,
    ];

    /// The `kind` of the resource, as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
        }
    }

    /// The `apiVersion` the controller reads it at.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::HttpRoute | Kind::GrpcRoute => "gateway.networking.k8s.io/v1",
            Kind::AuthorizationPolicy => "policy.trellis.dev/v1alpha1",
        }
    }

    /// The resource as `kubectl` and RBAC name it: plural, then the API
    /// group (`httproutes.gateway.networking.k8s.io`; core: `pods`).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices.discovery.k8s.io",
            Kind::HttpRoute => "httproutes.gateway.networking.k8s.io",
            Kind::GrpcRoute => "grpcroutes.gateway.networking.k8s.io",
            Kind::AuthorizationPolicy => "authorizationpolicies.policy.trellis.dev",
        }
    }

    pub fn namespaced(self) -> bool {
        self != Kind::Namespace
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object's namespace (empty for a Namespace) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// One object of any of the kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Arc<Namespace>),
    Pod(Arc<PodInfo>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    HttpRoute(Arc<HttpRoute>),
    GrpcRoute(Arc<GrpcRoute>),
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
        }
    }

    pub fn key(&self) -> Key {
        fn key<K: ResourceExt>(o: &K) -> Key {
            Key {
                namespace: o.namespace().unwrap_or_default(),
                name: o.name_any(),
            }
        }
        match self {
            Object::Namespace(o) => Key::new("", &o.name_any()),
            Object::Pod(o) => Key::new(&o.namespace, &o.name),
            Object::Service(o) => key(o.as_ref()),
            Object::EndpointSlice(o) => key(o.as_ref()),
            Object::HttpRoute(o) => key(o.as_ref()),
            Object::GrpcRoute(o) => key(o.as_ref()),
            Object::AuthorizationPolicy(o) => key(o.as_ref()),
        }
    }
}

/// A kind the sources read: typed, and convertible into an [`Object`].
pub trait Watched:
    kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const KIND: Kind;
    /// The object, projected to what the controller reads, for the store.
    fn into_object(self) -> Object;
}

fn trim<K: kube::Resource>(mut o: K) -> K {
    o.meta_mut().managed_fields = None;
    o
}

macro_rules! watched {
    ($ty:ty, $kind:ident, $project:expr) => {
        impl Watched for $ty {
            const KIND: Kind = Kind::$kind;
            fn into_object(self) -> Object {
                Object::$kind(Arc::new($project(self)))
            }
        }
    };
    ($ty:ty, $kind:ident) => {
        watched!($ty, $kind, trim);
    };
}

watched!(Namespace, Namespace, project::namespace);
watched!(Pod, Pod, |p: Pod| project::pod(&p));
watched!(Service, Service, project::service);
watched!(EndpointSlice, EndpointSlice, project::endpoint_slice);
watched!(HttpRoute, HttpRoute);
watched!(GrpcRoute, GrpcRoute);
watched!(AuthorizationPolicy, AuthorizationPolicy);

/// The objects of one kind, keyed and ordered by namespace and name. A
/// snapshot shares it with the store until the store changes that kind
/// (copy on write): publishing costs no copy, and a change copies only its
/// own kind's map.
pub type ByKey<T> = Arc<BTreeMap<Key, Arc<T>>>;

/// Every object the controller knows, by kind. Values are shared: cloning
/// is cheap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objects {
    pub namespaces: ByKey<Namespace>,
    pub pods: ByKey<PodInfo>,
    pub services: ByKey<Service>,
    pub endpoint_slices: ByKey<EndpointSlice>,
    pub http_routes: ByKey<HttpRoute>,
    pub grpc_routes: ByKey<GrpcRoute>,
    pub authorization_policies: ByKey<AuthorizationPolicy>,
}

impl Objects {
    /// Adds `o`, replacing any object of its kind with its key.
    pub fn insert(&mut self, o: Object) {
        let key = o.key();
        match o {
            Object::Namespace(o) => put(&mut self.namespaces, key, o),
            Object::Pod(o) => put(&mut self.pods, key, o),
            Object::Service(o) => put(&mut self.services, key, o),
            Object::EndpointSlice(o) => put(&mut self.endpoint_slices, key, o),
            Object::HttpRoute(o) => put(&mut self.http_routes, key, o),
            Object::GrpcRoute(o) => put(&mut self.grpc_routes, key, o),
            Object::AuthorizationPolicy(o) => put(&mut self.authorization_policies, key, o),
        }
    }

    /// Removes the object of `kind` with `key`; whether there was one.
    pub fn remove(&mut self, kind: Kind, key: &Key) -> bool {
        match kind {
            Kind::Namespace => remove(&mut self.namespaces, key),
            Kind::Pod => remove(&mut self.pods, key),
            Kind::Service => remove(&mut self.services, key),
            Kind::EndpointSlice => remove(&mut self.endpoint_slices, key),
            Kind::HttpRoute => remove(&mut self.http_routes, key),
            Kind::GrpcRoute => remove(&mut self.grpc_routes, key),
            Kind::AuthorizationPolicy => remove(&mut self.authorization_policies, key),
        }
    }

    /// Removes every object of `kind`.
    pub fn clear(&mut self, kind: Kind) {
        match kind {
            Kind::Namespace => self.namespaces = ByKey::default(),
            Kind::Pod => self.pods = ByKey::default(),
            Kind::Service => self.services = ByKey::default(),
            Kind::EndpointSlice => self.endpoint_slices = ByKey::default(),
            Kind::HttpRoute => self.http_routes = ByKey::default(),
            Kind::GrpcRoute => self.grpc_routes = ByKey::default(),
            Kind::AuthorizationPolicy => self.authorization_policies = ByKey::default(),
        }
    }

    /// The `metadata.resourceVersion` of the object of `kind` with `key`.
    pub fn resource_version(&self, kind: Kind, key: &Key) -> Option<String> {
        let meta = match kind {
            Kind::Namespace => self.namespaces.get(key).map(|o| &o.metadata),
            Kind::Pod => return self.pods.get(key)?.resource_version.clone(),
            Kind::Service => self.services.get(key).map(|o| &o.metadata),
            Kind::EndpointSlice => self.endpoint_slices.get(key).map(|o| &o.metadata),
            Kind::HttpRoute => self.http_routes.get(key).map(|o| &o.metadata),
            Kind::GrpcRoute => self.grpc_routes.get(key).map(|o| &o.metadata),
            Kind::AuthorizationPolicy => self.authorization_policies.get(key).map(|o| &o.metadata),
        };
        meta.and_then(|m| m.resource_version.clone())
    }

    /// Replaces each object equal to `old`'s of its kind and key with
    /// `old`'s copy (so both share it); whether every object was equal
    /// and no object of `old` is missing.
    pub fn share_unchanged(&mut self, old: &Objects) -> bool {
        fn share<T: PartialEq>(new: &mut ByKey<T>, old: &ByKey<T>) -> bool {
            if Arc::ptr_eq(new, old) {
                return true;
            }
            let mut same = new.len() == old.len();
            for (k, v) in Arc::make_mut(new).iter_mut() {
                match old.get(k) {
                    Some(o) if Arc::ptr_eq(o, v) => {}
                    Some(o) if **o == **v => *v = o.clone(),
                    _ => same = false,
                }
            }
            if same {
                // The whole kind unchanged: share the map too.
                *new = old.clone();
            }
            same
        }
        // Every kind, whatever the first ones say.
        [
            share(&mut self.namespaces, &old.namespaces),
            share(&mut self.pods, &old.pods),
            share(&mut self.services, &old.services),
            share(&mut self.endpoint_slices, &old.endpoint_slices),
            share(&mut self.http_routes, &old.http_routes),
            share(&mut self.grpc_routes, &old.grpc_routes),
            share(
                &mut self.authorization_policies,
                &old.authorization_policies,
            ),
        ]
        .iter()
        .all(|s| *s)
    }

    /// How many objects of `kind` there are.
    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Namespace => self.namespaces.len(),
            Kind::Pod => self.pods.len(),
            Kind::Service => self.services.len(),
            Kind::EndpointSlice => self.endpoint_slices.len(),
            Kind::HttpRoute => self.http_routes.len(),
            Kind::GrpcRoute => self.grpc_routes.len(),
            Kind::AuthorizationPolicy => self.authorization_policies.len(),
        }
    }

    /// Builds a collection from objects (later ones replace earlier ones
    /// of the same kind and key).
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut out = Self::default();
        for o in objects {
            out.insert(o);
        }
        out
    }
}

/// Inserts `o`, unless an equal object is there already (then the map is
/// not copied, and stays shared with the last snapshot).
fn put<T: PartialEq>(map: &mut ByKey<T>, key: Key, o: Arc<T>) {
    if map
        .get(&key)
        .is_some_and(|old| Arc::ptr_eq(old, &o) || **old == *o)
    {
        return;
    }
    Arc::make_mut(map).insert(key, o);
}

fn remove<T>(map: &mut ByKey<T>, key: &Key) -> bool {
    map.contains_key(key) && Arc::make_mut(map).remove(key).is_some()
}
