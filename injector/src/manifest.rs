//! `trellis inject`: a manifest with every pod template injected by the
//! webhook's own decision and patch ([`crate::inject`]).
//!
//! Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs
//! and `List`s of them are injected; other objects pass through unchanged.
//! Injection is what the user asked for, so a namespace without the
//! `trellis.dev/inject` annotation counts as enabled; a pod that says
//! `disabled`, a namespace that says `disabled`, and every other reason the
//! webhook would leave a pod alone still apply. Namespaces defined in the
//! same manifest lend their annotations and labels (the overrides) to the
//! objects in them.
//!
//! The patch is applied to the template as written, so fields this
//! program's Kubernetes types do not know are kept.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::InjectorConfig;
use crate::inject::{inject, NamespaceInfo, Outcome, SkipReason, INJECT_ANNOTATION};

/// What happened to one pod template.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateResult {
    /// `kind/name` (with the document's position when unnamed).
    pub object: String,
    pub namespace: String,
    /// `None`: injected.
    pub skipped: Option<SkipReason>,
}

impl fmt::Display for TemplateResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.skipped {
            None => write!(
                f,
                "{} (namespace {}): injected",
                self.object, self.namespace
            ),
            Some(r) => write!(
                f,
                "{} (namespace {}): skipped: {r}",
                self.object, self.namespace
            ),
        }
    }
}

/// The injected manifest and one result per pod template.
#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    pub yaml: String,
    pub results: Vec<TemplateResult>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("document {doc}: not YAML this program can read: {reason}")]
    Yaml { doc: usize, reason: String },
    #[error("document {doc} ({object}): {reason}")]
    Object {
        doc: usize,
        object: String,
        reason: String,
    },
    #[error("the manifest has no documents")]
    Empty,
}

/// Injects every pod template of a (multi-document) YAML manifest.
/// `default_namespace` is used for objects that name none.
pub fn inject_manifest(
    text: &str,
    cfg: &InjectorConfig,
    default_namespace: &str,
) -> Result<Injected, ManifestError> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(de).map_err(|e| ManifestError::Yaml {
            doc: i + 1,
            reason: e.to_string(),
        })?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    if docs.is_empty() {
        return Err(ManifestError::Empty);
    }
    let namespaces = namespaces(&docs);
    let mut results = Vec::new();
    let mut out = Vec::new();
    for (i, mut doc) in docs.into_iter().enumerate() {
        let mut ctx = Ctx {
            doc: i + 1,
            cfg,
            namespaces: &namespaces,
            default_namespace,
            results: &mut results,
        };
        ctx.object(&mut doc)?;
        let yaml = serde_yaml_ng::to_string(&doc).map_err(|e| ManifestError::Yaml {
            doc: i + 1,
            reason: e.to_string(),
        })?;
        out.push(yaml);
    }
    Ok(Injected {
        yaml: out.join("---\n"),
        results,
    })
}

/// Namespaces defined in the manifest, by name.
fn namespaces(docs: &[Value]) -> BTreeMap<String, NamespaceInfo> {
    let strings = |v: Option<&Value>| -> BTreeMap<String, String> {
        v.and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    };
    docs.iter()
        .filter(|d| d["kind"] == "Namespace" && d["apiVersion"] == "v1")
        .filter_map(|d| {
            let meta = &d["metadata"];
            let name = meta["name"].as_str()?.to_string();
            Some((
                name.clone(),
                NamespaceInfo {
                    name,
                    labels: strings(meta.get("labels")),
                    annotations: strings(meta.get("annotations")),
                },
            ))
        })
        .collect()
}

struct Ctx<'a> {
    doc: usize,
    cfg: &'a InjectorConfig,
    namespaces: &'a BTreeMap<String, NamespaceInfo>,
    default_namespace: &'a str,
    results: &'a mut Vec<TemplateResult>,
}

impl Ctx<'_> {
    fn object(&mut self, doc: &mut Value) -> Result<(), ManifestError> {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let api = doc["apiVersion"].as_str().unwrap_or_default().to_string();
        let template: &[&str] = match (api.as_str(), kind.as_str()) {
            ("v1", "List") => {
                if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
                    for item in items {
                        self.object(item)?;
                    }
                }
                return Ok(());
            }
            ("v1", "Pod") => &[],
            ("apps/v1", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
            | ("batch/v1", "Job") => &["spec", "template"],
            ("batch/v1", "CronJob") => &["spec", "jobTemplate", "spec", "template"],
            _ => return Ok(()),
        };
        let name = doc["metadata"]["name"]
            .as_str()
            .map_or_else(|| format!("(document {})", self.doc), str::to_string);
        let object = format!("{}/{name}", kind.to_lowercase());
        let namespace = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or(self.default_namespace)
            .to_string();
        let err = |reason: String| ManifestError::Object {
            doc: self.doc,
            object: object.clone(),
            reason,
        };
        let mut target = doc;
        for key in template {
            target = target
                .get_mut(*key)
                .ok_or_else(|| err(format!("has no {}", template.join("."))))?;
        }
        let obj = target
            .as_object_mut()
            .ok_or_else(|| err("the pod template is not an object".into()))?;
        obj.entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        let pod_json = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": obj["metadata"],
            "spec": obj.get("spec").cloned().unwrap_or(Value::Null),
        });
        let pod: Pod = serde_json::from_value(pod_json)
            .map_err(|e| err(format!("not a valid pod template: {e}")))?;
        let mut ns = self
            .namespaces
            .get(&namespace)
            .cloned()
            .unwrap_or_else(|| NamespaceInfo {
                name: namespace.clone(),
                ..Default::default()
            });
        ns.annotations
            .entry(INJECT_ANNOTATION.to_string())
            .or_insert_with(|| "enabled".to_string());
        let skipped = match inject(&pod, &ns, self.cfg) {
            Outcome::Injected { patch, .. } => {
                json_patch::patch(target, &patch)
                    .map_err(|e| err(format!("the patch does not apply: {e}")))?;
                None
            }
            Outcome::Skipped(reason) => Some(reason),
        };
        self.results.push(TemplateResult {
            object,
            namespace,
            skipped,
        });
        Ok(())
    }
}
