//! Golden files under `testdata/inject/<case>/`: `input.yaml` (a Namespace
//! and a Pod, or any manifest), optional `config.yaml`, and what the
//! injector must produce: `expected.json` (the patch, or the reason a pod
//! is left alone) and `injected.yaml` (the pod with the patch applied,
//! which `scripts/check-chart.sh` validates against the Kubernetes schema),
//! or `expected.yaml` for manifests run through `trellis inject`'s logic
//! (its first lines: what stderr reports), or, for `input.json`,
//! `expected.json`: `trellis inject`'s JSON output as printed.
//!
//! `TRELLIS_BLESS=1 cargo test -p trellis-injector golden` rewrites them;
//! review the diff. The other tests check properties of the same outputs,
//! so a blessed golden file is never the only judge.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use serde::Deserialize;
use serde_json::{json, Value};
use trellis_core::contract::{proxy_env, PROXY_UID};

use super::*;
use crate::manifest::inject_manifest;

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/inject");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("input.yaml").exists() || p.join("input.json").exists())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 23,
        "golden cases missing under {}",
        root.display()
    );
    dirs
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn config(dir: &Path) -> InjectorConfig {
    match std::fs::read_to_string(dir.join("config.yaml")) {
        Ok(text) => InjectorConfig::from_yaml(&text).unwrap(),
        Err(_) => InjectorConfig::default(),
    }
}

/// A case with one Pod (and maybe its Namespace) goes to [`inject`] as the
/// webhook would call it; anything else goes through the manifest logic.
struct PodCase {
    pod_json: Value,
    pod: Pod,
    ns: NamespaceInfo,
}

fn pod_case(dir: &Path) -> Option<PodCase> {
    let docs = docs(&std::fs::read_to_string(dir.join("input.yaml")).ok()?);
    let (nss, rest): (Vec<_>, Vec<_>) = docs.into_iter().partition(|d| d["kind"] == "Namespace");
    if rest.len() != 1 || rest[0]["kind"] != "Pod" {
        return None;
    }
    let pod_json = rest[0].clone();
    let pod: Pod = serde_json::from_value(pod_json.clone()).unwrap();
    let strings = |v: &Value| -> BTreeMap<String, String> {
        serde_json::from_value(v.clone()).unwrap_or_default()
    };
    let ns = match nss.first() {
        Some(n) => NamespaceInfo {
            name: n["metadata"]["name"].as_str().unwrap().into(),
            labels: strings(&n["metadata"]["labels"]),
            annotations: strings(&n["metadata"]["annotations"]),
        },
        None => NamespaceInfo {
            name: pod.metadata.namespace.clone().unwrap_or("default".into()),
            ..Default::default()
        },
    };
    Some(PodCase { pod_json, pod, ns })
}

fn bless() -> bool {
    std::env::var_os("TRELLIS_BLESS").is_some()
}

fn check_golden(path: &Path, actual: &str) {
    if bless() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|_| panic!("{} is missing; run with TRELLIS_BLESS=1", path.display()));
    assert!(
        expected == actual,
        "{} differs from the injector's output:\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

fn applied(pod_json: &Value, patch: &json_patch::Patch) -> Value {
    let mut doc = pod_json.clone();
    json_patch::patch(&mut doc, patch).unwrap();
    doc
}

#[test]
fn golden() {
    for dir in cases() {
        let cfg = config(&dir);
        match pod_case(&dir) {
            Some(case) => {
                let outcome = inject(&case.pod, &case.ns, &cfg);
                let expected = match &outcome {
                    Outcome::Injected {
                        patch,
                        warnings,
                        pod_security,
                        ..
                    } => {
                        let pod = applied(&case.pod_json, patch);
                        check_golden(
                            &dir.join("injected.yaml"),
                            &serde_yaml_ng::to_string(&pod).unwrap(),
                        );
                        // As the webhook answers: the Pod Security warning
                        // first, then the floor's.
                        let mut said: Vec<String> =
                            pod_security.iter().map(|c| c.warning()).collect();
                        said.extend(warnings.iter().map(floor_warning));
                        match pod_security {
                            Some(c) => json!({
                                "outcome": "injected",
                                "pod_security": {"level": c.level.as_str(), "reason": c.label()},
                                "warnings": said,
                                "patch": patch,
                            }),
                            None if said.is_empty() => {
                                json!({"outcome": "injected", "patch": patch})
                            }
                            None => {
                                json!({"outcome": "injected", "warnings": said, "patch": patch})
                            }
                        }
                    }
                    Outcome::Skipped(r) => {
                        json!({"outcome": "skipped", "reason": r.label(), "message": r.to_string()})
                    }
                    Outcome::Refused(r) => {
                        json!({"outcome": "refused", "reason": r.label(), "message": r.to_string()})
                    }
                };
                check_golden(
                    &dir.join("expected.json"),
                    &(serde_json::to_string_pretty(&expected).unwrap() + "\n"),
                );
            }
            None if dir.join("input.json").exists() => {
                // JSON in, JSON out: the output file is the output as is.
                let input = std::fs::read_to_string(dir.join("input.json")).unwrap();
                let out = inject_manifest(&input, &cfg, "default").unwrap();
                assert_eq!(out.format, crate::manifest::Format::Json);
                assert_eq!(out.failed(), 0, "{:?}", out.reports);
                check_golden(&dir.join("expected.json"), &out.text);
            }
            None => {
                let input = std::fs::read_to_string(dir.join("input.yaml")).unwrap();
                let out = inject_manifest(&input, &cfg, "default").unwrap();
                assert_eq!(out.failed(), 0, "{:?}", out.reports);
                let reports: Vec<String> = out.reports.iter().map(|r| r.to_string()).collect();
                let text = format!("# {}\n{}", reports.join("\n# "), out.text);
                check_golden(&dir.join("expected.yaml"), &text);
            }
        }
    }
}

fn injected_case(name: &str) -> (PodCase, Pod, json_patch::Patch) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/inject")
        .join(name);
    let case = pod_case(&dir).unwrap();
    match inject(&case.pod, &case.ns, &config(&dir)) {
        Outcome::Injected { patch, pod, .. } => (case, *pod, patch),
        Outcome::Skipped(r) => panic!("{name}: skipped: {r}"),
        Outcome::Refused(r) => panic!("{name}: refused: {r}"),
    }
}

fn skipped(name: &str) -> SkipReason {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/inject")
        .join(name);
    let case = pod_case(&dir).unwrap();
    match inject(&case.pod, &case.ns, &config(&dir)) {
        Outcome::Skipped(r) => r,
        other => panic!("{name} was not skipped: {other:?}"),
    }
}

fn names(list: &Option<Vec<Container>>) -> Vec<&str> {
    list.iter().flatten().map(|c| c.name.as_str()).collect()
}

fn env(c: &Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn the_patch_gives_exactly_the_injected_pod() {
    for dir in cases() {
        let Some(case) = pod_case(&dir) else { continue };
        if let Outcome::Injected { patch, pod, .. } = inject(&case.pod, &case.ns, &config(&dir)) {
            let mut expected = serde_json::to_value(&*pod).unwrap();
            let mut actual: Pod = serde_json::from_value(applied(&case.pod_json, &patch)).unwrap();
            // Compare as the API server would store both.
            actual.metadata.namespace = pod.metadata.namespace.clone();
            expected["metadata"]["namespace"] = json!(pod.metadata.namespace);
            assert_eq!(
                serde_json::to_value(&actual).unwrap(),
                expected,
                "{}",
                dir.display()
            );
            for op in &patch.0 {
                assert!(matches!(op, json_patch::PatchOperation::Add(_)), "{op:?}");
            }
        }
    }
}

#[test]
fn native_sidecar_runs_first_and_keeps_the_pods_own_order() {
    let (case, pod, _) = injected_case("init-containers");
    let spec = pod.spec.unwrap();
    assert_eq!(
        names(&spec.init_containers),
        ["trellis-init", "trellis-proxy", "migrate"]
    );
    assert_eq!(names(&Some(spec.containers.clone())), ["api"]);
    let proxy = &spec.init_containers.as_ref().unwrap()[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert!(proxy.startup_probe.is_some(), "the app waits for the proxy");
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volumes,
        [
            "scratch",
            "trellis-identity-token",
            "trellis-trust-roots",
            "trellis-init-run"
        ]
    );
    let annotations = pod.metadata.annotations.unwrap();
    assert_eq!(annotations["team"], "payments");
    assert_eq!(annotations[INJECTED_ANNOTATION], "true");
    assert_eq!(
        annotations[PROXY_VERSION_ANNOTATION],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(case.pod.metadata.annotations.unwrap().len(), 1);
}

#[test]
fn legacy_sidecar_is_a_container_and_init_runs_last() {
    let (_, pod, _) = injected_case("legacy-sidecar");
    let spec = pod.spec.unwrap();
    assert_eq!(names(&spec.init_containers), ["migrate", "trellis-init"]);
    assert_eq!(
        names(&Some(spec.containers.clone())),
        ["trellis-proxy", "api"]
    );
    let proxy = &spec.containers[0];
    assert_eq!(proxy.restart_policy, None);
    assert_eq!(proxy.startup_probe, None);
    assert_eq!(
        proxy.image.as_deref(),
        Some("registry.example.com/mesh/trellis-proxy:0.1.0")
    );
}

#[test]
fn containers_are_locked_down() {
    let (_, pod, _) = injected_case("plain-pod");
    let inits = pod.spec.unwrap().init_containers.unwrap();
    let (init, proxy) = (&inits[0], &inits[1]);
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(PROXY_UID.into()));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert_eq!(sc.capabilities.as_ref().unwrap().add, None);
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let isc = init.security_context.as_ref().unwrap();
    let caps = isc.capabilities.as_ref().unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(isc.privileged, Some(false));
    assert_eq!(isc.read_only_root_filesystem, Some(true));
    assert_eq!(
        init.args.as_ref().unwrap()[..3],
        ["init", "--proxy-uid", "7102"]
    );
}

#[test]
fn the_proxy_gets_its_identity_addresses_and_token() {
    let (_, pod, _) = injected_case("plain-pod");
    let spec = pod.spec.unwrap();
    let proxy = &spec.init_containers.as_ref().unwrap()[1];
    let env = env(proxy);
    assert_eq!(
        env[proxy_env::IDENTITY],
        "spiffe://cluster.local/ns/$(TRELLIS_PROXY_POD_NAMESPACE)/sa/$(TRELLIS_POD_SERVICE_ACCOUNT)"
    );
    assert_eq!(
        env[proxy_env::IDENTITY_SERVER_ID],
        "spiffe://cluster.local/ns/trellis-system/sa/trellis-identity"
    );
    assert_eq!(
        env[proxy_env::CONTROLLER_ADDR],
        "trellis-controller.trellis-system.svc.cluster.local:7156"
    );
    // $(VAR) only expands variables defined earlier in the list.
    let order: Vec<&str> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    let at = |n: &str| order.iter().position(|o| *o == n).unwrap();
    assert!(at(proxy_env::POD_NAMESPACE) < at(proxy_env::IDENTITY));
    assert!(at("TRELLIS_POD_SERVICE_ACCOUNT") < at(proxy_env::IDENTITY));
    let token = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "trellis-identity-token");
    let projection = token.unwrap().projected.unwrap().sources.unwrap().remove(0);
    let sat = projection.service_account_token.unwrap();
    assert_eq!(sat.audience.as_deref(), Some("identity.trellis.dev"));
    assert_eq!(
        format!("/var/run/trellis/identity/{}", sat.path),
        env[proxy_env::IDENTITY_TOKEN_FILE]
    );
}

#[test]
fn the_pods_overrides_win_over_its_namespaces() {
    let (_, pod, _) = injected_case("namespace-overrides");
    let spec = pod.spec.unwrap();
    let inits = spec.init_containers.unwrap();
    let args = inits[0].args.clone().unwrap();
    let arg = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
    assert_eq!(arg("--skip-inbound-ports"), "9100,9200-9210");
    assert_eq!(arg("--skip-outbound-ports"), "5432");
    let env = env(&inits[1]);
    assert_eq!(env[proxy_env::LOG], "warn,trellis_proxy=info");
    assert_eq!(env[proxy_env::OPAQUE_PORTS], "6379");
    assert_eq!(env[proxy_env::DEFAULT_INBOUND_POLICY], "all-authenticated");
    let res = inits[1].resources.clone().unwrap();
    assert_eq!(res.requests.unwrap()["cpu"].0, "50m");
    assert_eq!(res.limits.unwrap()["memory"].0, "64Mi");
}

#[test]
fn every_bad_override_is_named() {
    let SkipReason::Invalid(why) = skipped("bad-overrides") else {
        panic!("not invalid")
    };
    for needle in [
        "config.trellis.dev/skip-inbound-port ",
        "config.trellis.dev/opaque-ports",
        "config.trellis.dev/proxy-memory-limit",
        "config.trellis.dev/default-inbound-policy",
    ] {
        assert!(why.contains(needle), "{needle} not in {why}");
    }
    assert!(SkipReason::Invalid(why).is_warning());
}

#[test]
fn pods_left_alone_say_why() {
    for (case, reason) in [
        ("host-network", SkipReason::HostNetwork),
        ("already-injected", SkipReason::AlreadyInjected),
        ("other-mesh", SkipReason::OtherMesh("istio-proxy".into())),
        ("opted-out", SkipReason::OptedOut),
        ("not-enabled", SkipReason::NotEnabled),
        ("control-plane", SkipReason::ControlPlane),
        ("excluded-namespace", SkipReason::ExcludedNamespace),
    ] {
        assert_eq!(skipped(case), reason, "{case}");
    }
    assert!(matches!(skipped("proxy-port-clash"), SkipReason::Invalid(w) if w.contains("7143")));
    assert!(
        matches!(skipped("volume-name-clash"), SkipReason::Invalid(w) if w.contains("trellis-trust-roots"))
    );
    let _ = injected_case("pod-opts-in");
}

#[test]
fn injecting_twice_changes_nothing() {
    for dir in cases() {
        let Some(case) = pod_case(&dir) else { continue };
        let cfg = config(&dir);
        if let Outcome::Injected { pod, .. } = inject(&case.pod, &case.ns, &cfg) {
            assert_eq!(
                inject(&pod, &case.ns, &cfg),
                Outcome::Skipped(SkipReason::AlreadyInjected)
            );
            // And the decision is a function of its inputs.
            assert_eq!(
                inject(&case.pod, &case.ns, &cfg),
                inject(&case.pod, &case.ns, &cfg)
            );
        }
    }
}

#[test]
fn manifests_inject_every_workload_kind_and_keep_the_rest() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/inject/all-kinds");
    let input = std::fs::read_to_string(dir.join("input.yaml")).unwrap();
    let out = inject_manifest(&input, &InjectorConfig::default(), "default").unwrap();
    let summary: Vec<(String, Option<&str>)> = out
        .reports
        .iter()
        .filter_map(|r| match &r.outcome {
            crate::manifest::Outcome::Injected => Some((r.object.clone(), None)),
            crate::manifest::Outcome::Skipped(s) => Some((r.object.clone(), Some(s.label()))),
            _ => None,
        })
        .collect();
    let expect = |o: &str, s: Option<&'static str>| (o.to_string(), s);
    assert_eq!(
        summary,
        [
            expect("pod/debug", None),
            expect("deployment/web", None),
            expect("statefulset/db", None),
            expect("daemonset/agent", None),
            expect("daemonset/node-agent", Some("host_network")),
            expect("job/migrate", None),
            expect("cronjob/cleanup", Some("opted_out")),
            expect("replicaset/legacy-rs", None),
        ]
    );
    let docs = docs(&out.text);
    assert_eq!(docs.len(), 10, "every document is kept");
    assert_eq!(docs[0]["kind"], "Namespace");
    assert_eq!(docs[8]["kind"], "Service");
    // The namespace's override reached the statefulset's proxy.
    let sts_inits = &docs[3]["spec"]["template"]["spec"]["initContainers"];
    let opaque = sts_inits[1]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == proxy_env::OPAQUE_PORTS)
        .unwrap();
    assert_eq!(opaque["value"], "5432");
    // Fields outside the pod template are untouched.
    assert_eq!(
        docs[3]["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
}

#[test]
fn bad_documents_are_reported_with_the_document_named_and_the_rest_kept() {
    use crate::manifest::{DocError, Outcome};
    let cfg = InjectorConfig::default();
    assert_eq!(
        inject_manifest("", &cfg, "default"),
        Err(crate::manifest::ManifestError::Empty)
    );
    let failure = |text: &str| -> (usize, String, DocError) {
        let out = inject_manifest(text, &cfg, "default").unwrap();
        let failed: Vec<_> = out
            .reports
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Failed(e) => Some((r.doc, r.object.clone(), e.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(failed.len(), 1, "{:?}", out.reports);
        failed[0].clone()
    };
    let (doc, _, e) = failure("kind: Pod\napiVersion: v1\nspec: [1\n");
    assert_eq!(doc, 1);
    assert!(matches!(e, DocError::Yaml { first_line: 1, .. }), "{e}");
    let (doc, object, e) = failure(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n",
    );
    assert_eq!((doc, object.as_str()), (2, "deployment/d"));
    assert_eq!(e, DocError::NoTemplate("spec.template".into()));
    let (_, _, e) =
        failure("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: 3}\n");
    assert!(matches!(e, DocError::InvalidTemplate(_)), "{e}");
}

#[test]
fn windows_pods_are_left_alone_with_a_warning() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "w", "annotations": {"trellis.dev/inject": "enabled"}},
        "spec": {"os": {"name": "windows"}, "containers": [{"name": "app", "image": "x"}]},
    }))
    .unwrap();
    let ns = NamespaceInfo {
        name: "shop".into(),
        ..Default::default()
    };
    match inject(&pod, &ns, &InjectorConfig::default()) {
        Outcome::Skipped(r @ SkipReason::Invalid(_)) => {
            assert!(r.is_warning());
            assert!(r.to_string().contains("Linux-only"), "{r}");
        }
        other => panic!("{other:?}"),
    }
}

fn decided(name: &str) -> Outcome {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/inject")
        .join(name);
    let case = pod_case(&dir).unwrap();
    inject(&case.pod, &case.ns, &config(&dir))
}

fn proxy_vars(pod: &Pod) -> BTreeMap<String, String> {
    let spec = pod.spec.as_ref().unwrap();
    let proxy = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == PROXY_CONTAINER)
        .unwrap();
    env(proxy)
}

fn init_arg(pod: &Pod, flag: &str) -> Option<String> {
    let spec = pod.spec.as_ref().unwrap();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == INIT_CONTAINER)
        .unwrap();
    let args = init.args.clone().unwrap();
    args.iter()
        .position(|a| a == flag)
        .map(|i| args[i + 1].clone())
}

#[test]
fn the_reviewed_pod_is_refused_by_a_deny_floor_naming_each_annotation() {
    let Outcome::Refused(r) = decided("floor-deny") else {
        panic!("not refused")
    };
    let text = r.to_string();
    for needle in [
        r#"config.trellis.dev/skip-inbound-ports: "1-65535" on the pod"#,
        r#"config.trellis.dev/skip-outbound-ports: "1-65535" on the pod"#,
        r#"config.trellis.dev/default-inbound-policy: "all-unauthenticated" on the pod is weaker than the floor's all-authenticated (set by the cluster floor)"#,
        "floor skip-inbound-ports: none",
    ] {
        assert!(text.contains(needle), "{needle} not in {text}");
    }
    assert_eq!(r.violations.len(), 3);
    assert_eq!(r.label(), "floor_default_inbound_policy");
}

#[test]
fn the_reviewed_pod_under_a_warn_floor_is_meshed_with_the_floor_applied() {
    let Outcome::Injected { pod, warnings, .. } = decided("floor-warn") else {
        panic!("not injected")
    };
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert_eq!(init_arg(&pod, "--skip-inbound-ports"), None);
    assert_eq!(init_arg(&pod, "--skip-outbound-ports"), None);
    let env = proxy_vars(&pod);
    assert_eq!(env[proxy_env::DEFAULT_INBOUND_POLICY], "all-authenticated");
    assert_eq!(env[proxy_env::OUTBOUND_MTLS], "required");
    assert!(floor_warning(&warnings[0]).starts_with("trellis: below the floor"));
}

#[test]
fn a_namespace_floor_forbids_opting_out() {
    let Outcome::Refused(r) = decided("floor-opt-out") else {
        panic!("not refused")
    };
    let text = r.to_string();
    assert!(
        text.contains("trellis.dev/inject: \"disabled\" on the pod")
            && text.contains("config.trellis.dev/floor-allow-opt-out forbids opting out"),
        "{text}"
    );
    assert!(
        text.contains("weaker than the floor's deny (set by the namespace's config.trellis.dev/floor-default-inbound-policy)"),
        "{text}"
    );
    assert_eq!(r.label(), "floor_opt_out");
}

#[test]
fn bad_overrides_under_a_warn_floor_are_meshed_with_the_floors_values() {
    let Outcome::Injected { pod, warnings, .. } = decided("floor-bad-override-warn") else {
        panic!("not injected")
    };
    let kinds: Vec<_> = warnings.iter().map(|w| w.kind).collect();
    use crate::floor::FloorKind::*;
    assert_eq!(kinds, [InvalidOverride, InvalidOverride, SkipPorts]);
    assert_eq!(
        init_arg(&pod, "--skip-outbound-ports").as_deref(),
        Some("5432")
    );
    let env = proxy_vars(&pod);
    assert_eq!(env[proxy_env::OUTBOUND_MTLS], "required");
    assert_eq!(
        env[proxy_env::DEFAULT_INBOUND_POLICY],
        "all-unauthenticated"
    );
    // The same bad override without a floor: admitted unmeshed, as before.
    assert!(matches!(skipped("bad-overrides"), SkipReason::Invalid(_)));
}

#[test]
fn a_pod_cannot_set_its_own_floor() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "annotations": {
            "trellis.dev/inject": "enabled",
            "config.trellis.dev/floor-skip-inbound-ports": "any",
        }},
        "spec": {"containers": [{"name": "app", "image": "x"}]},
    }))
    .unwrap();
    let ns = NamespaceInfo {
        name: "shop".into(),
        ..Default::default()
    };
    match inject(&pod, &ns, &InjectorConfig::default()) {
        Outcome::Skipped(SkipReason::Invalid(why)) => {
            assert!(why.contains("floor-skip-inbound-ports on the pod"), "{why}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn outbound_mtls_and_probe_sources_reach_the_proxy() {
    let (_, pod, _) = injected_case("outbound-mtls");
    let env = proxy_vars(&pod);
    assert_eq!(env[proxy_env::OUTBOUND_MTLS], "required", "the pod's wins");
    assert_eq!(
        env[proxy_env::PLAINTEXT_DESTINATIONS],
        "10.96.0.10/32,203.0.113.0/24"
    );
    assert_eq!(env[proxy_env::PROBE_SOURCES], "gateway,$(TRELLIS_NODE_IP)");
    let spec = pod.spec.unwrap();
    let proxy = &spec.init_containers.unwrap()[1];
    let vars = proxy.env.clone().unwrap();
    let at = |n: &str| vars.iter().position(|e| e.name == n).unwrap();
    assert!(at("TRELLIS_NODE_IP") < at(proxy_env::PROBE_SOURCES));
    let node_ip = &vars[at("TRELLIS_NODE_IP")];
    assert_eq!(
        node_ip
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("status.hostIP")
    );
    // The default: opportunistic, no plaintext exceptions.
    let (_, plain, _) = injected_case("plain-pod");
    let env = proxy_vars(&plain);
    assert_eq!(env[proxy_env::OUTBOUND_MTLS], "opportunistic");
    assert!(!env.contains_key(proxy_env::PLAINTEXT_DESTINATIONS));
    assert_eq!(env[proxy_env::PROBE_SOURCES], "gateway,$(TRELLIS_NODE_IP)");
}

/// `trellis inject` reads the Pod Security labels of a Namespace in the
/// manifest, injects, and reports what the API server will do.
#[test]
fn manifests_report_pod_security_refusals() {
    let input = "\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    pod-security.kubernetes.io/enforce: baseline
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: cart
  namespace: shop
spec:
  selector: {matchLabels: {app: cart}}
  template:
    metadata: {labels: {app: cart}}
    spec:
      containers:
      - name: app
        image: example.com/cart:1
";
    let out = inject_manifest(input, &InjectorConfig::default(), "default").unwrap();
    let report = out
        .reports
        .iter()
        .find(|r| r.object == "deployment/cart")
        .unwrap();
    let crate::manifest::Outcome::PodSecurity { conflict, floored } = &report.outcome else {
        panic!("{report}")
    };
    assert!(floored.is_empty());
    assert_eq!(conflict.label(), "pod_security_baseline");
    assert!(!report.outcome.left_alone());
    let text = report.to_string();
    assert!(
        text.starts_with(
            "document 2: deployment/cart (namespace shop): injected (warning): namespace shop enforces Pod Security \"baseline\""
        ),
        "{text}"
    );
    assert!(out.text.contains("trellis-init"), "injected all the same");
}

/// CNI mode: `trellis-init` is the check, first, unprivileged, with the
/// init-container mode's flags and `--check` after `init` (what the CNI
/// plugin parses); nothing injected adds a capability or needs `/run`.
#[test]
fn cni_mode_adds_the_unprivileged_check_first_with_the_same_flags() {
    let (case, pod, _) = injected_case("cni-mode");
    let spec = pod.spec.clone().unwrap();
    assert_eq!(
        names(&spec.init_containers),
        ["trellis-init", "trellis-proxy", "migrate"]
    );
    let check = &spec.init_containers.as_ref().unwrap()[0];
    // The same pod in init-container mode: the same flags, but `--check`.
    let Outcome::Injected { pod: init_mode, .. } =
        inject(&case.pod, &case.ns, &InjectorConfig::default())
    else {
        panic!("not injected in init-container mode")
    };
    let init_args = init_mode.spec.unwrap().init_containers.unwrap()[0]
        .args
        .clone()
        .unwrap();
    let mut want = init_args.clone();
    want.insert(1, CHECK_FLAG.to_string());
    assert_eq!(check.args.as_ref(), Some(&want));
    assert_eq!(
        want,
        [
            "init",
            "--check",
            "--proxy-uid",
            "7102",
            "--iptables-mode",
            "auto",
            "--skip-inbound-ports",
            "9100",
            "--skip-outbound-ports",
            "5432"
        ]
    );
    assert_eq!(
        check.command.as_deref(),
        Some(&["trellis-proxy".to_string()][..])
    );
    assert_eq!(
        check.image.as_deref(),
        Some(InjectorConfig::default().init_image()),
        "the proxy's image: trellis-proxy init --check lives in it"
    );
    let sc = check.security_context.as_ref().unwrap();
    assert_eq!(
        sc.run_as_user,
        Some(65534),
        "neither root nor the proxy's uid"
    );
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(caps.add, None);
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    assert_eq!(check.volume_mounts, None);
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, ["trellis-identity-token", "trellis-trust-roots"]);
    // No container of the injected pod adds a capability.
    let text = serde_json::to_string(&pod).unwrap();
    assert!(
        !text.contains("NET_ADMIN") && !text.contains("NET_RAW"),
        "{text}"
    );
}

#[test]
fn cni_mode_in_a_restricted_namespace_is_injected_without_a_warning() {
    let Outcome::Injected {
        pod_security,
        warnings,
        ..
    } = decided("cni-mode-restricted")
    else {
        panic!("not injected")
    };
    assert_eq!(pod_security, None);
    assert!(warnings.is_empty());
}

/// `trellis inject --config` with the chart's `cni.enabled` configuration:
/// the same manifest as in [`manifests_report_pod_security_refusals`] is
/// injected with nothing to report.
#[test]
fn manifests_in_cni_mode_report_no_pod_security_refusal() {
    let input = "\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    pod-security.kubernetes.io/enforce: restricted
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: cart
  namespace: shop
spec:
  selector: {matchLabels: {app: cart}}
  template:
    metadata: {labels: {app: cart}, annotations: {trellis.dev/inject: enabled}}
    spec:
      containers:
      - name: app
        image: example.com/cart:1
";
    let cfg = InjectorConfig::from_yaml("init:\n  captureMode: cni\n").unwrap();
    let out = inject_manifest(input, &cfg, "default").unwrap();
    let report = out
        .reports
        .iter()
        .find(|r| r.object == "deployment/cart")
        .unwrap();
    assert_eq!(
        report.outcome,
        crate::manifest::Outcome::Injected,
        "{report}"
    );
    assert!(out.text.contains("--check"), "{}", out.text);
}

/// The chart's `proxy.tracing` reaches the proxy; the pod's
/// `config.trellis.dev/trace-sampling` wins over its namespace's and the
/// chart's; without a collector nothing is set (tracing off).
#[test]
fn tracing_settings_reach_the_proxy() {
    let (_, pod, _) = injected_case("tracing");
    let inits = pod.spec.unwrap().init_containers.unwrap();
    let env = env(&inits[1]);
    assert_eq!(
        env[proxy_env::TRACE_COLLECTOR],
        "http://jaeger-collector.observability.svc.cluster.local:4317"
    );
    assert_eq!(env[proxy_env::TRACE_SAMPLING], "1");
    let (_, plain, _) = injected_case("plain-pod");
    let plain_env = env_of(&plain);
    assert!(!plain_env.contains_key(proxy_env::TRACE_COLLECTOR));
    assert!(!plain_env.contains_key(proxy_env::TRACE_SAMPLING));
}

fn env_of(pod: &Pod) -> BTreeMap<String, String> {
    let spec = pod.spec.clone().unwrap();
    let proxy = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == "trellis-proxy")
        .unwrap()
        .clone();
    env(&proxy)
}
