//! The plugin's kubeconfig: how a `trellis-cni` run, started by the
//! container runtime on the node with no ServiceAccount of its own, reaches
//! the API server (it reads the pod's annotations there).
//!
//! It names the installer's ServiceAccount token and CA bundle, copied
//! beside it, by path (`tokenFile`, `certificate-authority`) rather than by
//! value: the installer keeps the copies current as the kubelet rotates the
//! token, and each plugin run is a fresh process that reads them anew. The
//! document is built from kube-rs's own `Kubeconfig` types, the types the
//! plugin reads it with.

use std::net::Ipv6Addr;
use std::path::Path;

use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};

use super::InstallError;

/// The name of the cluster, user and context in the kubeconfig.
const NAME: &str = "trellis-cni";

/// The API server's URL: `flag` when set, else
/// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT` (the
/// variables every pod gets), an IPv6 host in brackets.
pub(crate) fn api_server(
    flag: &str,
    host: Option<&str>,
    port: Option<&str>,
) -> Result<String, InstallError> {
    if !flag.is_empty() {
        return Ok(flag.to_string());
    }
    match (host, port) {
        (Some(host), Some(port)) if !host.is_empty() && !port.is_empty() => {
            let host = match host.parse::<Ipv6Addr>() {
                Ok(v6) => format!("[{v6}]"),
                Err(_) => host.to_string(),
            };
            Ok(format!("https://{host}:{port}"))
        }
        _ => Err(InstallError::NoApiServer),
    }
}

/// The kubeconfig's text (YAML): `server`, the CA bundle at `ca` and the
/// token at `token`, both paths as the node sees them.
pub(crate) fn render(server: &str, ca: &Path, token: &Path) -> Result<String, InstallError> {
    let config = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: NAME.into(),
            cluster: Some(Cluster {
                server: Some(server.into()),
                certificate_authority: Some(ca.display().to_string()),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: NAME.into(),
            auth_info: Some(AuthInfo {
                token_file: Some(token.display().to_string()),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: NAME.into(),
            context: Some(Context {
                cluster: NAME.into(),
                user: Some(NAME.into()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(NAME.into()),
        ..Kubeconfig::default()
    };
    serde_yaml_ng::to_string(&config).map_err(InstallError::Kubeconfig)
}
