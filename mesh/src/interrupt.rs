//! Ctrl-C (SIGINT) and SIGTERM as a flag that long-running steps check, so
//! `mesh up` and `demo` stop where they are and remove what they made, and
//! `mesh down` finishes its teardown.
//!
//! A thread runs a small tokio runtime whose signal streams set the flag.
//! Handlers (not a blocked mask, which children would inherit) keep the
//! processes we start in their default state: `exec` resets handlers. A
//! third signal gives up on cleaning up (exit 130).
//!
//! Ctrl-C at a terminal signals the whole foreground process group: a
//! `| tee` after us dies at the same moment, so stdout and stderr may be
//! closed pipes from then on. Nothing here (or on any cleanup path) uses
//! `println!`/`eprintln!`, which panic on a closed pipe: messages go
//! through `trellis_core::errln!`, which drops them, and the flag is set
//! before anything is printed. The processes the mesh runs are in process
//! groups of their own, so the terminal's signal reaches only us.
//!
//! [`Interrupt::finish`] closes the window between "done" and exiting: a
//! command that has decided to succeed claims the flag first, so a signal
//! either arrives before (and the command cleans up) or after (and is
//! told it came too late).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use trellis_core::errln;

/// The exit status of a command stopped by SIGINT or SIGTERM (128 + SIGINT,
/// as shells report a Ctrl-C).
pub const EXIT_INTERRUPTED: u8 = 130;

/// No signal yet.
const ARMED: u8 = 0;
/// A signal came: stop and clean up.
const SET: u8 = 1;
/// The command finished before any signal ([`Interrupt::finish`]).
const FINISHED: u8 = 2;

/// The error of a command that stopped because of a signal (after
/// removing what it made); `main` exits [`EXIT_INTERRUPTED`] for it.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

#[derive(Clone, Debug, Default)]
pub struct Interrupt {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: AtomicU8,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Interrupt {
    /// A flag nothing sets.
    #[cfg(test)]
    pub fn none() -> Self {
        Self::default()
    }

    /// Installs the SIGINT and SIGTERM handlers (before returning, so no
    /// signal is missed) and starts the thread that watches them. `doing`
    /// says what the command does on the first signal, e.g. "stopping and
    /// removing what was made".
    pub fn install(doing: &'static str) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let (mut int, mut term) = {
            let _ctx = rt.enter();
            (
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            )
        };
        let this = Self::default();
        let watched = this.clone();
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            rt.block_on(async move {
                let mut count = 0;
                loop {
                    let name = tokio::select! {
                        Some(()) = int.recv() => "SIGINT",
                        Some(()) = term.recv() => "SIGTERM",
                        else => return,
                    };
                    // First the flag, then words: stderr may be a closed pipe.
                    if !watched.set() {
                        errln!("\n{name} received after the command finished; nothing to stop");
                        continue;
                    }
                    count += 1;
                    match count {
                        1 => errln!("\n{name} received: {doing} (twice more abandons cleanup)"),
                        2 => errln!("still cleaning up; one more signal abandons it"),
                        _ => {
                            errln!("cleanup abandoned; run `trellis mesh down` to remove what is left");
                            std::process::exit(i32::from(EXIT_INTERRUPTED));
                        }
                    }
                }
            })
        })?;
        Ok(this)
    }

    /// Sets the flag and wakes sleepers, unless the command finished;
    /// returns whether the flag is set.
    fn set(&self) -> bool {
        let inner = &self.inner;
        let set = match inner
            .state
            .compare_exchange(ARMED, SET, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(now) => now == SET,
        };
        if set {
            let _guard = inner.lock.lock();
            inner.wake.notify_all();
        }
        set
    }

    /// Claims success: true if no signal came before (later ones are
    /// reported as too late and ignored), false if one did, and the
    /// command must clean up instead.
    pub fn finish(&self) -> bool {
        match self
            .inner
            .state
            .compare_exchange(ARMED, FINISHED, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(now) => now == FINISHED,
        }
    }

    pub fn is_set(&self) -> bool {
        self.inner.state.load(Ordering::SeqCst) == SET
    }

    /// `Err(Interrupted)` once a signal came.
    pub fn check(&self) -> Result<(), Interrupted> {
        if self.is_set() {
            return Err(Interrupted);
        }
        Ok(())
    }

    /// Sleeps for `d`, or less if interrupted; returns whether it was.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = std::time::Instant::now() + d;
        let Ok(mut guard) = self.inner.lock.lock() else {
            std::thread::sleep(d);
            return self.is_set();
        };
        while !self.is_set() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.inner.wake.wait_timeout(guard, left) {
                Ok((g, _)) => guard = g,
                Err(_) => break,
            }
        }
        self.is_set()
    }

    #[cfg(test)]
    pub fn trigger(&self) -> bool {
        self.set()
    }
}

/// What `up`, `apply` and `demo` do on Ctrl-C.
pub const UNDO: &str = "stopping and removing what was made";

/// `Err(Interrupted)` once a signal came, as an `anyhow` error.
pub(crate) fn interrupted(interrupt: &Interrupt) -> anyhow::Result<()> {
    Ok(interrupt.check()?)
}

/// `f`, with a panic turned into an error, so that whoever called it still
/// removes what was made (the panic's message is already on stderr).
pub fn no_panic<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("{what} panicked (a bug)")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn sleep_wakes_early_when_triggered() {
        let i = Interrupt::none();
        let start = Instant::now();
        assert!(!i.sleep(Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));
        let j = i.clone();
        let t = std::thread::spawn(move || j.sleep(Duration::from_secs(30)));
        assert!(i.trigger());
        assert!(t.join().unwrap());
        assert!(i.is_set());
        assert!(i.check().is_err());
        // Too late to finish: the command must clean up.
        assert!(!i.finish());
    }

    #[test]
    fn a_signal_after_finish_is_too_late() {
        let i = Interrupt::none();
        assert!(i.check().is_ok());
        assert!(i.finish());
        assert!(!i.trigger());
        assert!(!i.is_set());
        assert!(i.finish());
    }
}
