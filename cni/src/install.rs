//! `trellis-cni install` / `trellis-cni uninstall`: what the chart's
//! DaemonSet (`cni.enabled`) does on each node.
//!
//! (Skeleton: the implementation and its tests on real files come next.)

use std::path::PathBuf;

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

    /// Install once and exit, instead of keeping the plugin chained until
    /// SIGTERM (then uninstalling).
    #[arg(long, env = "TRELLIS_CNI_ONCE", default_value_t = false)]
    pub once: bool,
}
