//! Helpers for the tests of every crate: temporary directories, bounded
//! polling, a plain HTTP GET. Behind the `test-support` feature, which
//! crates turn on from their dev-dependencies only.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long [`eventually`] and [`http_get`] wait before the test fails.
const BOUND: Duration = Duration::from_secs(10);

/// A new empty directory under the system's temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `trellis-<tag>-<pid>-<n>-<nanos>`: unique within the process and
    /// across runs.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "trellis-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path of `name` in the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Replaces `name` atomically (write, then rename), as a kubelet
    /// updates a mounted Secret and as writers of watched files should.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.join(name);
        let tmp = self.join(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `check` every 10 ms until it gives a value; the test fails when
/// 10 s pass without one.
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A minimal HTTP/1.1 GET: (status, body), or (0, "") when nothing
/// listens at `addr`.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(BOUND, s.read_to_string(&mut out))
        .await
        .expect("the response took more than 10 s")
        .unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dir_writes_and_goes() {
        let dir = TempDir::new("support");
        let other = TempDir::new("support");
        assert_ne!(dir.path(), other.path());
        let p = dir.write("a.txt", "one");
        assert_eq!(p, dir.join("a.txt"));
        dir.write("a.txt", "two");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert!(!dir.join(".a.txt.tmp").exists());
        let kept = dir.path().to_path_buf();
        drop(dir);
        assert!(!kept.exists());
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_returns_the_first_value() {
        let mut calls = 0;
        let v = eventually("the third call", async || {
            calls += 1;
            (calls == 3).then_some(calls)
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out waiting for never")]
    async fn eventually_fails_the_test_when_time_is_up() {
        eventually("never", async || None::<()>).await;
    }

    #[tokio::test]
    async fn http_get_reads_status_and_body() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 10\r\n\r\nnot ready\n",
            )
            .await
            .unwrap();
        });
        assert_eq!(http_get(addr, "/ready").await, (503, "not ready\n".into()));
    }
}
