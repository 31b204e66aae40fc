//! What things in a local mesh are called, and which names are valid: the
//! network namespaces of pods and of the node, interfaces, iptables
//! chains, SPIFFE IDs, the state directory, and the proxy's uid and ports.
//! Everything else that names something uses these, so the file, the plan,
//! `up`, `down` and the node agent cannot disagree. Pure; depends on no
//! other module of the crate.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The proxy's user id and ports: the proxy's contract (SPEC.md).
pub use trellis_core::contract::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_PORTS, PROXY_UID};
/// The cluster DNS domain service names live under.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The bridge in the node namespace (namespaced, so the name never clashes).
pub const BRIDGE: &str = "trellis0";
/// Chain, in every pod's nat table, holding the service VIP rules.
pub const SERVICES_CHAIN: &str = "TRELLIS_SERVICES";
/// Chain, in every pod's filter table, refusing services without endpoints.
pub const REJECT_CHAIN: &str = "TRELLIS_SERVICES_REJECT";

/// Where meshes keep their state; `/run` is a tmpfs, cleared at boot, as are
/// the namespaces and processes the state describes.
pub const STATE_ROOT: &str = "/run/trellis/meshes";
/// The controller's objects file, in the mesh's state directory.
pub const CLUSTER_FILE: &str = "cluster.yaml";

/// The mesh's state directory: `/run/trellis/meshes/<mesh>`.
pub fn mesh_dir(mesh: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(mesh)
}

/// `web-0`.
pub fn replica_name(workload: &str, replica: u32) -> String {
    format!("{workload}-{replica}")
}

/// `trls-<mesh>-<namespace>-<replica>`.
pub fn netns_name(mesh: &str, namespace: &str, replica: &str) -> String {
    format!("{}{mesh}-{namespace}-{replica}", netns_prefix_root())
}

/// `trls-<mesh>-node`.
pub fn node_netns_name(mesh: &str) -> String {
    format!("{}{mesh}-node", netns_prefix_root())
}

/// Every namespace of mesh `mesh` starts with this.
pub fn netns_prefix(mesh: &str) -> String {
    format!("{}{mesh}-", netns_prefix_root())
}

fn netns_prefix_root() -> &'static str {
    "trls-"
}

/// Interface names are limited to 15 bytes: `tv` and 12 hex digits of a
/// hash of the pod's namespace name.
pub fn host_veth_name(pod_netns: &str) -> String {
    let digest = Sha256::digest(pod_netns.as_bytes());
    let mut name = String::from("tv");
    for b in &digest[..6] {
        let _ = write!(name, "{b:02x}");
    }
    name
}

/// Every per-service-port chain's name starts with this.
pub const SERVICE_CHAIN_PREFIX: &str = "TRELLIS_SVC_";

/// [`SERVICE_CHAIN_PREFIX`] and 12 hex digits of a hash of
/// namespace/name:port/protocol (chain names are limited to 28
/// characters). `protocol` as iptables spells it: `tcp`, `udp`, `sctp`.
pub fn service_chain(namespace: &str, name: &str, port: u16, protocol: &str) -> String {
    let digest = Sha256::digest(format!("{namespace}/{name}:{port}/{protocol}").as_bytes());
    let mut chain = String::from(SERVICE_CHAIN_PREFIX);
    for b in &digest[..6] {
        let _ = write!(chain, "{b:02X}");
    }
    chain
}

/// The names a pod's `/etc/hosts` gives a Service: `name.ns.svc.<domain>`,
/// `name.ns.svc`, `name.ns`, and the bare `name` for pods of its own
/// namespace (`/etc/hosts` has no search list, so each form is listed).
pub fn service_hostnames(
    name: &str,
    namespace: &str,
    cluster_domain: &str,
    same_namespace: bool,
) -> Vec<String> {
    let mut names = vec![
        format!("{name}.{namespace}.svc.{cluster_domain}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}"),
    ];
    if same_namespace {
        names.push(name.to_string());
    }
    names
}

/// The SPIFFE ID of a ServiceAccount: `spiffe://<trust domain>/ns/<namespace>/sa/<name>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// A DNS label (RFC 1123) of at most `max` characters.
pub fn check_label(s: &str, max: usize) -> Result<(), String> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if s.is_empty() {
        Err("must not be empty".into())
    } else if s.len() > max {
        Err(format!("{s:?} is longer than {max} characters"))
    } else if !ok_chars || s.starts_with('-') || s.ends_with('-') {
        Err(format!(
            "{s:?} must be lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    } else {
        Ok(())
    }
}

/// A DNS subdomain (RFC 1123): labels joined by dots, at most 253
/// characters.
pub fn check_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err(format!("{s:?} is longer than 253 characters"));
    }
    s.split('.')
        .try_for_each(|l| check_label(l, 63))
        .map_err(|_| format!("{s:?} must be a DNS name: lowercase letters, digits, '-' and '.'"))
}
