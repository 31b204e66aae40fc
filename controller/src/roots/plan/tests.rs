//! Table tests of the distributor's decision.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;

use super::*;

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const NEW_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n";

fn names() -> Names {
    Names {
        control_plane_namespace: "trellis".into(),
        configmap: "trellis-trust-roots".into(),
    }
}

/// A namespace: `name`, optionally `name:label-value` for the webhook
/// label, or `name!` for a terminating one.
fn ns(spec: &str) -> ObjectMeta {
    let (name, terminating) = match spec.strip_suffix('!') {
        Some(n) => (n, true),
        None => (spec, false),
    };
    let (name, webhooks) = match name.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (name, None),
    };
    serde_json::from_value(json!({
        "name": name,
        "labels": webhooks.map(|v| json!({WEBHOOK_LABEL: v})).unwrap_or(json!({})),
        "deletionTimestamp": terminating.then_some("2025-01-01T00:00:00Z"),
    }))
    .unwrap()
}

#[derive(Clone, Copy)]
enum Owner {
    /// Carries both labels and the source annotation (no owner reference).
    Ours,
    /// Carries the managed-by label only, no annotation (an older
    /// controller's copy).
    OursUnannotated,
    /// Carries the label, and a deletionTimestamp.
    OursDeleting,
    /// No label (Helm's, a user's).
    Foreign,
}

fn cm(namespace: &str, owner: Owner, pem: &str) -> ConfigMap {
    let mut labels = json!({});
    let mut annotations = json!({});
    let mut deleting = None;
    match owner {
        Owner::Ours => {
            labels = json!({MANAGED_BY_LABEL: MANAGED_BY, PART_OF_LABEL: PART_OF});
            annotations = json!({SOURCE_ANNOTATION: "trellis/trellis-trust-roots"});
        }
        Owner::OursUnannotated => labels = json!({MANAGED_BY_LABEL: MANAGED_BY}),
        Owner::OursDeleting => {
            labels = json!({MANAGED_BY_LABEL: MANAGED_BY});
            annotations = json!({SOURCE_ANNOTATION: "trellis/trellis-trust-roots"});
            deleting = Some("2025-01-01T00:00:00Z");
        }
        Owner::Foreign => labels = json!({MANAGED_BY_LABEL: "Helm"}),
    }
    serde_json::from_value(json!({
        "metadata": {
            "name": "trellis-trust-roots", "namespace": namespace,
            "uid": format!("uid-{namespace}"), "resourceVersion": "7",
            "labels": labels, "annotations": annotations,
            "deletionTimestamp": deleting,
        },
        "data": {ROOTS_KEY: pem},
    }))
    .unwrap()
}

/// The source, as the chart makes it (labelled managed-by Helm).
fn source(pem: &str) -> ConfigMap {
    cm("trellis", Owner::Foreign, pem)
}

fn summary(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .map(|a| format!("{} {}", a.op(), a.namespace()))
        .collect()
}

struct Case {
    name: &'static str,
    namespaces: &'static [&'static str],
    configmaps: Vec<ConfigMap>,
    actions: &'static [&'static str],
    foreign: &'static [&'static str],
    copies: usize,
}

#[test]
fn plans() {
    use Owner::*;
    let cases = [
        Case {
            name: "a new namespace gets a copy",
            namespaces: &["trellis", "demo"],
            configmaps: vec![source(PEM)],
            actions: &["create demo"],
            foreign: &[],
            copies: 0,
        },
        Case {
            name: "kube-system, the control plane, disabled and terminating namespaces get none",
            namespaces: &[
                "trellis",
                "kube-system",
                "off:disabled",
                "gone!",
                "demo",
                "on:enabled",
            ],
            configmaps: vec![source(PEM)],
            actions: &["create demo", "create on"],
            foreign: &[],
            copies: 0,
        },
        Case {
            name: "a current copy is left as it is",
            namespaces: &["trellis", "demo"],
            configmaps: vec![source(PEM), cm("demo", Ours, PEM)],
            actions: &[],
            foreign: &[],
            copies: 1,
        },
        Case {
            name: "the source changed: every copy is updated",
            namespaces: &["trellis", "a", "b"],
            configmaps: vec![source(NEW_PEM), cm("a", Ours, PEM), cm("b", Ours, PEM)],
            actions: &["update a", "update b"],
            foreign: &[],
            copies: 2,
        },
        Case {
            name: "a copy without the source annotation is updated",
            namespaces: &["trellis", "demo"],
            configmaps: vec![source(PEM), cm("demo", OursUnannotated, PEM)],
            actions: &["update demo"],
            foreign: &[],
            copies: 1,
        },
        Case {
            name: "copies in namespaces that became excluded are deleted",
            namespaces: &["trellis", "off:disabled", "kube-system", "demo"],
            configmaps: vec![
                source(PEM),
                cm("off", Ours, PEM),
                cm("kube-system", Ours, PEM),
                cm("demo", Ours, PEM),
            ],
            actions: &["delete kube-system", "delete off"],
            foreign: &[],
            copies: 3,
        },
        Case {
            name: "a terminating namespace's copy is left to the namespace's deletion",
            namespaces: &["trellis", "gone!"],
            configmaps: vec![source(NEW_PEM), cm("gone", Ours, PEM)],
            actions: &[],
            foreign: &[],
            copies: 1,
        },
        Case {
            name: "a foreign ConfigMap is left alone and reported (only where a copy belongs)",
            namespaces: &["trellis", "demo", "off:disabled"],
            configmaps: vec![
                source(NEW_PEM),
                cm("demo", Foreign, PEM),
                cm("off", Foreign, PEM),
            ],
            actions: &[],
            foreign: &["demo"],
            copies: 0,
        },
        Case {
            name: "source missing: no copies made or changed, none deleted for it",
            namespaces: &["trellis", "demo", "web", "off:disabled"],
            configmaps: vec![cm("web", Ours, PEM), cm("off", Ours, PEM)],
            actions: &["delete off"],
            foreign: &[],
            copies: 2,
        },
        Case {
            name: "source without a certificate: as missing",
            namespaces: &["trellis", "demo", "web"],
            configmaps: vec![source("nothing here"), cm("web", Ours, PEM)],
            actions: &[],
            foreign: &[],
            copies: 1,
        },
        Case {
            name: "a source that carries our label is still the source, never deleted",
            namespaces: &["trellis", "demo"],
            configmaps: vec![cm("trellis", Ours, PEM)],
            actions: &["create demo"],
            foreign: &[],
            copies: 0,
        },
        Case {
            name: "a copy being deleted is recreated only once it is gone",
            namespaces: &["trellis", "demo"],
            configmaps: vec![source(NEW_PEM), cm("demo", OursDeleting, PEM)],
            actions: &[],
            foreign: &[],
            copies: 1,
        },
        Case {
            name: "a copy in a namespace the watch does not know yet is left alone",
            namespaces: &["trellis"],
            configmaps: vec![source(NEW_PEM), cm("unknown", Ours, PEM)],
            actions: &[],
            foreign: &[],
            copies: 1,
        },
        Case {
            name: "nothing before the namespaces are known",
            namespaces: &[],
            configmaps: vec![source(PEM)],
            actions: &[],
            foreign: &[],
            copies: 0,
        },
    ];
    for case in cases {
        let namespaces: Vec<ObjectMeta> = case.namespaces.iter().map(|s| ns(s)).collect();
        let world = World {
            namespaces: namespaces.iter().collect(),
            configmaps: case.configmaps.iter().collect(),
            owner: None,
        };
        let p = plan(&names(), &world);
        assert_eq!(summary(&p), case.actions, "{}: actions", case.name);
        assert_eq!(p.foreign, case.foreign, "{}: foreign", case.name);
        assert_eq!(p.copies, case.copies, "{}: copies", case.name);
    }
}

#[test]
fn source_states() {
    let n = names();
    let state = |cms: Vec<ConfigMap>| {
        let namespaces = [ns("trellis")];
        let world = World {
            namespaces: namespaces.iter().collect(),
            configmaps: cms.iter().collect(),
            owner: None,
        };
        plan(&n, &world).source
    };
    assert_eq!(state(vec![]), SourceState::Missing);
    assert_eq!(
        state(vec![cm("demo", Owner::Foreign, PEM)]),
        SourceState::Missing,
        "only the control plane's namespace holds the source"
    );
    assert!(matches!(state(vec![source(PEM)]), SourceState::Ready(_)));
    let mut no_key = source(PEM);
    no_key.data = Some(BTreeMap::from([("ca.crt".into(), PEM.into())]));
    assert_eq!(
        state(vec![no_key]),
        SourceState::Invalid("has no roots.pem key".into())
    );
    assert_eq!(
        state(vec![source("")]),
        SourceState::Invalid("roots.pem holds no PEM certificate".into())
    );
    let mut other_name = source(PEM);
    other_name.metadata.name = Some("other".into());
    assert_eq!(state(vec![other_name]), SourceState::Missing);
}

#[test]
fn the_copy_carries_the_label_the_annotation_and_every_key() {
    let mut src = source(PEM);
    src.data
        .as_mut()
        .unwrap()
        .insert("extra.pem".into(), NEW_PEM.into());
    src.binary_data = Some(BTreeMap::from([("der".into(), ByteString(vec![1, 2]))]));
    let SourceState::Ready(roots) = source_state(Some(&src)) else {
        panic!("usable source")
    };
    let copy = serde_json::to_value(desired(&names(), "demo", &roots, Some(&owner()))).unwrap();
    assert_eq!(
        copy,
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "trellis-trust-roots", "namespace": "demo",
                "labels": {
                    "app.kubernetes.io/managed-by": "trellis-controller",
                    "app.kubernetes.io/part-of": "trellis",
                },
                "annotations": {"trellis.dev/trust-roots-source": "trellis/trellis-trust-roots"},
                "ownerReferences": [{
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "name": "trellis-controller", "uid": "role-uid",
                }],
            },
            "data": {"roots.pem": PEM, "extra.pem": NEW_PEM},
            "binaryData": {"der": "AQI="},
        })
    );
    // The owner not known: no reference.
    let copy = desired(&names(), "demo", &roots, None);
    assert_eq!(copy.metadata.owner_references, None);
}

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "rbac.authorization.k8s.io/v1".into(),
        kind: "ClusterRole".into(),
        name: "trellis-controller".into(),
        uid: "role-uid".into(),
        ..OwnerReference::default()
    }
}

/// `cm` as the current controller writes it when the owner is known.
fn owned(namespace: &str, pem: &str) -> ConfigMap {
    let mut c = cm(namespace, Owner::Ours, pem);
    c.metadata.owner_references = Some(vec![owner()]);
    c
}

#[test]
fn a_copy_without_the_owner_reference_is_adopted_and_others_references_kept() {
    let roots = Roots {
        data: BTreeMap::from([(ROOTS_KEY.into(), PEM.into())]),
        binary_data: BTreeMap::new(),
    };
    // A copy made before the owner was known, with the current content;
    // someone else's reference on it, and a stale one to a ClusterRole of
    // the owner's name made before (another uid).
    let mut old = cm("demo", Owner::Ours, PEM);
    let theirs = OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "keeper".into(),
        uid: "keeper-uid".into(),
        ..OwnerReference::default()
    };
    let stale = OwnerReference {
        uid: "old-role-uid".into(),
        ..owner()
    };
    old.metadata.owner_references = Some(vec![theirs, stale]);
    let patch = update_patch(&names(), &old, &roots, Some(&owner())).unwrap();
    assert_eq!(
        patch,
        json!({
            "metadata": {
                "resourceVersion": "7",
                "labels": {
                    "app.kubernetes.io/managed-by": "trellis-controller",
                    "app.kubernetes.io/part-of": "trellis",
                },
                "annotations": {"trellis.dev/trust-roots-source": "trellis/trellis-trust-roots"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "keeper", "uid": "keeper-uid"},
                    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                     "name": "trellis-controller", "uid": "role-uid"},
                ],
            },
        })
    );
    // Owned: nothing to write; the owner unknown: no reference is asked
    // for (an older copy gets its labels and annotation only).
    assert_eq!(
        update_patch(&names(), &owned("demo", PEM), &roots, Some(&owner())),
        None
    );
    assert_eq!(
        update_patch(&names(), &owned("demo", PEM), &roots, None),
        None
    );
    assert_eq!(
        update_patch(&names(), &cm("demo", Owner::Ours, PEM), &roots, None),
        None
    );
    let older = cm("demo", Owner::OursUnannotated, PEM);
    let unowned = update_patch(&names(), &older, &roots, None).unwrap();
    assert!(
        unowned["metadata"].get("ownerReferences").is_none(),
        "{unowned}"
    );
    assert_eq!(unowned["metadata"]["labels"][PART_OF_LABEL], PART_OF);

    // The plan: a create carries the owner, an unowned copy is updated.
    let namespaces = [ns("trellis"), ns("demo"), ns("web"), ns("done")];
    let configmaps = [source(PEM), cm("web", Owner::Ours, PEM), owned("done", PEM)];
    let o = owner();
    let world = World {
        namespaces: namespaces.iter().collect(),
        configmaps: configmaps.iter().collect(),
        owner: Some(&o),
    };
    let p = plan(&names(), &world);
    assert_eq!(summary(&p), ["create demo", "update web"]);
    let Action::Create(created) = &p.actions[0] else {
        panic!("{p:?}")
    };
    assert_eq!(created.metadata.owner_references, Some(vec![owner()]));
}

#[test]
fn the_update_is_guarded_and_removes_keys_the_source_dropped() {
    let mut copy = cm("demo", Owner::Ours, PEM);
    copy.data
        .as_mut()
        .unwrap()
        .insert("old.pem".into(), PEM.into());
    let roots = Roots {
        data: BTreeMap::from([(ROOTS_KEY.into(), NEW_PEM.into())]),
        binary_data: BTreeMap::new(),
    };
    let patch = update_patch(&names(), &copy, &roots, None).unwrap();
    assert_eq!(
        patch,
        json!({
            "metadata": {
                "resourceVersion": "7",
                "labels": {
                    "app.kubernetes.io/managed-by": "trellis-controller",
                    "app.kubernetes.io/part-of": "trellis",
                },
                "annotations": {"trellis.dev/trust-roots-source": "trellis/trellis-trust-roots"},
            },
            "data": {"roots.pem": NEW_PEM, "old.pem": null},
        })
    );
    // In sync: nothing to write.
    let current = cm("demo", Owner::Ours, NEW_PEM);
    assert_eq!(update_patch(&names(), &current, &roots, None), None);
    // No resourceVersion to guard the write with: not written.
    let mut unversioned = cm("demo", Owner::Ours, PEM);
    unversioned.metadata.resource_version = None;
    assert_eq!(update_patch(&names(), &unversioned, &roots, None), None);
}

#[test]
fn exclusions() {
    let n = names();
    assert_eq!(exclusion(&ns("trellis"), &n), Some(Exclusion::ControlPlane));
    assert_eq!(
        exclusion(&ns("kube-system"), &n),
        Some(Exclusion::KubeSystem)
    );
    assert_eq!(
        exclusion(&ns("x:disabled"), &n),
        Some(Exclusion::WebhooksDisabled)
    );
    assert_eq!(exclusion(&ns("x!"), &n), Some(Exclusion::Terminating));
    assert_eq!(exclusion(&ns("x:enabled"), &n), None);
    assert_eq!(exclusion(&ns("kube-public"), &n), None);
}
