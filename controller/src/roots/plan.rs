//! The distributor's decision, a pure function: from what the watches show
//! (the namespaces, and every ConfigMap named like the source — the source
//! itself, our copies, and anyone else's) to the writes that bring the
//! copies in line ([`plan`]). No IO; table tests in `plan/tests.rs`.
//!
//! The rules, per namespace the namespace watch knows:
//!
//! | namespace | ConfigMap there | action |
//! |---|---|---|
//! | the control plane's | any (the source lives here) | never touched |
//! | terminating | any | none: nothing can be created there, and its deletion removes the copy |
//! | excluded (`kube-system`, labelled `trellis.dev/admission-webhooks: disabled`) | ours | delete (uid and resourceVersion preconditions) |
//! | target | none | create, if the source is usable |
//! | target | ours, different from the source (or without the owner reference) | update, if the source is usable (resourceVersion precondition) |
//! | target | ours, being deleted | none until it is gone, then create |
//! | target | not ours (no managed-by label) | none; reported as foreign |
//! | excluded | not ours | none |
//!
//! Every copy the plan creates or updates carries an ownerReference to
//! the owner (the chart's `trellis-controller` ClusterRole, when the owner
//! watch has seen it), so that deleting the owner — `helm uninstall` —
//! has Kubernetes' garbage collector delete the copies; a copy of ours
//! without it (made by an older controller, or before the owner was
//! known) is adopted by an update. No `blockOwnerDeletion` (that would need
//! the `finalizers` permission on the owner) and no `controller` flag.
//!
//! A missing or unusable source (no `roots.pem` holding a PEM certificate)
//! stops creates and updates, and deletes nothing because of it: the copies
//! in place keep pods starting and proxies trusting their peers until the
//! source is back. Copies in namespaces the namespace watch does not know
//! are left to the namespace's garbage collection.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use kube::api::ObjectMeta;
use serde_json::{json, Map, Value};

/// The key of the source (and of every copy) that proxies read.
pub const ROOTS_KEY: &str = "roots.pem";
/// The label that marks a copy as the controller's; without it a ConfigMap
/// of the same name is someone else's and never written to.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "trellis-controller";
/// The label every copy carries besides: Trellis's, as on the chart's
/// objects (`kubectl get cm -A -l app.kubernetes.io/part-of=trellis`).
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
pub const PART_OF: &str = "trellis";
/// Annotation of every copy: `NAMESPACE/NAME` of the source.
pub const SOURCE_ANNOTATION: &str = "trellis.dev/trust-roots-source";
/// Namespace label that keeps the injector away (SPEC: always respected).
pub const WEBHOOK_LABEL: &str = "trellis.dev/admission-webhooks";
pub const KUBE_SYSTEM: &str = "kube-system";

/// Where the source is and what the copies are called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The control plane's own namespace: the source's, never a target.
    pub control_plane_namespace: String,
    /// The source's name, and every copy's.
    pub configmap: String,
}

impl Names {
    /// `NAMESPACE/NAME` of the source (the copies' annotation).
    pub fn source(&self) -> String {
        format!("{}/{}", self.control_plane_namespace, self.configmap)
    }
}

/// What the watches show.
#[derive(Debug, Default)]
pub struct World<'a> {
    /// Every namespace (its metadata is all the rules need).
    pub namespaces: Vec<&'a ObjectMeta>,
    /// Every ConfigMap named [`Names::configmap`], in any namespace: the
    /// source, the copies, and foreign ones.
    pub configmaps: Vec<&'a ConfigMap>,
    /// What every copy must name as its owner; `None`: not known (the
    /// owner watch is off, failing, or has not seen it), copies are made
    /// and kept without one.
    pub owner: Option<&'a OwnerReference>,
}

/// The source's content, as every copy must hold it.
#[derive(Debug, Clone, PartialEq)]
pub struct Roots {
    pub data: BTreeMap<String, String>,
    pub binary_data: BTreeMap<String, ByteString>,
}

/// Whether the source can be copied.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceState {
    Ready(Roots),
    Missing,
    /// Present but not usable (the reason names what is wrong).
    Invalid(String),
}

impl SourceState {
    fn roots(&self) -> Option<&Roots> {
        match self {
            SourceState::Ready(r) => Some(r),
            _ => None,
        }
    }
}

/// One write to the API server.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// POST the copy: fails if any ConfigMap of that name exists, so a
    /// foreign one is never taken over.
    Create(Box<ConfigMap>),
    /// A JSON merge patch of our copy, carrying the copy's
    /// `resourceVersion` as a precondition (a copy changed since the watch
    /// saw it is not written).
    Update { namespace: String, patch: Value },
    /// DELETE our copy, only if it is still the object the watch saw.
    Delete {
        namespace: String,
        uid: String,
        resource_version: String,
    },
}

impl Action {
    pub fn namespace(&self) -> &str {
        match self {
            Action::Create(cm) => cm.metadata.namespace.as_deref().unwrap_or_default(),
            Action::Update { namespace, .. } | Action::Delete { namespace, .. } => namespace,
        }
    }

    /// `create`, `update` or `delete` (logs and the metric label).
    pub fn op(&self) -> &'static str {
        match self {
            Action::Create(_) => "create",
            Action::Update { .. } => "update",
            Action::Delete { .. } => "delete",
        }
    }
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub source: SourceState,
    /// In namespace order.
    pub actions: Vec<Action>,
    /// Namespaces whose ConfigMap of that name is not ours (left alone).
    pub foreign: Vec<String>,
    /// Our copies as the watch shows them (any content).
    pub copies: usize,
}

/// Why a namespace gets no copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    ControlPlane,
    KubeSystem,
    WebhooksDisabled,
    Terminating,
}

/// Whether `ns` may hold injected pods (then it needs a copy).
pub fn exclusion(ns: &ObjectMeta, names: &Names) -> Option<Exclusion> {
    let name = ns.name.as_deref().unwrap_or_default();
    if name == names.control_plane_namespace {
        Some(Exclusion::ControlPlane)
    } else if ns.deletion_timestamp.is_some() {
        Some(Exclusion::Terminating)
    } else if name == KUBE_SYSTEM {
        Some(Exclusion::KubeSystem)
    } else if label(ns, WEBHOOK_LABEL) == Some("disabled") {
        Some(Exclusion::WebhooksDisabled)
    } else {
        None
    }
}

/// Whether a ConfigMap is one of our copies.
pub fn managed(cm: &ConfigMap) -> bool {
    label(&cm.metadata, MANAGED_BY_LABEL) == Some(MANAGED_BY)
}

fn label<'m>(meta: &'m ObjectMeta, key: &str) -> Option<&'m str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// Reads the source: usable when `roots.pem` holds a PEM certificate.
pub fn source_state(source: Option<&ConfigMap>) -> SourceState {
    let Some(cm) = source else {
        return SourceState::Missing;
    };
    let data = cm.data.clone().unwrap_or_default();
    match data.get(ROOTS_KEY) {
        None => SourceState::Invalid(format!("has no {ROOTS_KEY} key")),
        Some(pem) if !pem.contains("-----BEGIN CERTIFICATE-----") => {
            SourceState::Invalid(format!("{ROOTS_KEY} holds no PEM certificate"))
        }
        Some(_) => SourceState::Ready(Roots {
            data,
            binary_data: cm.binary_data.clone().unwrap_or_default(),
        }),
    }
}

/// The labels of every copy.
fn copy_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (PART_OF_LABEL.to_string(), PART_OF.to_string()),
    ])
}

/// Whether `refs` hold `owner` (same uid).
fn owned_by(refs: Option<&Vec<OwnerReference>>, owner: &OwnerReference) -> bool {
    refs.is_some_and(|refs| refs.iter().any(|r| r.uid == owner.uid))
}

/// `refs` with `owner` in, in place of any reference to an object of the
/// same kind and name (a ClusterRole deleted and made again has a new uid).
fn with_owner(refs: Option<&Vec<OwnerReference>>, owner: &OwnerReference) -> Vec<OwnerReference> {
    refs.into_iter()
        .flatten()
        .filter(|r| {
            !(r.api_version == owner.api_version && r.kind == owner.kind && r.name == owner.name)
        })
        .cloned()
        .chain(std::iter::once(owner.clone()))
        .collect()
}

/// The copy of `roots` that `namespace` must hold, owned by `owner`.
pub fn desired(
    names: &Names,
    namespace: &str,
    roots: &Roots,
    owner: Option<&OwnerReference>,
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(names.configmap.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(copy_labels()),
            annotations: Some(BTreeMap::from([(
                SOURCE_ANNOTATION.to_string(),
                names.source(),
            )])),
            owner_references: owner.map(|o| vec![o.clone()]),
            ..ObjectMeta::default()
        },
        data: (!roots.data.is_empty()).then(|| roots.data.clone()),
        binary_data: (!roots.binary_data.is_empty()).then(|| roots.binary_data.clone()),
        immutable: None,
    }
}

/// The merge patch that makes our `copy` hold `roots` (and name `owner`,
/// when known), or `None` when it already does (or has no resourceVersion
/// to guard the write with). Keys the source no longer has are removed
/// (`null`); labels, annotations and owner references others put on the
/// copy are kept.
pub fn update_patch(
    names: &Names,
    copy: &ConfigMap,
    roots: &Roots,
    owner: Option<&OwnerReference>,
) -> Option<Value> {
    let meta = &copy.metadata;
    let data = copy.data.clone().unwrap_or_default();
    let binary = copy.binary_data.clone().unwrap_or_default();
    let annotated = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(SOURCE_ANNOTATION))
        == Some(&names.source());
    let labelled = copy_labels()
        .iter()
        .all(|(k, v)| meta.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    let adopted = owner.is_none_or(|o| owned_by(meta.owner_references.as_ref(), o));
    if data == roots.data && binary == roots.binary_data && annotated && labelled && adopted {
        return None;
    }
    let rv = meta.resource_version.as_ref()?;
    let mut patch = json!({
        "metadata": {
            "resourceVersion": rv,
            "labels": copy_labels(),
            "annotations": {SOURCE_ANNOTATION: names.source()},
        },
    });
    if let Some(o) = owner.filter(|_| !adopted) {
        patch["metadata"]["ownerReferences"] = json!(with_owner(meta.owner_references.as_ref(), o));
    }
    if let Some(d) = map_patch(&data, &roots.data, |v| json!(v)) {
        patch["data"] = d;
    }
    if let Some(b) = map_patch(&binary, &roots.binary_data, |v| json!(v)) {
        patch["binaryData"] = b;
    }
    Some(patch)
}

/// The merge patch of one map (`None` when equal): new values, and `null`
/// for every key that goes.
fn map_patch<V: PartialEq>(
    have: &BTreeMap<String, V>,
    want: &BTreeMap<String, V>,
    encode: impl Fn(&V) -> Value,
) -> Option<Value> {
    if have == want {
        return None;
    }
    let mut m = Map::new();
    for (k, v) in want {
        if have.get(k) != Some(v) {
            m.insert(k.clone(), encode(v));
        }
    }
    for k in have.keys().filter(|k| !want.contains_key(*k)) {
        m.insert(k.clone(), Value::Null);
    }
    Some(Value::Object(m))
}

/// Decides every write (see the module's table).
pub fn plan(names: &Names, world: &World<'_>) -> Plan {
    let by_namespace: BTreeMap<&str, &ConfigMap> = world
        .configmaps
        .iter()
        .filter(|cm| cm.metadata.name.as_deref() == Some(names.configmap.as_str()))
        .filter_map(|cm| Some((cm.metadata.namespace.as_deref()?, *cm)))
        .collect();
    let source = source_state(
        by_namespace
            .get(names.control_plane_namespace.as_str())
            .copied(),
    );
    let copies = by_namespace
        .iter()
        .filter(|(ns, cm)| **ns != names.control_plane_namespace && managed(cm))
        .count();

    let mut namespaces: Vec<&ObjectMeta> = world.namespaces.clone();
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    namespaces.dedup_by(|a, b| a.name == b.name);

    let mut actions = Vec::new();
    let mut foreign = Vec::new();
    for ns in namespaces {
        let Some(name) = ns.name.as_deref() else {
            continue;
        };
        let copy = by_namespace.get(name).copied();
        let deleting = copy.is_some_and(|cm| cm.metadata.deletion_timestamp.is_some());
        match (exclusion(ns, names), copy) {
            (Some(Exclusion::ControlPlane | Exclusion::Terminating), _) => {}
            (Some(_), Some(cm)) if managed(cm) && !deleting => {
                if let (Some(uid), Some(rv)) = (&cm.metadata.uid, &cm.metadata.resource_version) {
                    actions.push(Action::Delete {
                        namespace: name.to_string(),
                        uid: uid.clone(),
                        resource_version: rv.clone(),
                    });
                }
            }
            (Some(_), _) => {}
            (None, None) => {
                if let Some(roots) = source.roots() {
                    actions.push(Action::Create(Box::new(desired(
                        names,
                        name,
                        roots,
                        world.owner,
                    ))));
                }
            }
            (None, Some(cm)) if !managed(cm) => foreign.push(name.to_string()),
            (None, Some(_)) if deleting => {}
            (None, Some(cm)) => {
                let patch = source
                    .roots()
                    .and_then(|r| update_patch(names, cm, r, world.owner));
                if let Some(patch) = patch {
                    actions.push(Action::Update {
                        namespace: name.to_string(),
                        patch,
                    });
                }
            }
        }
    }
    Plan {
        source,
        actions,
        foreign,
        copies,
    }
}

#[cfg(test)]
mod tests;
