//! CNI error objects: `{"cniVersion", "code", "msg", "details"}` on stdout.

use serde_json::{json, Value};

/// Error codes: 1–99 are the spec's, 100 and up this plugin's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    InvalidEnv = 4,
    IoFailure = 5,
    DecodeFailure = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    NotAvailable = 50,
    /// The capture rules could not be installed or removed.
    RulesFailed = 100,
    /// `CHECK`: the rules in the pod's namespace are not those installed.
    RulesDiffer = 101,
    /// The pod's `trellis-init` arguments are not valid.
    PodConfig = 102,
}

/// An error the runtime reports (and logs) for the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error object, in the version of the configuration when it named
    /// one we speak, else the newest.
    pub fn to_json(&self, stdin: &[u8]) -> String {
        let version = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
            .filter(|v| super::SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| super::conf::LATEST.to_string());
        let mut object = json!({
            "cniVersion": version,
            "code": self.code as u32,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            object["details"] = Value::String(self.details.clone());
        }
        object.to_string()
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code as u32, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}
