//! From the bytes of a request to the `AdmissionReview` that answers it.
//! Pure: no IO, no clock; the server only reads the body, looks the
//! namespace up, and writes what these functions return.
//!
//! ```text
//!  Received ──parse──► PodRequest ──(namespace from the cache)──► respond ──► Reviewed
//!      │                                                                        ▲
//!      └───────────────► Rejection ──────────────────────── reject ─────────────┘
//! ```
//!
//! Every input gets an `admission.k8s.io/v1` review, with the request's
//! uid whenever it can be read (even from a truncated or oversized body):
//!
//! | input | answer | metric `outcome`/`reason` |
//! |---|---|---|
//! | pod CREATE, injected | allowed, JSONPatch | `injected`/`injected` |
//! | pod CREATE, below the floor, `enforcement: warn` | allowed, JSONPatch with the floor applied, a warning per value | `injected`/`floor_*` ([`crate::floor::FloorKind::label`]) |
//! | pod CREATE, below the floor, `enforcement: deny` | refused, status 403 naming annotation, value and floor | `refused`/`floor_*` |
//! | pod CREATE, injected, in a namespace whose Pod Security `enforce` level forbids what injection adds (init-container mode; in CNI mode it passes `restricted`) | allowed, JSONPatch, and a warning first: the API server will refuse the pod, why, and what to do — chart value `cni.enabled` first ([`crate::pod_security`]) | `injected_pod_security_refused`/`pod_security_baseline` or `pod_security_restricted` |
//! | pod CREATE, skipped | allowed, no patch; a warning when [`SkipReason::is_warning`] | `skipped`/[`SkipReason::label`] |
//! | not a `v1` Pod, or a subresource | allowed unchanged, with a warning | `error`/`wrong_kind` |
//! | an operation other than CREATE | allowed unchanged, with a warning | `error`/`wrong_operation` |
//! | not JSON, not a review, no object | refused, status 400 | `error`/`malformed` |
//! | JSON that ends early, a broken body | refused, status 400 | `error`/`truncated` |
//! | larger than the limit | refused, status 400 | `error`/`oversized` |
//! | `v1beta1`, or not an AdmissionReview | refused, status 400 | `error`/`wrong_version` |

use base64::Engine as _;
use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, META_API_VERSION_V1, META_KIND,
};
use kube::core::Status;
use serde_json::Value;

use crate::inject::floor_warning;
use crate::pod_security::Conflict;
use crate::{inject, InjectorConfig, NamespaceInfo, Outcome, Refusal, SkipReason};

#[cfg(test)]
mod tests;

/// How much of a body that cannot be parsed is searched for the uid.
const UID_SCAN_BYTES: usize = 64 * 1024;

/// A request body, as the server read it.
#[derive(Debug, Clone)]
pub enum Received {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// More than `limit` bytes were sent (or announced); `prefix` is what
    /// was read before stopping, searched for the uid.
    TooLarge { prefix: Bytes, limit: usize },
    /// The body broke off (the client went away, a framing error).
    Cut { prefix: Bytes, error: String },
}

/// Why a review got no injection decision. Each kind is answered, counted
/// and logged as [`ReviewError::classify`] says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("the AdmissionReview is larger than the injector's limit of {limit} bytes")]
    Oversized { limit: usize },
    #[error("the AdmissionReview ends early: {0}")]
    Truncated(String),
    #[error("not a valid AdmissionReview: {0}")]
    Malformed(String),
    #[error("expected an AdmissionReview of apiVersion {META_API_VERSION_V1}, got kind {kind:?} of apiVersion {api_version:?}; set admissionReviewVersions: [v1] on the webhook")]
    WrongVersion { api_version: String, kind: String },
    #[error("trellis-injector only injects pods on CREATE; this {0} was admitted unchanged (check the webhook's rules)")]
    WrongKind(String),
    #[error("trellis-injector only injects pods on CREATE; this pod {0} was admitted unchanged (check the webhook's rules)")]
    WrongOperation(String),
    #[error("trellis-injector failed ({0}); the pod was admitted without the proxy")]
    Internal(String),
}

/// How one kind of [`ReviewError`] is answered, counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    /// Admit the object (unchanged, with a warning), or refuse it.
    pub allowed: bool,
    /// `status.code` of a refusal.
    pub code: u16,
    /// The metric's `reason` label.
    pub label: &'static str,
    /// How the server logs it: an error for its own failures, a warning
    /// for a bad request or a webhook configured to send the wrong ones.
    pub level: tracing::Level,
}

impl ReviewError {
    /// The one place an error's answer, metric label and log level are
    /// decided.
    pub fn classify(&self) -> Classification {
        let refuse = |label| Classification {
            allowed: false,
            code: 400,
            label,
            level: tracing::Level::WARN,
        };
        let admit = |label| Classification {
            allowed: true,
            code: 0,
            label,
            level: tracing::Level::WARN,
        };
        match self {
            Self::Oversized { .. } => refuse("oversized"),
            Self::Truncated(_) => refuse("truncated"),
            Self::Malformed(_) => refuse("malformed"),
            Self::WrongVersion { .. } => refuse("wrong_version"),
            Self::WrongKind(_) => admit("wrong_kind"),
            Self::WrongOperation(_) => admit("wrong_operation"),
            Self::Internal(_) => Classification {
                level: tracing::Level::ERROR,
                ..admit("internal")
            },
        }
    }
}

/// What became of one review: the metric's `outcome` and `reason`.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Injected,
    /// Injected with values below the floor raised to it; the reason of
    /// the first (by kind).
    Floored(&'static str),
    /// Injected, and the namespace's Pod Security level will make the API
    /// server refuse the injected pod (warned about in the answer).
    PodSecurityRefused(Box<Conflict>),
    Skipped(SkipReason),
    /// Refused by the floor.
    Refused(Refusal),
    Error(ReviewError),
}

impl Verdict {
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Injected | Self::Floored(_) => "injected",
            Self::PodSecurityRefused(_) => "injected_pod_security_refused",
            Self::Skipped(_) => "skipped",
            Self::Refused(_) => "refused",
            Self::Error(_) => "error",
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Floored(label) => label,
            Self::PodSecurityRefused(conflict) => conflict.label(),
            Self::Skipped(r) => r.label(),
            Self::Refused(r) => r.label(),
            Self::Error(e) => e.classify().label,
        }
    }
}

/// A decodable pod CREATE.
#[derive(Debug, Clone)]
pub struct PodRequest {
    request: AdmissionRequest<Pod>,
    pod: Pod,
    namespace: String,
}

impl PodRequest {
    /// The namespace the pod is created in (from `request.namespace`: pods
    /// made by controllers have no `metadata.namespace` yet).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn uid(&self) -> &str {
        &self.request.uid
    }

    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// The pod's name, or its `generateName` prefix followed by `*`.
    pub fn pod_name(&self) -> String {
        pod_name(&self.pod)
    }
}

fn pod_name(pod: &Pod) -> String {
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(name), _) if !name.is_empty() => name.clone(),
        (_, Some(prefix)) => format!("{prefix}*"),
        _ => String::new(),
    }
}

/// A review refused or admitted without a decision, and the uid to answer
/// with (empty when it could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub uid: String,
    pub error: ReviewError,
}

/// The answer: the review to send, and what it decided.
#[derive(Debug, Clone)]
pub struct Reviewed {
    pub uid: String,
    pub verdict: Verdict,
    /// An `admission.k8s.io/v1` AdmissionReview with only `response`.
    pub review: Value,
}

impl Reviewed {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a `Value` cannot fail: its keys are strings.
        serde_json::to_vec(&self.review).unwrap_or_default()
    }
}

/// The whole decision, for callers holding the namespace already (tests,
/// tools): [`parse`], then [`respond`] with `namespace(name)`, or
/// [`reject`].
pub fn review(
    received: &Received,
    namespace: impl FnOnce(&str) -> NamespaceInfo,
    cfg: &InjectorConfig,
) -> Reviewed {
    match parse(received) {
        Ok(req) => {
            let ns = namespace(req.namespace());
            respond(req, &ns, cfg)
        }
        Err(rejection) => reject(rejection),
    }
}

/// Reads a pod CREATE out of a request body, or says why it is not one.
pub fn parse(received: &Received) -> Result<PodRequest, Rejection> {
    let bytes = match received {
        Received::Complete(bytes) => bytes,
        Received::TooLarge { prefix, limit } => {
            return Err(Rejection {
                uid: uid_hint(prefix),
                error: ReviewError::Oversized { limit: *limit },
            })
        }
        Received::Cut { prefix, error } => {
            return Err(Rejection {
                uid: uid_hint(prefix),
                error: ReviewError::Truncated(format!("the body broke off: {error}")),
            })
        }
    };
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Rejection {
        uid: uid_hint(bytes),
        error: if e.is_eof() {
            ReviewError::Truncated(e.to_string())
        } else {
            ReviewError::Malformed(e.to_string())
        },
    })?;
    let uid = value
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let rejected = |error| Rejection {
        uid: uid.clone(),
        error,
    };
    let text = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or_default();
    if !value.is_object() {
        return Err(rejected(ReviewError::Malformed(
            "the body is JSON but not an object".into(),
        )));
    }
    if text("apiVersion") != META_API_VERSION_V1 || text("kind") != META_KIND {
        return Err(rejected(ReviewError::WrongVersion {
            api_version: text("apiVersion").into(),
            kind: text("kind").into(),
        }));
    }
    let Some(request) = value.get("request").filter(|r| r.is_object()) else {
        return Err(rejected(ReviewError::Malformed(
            "the review has no request".into(),
        )));
    };
    if uid.is_empty() {
        return Err(rejected(ReviewError::Malformed(
            "request.uid is missing".into(),
        )));
    }
    check_pod_create(request).map_err(&rejected)?;

    let review: AdmissionReview<Pod> = serde_json::from_value(value)
        .map_err(|e| rejected(ReviewError::Malformed(format!("the pod: {e}"))))?;
    let mut request: AdmissionRequest<Pod> = review
        .try_into()
        .map_err(|_| rejected(ReviewError::Malformed("the review has no request".into())))?;
    let Some(mut pod) = request.object.take() else {
        return Err(rejected(ReviewError::Malformed(
            "request.object is missing".into(),
        )));
    };
    let namespace = request
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| pod.metadata.namespace.clone().filter(|n| !n.is_empty()))
        .ok_or_else(|| {
            rejected(ReviewError::Malformed(
                "request.namespace is missing".into(),
            ))
        })?;
    // Controllers' pods have no namespace yet; the decision may read it.
    // The patch is the difference the decision makes, so this is not in it.
    pod.metadata
        .namespace
        .get_or_insert_with(|| namespace.clone());
    Ok(PodRequest {
        request,
        pod,
        namespace,
    })
}

/// A `v1` Pod itself (not a subresource), and CREATE.
fn check_pod_create(request: &Value) -> Result<(), ReviewError> {
    let field = |path: &str| {
        request
            .pointer(path)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let (group, version, kind) = (
        field("/kind/group"),
        field("/kind/version"),
        field("/kind/kind"),
    );
    if kind.is_empty() || version.is_empty() {
        return Err(ReviewError::Malformed("request.kind is missing".into()));
    }
    let sub = field("/subResource");
    if (group, version, kind) != ("", "v1", "Pod")
        || field("/resource/resource") != "pods"
        || !sub.is_empty()
    {
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        let what = if sub.is_empty() {
            format!("{gv} {kind}")
        } else {
            format!("{gv} {kind} ({sub} subresource)")
        };
        return Err(ReviewError::WrongKind(what));
    }
    match field("/operation") {
        "CREATE" => Ok(()),
        "" => Err(ReviewError::Malformed(
            "request.operation is missing".into(),
        )),
        other => Err(ReviewError::WrongOperation(other.to_string())),
    }
}

/// Decides on a pod and answers: the patch when injected, nothing when
/// skipped, a warning when the pod asked for the proxy and cannot have it.
pub fn respond(req: PodRequest, ns: &NamespaceInfo, cfg: &InjectorConfig) -> Reviewed {
    let uid = req.request.uid.clone();
    let answer = AdmissionResponse::from(&req.request);
    match inject(&req.pod, ns, cfg) {
        Outcome::Injected {
            patch,
            warnings,
            pod_security,
            ..
        } => match answer.with_patch(patch) {
            Ok(mut answer) => {
                let verdict = match (&pod_security, warnings.iter().map(|w| w.kind).min()) {
                    (Some(conflict), _) => Verdict::PodSecurityRefused(conflict.clone()),
                    (None, Some(kind)) => Verdict::Floored(kind.label()),
                    (None, None) => Verdict::Injected,
                };
                let mut said: Vec<String> = pod_security.iter().map(|c| c.warning()).collect();
                said.extend(warnings.iter().map(floor_warning));
                if !said.is_empty() {
                    answer.warnings = Some(said);
                }
                finish(uid, verdict, answer)
            }
            Err(e) => reject(Rejection {
                uid,
                error: ReviewError::Internal(e.to_string()),
            }),
        },
        Outcome::Skipped(reason) => {
            let mut answer = answer;
            if reason.is_warning() {
                answer.warnings = Some(vec![format!("trellis: {reason}")]);
            }
            finish(uid, Verdict::Skipped(reason), answer)
        }
        Outcome::Refused(refusal) => {
            let mut answer = answer.deny(format!("trellis: {refusal}"));
            answer.result = answer.result.with_code(403);
            answer.result.reason = "Forbidden".into();
            finish(uid, Verdict::Refused(refusal), answer)
        }
    }
}

/// Answers a review that got no decision, as [`ReviewError::classify`]
/// says: refused with status 400, or admitted unchanged with a warning.
pub fn reject(rejection: Rejection) -> Reviewed {
    let Rejection { uid, error } = rejection;
    let class = error.classify();
    let message = error.to_string();
    // `invalid` answers in admission.k8s.io/v1, whatever was asked.
    let mut answer = AdmissionResponse::invalid(&message);
    answer.uid = uid.clone();
    if class.allowed {
        answer.allowed = true;
        answer.result = Status::success();
        answer.result.message = message.clone();
        answer.warnings = Some(vec![message]);
    } else {
        answer.result = answer.result.with_code(class.code);
        answer.result.reason = "BadRequest".into();
    }
    finish(uid, Verdict::Error(error), answer)
}

/// The review as JSON, the patch base64-encoded as the API server expects
/// of a `[]byte` (kube-rs would write it as an array of numbers).
fn finish(uid: String, verdict: Verdict, answer: AdmissionResponse) -> Reviewed {
    let patch = answer.patch.clone();
    let mut review = serde_json::to_value(answer.into_review()).unwrap_or_else(|_| {
        // Not reached: the review holds only strings, numbers and maps
        // with string keys. Still, answer something valid.
        serde_json::json!({
            "apiVersion": META_API_VERSION_V1,
            "kind": META_KIND,
            "response": {"uid": uid, "allowed": true},
        })
    });
    if let (Some(patch), Some(slot)) = (patch, review.pointer_mut("/response/patch")) {
        *slot = Value::String(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    Reviewed {
        uid,
        verdict,
        review,
    }
}

/// The request's uid from the start of a body that cannot be parsed
/// (truncated, oversized or broken): the first `"uid"` after
/// `"request"`, if it looks like a uid. The API server writes it first in
/// the request; an empty string when not found.
fn uid_hint(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(UID_SCAN_BYTES)];
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let skip_ws = |s: &[u8]| -> usize { s.iter().take_while(|b| b.is_ascii_whitespace()).count() };
    let Some(at) = find(bytes, b"\"request\"") else {
        return String::new();
    };
    let rest = &bytes[at..];
    let Some(at) = find(rest, b"\"uid\"") else {
        return String::new();
    };
    let mut rest = &rest[at + 5..];
    rest = &rest[skip_ws(rest)..];
    let Some(rest) = rest.strip_prefix(b":") else {
        return String::new();
    };
    let rest = &rest[skip_ws(rest)..];
    let Some(rest) = rest.strip_prefix(b"\"") else {
        return String::new();
    };
    let Some(end) = rest.iter().position(|&b| b == b'"') else {
        return String::new();
    };
    let uid = &rest[..end];
    let uid_like = (1..=128).contains(&uid.len())
        && uid.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-');
    if uid_like {
        String::from_utf8_lossy(uid).into_owned()
    } else {
        String::new()
    }
}
