//! A quick, in-process measurement of the controller at cluster scale
//! (issue 18), not a timed test: `cargo test -p trellis-controller --lib
//! scale -- --ignored --nocapture` prints the RSS and time to build the
//! store's first snapshot from 50,000 pods and 5,000 services, and the
//! time per single-object change (publish, then every open question
//! answered again). The real benchmark, with a load client and an API
//! server, is in `bench/`.

// Test code: a panic is how a measurement fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::net::SocketAddr;
use std::time::Instant;

use serde_json::json;

use crate::index::{self, DefaultPolicy, Settings};
use crate::objects::{Object, Watched};
use crate::store::Store;

const NAMESPACES: usize = 100;
const SERVICES: usize = 5_000;
const PODS_PER_SERVICE: usize = 10;
const CHANGES: usize = 20;

/// Resident set size, in MB (Linux).
pub(crate) fn rss_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / 1e6
}

fn typed<K: Watched>(v: serde_json::Value) -> Object {
    serde_json::from_value::<K>(v).unwrap().into_object()
}

fn pod_ip(s: usize, p: usize) -> String {
    let n = s * PODS_PER_SERVICE + p;
    format!("10.{}.{}.{}", 1 + n / 65536, (n / 256) % 256, n % 256)
}

fn service_ip(s: usize) -> String {
    format!("10.96.{}.{}", s / 256, s % 256)
}

/// A pod as the API server returns it: a spec and status of the usual
/// size (two containers with env, resources, probes, mounts; conditions
/// and container statuses).
fn pod(s: usize, p: usize, version: &str) -> Object {
    typed::<k8s_openapi::api::core::v1::Pod>(pod_json(s, p, version))
}

fn pod_json(s: usize, p: usize, version: &str) -> serde_json::Value {
    let ns = format!("ns-{}", s % NAMESPACES);
    let container = |name: &str| {
        json!({
            "name": name, "image": format!("registry.example.com/team/{name}:v1.2.3"),
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            "env": (0..8).map(|i| json!({"name": format!("VAR_{i}"), "value": format!("value-{i}-{s}")})).collect::<Vec<_>>(),
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
            "readinessProbe": {"httpGet": {"port": "http", "path": "/ready"}, "periodSeconds": 5},
            "livenessProbe": {"httpGet": {"port": 8080, "path": "/live"}},
            "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
            "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent",
        })
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("svc-{s}-{p}"), "namespace": ns, "uid": format!("uid-{s}-{p}"),
            "resourceVersion": "1",
            "labels": {"app": format!("svc-{s}"), "pod-template-hash": "abc123", "version": version},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z", "trellis.dev/inject": "enabled"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("svc-{s}-abc123"), "uid": "x", "controller": true}],
        },
        "spec": {
            "serviceAccountName": format!("svc-{s}"), "nodeName": "node-1",
            "containers": [container("app"), container("trellis-proxy")],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
        },
        "status": {
            "phase": "Running", "podIP": pod_ip(s, p), "podIPs": [{"ip": pod_ip(s, p)}], "hostIP": "192.168.0.1",
            "conditions": (["Initialized", "Ready", "ContainersReady", "PodScheduled"].iter().map(|t| json!({"type": t, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"})).collect::<Vec<_>>()),
            "containerStatuses": (["app", "trellis-proxy"].iter().map(|n| json!({"name": n, "ready": true, "restartCount": 0, "image": "registry.example.com/x:v1", "imageID": "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "containerID": "containerd://0123456789abcdef", "started": true, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}})).collect::<Vec<_>>()),
        },
    })
}

fn service(s: usize) -> Object {
    typed::<k8s_openapi::api::core::v1::Service>(service_json(s))
}

fn service_json(s: usize) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{s}"), "namespace": format!("ns-{}", s % NAMESPACES), "resourceVersion": "1"},
        "spec": {"clusterIP": service_ip(s), "clusterIPs": [service_ip(s)], "selector": {"app": format!("svc-{s}")},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
    })
}

fn slice(s: usize, ready: bool) -> Object {
    typed::<k8s_openapi::api::discovery::v1::EndpointSlice>(slice_json(s, ready))
}

fn slice_json(s: usize, ready: bool) -> serde_json::Value {
    let ns = format!("ns-{}", s % NAMESPACES);
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{s}-abcde"), "namespace": ns, "resourceVersion": if ready { "1" } else { "2" },
                     "labels": {"kubernetes.io/service-name": format!("svc-{s}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": (0..PODS_PER_SERVICE).map(|p| json!({
            "addresses": [pod_ip(s, p)], "conditions": {"ready": ready || p > 0},
            "targetRef": {"kind": "Pod", "name": format!("svc-{s}-{p}"), "namespace": ns}, "nodeName": "node-1"
        })).collect::<Vec<_>>(),
    })
}

fn namespace(n: usize) -> Object {
    typed::<k8s_openapi::api::core::v1::Namespace>(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{n}")},
    }))
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn measure() {
    let before = rss_mb();
    let store = Store::new(Settings {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        default_inbound: DefaultPolicy::AllUnauthenticated,
    });
    let start = Instant::now();
    for n in 0..NAMESPACES {
        store.apply(namespace(n));
    }
    for s in 0..SERVICES {
        store.apply(service(s));
        store.apply(slice(s, true));
        for p in 0..PODS_PER_SERVICE {
            store.apply(pod(s, p, "v1"));
        }
    }
    store.set_synced();
    let snap = store.publish();
    println!(
        "loaded {} pods, {SERVICES} services in {:.2?}: RSS {:.0} MB (+{:.0} MB)",
        SERVICES * PODS_PER_SERVICE,
        start.elapsed(),
        rss_mb(),
        rss_mb() - before
    );
    drop(snap);

    // The questions 5,000 proxies ask: each one Resolve and one Inbound.
    let questions: Vec<(SocketAddr, String, String, String)> = (0..SERVICES)
        .map(|s| {
            let target = format!("{}:80", service_ip(s)).parse().unwrap();
            let ns = format!("ns-{}", s % NAMESPACES);
            (target, ns.clone(), ns, format!("svc-{s}-0"))
        })
        .collect();
    let answer_all = |snap: &index::Snapshot| {
        for (target, client_ns, ns, pod) in &questions {
            std::hint::black_box(index::resolve(snap, *target, client_ns));
            std::hint::black_box(index::inbound(snap, ns, pod));
        }
    };
    let start = Instant::now();
    answer_all(&store.current());
    println!(
        "every stream answered once ({} streams): {:.2?}",
        2 * SERVICES,
        start.elapsed()
    );

    // The same questions as shared answers, kept by what they read.
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let answers = crate::answers::Answers::new(store.current(), metrics.clone());
    let start = Instant::now();
    let mut subs: Vec<_> = questions
        .iter()
        .map(|(target, client_ns, ns, pod)| {
            (
                answers.subscribe(crate::answers::ResolveQuestion {
                    target: *target,
                    client_namespace: client_ns.clone(),
                }),
                answers.subscribe(crate::answers::InboundQuestion {
                    namespace: ns.clone(),
                    pod: pod.clone(),
                }),
            )
        })
        .collect();
    println!(
        "{} shared answers subscribed: {:.2?}; RSS {:.0} MB",
        2 * subs.len(),
        start.elapsed(),
        rss_mb()
    );
    let computed = metrics.answers_computed(crate::metrics::Rpc::Resolve)
        + metrics.answers_computed(crate::metrics::Rpc::Inbound);
    for (r, p) in &mut subs {
        r.rx.mark_unchanged();
        p.rx.mark_unchanged();
    }
    let mut kept = std::time::Duration::ZERO;
    let mut woken = 0;
    for i in 0..CHANGES {
        // Every change is a real one: an endpoint becomes not ready.
        store.apply(slice(i * 7, false));
        let snap = store.publish();
        let start = Instant::now();
        answers.update(snap);
        kept += start.elapsed();
        for (r, p) in &mut subs {
            if r.rx.has_changed().unwrap_or(false) {
                woken += 1;
                r.rx.mark_unchanged();
            }
            if p.rx.has_changed().unwrap_or(false) {
                woken += 1;
                p.rx.mark_unchanged();
            }
        }
    }
    let computed = metrics.answers_computed(crate::metrics::Rpc::Resolve)
        + metrics.answers_computed(crate::metrics::Rpc::Inbound)
        - computed;
    println!(
        "per EndpointSlice change, shared answers: {:.2?}; {} answers computed, {} streams woken in {CHANGES} changes",
        kept / CHANGES as u32,
        computed,
        woken
    );
    // A pod's label changes: its map is copied, pods by IP rebuilt.
    let (mut publish, mut kept) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    let computed = metrics.answers_computed(crate::metrics::Rpc::Resolve)
        + metrics.answers_computed(crate::metrics::Rpc::Inbound);
    for i in 0..CHANGES {
        store.apply(pod(i * 7, 0, "v2"));
        let start = Instant::now();
        let snap = store.publish();
        publish += start.elapsed();
        let start = Instant::now();
        answers.update(snap);
        kept += start.elapsed();
    }
    let computed = metrics.answers_computed(crate::metrics::Rpc::Resolve)
        + metrics.answers_computed(crate::metrics::Rpc::Inbound)
        - computed;
    println!(
        "per Pod change: publish {:.2?}, shared answers {:.2?}; {} answers computed in {CHANGES} changes",
        publish / CHANGES as u32,
        kept / CHANGES as u32,
        computed,
    );
    drop(subs);

    let (mut publish, mut answer) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for i in 0..CHANGES {
        store.apply(slice(i * 7 + 1, false));
        let start = Instant::now();
        let snap = store.publish();
        publish += start.elapsed();
        let start = Instant::now();
        answer_all(&snap);
        answer += start.elapsed();
    }
    println!(
        "per EndpointSlice change: publish {:.2?}, every stream answering again (as before) {:.2?}; RSS {:.0} MB",
        publish / CHANGES as u32,
        answer / CHANGES as u32,
        rss_mb()
    );
}

/// The issue's file: 20,000 pods, 2,000 services and EndpointSlices of 10
/// endpoints, loaded by the file source's parser, then one EndpointSlice
/// changed and the file loaded again.
#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn measure_file() {
    const FILE_SERVICES: usize = 2_000;
    let file = |changed: bool| {
        let mut items: Vec<serde_json::Value> = Vec::new();
        items.extend((0..NAMESPACES).map(|n| {
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{n}")}})
        }));
        let mut text = String::from(r#"{"apiVersion": "v1", "kind": "List", "items": "#);
        text.push_str(&serde_json::Value::Array(items).to_string());
        text.truncate(text.len() - 1);
        for s in 0..FILE_SERVICES {
            for v in [service_json(s), slice_json(s, !(changed && s == 7))] {
                text.push(',');
                text.push_str(&v.to_string());
            }
            for p in 0..PODS_PER_SERVICE {
                text.push(',');
                text.push_str(&pod_json(s, p, "v1").to_string());
            }
        }
        text.push_str("]}");
        text
    };
    let before = rss_mb();
    let store = Store::new(Settings {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        default_inbound: DefaultPolicy::AllUnauthenticated,
    });
    let text = file(false);
    println!("file: {:.0} MB of JSON", text.len() as f64 / 1e6);
    let start = Instant::now();
    store.replace_all(crate::source::file::parse(&text).unwrap());
    let snap = store.publish();
    println!(
        "file loaded and published in {:.2?}: RSS {:.0} MB (+{:.0} MB, the file's text included)",
        start.elapsed(),
        rss_mb(),
        rss_mb() - before
    );
    drop(text);
    let text = file(true);
    let start = Instant::now();
    store.replace_all(crate::source::file::parse(&text).unwrap());
    let next = store.publish();
    drop(snap);
    println!(
        "one EndpointSlice changed, file loaded again in {:.2?}: RSS {:.0} MB; {} objects",
        start.elapsed(),
        rss_mb(),
        next.objects().count(crate::objects::Kind::Pod)
    );
}
