//! The webhook over real HTTPS: sample AdmissionReviews (`tests/data/`) in,
//! reviews out; TLS 1.3 only; certificate reload from a Secret-like
//! volume; metrics and readiness on the admin port.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use serde_json::Value;
use support::*;
use trellis_injector::webhook::config as cfg;

const POD_UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

fn with_namespace(review: &str, namespace: &str) -> String {
    let mut v: Value = serde_json::from_str(review).unwrap();
    v["request"]["namespace"] = namespace.into();
    v.to_string()
}

fn assert_refused(resp: &Value, uid: &str, needle: &str) {
    assert_eq!(resp["apiVersion"], "admission.k8s.io/v1", "{resp}");
    assert_eq!(resp["kind"], "AdmissionReview", "{resp}");
    let r = &resp["response"];
    assert_eq!(r["uid"], uid, "{resp}");
    assert_eq!(r["allowed"], false, "{resp}");
    assert_eq!(r["status"]["code"], 400, "{resp}");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
    assert!(r.get("patch").is_none(), "{resp}");
}

fn assert_admitted_unchanged(resp: &Value, uid: &str) {
    assert_eq!(resp["apiVersion"], "admission.k8s.io/v1", "{resp}");
    let r = &resp["response"];
    assert_eq!(r["uid"], uid, "{resp}");
    assert_eq!(r["allowed"], true, "{resp}");
    assert!(r.get("patch").is_none(), "{resp}");
    assert!(r.get("patchType").is_none(), "{resp}");
}

/// Whether `v`, anywhere inside, is an object with `"name": name`.
fn names(v: &Value, name: &str) -> bool {
    match v {
        Value::Object(m) => {
            m.get("name") == Some(&Value::from(name)) || m.values().any(|v| names(v, name))
        }
        Value::Array(a) => a.iter().any(|v| names(v, name)),
        _ => false,
    }
}

#[tokio::test]
async fn injects_a_pod_created_in_an_enabled_namespace() {
    let r = start(&[]).await;
    let resp = review(&r, sample("pod-create.json")).await;
    assert_eq!(resp["apiVersion"], "admission.k8s.io/v1", "{resp}");
    assert_eq!(resp["kind"], "AdmissionReview", "{resp}");
    let answer = &resp["response"];
    assert_eq!(answer["uid"], POD_UID, "{resp}");
    assert_eq!(answer["allowed"], true, "{resp}");
    assert_eq!(answer["patchType"], "JSONPatch", "{resp}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(
            answer["patch"]
                .as_str()
                .expect("the patch is a base64 string"),
        )
        .unwrap();
    let patch: Value = serde_json::from_slice(&patch).unwrap();
    let ops = patch.as_array().expect("a JSON Patch is an array");
    assert!(
        ops.iter()
            .all(|op| op["op"].is_string() && op["path"].is_string()),
        "{patch:#}"
    );
    assert_eq!(r.metrics.reviews("injected", "injected"), 1);
    // Depends on the pure injection logic: the patch adds the sidecar and
    // the init container.
    assert!(
        names(&patch, "trellis-proxy"),
        "the patch adds no trellis-proxy container: {patch:#}"
    );
    assert!(
        names(&patch, "trellis-init"),
        "the patch adds no trellis-init container: {patch:#}"
    );
}

#[tokio::test]
async fn admits_a_pod_in_a_namespace_without_the_annotation_unchanged() {
    let r = start(&[]).await;
    let resp = review(&r, with_namespace(&sample("pod-create.json"), "plain")).await;
    assert_admitted_unchanged(&resp, POD_UID);
    assert!(resp["response"].get("warnings").is_none(), "{resp}");
    assert_eq!(r.metrics.reviews("skipped", "not_enabled"), 1);
}

#[tokio::test]
async fn warns_when_a_pod_asked_for_the_proxy_and_cannot_have_it() {
    let r = start(&[]).await;
    let resp = review(
        &r,
        with_namespace(&sample("pod-create-invalid-override.json"), "plain"),
    )
    .await;
    assert_admitted_unchanged(&resp, "d00dfeed-aaaa-4bbb-8ccc-dddddddddddd");
    let warning = resp["response"]["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("config.trellis.dev/proxy-cpu-request"),
        "{warning}"
    );
    assert_eq!(r.metrics.reviews("skipped", "invalid"), 1);
}

#[tokio::test]
async fn a_namespace_missing_from_the_cache_is_decided_without_its_annotations() {
    let r = start(&[]).await;
    // `fresh` is not cached: after the 100 ms wait the pod is decided on
    // its own annotations, and it asks for the proxy itself.
    let mut v: Value = serde_json::from_str(&sample("pod-create.json")).unwrap();
    v["request"]["namespace"] = "fresh".into();
    v["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({"trellis.dev/inject": "enabled"});
    let resp = review(&r, v.to_string()).await;
    assert_eq!(resp["response"]["allowed"], true, "{resp}");
    assert_eq!(resp["response"]["patchType"], "JSONPatch", "{resp}");
    assert_eq!(r.metrics.namespace_misses(), 1);

    // Without the pod's annotation, the namespace's (unknown) is missed.
    let resp = review(&r, with_namespace(&sample("pod-create.json"), "fresh")).await;
    assert_admitted_unchanged(&resp, POD_UID);
    assert_eq!(r.metrics.namespace_misses(), 2);
    assert_eq!(r.metrics.reviews("skipped", "not_enabled"), 1);

    // Once it is cached, its annotation counts.
    r.namespaces
        .insert(namespace("fresh", &[("trellis.dev/inject", "enabled")]));
    let resp = review(&r, with_namespace(&sample("pod-create.json"), "fresh")).await;
    assert_eq!(resp["response"]["patchType"], "JSONPatch", "{resp}");
    assert_eq!(r.metrics.namespace_misses(), 2);
}

#[tokio::test]
async fn refuses_malformed_json_with_a_review() {
    let r = start(&[]).await;
    let resp = review(&r, "{\"apiVersion\": admission.k8s.io/v1}").await;
    assert_refused(&resp, "", "not a valid AdmissionReview");

    // Broken after the uid: the uid is still answered.
    let broken = sample("pod-create.json").replacen("\"kind\": {", "\"kind\": {{", 1);
    let resp = review(&r, broken).await;
    assert_refused(&resp, POD_UID, "not a valid AdmissionReview");
    assert_eq!(r.metrics.reviews("error", "malformed"), 2);
}

#[tokio::test]
async fn refuses_a_truncated_review() {
    let r = start(&[]).await;
    let full = sample("pod-create.json");
    let resp = review(&r, &full.as_bytes()[..full.len() / 2]).await;
    assert_refused(&resp, POD_UID, "ends early");
    assert_eq!(r.metrics.reviews("error", "truncated"), 1);
}

#[tokio::test]
async fn refuses_a_body_that_breaks_off() {
    let r = start(&[]).await;
    let full = sample("pod-create.json");
    let head = format!(
        "POST /inject HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        full.len()
    );
    let answer = raw_exchange(&r, &head, &full.as_bytes()[..1000]).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let json = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let resp: Value = serde_json::from_str(json).unwrap();
    assert_refused(&resp, POD_UID, "broke off");
    assert_eq!(r.metrics.reviews("error", "truncated"), 1);
}

#[tokio::test]
async fn serves_http2() {
    let r = start(&[]).await;
    let resp = review_h2(&r, sample("pod-create.json").into()).await;
    assert_eq!(resp["response"]["uid"], POD_UID, "{resp}");
    assert_eq!(resp["response"]["allowed"], true, "{resp}");
}

#[tokio::test]
async fn refuses_an_oversized_review() {
    let r = start(&[(cfg::MAX_REVIEW_BYTES, "16384")]).await;
    // As the API server writes it: the uid first, the object after it.
    let big = sample("pod-create.json").replacen(
        "\"labels\": {",
        &format!(
            "\"annotations\": {{\"example.com/blob\": \"{}\"}}, \"labels\": {{",
            "x".repeat(40_000)
        ),
        1,
    );
    assert!(big.len() > 40_000);
    let resp = review(&r, big).await;
    assert_refused(
        &resp,
        POD_UID,
        "larger than the injector's limit of 16384 bytes",
    );
    assert_eq!(r.metrics.reviews("error", "oversized"), 1);

    // The next review is served as usual.
    let resp = review(&r, sample("pod-create.json")).await;
    assert_eq!(resp["response"]["allowed"], true, "{resp}");
}

#[tokio::test]
async fn admits_other_kinds_and_operations_unchanged_with_a_warning() {
    let r = start(&[]).await;
    let resp = review(&r, sample("deployment-create.json")).await;
    assert_admitted_unchanged(&resp, "e5a1b2c3-d4e5-4f60-8a7b-9c0d1e2f3a4b");
    let warning = resp["response"]["warnings"][0].as_str().unwrap();
    assert!(warning.contains("only injects pods on CREATE"), "{warning}");
    assert!(warning.contains("apps/v1 Deployment"), "{warning}");

    let resp = review(&r, sample("pod-update.json")).await;
    assert_admitted_unchanged(&resp, "b1c2d3e4-0000-4a5b-8c7d-0e1f2a3b4c5d");
    let warning = resp["response"]["warnings"][0].as_str().unwrap();
    assert!(warning.contains("only injects pods on CREATE"), "{warning}");
    assert!(warning.contains("UPDATE"), "{warning}");

    assert_eq!(r.metrics.reviews("error", "wrong_kind"), 1);
    assert_eq!(r.metrics.reviews("error", "wrong_operation"), 1);
}

#[tokio::test]
async fn refuses_a_v1beta1_review() {
    let r = start(&[]).await;
    let resp = review(&r, sample("pod-create-v1beta1.json")).await;
    assert_refused(
        &resp,
        "c0ffee00-1111-4222-8333-444455556666",
        "admission.k8s.io/v1beta1",
    );
    assert_eq!(r.metrics.reviews("error", "wrong_version"), 1);
}

#[tokio::test]
async fn answers_only_post_to_the_inject_path() {
    let r = start(&[]).await;
    let (status, _) = request(&r, "GET", "/inject", Vec::new()).await;
    assert_eq!(status, 405);
    let (status, _) = request(&r, "POST", "/mutate", sample("pod-create.json").into()).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn refuses_tls12_clients() {
    let r = start(&[]).await;
    let tls12 = client_config(&r.pki.ca, &[&rustls::version::TLS12]);
    let refused = handshake(r.addr, tls12).await;
    assert!(refused.is_err(), "a TLS 1.2-only client was accepted");
    eventually("the failed handshake to be counted", async || {
        (r.metrics.tls_handshake_failures() == 1).then_some(())
    })
    .await;

    // Both offered: 1.3 is spoken.
    let both = client_config(
        &r.pki.ca,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    );
    let (_, tls) = handshake(r.addr, both).await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn reloads_the_certificate_when_the_secret_changes() {
    let r = start(&[]).await;
    assert_eq!(presented(&r).await, r.pair.leaf);

    // The kubelet swaps `..data`: new handshakes present the new pair.
    let second = r.pki.serving_pair();
    r.secret.update(&second.cert_pem, &second.key_pem);
    eventually("the new certificate to be presented", async || {
        (presented(&r).await == second.leaf).then_some(())
    })
    .await;
    assert_eq!(r.metrics.tls_reloads("success"), 1);

    // A pair that does not match is refused; the second pair stays.
    let third = r.pki.serving_pair();
    r.secret.update(&third.cert_pem, &second.key_pem);
    eventually("the bad pair to be refused", async || {
        (r.metrics.tls_reloads("failure") == 1).then_some(())
    })
    .await;
    assert_eq!(presented(&r).await, second.leaf);
    let resp = review(&r, sample("pod-create.json")).await;
    assert_eq!(resp["response"]["allowed"], true, "{resp}");

    // Not PEM at all: refused too.
    r.secret.update("junk", "junk");
    eventually("the junk to be refused", async || {
        (r.metrics.tls_reloads("failure") == 2).then_some(())
    })
    .await;
    assert_eq!(presented(&r).await, second.leaf);
    assert_eq!(r.metrics.tls_reloads("success"), 1);
}

#[tokio::test]
async fn counts_reviews_by_outcome_on_the_admin_port() {
    let r = start(&[]).await;
    review(&r, sample("pod-create.json")).await;
    review(&r, with_namespace(&sample("pod-create.json"), "plain")).await;
    review(&r, with_namespace(&sample("pod-create.json"), "plain")).await;
    review(&r, "nonsense").await;

    let (status, text) = admin_get(&r, "/metrics").await;
    assert_eq!(status, 200);
    let reviews = |outcome: &str, reason: &str| {
        metric(
            &text,
            &format!("trellis_injector_reviews_total{{outcome=\"{outcome}\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(reviews("injected", "injected"), 1.0, "{text}");
    assert_eq!(reviews("skipped", "not_enabled"), 2.0, "{text}");
    assert_eq!(reviews("error", "malformed"), 1.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "trellis_injector_review_duration_seconds_count{outcome=\"skipped\"}"
        ),
        2.0,
        "{text}"
    );
    assert!(
        text.contains(
            "trellis_injector_review_duration_seconds_bucket{le=\"0.0005\",outcome=\"skipped\"}"
        ) || text.contains(
            "trellis_injector_review_duration_seconds_bucket{outcome=\"skipped\",le=\"0.0005\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("trellis_injector_tls_reloads_total{result=\"failure\"} 0"),
        "{text}"
    );
    assert!(
        metric(&text, "trellis_injector_tls_cert_expiry_timestamp_seconds") > 4.0e9,
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
}

#[tokio::test]
async fn ready_once_the_namespace_cache_has_synced() {
    let r = start(&[]).await;
    let (status, _) = admin_get(&r, "/ready").await;
    assert_eq!(status, 200);
    r.namespaces.set_synced(false);
    let (status, text) = admin_get(&r, "/ready").await;
    assert_eq!(status, 503);
    assert!(text.contains("namespace cache"), "{text}");
    r.namespaces.set_synced(true);
    let (status, _) = admin_get(&r, "/ready").await;
    assert_eq!(status, 200);

    let (status, text) = admin_get(&r, "/live").await;
    assert_eq!((status, text.as_str()), (200, "live\n"));
    let (status, text) = admin_get(&r, "/config").await;
    assert_eq!(status, 200);
    let config: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["server"]["max_review_bytes"], 3_145_728, "{config}");
    assert_eq!(
        config["injector"]["trustDomain"], "cluster.local",
        "{config}"
    );
}

#[tokio::test]
async fn stops_on_shutdown() {
    let r = start(&[]).await;
    review(&r, sample("pod-create.json")).await;
    r.shutdown.begin();
    let left = r.shutdown.drained(std::time::Duration::from_secs(5)).await;
    assert_eq!(left, 0);
    tokio::time::timeout(std::time::Duration::from_secs(5), r.task)
        .await
        .expect("the webhook did not stop")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(r.addr).await.is_err());
}

/// The pod of issue 17's security review: every port around its proxy,
/// plaintext let in.
fn reviewed_pod(namespace: &str) -> String {
    let mut v: Value = serde_json::from_str(&sample("pod-create.json")).unwrap();
    v["request"]["namespace"] = namespace.into();
    v["request"]["object"]["metadata"]["annotations"] = serde_json::json!({
        "config.trellis.dev/skip-inbound-ports": "1-65535",
        "config.trellis.dev/skip-outbound-ports": "1-65535",
        "config.trellis.dev/default-inbound-policy": "all-unauthenticated",
    });
    v.to_string()
}

#[tokio::test]
async fn a_pod_below_a_deny_floor_is_refused_with_the_annotation_value_and_floor() {
    let r = start(&[]).await;
    r.namespaces.insert(namespace(
        "payments",
        &[
            ("trellis.dev/inject", "enabled"),
            ("config.trellis.dev/floor-skip-inbound-ports", "none"),
            (
                "config.trellis.dev/floor-default-inbound-policy",
                "all-authenticated",
            ),
        ],
    ));
    let resp = review(&r, reviewed_pod("payments")).await;
    let answer = &resp["response"];
    assert_eq!(answer["uid"], POD_UID, "{resp}");
    assert_eq!(answer["allowed"], false, "{resp}");
    assert_eq!(answer["status"]["code"], 403, "{resp}");
    assert_eq!(answer["status"]["reason"], "Forbidden", "{resp}");
    assert!(answer.get("patch").is_none(), "{resp}");
    let message = answer["status"]["message"].as_str().unwrap();
    for needle in [
        "refused by the Trellis floor",
        r#"config.trellis.dev/skip-inbound-ports: "1-65535" on the pod"#,
        "floor skip-inbound-ports: none, set by the namespace's config.trellis.dev/floor-skip-inbound-ports",
        r#"config.trellis.dev/default-inbound-policy: "all-unauthenticated" on the pod is weaker than the floor's all-authenticated"#,
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    // No floor on skip-outbound-ports here: not a violation.
    assert!(!message.contains("skip-outbound-ports"), "{message}");
    assert_eq!(
        r.metrics.reviews("refused", "floor_default_inbound_policy"),
        1
    );
    let (_, text) = admin_get(&r, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            r#"trellis_injector_reviews_total{outcome="refused",reason="floor_default_inbound_policy"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn a_pod_below_a_warn_floor_is_injected_with_the_floor_and_warned() {
    let r = start(&[]).await;
    r.namespaces.insert(namespace(
        "payments",
        &[
            ("trellis.dev/inject", "enabled"),
            ("config.trellis.dev/floor-enforcement", "warn"),
            ("config.trellis.dev/floor-skip-inbound-ports", "none"),
            ("config.trellis.dev/floor-skip-outbound-ports", "none"),
            (
                "config.trellis.dev/floor-default-inbound-policy",
                "all-authenticated",
            ),
        ],
    ));
    let resp = review(&r, reviewed_pod("payments")).await;
    let answer = &resp["response"];
    assert_eq!(answer["allowed"], true, "{resp}");
    assert_eq!(answer["patchType"], "JSONPatch", "{resp}");
    let warnings: Vec<&str> = answer["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings
            .iter()
            .all(|w| w.starts_with("trellis: below the floor, the floor's value applied:")),
        "{warnings:?}"
    );
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["patch"].as_str().unwrap())
        .unwrap();
    let patch = String::from_utf8(patch).unwrap();
    assert!(!patch.contains("--skip-inbound-ports"), "{patch}");
    assert!(!patch.contains("--skip-outbound-ports"), "{patch}");
    assert!(
        patch.contains(
            r#"{"name":"TRELLIS_PROXY_DEFAULT_INBOUND_POLICY","value":"all-authenticated"}"#
        ),
        "{patch}"
    );
    assert_eq!(
        r.metrics
            .reviews("injected", "floor_default_inbound_policy"),
        1
    );
    assert_eq!(r.metrics.reviews("injected", "injected"), 0);
}

/// A namespace's labels, as (key, value) pairs.
type Labels = &'static [(&'static str, &'static str)];

/// A namespace with these labels (and `trellis.dev/inject: enabled`).
fn labelled(name: &str, labels: &[(&str, &str)]) -> trellis_injector::NamespaceInfo {
    let mut ns = namespace(name, &[("trellis.dev/inject", "enabled")]);
    ns.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ns
}

/// Pod Security `baseline` or `restricted` enforced: the pod is still
/// injected (never left unmeshed), the answer says the API server will
/// refuse it and what to do, and the review is counted as
/// `injected_pod_security_refused`, not `injected`. `privileged`, `warn`
/// and `audit` get no warning and count as injected.
#[tokio::test]
async fn warns_and_counts_when_pod_security_will_refuse_the_injected_pod() {
    let r = start(&[]).await;
    let cases: &[(&str, Labels, &str)] = &[
        (
            "ps-baseline",
            &[("pod-security.kubernetes.io/enforce", "baseline")],
            "trellis: namespace ps-baseline enforces Pod Security \"baseline\" (label pod-security.kubernetes.io/enforce), so the API server will refuse this pod: trellis-init, which installs the pod's traffic-capture rules, adds capabilities NET_ADMIN and NET_RAW. To mesh it at this level, install the Trellis CNI plugin (Helm chart value cni.enabled=true), which sets up capture with no privileged container in the pod; or label the namespace pod-security.kubernetes.io/enforce=privileged, or opt the pod out of the mesh with the annotation trellis.dev/inject: disabled",
        ),
        (
            "ps-restricted",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
            "trellis: namespace ps-restricted enforces Pod Security \"restricted\" (label pod-security.kubernetes.io/enforce), so the API server will refuse this pod: trellis-init, which installs the pod's traffic-capture rules, adds capabilities NET_ADMIN and NET_RAW and runs as root. To mesh it at this level, install the Trellis CNI plugin (Helm chart value cni.enabled=true), which sets up capture with no privileged container in the pod; or label the namespace pod-security.kubernetes.io/enforce=privileged, or opt the pod out of the mesh with the annotation trellis.dev/inject: disabled",
        ),
        // warn refuses nothing; the API server's own warning names
        // trellis-init.
        (
            "ps-warn",
            &[
                ("pod-security.kubernetes.io/enforce", "privileged"),
                ("pod-security.kubernetes.io/warn", "baseline"),
            ],
            "",
        ),
        (
            "ps-privileged",
            &[("pod-security.kubernetes.io/enforce", "privileged")],
            "",
        ),
        (
            "ps-audit",
            &[("pod-security.kubernetes.io/audit", "restricted")],
            "",
        ),
    ];
    for (name, labels, warning) in cases {
        r.namespaces.insert(labelled(name, labels));
        let resp = review(&r, with_namespace(&sample("pod-create.json"), name)).await;
        let answer = &resp["response"];
        assert_eq!(answer["allowed"], true, "{name}: {resp}");
        assert_eq!(answer["patchType"], "JSONPatch", "{name}: {resp}");
        if warning.is_empty() {
            assert!(answer.get("warnings").is_none(), "{name}: {resp}");
        } else {
            assert_eq!(answer["warnings"], serde_json::json!([warning]), "{name}");
        }
    }
    assert_eq!(
        r.metrics
            .reviews("injected_pod_security_refused", "pod_security_baseline"),
        1
    );
    assert_eq!(
        r.metrics
            .reviews("injected_pod_security_refused", "pod_security_restricted"),
        1
    );
    assert_eq!(r.metrics.reviews("injected", "injected"), 3);
    let (_, text) = admin_get(&r, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            r#"trellis_injector_reviews_total{outcome="injected_pod_security_refused",reason="pod_security_baseline"}"#
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"trellis_injector_review_duration_seconds_count{outcome="injected_pod_security_refused"}"#
        ),
        2.0,
        "{text}"
    );
}

/// CNI mode (the chart's `cni.enabled`): the same namespaces get no
/// warning — what injection adds passes `restricted` — and the reviews
/// count as `injected`. `trellis-init` is the unprivileged check.
#[tokio::test]
async fn in_cni_mode_pod_security_namespaces_are_injected_without_a_warning() {
    let dir = TempDir::new("injector-it-cni");
    let file = dir.join("config.yaml");
    std::fs::write(&file, "init:\n  captureMode: cni\n").unwrap();
    let r = start(&[(cfg::CONFIG_FILE, file.to_str().unwrap())]).await;
    for level in ["baseline", "restricted"] {
        let name = format!("ps-cni-{level}");
        r.namespaces.insert(labelled(
            &name,
            &[("pod-security.kubernetes.io/enforce", level)],
        ));
        let resp = review(&r, with_namespace(&sample("pod-create.json"), &name)).await;
        let answer = &resp["response"];
        assert_eq!(answer["allowed"], true, "{level}: {resp}");
        assert!(answer.get("warnings").is_none(), "{level}: {resp}");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(answer["patch"].as_str().unwrap())
            .unwrap();
        let patch: Value = serde_json::from_slice(&patch).unwrap();
        let inits = patch
            .as_array()
            .unwrap()
            .iter()
            .find(|op| op["path"] == "/spec/initContainers")
            .unwrap();
        let init = &inits["value"][0];
        assert_eq!(init["name"], "trellis-init", "{patch:#}");
        assert_eq!(init["args"][0], "init");
        assert_eq!(init["args"][1], "--check");
        assert!(init["securityContext"]["capabilities"].get("add").is_none());
        assert!(
            !names(&patch, "trellis-init-run"),
            "no /run volume: {patch:#}"
        );
    }
    assert_eq!(r.metrics.reviews("injected", "injected"), 2);
    assert_eq!(
        r.metrics
            .reviews("injected_pod_security_refused", "pod_security_restricted")
            + r.metrics
                .reviews("injected_pod_security_refused", "pod_security_baseline"),
        0
    );
}
