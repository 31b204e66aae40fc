//! Which pods to capture: read the pod from the API server and look at its
//! `trellis-init` container.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::{Deserialize, Serialize};
use trellis_core::capture::{InitArgs, INIT_CONTAINER};

use super::conf::NetConf;
use super::error::{CniError, Code};

/// How long reading the pod may take, all attempts included: the runtime
/// waits on the plugin, and retries the sandbox after an error.
const READ_BUDGET: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl PodRef {
    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` from `CNI_ARGS`
    /// (`KEY=value;KEY=value`); `None` when either is missing.
    pub fn from_cni_args(args: &str) -> Option<Self> {
        let value = |key: &str| {
            args.split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Some(PodRef {
            namespace: value("K8S_POD_NAMESPACE")?,
            name: value("K8S_POD_NAME")?,
        })
    }
}

/// What to do for a pod.
#[derive(Debug)]
pub enum Capture {
    /// Install the rules these arguments (the pod's `trellis-init`'s) describe.
    Cni { args: InitArgs, argv: Vec<String> },
    /// Leave the pod alone, for this reason.
    None(String),
}

/// Reads the pod and decides.
pub fn capture_of(conf: &NetConf, pod: &PodRef) -> Result<Capture, CniError> {
    let kubeconfig = conf.kubeconfig()?.to_path_buf();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(Code::IoFailure, format!("could not start the runtime: {e}")))?;
    let found = runtime.block_on(async {
        tokio::time::timeout(READ_BUDGET, read_pod(&kubeconfig, pod))
            .await
            .unwrap_or_else(|_| {
                Err(CniError::new(
                    Code::TryAgainLater,
                    format!("could not read pod {pod} from the API server within {READ_BUDGET:?}"),
                ))
            })
    })?;
    decide(&found)
}

async fn read_pod(kubeconfig: &std::path::Path, pod: &PodRef) -> Result<Pod, CniError> {
    let config_error = |e: &dyn fmt::Display| {
        CniError::new(
            Code::InvalidConfig,
            format!("the kubeconfig {} is not usable: {e}", kubeconfig.display()),
        )
    };
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| config_error(&e))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| config_error(&e))?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(CONNECT_TIMEOUT);
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|e| config_error(&e))?;
    let pods: Api<Pod> = Api::namespaced(client, &pod.namespace);
    pods.get(&pod.name).await.map_err(|e| match &e {
        kube::Error::Api(status) if status.code == 404 => CniError::new(
            Code::TryAgainLater,
            format!("pod {pod} is not in the API server ({server})"),
        ),
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => CniError::new(
            Code::InvalidConfig,
            format!("the API server ({server}) refused to show pod {pod}: {}", status.message),
        )
        .with_details("trellis-cni needs `get` on pods (ClusterRole trellis-cni); its token is the installer's ServiceAccount token"),
        _ => CniError::new(
            Code::TryAgainLater,
            format!("could not read pod {pod} from the API server ({server}): {e}"),
        )
        .with_details("a meshed pod must not start without its capture rules, so its network setup fails until the API server answers"),
    })
}

/// The decision, from the pod as stored.
pub fn decide(pod: &Pod) -> Result<Capture, CniError> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let Some(spec) = &pod.spec else {
        return Ok(Capture::None("the pod has no spec".into()));
    };
    if spec.host_network == Some(true) {
        return Ok(Capture::None("the pod uses the host's network".into()));
    }
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == INIT_CONTAINER);
    let Some(init) = init else {
        return Ok(Capture::None(format!(
            "no {INIT_CONTAINER} container: not injected"
        )));
    };
    let argv = init_argv(init);
    let args = InitArgs::from_container_args(&argv).map_err(|e| {
        CniError::new(
            Code::PodConfig,
            format!("pod {name}: the arguments of its {INIT_CONTAINER} container are not those of `trellis-proxy init`"),
        )
        .with_details(e)
    })?;
    if !args.is_check() {
        return Ok(Capture::None(format!(
            "its {INIT_CONTAINER} container installs the rules itself (init-container mode)"
        )));
    }
    Ok(Capture::Cni { args, argv })
}

/// The container's arguments from `init` on: `command` may be the binary
/// (`trellis-proxy`) with `args` holding `init …`, or all in `command`.
fn init_argv(container: &Container) -> Vec<String> {
    let all: Vec<String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .cloned()
        .collect();
    match all.iter().position(|a| a == "init") {
        Some(i) => all[i..].to_vec(),
        None => all,
    }
}
