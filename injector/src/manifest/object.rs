//! One object of a manifest: what it is ([`classify`]) and, for a pod
//! template, the injector's decision and patch applied to it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value as Json};
use serde_yaml_ng::Value as Yaml;

use super::{json_view, order, DocError, Outcome, Report, Unchanged};
use crate::config::InjectorConfig;
use crate::inject::{inject, NamespaceInfo, INJECT_ANNOTATION};

/// The kinds `trellis inject` injects: apiVersion, kind, and the path from
/// the object to its pod template (empty: the object is the pod).
pub const WORKLOADS: [(&str, &str, &[&str]); 7] = [
    ("v1", "Pod", &[]),
    ("apps/v1", "Deployment", &["spec", "template"]),
    ("apps/v1", "StatefulSet", &["spec", "template"]),
    ("apps/v1", "DaemonSet", &["spec", "template"]),
    ("apps/v1", "ReplicaSet", &["spec", "template"]),
    ("batch/v1", "Job", &["spec", "template"]),
    (
        "batch/v1",
        "CronJob",
        &["spec", "jobTemplate", "spec", "template"],
    ),
];

/// What an object is to `trellis inject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// A `v1` `List`: each item is an object.
    List,
    /// A workload; the path to its pod template.
    Workload(&'static [&'static str]),
    Unchanged(Unchanged),
}

/// Pure: from the object's `apiVersion`, `kind` and shape.
pub fn classify(obj: &Json) -> Class {
    let Some(kind) = obj.get("kind").and_then(Json::as_str) else {
        return Class::Unchanged(Unchanged::NotAnObject);
    };
    let api = obj.get("apiVersion").and_then(Json::as_str);
    let known = WORKLOADS
        .iter()
        .map(|(a, k, p)| (*a, *k, Class::Workload(p)))
        .chain([("v1", "List", Class::List)])
        .find(|(_, k, _)| *k == kind);
    match known {
        Some((expected, _, class)) if api == Some(expected) => class,
        Some((expected, _, _)) => Class::Unchanged(Unchanged::WrongApiVersion {
            api_version: api.map(str::to_string),
            expected,
        }),
        None if holds_pods(obj) => Class::Unchanged(Unchanged::UnknownKind {
            api_version: api.unwrap_or("(no apiVersion)").to_string(),
            kind: kind.to_string(),
        }),
        None => Class::Unchanged(Unchanged::NoPodTemplate),
    }
}

/// Whether an object looks like it holds pods: a pod template, a job
/// template, or containers of its own.
fn holds_pods(obj: &Json) -> bool {
    let spec = &obj["spec"];
    ["template", "jobTemplate", "containers"]
        .iter()
        .any(|k| spec.get(k).is_some())
}

/// Injection over a whole manifest: the namespaces it defines, and the
/// reports so far.
pub(super) struct Run<'a> {
    read: &'a [Result<Yaml, DocError>],
    cfg: &'a InjectorConfig,
    namespaces: BTreeMap<String, NamespaceInfo>,
    default_namespace: &'a str,
    pub(super) reports: Vec<Report>,
}

impl<'a> Run<'a> {
    pub(super) fn new(
        read: &'a [Result<Yaml, DocError>],
        cfg: &'a InjectorConfig,
        default_namespace: &'a str,
    ) -> Self {
        let views: Vec<Json> = read
            .iter()
            .filter_map(|d| d.as_ref().ok().and_then(|d| json_view(d).ok()))
            .collect();
        Run {
            read,
            cfg,
            namespaces: namespaces(&views),
            default_namespace,
            reports: Vec::new(),
        }
    }

    /// Document `n` (from 1), injected, or `None` when it is unchanged.
    pub(super) fn document(&mut self, n: usize) -> Option<Yaml> {
        let original = match &self.read[n - 1] {
            Ok(doc) => doc,
            Err(e) => {
                self.fail(n, e.clone());
                return None;
            }
        };
        let mut json = match json_view(original) {
            Ok(j) => j,
            Err(e) => {
                self.fail(n, e);
                return None;
            }
        };
        let mut scratch = Vec::new();
        let changed = self.object(n, &mut json, &mut scratch);
        self.reports.append(&mut scratch);
        changed.then(|| order::reorder(&json, Some(original)))
    }

    /// Reports document `n` as failed, in place of what was said of it.
    pub(super) fn fail(&mut self, n: usize, e: DocError) {
        let object = self.read[n - 1]
            .as_ref()
            .ok()
            .and_then(|d| json_view(d).ok())
            .map_or_else(|| "(unreadable)".to_string(), |j| object_name(&j));
        self.reports.retain(|r| r.doc != n);
        self.reports.push(Report {
            doc: n,
            object,
            namespace: None,
            outcome: Outcome::Failed(e),
        });
    }

    /// Injects one object (recursing into `List`s); whether it changed.
    fn object(&self, n: usize, obj: &mut Json, reports: &mut Vec<Report>) -> bool {
        let name = object_name(obj);
        let report = |namespace: Option<String>, outcome| Report {
            doc: n,
            object: name.clone(),
            namespace,
            outcome,
        };
        match classify(obj) {
            Class::List => {
                let mut changed = false;
                if let Some(items) = obj.get_mut("items").and_then(Json::as_array_mut) {
                    for item in items {
                        changed |= self.object(n, item, reports);
                    }
                }
                changed
            }
            Class::Unchanged(why) => {
                reports.push(report(None, Outcome::Unchanged(why)));
                false
            }
            Class::Workload(path) => {
                let namespace = obj["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or(self.default_namespace)
                    .to_string();
                let mut r = report(Some(namespace.clone()), Outcome::Injected);
                let changed = match self.workload(obj, path, &namespace) {
                    Ok(outcome) => {
                        let changed = matches!(
                            outcome,
                            Outcome::Injected | Outcome::Floored(_) | Outcome::PodSecurity { .. }
                        );
                        r.outcome = outcome;
                        changed
                    }
                    Err(e) => {
                        r.outcome = Outcome::Failed(e);
                        r.namespace = None;
                        false
                    }
                };
                reports.push(r);
                changed
            }
        }
    }

    /// Injects the pod template at `path`; what the injector decided. On
    /// error, a skip or a refusal, `obj` is unchanged.
    fn workload(
        &self,
        obj: &mut Json,
        path: &[&str],
        namespace: &str,
    ) -> Result<Outcome, DocError> {
        let mut target = obj;
        for key in path {
            target = target
                .get_mut(*key)
                .ok_or_else(|| DocError::NoTemplate(path.join(".")))?;
        }
        let template = target.as_object().ok_or(DocError::TemplateNotObject)?;
        let pod_json = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": template.get("metadata").cloned().unwrap_or_else(|| Json::Object(Map::new())),
            "spec": template.get("spec").cloned().unwrap_or(Json::Null),
        });
        let pod: Pod = serde_json::from_value(pod_json)
            .map_err(|e| DocError::InvalidTemplate(e.to_string()))?;
        let mut ns = self
            .namespaces
            .get(namespace)
            .cloned()
            .unwrap_or_else(|| NamespaceInfo {
                name: namespace.to_string(),
                ..Default::default()
            });
        ns.annotations
            .entry(INJECT_ANNOTATION.to_string())
            .or_insert_with(|| "enabled".to_string());
        match inject(&pod, &ns, self.cfg) {
            crate::inject::Outcome::Injected {
                patch,
                warnings,
                pod_security,
                ..
            } => {
                let mut patched = target.clone();
                if let Some(t) = patched.as_object_mut() {
                    t.entry("metadata")
                        .or_insert_with(|| Json::Object(Map::new()));
                }
                json_patch::patch(&mut patched, &patch)
                    .map_err(|e| DocError::Patch(e.to_string()))?;
                *target = patched;
                Ok(match (pod_security, warnings.is_empty()) {
                    (Some(conflict), _) => Outcome::PodSecurity {
                        conflict,
                        floored: warnings,
                    },
                    (None, true) => Outcome::Injected,
                    (None, false) => Outcome::Floored(warnings),
                })
            }
            crate::inject::Outcome::Skipped(reason) => Ok(Outcome::Skipped(reason)),
            crate::inject::Outcome::Refused(refusal) => Ok(Outcome::Refused(refusal)),
        }
    }
}

/// `kind/name` as `kubectl` prints it.
fn object_name(obj: &Json) -> String {
    let kind = obj
        .get("kind")
        .and_then(Json::as_str)
        .map_or_else(|| "(no kind)".to_string(), str::to_lowercase);
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Json::as_str)
        .unwrap_or("(no name)");
    format!("{kind}/{name}")
}

/// Namespaces defined in the manifest, by name.
fn namespaces(docs: &[Json]) -> BTreeMap<String, NamespaceInfo> {
    let strings = |v: Option<&Json>| -> BTreeMap<String, String> {
        v.and_then(Json::as_object)
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
