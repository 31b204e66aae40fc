//! The one shutdown mechanism for every listener and task.
//!
//! A [`Shutdown`] is cloned into every accept loop and connection task. On
//! [`Shutdown::begin`], accept loops stop, connections finish what they are
//! doing (HTTP connections shut down gracefully), and
//! [`Shutdown::drained`] waits for all tracked tasks within a grace period.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts shutting down: accept loops stop, tasks are asked to finish.
    pub fn begin(&self) {
        self.tasks.close();
        self.token.cancel();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has begun.
    pub async fn signaled(&self) {
        self.token.cancelled().await
    }

    /// Spawns a task that shutdown waits for.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(fut)
    }

    /// Waits for every tracked task to end, at most `grace`. Returns the
    /// number of tasks still running when the grace period ran out.
    pub async fn drained(&self, grace: Duration) -> usize {
        self.tasks.close();
        match tokio::time::timeout(grace, self.tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tasks.len(),
        }
    }

    /// Tasks still running.
    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drains_tasks_within_grace() {
        let s = Shutdown::new();
        let s2 = s.clone();
        s.spawn(async move {
            s2.signaled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        s.spawn(std::future::pending::<()>());
        s.begin();
        assert!(s.is_shutting_down());
        assert_eq!(s.drained(Duration::from_secs(5)).await, 1);
    }
}
