//! Helpers of the controller's component tests: the controller started
//! in-process with the file source; temporary directories, bounded polling
//! and a tiny HTTP client for the admin server (from
//! `trellis_core::test_support`).

#![allow(dead_code)] // each test file uses a part

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use trellis_api::discovery::v1::discovery_client::DiscoveryClient;
use trellis_controller::config::Config;
use trellis_controller::{Controller, Snapshot};
use trellis_core::config::MapSource;
use trellis_core::shutdown::Shutdown;
pub use trellis_core::test_support::{eventually, http_get, TempDir};

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
    let dir = TempDir::new(&format!("controller-it-{tag}"));
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
