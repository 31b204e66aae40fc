//! The chained CNI plugin: CNI 1.0 and 1.1 (`ADD`, `DEL`, `CHECK`,
//! `VERSION`, `STATUS`, `GC`), run by the container runtime after the
//! cluster's primary plugin.
//!
//! ```text
//!   runtime ──stdin: network configuration (with prevResult)──▶ trellis-cni
//!           ◀──stdout: prevResult unchanged, or a CNI error────
//! ```
//!
//! Per command:
//!
//! - **ADD**: read the pod (`K8S_POD_NAMESPACE`/`K8S_POD_NAME` from
//!   `CNI_ARGS`; `kube-system`'s are passed through unread, as they are
//!   never meshed) from the API server with the kubeconfig the installer wrote.
//!   A pod whose `trellis-init` container runs `trellis-proxy init --check`
//!   was injected for CNI capture: parse that container's arguments with the
//!   parser of `trellis-proxy init` ([`trellis_core::capture::InitArgs`]),
//!   enter the pod's network namespace and install exactly those rules, with
//!   the same code. Any other pod passes through untouched. The result is
//!   the primary plugin's, unchanged.
//! - **DEL**: remove the rules of a pod this plugin set up (it keeps a
//!   record per container in its state directory), and only those; a
//!   network namespace already gone is not an error.
//! - **CHECK**: for a pod this plugin set up, every rule must be in place.
//! - **STATUS**: the plugin's kubeconfig is readable.
//! - **GC**: forget the records of attachments the runtime no longer has.
//!
//! Every failure is a CNI error object on stdout and a non-zero exit; an
//! `ADD` that fails leaves no rule and no record behind (the runtime then
//! retries the sandbox). An unreachable API server fails the `ADD` rather
//! than let a meshed pod start uncaptured.

mod conf;
mod error;
mod netns;
mod pod;
mod state;

#[cfg(test)]
mod tests;

use std::io::Read;
use std::process::ExitCode;

use serde_json::{json, Value};
use trellis_core::capture;

pub use self::conf::{NetConf, SUPPORTED_VERSIONS};
pub use self::error::{CniError, Code};

/// Never meshed: the injector always leaves it out.
const KUBE_SYSTEM: &str = "kube-system";
use self::pod::{Capture, PodRef};

/// Runs one CNI command, as the container runtime asked for it: reads the
/// environment and stdin, writes the result or the error to stdout.
pub fn main() -> ExitCode {
    // `trellis_core::capture` reads TRELLIS_INIT_* for flags a container's
    // arguments leave out; the runtime's environment must not supply them.
    // Single-threaded here: nothing else reads the environment yet.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TRELLIS_INIT_") {
            std::env::remove_var(key);
        }
    }
    let mut stdin = Vec::new();
    let outcome = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| {
            CniError::new(
                Code::IoFailure,
                format!("could not read the network configuration on stdin: {e}"),
            )
        })
        .and_then(|_| run(&Env::from_process(), &stdin));
    match outcome {
        Ok(Some(result)) => {
            trellis_core::outln!("{result}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(error) => {
            trellis_core::outln!("{}", error.to_json(&stdin));
            ExitCode::FAILURE
        }
    }
}

/// The `CNI_*` variables the runtime sets.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

impl Env {
    fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        Env {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
        }
    }

    fn require(&self, name: &str, value: &str) -> Result<(), CniError> {
        if value.is_empty() {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!(
                    "{name} is not set: the container runtime must set it for {}",
                    self.command
                ),
            ));
        }
        Ok(())
    }
}

/// One command: `Some(json)` to print on success, or the error.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<String>, CniError> {
    match env.command.as_str() {
        "VERSION" => Ok(Some(version_result(stdin))),
        "ADD" => add(env, &NetConf::parse(stdin)?).map(Some),
        "DEL" => del(env, &NetConf::parse(stdin)?).map(|()| None),
        "CHECK" => check(env, &NetConf::parse(stdin)?).map(|()| None),
        "STATUS" => status(&NetConf::parse(stdin)?).map(|()| None),
        "GC" => gc(&NetConf::parse(stdin)?).map(|()| None),
        other => Err(CniError::new(
            Code::InvalidEnv,
            format!("CNI_COMMAND={other:?} is not a command of CNI 1.1 (ADD, DEL, CHECK, VERSION, STATUS, GC)"),
        )),
    }
}

fn version_result(stdin: &[u8]) -> String {
    // The runtime's own version, when it sent one, is echoed as the spec
    // asks; the supported list is ours.
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| conf::LATEST.to_string());
    json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS }).to_string()
}

fn add(env: &Env, conf: &NetConf) -> Result<String, CniError> {
    env.require("CNI_CONTAINERID", &env.container_id)?;
    env.require("CNI_NETNS", &env.netns)?;
    env.require("CNI_IFNAME", &env.ifname)?;
    let result = conf.prev_result_for_output()?;
    let Some(pod) = PodRef::from_cni_args(&env.args) else {
        tracing::info!(container = %env.container_id, "not a Kubernetes pod (no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS): passed through");
        return Ok(result);
    };
    // Never meshed (SPEC), and the cluster's own pods must start even when
    // the API server cannot be asked: no call for them.
    if pod.namespace == KUBE_SYSTEM {
        tracing::debug!(%pod, "kube-system is never meshed: passed through");
        return Ok(result);
    }
    let capture = pod::capture_of(conf, &pod)?;
    let (args, argv) = match capture {
        Capture::Cni { args, argv } => (args, argv),
        Capture::None(why) => {
            tracing::info!(%pod, "{why}: passed through");
            return Ok(result);
        }
    };
    let state = conf.state()?;
    // The record first: a crash after the rules are in leaves DEL able to
    // find them. Removed again when the rules fail.
    state.record(&env.container_id, &pod, &argv)?;
    if let Err(error) = netns::within(&env.netns, || capture::run(&args.to_install())) {
        state.forget(&env.container_id);
        return Err(error.into_cni(&pod));
    }
    tracing::info!(%pod, netns = %env.netns, "installed the capture rules");
    Ok(result)
}

fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    env.require("CNI_CONTAINERID", &env.container_id)?;
    let state = conf.state()?;
    let Some(record) = state.read(&env.container_id)? else {
        // Not set up by this plugin (or already deleted): nothing of ours.
        return Ok(());
    };
    let args = record.init_args()?;
    if netns::exists(&env.netns) {
        netns::within(&env.netns, || capture::run(&args.to_remove()))
            .map_err(|e| e.into_cni(&record.pod))?;
        tracing::info!(pod = %record.pod, "removed the capture rules");
    }
    state.forget(&env.container_id);
    Ok(())
}

fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    env.require("CNI_CONTAINERID", &env.container_id)?;
    env.require("CNI_NETNS", &env.netns)?;
    conf.prev_result_for_output()?;
    let state = conf.state()?;
    let Some(record) = state.read(&env.container_id)? else {
        return Ok(());
    };
    let args = record.init_args()?;
    let problems = netns::within(&env.netns, || capture::differences(&args))
        .map_err(|e| e.into_cni(&record.pod))?;
    if problems.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        Code::RulesDiffer,
        format!(
            "the capture rules of pod {} are not as trellis-cni installed them",
            record.pod
        ),
    )
    .with_details(problems.join("; ")))
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    conf.kubeconfig()
        .map(|_| ())
        .map_err(|e| CniError::new(Code::NotAvailable, e.msg).with_details(e.details))
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    let Some(valid) = conf.valid_attachments() else {
        return Ok(());
    };
    conf.state()?.retain(|id| valid.iter().any(|v| v == id));
    Ok(())
}

/// An error of `trellis_core::capture`, as the CNI error the runtime shows.
trait IntoCni {
    fn into_cni(self, pod: &PodRef) -> CniError;
}

impl IntoCni for netns::Error {
    fn into_cni(self, pod: &PodRef) -> CniError {
        match self {
            netns::Error::Enter(msg) => CniError::new(Code::IoFailure, format!("pod {pod}: {msg}")),
            netns::Error::Capture(e) => CniError::new(
                Code::RulesFailed,
                format!("could not install the capture rules of pod {pod}: {e}"),
            ),
        }
    }
}
