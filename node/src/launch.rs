//! A container's process, from its pod's spec (pure).
//!
//! [`launch`] decides what kubelet and containerd would for a container,
//! in kubelet's order, so the first error is the one kubelet would show:
//!
//! 1. image: is it one this node runs ([`crate::images`])?
//! 2. environment (`env`): service links, `HOSTNAME`, `PATH`, `envFrom`,
//!    `env` with `valueFrom` and `$(VAR)` expansion (`expand`);
//! 3. mounts (`mounts`): `volumeMounts` as bind mounts of the agent's
//!    volume directories;
//! 4. user (`security`): `runAsUser`, `runAsGroup`, groups, and the
//!    `runAsNonRoot` check;
//! 5. capabilities and no_new_privs (`security`);
//! 6. program: `command` and `args`, expanded, resolved by the image map.
//!
//! [`Launch::command`] then runs the result (`process`).
//!
//! How a process differs from a container's:
//!
//! - There is no root filesystem: the process sees the node's files. Its
//!   mounts are bind mounts over paths of the node, made in a private mount
//!   namespace, so only the process sees them; their targets are created on
//!   the node ([`Launch::mount_targets`]).
//! - Only the `KUBERNETES_*` service links are set: `enableServiceLinks`
//!   is not honoured beyond them.
//! - The image is a mapping, not a filesystem: its `ENV` and `WORKDIR` are
//!   not known (`PATH` is the default), nor its `/etc/passwd` (the group is
//!   0 unless `runAsGroup` says otherwise).
//! - A non-root process with capabilities gets them as ambient
//!   capabilities, so it can use them; containerd gives it none (they are
//!   lost at execve unless the program has file capabilities).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::images::{ImageError, ImageMap};

mod env;
mod expand;
mod mounts;
mod process;
mod quantity;
mod security;

pub use security::{ALL_CAPABILITIES, DEFAULT_CAPABILITIES};

/// What [`launch`] knows of a pod and its node.
#[derive(Clone, Copy, Debug)]
pub struct PodEnv<'a> {
    pub pod: &'a Pod,
    /// The pod's IPs, any order.
    pub pod_ips: &'a [IpAddr],
    pub host_ip: IpAddr,
    pub node_name: &'a str,
    /// The ClusterIP and port of `default/kubernetes`.
    pub kubernetes_service: Option<SocketAddr>,
    /// Volume name → the directory the agent made for it.
    pub volumes: &'a BTreeMap<String, PathBuf>,
    /// ConfigMaps of the pod's namespace: name → data.
    pub config_maps: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// Secrets of the pod's namespace: name → data, decoded.
    pub secrets: &'a BTreeMap<String, BTreeMap<String, String>>,
    pub allocatable: Allocatable,
}

/// The node's allocatable resources: what a `resourceFieldRef` to an
/// unset limit gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocatable {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
}

/// A container's process, decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The local program.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment, in order.
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary group first).
    pub groups: Vec<u32>,
    /// What the process may use: lower case, without `cap_`.
    pub capabilities: BTreeSet<String>,
    pub no_new_privs: bool,
    /// Parents before children.
    pub mounts: Vec<Mount>,
    pub working_dir: Option<PathBuf>,
}

/// A bind mount of a node directory or file where the process sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Why a container cannot start. [`LaunchError::reason`] is the waiting
/// reason the pod shows; the message is kubelet's where it has one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("configmap {name:?} not found")]
    ConfigMapNotFound { name: String },
    #[error("secret {name:?} not found")]
    SecretNotFound { name: String },
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    KeyNotFound {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("env {name}: {why}")]
    Env { name: String, why: String },
    #[error("cannot find volume {volume:?} to mount into container {container:?}")]
    VolumeNotFound { volume: String, container: String },
    #[error("error SubPath `{sub_path}` {why}")]
    SubPath { sub_path: String, why: &'static str },
    #[error("subPathExpr `{expr}`: missing value for {}", missing.join(", "))]
    SubPathExpr { expr: String, missing: Vec<String> },
    #[error("mountPath `{path}` {why}")]
    MountPath { path: String, why: &'static str },
    #[error("{why} (pod: {pod:?}, container: {container})")]
    NonRoot {
        why: &'static str,
        pod: String,
        container: String,
    },
    #[error("{field} {id} is not a valid id")]
    Id { field: &'static str, id: i64 },
    #[error("unknown capability {name:?}")]
    UnknownCapability { name: String },
    #[error("the local program {} has a '=' in its path, which this node cannot run", program.display())]
    ProgramPath { program: PathBuf },
}

impl LaunchError {
    /// The container's waiting reason, as kubelet names it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Image(e) => e.reason(),
            Self::UnknownCapability { .. } | Self::ProgramPath { .. } => "CreateContainerError",
            _ => "CreateContainerConfigError",
        }
    }
}

/// Decides a container's process (see the module doc for the phases).
pub fn launch(
    env: &PodEnv,
    container: &Container,
    images: &ImageMap,
) -> Result<Launch, LaunchError> {
    let image = container.image.as_deref().unwrap_or_default();
    let image_user = images.get(image)?.user;

    let vars = env::kubelet_vars(env, container)?;
    let mounts = mounts::mounts(container, env.volumes, &vars)?;
    let user = security::user(env.pod, container, image_user)?;
    let sc = container.security_context.as_ref();
    let capabilities = security::capabilities(sc)?;

    let expand_all = |words: &Option<Vec<String>>| {
        words.as_ref().map(|words| {
            words
                .iter()
                .map(|w| expand::expand(w, |name| vars.get(name)))
                .collect::<Vec<_>>()
        })
    };
    let command = expand_all(&container.command);
    let args = expand_all(&container.args);
    let resolved = images.resolve(image, command.as_deref(), args.as_deref())?;
    if resolved
        .program
        .as_os_str()
        .as_encoded_bytes()
        .contains(&b'=')
    {
        return Err(LaunchError::ProgramPath {
            program: resolved.program,
        });
    }

    Ok(Launch {
        program: resolved.program,
        args: resolved.args,
        env: env::process_env(env, &vars).into_vec(),
        uid: user.uid,
        gid: user.gid,
        groups: user.groups,
        capabilities,
        no_new_privs: security::no_new_privs(sc),
        mounts,
        working_dir: container
            .working_dir
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod netns_tests;
