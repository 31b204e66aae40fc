//! `trellis inject`: a manifest with every pod template injected by the
//! webhook's own decision and patch ([`crate::inject`]).
//!
//! Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs
//! and `List`s of them are injected; every other document passes through
//! unchanged and is reported ([`Unchanged`]). Injection is what the user
//! asked for, so a namespace without the `trellis.dev/inject` annotation
//! counts as enabled; a pod that says `disabled`, a namespace that says
//! `disabled`, and every other reason the webhook would leave a pod alone
//! still apply. Namespaces defined in the same manifest lend their
//! annotations and labels (the overrides) to the objects in them.
//!
//! Each document stands alone: one that cannot be read or injected is
//! reported ([`Outcome::Failed`]) and printed unchanged, and the others are
//! still injected.
//!
//! What is kept of the input:
//! - YAML in, YAML out; JSON in (a stream of JSON values), JSON out,
//!   pretty-printed, keys in the input's order.
//! - A document that is not injected (another kind, a skipped template, an
//!   error) is printed byte for byte as written, comments included
//!   ([`split`]).
//! - An injected document keeps its key order, with new keys after the
//!   existing ones ([`order`]), and its comment lines before and after the
//!   document; comments inside it, anchors, and the original quoting are
//!   lost (serde_yaml_ng, like every maintained Rust YAML library, reads no
//!   comments). It is written by [`yaml`], which quotes every string a
//!   YAML 1.1 reader (Kubernetes' own) would take for a boolean, a number
//!   or null.
//!
//! The patch is applied to the template as written, so fields this
//! program's Kubernetes types do not know are kept.

mod object;
mod order;
mod split;
pub mod yaml;

use std::fmt;

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

use crate::config::InjectorConfig;
use crate::inject::{Refusal, SkipReason, Violation};
use crate::pod_security::Conflict;

pub use object::{classify, Class, WORKLOADS};

/// The input's format, which is also the output's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// What happened to one object (a document, or an item of a `List`).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The document's position in the manifest, from 1 (empty documents
    /// are not counted).
    pub doc: usize,
    /// `kind/name`, lower-case kind as `kubectl` prints it.
    pub object: String,
    /// For pod templates: the namespace whose settings applied.
    pub namespace: Option<String>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Injected,
    /// Injected, with overrides below the floor raised to it
    /// (`enforcement: warn`).
    Floored(Vec<Violation>),
    /// Injected, in a namespace (defined in the manifest) that enforces a
    /// Pod Security level forbidding what injection adds: the API server
    /// will refuse the pod. `floored`: as in [`Outcome::Floored`].
    PodSecurity {
        conflict: Box<Conflict>,
        floored: Vec<Violation>,
    },
    /// Refused by the floor (`enforcement: deny`); printed unchanged.
    Refused(Refusal),
    /// The injector left the pod template alone.
    Skipped(SkipReason),
    /// Not something `trellis inject` injects; printed unchanged.
    Unchanged(Unchanged),
    /// Could not be processed; printed unchanged.
    Failed(DocError),
}

/// Why a document that is not a pod template passed through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unchanged {
    /// An object with no pod template (Service, ConfigMap, …).
    NoPodTemplate,
    /// An object that holds pods (`spec.template`, `spec.jobTemplate` or
    /// `spec.containers`) of a kind `trellis inject` does not know, such as
    /// an Argo `Rollout` or a `ReplicationController`.
    UnknownKind { api_version: String, kind: String },
    /// A kind it knows, under another (or no) `apiVersion`.
    WrongApiVersion {
        api_version: Option<String>,
        expected: &'static str,
    },
    /// No `kind`, or not a mapping: not a Kubernetes object.
    NotAnObject,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    /// `first_line`: where the document starts in the file (the reason's
    /// line numbers count from there).
    #[error("not YAML this program can read (the document starts at line {first_line}): {reason}")]
    Yaml { first_line: usize, reason: String },
    #[error("cannot be read as a Kubernetes object: {0}")]
    NotAnObject(String),
    #[error("has no {0}")]
    NoTemplate(String),
    #[error("the pod template is not an object")]
    TemplateNotObject,
    #[error("not a valid pod template: {0}")]
    InvalidTemplate(String),
    #[error("the patch does not apply: {0}")]
    Patch(String),
    #[error(transparent)]
    Emit(#[from] yaml::EmitError),
    #[error("cannot be written as JSON: {0}")]
    Json(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("the manifest has no documents")]
    Empty,
}

/// The injected manifest and one report per object.
#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    pub format: Format,
    /// The manifest to print.
    pub text: String,
    pub reports: Vec<Report>,
}

impl Injected {
    /// Documents that could not be processed.
    pub fn failed(&self) -> usize {
        self.reports
            .iter()
            .filter(|r| r.outcome.is_failure())
            .count()
    }

    /// Pod templates the floor refused.
    pub fn refused(&self) -> usize {
        self.reports
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Refused(_)))
            .count()
    }

    /// Pod templates left alone for a reason `--strict` refuses.
    pub fn left_alone(&self) -> usize {
        self.reports
            .iter()
            .filter(|r| r.outcome.left_alone())
            .count()
    }
}

impl Outcome {
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failed(_))
    }

    /// Whether a pod template, or what may hold one, was left without a
    /// proxy. Already injected is a success: injecting twice changes
    /// nothing. Objects without pods do not count.
    pub fn left_alone(&self) -> bool {
        match self {
            Self::Injected | Self::Floored(_) | Self::PodSecurity { .. } | Self::Failed(_) => false,
            Self::Refused(_) => true,
            Self::Skipped(r) => *r != SkipReason::AlreadyInjected,
            Self::Unchanged(u) => *u != Unchanged::NoPodTemplate,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}: {}", self.doc, self.object)?;
        if let Some(ns) = &self.namespace {
            write!(f, " (namespace {ns})")?;
        }
        write!(f, ": {}", self.outcome)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Injected => f.write_str("injected"),
            Self::Floored(v) => {
                let all: Vec<String> = v.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "injected with the floor applied (warning): {}",
                    all.join("; ")
                )
            }
            Self::PodSecurity { conflict, floored } => {
                // The warning starts with "trellis: ".
                let warning = conflict.warning();
                let warning = warning.strip_prefix("trellis: ").unwrap_or(&warning);
                write!(f, "injected (warning): {warning}")?;
                if !floored.is_empty() {
                    let all: Vec<String> = floored.iter().map(ToString::to_string).collect();
                    write!(f, "; with the floor applied: {}", all.join("; "))?;
                }
                Ok(())
            }
            Self::Refused(r) => write!(f, "{r}; printed unchanged"),
            Self::Skipped(r) => write!(f, "skipped: {r}"),
            Self::Unchanged(u) => write!(f, "{u}; printed unchanged"),
            Self::Failed(e) => write!(f, "error: {e}; printed unchanged"),
        }
    }
}

impl fmt::Display for Unchanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPodTemplate => f.write_str("no pod template"),
            Self::UnknownKind { api_version, kind } => write!(
                f,
                "not injected: {api_version} {kind} is not a kind trellis inject knows \
                 (v1 Pod and List, apps/v1 Deployment, StatefulSet, DaemonSet and ReplicaSet, \
                 batch/v1 Job and CronJob)"
            ),
            Self::WrongApiVersion {
                api_version: Some(v),
                expected,
            } => write!(f, "not injected: apiVersion {v}, expected {expected}"),
            Self::WrongApiVersion {
                api_version: None,
                expected,
            } => write!(f, "not injected: no apiVersion (expected {expected})"),
            Self::NotAnObject => f.write_str("not injected: not a Kubernetes object (no kind)"),
        }
    }
}

/// Injects every pod template of a manifest: multi-document YAML, or a
/// stream of JSON values. `default_namespace` is used for objects that
/// name none.
pub fn inject_manifest(
    text: &str,
    cfg: &InjectorConfig,
    default_namespace: &str,
) -> Result<Injected, ManifestError> {
    match split::json_docs(text) {
        Some(docs) => json_manifest(docs, cfg, default_namespace),
        None => yaml_manifest(text, cfg, default_namespace),
    }
}

fn yaml_manifest(
    text: &str,
    cfg: &InjectorConfig,
    default_namespace: &str,
) -> Result<Injected, ManifestError> {
    let chunks = split::yaml_chunks(text);
    // (chunk index, the document as read)
    let docs: Vec<(usize, Result<Yaml, DocError>)> = chunks
        .iter()
        .enumerate()
        .filter(|(_, c)| c.has_content())
        .map(|(i, c)| (i, parse_yaml(c)))
        .filter(|(_, d)| !matches!(d, Ok(Yaml::Null)))
        .collect();
    if docs.is_empty() {
        return Err(ManifestError::Empty);
    }
    let read: Vec<Result<Yaml, DocError>> = docs.iter().map(|(_, d)| d.clone()).collect();
    let mut run = object::Run::new(&read, cfg, default_namespace);
    let mut rewritten = vec![None; chunks.len()];
    for (n, (i, _)) in docs.iter().enumerate() {
        let Some(doc) = run.document(n + 1) else {
            continue;
        };
        match yaml::to_yaml(&doc) {
            Ok(body) => rewritten[*i] = Some(body),
            Err(e) => run.fail(n + 1, e.into()),
        }
    }
    let text = chunks
        .iter()
        .zip(rewritten)
        .map(|(c, new)| match new {
            Some(body) => rewritten_chunk(c, &body),
            None => c.text.to_string(),
        })
        .collect();
    Ok(Injected {
        format: Format::Yaml,
        text,
        reports: run.reports,
    })
}

fn parse_yaml(c: &split::Chunk<'_>) -> Result<Yaml, DocError> {
    let err = |e: serde_yaml_ng::Error| DocError::Yaml {
        first_line: c.first_line,
        reason: e.to_string(),
    };
    let mut v: Yaml = serde_yaml_ng::from_str(c.text).map_err(err)?;
    v.apply_merge().map_err(err)?;
    Ok(v)
}

/// A rewritten document with the comment lines around it.
fn rewritten_chunk(c: &split::Chunk<'_>, body: &str) -> String {
    let marker = c.marker.trim_start_matches("---").trim();
    let marker = if marker.is_empty() || marker.starts_with('#') {
        c.marker
    } else {
        "---\n"
    };
    let marker_eol = if marker.is_empty() || marker.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    format!(
        "{marker}{marker_eol}{}{body}{}",
        c.leading_comments(),
        c.trailing_comments()
    )
}

fn json_manifest(
    docs: Vec<Yaml>,
    cfg: &InjectorConfig,
    default_namespace: &str,
) -> Result<Injected, ManifestError> {
    let docs: Vec<Yaml> = docs.into_iter().filter(|d| !d.is_null()).collect();
    if docs.is_empty() {
        return Err(ManifestError::Empty);
    }
    let read: Vec<Result<Yaml, DocError>> = docs.iter().cloned().map(Ok).collect();
    let mut run = object::Run::new(&read, cfg, default_namespace);
    let mut text = String::new();
    for (n, original) in docs.iter().enumerate() {
        let doc = run.document(n + 1).unwrap_or_else(|| original.clone());
        match serde_json::to_string_pretty(&doc) {
            Ok(json) => text.push_str(&json),
            Err(e) => {
                run.fail(n + 1, DocError::Json(e.to_string()));
                text.push_str(&serde_json::to_string_pretty(original).unwrap_or_default());
            }
        }
        text.push('\n');
    }
    Ok(Injected {
        format: Format::Json,
        text,
        reports: run.reports,
    })
}

/// Reads a JSON view of a document (the injector's input type).
fn json_view(doc: &Yaml) -> Result<Json, DocError> {
    serde_json::to_value(doc).map_err(|e| DocError::NotAnObject(e.to_string()))
}

#[cfg(test)]
mod tests;
