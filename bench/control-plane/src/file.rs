//! The file source: every object in one JSON `List`, rewritten (a
//! temporary file, then a rename) whenever the model changed. A change's
//! time zero is the rename of the first file that holds it; changes made
//! while a file is being written go into the next one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use crate::churn::{self, Change, Tally};
use crate::cluster::{Cluster, PODS_PER_SERVICE};
use crate::load::Load;

/// Each object's JSON, kept so that a change re-serializes only its
/// service's objects.
pub struct FileSink {
    path: PathBuf,
    namespaces: Vec<Arc<str>>,
    /// Per service: its Service, EndpointSlice, route, policy and pods.
    services: Mutex<Vec<Vec<Arc<str>>>>,
    pending: Mutex<Vec<Change>>,
    dirty: Notify,
}

fn text(v: &serde_json::Value) -> Arc<str> {
    Arc::from(v.to_string())
}

fn service_objects(c: &Cluster, i: usize) -> Vec<Arc<str>> {
    let s = &c.services[i];
    let mut out = vec![text(&c.service(s)), text(&c.slice(s))];
    out.extend(c.route(s).as_ref().map(text));
    out.extend(c.policy(s).as_ref().map(text));
    out.extend((0..PODS_PER_SERVICE).map(|slot| text(&c.pod_with_status(s, slot))));
    out
}

impl FileSink {
    pub fn new(path: &Path, c: &Cluster) -> FileSink {
        FileSink {
            path: path.to_path_buf(),
            namespaces: c.namespaces().iter().map(text).collect(),
            services: Mutex::new(
                (0..c.services.len())
                    .map(|i| service_objects(c, i))
                    .collect(),
            ),
            pending: Mutex::new(Vec::new()),
            dirty: Notify::new(),
        }
    }

    /// Writes the file as the model is now; returns its size in bytes.
    pub fn write(&self) -> anyhow::Result<usize> {
        let services = self
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.write_objects(&services)
    }

    fn write_objects(&self, services: &[Vec<Arc<str>>]) -> anyhow::Result<usize> {
        let mut out = String::with_capacity(256 << 20);
        out.push_str("{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[\n");
        let mut first = true;
        for o in self.namespaces.iter().chain(services.iter().flatten()) {
            if !first {
                out.push_str(",\n");
            }
            first = false;
            out.push_str(o);
        }
        out.push_str("\n]}\n");
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, out.as_bytes())?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(out.len())
    }

    /// Takes `change` (already made on `c`) into the next file.
    pub fn change(&self, c: &Cluster, change: Change) {
        let objects = service_objects(c, change.service);
        // Under the pending lock: a file holds exactly the changes of its
        // batch.
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        self.services.lock().unwrap_or_else(|p| p.into_inner())[change.service] = objects;
        pending.push(change);
        drop(pending);
        self.dirty.notify_one();
    }

    /// Rewrites the file whenever changes are pending, until `stop`; each
    /// change's waiter starts at the rename.
    pub async fn run(self: Arc<Self>, load: Arc<Load>, tally: Arc<Tally>, stop: Arc<Notify>) {
        loop {
            tokio::select! {
                () = self.dirty.notified() => {}
                () = stop.notified() => return,
            }
            let (batch, services) = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let services = self
                    .services
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                (std::mem::take(&mut *pending), services)
            };
            let me = self.clone();
            let written = tokio::task::spawn_blocking(move || me.write_objects(&services)).await;
            let t0 = Instant::now();
            if !matches!(written, Ok(Ok(_))) {
                eprintln!("[file] writing the objects file failed: {written:?}");
            }
            for change in batch {
                tokio::spawn(churn::await_change(change, t0, load.clone(), tally.clone()));
            }
        }
    }
}
