//! `trellis mesh node-agent --name MESH`: the part of a kubelet the local
//! mesh needs after `up` returns. It rewrites every meshed pod's
//! ServiceAccount token well before it expires, as a kubelet refreshes
//! projected tokens, so proxies can renew their certificates for as long
//! as the mesh runs.
//!
//! `up` starts it in the node namespace and records it; `down` stops it
//! (SIGTERM's default action). It also exits by itself once the mesh's
//! state directory is gone. It rereads the state's plan each round, so
//! pods `apply` adds are refreshed too.

use std::time::{Duration, Instant};

use anyhow::Context;
use trellis_core::errln;

use super::files;
use super::identity::TOKEN_LIFETIME;
use super::names;
use super::state::Store;

/// Tokens are rewritten at a quarter of their lifetime.
const REFRESH_EVERY: Duration = Duration::from_secs(TOKEN_LIFETIME.as_secs() / 4);
/// How often it checks that the mesh still exists.
const CHECK_EVERY: Duration = Duration::from_secs(5);

pub fn run(mesh: &str) -> anyhow::Result<()> {
    let store = Store::open(mesh)?;
    let mut plan = store.state.plan;
    let id = plan
        .identity
        .as_ref()
        .context("this mesh has no meshed pods, so no tokens to refresh")?;
    let signer = files::load_signer(&id.files)?;
    errln!(
        "node agent of mesh {mesh}: refreshing {} pod token(s) every {REFRESH_EVERY:?}",
        plan.pods.iter().filter(|p| p.meshed).count()
    );
    let mut next = Instant::now() + REFRESH_EVERY;
    loop {
        std::thread::sleep(CHECK_EVERY);
        if !names::mesh_dir(mesh).exists() {
            errln!("the mesh's state directory is gone; exiting");
            return Ok(());
        }
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + REFRESH_EVERY;
        match Store::open(mesh) {
            Ok(s) => plan = s.state.plan,
            Err(e) => errln!("rereading the mesh's state (keeping the last plan): {e}"),
        }
        let mut failed = 0;
        for pod in plan.pods.iter().filter(|p| p.meshed) {
            let written = files::pod_files(pod).and_then(|f| files::write_token(pod, f, &signer));
            if let Err(e) = written {
                failed += 1;
                errln!("refreshing the token of {}: {e:#}", pod.qualified_name());
            }
        }
        errln!("tokens refreshed ({failed} failed)");
    }
}
