//! The network configuration on stdin: the conflist's common fields, this
//! plugin's own (`kubeconfig`, `logLevel`, `stateDir`), and the previous
//! plugin's result.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::error::{CniError, Code};
use super::state::State;

/// The CNI versions this plugin speaks. Older ones lack `CHECK` and the
/// result format it passes on.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];
pub(crate) const LATEST: &str = "1.1.0";

/// Where the plugin records the containers it set up, unless `stateDir`
/// says otherwise.
const DEFAULT_STATE_DIR: &str = "/var/lib/trellis-cni";

/// This plugin's configuration, as the runtime hands it over.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The kubeconfig `trellis-cni install` wrote (the plugin reads pods).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// `GC`'s list of attachments still in use.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
}

impl NetConf {
    /// Parses and checks the version; switches logging on at `logLevel`.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        if stdin.iter().all(u8::is_ascii_whitespace) {
            return Err(CniError::new(
                Code::DecodeFailure,
                "no network configuration on stdin",
            ));
        }
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::DecodeFailure,
                format!("the network configuration on stdin is not valid: {e}"),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!(
                    "cniVersion {:?} is not supported: trellis-cni speaks {}",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        trellis_core::telemetry::init_logging(
            conf.log_level.as_deref().unwrap_or("info"),
            trellis_core::telemetry::LogFormat::Plain,
        );
        Ok(conf)
    }

    /// The previous plugin's result, to pass on unchanged (in this
    /// configuration's version), or an error when there is none: this
    /// plugin only ever follows a primary plugin.
    pub fn prev_result_for_output(&self) -> Result<String, CniError> {
        let Some(Value::Object(result)) = &self.prev_result else {
            return Err(CniError::new(
                Code::InvalidConfig,
                format!(
                    "no prevResult in network {:?}: trellis-cni is a chained plugin and must come after the primary plugin (bridge, calico, cilium…) in the conflist's plugins",
                    self.name
                ),
            ));
        };
        let mut result = result.clone();
        result.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        Ok(Value::Object(result).to_string())
    }

    /// The kubeconfig's path, checked to be readable.
    pub fn kubeconfig(&self) -> Result<&Path, CniError> {
        let path = self.kubeconfig.as_deref().ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                format!("network {:?}: the trellis-cni entry has no \"kubeconfig\" (trellis-cni install writes it)", self.name),
            )
        })?;
        std::fs::metadata(path).map_err(|e| {
            CniError::new(
                Code::NotAvailable,
                format!("the kubeconfig {} is not readable: {e}", path.display()),
            )
            .with_details("is the trellis-cni DaemonSet running on this node?")
        })?;
        Ok(path)
    }

    pub fn state(&self) -> Result<State, CniError> {
        State::open(
            self.state_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        )
    }

    /// The container IDs `GC` keeps; `None` when the runtime sent no list
    /// (then nothing is collected).
    pub fn valid_attachments(&self) -> Option<Vec<String>> {
        let list = self.valid_attachments.as_ref()?;
        Some(list.iter().map(|a| a.container_id.clone()).collect())
    }
}
