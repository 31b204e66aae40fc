//! What the pod's task tells the API server: the pod's status and Events.

use std::time::Instant;

use k8s_openapi::api::core::v1::{Event as KubeEvent, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use tracing::warn;

use super::container::{containers_ready, ended_json, phase, state_json, Ctr, State};
use super::{Worker, WARN_AGAIN};

impl Worker {
    /// Writes the pod's status if it changed.
    pub(super) async fn report(&mut self) {
        let status = self.status();
        if status == self.last_status {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.namespace());
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let patch = json!({ "status": status });
        match pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.last_status = status,
            Err(kube::Error::Api(e)) if e.code == 404 => self.last_status = status,
            Err(e) => warn!(pod = %self.name(), error = %e, "writing the pod's status"),
        }
    }

    fn status(&mut self) -> Value {
        let image = |c: &Ctr| c.spec.image.clone().unwrap_or_default();
        let statuses = |init: bool, this: &Worker| -> Vec<Value> {
            this.containers
                .iter()
                .filter(|c| c.init == init)
                .map(|c| {
                    let mut s = json!({
                        "name": c.spec.name,
                        "image": image(c),
                        "imageID": image(c),
                        "ready": c.ready,
                        "started": c.running() && c.started,
                        "restartCount": c.restarts,
                        "state": state_json(&c.state),
                        "lastState": c.last.as_ref().filter(|_| !matches!(c.state, State::Terminated(_))).map(|e| json!({ "terminated": ended_json(e) })).unwrap_or_else(|| json!({})),
                    });
                    if let Some(pid) = c.pid.or(c.last.as_ref().map(|e| e.pid)) {
                        s["containerID"] = json!(format!("trellis://{pid}"));
                    }
                    s
                })
                .collect()
        };
        let init_statuses = statuses(true, self);
        let container_statuses = statuses(false, self);
        let phase = phase(&self.containers, &self.restart_policy(), self.initialized);
        let containers_ready = containers_ready(&self.containers);
        let gates_ok = self.readiness_gates_pass();
        let conditions = [
            ("PodReadyToStartContainers", self.sandbox_ready),
            ("Initialized", self.initialized),
            ("ContainersReady", containers_ready),
            ("Ready", containers_ready && gates_ok),
            ("PodScheduled", true),
        ];
        let now = Timestamp::now();
        let mut conds = Vec::new();
        for (kind, ok) in conditions {
            let entry = self.transitions.entry(kind).or_insert((ok, now));
            if entry.0 != ok {
                *entry = (ok, now);
            }
            conds.push(json!({
                "type": kind,
                "status": if ok { "True" } else { "False" },
                "lastTransitionTime": Time(entry.1),
                "lastProbeTime": null,
            }));
        }
        let ip = self.ip.to_string();
        let host = self.shared.host_ip.to_string();
        json!({
            "phase": phase,
            "conditions": conds,
            "hostIP": host,
            "hostIPs": [{ "ip": host }],
            "podIP": ip,
            "podIPs": [{ "ip": ip }],
            "startTime": Time(self.start_time),
            "initContainerStatuses": init_statuses,
            "containerStatuses": container_statuses,
        })
    }

    fn readiness_gates_pass(&self) -> bool {
        let spec = self.pod.spec.as_ref();
        let gates = spec.and_then(|s| s.readiness_gates.as_ref());
        let conditions = self.pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        gates.into_iter().flatten().all(|g| {
            conditions
                .into_iter()
                .flatten()
                .any(|c| c.type_ == g.condition_type && c.status == "True")
        })
    }

    /// A warning in the agent's log and as an Event; the same warning
    /// again within [`WARN_AGAIN`] is left out.
    pub(super) async fn warn(&self, reason: &str, message: &str) {
        let key = format!("{reason}\n{message}");
        {
            let mut said = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            if said.get(&key).is_some_and(|t| t.elapsed() < WARN_AGAIN) {
                return;
            }
            said.insert(key, Instant::now());
        }
        warn!(pod = %self.name(), reason, "{message}");
        self.event("Warning", reason, message).await;
    }

    /// An Event about the pod, as kubectl describe shows them.
    pub(super) async fn event(&self, kind: &str, reason: &str, message: &str) {
        let ns = self.namespace();
        let events: Api<KubeEvent> = Api::namespaced(self.shared.client.clone(), &ns);
        let now = Time(Timestamp::now());
        let e = KubeEvent {
            metadata: ObjectMeta {
                generate_name: Some(format!(
                    "{}.",
                    self.pod.metadata.name.clone().unwrap_or_default()
                )),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: self.pod.metadata.name.clone(),
                namespace: Some(ns),
                uid: Some(self.uid.clone()),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(kind.into()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some("trellis-node".into()),
                host: Some(self.shared.node.clone()),
            }),
            reporting_component: Some("trellis-node".into()),
            reporting_instance: Some(self.shared.node.clone()),
            ..KubeEvent::default()
        };
        if let Err(err) = events.create(&PostParams::default(), &e).await {
            warn!(pod = %self.name(), error = %err, "recording an event");
        }
    }
}
