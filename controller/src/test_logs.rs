//! Test support: the log lines a test's own code emits, captured through
//! a subscriber set for the test's thread (a current-thread tokio test
//! runs every task there), filtered as the binary filters them.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;

/// The captured lines.
#[derive(Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures INFO and above (kube-client and kube-runtime at ERROR, as
    /// the controller's default filter has them) until the guard drops.
    pub(crate) fn capture() -> (Self, DefaultGuard) {
        // tracing caches each callsite's interest once, process-wide. With a
        // single registered dispatcher (this test's), a callsite first hit
        // by another test's thread, which has no subscriber, is cached as
        // "never" and this test would see nothing (tokio-rs/tracing#3611).
        // A global subscriber that records nothing keeps two dispatchers
        // registered, so interest is asked of both.
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
        });
        let logs = Logs::default();
        let writer = logs.clone();
        let filter =
            tracing_subscriber::EnvFilter::new(format!("info,{}", crate::config::QUIET_KUBE));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Lines holding every one of `needles`.
    pub(crate) fn count(&self, needles: &[&str]) -> usize {
        self.lines()
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }
}
