//! What the proxy waits for before it serves traffic, and what `/ready`
//! says meanwhile.
//!
//! The admin server answers from the first moment. The data-plane
//! listeners are bound at once but accept nothing (connections wait in
//! their backlog) until every [`Awaited`] dependency has arrived:
//!
//! - the workload certificate, when the proxy has an identity service;
//! - this pod's inbound policy, when it has a controller (a default could
//!   be weaker than the real policy).
//!
//! Until then `/ready` answers 503 naming each one still missing and the
//! last error met fetching it, `/live` 200, and `/identity` why there is no
//! certificate yet. Once everything has arrived and the listeners serve,
//! `/ready` answers 200; once shutdown begins, 503 again. A dependency that
//! arrived stays arrived: a failed renewal or a broken policy stream later
//! leaves the proxy serving on what it has.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// Something the proxy must have before it serves traffic.
pub struct Awaited {
    /// What it is and where it comes from, e.g. `inbound policy from the
    /// controller at 10.0.0.2:7156`.
    what: String,
    state: watch::Sender<State>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Waiting { last_error: Option<String> },
    Arrived,
}

impl Awaited {
    pub fn new(what: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            what: what.into(),
            state: watch::Sender::new(State::Waiting { last_error: None }),
        })
    }

    /// It has arrived.
    pub fn arrived(&self) {
        self.state.send_if_modified(|s| {
            let changed = *s != State::Arrived;
            *s = State::Arrived;
            changed
        });
    }

    /// An attempt to get it failed: `error` is what `/ready` shows while it
    /// is still awaited (one line). Nothing changes once it has arrived.
    pub fn failed(&self, error: &dyn fmt::Display) {
        let error = one_line(&error.to_string());
        self.state.send_if_modified(|s| match s {
            State::Waiting { last_error } => {
                *last_error = Some(error);
                true
            }
            State::Arrived => false,
        });
    }

    /// The last error met while it is awaited; `None` once it arrived or
    /// when no attempt failed yet.
    pub fn last_error(&self) -> Option<String> {
        match &*self.state.borrow() {
            State::Waiting { last_error } => last_error.clone(),
            State::Arrived => None,
        }
    }

    /// Resolves once it has arrived.
    pub async fn wait(&self) {
        let mut rx = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = rx.wait_for(|s| *s == State::Arrived).await;
    }

    /// `what (last error: …)` while awaited, `None` once arrived.
    fn pending(&self) -> Option<String> {
        match &*self.state.borrow() {
            State::Arrived => None,
            State::Waiting { last_error: None } => Some(self.what.clone()),
            State::Waiting {
                last_error: Some(e),
            } => Some(format!("{} (last error: {e})", self.what)),
        }
    }
}

/// Where the proxy is in its life, as `/ready` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Waiting for its dependencies, or about to start accepting.
    Starting = 0,
    /// Every listener accepts.
    Serving = 1,
    /// Shutdown has begun.
    Stopping = 2,
}

/// The proxy's dependencies and its phase; `/ready` reads [`Startup::check`].
pub struct Startup {
    /// The workload certificate, when the proxy has an identity service.
    pub certificate: Option<Arc<Awaited>>,
    /// The inbound policy, when the proxy has a controller.
    pub policy: Option<Arc<Awaited>>,
    phase: AtomicU8,
}

impl Startup {
    pub fn new(certificate: Option<Arc<Awaited>>, policy: Option<Arc<Awaited>>) -> Self {
        Self {
            certificate,
            policy,
            phase: AtomicU8::new(Phase::Starting as u8),
        }
    }

    fn awaited(&self) -> impl Iterator<Item = &Arc<Awaited>> {
        self.certificate.iter().chain(&self.policy)
    }

    /// Resolves once every dependency has arrived (at once without any).
    pub async fn arrived(&self) {
        for a in self.awaited() {
            a.wait().await;
        }
    }

    /// The listeners accept: `/ready` answers 200.
    pub fn serving(&self) {
        // Shutdown may have begun meanwhile: it wins.
        let _ = self.phase.compare_exchange(
            Phase::Starting as u8,
            Phase::Serving as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Shutdown has begun: `/ready` answers 503 from now on.
    pub fn stopping(&self) {
        self.phase.store(Phase::Stopping as u8, Ordering::Release);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Stopping,
        }
    }

    /// `Ok` when the proxy serves; otherwise the one-line reason `/ready`
    /// answers 503 with.
    pub fn check(&self) -> Result<(), String> {
        match self.phase() {
            Phase::Serving => Ok(()),
            Phase::Stopping => Err("not ready: shutting down".into()),
            Phase::Starting => {
                let pending: Vec<String> = self.awaited().filter_map(|a| a.pending()).collect();
                if pending.is_empty() {
                    Err("not ready: starting the listeners".into())
                } else {
                    Err(format!("not ready, waiting for: {}", pending.join("; ")))
                }
            }
        }
    }
}

/// `text` on one line: a `/ready` body is one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup() -> Startup {
        Startup::new(
            Some(Awaited::new(
                "workload certificate from the identity service at id:1",
            )),
            Some(Awaited::new("inbound policy from the controller at ctl:2")),
        )
    }

    #[test]
    fn ready_names_what_is_missing_with_its_last_error() {
        let s = startup();
        assert_eq!(
            s.check().unwrap_err(),
            "not ready, waiting for: workload certificate from the identity service at id:1; \
             inbound policy from the controller at ctl:2"
        );
        let cert = s.certificate.clone().unwrap();
        cert.failed(&"connecting:\n  refused");
        assert_eq!(cert.last_error().as_deref(), Some("connecting: refused"));
        assert_eq!(
            s.check().unwrap_err(),
            "not ready, waiting for: workload certificate from the identity service at id:1 \
             (last error: connecting: refused); inbound policy from the controller at ctl:2"
        );
        s.policy.as_ref().unwrap().arrived();
        assert_eq!(
            s.check().unwrap_err(),
            "not ready, waiting for: workload certificate from the identity service at id:1 \
             (last error: connecting: refused)"
        );
        cert.arrived();
        // Arrived: a later error is not shown, and nothing is missing.
        cert.failed(&"renewal failed");
        assert_eq!(cert.last_error(), None);
        assert_eq!(s.check().unwrap_err(), "not ready: starting the listeners");
        s.serving();
        assert_eq!(s.check(), Ok(()));
        s.stopping();
        assert_eq!(s.check().unwrap_err(), "not ready: shutting down");
        // Shutdown wins over a late `serving`.
        s.serving();
        assert_eq!(s.check().unwrap_err(), "not ready: shutting down");
    }

    #[tokio::test(start_paused = true)]
    async fn arrived_waits_for_every_dependency() {
        let s = Arc::new(startup());
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.arrived().await })
        };
        s.policy.as_ref().unwrap().arrived();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        s.certificate.as_ref().unwrap().arrived();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("arrived once both are there")
            .unwrap();
        // Without dependencies there is nothing to wait for.
        Startup::new(None, None).arrived().await;
    }
}
