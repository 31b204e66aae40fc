//! Keeping `trellis-cni` chained until the installer is told to stop.
//!
//! The primary plugin's own installer rewrites its configuration when it
//! restarts or upgrades, without our entry; a new primary plugin may drop a
//! file that sorts first. So every `--poll-interval` (1 s) a pass does the
//! whole installation again: it costs one directory listing, a read of the
//! primary configuration, of the token and the CA bundle, and a `stat` of
//! the binary, and writes nothing unless something changed. Polling rather
//! than inotify: no further dependency, nothing to miss when a writer
//! replaces the directory or the mount, and a second is well within how
//! soon a restarted primary plugin is followed by a pod.
//!
//! The passes run on a blocking thread (file IO); a stop message (sent on
//! SIGTERM or SIGINT) ends the wait between two passes at once. Then, unless
//! `--once`, the installation is undone.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use trellis_core::shutdown::Shutdown;

use super::files::Outcome;
use super::node::{Chained, Check, Installer};
use super::InstallError;

/// How often a still-missing network configuration is logged again.
const WAITING_REPORT: Duration = Duration::from_secs(10);

/// How the watch runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch {
    /// Between two passes.
    pub poll: Duration,
    /// Stop after the first pass that leaves the entry chained, and do not
    /// uninstall.
    pub once: bool,
}

/// Installs, then keeps the entry chained until `shutdown`, then
/// uninstalls (see the module doc).
///
/// `staying` is asked once shutdown begins: `true` leaves everything in
/// place (an update of the installer, not its removal).
pub(crate) async fn run<S, F>(
    installer: Installer,
    watch: Watch,
    shutdown: Shutdown,
    staying: S,
) -> Result<(), InstallError>
where
    S: FnOnce() -> F,
    F: std::future::Future<Output = bool>,
{
    let (stop, stopped) = mpsc::channel();
    let mut passes = tokio::task::spawn_blocking(move || keep(&installer, watch, &stopped));
    let ended = tokio::select! {
        ended = &mut passes => ended,
        () = shutdown.signaled() => {
            let stay = staying().await;
            // The thread may have ended already: nothing then listens.
            let _ = stop.send(Stop { uninstall: !stay });
            passes.await
        }
    };
    ended.map_err(|e| InstallError::Watch(e.to_string()))?
}

/// The blocking loop: a first pass that must succeed (binary and
/// credentials; a failure there is the node's or the flags' and ends the
/// installer), then passes until `stop`.
/// What the loop does once told to stop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stop {
    pub uninstall: bool,
}

fn keep(installer: &Installer, watch: Watch, stop: &Receiver<Stop>) -> Result<(), InstallError> {
    installer.prepare(Check::Content)?;
    let mut progress = Progress::default();
    let last = loop {
        let pass = installer
            .prepare(Check::Size)
            .and_then(|()| installer.chain());
        progress.record(&pass, watch.poll);
        if watch.once && pass.is_ok() {
            return Ok(());
        }
        match stop.recv_timeout(watch.poll) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(stop) => break (pass, stop),
            Err(RecvTimeoutError::Disconnected) => break (pass, Stop { uninstall: true }),
        }
    };
    let (last, stop) = last;
    if watch.once {
        // Stopped before the entry was chained: say why.
        return last.map(|_| ());
    }
    if !stop.uninstall {
        return Ok(());
    }
    installer.dirs.uninstall()
}

/// What the watch last logged, so that each state is logged once rather
/// than every pass.
#[derive(Debug, Default)]
struct Progress {
    chained: Option<PathBuf>,
    waiting: Option<Waiting>,
    error: Option<String>,
}

#[derive(Debug)]
struct Waiting {
    since: Instant,
    reported: Instant,
}

impl Progress {
    fn record(&mut self, pass: &Result<Chained, InstallError>, poll: Duration) {
        match pass {
            Ok(chained) => self.chained(chained),
            Err(InstallError::NoNetworkConfig { dir }) => {
                self.chained = None;
                self.error = None;
                self.waiting(dir);
            }
            Err(e) => {
                self.chained = None;
                self.waiting = None;
                self.failed(e, poll);
            }
        }
    }

    fn chained(&mut self, chained: &Chained) {
        let path = &chained.path;
        let written = chained.outcome == Outcome::Written;
        if written || self.chained.as_ref() != Some(path) {
            tracing::info!(path = %path.display(), written, "trellis-cni is chained");
        }
        self.chained = Some(path.clone());
        self.waiting = None;
        self.error = None;
    }

    fn waiting(&mut self, dir: &Path) {
        let now = Instant::now();
        match &mut self.waiting {
            None => {
                tracing::info!(dir = %dir.display(), "waiting for the primary CNI plugin's network configuration");
                self.waiting = Some(Waiting {
                    since: now,
                    reported: now,
                });
            }
            Some(w) if now - w.reported >= WAITING_REPORT => {
                tracing::info!(dir = %dir.display(), waited_s = (now - w.since).as_secs(), "still waiting for a network configuration");
                w.reported = now;
            }
            Some(_) => {}
        }
    }

    fn failed(&mut self, e: &InstallError, poll: Duration) {
        let message = e.to_string();
        if self.error.as_ref() != Some(&message) {
            tracing::warn!(error = %message, reason = e.reason(), retry_in = ?poll, "installing failed; retrying");
            self.error = Some(message);
        }
    }
}
