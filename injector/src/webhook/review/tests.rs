#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const POD_CREATE: &str = include_str!("../../../tests/data/pod-create.json");
const POD_UPDATE: &str = include_str!("../../../tests/data/pod-update.json");
const POD_CREATE_V1BETA1: &str = include_str!("../../../tests/data/pod-create-v1beta1.json");
const DEPLOYMENT_CREATE: &str = include_str!("../../../tests/data/deployment-create.json");
const INVALID_OVERRIDE: &str = include_str!("../../../tests/data/pod-create-invalid-override.json");
const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

fn ns(name: &str, inject: Option<&str>) -> NamespaceInfo {
    NamespaceInfo {
        name: name.into(),
        labels: BTreeMap::new(),
        annotations: inject
            .map(|v| ("trellis.dev/inject".to_string(), v.to_string()))
            .into_iter()
            .collect(),
    }
}

fn run(body: &str, inject: Option<&str>) -> Reviewed {
    review(
        &Received::Complete(Bytes::copy_from_slice(body.as_bytes())),
        |name| ns(name, inject),
        &InjectorConfig::default(),
    )
}

fn response(r: &Reviewed) -> &Value {
    assert_eq!(
        r.review["apiVersion"], "admission.k8s.io/v1",
        "{}",
        r.review
    );
    assert_eq!(r.review["kind"], "AdmissionReview", "{}", r.review);
    assert!(r.review.get("request").is_none(), "{}", r.review);
    let resp = &r.review["response"];
    assert_eq!(resp["uid"], r.uid.as_str(), "{}", r.review);
    resp
}

fn assert_refused(r: &Reviewed, uid: &str, label: &str, needle: &str) {
    let resp = response(r);
    assert_eq!(r.uid, uid);
    assert_eq!(resp["allowed"], false, "{resp}");
    assert_eq!(resp["status"]["code"], 400, "{resp}");
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
    assert!(resp.get("patch").is_none(), "{resp}");
    assert_eq!(r.verdict.outcome(), "error");
    assert_eq!(r.verdict.reason(), label);
}

fn assert_admitted_unchanged(r: &Reviewed, uid: &str, label: &str) {
    let resp = response(r);
    assert_eq!(r.uid, uid);
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(resp.get("patch").is_none(), "{resp}");
    assert!(resp.get("patchType").is_none(), "{resp}");
    let warning = resp["warnings"][0].as_str().unwrap();
    assert!(warning.contains("only injects pods on CREATE"), "{warning}");
    assert_eq!(resp["status"]["message"], warning);
    assert_eq!(r.verdict.outcome(), "error");
    assert_eq!(r.verdict.reason(), label);
}

#[test]
fn a_pod_in_an_enabled_namespace_gets_a_base64_json_patch() {
    let r = run(POD_CREATE, Some("enabled"));
    let resp = response(&r);
    assert_eq!(r.uid, UID);
    assert_eq!(r.verdict, Verdict::Injected);
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().expect("patch is a base64 string"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    // The same patch the pure decision makes (the webhook adds nothing).
    let Outcome::Injected {
        patch: expected, ..
    } = inject(
        &parse(&Received::Complete(POD_CREATE.into())).unwrap().pod,
        &ns("demo", Some("enabled")),
        &InjectorConfig::default(),
    )
    else {
        panic!("not injected")
    };
    assert_eq!(patch, expected);
    assert!(resp.get("warnings").is_none(), "{resp}");
}

#[test]
fn a_pod_in_a_namespace_without_the_annotation_is_admitted_as_it_is() {
    let r = run(POD_CREATE, None);
    let resp = response(&r);
    assert_eq!(r.verdict, Verdict::Skipped(SkipReason::NotEnabled));
    assert_eq!(
        (r.verdict.outcome(), r.verdict.reason()),
        ("skipped", "not_enabled")
    );
    assert_eq!(resp["allowed"], true);
    for absent in ["patch", "patchType", "warnings"] {
        assert!(resp.get(absent).is_none(), "{absent} in {resp}");
    }
}

#[test]
fn a_pod_that_asked_and_cannot_have_the_proxy_is_admitted_with_a_warning() {
    let r = run(INVALID_OVERRIDE, None);
    let resp = response(&r);
    assert!(
        matches!(r.verdict, Verdict::Skipped(SkipReason::Invalid(_))),
        "{:?}",
        r.verdict
    );
    assert_eq!(r.verdict.reason(), "invalid");
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none(), "{resp}");
    let warning = resp["warnings"][0].as_str().unwrap();
    assert!(warning.contains("proxy-cpu-request"), "{warning}");
}

#[test]
fn the_namespace_comes_from_the_request_and_is_set_on_the_pod() {
    let req = parse(&Received::Complete(POD_CREATE.into())).unwrap();
    assert_eq!(req.namespace(), "demo");
    assert_eq!(req.uid(), UID);
    assert_eq!(req.pod().metadata.namespace.as_deref(), Some("demo"));
    assert_eq!(req.pod_name(), "web-7d4b9c6f8-*");

    let mut v: Value = serde_json::from_str(POD_CREATE).unwrap();
    v["request"].as_object_mut().unwrap().remove("namespace");
    let r = run(&v.to_string(), None);
    assert_refused(&r, UID, "malformed", "request.namespace is missing");
}

/// A namespace's labels, as (key, value) pairs.
type Labels = &'static [(&'static str, &'static str)];

/// The warning the injector gives in namespace `demo` under Pod Security
/// `baseline`, enforced (the API server refuses the injected pod).
const BASELINE_ENFORCED: &str = "trellis: namespace demo enforces Pod Security \"baseline\" (label pod-security.kubernetes.io/enforce), so the API server will refuse this pod: trellis-init, which installs the pod's traffic-capture rules, adds capabilities NET_ADMIN and NET_RAW. To mesh it at this level, install the Trellis CNI plugin (Helm chart value cni.enabled=true), which sets up capture with no privileged container in the pod; or label the namespace pod-security.kubernetes.io/enforce=privileged, or opt the pod out of the mesh with the annotation trellis.dev/inject: disabled";
const RESTRICTED_ENFORCED: &str = "trellis: namespace demo enforces Pod Security \"restricted\" (label pod-security.kubernetes.io/enforce), so the API server will refuse this pod: trellis-init, which installs the pod's traffic-capture rules, adds capabilities NET_ADMIN and NET_RAW and runs as root. To mesh it at this level, install the Trellis CNI plugin (Helm chart value cni.enabled=true), which sets up capture with no privileged container in the pod; or label the namespace pod-security.kubernetes.io/enforce=privileged, or opt the pod out of the mesh with the annotation trellis.dev/inject: disabled";

/// Each Pod Security label value: the pod is injected either way (never
/// left unmeshed); the answer warns, and the verdict counts it apart, only
/// when the API server will refuse the injected pod (`enforce`).
#[test]
fn pod_security_levels_are_warned_about_and_counted() {
    let cases: &[(Labels, (&str, &str), &[&str])] = &[
        (&[], ("injected", "injected"), &[]),
        (
            &[("pod-security.kubernetes.io/enforce", "privileged")],
            ("injected", "injected"),
            &[],
        ),
        (
            &[("pod-security.kubernetes.io/enforce", "baseline")],
            ("injected_pod_security_refused", "pod_security_baseline"),
            &[BASELINE_ENFORCED],
        ),
        (
            &[("pod-security.kubernetes.io/enforce", "restricted")],
            ("injected_pod_security_refused", "pod_security_restricted"),
            &[RESTRICTED_ENFORCED],
        ),
        (
            &[("pod-security.kubernetes.io/warn", "baseline")],
            ("injected", "injected"),
            &[],
        ),
        (
            &[("pod-security.kubernetes.io/audit", "restricted")],
            ("injected", "injected"),
            &[],
        ),
    ];
    for (labels, (outcome, reason), warnings) in cases {
        let mut namespace = ns("demo", Some("enabled"));
        namespace.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = review(
            &Received::Complete(Bytes::copy_from_slice(POD_CREATE.as_bytes())),
            |_| namespace.clone(),
            &InjectorConfig::default(),
        );
        let resp = response(&r);
        assert_eq!(resp["allowed"], true, "{labels:?}: {resp}");
        assert_eq!(resp["patchType"], "JSONPatch", "{labels:?}: {resp}");
        assert_eq!(
            (r.verdict.outcome(), r.verdict.reason()),
            (*outcome, *reason),
            "{labels:?}"
        );
        let got: Vec<&str> = resp["warnings"]
            .as_array()
            .map(|w| w.iter().map(|w| w.as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(got, *warnings, "{labels:?}");
    }
}

/// Under a warn floor too: the Pod Security warning comes first, the
/// floor's after it, and the review counts as refused by Pod Security.
#[test]
fn the_pod_security_warning_comes_before_the_floors() {
    let mut v: Value = serde_json::from_str(POD_CREATE).unwrap();
    v["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({"config.trellis.dev/skip-inbound-ports": "22"});
    let mut namespace = ns("demo", Some("enabled"));
    namespace.annotations.extend([
        (
            "config.trellis.dev/floor-enforcement".to_string(),
            "warn".to_string(),
        ),
        (
            "config.trellis.dev/floor-skip-inbound-ports".to_string(),
            "none".to_string(),
        ),
    ]);
    namespace.labels.insert(
        "pod-security.kubernetes.io/enforce".into(),
        "baseline".into(),
    );
    let r = review(
        &Received::Complete(Bytes::from(v.to_string())),
        |_| namespace.clone(),
        &InjectorConfig::default(),
    );
    let warnings = response(&r)["warnings"].as_array().unwrap().clone();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_eq!(warnings[0], BASELINE_ENFORCED);
    assert!(
        warnings[1]
            .as_str()
            .unwrap()
            .starts_with("trellis: below the floor"),
        "{warnings:?}"
    );
    assert_eq!(r.verdict.outcome(), "injected_pod_security_refused");
}

#[test]
fn malformed_bodies_are_refused_with_400() {
    assert_refused(
        &run("not json", None),
        "",
        "malformed",
        "not a valid AdmissionReview",
    );
    assert_refused(&run("[1, 2]", None), "", "malformed", "not an object");
    assert_refused(&run("", None), "", "truncated", "ends early");

    let mut v: Value = serde_json::from_str(POD_CREATE).unwrap();
    v["request"]["object"] = Value::Null;
    assert_refused(
        &run(&v.to_string(), None),
        UID,
        "malformed",
        "request.object is missing",
    );

    let mut v: Value = serde_json::from_str(POD_CREATE).unwrap();
    v["request"]["object"]["spec"]["containers"] = Value::String("web".into());
    assert_refused(&run(&v.to_string(), None), UID, "malformed", "the pod");

    let mut v: Value = serde_json::from_str(POD_CREATE).unwrap();
    v.as_object_mut().unwrap().remove("request");
    assert_refused(&run(&v.to_string(), None), "", "malformed", "no request");

    let mut v: Value = serde_json::from_str(POD_CREATE).unwrap();
    v["request"].as_object_mut().unwrap().remove("uid");
    assert_refused(&run(&v.to_string(), None), "", "malformed", "request.uid");

    // Not JSON after the uid: the uid is still answered.
    let broken = POD_CREATE.replacen("\"kind\": {", "\"kind\": {{", 1);
    assert_refused(
        &run(&broken, None),
        UID,
        "malformed",
        "not a valid AdmissionReview",
    );
}

#[test]
fn a_truncated_body_is_refused_with_its_uid() {
    let cut = &POD_CREATE[..POD_CREATE.len() / 2];
    assert_refused(&run(cut, None), UID, "truncated", "ends early");

    let r = reject(
        parse(&Received::Cut {
            prefix: Bytes::copy_from_slice(cut.as_bytes()),
            error: "connection reset".into(),
        })
        .unwrap_err(),
    );
    assert_refused(&r, UID, "truncated", "connection reset");
}

#[test]
fn an_oversized_body_is_refused_with_its_uid() {
    let r = reject(
        parse(&Received::TooLarge {
            prefix: Bytes::copy_from_slice(&POD_CREATE.as_bytes()[..300]),
            limit: 4096,
        })
        .unwrap_err(),
    );
    assert_refused(
        &r,
        UID,
        "oversized",
        "larger than the injector's limit of 4096 bytes",
    );
}

#[test]
fn other_review_versions_and_kinds_are_refused() {
    let r = run(POD_CREATE_V1BETA1, Some("enabled"));
    assert_refused(
        &r,
        "c0ffee00-1111-4222-8333-444455556666",
        "wrong_version",
        "admission.k8s.io/v1beta1",
    );

    let mut v: Value = serde_json::from_str(POD_CREATE).unwrap();
    v["kind"] = "ConversionReview".into();
    assert_refused(
        &run(&v.to_string(), None),
        UID,
        "wrong_version",
        "ConversionReview",
    );
}

#[test]
fn only_pod_creates_are_reviewed_others_are_admitted_unchanged() {
    let r = run(DEPLOYMENT_CREATE, Some("enabled"));
    assert_admitted_unchanged(&r, "e5a1b2c3-d4e5-4f60-8a7b-9c0d1e2f3a4b", "wrong_kind");
    assert!(r.review["response"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("apps/v1 Deployment"));

    let r = run(POD_UPDATE, Some("enabled"));
    assert_admitted_unchanged(
        &r,
        "b1c2d3e4-0000-4a5b-8c7d-0e1f2a3b4c5d",
        "wrong_operation",
    );
    assert!(r.review["response"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("UPDATE"));

    let mut v: Value = serde_json::from_str(POD_CREATE).unwrap();
    v["request"]["subResource"] = "ephemeralcontainers".into();
    let r = run(&v.to_string(), Some("enabled"));
    assert_admitted_unchanged(&r, UID, "wrong_kind");
    assert!(r.review["response"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("ephemeralcontainers subresource"));
}

#[test]
fn internal_errors_admit_with_a_warning() {
    let r = reject(Rejection {
        uid: "u-1".into(),
        error: ReviewError::Internal("boom".into()),
    });
    let resp = response(&r);
    assert_eq!(resp["allowed"], true);
    assert!(resp["warnings"][0].as_str().unwrap().contains("boom"));
    assert_eq!(r.verdict.reason(), "internal");
    assert_eq!(
        ReviewError::Internal(String::new()).classify().level,
        tracing::Level::ERROR
    );
}

#[test]
fn uid_hints() {
    assert_eq!(
        uid_hint(br#"{"request": {"uid" : "abc-123", "kind""#),
        "abc-123"
    );
    assert_eq!(uid_hint(br#"{"uid":"outside","request":{"kind":1"#), "");
    assert_eq!(uid_hint(br#"{"request":{"uid":"has space"}}"#), "");
    assert_eq!(uid_hint(br#"{"request":{"uid":"unterminated"#), "");
    assert_eq!(uid_hint(br#"{"request":{"uid":12}}"#), "");
    assert_eq!(uid_hint(b""), "");
}

proptest! {
    /// Whatever the bytes, the answer is a v1 review, and never a panic.
    #[test]
    fn any_bytes_get_a_review(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let r = review(
            &Received::Complete(Bytes::from(bytes)),
            |name| ns(name, Some("enabled")),
            &InjectorConfig::default(),
        );
        prop_assert_eq!(&r.review["apiVersion"], "admission.k8s.io/v1");
        prop_assert!(r.review["response"]["allowed"].is_boolean());
        prop_assert_eq!(r.verdict.outcome(), "error");
    }

    /// Every proper prefix of a review is refused as truncated, with the
    /// uid once the prefix holds it.
    #[test]
    fn every_prefix_is_truncated(cut in 0..POD_CREATE.trim_end().len()) {
        let prefix = &POD_CREATE.as_bytes()[..cut];
        let r = review(
            &Received::Complete(Bytes::copy_from_slice(prefix)),
            |name| ns(name, None),
            &InjectorConfig::default(),
        );
        prop_assert_eq!(r.verdict.reason(), "truncated");
        prop_assert_eq!(&r.review["response"]["allowed"], false);
        let uid_end = POD_CREATE.find(UID).unwrap() + UID.len() + 1;
        if cut >= uid_end {
            prop_assert_eq!(r.uid.as_str(), UID);
        }
    }
}
