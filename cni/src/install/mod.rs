//! `trellis-cni install` / `trellis-cni uninstall`: what the chart's
//! DaemonSet (`cni.enabled`) does on each node.
//!
//! The container runtime runs a chained plugin only when it finds two
//! things on the node: the plugin's binary in its CNI binary directory, and
//! the plugin's entry in the network configuration it uses. Neither place is
//! ours: both belong to the node and to the cluster's primary plugin
//! (a bridge, Calico, Cilium …), whose own installer rewrites its file when
//! it restarts or upgrades. So the installer puts three things in place, in
//! this order, and keeps them there:
//!
//! ```text
//!  on the node (the installer's pod sees them under /host)
//!  /opt/cni/bin/trellis-cni                      1. the running binary, copied
//!  /etc/cni/net.d/trellis-cni.d/  (0700)         2. the plugin's credentials:
//!      token (0600), ca.crt                         the installer's ServiceAccount's
//!      kubeconfig (0600) ─ names both by path       token and CA, kept current
//!  /etc/cni/net.d/10-x.conflist                  3. the entry, last in the list:
//!      "plugins": [ {bridge …}, {portmap …},
//!                   {"type": "trellis-cni", "kubeconfig": "/etc/cni/net.d/trellis-cni.d/kubeconfig",
//!                    "logLevel": "info"} ]
//! ```
//!
//! then, every `--poll-interval`, does it all again (`watch`): a rewritten
//! configuration gets its entry back, a rotated token is copied. On SIGTERM
//! (unless `--once`), and by `trellis-cni uninstall`, it undoes it in the
//! reverse order: the entry out of every list that holds it, the binary,
//! our directory — unless its own DaemonSet (`--daemonset`) is still there
//! and not being deleted: then the SIGTERM is a rolling update or a restart,
//! and the plugin stays chained for the next installer pod, so that pods
//! starting meanwhile are still captured (Istio's CNI installer decides the
//! same way).
//!
//! What holds throughout:
//!
//! - No reader sees a partial file: every file is replaced by a rename
//!   (`files`). Nothing is written that already says the same: installing
//!   twice leaves every file and its modification time as they were.
//! - The runtime never finds our entry without the binary (the binary is
//!   copied first and removed last), nor a directory without a usable
//!   configuration (a converted file is written before its original goes,
//!   and the original is back before the list goes).
//! - The installer removes only what it wrote: our entry, our binary, the
//!   files of our directory. A file it cannot parse is reported and left.
//! - The primary configuration is found as the runtime finds it, and edited
//!   by pure functions (`conflist`) tested from tables; everything else in
//!   it is kept, in its order. A primary configuration that is not valid
//!   JSON is an error, retried every pass (its writer may be half-way), not
//!   a reason to chain into the next file: containerd stops at it too.
//! - No configuration yet (a fresh node, the primary plugin not installed):
//!   it waits, and says so every 10 s; it never invents one.
//!
//! Privileges: write access to the two host directories and read access to
//! its own ServiceAccount token, nothing else. The directories belong to the
//! node's root (mode 0755), so it runs as uid 0, but with every capability
//! dropped: as their owner it may write them without `CAP_DAC_OVERRIDE`
//! (tried: install, convert, restore and uninstall under
//! `setpriv --bounding-set=-all --no-new-privs`). Its one API call is a
//! `get` of its own DaemonSet at SIGTERM (a Role in its namespace); the
//! plugin reads pods with the token copied here.

mod conflist;
mod files;
mod kubeconfig;
mod node;
mod watch;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use trellis_core::shutdown::Shutdown;

pub use self::conflist::{ConfError, PluginConf, PLUGIN_TYPE};
use self::node::{Check, Dirs, Installer};
use self::watch::Watch;

/// Flags of `trellis-cni install` and `trellis-cni uninstall`; each can also
/// come from a `TRELLIS_CNI_*` variable (the flag wins).
#[derive(clap::Args, Debug, Clone)]
pub struct InstallArgs {
    /// The node's CNI binary directory, as mounted in the installer's pod.
    #[arg(long, env = "TRELLIS_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    pub bin_dir: PathBuf,

    /// The node's CNI configuration directory, as mounted in the installer's pod.
    #[arg(
        long,
        env = "TRELLIS_CNI_CONF_DIR",
        default_value = "/host/etc/cni/net.d"
    )]
    pub conf_dir: PathBuf,

    /// The same directory as the node (and so the plugin) sees it: the
    /// plugin's kubeconfig path written into the conflist is under it.
    #[arg(
        long,
        env = "TRELLIS_CNI_HOST_CONF_DIR",
        default_value = "/etc/cni/net.d"
    )]
    pub host_conf_dir: PathBuf,

    /// The installer's ServiceAccount token, copied for the plugin (kept
    /// current as the kubelet rotates it).
    #[arg(
        long,
        env = "TRELLIS_CNI_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub token_file: PathBuf,

    /// The API server's CA bundle, copied for the plugin.
    #[arg(
        long,
        env = "TRELLIS_CNI_CA_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    pub ca_file: PathBuf,

    /// The API server's URL as the node reaches it; empty: from
    /// KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT.
    #[arg(long, env = "TRELLIS_CNI_API_SERVER", default_value = "")]
    pub api_server: String,

    /// The plugin's log level, written into its configuration.
    #[arg(long, env = "TRELLIS_CNI_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Install once and exit (once the primary plugin's configuration
    /// exists), instead of keeping the plugin chained until SIGTERM (then
    /// uninstalling).
    #[arg(long, env = "TRELLIS_CNI_ONCE", default_value_t = false)]
    pub once: bool,

    /// How often the installer checks that the plugin is still chained
    /// (and the token current), e.g. `1s`, `500ms`.
    #[arg(
        long,
        env = "TRELLIS_CNI_POLL_INTERVAL",
        default_value = "1s",
        value_parser = parse_poll_interval
    )]
    pub poll_interval: Duration,

    /// The installer's own DaemonSet (`namespace/name`). On SIGTERM the
    /// plugin is taken out only when that DaemonSet is gone or being
    /// deleted: a rolling update or a restart leaves it chained for the next
    /// installer pod, so pods starting meanwhile are still captured. Empty:
    /// always taken out.
    #[arg(long, env = "TRELLIS_CNI_DAEMONSET", default_value = "")]
    pub daemonset: String,
}

/// A duration (humantime: `1s`, `500ms`) of at least 10 ms.
fn parse_poll_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(10) {
        return Err(format!("{s}: shorter than 10ms"));
    }
    Ok(d)
}

/// Why installing or uninstalling failed; each names the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {}: {source}{}", path.display(), hint(source))]
    Write { path: PathBuf, source: io::Error },
    #[error("removing {}: {source}{}", path.display(), hint(source))]
    Remove { path: PathBuf, source: io::Error },
    #[error("listing {}: {source}", dir.display())]
    List { dir: PathBuf, source: io::Error },
    #[error("{}: not a network configuration trellis-cni can edit: {source}; left as it is", path.display())]
    Malformed { path: PathBuf, source: ConfError },
    #[error("{}: larger than {max} bytes, not a network configuration; left as it is", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{}: a symbolic link; trellis-cni edits only regular files (replacing it would replace the link)", path.display())]
    Symlink { path: PathBuf },
    #[error("no network configuration (*.conflist, *.conf, *.json) in {} yet: is the primary CNI plugin installed?", dir.display())]
    NoNetworkConfig { dir: PathBuf },
    #[error("{} holds a single plugin's configuration, to be converted to {}, which exists and which trellis-cni did not write; remove the one the node does not need", conf.display(), conflist.display())]
    ConversionBlocked { conf: PathBuf, conflist: PathBuf },
    #[error("no API server: --api-server is empty and KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT is not set")]
    NoApiServer,
    #[error("writing the plugin's kubeconfig: {0}")]
    Kubeconfig(serde_yaml_ng::Error),
    #[error("locating the running binary: {0}")]
    CurrentExe(io::Error),
    #[error("the installer's watch ended abnormally: {0}")]
    Watch(String),
}

impl InstallError {
    /// A short code for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Read { .. } | Self::List { .. } => "read_failed",
            Self::Write { .. } | Self::Remove { .. } => "write_failed",
            Self::Malformed { .. } => "malformed_config",
            Self::TooLarge { .. } => "config_too_large",
            Self::Symlink { .. } => "config_is_symlink",
            Self::NoNetworkConfig { .. } => "no_network_config",
            Self::ConversionBlocked { .. } => "conversion_blocked",
            Self::NoApiServer => "no_api_server",
            Self::Kubeconfig(_) => "kubeconfig",
            Self::CurrentExe(_) => "current_exe",
            Self::Watch(_) => "watch",
        }
    }

    /// Whether the error is about a configuration file's content (not the
    /// node's IO): such a file is not one we wrote.
    fn is_about_the_file(&self) -> bool {
        matches!(
            self,
            Self::Malformed { .. } | Self::TooLarge { .. } | Self::Symlink { .. }
        )
    }
}

/// What to add to an IO error's message when the node refused us.
fn hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::PermissionDenied {
        " (the installer needs write access to the node's CNI directories)"
    } else {
        ""
    }
}

/// One installation pass: copies the binary, writes the credentials,
/// chains the plugin into the primary network configuration. Fails with
/// [`InstallError::NoNetworkConfig`] when there is none yet.
pub fn install(args: &InstallArgs) -> Result<(), InstallError> {
    let installer = installer(args)?;
    installer.prepare(Check::Content)?;
    installer.chain().map(|_| ())
}

/// Takes the plugin out of every network configuration that holds it, then
/// removes the binary and `trellis-cni.d/`.
pub fn uninstall(args: &InstallArgs) -> Result<(), InstallError> {
    Dirs::new(args).uninstall()
}

/// `trellis-cni install`: installs, then (unless `--once`) keeps the plugin
/// chained until `shutdown` begins, and uninstalls. With `--once`, returns
/// once the plugin is chained (waiting for a network configuration first).
pub async fn run(args: InstallArgs, shutdown: Shutdown) -> Result<(), InstallError> {
    let installer = installer(&args)?;
    let watch = Watch {
        poll: args.poll_interval,
        once: args.once,
    };
    let daemonset = args.daemonset.clone();
    watch::run(installer, watch, shutdown, move || staying(daemonset)).await
}

/// Whether the installer's DaemonSet `namespace/name` is still there, not
/// being deleted: then this SIGTERM is an update or a restart, and the
/// plugin stays chained. Gone, being deleted, unnamed, or unknown (the API
/// server unreachable, or the installer's permission already revoked by an
/// uninstall): taken out. A plugin left chained by mistake would fail every
/// pod's network setup once its credentials are revoked; one taken out by
/// mistake lets pods start uncaptured, which their `trellis-init --check`
/// refuses.
async fn staying(daemonset: String) -> bool {
    use k8s_openapi::api::apps::v1::DaemonSet;

    let Some((namespace, name)) = daemonset.split_once('/') else {
        return false;
    };
    let lookup = async {
        let client = kube::Client::try_default().await?;
        kube::Api::<DaemonSet>::namespaced(client, namespace)
            .get_opt(name)
            .await
    };
    match tokio::time::timeout(Duration::from_secs(5), lookup).await {
        Ok(Ok(Some(ds))) if ds.metadata.deletion_timestamp.is_none() => {
            tracing::info!(%daemonset, "the DaemonSet is still there (an update or a restart): leaving trellis-cni chained for the next installer pod");
            true
        }
        Ok(Ok(_)) => {
            tracing::info!(%daemonset, "the DaemonSet is gone or being deleted: taking trellis-cni out");
            false
        }
        Ok(Err(error)) => {
            tracing::warn!(%daemonset, %error, "could not read the DaemonSet: taking trellis-cni out");
            false
        }
        Err(_) => {
            tracing::warn!(%daemonset, "the API server did not answer within 5 s: taking trellis-cni out");
            false
        }
    }
}

/// The installer for this process: it copies its own binary, and reaches
/// the API server as its pod does.
fn installer(args: &InstallArgs) -> Result<Installer, InstallError> {
    let exe = std::env::current_exe().map_err(InstallError::CurrentExe)?;
    let var = |name| std::env::var(name).ok();
    let server = kubeconfig::api_server(
        &args.api_server,
        var("KUBERNETES_SERVICE_HOST").as_deref(),
        var("KUBERNETES_SERVICE_PORT").as_deref(),
    )?;
    Installer::new(args, exe, &server)
}
