//! Traffic management end to end, as root: a local mesh whose proxies learn
//! services, endpoints and routes from the real `trellis-controller`, and
//! balance, split, time out and retry per request.
//!
//! Every test is named `netns_…` and fails loudly without root.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use trellis_e2e::{bin, json_summary, require_root, require_tool, Mesh, Metrics};

/// `flaky`: three replicas, the third failing 30 % of requests; `broken`:
/// three replicas, the third failing every request; `down`: two replicas
/// failing every request. `flaky` and `down` have retry routes.
const RETRY_MESH: &str = r#"
name: {mesh}
workloads:
  - name: client
    namespace: tr
    serviceAccount: client
    command: [sleep, infinity]
  - name: flaky
    namespace: tr
    serviceAccount: flaky
    replicas: 3
    ports: [8080]
    command: [sh, -c, "if [ {name} = flaky-2 ]; then f=0.3; else f=0; fi; exec {trellis} app http --listen 0.0.0.0:8080 --name {name} --fail-rate $f"]
  - name: broken
    namespace: tr
    serviceAccount: broken
    replicas: 3
    ports: [8080]
    command: [sh, -c, "if [ {name} = broken-2 ]; then f=1; else f=0; fi; exec {trellis} app http --listen 0.0.0.0:8080 --name {name} --fail-rate $f"]
  - name: down
    namespace: tr
    serviceAccount: down
    replicas: 2
    ports: [8080]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:8080", --name, "{name}", --fail-rate, "1"]
services:
  - {name: flaky, namespace: tr, selector: flaky, ports: [{port: 80, targetPort: 8080}]}
  - {name: broken, namespace: tr, selector: broken, ports: [{port: 80, targetPort: 8080}]}
  - {name: down, namespace: tr, selector: down, ports: [{port: 80, targetPort: 8080}]}
routes:
  - name: flaky-retry
    namespace: tr
    parent: {service: flaky, port: 80}
    annotations:
      retry.trellis.dev/limit: "3"
      retry.trellis.dev/http-statuses: "5xx"
      retry.trellis.dev/budget-ratio: "0.2"
      retry.trellis.dev/budget-min-per-second: "10"
    rules:
      - matches: [{path: {type: PathPrefix, value: /}}]
  - name: down-retry
    namespace: tr
    parent: {service: down, port: 80}
    annotations:
      retry.trellis.dev/limit: "3"
      retry.trellis.dev/http-statuses: "5xx"
      retry.trellis.dev/budget-ratio: "0.2"
      retry.trellis.dev/budget-min-per-second: "10"
      retry.trellis.dev/budget-ttl: "10s"
    rules:
      - matches: [{path: {type: PathPrefix, value: /}}]
"#;

/// `web` splits 90/10 between `web-v1` and `web-v2`, and has two more
/// routes by path; `echo` is a gRPC service whose route retries
/// UNAVAILABLE.
const ROUTES_MESH: &str = r#"
name: {mesh}
workloads:
  - name: client
    namespace: tr
    serviceAccount: client
    command: [sleep, infinity]
  - name: v1
    namespace: tr
    serviceAccount: v1
    replicas: 2
    ports: [8080]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:8080", --name, "{name}"]
  - name: v2
    namespace: tr
    serviceAccount: v2
    ports: [8080]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:8080", --name, "{name}"]
  - name: echo
    namespace: tr
    serviceAccount: echo
    ports: [9090]
    command: [/usr/bin/python3, "{repo}/scripts/grpc_echo.py", serve, --port, "9090", --name, "{name}"]
services:
  - {name: web, namespace: tr, selector: v1, ports: [{port: 80, targetPort: 8080}]}
  - {name: web-v1, namespace: tr, selector: v1, ports: [{port: 80, targetPort: 8080}]}
  - {name: web-v2, namespace: tr, selector: v2, ports: [{port: 80, targetPort: 8080}]}
  - {name: echo, namespace: tr, selector: echo, ports: [{port: 9090, targetPort: 9090}]}
routes:
  - name: web-split
    namespace: tr
    parent: {service: web, port: 80}
    rules:
      - matches: [{path: {type: PathPrefix, value: /split}}]
        backendRefs:
          - {name: web-v1, port: 80, weight: 90}
          - {name: web-v2, port: 80, weight: 10}
  - name: web-fast
    namespace: tr
    parent: {service: web, port: 80}
    rules:
      - matches: [{path: {type: PathPrefix, value: /status}}]
  - name: web-slow
    namespace: tr
    parent: {service: web, port: 80}
    rules:
      - matches: [{path: {type: PathPrefix, value: /delay}}]
  - name: echo-retry
    namespace: tr
    kind: GRPCRoute
    parent: {service: echo, port: 9090}
    annotations:
      retry.trellis.dev/limit: "2"
      retry.trellis.dev/grpc-codes: "unavailable"
    rules:
      - matches: [{method: {service: trellis.test.Echo}}]
"#;

fn up(prefix: &str, yaml: &str) -> Mesh {
    require_root("network namespaces, iptables and the proxies' uid");
    require_tool("curl");
    Mesh::up(prefix, yaml)
}

/// `trellis app load` from `client`, bounded by `requests` at `rps`,
/// eight at a time.
fn load(mesh: &Mesh, url: &str, rps: u32, requests: u32) -> Value {
    load_with(mesh, url, rps, requests, 8)
}

/// [`load`] with `concurrency` requests (and HTTP/1.1 keep-alive
/// connections) at a time.
fn load_with(mesh: &Mesh, url: &str, rps: u32, requests: u32, concurrency: u32) -> Value {
    let trellis = bin("trellis");
    let child = mesh.spawn(
        "client",
        &[
            trellis.to_str().unwrap(),
            "app",
            "load",
            "--url",
            url,
            "--rps",
            &rps.to_string(),
            "--requests",
            &requests.to_string(),
            "--concurrency",
            &concurrency.to_string(),
        ],
    );
    let summary = json_summary(child, "trellis app load");
    eprintln!("load {url}: {summary}");
    summary
}

fn ok(summary: &Value) -> u64 {
    summary["ok"].as_u64().unwrap()
}

fn failed(summary: &Value) -> u64 {
    summary["failed"].as_u64().unwrap()
}

/// The client proxy's retries of `route`, all reasons.
fn retries(m: &Metrics, route: &str) -> f64 {
    m.sum("trellis_http_retries_total", &[("route", route)])
}

#[test]
fn netns_traffic_retries_hide_a_flaky_replica_within_budget_and_accrual_ejects_a_broken_one() {
    let mesh = up("tq", RETRY_MESH);

    // A replica failing 30 %: with the retry route, ≥ 99.9 % succeed, and
    // the retries stay within the budget (20 % of requests + 10/s).
    let before = retries(&mesh.metrics("client"), "flaky-retry");
    let s = load(&mesh, "http://flaky.tr.svc.cluster.local/", 400, 10_000);
    let made = retries(&mesh.metrics("client"), "flaky-retry") - before;
    assert!(ok(&s) >= 9_990, "success rate below 99.9 %: {s}");
    let secs = s["elapsed_s"].as_f64().unwrap();
    let budget = 0.2 * 10_000.0 + 10.0 * (secs + 10.0);
    assert!(made > 0.0, "no retries were needed?");
    assert!(made <= budget, "{made} retries, budget {budget}");

    // A replica failing everything, no retry route: it is taken out —
    // by the balancer's latency estimate (a failure never makes an
    // endpoint look cheaper) and by failure accrual once it is tried
    // again — and later traffic succeeds without retries.
    let first = load(&mesh, "http://broken.tr.svc.cluster.local/", 200, 1_000);
    assert!(
        failed(&first) >= 1,
        "the broken replica was never tried: {first}"
    );
    assert!(
        failed(&first) <= 20,
        "the broken replica kept getting traffic: {first}"
    );
    let later = load(&mesh, "http://broken.tr.svc.cluster.local/", 200, 2_000);
    let m = mesh.metrics("client");
    eprintln!(
        "broken replica: {} + {} failures, {} ejection(s)",
        failed(&first),
        failed(&later),
        m.sum(
            "trellis_endpoint_ejections_total",
            &[("service", "broken.tr.svc.cluster.local:80")]
        )
    );
    // Only the rare probe of the ejected replica fails (backoff 1 s doubling).
    assert!(failed(&later) <= 5, "success rate did not recover: {later}");
    assert_eq!(
        retries(&m, "default"),
        0.0,
        "the broken service has no retry route"
    );

    // Every replica down: retries stay within ratio × requests + minimum
    // over the run.
    let before = retries(&mesh.metrics("client"), "down-retry");
    let s = load(&mesh, "http://down.tr.svc.cluster.local/", 200, 2_000);
    assert_eq!(ok(&s), 0, "{s}");
    let made = retries(&mesh.metrics("client"), "down-retry") - before;
    let secs = s["elapsed_s"].as_f64().unwrap();
    let bound = 0.2 * 2_000.0 + 10.0 * (secs + 10.0);
    eprintln!("full outage: {made} retries for 2000 requests in {secs} s, bound {bound}");
    assert!(made <= bound, "{made} retries, bound {bound}");
    let exhausted = mesh.metrics("client").sum(
        "trellis_http_retry_budget_exhausted_total",
        &[("route", "down-retry")],
    );
    assert!(exhausted > 0.0, "the budget never ran out in a full outage");
}

#[test]
fn netns_traffic_split_per_route_metrics_grpc_retries_and_controller_loss() {
    require_tool("/usr/bin/python3");
    let mesh = up("tr", ROUTES_MESH);

    // 90/10 split, measured at the two backends' proxies.
    let inbound = |pod: &str| {
        mesh.metrics(pod)
            .sum("trellis_http_requests_total", &[("direction", "inbound")])
    };
    let base: Vec<f64> = ["v1-0", "v1-1", "v2-0"]
        .iter()
        .map(|p| inbound(p))
        .collect();
    let s = load(&mesh, "http://web.tr.svc.cluster.local/split", 500, 10_000);
    assert_eq!(ok(&s), 10_000, "{s}");
    let v1 = inbound("v1-0") + inbound("v1-1") - base[0] - base[1];
    let v2 = inbound("v2-0") - base[2];
    assert_eq!(v1 + v2, 10_000.0);
    let share = v1 / 10_000.0;
    eprintln!("split: v1 {v1}, v2 {v2}");
    assert!(
        (0.87..=0.93).contains(&share),
        "v1 got {share} of the traffic"
    );

    // Two routes of one service: separate counts, success and latency.
    load(
        &mesh,
        "http://web.tr.svc.cluster.local/status/200",
        200,
        300,
    );
    load(
        &mesh,
        "http://web.tr.svc.cluster.local/status/503",
        200,
        100,
    );
    load(&mesh, "http://web.tr.svc.cluster.local/delay/30", 100, 200);
    let m = mesh.metrics("client");
    let svc = ("service", "web.tr.svc.cluster.local:80");
    let out = ("direction", "outbound");
    let count = |route: &str, class: &str| {
        m.sum(
            "trellis_http_requests_total",
            &[out, svc, ("route", route), ("classification", class)],
        )
    };
    assert_eq!(count("web-fast", "success"), 300.0);
    assert_eq!(count("web-fast", "failure"), 100.0);
    assert_eq!(count("web-slow", "success"), 200.0);
    assert_eq!(count("web-slow", "failure"), 0.0);
    let under = |route: &str, le: &str| {
        m.sum(
            "trellis_http_request_duration_seconds_bucket",
            &[out, svc, ("route", route), ("le", le)],
        )
    };
    assert_eq!(
        under("web-slow", "0.025"),
        0.0,
        "a 30 ms route answered under 25 ms"
    );
    assert!(
        under("web-fast", "0.025") >= 390.0,
        "the fast route looks slow"
    );

    // gRPC: UNAVAILABLE is retried (twice per call), INVALID_ARGUMENT not.
    let grpc = |code: &str| {
        let out = mesh.exec(
            "client",
            &[
                "/usr/bin/python3",
                &format!("{}/scripts/grpc_echo.py", trellis_e2e::repo().display()),
                "call",
                "--target",
                "echo.tr.svc.cluster.local:9090",
                "--kind",
                "fail",
                "--code",
                code,
                "--count",
                "20",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    grpc("14");
    let after_unavailable = retries(&mesh.metrics("client"), "echo-retry");
    assert_eq!(after_unavailable, 40.0, "UNAVAILABLE: two retries per call");
    grpc("3");
    assert_eq!(
        retries(&mesh.metrics("client"), "echo-retry"),
        after_unavailable,
        "INVALID_ARGUMENT must not be retried"
    );

    // The controller goes away: traffic keeps flowing on the last state.
    let status = mesh.status();
    let pid = status["nodeProcesses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "controller")
        .and_then(|p| p["pid"].as_u64())
        .expect("a controller process");
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let s = load(&mesh, "http://web.tr.svc.cluster.local/split", 200, 1_000);
    assert_eq!(ok(&s), 1_000, "traffic failed without the controller: {s}");
}

/// `web`: `{replicas}` equal replicas of a plain HTTP server.
const BALANCE_MESH: &str = r#"
name: {mesh}
workloads:
  - name: client
    namespace: tb
    serviceAccount: client
    command: [sleep, infinity]
  - name: web
    namespace: tb
    serviceAccount: web
    replicas: {replicas}
    ports: [8080]
    command: ["{trellis}", app, http, --listen, "0.0.0.0:8080", --name, "{name}"]
services:
  - {name: web, namespace: tb, selector: web, ports: [{port: 80, targetPort: 8080}]}
"#;

const WEB_URL: &str = "http://web.tb.svc.cluster.local/";

/// Requests each replica's proxy has taken in, so far.
fn inbound_counts(mesh: &Mesh, pods: &[&str]) -> Vec<f64> {
    pods.iter()
        .map(|p| {
            mesh.metrics(p)
                .sum("trellis_http_requests_total", &[("direction", "inbound")])
        })
        .collect()
}

/// What each replica took in since `before`, checked to be an even share
/// of `n` within ±10 %: the test counts where every request went, not
/// only that it succeeded.
fn assert_even_split(mesh: &Mesh, pods: &[&str], before: &[f64], n: f64, what: &str) {
    let after = inbound_counts(mesh, pods);
    let got: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    eprintln!("{what}: {pods:?} got {got:?} of {n}");
    assert_eq!(got.iter().sum::<f64>(), n, "{what}: requests lost: {got:?}");
    let share = n / pods.len() as f64;
    for (pod, g) in pods.iter().zip(&got) {
        assert!(
            (g - share).abs() <= share * 0.1,
            "{what}: {pod} got {g} of {n} (even share {share}): {got:?}"
        );
    }
}

/// `n` requests from `client`, each on a new connection (a curl apiece);
/// every one must succeed.
fn curl_each(mesh: &Mesh, n: u32) {
    let out = mesh.sh(
        "client",
        &format!(
            "ok=0; for i in $(seq {n}); do c=$(curl -s -o /dev/null -w '%{{http_code}}' {WEB_URL}); [ \"$c\" = 200 ] && ok=$((ok+1)); done; echo $ok"
        ),
    );
    assert_eq!(out.trim(), n.to_string(), "not every request succeeded");
}

#[test]
fn netns_traffic_balancing_reaches_every_replica_evenly_and_avoids_a_slow_one() {
    let mesh = up("tb", &BALANCE_MESH.replace("{replicas}", "1"));
    let all = ["web-0", "web-1", "web-2"];

    // One replica, then scaled to three: the new replicas get requests
    // within seconds (one request every 50 ms, bounded at 20 s).
    let s = load(&mesh, WEB_URL, 0, 100);
    assert_eq!(ok(&s), 100, "{s}");
    let out = mesh.apply(&BALANCE_MESH.replace("{replicas}", "3"));
    assert!(
        out.status.success(),
        "mesh apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = std::time::Instant::now();
    let reached = trellis_e2e::eventually(std::time::Duration::from_secs(20), || {
        curl_each(&mesh, 5);
        let c = inbound_counts(&mesh, &all[1..]);
        c.iter().all(|&n| n > 0.0)
    });
    assert!(
        reached,
        "the new replicas got no requests after scaling 1 → 3"
    );
    eprintln!(
        "scaled 1 → 3: both new replicas served within {:?}",
        start.elapsed()
    );

    // A new connection for each request: 600, each replica within ±10 %
    // of 200.
    let before = inbound_counts(&mesh, &all);
    curl_each(&mesh, 600);
    assert_even_split(&mesh, &all, &before, 600.0, "a new connection each");

    // One kept-alive connection, one request at a time: balanced per
    // request, just as evenly.
    let before = inbound_counts(&mesh, &all);
    let s = load_with(&mesh, WEB_URL, 0, 600, 1);
    assert_eq!(ok(&s), 600, "{s}");
    assert_even_split(&mesh, &all, &before, 600.0, "one kept-alive connection");

    // web-2 turns slow (40 ms per answer): it gets only the few requests
    // that measure it, while the others share the rest.
    let slow_ip = mesh.ip("web-2");
    let set_latency = |ms: u32| {
        mesh.exec_ok(
            "client",
            &[
                "curl",
                "-sS",
                "--fail",
                &format!("http://{slow_ip}:8080/latency/{ms}"),
            ],
        );
    };
    set_latency(40);
    let before = inbound_counts(&mesh, &all);
    let s = load(&mesh, WEB_URL, 0, 600);
    assert_eq!(ok(&s), 600, "{s}");
    let after = inbound_counts(&mesh, &all);
    let got: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    eprintln!("slow web-2: {got:?} of 600");
    // Eight requests in flight: when the fast replicas have queues, the
    // slow one is the cheaper now and then (cost = latency × (in flight +
    // 1)), so "less" is a share, not zero.
    assert!(
        got[2] <= 60.0 && got[2] * 4.0 < got[0].min(got[1]),
        "the slow replica was not avoided: {got:?}"
    );

    // It recovers: being avoided, its estimate goes stale within a second,
    // so it is tried again (one request every 200 ms, bounded at 30 s)…
    set_latency(0);
    let marker = inbound_counts(&mesh, &["web-2"])[0];
    let start = std::time::Instant::now();
    let tried = trellis_e2e::eventually(std::time::Duration::from_secs(30), || {
        curl_each(&mesh, 1);
        inbound_counts(&mesh, &["web-2"])[0] > marker
    });
    assert!(tried, "the recovered replica was never tried again");
    eprintln!("recovered web-2 tried again after {:?}", start.elapsed());
    // …and a window of fast answers takes it back: it soon gets a fair
    // share of a batch of 60 again (bounded at 30 s).
    let start = std::time::Instant::now();
    let back = trellis_e2e::eventually(std::time::Duration::from_secs(30), || {
        let before = inbound_counts(&mesh, &all);
        curl_each(&mesh, 60);
        let after = inbound_counts(&mesh, &all);
        after[2] - before[2] >= 15.0
    });
    assert!(back, "the recovered replica never got its share back");
    eprintln!(
        "recovered web-2 back to its share after {:?}",
        start.elapsed()
    );
}
