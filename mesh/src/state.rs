//! `/run/trellis/meshes/<mesh>/state.json`: the plan, and an intent log of
//! everything `up` made.
//!
//! Each network namespace, `/etc/netns` directory and process is written
//! down *before* it is created (a process's pid right after), and the file
//! is replaced atomically each time. So `down` removes exactly what `up`
//! made, even after `up` died half-way, and nothing else. Files `up` writes
//! for the identity service and the proxies (key material, tokens, policy
//! and destinations files) live inside the state directory, which `down`
//! removes last.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::names::STATE_ROOT;
use super::plan::Plan;

pub const STATE_FILE: &str = "state.json";
/// Where meshes keep their processes' logs: on disk, and kept after `down`
/// (until the next `up` of the same name clears them).
pub const LOG_ROOT: &str = "/var/log/trellis";
/// The lock `apply`, `down` and the supervisor take before changing a
/// running mesh.
const LOCK_FILE: &str = "apply.lock";
const STATE_VERSION: u32 = 1;
const LOCK_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// `up` is making things (or died while doing so).
    Creating,
    /// `up` finished: every pod ready.
    Ready,
    /// `down` is removing things (or died while doing so).
    Deleting,
    /// `apply` is changing the mesh (or died while doing so: the next
    /// `apply` finishes removing what it left half-made, `down` removes
    /// everything).
    Applying,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Proxy,
    Workload,
    /// `trellis-identity`, in the node namespace.
    Identity,
    /// `trellis mesh node-agent`, in the node namespace: refreshes tokens.
    NodeAgent,
    /// `trellis-controller`, in the node namespace.
    Controller,
    /// `trellis mesh supervise`, in the node namespace: restarts pods'
    /// processes and takes pods out of their services while they are down.
    Supervisor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Workload => "workload",
            Self::Identity => "identity",
            Self::NodeAgent => "node-agent",
            Self::Controller => "controller",
            Self::Supervisor => "supervisor",
        }
    }
}

/// A process started in a pod or the node namespace. `pid` is `None`
/// between the intent and the spawn; `start_time` (from `/proc/<pid>/stat`)
/// tells a recycled pid apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRecord {
    /// The pod's (or the node's) network namespace.
    pub netns: String,
    pub role: Role,
    pub pid: Option<u32>,
    pub start_time: Option<u64>,
    pub log: PathBuf,
    pub argv: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub version: u32,
    pub mesh: String,
    pub phase: Phase,
    /// The mesh file, or "built-in demo".
    pub source: String,
    pub created_unix: u64,
    /// The `trellis` process that ran `up`.
    pub up_pid: u32,
    pub proxy_bin: Option<PathBuf>,
    #[serde(default)]
    pub identity_bin: Option<PathBuf>,
    /// The `trellis` that `{trellis}` in commands stands for (`apply`
    /// expands new pods' commands with the same one).
    #[serde(default)]
    pub trellis_bin: Option<PathBuf>,
    pub plan: Plan,
    /// True if `up` created `/etc/netns` itself (with a marker in it, so
    /// whichever mesh goes down last removes it).
    pub created_etc_netns: bool,
    /// Network namespaces, in creation order (node first).
    pub netns: Vec<String>,
    /// `/etc/netns/<name>` directories.
    pub etc_dirs: Vec<PathBuf>,
    /// Processes of pods: proxies and workloads.
    pub processes: Vec<ProcessRecord>,
    /// Processes of the node namespace: the identity service, the node agent.
    #[serde(default)]
    pub node_processes: Vec<ProcessRecord>,
    /// The processes' logs (older states: `logs` in the state directory).
    #[serde(default)]
    pub logs: Option<PathBuf>,
    /// What the supervisor knows of each pod, by network namespace; a pod
    /// not listed is running and was never restarted.
    #[serde(default)]
    pub health: BTreeMap<String, PodHealth>,
}

/// A pod as the supervisor sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PodRun {
    /// Every process runs (and was ready when last (re)started).
    #[default]
    Running,
    /// A process exited: it is restarted (after a backoff) and the pod is
    /// out of its services until it is ready again.
    Restarting,
    /// It exited too often in a row: no more restarts; out of its services.
    Failed,
}

impl PodRun {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Failed => "failed",
        }
    }
}

/// How a process of a pod last ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastExit {
    pub role: Role,
    /// `exit status 3`, `signal 9 (SIGKILL)`, or why it is unknown.
    pub status: String,
    pub at_unix_ms: u64,
}

/// The supervisor's record of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodHealth {
    pub state: PodRun,
    /// Restarts since `up` (or since `apply` made the pod).
    pub restarts: u32,
    /// Exits in a row, each soon after its start: what the backoff and the
    /// restart limit count.
    pub crashes: u32,
    pub last_exit: Option<LastExit>,
    /// While restarting: when the exited processes start again.
    pub restart_at_unix_ms: Option<u64>,
    /// When its processes last (re)started (0: when `up` started them).
    pub started_unix_ms: u64,
}

impl State {
    pub fn new(plan: Plan, source: String, proxy_bin: Option<PathBuf>) -> Self {
        Self {
            version: STATE_VERSION,
            mesh: plan.mesh.clone(),
            phase: Phase::Creating,
            source,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            up_pid: std::process::id(),
            proxy_bin,
            identity_bin: None,
            trellis_bin: None,
            plan,
            created_etc_netns: false,
            netns: Vec::new(),
            etc_dirs: Vec::new(),
            processes: Vec::new(),
            node_processes: Vec::new(),
            logs: None,
            health: BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "mesh {mesh:?} is already up (state in {dir}); run `trellis mesh down --name {mesh}` first"
    )]
    Exists { mesh: String, dir: String },
    #[error("no mesh named {0:?} is up (no state in {STATE_ROOT})")]
    Missing(String),
    #[error("{path}")]
    Io { path: String, source: io::Error },
    #[error("another trellis command is changing this mesh (lock {path}: {errno})")]
    Locked {
        path: String,
        errno: nix::errno::Errno,
    },
    #[error("{path} is not a state file this trellis understands: {message}")]
    Corrupt { path: String, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Names of the meshes with a state directory.
pub fn list_meshes() -> Result<Vec<String>, StateError> {
    let root = Path::new(STATE_ROOT);
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(root)(e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// The state of a mesh, kept in memory and on disk in step.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    pub state: State,
}

impl Store {
    /// Claims the mesh's state directory (failing if it exists: one `up`
    /// per mesh name) and writes the initial state.
    pub fn create(state: State) -> Result<Store, StateError> {
        Self::create_in(Path::new(STATE_ROOT), Path::new(LOG_ROOT), state)
    }

    /// Also clears the logs an earlier mesh of the same name left in
    /// `log_root`.
    pub fn create_in(root: &Path, log_root: &Path, mut state: State) -> Result<Store, StateError> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        let dir = root.join(&state.mesh);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists {
                    mesh: state.mesh.clone(),
                    dir: dir.display().to_string(),
                })
            }
            Err(e) => return Err(io_err(&dir)(e)),
        }
        let logs = log_root.join(&state.mesh);
        state.logs = Some(logs.clone());
        let store = Store { dir, state };
        store.save()?;
        match fs::remove_dir_all(&logs) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&logs)(e)),
        }
        fs::create_dir_all(&logs).map_err(io_err(&logs))?;
        Ok(store)
    }

    pub fn open(mesh: &str) -> Result<Store, StateError> {
        Self::open_in(Path::new(STATE_ROOT), mesh)
    }

    pub fn open_in(root: &Path, mesh: &str) -> Result<Store, StateError> {
        let dir = root.join(mesh);
        let path = dir.join(STATE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => {
                return Err(StateError::Missing(mesh.to_string()))
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let state: State = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        if state.version != STATE_VERSION {
            return Err(StateError::Corrupt {
                path: path.display().to_string(),
                message: format!(
                    "version {} (this trellis writes {STATE_VERSION})",
                    state.version
                ),
            });
        }
        Ok(Store { dir, state })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn logs_dir(&self) -> PathBuf {
        match &self.state.logs {
            Some(l) => l.clone(),
            None => self.dir.join("logs"),
        }
    }

    /// Rereads the state from disk (after taking the lock: another process
    /// may have changed it).
    pub fn reload(&mut self) -> Result<(), StateError> {
        let root = self.dir.parent().unwrap_or(Path::new(STATE_ROOT));
        *self = Self::open_in(root, &self.state.mesh)?;
        Ok(())
    }

    /// Takes the mesh's lock, the one `apply`, `down` and the supervisor
    /// take before changing a running mesh, waiting up to `wait` for it;
    /// released when the returned value is dropped.
    pub fn lock(&self, wait: Duration) -> Result<Flock<File>, StateError> {
        let path = self.dir.join(LOCK_FILE);
        let deadline = Instant::now() + wait;
        loop {
            let file = File::create(&path).map_err(io_err(&path))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((_, errno)) if Instant::now() >= deadline => {
                    return Err(StateError::Locked {
                        path: path.display().to_string(),
                        errno,
                    })
                }
                Err(_) => std::thread::sleep(LOCK_POLL),
            }
        }
    }

    /// Writes the state: to a temporary file, then renamed over the old one,
    /// so a reader (or a crash) never sees half a file.
    pub fn save(&self) -> Result<(), StateError> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(&self.state).map_err(|e| StateError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        fs::write(&tmp, text).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Changes the state in memory and on disk.
    pub fn update(&mut self, f: impl FnOnce(&mut State)) -> Result<(), StateError> {
        f(&mut self.state);
        self.save()
    }

    /// Removes the state directory (not the logs, unless they are in it):
    /// the last step of `down`.
    pub fn remove(self) -> Result<(), StateError> {
        fs::remove_dir_all(&self.dir).map_err(io_err(&self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{check, plan};

    fn sample_state() -> State {
        let yaml = "name: st\nworkloads:\n  - name: web\n    ports: [8080]\n    command: [\"{trellis}\", app, http]\nservices:\n  - {name: web, selector: web, ports: [{port: 80, targetPort: 8080}]}\n";
        let checked = check::parse(yaml, "test").unwrap();
        let plan = plan::build(&checked, "/bin/trellis").unwrap();
        State::new(
            plan,
            "test".into(),
            Some(PathBuf::from("/bin/trellis-proxy")),
        )
    }

    fn temp_root(tag: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("trellis-state-test-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        root
    }

    #[test]
    fn round_trip_through_disk() {
        let root = temp_root("rt");
        let logs = root.join("logs");
        fs::create_dir_all(logs.join("st")).unwrap();
        fs::write(logs.join("st").join("old.log"), "an earlier mesh's").unwrap();
        let mut store = Store::create_in(&root, &logs, sample_state()).unwrap();
        // The next `up` of a name clears the logs the last one kept.
        assert_eq!(store.logs_dir(), logs.join("st"));
        assert!(!logs.join("st").join("old.log").exists());
        let lock = store.lock(Duration::ZERO).unwrap();
        let err = store.lock(Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
        drop(lock);
        drop(store.lock(Duration::ZERO).unwrap());
        store
            .update(|s| {
                s.netns.push("trls-st-node".into());
                s.etc_dirs
                    .push(PathBuf::from("/etc/netns/trls-st-default-web-0"));
                s.processes.push(ProcessRecord {
                    netns: "trls-st-default-web-0".into(),
                    role: Role::Proxy,
                    pid: Some(42),
                    start_time: Some(1234),
                    log: PathBuf::from("/x.log"),
                    argv: vec!["trellis-proxy".into()],
                });
                s.phase = Phase::Ready;
            })
            .unwrap();
        assert!(store.logs_dir().is_dir());
        let again = Store::open_in(&root, "st").unwrap();
        assert_eq!(again.state, store.state);
        assert_eq!(again.state.plan.pods[0].name, "web-0");
        assert!(!root.join("st").join("state.json.tmp").exists());

        // A second `up` of the same mesh is refused.
        let err = Store::create_in(&root, &logs, sample_state()).unwrap_err();
        assert!(err.to_string().contains("already up"), "{err}");
        assert!(
            err.to_string().contains("trellis mesh down --name st"),
            "{err}"
        );

        store.remove().unwrap();
        assert!(logs.join("st").is_dir(), "logs are kept");
        assert!(matches!(
            Store::open_in(&root, "st"),
            Err(StateError::Missing(_))
        ));
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn corrupt_and_foreign_versions_are_named() {
        let root = temp_root("bad");
        fs::create_dir_all(root.join("m")).unwrap();
        fs::write(root.join("m").join(STATE_FILE), "{not json").unwrap();
        let err = Store::open_in(&root, "m").unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");

        let mut state = sample_state();
        state.version = 99;
        fs::write(
            root.join("m").join(STATE_FILE),
            serde_json::to_string(&state).unwrap(),
        )
        .unwrap();
        let err = Store::open_in(&root, "m").unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
        let _ = fs::remove_dir_all(&root);
    }
}
