// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::index::{DefaultPolicy, Settings};
use crate::objects::Object;
use crate::source::file::parse;
use crate::store::Store;

fn store() -> Arc<Store> {
    Store::new(Settings {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        default_inbound: DefaultPolicy::AllUnauthenticated,
    })
}

fn objects(yaml: &str) -> Vec<Object> {
    let parsed = parse(yaml).unwrap_or_else(|e| panic!("fixture: {e}"));
    let mut out = Vec::new();
    out.extend(parsed.namespaces.values().cloned().map(Object::Namespace));
    out.extend(parsed.pods.values().cloned().map(Object::Pod));
    out.extend(parsed.services.values().cloned().map(Object::Service));
    out.extend(
        parsed
            .endpoint_slices
            .values()
            .cloned()
            .map(Object::EndpointSlice),
    );
    out.extend(parsed.http_routes.values().cloned().map(Object::HttpRoute));
    out.extend(
        parsed
            .authorization_policies
            .values()
            .cloned()
            .map(Object::AuthorizationPolicy),
    );
    out
}

fn service(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80, targetPort: http}}]\n"
    )
}

fn slice(service: &str, ip: &str, pod: &str, ready: bool) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-x, namespace: demo, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nendpoints:\n- addresses: [{ip}]\n  conditions: {{ready: {ready}}}\n  targetRef: {{kind: Pod, name: {pod}, namespace: demo}}\n"
    )
}

fn pod(name: &str, app: &str, ip: &str, phase: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, labels: {{app: {app}}}, annotations: {{{annotations}}}}}\nspec:\n  serviceAccountName: {app}\n  containers:\n  - {{name: app, ports: [{{name: http, containerPort: 8080}}]}}\n  - {{name: trellis-proxy}}\nstatus: {{phase: {phase}, podIP: {ip}}}\n"
    )
}

fn route(ns: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: split, namespace: {ns}, creationTimestamp: \"2024-01-01T00:00:00Z\"}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: web, namespace: demo, port: 80}}]\n  rules:\n  - backendRefs: [{{name: {backend}, namespace: demo, port: 80}}]\n"
    )
}

fn policy(app: &str) -> String {
    format!(
        "apiVersion: policy.trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: demo}}\nspec:\n  podSelector: {{matchLabels: {{app: {app}}}}}\n  ports: [8080]\n  from: {{namespaces: [client]}}\n"
    )
}

/// Every version of every object the property tests apply.
pub(crate) fn pool() -> Vec<Object> {
    let docs = [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n".to_string(),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, annotations: {config.trellis.dev/opaque-ports: \"8080\", config.trellis.dev/default-inbound-policy: deny}}\n".to_string(),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: client}\n".to_string(),
        service("web", "10.96.0.10"),
        service("web", "10.96.0.30"),
        service("api", "10.96.0.20"),
        service("api", "10.96.0.10"),
        pod("web-0", "web", "10.0.0.10", "Running", ""),
        pod("web-0", "web", "10.0.0.11", "Running", ""),
        pod("web-0", "web", "10.0.0.10", "Pending", ""),
        pod("web-1", "web", "10.0.0.11", "Running", ""),
        pod("api-0", "api", "10.0.0.20", "Running", ""),
        pod("api-0", "api", "10.0.0.20", "Running", "config.trellis.dev/opaque-ports: \"8080\""),
        pod("api-0", "api", "10.0.0.20", "Running", "config.trellis.dev/opaque-ports: \"bad\""),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: client, annotations: {config.trellis.dev/default-inbound-policy: bad}}\n".to_string(),
        slice("web", "10.0.0.10", "web-0", true),
        slice("web", "10.0.0.11", "web-1", true),
        slice("web", "10.0.0.10", "web-0", false),
        slice("api", "10.0.0.20", "api-0", true),
        slice("api", "10.0.0.11", "web-1", true),
        route("demo", "api"),
        route("demo", "missing"),
        route("client", "api"),
        policy("web"),
        policy("api"),
    ];
    docs.iter().flat_map(|d| objects(d)).collect()
}

fn questions() -> (Vec<ResolveQuestion>, Vec<InboundQuestion>) {
    let targets = [
        "10.96.0.10:80",
        "10.96.0.20:80",
        "10.96.0.30:80",
        "10.0.0.10:8080",
        "10.0.0.11:8080",
        "10.0.0.20:8080",
    ];
    let resolve = targets
        .iter()
        .flat_map(|t| {
            ["demo", "client"].map(|ns| ResolveQuestion {
                target: t.parse().unwrap(),
                client_namespace: ns.into(),
            })
        })
        .collect();
    let inbound = ["web-0", "web-1", "api-0"]
        .map(|p| InboundQuestion {
            namespace: "demo".into(),
            pod: p.into(),
        })
        .into();
    (resolve, inbound)
}

fn current<Q: Question>(sub: &Subscription<Q>) -> Option<Q::Answer>
where
    Q::Answer: Clone,
{
    sub.rx.borrow().as_deref().cloned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// After any sequence of changes, every shared answer, kept up to date
    /// by computing again only what read a changed topic, is the answer
    /// computed from scratch.
    #[test]
    fn kept_answers_are_answers_from_scratch(
        ops in prop::collection::vec((0usize..64, any::<bool>()), 1..40)
    ) {
        let pool = pool();
        let store = store();
        let metrics = Arc::new(Metrics::new());
        let answers = Answers::new(store.current(), metrics);
        let (resolve, inbound) = questions();
        let rs: Vec<_> = resolve.iter().map(|q| answers.subscribe(q.clone())).collect();
        let is: Vec<_> = inbound.iter().map(|q| answers.subscribe(q.clone())).collect();
        store.set_synced();
        for (i, (which, apply)) in ops.into_iter().enumerate() {
            let o = &pool[which % pool.len()];
            if apply {
                store.apply(o.clone());
            } else {
                store.delete(o.kind(), &o.key());
            }
            // Not every change is published on its own.
            if i % 3 == 2 {
                continue;
            }
            let snap = store.publish();
            answers.update(snap.clone());
            for (q, sub) in resolve.iter().zip(&rs) {
                let fresh = index::resolve(&snap, q.target, &q.client_namespace);
                prop_assert_eq!(current(sub), Some(fresh), "{:?}", q);
            }
            for (q, sub) in inbound.iter().zip(&is) {
                let fresh = index::inbound(&snap, &q.namespace, &q.pod);
                prop_assert_eq!(current(sub), fresh, "{:?}", q);
            }
        }
    }
}

fn base() -> String {
    [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n".to_string(),
        service("web", "10.96.0.10"),
        service("api", "10.96.0.20"),
        pod("web-0", "web", "10.0.0.10", "Running", ""),
        pod("api-0", "api", "10.0.0.20", "Running", ""),
        slice("web", "10.0.0.10", "web-0", true),
        slice("api", "10.0.0.20", "api-0", true),
    ]
    .join("---\n")
}

#[test]
fn a_change_to_one_service_computes_and_wakes_only_its_questions() {
    let store = store();
    store.replace_all(parse(&base()).unwrap());
    let metrics = Arc::new(Metrics::new());
    let answers = Answers::new(store.publish(), metrics.clone());
    let q = |t: &str| ResolveQuestion {
        target: t.parse().unwrap(),
        client_namespace: "demo".into(),
    };
    let mut web = answers.subscribe(q("10.96.0.10:80"));
    let mut api = answers.subscribe(q("10.96.0.20:80"));
    let mut web_inbound = answers.subscribe(InboundQuestion {
        namespace: "demo".into(),
        pod: "web-0".into(),
    });
    assert_eq!(metrics.answers_computed(Rpc::Resolve), 2);
    web.rx.mark_unchanged();
    api.rx.mark_unchanged();
    web_inbound.rx.mark_unchanged();

    for o in objects(&slice("api", "10.0.0.20", "api-0", false)) {
        store.apply(o);
    }
    answers.update(store.publish());
    assert_eq!(
        metrics.answers_computed(Rpc::Resolve),
        3,
        "only the api service's answer is computed again"
    );
    assert_eq!(metrics.answers_computed(Rpc::Inbound), 1);
    assert!(api.rx.has_changed().unwrap());
    assert!(
        !web.rx.has_changed().unwrap(),
        "web's streams are not woken"
    );
    assert!(!web_inbound.rx.has_changed().unwrap());
    assert!(current(&api).unwrap().backends[0].endpoints.is_empty());

    // A change that leaves the answer as it was: computed, not sent.
    api.rx.mark_unchanged();
    for o in objects(&pod("api-0", "api", "10.0.0.20", "Running", "unrelated: x")) {
        store.apply(o);
    }
    answers.update(store.publish());
    assert!(!api.rx.has_changed().unwrap());
    assert!(!web.rx.has_changed().unwrap());
}

#[test]
fn streams_asking_one_question_share_its_answer() {
    let store = store();
    store.replace_all(parse(&base()).unwrap());
    let metrics = Arc::new(Metrics::new());
    let answers = Answers::new(store.publish(), metrics.clone());
    let q = ResolveQuestion {
        target: "10.96.0.10:80".parse().unwrap(),
        client_namespace: "demo".into(),
    };
    let subs: Vec<_> = (0..100).map(|_| answers.subscribe(q.clone())).collect();
    assert_eq!(metrics.answers_computed(Rpc::Resolve), 1);
    assert!(Arc::ptr_eq(
        subs[0].rx.borrow().as_ref().unwrap(),
        subs[99].rx.borrow().as_ref().unwrap()
    ));
    for o in objects(&slice("web", "10.0.0.10", "web-0", false)) {
        store.apply(o);
    }
    answers.update(store.publish());
    assert_eq!(
        metrics.answers_computed(Rpc::Resolve),
        2,
        "once for 100 streams"
    );

    // The last stream gone, the question and what it read are forgotten.
    drop(subs);
    let tables = answers.lock();
    assert!(tables.resolve.entries.is_empty());
    assert!(tables.resolve.by_topic.is_empty());
}
