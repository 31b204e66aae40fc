//! The file source: a file of Kubernetes objects, re-read when it changes.
//!
//! The file is a Kubernetes `List` (`apiVersion: v1`, `kind: List`,
//! `items: [...]`) in YAML or JSON, or a multi-document YAML stream of
//! objects (each document may itself be a `List`). Every object is one of:
//!
//! | apiVersion | kind |
//! |---|---|
//! | `v1` | `Namespace`, `Pod`, `Service` |
//! | `discovery.k8s.io/v1` | `EndpointSlice` |
//! | `gateway.networking.k8s.io/v1` | `HTTPRoute`, `GRPCRoute` |
//! | `policy.trellis.dev/v1alpha1` | `AuthorizationPolicy` |
//!
//! A namespaced object without `metadata.namespace` is in `default`, as
//! with kubectl. Anything else — another kind, an object without a name,
//! two objects of one kind with one name, a field of the wrong type —
//! refuses the whole file: it is logged and counted, and the last good
//! state stays in force. The file's hash is checked every poll interval
//! (250 ms by default); only a changed file is parsed. Writers should
//! replace the file atomically (write a temporary file, then rename), or a
//! half-written file may be seen, refused, and taken on the next poll.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use trellis_core::shutdown::Shutdown;

use super::Source;
use crate::crd::AuthorizationPolicy;
use crate::metrics::Metrics;
use crate::objects::{Kind, Object, Objects, Watched};
use crate::store::Store;

/// Why a file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("document {doc}: not YAML or JSON: {source}")]
    Syntax {
        doc: usize,
        source: serde_yaml_ng::Error,
    },
    #[error("{at}: {message}")]
    Object { at: String, message: String },
}

/// Reads the objects of a file's text. Pure.
///
/// Each item is projected (`objects::project`) as soon as it is read, its
/// JSON dropped: the whole file is never held twice.
pub fn parse(text: &str) -> Result<Objects, FileError> {
    let mut items = Items::default();
    // A JSON object (`kubectl get -o json`) is read by the JSON parser,
    // several times leaner than the YAML parser's events for a large file;
    // anything else, or JSON it refuses, by the YAML parser.
    if text.trim_start().starts_with('{') {
        if let Ok(value) = serde_json::from_str::<Value>(text) {
            items.document(1, value);
            return items.finish();
        }
    }
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value =
            Value::deserialize(doc).map_err(|source| FileError::Syntax { doc: i + 1, source })?;
        items.document(i + 1, value);
    }
    // A syntax error anywhere comes first (returned above); then the
    // first object refused.
    items.finish()
}

/// The objects read so far, and the first one refused.
#[derive(Default)]
struct Items {
    seen: BTreeSet<(Kind, crate::objects::Key)>,
    objects: Objects,
    refused: Option<FileError>,
}

impl Items {
    /// Document `n` (from 1): an object, a `List` of them, or nothing.
    fn document(&mut self, n: usize, value: Value) {
        let at = format!("document {n}");
        match value {
            Value::Null => {}
            v if v.get("kind").and_then(Value::as_str) == Some("List") => {
                let list = match v {
                    Value::Object(mut m) => m.remove("items"),
                    _ => None,
                };
                let list = list.unwrap_or(Value::Array(Vec::new()));
                let Value::Array(list) = list else {
                    return self.refuse(FileError::Object {
                        at,
                        message: "`items` of a List must be a sequence".into(),
                    });
                };
                for (j, item) in list.into_iter().enumerate() {
                    self.add(format!("{at}, items[{j}]"), item);
                }
            }
            v => self.add(at, v),
        }
    }

    fn finish(self) -> Result<Objects, FileError> {
        match self.refused {
            Some(e) => Err(e),
            None => Ok(self.objects),
        }
    }

    fn add(&mut self, at: String, item: Value) {
        if self.refused.is_some() {
            return;
        }
        let o = match object(&at, item) {
            Ok(o) => o,
            Err(e) => return self.refuse(e),
        };
        let (kind, key) = (o.kind(), o.key());
        if !self.seen.insert((kind, key.clone())) {
            return self.refuse(FileError::Object {
                at,
                message: format!("a second {kind} {key}"),
            });
        }
        self.objects.insert(o);
    }

    fn refuse(&mut self, e: FileError) {
        self.refused.get_or_insert(e);
    }
}

/// One item: its apiVersion and kind say its type.
fn object(at: &str, mut v: Value) -> Result<Object, FileError> {
    let err = |message: String| FileError::Object {
        at: at.to_string(),
        message,
    };
    if !v.is_object() {
        return Err(err(
            "not an object (a mapping with apiVersion and kind)".into()
        ));
    }
    let api_version = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let kind_name = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind_name && k.api_version() == api_version)
        .ok_or_else(|| {
            err(format!(
                "{api_version:?} {kind_name:?} is not a kind the controller reads (Namespace, Pod, Service: v1; EndpointSlice: discovery.k8s.io/v1; HTTPRoute, GRPCRoute: gateway.networking.k8s.io/v1; AuthorizationPolicy: policy.trellis.dev/v1alpha1)"
            ))
        })?;
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err(format!("a {kind} without metadata.name")))?
        .to_string();
    if kind.namespaced() && v.pointer("/metadata/namespace").is_none_or(Value::is_null) {
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("namespace".into(), Value::String("default".into()));
        }
    }
    let at = |e: serde_json::Error| err(format!("{kind} {name}: {e}"));
    Ok(match kind {
        Kind::Namespace => typed::<Namespace>(v).map_err(at)?,
        Kind::Pod => typed::<Pod>(v).map_err(at)?,
        Kind::Service => typed::<Service>(v).map_err(at)?,
        Kind::EndpointSlice => typed::<EndpointSlice>(v).map_err(at)?,
        Kind::HttpRoute => typed::<HttpRoute>(v).map_err(at)?,
        Kind::GrpcRoute => typed::<GrpcRoute>(v).map_err(at)?,
        Kind::AuthorizationPolicy => typed::<AuthorizationPolicy>(v).map_err(at)?,
    })
}

fn typed<K: Watched>(v: Value) -> Result<Object, serde_json::Error> {
    serde_json::from_value::<K>(v).map(K::into_object)
}

/// Watches one file of objects.
pub struct FileSource {
    path: PathBuf,
    interval: Duration,
}

impl FileSource {
    pub fn new(path: &Path, interval: Duration) -> Self {
        Self {
            path: path.to_path_buf(),
            interval,
        }
    }
}

impl Source for FileSource {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn run(self, store: Arc<Store>, metrics: Arc<Metrics>, shutdown: Shutdown) {
        let path = self.path.display().to_string();
        let mut seen: Option<[u8; 32]> = None;
        let mut read_error: Option<String> = None;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.signaled() => return,
                _ = tick.tick() => {}
            }
            let bytes = match tokio::fs::read(&self.path).await {
                Ok(b) => {
                    read_error = None;
                    b
                }
                Err(e) => {
                    // Once per distinct failure, not once per poll.
                    let e = e.to_string();
                    if read_error.as_ref() != Some(&e) {
                        tracing::warn!(file = %path, error = %e, "cannot read the objects file; keeping the last good state");
                        metrics.source_error("file", "read");
                        read_error = Some(e);
                    }
                    continue;
                }
            };
            let hash: [u8; 32] = Sha256::digest(&bytes).into();
            if seen == Some(hash) {
                continue;
            }
            seen = Some(hash);
            let parsed = std::str::from_utf8(&bytes)
                .map_err(|e| format!("not UTF-8: {e}"))
                .and_then(|text| parse(text).map_err(|e| e.to_string()));
            match parsed {
                Ok(objects) => {
                    let counts: Vec<String> = Kind::ALL
                        .iter()
                        .map(|k| format!("{}={}", k.as_str(), objects.count(*k)))
                        .collect();
                    tracing::info!(file = %path, objects = %counts.join(","), "objects file loaded");
                    metrics.file_reload(true);
                    store.replace_all(objects);
                }
                Err(e) => {
                    tracing::warn!(file = %path, error = %e, "objects file refused; keeping the last good state");
                    metrics.file_reload(false);
                    metrics.source_error("file", "parse");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
