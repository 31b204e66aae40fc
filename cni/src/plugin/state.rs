//! What this plugin set up, one record per container: `DEL` and `CHECK`
//! touch only the pods it recorded at `ADD`, so it never removes rules it
//! did not install (an init-container-mode pod's, say). A record holds the
//! pod and the `trellis-init` arguments the rules came from, so `DEL` needs
//! no API server (the pod may be gone by then).

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use trellis_core::capture::InitArgs;

use super::error::{CniError, Code};
use super::pod::PodRef;

pub struct State {
    dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub pod: PodRef,
    /// The pod's `trellis-init` arguments (`["init", "--check", …]`).
    pub args: Vec<String>,
}

impl Record {
    pub fn init_args(&self) -> Result<InitArgs, CniError> {
        InitArgs::from_container_args(&self.args).map_err(|e| {
            CniError::new(
                Code::PodConfig,
                format!(
                    "the record of pod {} holds arguments that no longer parse: {e}",
                    self.pod
                ),
            )
        })
    }
}

impl State {
    pub fn open(dir: PathBuf) -> Result<Self, CniError> {
        std::fs::create_dir_all(&dir).map_err(|e| {
            CniError::new(
                Code::IoFailure,
                format!(
                    "could not create the state directory {}: {e}",
                    dir.display()
                ),
            )
        })?;
        Ok(State { dir })
    }

    fn path(&self, container_id: &str) -> Result<PathBuf, CniError> {
        let safe = !container_id.is_empty()
            && container_id.len() <= 128
            && container_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !container_id.starts_with('.');
        if !safe {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("CNI_CONTAINERID {container_id:?} is not a container ID (letters, digits, '-', '_', '.')"),
            ));
        }
        Ok(self.dir.join(format!("{container_id}.json")))
    }

    /// Writes the record atomically (a temporary file renamed over).
    pub fn record(
        &self,
        container_id: &str,
        pod: &PodRef,
        args: &[String],
    ) -> Result<(), CniError> {
        let path = self.path(container_id)?;
        let record = Record {
            pod: pod.clone(),
            args: args.to_vec(),
        };
        let io = |e: std::io::Error| {
            CniError::new(
                Code::IoFailure,
                format!("could not record pod {pod} in {}: {e}", path.display()),
            )
        };
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    pub fn read(&self, container_id: &str) -> Result<Option<Record>, CniError> {
        let path = self.path(container_id)?;
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(CniError::new(
                    Code::IoFailure,
                    format!("could not read {}: {e}", path.display()),
                ))
            }
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            CniError::new(
                Code::DecodeFailure,
                format!("the record {} is not valid: {e}", path.display()),
            )
        })
    }

    /// Removes a record; a missing one is fine.
    pub fn forget(&self, container_id: &str) {
        if let Ok(path) = self.path(container_id) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Removes every record whose container `keep` refuses.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if !keep(id) {
                tracing::info!(
                    container = id,
                    "forgetting the record of a container the runtime no longer has"
                );
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
