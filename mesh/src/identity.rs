//! Identity and mutual TLS in the local mesh, decided before anything is
//! made. Pure.
//!
//! The mesh plays the cluster's parts: `up` makes a CA per mesh (a root
//! and an issuer) and a ServiceAccount-token signing key whose JWKS the
//! identity service trusts, as it would trust the API server's. Then:
//!
//! - `trellis-identity` runs in the node namespace on the bridge address
//!   ([`IdentityPlan`], port 7155, admin 7195), verifying tokens locally
//!   against that JWKS (`TRELLIS_IDENTITY_TOKEN_VERIFIER=jwks`);
//! - each meshed pod gets, in `pods/<namespace>.<name>/` of the mesh's state
//!   directory ([`PodFiles`]), a signed token (what the kubelet projects
//!   into a pod), its policy file and the destinations file, and its proxy
//!   is told where they are ([`proxy_vars`]);
//! - the destinations file ([`DestinationsFile`](trellis_core::contract::files::DestinationsFile), made by
//!   [`plan::destinations`](super::plan::destinations)) lists every address
//!   the proxies must originate mutual TLS to, with the identities to
//!   expect.
//!
//! State directory layout:
//!
//! ```text
//! /run/trellis/meshes/<mesh>/
//!   ca/roots.pem  ca/issuer.crt  ca/issuer.key (0600)
//!   token-issuer/token.key (0600)  token-issuer/jwks.json
//!   pods/<ns>.<name>/token (0400, the proxy's uid)  policy.json  destinations.json
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use trellis_core::contract::proxy_env;
use trellis_identity::config as idcfg;

use super::names;

/// The identity service's gRPC port and admin port (SPEC.md).
pub(crate) const IDENTITY_PORT: u16 = 7155;
pub(crate) const IDENTITY_ADMIN_PORT: u16 = 7195;
/// Where the identity service would live in a cluster: its SPIFFE ID.
pub(crate) const SYSTEM_NAMESPACE: &str = "trellis-system";
pub(crate) const IDENTITY_SERVICE_ACCOUNT: &str = "trellis-identity";
/// What the pods' tokens are minted for.
pub(crate) const TOKEN_AUDIENCE: &str = trellis_identity::token::DEFAULT_AUDIENCE;
/// The tokens' `iss`, as in a default cluster.
pub(crate) const TOKEN_ISSUER: &str = trellis_identity::token::DEFAULT_TOKEN_ISSUER;
/// How long a pod's token is valid (a kubelet's default for projected
/// tokens); the node agent rewrites it well before.
pub(crate) const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The mesh CA: a root and an issuer, made fresh by every `up`.
pub(crate) const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub(crate) const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Paths of the mesh-wide key material under a mesh's state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshFiles {
    pub ca_dir: PathBuf,
    pub roots: PathBuf,
    pub issuer_cert: PathBuf,
    pub issuer_key: PathBuf,
    pub token_issuer_dir: PathBuf,
    pub token_key: PathBuf,
    pub jwks: PathBuf,
    pub pods_dir: PathBuf,
}

impl MeshFiles {
    /// The layout under `state_dir` (file names as `trellis-identity
    /// bootstrap` and `token-key` write them).
    pub(crate) fn new(state_dir: &Path) -> Self {
        let ca = state_dir.join("ca");
        let tokens = state_dir.join("token-issuer");
        Self {
            roots: ca.join("roots.pem"),
            issuer_cert: ca.join("issuer.crt"),
            issuer_key: ca.join("issuer.key"),
            ca_dir: ca,
            token_key: tokens.join("token.key"),
            jwks: tokens.join("jwks.json"),
            token_issuer_dir: tokens,
            pods_dir: state_dir.join("pods"),
        }
    }

    pub(crate) fn pod(&self, namespace: &str, name: &str) -> PodFiles {
        let dir = self.pods_dir.join(format!("{namespace}.{name}"));
        PodFiles {
            token: dir.join("token"),
            policy: dir.join("policy.json"),
            destinations: dir.join("destinations.json"),
            roots: self.roots.clone(),
            dir,
        }
    }
}

/// The files one meshed pod's proxy reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodFiles {
    pub dir: PathBuf,
    /// The ServiceAccount token (the proxy's uid may read it, no one else).
    pub token: PathBuf,
    pub policy: PathBuf,
    pub destinations: PathBuf,
    /// The mesh's trust roots (shared by every pod).
    pub roots: PathBuf,
}

/// `trellis-identity` in the node namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityPlan {
    /// gRPC (TLS 1.3), on the bridge address: what proxies dial.
    pub addr: SocketAddr,
    /// Admin (`/ready`, `/metrics`), asked from the node namespace.
    pub admin: SocketAddr,
    /// The SPIFFE ID its serving certificate carries.
    pub server_identity: String,
    pub files: MeshFiles,
    /// Its `TRELLIS_IDENTITY_*` variables.
    pub env: BTreeMap<String, String>,
}

pub(crate) fn server_identity(trust_domain: &str) -> String {
    names::spiffe_id(trust_domain, SYSTEM_NAMESPACE, IDENTITY_SERVICE_ACCOUNT)
}

/// The identity service of a mesh whose bridge has address `gateway`.
pub(crate) fn identity_plan(
    trust_domain: &str,
    gateway: Ipv4Addr,
    cert_lifetime: Duration,
    files: MeshFiles,
) -> IdentityPlan {
    let addr = SocketAddr::new(IpAddr::V4(gateway), IDENTITY_PORT);
    let admin = SocketAddr::new(IpAddr::V4(gateway), IDENTITY_ADMIN_PORT);
    let path = |p: &Path| p.display().to_string();
    let env = BTreeMap::from(
        [
            (idcfg::LISTEN, addr.to_string()),
            (idcfg::ADMIN_LISTEN, admin.to_string()),
            (idcfg::TRUST_DOMAIN, trust_domain.to_string()),
            (idcfg::ISSUER_CERT_FILE, path(&files.issuer_cert)),
            (idcfg::ISSUER_KEY_FILE, path(&files.issuer_key)),
            (idcfg::TRUST_ROOTS_FILE, path(&files.roots)),
            (idcfg::TOKEN_VERIFIER, "jwks".to_string()),
            (idcfg::JWKS_FILE, path(&files.jwks)),
            (idcfg::TOKEN_ISSUER, TOKEN_ISSUER.to_string()),
            (idcfg::AUDIENCE, TOKEN_AUDIENCE.to_string()),
            (idcfg::NAMESPACE, SYSTEM_NAMESPACE.to_string()),
            (idcfg::SERVICE_ACCOUNT, IDENTITY_SERVICE_ACCOUNT.to_string()),
            (
                idcfg::CERT_LIFETIME,
                trellis_core::config::format_duration(cert_lifetime),
            ),
            (idcfg::LOG, "info".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    IdentityPlan {
        addr,
        admin,
        server_identity: server_identity(trust_domain),
        files,
        env,
    }
}

/// The identity variables of one meshed pod's proxy, and the variables
/// naming its destinations and policy files (`files_source`: when the mesh
/// has no controller, which is otherwise the proxy's one source of both).
pub(crate) fn proxy_vars(
    identity: &IdentityPlan,
    pod_identity: &str,
    files: &PodFiles,
    files_source: bool,
) -> BTreeMap<String, String> {
    let path = |p: &Path| p.display().to_string();
    let mut vars = BTreeMap::from(
        [
            (proxy_env::IDENTITY_ADDR, identity.addr.to_string()),
            (
                proxy_env::IDENTITY_SERVER_ID,
                identity.server_identity.clone(),
            ),
            (proxy_env::IDENTITY, pod_identity.to_string()),
            (proxy_env::IDENTITY_TOKEN_FILE, path(&files.token)),
            (proxy_env::TRUST_ROOTS_FILE, path(&files.roots)),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    if files_source {
        vars.extend(
            [
                (proxy_env::DESTINATIONS_FILE, path(&files.destinations)),
                (proxy_env::POLICY_FILE, path(&files.policy)),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
    }
    vars
}

#[cfg(test)]
mod tests;
