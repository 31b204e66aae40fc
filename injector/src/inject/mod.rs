//! The injection decision and patch: one pure function of the pod, its
//! namespace and the injector's configuration. The webhook answers with the
//! patch; `trellis inject` prints the injected pod.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;

use crate::config::InjectorConfig;
pub use crate::floor::{Enforcement, Refusal, Violation};
use crate::pod_security;

mod build;
mod decide;
mod patch;
#[cfg(test)]
mod tests;

/// Annotation turning injection on or off, on a Namespace or a Pod.
pub const INJECT_ANNOTATION: &str = "trellis.dev/inject";
/// Namespace label keeping the webhook away.
pub const WEBHOOK_LABEL: &str = "trellis.dev/admission-webhooks";
/// Set on injected pods: that they were injected, and with which proxy.
pub const INJECTED_ANNOTATION: &str = "trellis.dev/injected";
pub const PROXY_VERSION_ANNOTATION: &str = "trellis.dev/proxy-version";
/// Prefix of the per-namespace and per-pod overrides.
pub const CONFIG_PREFIX: &str = "config.trellis.dev/";
pub const PROXY_CONTAINER: &str = "trellis-proxy";
/// `trellis-init` and, in CNI mode, its `--check`: the contract with the
/// CNI plugin (see [`trellis_core::capture::CHECK_FLAG`]).
pub use trellis_core::capture::{CHECK_FLAG, INIT_CONTAINER};

/// What the decision needs of the pod's namespace (from the webhook's
/// cache, or from the manifest for `trellis inject`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Inject: the JSON patch for the admission response, and the pod with
    /// it applied (what `trellis inject` prints).
    /// `warnings`: what fell below the floor and was raised to it
    /// (`enforcement: warn`); empty otherwise.
    /// `pod_security`: the namespace enforces a Pod Security level that
    /// forbids what injection adds ([`pod_security::check`]): the API
    /// server will refuse the injected pod.
    Injected {
        patch: json_patch::Patch,
        pod: Box<Pod>,
        warnings: Vec<Violation>,
        pod_security: Option<Box<pod_security::Conflict>>,
    },
    /// Leave the pod as it is.
    Skipped(SkipReason),
    /// Refuse the pod: an override below the floor under
    /// `enforcement: deny`.
    Refused(Refusal),
}

/// Why a pod is left alone. `Invalid` is a pod that asked for injection but
/// cannot have it: it is admitted unchanged with a warning to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Neither the pod nor its namespace says `trellis.dev/inject: enabled`.
    NotEnabled,
    /// The pod says `trellis.dev/inject: disabled`.
    OptedOut,
    HostNetwork,
    /// Already has Trellis's containers.
    AlreadyInjected,
    /// Has another mesh's sidecar (its container's name).
    OtherMesh(String),
    /// A pod of the control plane's own namespace.
    ControlPlane,
    /// `kube-system`, an excluded namespace, or one labelled
    /// `trellis.dev/admission-webhooks: disabled`.
    ExcludedNamespace,
    /// Asked for injection but an override or the pod is unusable.
    Invalid(String),
}

impl SkipReason {
    /// The metric label: bounded, never carries user text.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotEnabled => "not_enabled",
            Self::OptedOut => "opted_out",
            Self::HostNetwork => "host_network",
            Self::AlreadyInjected => "already_injected",
            Self::OtherMesh(_) => "other_mesh",
            Self::ControlPlane => "control_plane",
            Self::ExcludedNamespace => "excluded_namespace",
            Self::Invalid(_) => "invalid",
        }
    }

    /// Whether the user should hear about it (an admission warning, a
    /// `trellis inject` message): only when injection was asked for and
    /// did not happen.
    pub fn is_warning(&self) -> bool {
        matches!(self, Self::Invalid(_) | Self::OtherMesh(_))
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotEnabled => f.write_str("injection is not enabled on the pod or its namespace"),
            Self::OptedOut => f.write_str("the pod says trellis.dev/inject: disabled"),
            Self::HostNetwork => {
                f.write_str("the pod uses the host's network; its traffic cannot be captured")
            }
            Self::AlreadyInjected => f.write_str("the pod already has the Trellis proxy"),
            Self::OtherMesh(c) => write!(f, "the pod already has another mesh's sidecar ({c})"),
            Self::ControlPlane => f.write_str("the pod belongs to the Trellis control plane"),
            Self::ExcludedNamespace => f.write_str("the namespace is excluded from injection"),
            Self::Invalid(why) => write!(f, "not injected: {why}"),
        }
    }
}

/// The text of an admission warning (or `trellis inject` report) for a
/// value below the floor that was raised to it.
pub fn floor_warning(v: &Violation) -> String {
    format!("trellis: below the floor, the floor's value applied: {v}")
}

/// Decides and, when injecting, builds the patch. Pure: the same inputs
/// always give the same output.
pub fn inject(pod: &Pod, ns: &NamespaceInfo, cfg: &InjectorConfig) -> Outcome {
    let decided = match decide::decide(pod, ns, cfg) {
        Ok(d) => d,
        Err(decide::Stop::Skip(reason)) => return Outcome::Skipped(reason),
        Err(decide::Stop::Refuse(refusal)) => return Outcome::Refused(refusal),
    };
    if !decided.violations.is_empty() && decided.enforcement == Enforcement::Deny {
        return Outcome::Refused(Refusal {
            violations: decided.violations,
        });
    }
    let settings = decided.settings;
    let injected = build::injected_pod(pod, &settings, cfg);
    let patch = patch::patch(pod, &injected, settings.native_sidecar);
    // Still injected when Pod Security will refuse it: admitting the pod
    // without its proxy would run it outside the mesh, unseen.
    let pod_security = pod_security::check(
        ns,
        &injected,
        &[INIT_CONTAINER, PROXY_CONTAINER],
        decided.opt_out_allowed,
    );
    Outcome::Injected {
        patch,
        pod: Box::new(injected),
        warnings: decided.violations,
        pod_security: pod_security.map(Box::new),
    }
}
