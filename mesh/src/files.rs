//! Writing what the identity service and the proxies read (the layout is
//! [`super::identity`]'s): the mesh CA and token-signing key, then per
//! meshed pod its token, policy file and destinations file.
//!
//! Every file is replaced atomically (temporary file, then rename): the
//! proxies reload policy, destinations and roots when the files change, and
//! must never read half of one. Keys are 0600 and root's; a pod's token is
//! 0400 and belongs to the proxy's uid; the rest is 0644.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use trellis_core::contract::files::DestinationsFile;
use trellis_identity::token::LocalIssuer;

use super::authz::ProxyPolicy;
use super::identity::{self, IdentityPlan, MeshFiles, PodFiles};
use super::names::PROXY_UID;
use super::plan::{Plan, PodPlan};
use super::sys;

const DIR_MODE: u32 = 0o755;
const PUBLIC_MODE: u32 = 0o644;
const TOKEN_MODE: u32 = 0o400;

/// Makes the mesh's CA (root and issuer) and its token-signing key, and
/// returns the signer.
pub(crate) fn make_ca(
    state_dir: &Path,
    plan: &Plan,
    id: &IdentityPlan,
) -> anyhow::Result<LocalIssuer> {
    // The proxies (uid 7102) must reach their files through the state
    // directory.
    sys::create_dir_mode(state_dir, DIR_MODE)?;
    let files = &id.files;
    sys::create_dir_mode(&files.ca_dir, DIR_MODE)?;
    let bundle = trellis_identity::ca::bootstrap(
        &plan.trust_domain,
        identity::ROOT_LIFETIME,
        identity::ISSUER_LIFETIME,
    )
    .context("making the mesh CA")?;
    trellis_identity::ca::write_bundle(&files.ca_dir, &bundle, true)
        .context("writing the mesh CA")?;
    sys::create_dir_mode(&files.token_issuer_dir, DIR_MODE)?;
    let signer = trellis_identity::token::write_token_key(
        &files.token_issuer_dir,
        identity::TOKEN_ISSUER,
        true,
    )
    .context("making the token-signing key")?;
    sys::create_dir_mode(&files.pods_dir, DIR_MODE)?;
    sys::world_executable(&files.pods_dir).map_err(|why| {
        anyhow::anyhow!(
            "the proxies run as uid {PROXY_UID} and cannot reach their files in {}: {why}",
            files.pods_dir.display()
        )
    })?;
    Ok(signer)
}

/// The token signer `up` made (for the node agent and `mesh policy`).
pub(crate) fn load_signer(files: &MeshFiles) -> anyhow::Result<LocalIssuer> {
    let pem = std::fs::read_to_string(&files.token_key)
        .with_context(|| format!("reading {}", files.token_key.display()))?;
    LocalIssuer::from_pem(identity::TOKEN_ISSUER, &pem)
        .with_context(|| format!("{} is not a token-signing key", files.token_key.display()))
}

/// Writes everything a meshed pod's proxy reads before it starts.
pub(crate) fn write_pod_files(
    plan: &Plan,
    pod: &PodPlan,
    signer: &LocalIssuer,
) -> anyhow::Result<()> {
    let Some(proxy) = &pod.proxy else {
        return Ok(());
    };
    let files = pod_files(pod)?;
    sys::create_dir_mode(&files.dir, DIR_MODE)?;
    write_token(pod, files, signer)?;
    write_policy(&files.policy, &proxy.policy)?;
    write_destinations(&files.destinations, &plan.destinations)?;
    Ok(())
}

pub(crate) fn pod_files(pod: &PodPlan) -> anyhow::Result<&PodFiles> {
    pod.proxy
        .as_ref()
        .and_then(|p| p.files.as_ref())
        .with_context(|| format!("pod {} has no proxy files", pod.qualified_name()))
}

/// A fresh ServiceAccount token for the pod, as the kubelet projects one.
pub(crate) fn write_token(
    pod: &PodPlan,
    files: &PodFiles,
    signer: &LocalIssuer,
) -> anyhow::Result<()> {
    let token = signer
        .sign(
            &pod.namespace,
            &pod.service_account,
            &pod.name,
            identity::TOKEN_AUDIENCE,
            identity::TOKEN_LIFETIME,
        )
        .with_context(|| format!("signing a token for pod {}", pod.qualified_name()))?;
    sys::write_file_atomic(&files.token, token.as_bytes(), TOKEN_MODE, Some(PROXY_UID))?;
    Ok(())
}

pub(crate) fn write_policy(path: &Path, policy: &ProxyPolicy) -> anyhow::Result<()> {
    write_json(path, policy)
}

pub(crate) fn write_destinations(path: &Path, d: &DestinationsFile) -> anyhow::Result<()> {
    write_json(path, d)
}

fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    sys::write_file_atomic(path, &text, PUBLIC_MODE, None)?;
    Ok(())
}
