//! What the supervisor decides about a pod's health, and how a mesh with
//! pods down is shown: pure functions of the state's `health`
//! ([`PodHealth`]), table-tested; [`supervise`](super::supervise) carries
//! them out, `up` and `apply` write the pods they take out of service into
//! the controller's objects file, `status` and `list` show the phase.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use trellis_core::backoff::Exponential;

use super::state::{LastExit, Phase, PodHealth, PodRun, Role};

/// The wait before a restart: 1 s after the first exit, doubling with each
/// exit in a row, at most 30 s (a kubelet's 10 s … 5 min, scaled to a mesh
/// on one host). The workspace's backoff with the jitter off, on purpose:
/// one supervisor per mesh restarts its own pods, so there is no fleet to
/// spread out, and `status` shows the wait as the schedule says.
pub(crate) const RESTART: Exponential =
    Exponential::new(Duration::from_secs(1), Duration::from_secs(30));
/// Exits in a row after which a pod is failed rather than restarted.
pub(crate) const RESTART_LIMIT: u32 = 5;
/// A process that ran this long before exiting starts a new count of
/// exits in a row.
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(60);

/// How long the restart after the `crashes`-th exit in a row waits: the
/// ceiling of [`RESTART`] (no jitter).
pub(crate) fn backoff(crashes: u32) -> Duration {
    RESTART.ceiling(crashes.saturating_sub(1))
}

/// A process of the pod exited at `now_ms` (`role`, described by
/// `status`): the pod restarts after a backoff, or fails past the limit.
pub(crate) fn on_exit(h: &PodHealth, role: Role, status: String, now_ms: u64) -> PodHealth {
    let ran_for = now_ms.saturating_sub(h.started_unix_ms);
    let stable = h.state == PodRun::Running && ran_for >= millis(STABLE_AFTER);
    let crashes = if stable { 1 } else { h.crashes + 1 };
    let mut n = h.clone();
    n.crashes = crashes;
    n.last_exit = Some(LastExit {
        role,
        status,
        at_unix_ms: now_ms,
    });
    if crashes > RESTART_LIMIT {
        n.state = PodRun::Failed;
        n.restart_at_unix_ms = None;
    } else {
        n.state = PodRun::Restarting;
        n.restart_at_unix_ms = Some(now_ms + millis(backoff(crashes)));
    }
    n
}

/// The exited processes were started again at `now_ms`; the pod stays out
/// of its services until it is ready.
pub(crate) fn on_restarted(h: &PodHealth, now_ms: u64) -> PodHealth {
    let mut n = h.clone();
    n.restarts += 1;
    n.restart_at_unix_ms = None;
    n.started_unix_ms = now_ms;
    n
}

/// The pods (network namespaces) that are out of their services.
pub(crate) fn not_ready(health: &BTreeMap<String, PodHealth>) -> BTreeSet<String> {
    health
        .iter()
        .filter(|(_, h)| h.state != PodRun::Running)
        .map(|(netns, _)| netns.clone())
        .collect()
}

/// The mesh's phase as `status` and `list` show it: `degraded` when it is
/// ready but a pod is restarting or failed.
pub(crate) fn shown_phase(phase: Phase, health: &BTreeMap<String, PodHealth>) -> &'static str {
    match phase {
        Phase::Ready if health.values().any(|h| h.state == PodRun::Failed) => "failed",
        Phase::Ready if !not_ready(health).is_empty() => "degraded",
        Phase::Ready => "ready",
        Phase::Creating => "creating",
        Phase::Deleting => "deleting",
        Phase::Applying => "applying",
    }
}

/// `exit status 3`, `signal 9 (SIGKILL)`.
pub(crate) fn describe_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => match nix::sys::signal::Signal::try_from(s) {
            Ok(sig) => format!("signal {s} ({})", sig.as_str()),
            Err(_) => format!("signal {s}"),
        },
        (None, None) => "exited (status unknown)".to_string(),
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
