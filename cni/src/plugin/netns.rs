//! Running a piece of work inside the pod's network namespace.
//!
//! `setns(2)` moves the calling thread only; the iptables tools that
//! `trellis_core::capture` runs are children of this thread and so start in
//! the pod's namespace. The thread returns to its own namespace afterwards.

use std::fs::File;
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use trellis_core::capture::InitError;

#[derive(Debug)]
pub enum Error {
    /// The namespace could not be entered (or left).
    Enter(String),
    /// The work inside failed.
    Capture(InitError),
}

/// Whether `path` names a network namespace that still exists.
pub fn exists(path: &str) -> bool {
    !path.is_empty() && Path::new(path).exists()
}

/// Runs `work` with this thread in the network namespace at `path`.
pub fn within<T>(path: &str, work: impl FnOnce() -> Result<T, InitError>) -> Result<T, Error> {
    let enter =
        |what: &str, e: &dyn std::fmt::Display| Error::Enter(format!("could not {what}: {e}"));
    let own = File::open("/proc/thread-self/ns/net")
        .map_err(|e| enter("open this thread's network namespace", &e))?;
    let target =
        File::open(path).map_err(|e| enter(&format!("open the network namespace {path}"), &e))?;
    setns(&target, CloneFlags::CLONE_NEWNET)
        .map_err(|e| enter(&format!("enter the network namespace {path}"), &e))?;
    let result = work();
    setns(&own, CloneFlags::CLONE_NEWNET)
        .map_err(|e| enter("return to this thread's network namespace", &e))?;
    result.map_err(Error::Capture)
}
