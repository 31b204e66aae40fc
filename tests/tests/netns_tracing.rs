//! Tracing end to end, as root: a local mesh whose proxies export request
//! spans over OTLP/gRPC to a real Jaeger (v1.75.0, built by
//! `scripts/build-jaeger.sh`), running in the mesh as an unmeshed pod, and
//! read back from Jaeger's query API.
//!
//! Every test is named `netns_…`, fails loudly without root, and fails
//! (never skips) when Jaeger is not built.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use trellis_e2e::kube::free_port;
use trellis_e2e::{eventually, require_root, require_tool, Mesh};

/// The application's own span, which the mesh must continue.
const APP_TRACE: &str = "5a1e7ace0f00dbadc0ffee0000c0ffee";
const APP_SPAN: &str = "a1b2c3d4e5f60718";

/// The Jaeger `scripts/build-jaeger.sh` built: `TRELLIS_JAEGER`, or the
/// path in its cache's `env` file.
fn jaeger() -> PathBuf {
    if let Some(path) = std::env::var_os("TRELLIS_JAEGER") {
        return PathBuf::from(path);
    }
    let cache = std::env::var("TRELLIS_CACHE").unwrap_or_else(|_| "/var/cache/trellis".into());
    let env_file = PathBuf::from(cache).join("jaeger/env");
    let env = std::fs::read_to_string(&env_file).unwrap_or_else(|e| {
        panic!(
            "Jaeger is not built ({}: {e}): run `bash scripts/build-jaeger.sh` (scripts/test.sh does)",
            env_file.display()
        )
    });
    let path = env
        .lines()
        .find_map(|l| l.strip_prefix("TRELLIS_JAEGER="))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{} names no TRELLIS_JAEGER", env_file.display()));
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/build-jaeger.sh`",
        path.display()
    );
    path
}

/// Jaeger all-in-one with in-memory storage: OTLP/gRPC on `otlp`, the
/// query API on `query` (its gRPC query port on `query_grpc`); nothing else.
fn jaeger_config(otlp: u16, query: u16, query_grpc: u16) -> String {
    format!(
        r#"
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
extensions:
  jaeger_query:
    storage:
      traces: memory
    http:
      endpoint: "0.0.0.0:{query}"
    grpc:
      endpoint: "127.0.0.1:{query_grpc}"
  jaeger_storage:
    backends:
      memory:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: "0.0.0.0:{otlp}"
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memory
"#
    )
}

/// `client` calls `web` through a route; the file sends every proxy's
/// spans to `jaeger` and samples no new trace (only what the application
/// asks for). `lost` sends its spans to a collector that is not there.
const MESH: &str = r#"
name: {mesh}
tracing:
  collector: jaeger.tt.svc.cluster.local:{otlp}
  sampling: 0
workloads:
  - name: client
    namespace: tt
    serviceAccount: client
    command: [sleep, infinity]
  - name: lost
    namespace: tt
    serviceAccount: lost
    command: [sleep, infinity]
    annotations:
      config.trellis.dev/trace-collector: "127.0.0.1:{dead}"
      config.trellis.dev/trace-sampling: "1"
  - name: web
    namespace: tt
    serviceAccount: web
    ports: [8080]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:8080", --name, "{name}"]
  - name: jaeger
    namespace: tt
    meshed: false
    ports: [{otlp}, {query}]
    command: ["{jaeger}", --config, "file:{config}"]
services:
  - {name: web, namespace: tt, selector: web, ports: [{port: 80, targetPort: 8080}]}
  - {name: jaeger, namespace: tt, selector: jaeger, ports: [{port: {otlp}, targetPort: {otlp}}]}
routes:
  - name: web-route
    namespace: tt
    parent: {service: web, port: 80}
    rules:
      - matches: [{path: {type: PathPrefix, value: /}}]
"#;

/// A span's tag, as Jaeger shows it.
fn tag<'s>(span: &'s Value, key: &str) -> Option<&'s Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

fn kind(span: &Value) -> &str {
    tag(span, "span.kind").and_then(Value::as_str).unwrap_or("")
}

/// The parent span id of `span` (its CHILD_OF reference).
fn parent(span: &Value) -> &str {
    span["references"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
        .and_then(|r| r["spanID"].as_str())
        .unwrap_or("")
}

#[test]
fn netns_tracing_spans_continue_the_applications_trace_into_jaeger() {
    require_root("network namespaces, iptables and the proxies' uid");
    require_tool("curl");
    let jaeger = jaeger();
    let (otlp, query, query_grpc, dead) = (free_port(), free_port(), free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("trellis-tracing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("jaeger.yaml");
    std::fs::write(&config, jaeger_config(otlp, query, query_grpc)).unwrap();
    let yaml = MESH
        .replace("{otlp}", &otlp.to_string())
        .replace("{query}", &query.to_string())
        .replace("{dead}", &dead.to_string())
        .replace("{jaeger}", jaeger.to_str().unwrap())
        .replace("{config}", config.to_str().unwrap());
    let mesh = Mesh::up("tt", &yaml);

    // The application's request, with its own sampled traceparent.
    let traceparent = format!("00-{APP_TRACE}-{APP_SPAN}-01");
    let code = mesh.exec_ok(
        "client",
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("traceparent: {traceparent}"),
            "http://web.tt.svc.cluster.local/hello",
        ],
    );
    assert_eq!(code, "200");

    // Both proxies' spans reach Jaeger, in the application's trace.
    let url = format!("http://127.0.0.1:{query}/api/traces/{APP_TRACE}");
    let mut trace = Value::Null;
    let found = eventually(Duration::from_secs(30), || {
        let out = mesh.exec("jaeger", &["curl", "-sS", &url]);
        trace = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        trace["data"][0]["spans"]
            .as_array()
            .is_some_and(|s| s.len() >= 2)
    });
    assert!(
        found,
        "Jaeger never had both spans of trace {APP_TRACE}: {trace:#}"
    );
    let spans = trace["data"][0]["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2, "{trace:#}");
    for s in spans {
        assert_eq!(s["traceID"], APP_TRACE, "{s:#}");
    }
    let client = spans
        .iter()
        .find(|s| kind(s) == "client")
        .expect("no client span");
    let server = spans
        .iter()
        .find(|s| kind(s) == "server")
        .expect("no server span");

    // The outbound proxy's CLIENT span is the application's span's child;
    // the inbound proxy's SERVER span is the CLIENT span's child.
    assert_eq!(parent(client), APP_SPAN, "{client:#}");
    assert_eq!(
        parent(server),
        client["spanID"].as_str().unwrap(),
        "{server:#}"
    );

    // Route and peer identity are attributes (and the rest of the facts).
    assert_eq!(tag(client, "trellis.route").unwrap(), "web-route");
    assert_eq!(
        tag(client, "trellis.peer.identity").unwrap(),
        "spiffe://cluster.local/ns/tt/sa/web"
    );
    assert_eq!(
        tag(server, "trellis.peer.identity").unwrap(),
        "spiffe://cluster.local/ns/tt/sa/client"
    );
    assert_eq!(tag(client, "trellis.direction").unwrap(), "outbound");
    assert_eq!(tag(server, "trellis.direction").unwrap(), "inbound");
    assert_eq!(tag(client, "http.response.status_code").unwrap(), 200);
    assert_eq!(tag(client, "url.path").unwrap(), "/hello");
    let client_ip = mesh.ip("client");
    assert_eq!(tag(server, "client.address").unwrap(), client_ip.as_str());
    assert!(
        tag(client, "trellis.service")
            .and_then(Value::as_str)
            .is_some_and(|s| s.starts_with("web.tt.svc.cluster.local")),
        "{client:#}"
    );
    let processes = &trace["data"][0]["processes"];
    let process = &processes[client["processID"].as_str().unwrap()];
    assert_eq!(process["serviceName"], "trellis-proxy", "{processes:#}");

    // Nothing else was sampled: the file samples no new trace.
    let services = mesh.exec_ok(
        "jaeger",
        &[
            "curl",
            "-sS",
            &format!("http://127.0.0.1:{query}/api/traces?service=trellis-proxy&limit=100"),
        ],
    );
    let all: Value = serde_json::from_str(&services).unwrap();
    assert_eq!(
        all["data"].as_array().map(Vec::len),
        Some(1),
        "only the application's trace: {all:#}"
    );

    // A collector that is down: every request still succeeds, and the
    // spans `lost`'s proxy could not export are counted as dropped.
    let script = "ok=0; for i in $(seq 50); do c=$(curl -sS -o /dev/null -m 5 -w '%{http_code}' http://web.tt.svc.cluster.local/lost); [ \"$c\" = 200 ] && ok=$((ok+1)); done; echo $ok";
    let started = std::time::Instant::now();
    let ok = mesh.sh("lost", script);
    assert_eq!(ok.trim(), "50", "requests failed with the collector down");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "50 requests took {:?} with the collector down",
        started.elapsed()
    );
    let mut dropped = 0.0;
    let counted = eventually(Duration::from_secs(20), || {
        let m = mesh.metrics("lost");
        dropped = m.sum("trellis_trace_spans_dropped_total", &[]);
        dropped >= 50.0
    });
    assert!(counted, "only {dropped} dropped spans counted");
    let m = mesh.metrics("lost");
    assert_eq!(m.sum("trellis_trace_spans_exported_total", &[]), 0.0);
    assert!(
        m.sum(
            "trellis_trace_spans_dropped_total",
            &[("reason", "export_failed")]
        ) >= 1.0
    );
    // The proxies with a live collector exported and dropped nothing.
    let client_metrics = mesh.metrics("client");
    assert!(client_metrics.sum("trellis_trace_spans_exported_total", &[]) >= 1.0);
    assert_eq!(
        client_metrics.sum("trellis_trace_spans_dropped_total", &[]),
        0.0
    );

    drop(mesh);
    let _ = std::fs::remove_dir_all(&dir);
}
