//! From kubectl to traffic on one host: `trellis mesh up --kubernetes`
//! (etcd, kube-apiserver, kube-controller-manager, Trellis's node agent and
//! the chart), then a user's journey with `kubectl` and the files in
//! `examples/kubernetes/`, then `trellis mesh down`, which must leave
//! nothing behind. Needs root and the Kubernetes programs of
//! `scripts/build-kube.sh`.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use trellis_e2e::eventually;
use trellis_e2e::kube_mesh::*;

#[test]
fn kube_mesh_from_kubectl_to_mtls_traffic_and_down_leaves_nothing() {
    let mut mesh = KubeMesh::up(&[
        // Proxies renew at about 70 % of it: within the test.
        "--set",
        "identity.certLifetime=60s",
    ]);
    let m = &mesh;

    // The chart's pods ran through the agent like any other pod.
    for component in ["controller", "identity", "injector"] {
        let selector = format!("app.kubernetes.io/component={component}");
        m.wait_ready("trellis-system", &selector, 1, Duration::from_secs(10));
    }

    m.kubectl_ok(&["create", "namespace", "demo"]);
    m.kubectl_ok(&[
        "annotate",
        "namespace",
        "demo",
        "trellis.dev/inject=enabled",
    ]);
    for f in ["server.yaml", "client.yaml", "route.yaml"] {
        m.kubectl_ok(&["apply", "-f", &example(f)]);
    }
    m.wait_ready("demo", "server", 3, Duration::from_secs(120));
    m.wait_ready("demo", "client", 1, Duration::from_secs(60));

    // Injected by the real webhook: the capture init container and the
    // proxy as a native sidecar.
    let server_pods = m.pods("demo", "server");
    for p in &server_pods {
        let inits = container_names(p, "initContainers");
        assert!(
            inits.contains(&"trellis-init".to_string())
                && inits.contains(&"trellis-proxy".to_string()),
            "not injected: {inits:?}"
        );
    }
    let client = first(&m.pods("demo", "client"));
    let client_ref = format!("demo/{client}");

    // The client's requests reach every server replica over mutual TLS,
    // with the server's identity, and are counted under the route.
    let summary = load(
        m,
        &client_ref,
        "http://server.demo.svc.cluster.local/",
        50,
        4,
    );
    assert_eq!(summary["failed"], 0, "{summary}");
    let client_metrics = m.metrics("demo", &client);
    let server_id = "spiffe://cluster.local/ns/demo/sa/server";
    let over_mtls = client_metrics.sum(
        "trellis_http_requests_total",
        &[
            ("direction", "outbound"),
            ("route", "server"),
            ("tls", "true"),
            ("peer", server_id),
        ],
    );
    assert!(
        over_mtls >= 200.0,
        "outbound requests over mTLS to {server_id} under route `server`: {over_mtls}\n{}",
        client_metrics.0
    );
    let client_id = "spiffe://cluster.local/ns/demo/sa/client";
    let mut per_replica = Vec::new();
    for p in &server_pods {
        let name = p["metadata"]["name"].as_str().unwrap();
        let n = m.metrics("demo", name).sum(
            "trellis_http_requests_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("peer", client_id),
            ],
        );
        per_replica.push((name.to_string(), n));
    }
    assert!(
        per_replica.iter().all(|(_, n)| *n > 0.0),
        "every replica must serve some of the client's requests: {per_replica:?}"
    );

    // Scale 3 → 1 → 3 and a rollout restart, under 200 requests per
    // second: not one request fails.
    let before = names(&m.pods("demo", "server"));
    let traffic = spawn_load(
        m,
        &client_ref,
        "http://server.demo.svc.cluster.local/",
        200,
        120,
    );
    let started = Instant::now();
    m.kubectl_ok(&["scale", "-n", "demo", "deployment/server", "--replicas=1"]);
    m.wait_ready("demo", "server", 1, Duration::from_secs(60));
    m.kubectl_ok(&["scale", "-n", "demo", "deployment/server", "--replicas=3"]);
    m.wait_ready("demo", "server", 3, Duration::from_secs(60));
    m.kubectl_ok(&["rollout", "restart", "-n", "demo", "deployment/server"]);
    m.kubectl_ok(&[
        "rollout",
        "status",
        "-n",
        "demo",
        "deployment/server",
        "--timeout=120s",
    ]);
    m.wait_ready("demo", "server", 3, Duration::from_secs(60));
    let took = started.elapsed();
    let summary = stop_load(traffic, "load during scale and rollout");
    eprintln!("[kube_mesh] scale 3→1→3 and rollout restart in {took:?} under load: {summary}");
    assert!(
        took < Duration::from_secs(115),
        "the load ended before the rollout did ({took:?})"
    );
    assert_eq!(
        summary["failed"], 0,
        "requests failed during scale or rollout: {summary}"
    );
    // It ran the whole time, at its rate.
    assert!(
        summary["elapsed_s"].as_f64().unwrap() >= took.as_secs_f64() - 1.0,
        "{summary}"
    );
    assert!(summary["rps"].as_f64().unwrap() >= 195.0, "{summary}");
    let after = names(&m.pods("demo", "server"));
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "the rollout replaced every pod: {before:?} → {after:?}"
    );

    // The identity service's pod deleted while traffic flows: no request
    // fails, and the proxies renew their certificates once it is back.
    let servers = names(&m.pods("demo", "server"));
    let renewed = |pods: &[String]| -> Vec<f64> {
        pods.iter()
            .map(|p| {
                m.metrics("demo", p)
                    .sum("trellis_identity_renewals_total", &[("result", "ok")])
            })
            .collect()
    };
    let traffic = spawn_load(
        m,
        &client_ref,
        "http://server.demo.svc.cluster.local/",
        100,
        150,
    );
    let identity = names(&m.pods("trellis-system", IDENTITY));
    assert_eq!(identity.len(), 1, "{identity:?}");
    m.kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        "trellis-system",
        &identity[0],
        "--wait=false",
    ]);
    let ok = eventually(Duration::from_secs(60), || {
        let now = names(&m.pods("trellis-system", IDENTITY));
        now.len() == 1 && now[0] != identity[0]
    });
    assert!(ok, "the identity pod was not replaced");
    m.wait_ready("trellis-system", IDENTITY, 1, Duration::from_secs(60));
    let mut watched: Vec<String> = vec![client.clone()];
    watched.extend(servers.iter().cloned());
    let base = renewed(&watched);
    let renewed_all = eventually(Duration::from_secs(90), || {
        renewed(&watched)
            .iter()
            .zip(&base)
            .all(|(now, was)| now > was)
    });
    let summary = stop_load(traffic, "load while the identity service was replaced");
    assert!(
        renewed_all,
        "not every proxy renewed after the identity service came back: {base:?} → {:?}",
        renewed(&watched)
    );
    assert_eq!(
        summary["failed"], 0,
        "requests failed while the identity service was replaced: {summary}"
    );

    // A pod of an unannotated namespace: no sidecar, and the Service's
    // ClusterIP still reaches the server (whose proxy admits plaintext
    // callers until a policy says otherwise).
    m.kubectl_ok(&["create", "namespace", "plain"]);
    m.kubectl_ok(&["apply", "-n", "plain", "-f", &example("plain-client.yaml")]);
    m.wait_ready("plain", "plain-client", 1, Duration::from_secs(60));
    let plain = &m.pods("plain", "plain-client")[0];
    let containers: Vec<String> = container_names(plain, "containers")
        .into_iter()
        .chain(container_names(plain, "initContainers"))
        .collect();
    assert_eq!(
        containers,
        ["client"],
        "an unannotated namespace's pod was injected"
    );
    let plain_ref = format!("plain/{}", first(&m.pods("plain", "plain-client")));
    let summary = load(
        m,
        &plain_ref,
        "http://server.demo.svc.cluster.local/",
        20,
        2,
    );
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["status"]["200"], 40, "{summary}");

    // The policy names the client's ServiceAccount only: another meshed
    // pod's requests are refused with 403, and counted by the servers'
    // proxies; the client's still pass.
    m.kubectl_ok(&["apply", "-f", &example("intruder.yaml")]);
    m.kubectl_ok(&["apply", "-f", &example("policy.yaml")]);
    m.wait_ready("demo", "intruder", 1, Duration::from_secs(60));
    let intruder = format!("demo/{}", first(&m.pods("demo", "intruder")));
    let url = "http://server.demo.svc.cluster.local/";
    let refused = eventually(Duration::from_secs(30), || {
        load(m, &intruder, url, 10, 1)["status"]["403"] == 10
    });
    assert!(refused, "the intruder's requests were not refused");
    let servers = names(&m.pods("demo", "server"));
    let denied = |m: &KubeMesh| {
        sum_over(
            m,
            "demo",
            &servers,
            "trellis_authz_denied_total",
            &[("direction", "inbound")],
        )
    };
    let denied_before = denied(m);
    let summary = load(m, &intruder, url, 20, 1);
    assert_eq!(summary["status"]["403"], 20, "{summary}");
    assert_eq!(
        denied(m) - denied_before,
        20.0,
        "each refused request is counted once"
    );
    let summary = load(m, &client_ref, url, 20, 1);
    assert_eq!(
        summary["status"]["200"], 20,
        "the client is still admitted: {summary}"
    );

    // `trellis mesh down` leaves no namespace, process or file.
    let name = mesh.name.clone();
    let out = mesh.down();
    assert!(
        out.status.success(),
        "mesh down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = leftovers(&name);
    assert!(left.is_empty(), "mesh down left: {left:#?}");
}
