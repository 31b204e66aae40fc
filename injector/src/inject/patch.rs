//! The JSON patch (RFC 6902) from the pod to the injected pod: only `add`
//! operations, each naming what it adds, so the patch reads as a list of
//! what injection did and applies to the pod the API server holds even if
//! an earlier webhook reordered fields. Tests check that applying it gives
//! exactly [`super::build::injected_pod`].

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use super::{INIT_CONTAINER, INJECTED_ANNOTATION, PROXY_CONTAINER, PROXY_VERSION_ANNOTATION};

pub(super) fn patch(pod: &Pod, injected: &Pod, native_sidecar: bool) -> json_patch::Patch {
    let mut ops = Vec::new();
    let mut add = |path: &[&str], value: Value| {
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(path.iter().copied()),
            value,
        }));
    };

    let injected_annotations = injected.metadata.annotations.clone().unwrap_or_default();
    let ours = [INJECTED_ANNOTATION, PROXY_VERSION_ANNOTATION];
    match &pod.metadata.annotations {
        None => add(
            &["metadata", "annotations"],
            json!(injected_annotations
                .iter()
                .filter(|(k, _)| ours.contains(&k.as_str()))
                .collect::<std::collections::BTreeMap<_, _>>()),
        ),
        Some(_) => {
            for key in ours {
                add(
                    &["metadata", "annotations", key],
                    json!(injected_annotations.get(key)),
                );
            }
        }
    }

    let spec = pod.spec.clone().unwrap_or_default();
    let new = injected.spec.clone().unwrap_or_default();
    let old_volumes = spec.volumes.as_ref().map_or(0, Vec::len);
    let added_volumes = &new.volumes.clone().unwrap_or_default()[old_volumes..];
    if spec.volumes.is_none() {
        add(&["spec", "volumes"], json!(added_volumes));
    } else {
        for v in added_volumes {
            add(&["spec", "volumes", "-"], json!(v));
        }
    }

    let new_inits = new.init_containers.clone().unwrap_or_default();
    let find = |list: &[Container], name: &str| list.iter().find(|c| c.name == name).cloned();
    let init = find(&new_inits, INIT_CONTAINER);
    if native_sidecar {
        let proxy = find(&new_inits, PROXY_CONTAINER);
        if spec.init_containers.is_none() {
            add(&["spec", "initContainers"], json!([init, proxy]));
        } else {
            add(&["spec", "initContainers", "0"], json!(init));
            add(&["spec", "initContainers", "1"], json!(proxy));
        }
    } else {
        // Last, after the pod's own; first in CNI mode (the check).
        let first = new_inits.first().is_some_and(|c| c.name == INIT_CONTAINER);
        if spec.init_containers.is_none() {
            add(&["spec", "initContainers"], json!([init]));
        } else if first {
            add(&["spec", "initContainers", "0"], json!(init));
        } else {
            add(&["spec", "initContainers", "-"], json!(init));
        }
        add(
            &["spec", "containers", "0"],
            json!(find(&new.containers, PROXY_CONTAINER)),
        );
    }
    json_patch::Patch(ops)
}
