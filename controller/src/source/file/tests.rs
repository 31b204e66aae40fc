// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::index::{DefaultPolicy, Settings, Snapshot};
use crate::objects::Key;
use trellis_core::test_support::{eventually, TempDir};

const LIST_YAML: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: demo}
- apiVersion: v1
  kind: Service
  metadata: {name: web}
  spec: {clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]}
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {name: r, namespace: demo}
  spec: {parentRefs: [{group: "", kind: Service, name: web}]}
"#;

#[test]
fn reads_lists_json_and_document_streams() {
    let o = parse(LIST_YAML).unwrap();
    assert_eq!(o.count(Kind::Namespace), 1);
    // No namespace: `default`, as kubectl has it.
    assert!(o.services.contains_key(&Key::new("default", "web")));
    assert!(o.http_routes.contains_key(&Key::new("demo", "r")));

    let json = serde_json::json!({
        "apiVersion": "v1", "kind": "List",
        "items": [{"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "p", "namespace": "demo"},
                   "spec": {"containers": [{"name": "app"}]},
                   "status": {"phase": "Running", "podIP": "10.0.0.1"}}]
    });
    let o = parse(&json.to_string()).unwrap();
    assert_eq!(o.count(Kind::Pod), 1);

    let stream = format!(
        "---\n{LIST_YAML}\n---\n# a comment only\n---\napiVersion: policy.trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: a, namespace: demo}}\nspec: {{from: {{namespaces: [demo]}}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: default}}\naddressType: IPv4\n"
    );
    let o = parse(&stream).unwrap();
    assert_eq!(o.count(Kind::AuthorizationPolicy), 1);
    assert_eq!(o.count(Kind::EndpointSlice), 1);
    assert_eq!(o.count(Kind::HttpRoute), 1);
    assert_eq!(parse("").unwrap(), Objects::default());
}

#[test]
fn refuses_what_it_cannot_read_naming_where() {
    let cases: &[(&str, &str)] = &[
        ("kind: [unclosed", "document 1: not YAML"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}",
            "document 1: \"v1\" \"ConfigMap\" is not a kind",
        ),
        (
            "apiVersion: v2\nkind: Pod\nmetadata: {name: x}",
            "\"v2\" \"Pod\" is not a kind",
        ),
        ("apiVersion: v1\nkind: Pod\nmetadata: {}", "a Pod without metadata.name"),
        (
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}",
            "document 1, items[1]: a second Namespace a",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: eighty}]}",
            "document 1: Service s:",
        ),
        ("just a string", "not an object"),
        ("apiVersion: v1\nkind: List\nitems: {}", "`items` of a List must be a sequence"),
    ];
    for (text, want) in cases {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

fn settings() -> Settings {
    Settings {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        default_inbound: DefaultPolicy::AllUnauthenticated,
    }
}

/// Waits (bounded) for the store to change, and publishes.
async fn next_snapshot(store: &Store) -> Arc<Snapshot> {
    tokio::time::timeout(Duration::from_secs(5), store.changed())
        .await
        .expect("the store changes");
    store.publish()
}

fn namespaces(snap: &Snapshot) -> Vec<String> {
    snap.objects()
        .namespaces
        .keys()
        .map(|k| k.name.clone())
        .collect()
}

fn ns_file(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n"))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[tokio::test]
async fn loads_follows_changes_and_keeps_the_last_good_state() {
    let dir = TempDir::new("controller-file-source");
    let path = dir.path().join("objects.yaml");
    let store = Store::new(settings());
    let metrics = Arc::new(Metrics::new());
    let shutdown = Shutdown::new();
    let source = FileSource::new(&path, Duration::from_millis(10));
    let task = tokio::spawn(source.run(store.clone(), metrics.clone(), shutdown.clone()));

    // No file yet: counted once, not synced.
    eventually("the missing file to be counted", async || {
        (metrics.source_errors("file", "read") == 1).then_some(())
    })
    .await;
    assert!(!store.current().synced);

    dir.write("objects.yaml", &ns_file(&["a"]));
    let snap = next_snapshot(&store).await;
    assert!(snap.synced);
    assert_eq!(namespaces(&snap), ["a"]);

    dir.write("objects.yaml", &ns_file(&["a", "b"]));
    assert_eq!(namespaces(&*next_snapshot(&store).await), ["a", "b"]);

    // A bad file: refused, counted, and the last good state kept.
    dir.write("objects.yaml", "apiVersion: v1\nkind: Nonsense\n");
    eventually("the bad file to be counted", async || {
        (metrics.source_errors("file", "parse") == 1).then_some(())
    })
    .await;
    assert_eq!(namespaces(&store.publish()), ["a", "b"]);

    // Fixed: taken.
    dir.write("objects.yaml", &ns_file(&["c"]));
    assert_eq!(namespaces(&*next_snapshot(&store).await), ["c"]);

    // Gone: counted once more (a new failure), the state kept.
    std::fs::remove_file(&path).unwrap();
    eventually("the missing file to be counted again", async || {
        (metrics.source_errors("file", "read") == 2).then_some(())
    })
    .await;
    assert_eq!(namespaces(&store.publish()), ["c"]);
    // Back with new content: taken.
    dir.write("objects.yaml", &ns_file(&["c", "d"]));
    assert_eq!(namespaces(&*next_snapshot(&store).await), ["c", "d"]);
    assert_eq!(
        metrics.source_errors("file", "parse"),
        1,
        "each bad content once"
    );

    shutdown.begin();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}
