//! Helpers of the controller's component tests: temporary directories,
//! the controller started in-process with the file source, and a tiny
//! HTTP client for the admin server.

#![allow(dead_code)] // each test file uses a part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use trellis_api::discovery::v1::discovery_client::DiscoveryClient;
use trellis_controller::config::Config;
use trellis_controller::{Controller, Snapshot};
use trellis_core::config::MapSource;
use trellis_core::shutdown::Shutdown;

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "trellis-controller-it-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Replaces `name` atomically (write, then rename).
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `check` every 10 ms for at most 5 s.
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
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

/// The controller running in-process with the file source.
pub struct Running {
    pub dir: TempDir,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: Arc<trellis_controller::metrics::Metrics>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<Result<(), trellis_controller::ServeError>>,
}

pub const FILE: &str = "objects.yaml";

/// Starts the controller on 127.0.0.1:0 with the file source reading
/// `objects.yaml` in a fresh directory (written first when `objects` is
/// given), at the default poll interval.
pub async fn start(tag: &str, objects: Option<&str>, extra: &[(&str, &str)]) -> Running {
    let dir = TempDir::new(tag);
    if let Some(text) = objects {
        dir.write(FILE, text);
    }
    let file = dir.path().join(FILE).display().to_string();
    let mut vars = vec![
        ("TRELLIS_CONTROLLER_SOURCE", "file"),
        ("TRELLIS_CONTROLLER_FILE", file.as_str()),
        ("TRELLIS_CONTROLLER_LISTEN", "127.0.0.1:0"),
        ("TRELLIS_CONTROLLER_ADMIN_LISTEN", "127.0.0.1:0"),
    ];
    vars.extend_from_slice(extra);
    let config = Config::from_source(&MapSource::new(vars)).unwrap();
    let source = trellis_controller::source_from_config(&config)
        .await
        .unwrap();
    let controller = Controller::bind(config).await.unwrap();
    let shutdown = Shutdown::new();
    Running {
        grpc: controller.local_addr(),
        admin: controller.admin_addr(),
        metrics: controller.metrics(),
        snapshots: controller.snapshots(),
        task: tokio::spawn(controller.run(source, shutdown.clone())),
        shutdown,
        dir,
    }
}

impl Running {
    pub async fn client(&self) -> DiscoveryClient<tonic::transport::Channel> {
        DiscoveryClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    /// Waits (bounded) until a published snapshot satisfies `check`.
    pub async fn snapshot_where(&mut self, what: &str, check: impl Fn(&Snapshot) -> bool) {
        let wait = self.snapshots.wait_for(|s| check(s));
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap();
    }

    /// GET on the admin server: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }
}

/// A minimal HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
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
