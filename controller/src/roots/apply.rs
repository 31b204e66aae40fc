//! Executes one [`Action`] of a plan: one API call, bounded in time, its
//! outcome classified. Every write carries field manager
//! `trellis-controller` and a guard, so only the object the watch showed
//! as ours is ever changed:
//!
//! - create: POST, which fails (409 AlreadyExists) if any ConfigMap of
//!   that name is there — a foreign one is never taken over;
//! - update: JSON merge patch carrying the copy's `resourceVersion`
//!   (409 Conflict if it changed since);
//! - delete: DELETE with `uid` and `resourceVersion` preconditions.
//!
//! A 409 or 404 means the API server is ahead of the watch: not an error,
//! the watch's next event brings a new plan.
//!
//! Why not server-side apply: an apply creates a missing object, and one
//! that appeared meanwhile (someone else's) would be taken over; and the
//! fields a POST wrote belong to the manager's `Update` entry, so a later
//! apply could not remove a key the source dropped. A merge patch from the
//! watched copy, guarded by its resourceVersion, writes exactly the
//! difference and keeps others' labels and annotations.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};

use super::plan::Action;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "trellis-controller";
/// The longest one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// How one write ended.
#[derive(Debug)]
pub enum Outcome {
    Done,
    /// The object is not as the watch showed it (the reason: `exists`,
    /// `conflict`, `gone`); the watch will catch up.
    Stale(&'static str),
    Failed(WriteError),
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{op} ConfigMap {namespace}/{name}: {source}")]
    Api {
        op: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{op} ConfigMap {namespace}/{name}: no answer within {CALL_TIMEOUT:?}")]
    Timeout {
        op: &'static str,
        namespace: String,
        name: String,
    },
}

impl WriteError {
    /// A short, bounded reason code: the HTTP status, `transport` or
    /// `timeout` (logs; a changed reason is logged again).
    pub fn reason(&self) -> String {
        match self {
            WriteError::Api {
                source: kube::Error::Api(s),
                ..
            } => format!("{} {}", s.code, s.reason),
            WriteError::Api { .. } => "transport".into(),
            WriteError::Timeout { .. } => "timeout".into(),
        }
    }
}

/// Executes `action` on the ConfigMap `name` of the action's namespace.
pub async fn execute(client: &kube::Client, name: &str, action: &Action) -> Outcome {
    let namespace = action.namespace();
    let op = action.op();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let call = async {
        match action {
            Action::Create(cm) => {
                let pp = PostParams {
                    dry_run: false,
                    field_manager: Some(FIELD_MANAGER.into()),
                };
                api.create(&pp, cm).await.map(drop)
            }
            Action::Update { patch, .. } => {
                let pp = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                api.patch(name, &pp, &Patch::Merge(patch)).await.map(drop)
            }
            Action::Delete {
                uid,
                resource_version,
                ..
            } => {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: Some(resource_version.clone()),
                    }),
                    ..DeleteParams::default()
                };
                api.delete(name, &dp).await.map(drop)
            }
        }
    };
    let result = match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r,
        Err(_) => {
            return Outcome::Failed(WriteError::Timeout {
                op,
                namespace: namespace.into(),
                name: name.into(),
            })
        }
    };
    match result {
        Ok(()) => Outcome::Done,
        Err(kube::Error::Api(s)) if s.is_already_exists() => Outcome::Stale("exists"),
        Err(kube::Error::Api(s)) if s.is_conflict() => Outcome::Stale("conflict"),
        Err(kube::Error::Api(s)) if s.is_not_found() && !matches!(action, Action::Create(_)) => {
            Outcome::Stale("gone")
        }
        Err(source) => Outcome::Failed(WriteError::Api {
            op,
            namespace: namespace.into(),
            name: name.into(),
            source,
        }),
    }
}
