//! Ctrl-C (SIGINT) and SIGTERM as a flag that long-running steps check, so
//! `mesh up` and `demo` stop where they are and remove what they made.
//!
//! A thread runs a small tokio runtime whose signal streams set the flag.
//! Handlers (not a blocked mask, which children would inherit) keep the
//! processes we start in their default state: `exec` resets handlers. A
//! third signal gives up on cleaning up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

#[derive(Clone, Debug, Default)]
pub(crate) struct Interrupt {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    flag: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Interrupt {
    /// A flag nothing sets.
    #[cfg(test)]
    pub(crate) fn none() -> Self {
        Self::default()
    }

    /// Installs the SIGINT and SIGTERM handlers (before returning, so no
    /// signal is missed) and starts the thread that watches them.
    pub(crate) fn install() -> std::io::Result<Self> {
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
        let inner = this.inner.clone();
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            rt.block_on(async move {
                let mut count = 0;
                loop {
                    let name = tokio::select! {
                        Some(()) = int.recv() => "SIGINT",
                        Some(()) = term.recv() => "SIGTERM",
                        else => return,
                    };
                    count += 1;
                    match count {
                        1 => eprintln!("\n{name} received: stopping and removing what was made (twice more abandons cleanup)"),
                        2 => eprintln!("still cleaning up; one more signal abandons it"),
                        _ => {
                            eprintln!("cleanup abandoned; run `trellis mesh down` to remove what is left");
                            std::process::exit(130);
                        }
                    }
                    inner.flag.store(true, Ordering::SeqCst);
                    let _guard = inner.lock.lock();
                    inner.wake.notify_all();
                }
            })
        })?;
        Ok(this)
    }

    pub(crate) fn is_set(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
    }

    /// Sleeps for `d`, or less if interrupted; returns whether it was.
    pub(crate) fn sleep(&self, d: Duration) -> bool {
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
    pub(crate) fn trigger(&self) {
        self.inner.flag.store(true, Ordering::SeqCst);
        let _guard = self.inner.lock.lock();
        self.inner.wake.notify_all();
    }
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
        i.trigger();
        assert!(t.join().unwrap());
        assert!(i.is_set());
    }
}
