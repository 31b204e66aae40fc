//! The applier and the whole distributor against kube-rs's mock service: a
//! small fake API server keeps Namespaces, ConfigMaps and ClusterRoles, answers LIST,
//! WATCH (events pushed as objects change), POST, merge PATCH (with the
//! resourceVersion precondition) and DELETE (with preconditions), and
//! records every write.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};

use super::plan::{self, Action, Names, World, MANAGED_BY_LABEL, SOURCE_ANNOTATION};
use super::*;
use trellis_core::test_support::eventually;

type Handle = tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<String>>;
type Responder = tower_test::mock::SendResponse<http::Response<String>>;

const NAME: &str = "trellis-trust-roots";
const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const NEW_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n";

/// One write the fake received.
#[derive(Debug, Clone)]
struct Write {
    method: String,
    namespace: String,
    query: String,
    body: Value,
}

#[derive(Default)]
struct State {
    namespaces: BTreeMap<String, Value>,
    configmaps: BTreeMap<String, Value>,
    clusterroles: BTreeMap<String, Value>,
    rv: u64,
    writes: Vec<Write>,
    /// Status codes the next writes of a method fail with.
    fail_next: HashMap<String, Vec<u16>>,
    /// Held WATCH requests, and events waiting for one, by resource.
    watches: HashMap<&'static str, Responder>,
    queued: HashMap<&'static str, Vec<Value>>,
    unexpected: Vec<String>,
}

/// The fake API server's state, shared with the test.
#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    fn add_namespace(&self, name: &str, labels: Value, terminating: bool) {
        let mut s = self.lock();
        let rv = s.next_rv();
        let ns = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "uid": format!("ns-{name}"), "resourceVersion": rv,
                         "labels": labels,
                         "deletionTimestamp": terminating.then_some("2025-01-01T00:00:00Z")},
        });
        let kind = if s.namespaces.insert(name.into(), ns.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.emit("namespaces", kind, ns);
    }

    /// Puts a ConfigMap `NAME` in `namespace` as someone else would.
    fn put_configmap(&self, namespace: &str, labels: Value, pem: &str) {
        let mut s = self.lock();
        let rv = s.next_rv();
        // An update keeps the object's uid.
        let uid = s.configmaps.get(namespace).map_or_else(
            || json!(format!("cm-{namespace}-{rv}")),
            |c| c["metadata"]["uid"].clone(),
        );
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": NAME, "namespace": namespace, "uid": uid,
                         "resourceVersion": rv, "labels": labels},
            "data": {"roots.pem": pem},
        });
        let kind = if s.configmaps.insert(namespace.into(), cm.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.emit("configmaps", kind, cm);
    }

    /// Makes (or makes again, with a new uid) the ClusterRole `name`.
    fn put_clusterrole(&self, name: &str, uid: &str) {
        let mut s = self.lock();
        let rv = s.next_rv();
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "uid": uid, "resourceVersion": rv},
            "rules": [],
        });
        if let Some(old) = s.clusterroles.insert(name.into(), role.clone()) {
            s.emit("clusterroles", "DELETED", old);
        }
        s.emit("clusterroles", "ADDED", role);
    }

    fn remove_configmap(&self, namespace: &str) {
        let mut s = self.lock();
        if let Some(cm) = s.configmaps.remove(namespace) {
            s.emit("configmaps", "DELETED", cm);
        }
    }

    fn configmap(&self, namespace: &str) -> Option<Value> {
        self.lock().configmaps.get(namespace).cloned()
    }

    fn pem(&self, namespace: &str) -> Option<String> {
        let cm = self.configmap(namespace)?;
        cm["data"]["roots.pem"].as_str().map(str::to_string)
    }

    fn writes(&self) -> Vec<Write> {
        self.lock().writes.clone()
    }

    fn fail_next(&self, method: &str, code: u16) {
        self.lock()
            .fail_next
            .entry(method.into())
            .or_default()
            .push(code);
    }
}

impl State {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn emit(&mut self, resource: &'static str, kind: &str, object: Value) {
        let event = json!({"type": kind, "object": object});
        self.queued.entry(resource).or_default().push(event);
        if let Some(send) = self.watches.remove(resource) {
            self.answer_watch(resource, send);
        }
    }

    /// A watch response: the queued events, one JSON object a line; the
    /// stream then ends and the watcher watches again.
    fn answer_watch(&mut self, resource: &'static str, send: Responder) {
        let events = self.queued.remove(resource).unwrap_or_default();
        let body: String = events.iter().map(|e| format!("{e}\n")).collect();
        send.send_response(http::Response::builder().status(200).body(body).unwrap());
    }

    fn handle(
        &mut self,
        method: &http::Method,
        path: &str,
        query: &str,
        body: Value,
        send: Responder,
    ) {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method.as_str(), parts.as_slice()) {
            ("GET", ["api", "v1", "namespaces"]) => self.list_or_watch("namespaces", query, send),
            ("GET", ["apis", "rbac.authorization.k8s.io", "v1", "clusterroles"]) => {
                if !query.contains("fieldSelector=metadata.name%3Dtrellis-controller") {
                    self.unexpected
                        .push(format!("clusterroles without the name selector: {query}"));
                }
                self.list_or_watch("clusterroles", query, send)
            }
            ("GET", ["api", "v1", "configmaps"]) => {
                if !query.contains(&format!("fieldSelector=metadata.name%3D{NAME}")) {
                    self.unexpected
                        .push(format!("configmaps without the name selector: {query}"));
                }
                self.list_or_watch("configmaps", query, send)
            }
            (
                m @ ("POST" | "PATCH" | "DELETE"),
                ["api", "v1", "namespaces", ns, "configmaps", rest @ ..],
            ) => {
                let ns = ns.to_string();
                self.writes.push(Write {
                    method: m.into(),
                    namespace: ns.clone(),
                    query: query.into(),
                    body: body.clone(),
                });
                if let Some(code) = self.fail_next.get_mut(m).and_then(|v| v.pop()) {
                    return respond(
                        send,
                        code,
                        status(code, "InternalError", "injected failure"),
                    );
                }
                match (m, rest) {
                    ("POST", []) => self.create(&ns, body, send),
                    ("PATCH", [NAME]) => self.patch(&ns, &body, send),
                    ("DELETE", [NAME]) => self.delete(&ns, &body, send),
                    _ => {
                        self.unexpected.push(format!("{m} {path}"));
                        respond(send, 404, status(404, "NotFound", "no such path"));
                    }
                }
            }
            _ => {
                self.unexpected.push(format!("{method} {path}?{query}"));
                respond(send, 404, status(404, "NotFound", "no such path"));
            }
        }
    }

    fn list_or_watch(&mut self, resource: &'static str, query: &str, send: Responder) {
        if query.contains("watch=true") {
            if self.queued.get(resource).is_some_and(|q| !q.is_empty()) {
                self.answer_watch(resource, send);
            } else {
                self.watches.insert(resource, send);
            }
            return;
        }
        // A fresh listing: events queued before it are in it.
        self.queued.remove(resource);
        let items: Vec<Value> = match resource {
            "namespaces" => self.namespaces.values().cloned().collect(),
            "clusterroles" => self.clusterroles.values().cloned().collect(),
            _ => self.configmaps.values().cloned().collect(),
        };
        let list = json!({
            "apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        });
        respond(send, 200, list);
    }

    fn create(&mut self, ns: &str, mut cm: Value, send: Responder) {
        if self.configmaps.contains_key(ns) {
            return respond(
                send,
                409,
                status(
                    409,
                    "AlreadyExists",
                    "configmaps \"trellis-trust-roots\" already exists",
                ),
            );
        }
        let rv = self.next_rv();
        cm["metadata"]["uid"] = json!(format!("cm-{ns}-{rv}"));
        cm["metadata"]["resourceVersion"] = json!(rv);
        self.configmaps.insert(ns.into(), cm.clone());
        self.emit("configmaps", "ADDED", cm.clone());
        respond(send, 201, cm);
    }

    fn patch(&mut self, ns: &str, patch: &Value, send: Responder) {
        let Some(mut cm) = self.configmaps.get(ns).cloned() else {
            return respond(send, 404, status(404, "NotFound", "not found"));
        };
        let want = &patch["metadata"]["resourceVersion"];
        if !want.is_null() && *want != cm["metadata"]["resourceVersion"] {
            return respond(
                send,
                409,
                status(409, "Conflict", "the object has been modified"),
            );
        }
        merge(&mut cm, patch);
        cm["metadata"]["resourceVersion"] = json!(self.next_rv());
        self.configmaps.insert(ns.into(), cm.clone());
        self.emit("configmaps", "MODIFIED", cm.clone());
        respond(send, 200, cm);
    }

    fn delete(&mut self, ns: &str, params: &Value, send: Responder) {
        let Some(cm) = self.configmaps.get(ns).cloned() else {
            return respond(send, 404, status(404, "NotFound", "not found"));
        };
        let pre = &params["preconditions"];
        if pre["uid"] != cm["metadata"]["uid"]
            || pre["resourceVersion"] != cm["metadata"]["resourceVersion"]
        {
            return respond(send, 409, status(409, "Conflict", "precondition failed"));
        }
        self.configmaps.remove(ns);
        self.emit("configmaps", "DELETED", cm.clone());
        respond(send, 200, cm);
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(send: Responder, code: u16, body: Value) {
    send.send_response(
        http::Response::builder()
            .status(code)
            .body(body.to_string())
            .unwrap(),
    );
}

async fn serve(mut handle: Handle, fake: Fake) {
    while let Some((req, send)) = handle.next_request().await {
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or_default().to_string();
        fake.lock().handle(&parts.method, &path, &query, body, send);
    }
}

/// A client of a fresh fake API server.
fn start(fake: &Fake) -> (kube::Client, tokio::task::JoinHandle<()>) {
    let (svc, handle) = tower_test::mock::pair();
    let server = tokio::spawn(serve(handle, fake.clone()));
    (kube::Client::new(svc, "default"), server)
}

fn names() -> Names {
    Names {
        control_plane_namespace: "trellis".into(),
        configmap: NAME.into(),
    }
}

fn helm() -> Value {
    json!({"app.kubernetes.io/managed-by": "Helm"})
}

fn ours() -> Value {
    json!({MANAGED_BY_LABEL: "trellis-controller", "app.kubernetes.io/part-of": "trellis"})
}

/// Plans from the fake's objects, as the watches would show them.
fn plan_from(fake: &Fake) -> plan::Plan {
    let s = fake.lock();
    let namespaces: Vec<kube::api::ObjectMeta> = s
        .namespaces
        .values()
        .map(|n| serde_json::from_value(n["metadata"].clone()).unwrap())
        .collect();
    let configmaps: Vec<ConfigMap> = s
        .configmaps
        .values()
        .map(|c| serde_json::from_value(c.clone()).unwrap())
        .collect();
    let world = World {
        namespaces: namespaces.iter().collect(),
        configmaps: configmaps.iter().collect(),
        owner: None,
    };
    plan::plan(&names(), &world)
}

fn only(p: &plan::Plan, namespace: &str) -> Action {
    let mut found = p.actions.iter().filter(|a| a.namespace() == namespace);
    let a = found
        .next()
        .unwrap_or_else(|| panic!("no action for {namespace}: {p:?}"));
    assert!(found.next().is_none());
    a.clone()
}

#[tokio::test]
async fn the_applier_creates_updates_deletes_and_never_touches_a_foreign_configmap() {
    let fake = Fake::default();
    for ns in ["trellis", "demo", "other"] {
        fake.add_namespace(ns, json!({}), false);
    }
    fake.put_configmap("trellis", helm(), PEM);
    fake.put_configmap("other", helm(), "theirs");
    let (client, server) = start(&fake);

    // A new namespace: POST, with our field manager, label and annotation.
    let plan = plan_from(&fake);
    assert_eq!(plan.foreign, ["other"]);
    assert!(plan.actions.iter().all(|a| a.namespace() != "other"));
    let create = only(&plan, "demo");
    assert!(matches!(
        apply::execute(&client, NAME, &create).await,
        Outcome::Done
    ));
    let w = fake.writes().pop().unwrap();
    assert_eq!((w.method.as_str(), w.namespace.as_str()), ("POST", "demo"));
    assert!(
        w.query.contains("fieldManager=trellis-controller"),
        "{}",
        w.query
    );
    let copy = fake.configmap("demo").unwrap();
    assert_eq!(
        copy["metadata"]["labels"][MANAGED_BY_LABEL],
        "trellis-controller"
    );
    assert_eq!(
        copy["metadata"]["annotations"][SOURCE_ANNOTATION],
        "trellis/trellis-trust-roots"
    );
    assert_eq!(fake.pem("demo").unwrap(), PEM);
    assert!(plan_from(&fake).actions.is_empty(), "in sync");

    // The source changes: a merge patch guarded by the copy's version.
    fake.put_configmap("trellis", helm(), NEW_PEM);
    let update = only(&plan_from(&fake), "demo");
    let seen_rv = copy["metadata"]["resourceVersion"].clone();
    match &update {
        Action::Update { patch, .. } => assert_eq!(patch["metadata"]["resourceVersion"], seen_rv),
        other => panic!("expected an update: {other:?}"),
    }
    // Someone changed the copy after the plan: not written, not an error.
    fake.put_configmap("demo", ours(), "edited");
    assert!(matches!(
        apply::execute(&client, NAME, &update).await,
        Outcome::Stale("conflict")
    ));
    assert_eq!(fake.pem("demo").unwrap(), "edited");
    // Planned again from what is there now: written.
    let update = only(&plan_from(&fake), "demo");
    assert!(matches!(
        apply::execute(&client, NAME, &update).await,
        Outcome::Done
    ));
    let w = fake.writes().pop().unwrap();
    assert_eq!((w.method.as_str(), w.namespace.as_str()), ("PATCH", "demo"));
    assert_eq!(fake.pem("demo").unwrap(), NEW_PEM);

    // A foreign ConfigMap: a create that raced it fails, and it is unchanged.
    let racing = Action::Create(Box::new(plan::desired(
        &names(),
        "other",
        &plan::Roots {
            data: BTreeMap::from([("roots.pem".into(), NEW_PEM.into())]),
            binary_data: BTreeMap::new(),
        },
        None,
    )));
    assert!(matches!(
        apply::execute(&client, NAME, &racing).await,
        Outcome::Stale("exists")
    ));
    let foreign = fake.configmap("other").unwrap();
    assert_eq!(foreign["data"]["roots.pem"], "theirs");
    assert_eq!(foreign["metadata"]["labels"], helm());

    // The namespace is excluded: the copy is deleted, guarded by uid.
    fake.add_namespace(
        "demo",
        json!({"trellis.dev/admission-webhooks": "disabled"}),
        false,
    );
    let delete = only(&plan_from(&fake), "demo");
    let Action::Delete { uid: seen_uid, .. } = &delete else {
        panic!("expected a delete: {delete:?}")
    };
    assert_eq!(*seen_uid, copy["metadata"]["uid"]);
    let mut wrong_uid = delete.clone();
    if let Action::Delete { uid, .. } = &mut wrong_uid {
        *uid = "someone-else".into();
    }
    assert!(matches!(
        apply::execute(&client, NAME, &wrong_uid).await,
        Outcome::Stale("conflict")
    ));
    assert!(fake.configmap("demo").is_some());
    assert!(matches!(
        apply::execute(&client, NAME, &delete).await,
        Outcome::Done
    ));
    assert!(fake.configmap("demo").is_none());
    let w = fake.writes().pop().unwrap();
    assert_eq!(w.method, "DELETE");
    assert_eq!(w.body["preconditions"]["uid"], copy["metadata"]["uid"]);
    assert!(w.body["preconditions"]["resourceVersion"].is_string());

    // An API error is a failure, with its status as the reason.
    fake.add_namespace("demo", json!({}), false);
    fake.fail_next("POST", 500);
    let create = only(&plan_from(&fake), "demo");
    match apply::execute(&client, NAME, &create).await {
        Outcome::Failed(e) => assert_eq!(e.reason(), "500 InternalError"),
        other => panic!("expected a failure: {other:?}"),
    }
    assert!(
        fake.lock().unexpected.is_empty(),
        "{:?}",
        fake.lock().unexpected
    );
    server.abort();
}

fn distributor(client: kube::Client, metrics: Arc<Metrics>) -> Distributor {
    let mut settings = Settings::new("trellis", NAME);
    settings.retry = Backoff::new(Exponential::new(
        Duration::from_millis(10),
        Duration::from_millis(100),
    ));
    Distributor::new(client, settings, metrics)
}

#[tokio::test]
async fn the_distributor_keeps_a_current_copy_in_every_target_namespace() {
    let fake = Fake::default();
    let disabled = json!({"trellis.dev/admission-webhooks": "disabled"});
    for ns in ["trellis", "kube-system", "demo", "web", "other"] {
        fake.add_namespace(ns, json!({}), false);
    }
    fake.add_namespace("off", disabled.clone(), false);
    fake.add_namespace("gone", json!({}), true);
    fake.put_configmap("trellis", helm(), PEM);
    fake.put_configmap("web", ours(), "old");
    fake.put_configmap("off", ours(), PEM);
    fake.put_configmap("other", helm(), "theirs");
    let (client, server) = start(&fake);
    let metrics = Arc::new(Metrics::new());
    let shutdown = Shutdown::new();
    let task = tokio::spawn(distributor(client, metrics.clone()).run(shutdown.clone()));

    // Created where missing, updated where stale, deleted where excluded;
    // the foreign one, the source and excluded namespaces untouched.
    eventually("the first sync", async || {
        (fake.pem("demo").as_deref() == Some(PEM)
            && fake.pem("web").as_deref() == Some(PEM)
            && fake.configmap("off").is_none()
            && metrics.trust_roots_gauges() == (2, 1))
            .then_some(())
    })
    .await;
    let touched: Vec<String> = fake
        .writes()
        .iter()
        .map(|w| format!("{} {}", w.method, w.namespace))
        .collect();
    assert_eq!(touched, ["POST demo", "DELETE off", "PATCH web"]);
    assert_eq!(fake.pem("other").unwrap(), "theirs");
    assert_eq!(fake.pem("trellis").unwrap(), PEM);

    // The roots rotate: every copy follows.
    fake.put_configmap("trellis", helm(), NEW_PEM);
    eventually("the rotation", async || {
        (fake.pem("demo").as_deref() == Some(NEW_PEM)
            && fake.pem("web").as_deref() == Some(NEW_PEM))
        .then_some(())
    })
    .await;

    // A new namespace, and the API server fails the first create: counted,
    // retried with backoff, made.
    fake.fail_next("POST", 500);
    fake.add_namespace("late", json!({}), false);
    eventually("the retried create", async || fake.pem("late").map(drop)).await;
    assert_eq!(metrics.trust_roots_sync_errors("create"), 1);
    eventually("three copies", async || {
        (metrics.trust_roots_gauges() == (3, 1)).then_some(())
    })
    .await;
    let text = metrics.encode().unwrap();
    for line in [
        "trellis_controller_trust_roots_sync_errors_total{operation=\"create\"} 1",
        "trellis_controller_trust_roots_copies 3",
        "trellis_controller_trust_roots_foreign_configmaps 1",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }

    // The foreign ConfigMap goes away: a copy takes its place.
    fake.remove_configmap("other");
    eventually("a copy where the foreign one was", async || {
        fake.configmap("other")
            .filter(|c| c["metadata"]["labels"] == ours())
            .map(drop)
    })
    .await;
    eventually("no foreign left", async || {
        (metrics.trust_roots_gauges().1 == 0).then_some(())
    })
    .await;

    // The source vanishes: an error, and the copies stay.
    fake.remove_configmap("trellis");
    eventually("the source error", async || {
        (metrics.trust_roots_sync_errors("source") == 1).then_some(())
    })
    .await;
    // A new namespace gets no copy without a source; a namespace excluded
    // meanwhile still loses its copy (that needs no source), which also
    // shows a pass ran after both changes.
    fake.add_namespace("after", json!({}), false);
    fake.add_namespace("late", disabled, false);
    eventually("late's copy deleted", async || {
        fake.configmap("late").is_none().then_some(())
    })
    .await;
    assert!(
        fake.configmap("after").is_none(),
        "no copy without a source"
    );
    for ns in ["demo", "web", "other"] {
        assert_eq!(
            fake.pem(ns).as_deref(),
            Some(NEW_PEM),
            "{ns} keeps its copy"
        );
    }

    // Back: the new namespace gets its copy.
    fake.put_configmap("trellis", helm(), NEW_PEM);
    eventually("after's copy", async || fake.pem("after").map(drop)).await;
    assert!(
        fake.writes()
            .iter()
            .all(|w| !["trellis", "kube-system", "gone"].contains(&w.namespace.as_str())),
        "{:?}",
        fake.writes()
    );
    assert!(
        fake.lock().unexpected.is_empty(),
        "{:?}",
        fake.lock().unexpected
    );

    shutdown.begin();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    server.abort();
}

#[tokio::test]
async fn copies_are_owned_by_the_cluster_role_and_older_ones_adopted() {
    let fake = Fake::default();
    for ns in ["trellis", "demo", "web"] {
        fake.add_namespace(ns, json!({}), false);
    }
    fake.put_configmap("trellis", helm(), PEM);
    // An older controller's copy: current roots, no owner reference.
    fake.put_configmap("web", json!({MANAGED_BY_LABEL: "trellis-controller"}), PEM);
    fake.put_clusterrole("trellis-controller", "role-1");
    let (client, server) = start(&fake);
    let metrics = Arc::new(Metrics::new());
    let shutdown = Shutdown::new();
    let settings = Settings::new("trellis", NAME).with_owner(Some("trellis-controller".into()));
    let task =
        tokio::spawn(Distributor::new(client, settings, metrics.clone()).run(shutdown.clone()));

    let owner = |uid: &str| {
        json!([{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "name": "trellis-controller", "uid": uid}])
    };
    let owned_by = |ns: &str, uid: &str| {
        fake.configmap(ns)
            .is_some_and(|c| c["metadata"]["ownerReferences"] == owner(uid))
    };
    eventually("a new copy owned, the older one adopted", async || {
        (owned_by("demo", "role-1") && owned_by("web", "role-1")).then_some(())
    })
    .await;
    let writes: Vec<Write> = fake.writes();
    let touched: Vec<String> = writes
        .iter()
        .map(|w| format!("{} {}", w.method, w.namespace))
        .collect();
    assert_eq!(
        touched,
        ["POST demo", "PATCH web"],
        "the owner is known before the first write"
    );
    assert_eq!(
        writes[0].body["metadata"]["ownerReferences"],
        owner("role-1")
    );
    assert_eq!(
        writes[1].body["metadata"]["ownerReferences"],
        owner("role-1"),
        "the adoption: a merge patch, guarded by the copy's version"
    );
    assert!(writes[1].body["metadata"]["resourceVersion"].is_string());
    for ns in ["demo", "web"] {
        let labels = &fake.configmap(ns).unwrap()["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/part-of"], "trellis", "{ns}");
        assert_eq!(labels[MANAGED_BY_LABEL], "trellis-controller", "{ns}");
    }

    // The ClusterRole is made again (a new uid): every copy follows, the
    // stale reference replaced.
    fake.put_clusterrole("trellis-controller", "role-2");
    eventually("the copies owned by the new ClusterRole", async || {
        (owned_by("demo", "role-2") && owned_by("web", "role-2")).then_some(())
    })
    .await;
    assert!(
        fake.lock().unexpected.is_empty(),
        "{:?}",
        fake.lock().unexpected
    );

    shutdown.begin();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    server.abort();
}
