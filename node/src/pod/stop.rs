//! The end of a pod: its containers stopped within the grace period,
//! sidecars last, then everything it had removed.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Preconditions};
use nix::sys::signal::Signal;
use tracing::warn;
use trellis_mesh::sys;

use super::{Event, Worker, MIN_GRACE};
use crate::network;

impl Worker {
    /// Signals container `i`'s process group (it leads one): the signal
    /// reaches the container's processes once each.
    pub(super) fn kill(&mut self, i: usize, sig: Signal) {
        let c = &mut self.containers[i];
        if let Some(pid) = c.pid {
            c.stopping = true;
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
            }
        }
    }

    /// Stops the containers: the regular ones first, then the sidecars in
    /// reverse order, within `grace`; what ignores SIGTERM gets SIGKILL
    /// when its time is up. As kubelet, a sidecar gets at least
    /// [`MIN_GRACE`] even when the containers used up the pod's grace.
    pub(super) async fn terminate(&mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        for c in &mut self.containers {
            c.stop_probes();
            c.ready = false;
            c.not_before = Some(Instant::now() + Duration::from_secs(3600));
        }
        self.report().await;
        // Regular init containers still running stop with the containers.
        let first: Vec<usize> = (0..self.containers.len())
            .filter(|i| !self.containers[*i].sidecar)
            .collect();
        self.stop_group(&first, deadline).await;
        let sidecars: Vec<usize> = (0..self.containers.len())
            .rev()
            .filter(|i| self.containers[*i].sidecar)
            .collect();
        for i in sidecars {
            let at_least = tokio::time::Instant::now() + MIN_GRACE;
            self.stop_group(&[i], deadline.max(at_least)).await;
        }
        // Anything else still in the namespace (a container's children).
        for pid in sys::pids_in_netns(&self.netns) {
            sys::signal(pid, Signal::SIGKILL);
        }
        self.report().await;
    }

    /// SIGTERM to each of `which`, SIGKILL to those still running at
    /// `deadline`, and their exits waited for.
    async fn stop_group(&mut self, which: &[usize], deadline: tokio::time::Instant) {
        for &i in which {
            self.kill(i, Signal::SIGTERM);
        }
        self.wait_exits(which, deadline).await;
        for &i in which {
            self.kill(i, Signal::SIGKILL);
        }
        self.wait_exits(which, tokio::time::Instant::now() + Duration::from_secs(5))
            .await;
    }

    async fn wait_exits(&mut self, which: &[usize], deadline: tokio::time::Instant) {
        while which.iter().any(|i| self.containers[*i].pid.is_some()) {
            match tokio::time::timeout_at(deadline, self.events_rx.recv()).await {
                Ok(Some(e @ Event::Exited { .. })) => self.handle(e).await,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Removes the pod's namespace, volumes and address, and deletes the
    /// pod object for good (if it still exists).
    pub(super) async fn finish(&mut self) {
        for c in &mut self.containers {
            c.stop_probes();
        }
        if self.containers.iter().any(|c| c.pid.is_some()) {
            // The agent is stopping, not the pod: leave it running.
            return;
        }
        let netns = self.netns.clone();
        let removed = tokio::task::spawn_blocking(move || network::remove_pod(&netns)).await;
        if let Ok(Err(e)) | Err(e) = removed.map_err(anyhow::Error::from) {
            warn!(pod = %self.name(), error = %format!("{e:#}"), "removing the pod's network");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(pod = %self.name(), error = %e, "removing the pod's files");
            }
        }
        self.shared.release(&self.netns);
        let pods: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.namespace());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        match pods.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => warn!(pod = %self.name(), error = %e, "deleting the pod object"),
        }
    }
}
