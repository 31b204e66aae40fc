//! A container's user, groups and capabilities, from its security context
//! over its pod's, as kubelet and containerd decide them.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, Pod, SecurityContext};

use super::LaunchError;

/// containerd's default capabilities (lower case, without `cap_`).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "chown",
    "dac_override",
    "fsetid",
    "fowner",
    "mknod",
    "net_raw",
    "setgid",
    "setuid",
    "setfcap",
    "setpcap",
    "net_bind_service",
    "sys_chroot",
    "kill",
    "audit_write",
];

/// Every capability Linux defines (as of 6.x), in number order.
pub const ALL_CAPABILITIES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// Who the process runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct User {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) groups: Vec<u32>,
}

/// The user: `runAsUser` (container over pod, else the image's `USER`,
/// else root); `runAsGroup` (else 0: there is no image `/etc/passwd` to
/// look the user's group up in); the groups, as containerd sets them: the
/// primary group, `fsGroup`, `supplementalGroups`. kubelet's `runAsNonRoot`
/// check comes first.
pub(super) fn user(
    pod: &Pod,
    container: &Container,
    image_user: Option<u32>,
) -> Result<User, LaunchError> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user));
    let run_as_group = sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group));
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root));
    if non_root == Some(true) {
        let why = match run_as_user {
            Some(0) => Some("container's runAsUser breaks non-root policy"),
            None if image_user.unwrap_or(0) == 0 => {
                Some("container has runAsNonRoot and image will run as root")
            }
            _ => None,
        };
        if let Some(why) = why {
            return Err(LaunchError::NonRoot {
                why,
                pod: format_pod(pod),
                container: container.name.clone(),
            });
        }
    }
    let uid = match run_as_user {
        Some(id) => id_of("runAsUser", id)?,
        None => image_user.unwrap_or(0),
    };
    let gid = run_as_group
        .map(|id| id_of("runAsGroup", id))
        .transpose()?
        .unwrap_or(0);
    let mut groups = vec![gid];
    let fs_group = pod_sc.and_then(|s| s.fs_group);
    let supplemental = pod_sc.and_then(|s| s.supplemental_groups.as_ref());
    for id in fs_group.iter().chain(supplemental.into_iter().flatten()) {
        let id = id_of("a supplemental group", *id)?;
        if !groups.contains(&id) {
            groups.push(id);
        }
    }
    Ok(User { uid, gid, groups })
}

fn id_of(field: &'static str, id: i64) -> Result<u32, LaunchError> {
    u32::try_from(id).map_err(|_| LaunchError::Id { field, id })
}

/// kubelet's `format.Pod`: `name_namespace(uid)`.
fn format_pod(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    format!(
        "{}_{}({})",
        text(&meta.name),
        text(&meta.namespace),
        text(&meta.uid)
    )
}

/// The capabilities, as containerd computes them: every one when
/// privileged; else the defaults, all of them after `add: [ALL]`, none
/// after `drop: [ALL]`, then the other `add`s, then the other `drop`s (so
/// a capability both added and dropped is dropped). Names in any case,
/// with or without `CAP_`.
pub(super) fn capabilities(sc: Option<&SecurityContext>) -> Result<BTreeSet<String>, LaunchError> {
    let owned = |names: &[&str]| {
        names
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>()
    };
    if sc.and_then(|s| s.privileged) == Some(true) {
        return Ok(owned(&ALL_CAPABILITIES));
    }
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let names = |list: Option<&Vec<String>>| -> Result<(bool, Vec<String>), LaunchError> {
        let mut all = false;
        let mut named = Vec::new();
        for name in list.into_iter().flatten() {
            match capability(name)? {
                None => all = true,
                Some(cap) => named.push(cap),
            }
        }
        Ok((all, named))
    };
    let (add_all, add) = names(caps.and_then(|c| c.add.as_ref()))?;
    let (drop_all, drop) = names(caps.and_then(|c| c.drop.as_ref()))?;
    let mut set = owned(&DEFAULT_CAPABILITIES);
    if add_all {
        set = owned(&ALL_CAPABILITIES);
    }
    if drop_all {
        set.clear();
    }
    set.extend(add);
    for cap in &drop {
        set.remove(cap);
    }
    Ok(set)
}

/// A capability's canonical name; `None` for `ALL`.
fn capability(name: &str) -> Result<Option<String>, LaunchError> {
    let lower = name.to_ascii_lowercase();
    if lower == "all" {
        return Ok(None);
    }
    let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
    if ALL_CAPABILITIES.contains(&bare) {
        Ok(Some(bare.to_owned()))
    } else {
        Err(LaunchError::UnknownCapability {
            name: name.to_owned(),
        })
    }
}

/// `allowPrivilegeEscalation: false` sets no_new_privs; unset allows.
pub(super) fn no_new_privs(sc: Option<&SecurityContext>) -> bool {
    sc.and_then(|s| s.allow_privilege_escalation) == Some(false)
}
