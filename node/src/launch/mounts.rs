//! A container's `volumeMounts` as bind mounts, as kubelet's `makeMounts`
//! and containerd decide them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, VolumeMount};

use super::env::KubeletVars;
use super::expand::expand;
use super::{LaunchError, Mount};

/// The container's mounts, parents before children (containerd sorts them
/// by the depth of their target, keeping the pod's order otherwise).
pub(super) fn mounts(
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
    vars: &KubeletVars,
) -> Result<Vec<Mount>, LaunchError> {
    let mut mounts = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| mount(container, volumes, vars, m))
        .collect::<Result<Vec<_>, _>>()?;
    mounts.sort_by_key(|m| m.target.components().count());
    Ok(mounts)
}

fn mount(
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
    vars: &KubeletVars,
    mount: &VolumeMount,
) -> Result<Mount, LaunchError> {
    let volume = volumes
        .get(&mount.name)
        .ok_or_else(|| LaunchError::VolumeNotFound {
            volume: mount.name.clone(),
            container: container.name.clone(),
        })?;
    let sub_path = match mount.sub_path_expr.as_deref().filter(|e| !e.is_empty()) {
        Some(expr) => sub_path_expr(expr, vars)?,
        None => mount.sub_path.clone().unwrap_or_default(),
    };
    let source = if sub_path.is_empty() {
        volume.clone()
    } else if Path::new(&sub_path).is_absolute() {
        return Err(LaunchError::SubPath {
            sub_path,
            why: "must not be an absolute path",
        });
    } else if sub_path.split('/').any(|part| part == "..") {
        return Err(LaunchError::SubPath {
            sub_path,
            why: "must not contain '..'",
        });
    } else {
        volume.join(&sub_path)
    };
    let target = Path::new("/").join(&mount.mount_path);
    if target.components().any(|c| c == Component::ParentDir) {
        return Err(LaunchError::MountPath {
            path: mount.mount_path.clone(),
            why: "must not contain '..'",
        });
    }
    Ok(Mount {
        source,
        target,
        read_only: mount.read_only == Some(true),
    })
}

/// kubelet's `subPathExpr`: every reference must have a non-empty value.
fn sub_path_expr(expr: &str, vars: &KubeletVars) -> Result<String, LaunchError> {
    let mut missing = BTreeSet::new();
    let expanded = expand(expr, |name| {
        let value = vars.get(name).filter(|v| !v.is_empty());
        if value.is_none() {
            missing.insert(name.to_owned());
        }
        value
    });
    if missing.is_empty() {
        Ok(expanded)
    } else {
        Err(LaunchError::SubPathExpr {
            expr: expr.to_owned(),
            missing: missing.into_iter().collect(),
        })
    }
}
