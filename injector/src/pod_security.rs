//! Pod Security admission, as far as the injector can foresee it.
//!
//! The API server's `PodSecurity` admission judges the pod *after* the
//! mutating webhooks, so it judges the injected pod. In init-container
//! mode `trellis-init` needs `NET_ADMIN` and `NET_RAW` to install the
//! capture rules, which the `baseline` and `restricted` levels forbid: in a
//! namespace that enforces either, the API server refuses the injected pod
//! after the injector has answered. [`check`] reads the namespace's
//! `pod-security.kubernetes.io/enforce` label and holds the containers
//! Trellis adds to that level, so that the webhook can say, in its answer,
//! what will happen and what to do ([`Conflict::warning`]: first of all,
//! the CNI mode, chart value `cni.enabled`), and count it apart
//! ([`Conflict::label`]). In CNI mode what Trellis adds passes
//! `restricted` (the check container and the proxy run unprivileged, as
//! non-root users, with every capability dropped), so there is nothing to
//! warn about.
//!
//! The level is read as the API server reads it: a value that is not a
//! level's name enforces `restricted`. The `warn` and `audit` labels are
//! not read: they refuse nothing, and under `warn` the API server already
//! tells the user, in its own words, what `trellis-init` adds.
//!
//! Only what Trellis adds is judged: its containers' security contexts
//! (the pod's as fallback where Pod Security falls back to it). The volumes
//! it adds (a projected token, a ConfigMap, an in-memory `emptyDir`) pass
//! every level, and the pod's own containers are the pod's business.
//!
//! Not seen from here: the defaults and exemptions of the API server's
//! `PodSecurity` admission configuration (a namespace without the label may
//! still be enforced; an exempt user or runtime class is not), and the
//! `…-version` labels (every check made here exists in every version).
//!
//! Pure: no IO.

use std::fmt;

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext};

use crate::inject::{INIT_CONTAINER, INJECT_ANNOTATION};
use crate::NamespaceInfo;

/// The namespace label whose level the API server enforces.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// The chart value that installs the Trellis CNI plugin and switches the
/// injector to CNI mode ([`crate::config::CaptureMode::Cni`]): the way out
/// the warning names.
pub const CNI_CHART_VALUE: &str = "cni.enabled";

/// Capabilities `baseline` lets a container add.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
/// Capabilities `restricted` lets a container add.
const RESTRICTED_CAPABILITIES: [&str; 1] = ["NET_BIND_SERVICE"];

/// A Pod Security Standard, from least to most strict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    /// An `enforce` label's value as the API server reads it: `None` when
    /// it is not a level's name, which the API server enforces as
    /// `restricted` (it fails closed).
    fn read(value: &str) -> Option<Self> {
        match value {
            "privileged" => Some(Self::Privileged),
            "baseline" => Some(Self::Baseline),
            "restricted" => Some(Self::Restricted),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a container Trellis adds does that the level forbids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objection {
    pub container: String,
    /// Short phrases: "adds capabilities NET_ADMIN and NET_RAW", "runs as
    /// root".
    pub what: Vec<String>,
}

/// The namespace enforces a Pod Security level that forbids what
/// injection adds: the API server will refuse the injected pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub namespace: String,
    pub level: Level,
    /// The label's value, when it is not a level's name (an `enforce`
    /// label the API server then reads as `restricted`).
    pub unknown_value: Option<String>,
    pub objections: Vec<Objection>,
    /// Whether the pod may opt out of the mesh (`false` when the floor
    /// forbids it): decides the advice the warning gives.
    pub opt_out_allowed: bool,
}

impl Conflict {
    /// The metric's `reason`: bounded, the level.
    pub fn label(&self) -> &'static str {
        match self.level {
            Level::Privileged => "pod_security_privileged",
            Level::Baseline => "pod_security_baseline",
            Level::Restricted => "pod_security_restricted",
        }
    }

    /// The admission warning (and `trellis inject` report): what the API
    /// server will do, why, and what to do about it.
    pub fn warning(&self) -> String {
        let level = self.level.as_str();
        let source = match &self.unknown_value {
            Some(v) => format!(
                "label {ENFORCE_LABEL}={v:?}, not a level, which the API server reads as {level}"
            ),
            None => format!("label {ENFORCE_LABEL}"),
        };
        let opt_out = if self.opt_out_allowed {
            format!(
                ", or opt the pod out of the mesh with the annotation {INJECT_ANNOTATION}: disabled"
            )
        } else {
            " (the Trellis floor forbids opting the pod out of the mesh)".to_string()
        };
        format!(
            "trellis: namespace {ns} enforces Pod Security {level:?} ({source}), so the API server will refuse this pod: {what}. To mesh it at this level, install the Trellis CNI plugin (Helm chart value {CNI_CHART_VALUE}=true), which sets up capture with no privileged container in the pod; or label the namespace {ENFORCE_LABEL}=privileged{opt_out}",
            ns = self.namespace,
            what = self.what(),
        )
    }

    /// "trellis-init, which installs the pod's traffic-capture rules, adds
    /// capabilities NET_ADMIN and NET_RAW and runs as root".
    fn what(&self) -> String {
        let each: Vec<String> = self
            .objections
            .iter()
            .map(|o| {
                let role = if o.container == INIT_CONTAINER {
                    ", which installs the pod's traffic-capture rules,"
                } else {
                    ""
                };
                let what: Vec<&str> = o.what.iter().map(String::as_str).collect();
                format!("{}{role} {}", o.container, and_list(&what))
            })
            .collect();
        each.join("; ")
    }
}

/// Holds the containers named `added` of the injected `pod` to the level
/// its namespace enforces. `None` when it enforces none (no label,
/// `privileged`) or nothing they do is forbidden.
pub fn check(
    ns: &NamespaceInfo,
    pod: &Pod,
    added: &[&str],
    opt_out_allowed: bool,
) -> Option<Conflict> {
    let value = ns.labels.get(ENFORCE_LABEL)?;
    let level = Level::read(value).unwrap_or(Level::Restricted);
    let spec = pod.spec.as_ref()?;
    let pod_sc = spec.security_context.as_ref();
    let objections: Vec<Objection> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| added.contains(&c.name.as_str()))
        .map(|c| Objection {
            container: c.name.clone(),
            what: objections(level, c, pod_sc),
        })
        .filter(|o| !o.what.is_empty())
        .collect();
    (!objections.is_empty()).then(|| Conflict {
        namespace: ns.name.clone(),
        level,
        unknown_value: Level::read(value).is_none().then(|| value.clone()),
        objections,
        opt_out_allowed,
    })
}

/// What `level` forbids in container `c` of a pod whose security context
/// is `pod_sc`: the checks of the Pod Security Standards that bear on a
/// container's security context.
fn objections(level: Level, c: &Container, pod_sc: Option<&PodSecurityContext>) -> Vec<String> {
    let allowed: &[&str] = match level {
        Level::Privileged => return Vec::new(),
        Level::Baseline => &BASELINE_CAPABILITIES,
        Level::Restricted => &RESTRICTED_CAPABILITIES,
    };
    let sc = c.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .or_else(|| pod_sc.and_then(|p| p.seccomp_profile.as_ref()))
        .map(|p| p.type_.as_str());
    let mut out = Vec::new();
    if sc.privileged == Some(true) {
        out.push("is privileged".to_string());
    }
    let added: Vec<&str> = caps
        .add
        .iter()
        .flatten()
        .map(String::as_str)
        .filter(|cap| !allowed.contains(cap))
        .collect();
    if !added.is_empty() {
        out.push(format!("adds capabilities {}", and_list(&added)));
    }
    match level {
        Level::Privileged => {}
        Level::Baseline => {
            if seccomp == Some("Unconfined") {
                out.push("has an Unconfined seccomp profile".into());
            }
        }
        Level::Restricted => {
            if sc.allow_privilege_escalation != Some(false) {
                out.push("allows privilege escalation".into());
            }
            if !caps.drop.iter().flatten().any(|d| d == "ALL") {
                out.push("does not drop all capabilities".into());
            }
            let uid = sc
                .run_as_user
                .or_else(|| pod_sc.and_then(|p| p.run_as_user));
            let non_root = sc
                .run_as_non_root
                .or_else(|| pod_sc.and_then(|p| p.run_as_non_root));
            if uid == Some(0) {
                out.push("runs as root".into());
            } else if non_root != Some(true) {
                out.push("does not set runAsNonRoot".into());
            }
            if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
                out.push("has no RuntimeDefault or Localhost seccomp profile".into());
            }
        }
    }
    out
}

/// "a", "a and b", "a, b and c".
fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests;
