//! What a Kubernetes-mode mesh is and what it made, in its state directory
//! (`/run/trellis/meshes/<mesh>/`): `kubernetes.json`, written before each
//! thing is made, so that `down` removes exactly what was made even after an
//! `up` that failed half-way.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use trellis_mesh::{names, sys};

/// The record's file name in the state directory.
pub const FILE: &str = "kubernetes.json";
/// Mount points the agent had to create on the host, one path per line
/// (appended as they are made; `down` removes them, deepest first).
pub const MOUNTPOINTS_FILE: &str = "mountpoints";

/// Where pods' files are (see [`Record::pods_dir`]).
pub const DATA_ROOT: &str = "/var/lib/trellis/kube";
/// The API server's port inside the node's namespace.
pub const API_PORT: u16 = 6443;
/// etcd's client and peer ports, on the node namespace's loopback.
pub const ETCD_PORTS: (u16, u16) = (2379, 2380);
/// The Services' range; its first address is the `kubernetes` Service.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const API_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub mesh: String,
    /// The Node's name.
    pub node: String,
    pub node_netns: String,
    /// The pod CIDR, e.g. `10.244.0.0/24`: the bridge has its first address.
    pub pod_cidr: String,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    /// The processes `up` started, in start order.
    #[serde(default)]
    pub processes: Vec<Started>,
    /// The port the host-side forwarder listens on (127.0.0.1).
    #[serde(default)]
    pub forward_port: Option<u16>,
    /// Whether this mesh created `/etc/netns` (so the last one removes it).
    #[serde(default)]
    pub created_etc_netns: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    pub role: String,
    pub pid: u32,
    pub start_time: Option<u64>,
    pub log: PathBuf,
}

impl Record {
    pub fn dir(mesh: &str) -> PathBuf {
        names::mesh_dir(mesh)
    }

    pub fn path(mesh: &str) -> PathBuf {
        Record::dir(mesh).join(FILE)
    }

    pub fn exists(mesh: &str) -> bool {
        Record::path(mesh).is_file()
    }

    pub fn load(mesh: &str) -> anyhow::Result<Record> {
        let path = Record::path(mesh);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        sys::write_file_atomic(&Record::path(&self.mesh), &bytes, 0o600, None)?;
        Ok(())
    }

    pub fn logs_dir(&self) -> PathBuf {
        Record::dir(&self.mesh).join("logs")
    }

    pub fn pki_dir(&self) -> PathBuf {
        Record::dir(&self.mesh).join("pki")
    }

    /// The admin's kubeconfig against the API server from inside the node
    /// namespace (`https://127.0.0.1:6443`): for the controller manager and
    /// the agent.
    pub fn node_kubeconfig(&self) -> PathBuf {
        Record::dir(&self.mesh).join("node.kubeconfig")
    }

    /// The admin's kubeconfig through the host-side forwarder: the user's.
    pub fn kubeconfig(&self) -> PathBuf {
        Record::kubeconfig_of(&self.mesh)
    }

    /// [`Record::kubeconfig`] of mesh `mesh`, without reading its record.
    pub fn kubeconfig_of(mesh: &str) -> PathBuf {
        Record::dir(mesh).join("kubeconfig")
    }

    /// Where the agent keeps its pods' volumes and logs:
    /// `/var/lib/trellis/kube/<mesh>/pods`. Not under `/run`: a container
    /// may mount an `emptyDir` on `/run`, which would hide the sources of
    /// its later mounts.
    pub fn pods_dir(&self) -> PathBuf {
        Record::data_dir(&self.mesh).join("pods")
    }

    /// `/var/lib/trellis/kube/<mesh>`.
    pub fn data_dir(mesh: &str) -> PathBuf {
        Path::new(DATA_ROOT).join(mesh)
    }

    /// The agent's image mappings beyond the built-in ones, if the user gave
    /// a file to `up`.
    pub fn images_file(&self) -> PathBuf {
        Record::dir(&self.mesh).join("images.yaml")
    }
}

/// Records that the agent created `dir` on the host as a mount point.
pub fn note_mountpoint(mesh: &str, dir: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Record::dir(mesh).join(MOUNTPOINTS_FILE))?;
    writeln!(f, "{}", dir.display())
}

/// The mount points recorded by [`note_mountpoint`].
pub fn mountpoints(mesh: &str) -> Vec<PathBuf> {
    std::fs::read_to_string(Record::dir(mesh).join(MOUNTPOINTS_FILE))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect()
}
