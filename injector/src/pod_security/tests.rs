#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use k8s_openapi::api::core::v1::{Capabilities, SeccompProfile, SecurityContext};
use serde_json::json;

use super::*;
use crate::inject::PROXY_CONTAINER;
use crate::{inject, InjectorConfig, Outcome};

fn ns(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> NamespaceInfo {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut annotations: std::collections::BTreeMap<String, String> = map(annotations);
    annotations.insert(INJECT_ANNOTATION.into(), "enabled".into());
    NamespaceInfo {
        name: "shop".into(),
        labels: map(labels),
        annotations,
    }
}

fn pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "cart", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "example.com/cart:1"}]},
    }))
    .unwrap()
}

/// What `inject` says of Pod Security for the pod in `ns` under `cfg`.
fn conflict_with(ns: &NamespaceInfo, cfg: &InjectorConfig) -> Option<Conflict> {
    match inject(&pod(), ns, cfg) {
        Outcome::Injected { pod_security, .. } => pod_security.map(|c| *c),
        other => panic!("not injected: {other:?}"),
    }
}

fn conflict(labels: &[(&str, &str)]) -> Option<Conflict> {
    conflict_with(&ns(labels, &[]), &InjectorConfig::default())
}

/// A namespace's labels, as (key, value) pairs.
type Labels = &'static [(&'static str, &'static str)];

const ENFORCE: &str = ENFORCE_LABEL;
const WARN: &str = "pod-security.kubernetes.io/warn";
const AUDIT: &str = "pod-security.kubernetes.io/audit";

#[test]
fn only_an_enforced_level_above_privileged_objects() {
    use Level::*;
    let cases: &[(Labels, Option<(Level, &str)>)] = &[
        (&[], None),
        (&[(ENFORCE, "privileged")], None),
        (
            &[(ENFORCE, "baseline")],
            Some((Baseline, "pod_security_baseline")),
        ),
        (
            &[(ENFORCE, "restricted")],
            Some((Restricted, "pod_security_restricted")),
        ),
        // Not a level: the API server enforces restricted.
        (
            &[(ENFORCE, "Baseline")],
            Some((Restricted, "pod_security_restricted")),
        ),
        (
            &[(ENFORCE, "baseline"), (WARN, "restricted")],
            Some((Baseline, "pod_security_baseline")),
        ),
        // warn and audit refuse nothing: the API server's own warning
        // names trellis-init; the injector adds none.
        (&[(WARN, "baseline")], None),
        (&[(ENFORCE, "privileged"), (WARN, "restricted")], None),
        (&[(AUDIT, "restricted")], None),
    ];
    for (labels, want) in cases {
        let got = conflict(labels);
        let got = got.as_ref().map(|c| (c.level, c.label()));
        assert_eq!(got, *want, "{labels:?}");
    }
}

#[test]
fn the_warning_when_baseline_is_enforced() {
    let c = conflict(&[(ENFORCE, "baseline")]).unwrap();
    assert_eq!(
        c.objections,
        [Objection {
            container: INIT_CONTAINER.into(),
            what: vec!["adds capabilities NET_ADMIN and NET_RAW".into()],
        }]
    );
    assert_eq!(
        c.warning(),
        "trellis: namespace shop enforces Pod Security \"baseline\" (label pod-security.kubernetes.io/enforce), \
         so the API server will refuse this pod: trellis-init, which installs the pod's traffic-capture rules, \
         adds capabilities NET_ADMIN and NET_RAW. To mesh it at this level, install the Trellis CNI plugin \
         (Helm chart value cni.enabled=true), which sets up capture with no privileged container in the pod; \
         or label the namespace pod-security.kubernetes.io/enforce=privileged, or opt the pod out of the mesh \
         with the annotation trellis.dev/inject: disabled"
    );
}

#[test]
fn the_warning_when_restricted_is_enforced_names_each_objection() {
    // trellis-init as root (the default).
    let c = conflict(&[(ENFORCE, "restricted")]).unwrap();
    assert_eq!(
        c.warning(),
        "trellis: namespace shop enforces Pod Security \"restricted\" (label pod-security.kubernetes.io/enforce), \
         so the API server will refuse this pod: trellis-init, which installs the pod's traffic-capture rules, \
         adds capabilities NET_ADMIN and NET_RAW and runs as root. To mesh it at this level, install the \
         Trellis CNI plugin (Helm chart value cni.enabled=true), which sets up capture with no privileged \
         container in the pod; or label the namespace pod-security.kubernetes.io/enforce=privileged, or opt \
         the pod out of the mesh with the annotation trellis.dev/inject: disabled"
    );
    // trellis-init as uid 65534: file capabilities need privilege
    // escalation. trellis-proxy passes restricted either way.
    let mut cfg = InjectorConfig::default();
    cfg.init.run_as_root = false;
    let c = conflict_with(&ns(&[(ENFORCE, "restricted")], &[]), &cfg).unwrap();
    assert_eq!(
        c.objections,
        [Objection {
            container: INIT_CONTAINER.into(),
            what: vec![
                "adds capabilities NET_ADMIN and NET_RAW".into(),
                "allows privilege escalation".into(),
            ],
        }]
    );
    // A label value that is no level is named, with how it is read.
    let c = conflict(&[(ENFORCE, "Baseline")]).unwrap();
    assert!(
        c.warning().contains(
            "enforces Pod Security \"restricted\" (label pod-security.kubernetes.io/enforce=\"Baseline\", \
             not a level, which the API server reads as restricted)"
        ),
        "{}",
        c.warning()
    );
}

#[test]
fn the_warning_leaves_out_opting_out_when_the_floor_forbids_it() {
    let ns = ns(
        &[(ENFORCE, "baseline")],
        &[("config.trellis.dev/floor-allow-opt-out", "false")],
    );
    let c = conflict_with(&ns, &InjectorConfig::default()).unwrap();
    assert!(!c.opt_out_allowed);
    assert!(
        c.warning().ends_with(
            "install the Trellis CNI plugin (Helm chart value cni.enabled=true), which sets up capture \
             with no privileged container in the pod; or label the namespace \
             pod-security.kubernetes.io/enforce=privileged (the Trellis floor forbids opting the pod \
             out of the mesh)"
        ),
        "{}",
        c.warning()
    );
}

#[test]
fn both_sidecar_layouts_are_judged() {
    let mut cfg = InjectorConfig::default();
    cfg.proxy.native_sidecar = false;
    let c = conflict_with(&ns(&[(ENFORCE, "baseline")], &[]), &cfg).unwrap();
    assert_eq!(c.objections.len(), 1);
    assert_eq!(c.objections[0].container, INIT_CONTAINER);
}

fn cni() -> InjectorConfig {
    let mut cfg = InjectorConfig::default();
    cfg.init.capture_mode = crate::config::CaptureMode::Cni;
    cfg
}

#[test]
fn in_cni_mode_what_injection_adds_passes_every_level() {
    // Whatever the pod's own security context says where Pod Security
    // falls back to it (root, no seccomp profile, an Unconfined one),
    // the check container and the proxy set their own.
    let pod_contexts = [
        json!(null),
        json!({"runAsUser": 0, "runAsNonRoot": false}),
        json!({"seccompProfile": {"type": "Unconfined"}}),
        json!({"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}),
    ];
    let cfg = cni();
    for level in ["baseline", "restricted", "Restricted"] {
        let ns = ns(&[(ENFORCE, level)], &[]);
        for sc in &pod_contexts {
            let mut pod = pod();
            pod.spec.as_mut().unwrap().security_context =
                serde_json::from_value(sc.clone()).unwrap();
            let Outcome::Injected {
                pod: injected,
                pod_security,
                ..
            } = inject(&pod, &ns, &cfg)
            else {
                panic!("not injected")
            };
            assert_eq!(pod_security, None, "{level}, pod securityContext {sc}");
            for level in [Level::Baseline, Level::Restricted] {
                let spec = injected.spec.as_ref().unwrap();
                for c in spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(&spec.containers)
                {
                    if c.name == INIT_CONTAINER || c.name == PROXY_CONTAINER {
                        assert_eq!(
                            objections(level, c, spec.security_context.as_ref()),
                            Vec::<String>::new(),
                            "{} under {level}",
                            c.name
                        );
                    }
                }
            }
        }
    }
    // The same namespaces in init-container mode: refused, and the
    // warning names the way out.
    let c = conflict(&[(ENFORCE, "restricted")]).unwrap();
    assert!(c.warning().contains("cni.enabled=true"), "{}", c.warning());
}

fn container(sc: SecurityContext) -> Container {
    Container {
        name: "c".into(),
        security_context: Some(sc),
        ..Default::default()
    }
}

fn restricted_ok() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: Some(vec!["NET_BIND_SERVICE".into()]),
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn objections_follow_the_standards() {
    use Level::*;
    let none: &[&str] = &[];
    // A container that passes restricted passes every level.
    for level in [Privileged, Baseline, Restricted] {
        assert_eq!(
            objections(level, &container(restricted_ok()), None),
            none,
            "{level}"
        );
    }
    let privileged = SecurityContext {
        privileged: Some(true),
        ..restricted_ok()
    };
    assert_eq!(
        objections(Baseline, &container(privileged), None),
        ["is privileged"]
    );
    let unconfined = SecurityContext {
        seccomp_profile: Some(SeccompProfile {
            type_: "Unconfined".into(),
            ..Default::default()
        }),
        ..restricted_ok()
    };
    assert_eq!(
        objections(Baseline, &container(unconfined.clone()), None),
        ["has an Unconfined seccomp profile"]
    );
    assert_eq!(
        objections(Restricted, &container(unconfined), None),
        ["has no RuntimeDefault or Localhost seccomp profile"]
    );
    // Baseline's default capabilities are fine there, not under restricted.
    let chown = SecurityContext {
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: Some(vec!["CHOWN".into(), "SYS_ADMIN".into()]),
        }),
        ..restricted_ok()
    };
    assert_eq!(
        objections(Baseline, &container(chown.clone()), None),
        ["adds capabilities SYS_ADMIN"]
    );
    assert_eq!(
        objections(Restricted, &container(chown), None),
        ["adds capabilities CHOWN and SYS_ADMIN"]
    );
    // Restricted: nothing set is four objections.
    assert_eq!(
        objections(Restricted, &container(SecurityContext::default()), None),
        [
            "allows privilege escalation",
            "does not drop all capabilities",
            "does not set runAsNonRoot",
            "has no RuntimeDefault or Localhost seccomp profile",
        ]
    );
    // The pod's security context is the fallback for the user and seccomp.
    let bare = SecurityContext {
        run_as_non_root: None,
        seccomp_profile: None,
        ..restricted_ok()
    };
    let pod_sc = PodSecurityContext {
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "Localhost".into(),
            localhost_profile: Some("p.json".into()),
        }),
        ..Default::default()
    };
    assert_eq!(
        objections(Restricted, &container(bare.clone()), Some(&pod_sc)),
        none
    );
    let root = PodSecurityContext {
        run_as_user: Some(0),
        ..pod_sc
    };
    assert_eq!(
        objections(Restricted, &container(bare), Some(&root)),
        ["runs as root"]
    );
}

#[test]
fn only_the_added_containers_are_judged() {
    // The pod's own privileged container is not the injector's to report.
    let mut pod = pod();
    pod.spec.as_mut().unwrap().containers[0].security_context = Some(SecurityContext {
        privileged: Some(true),
        ..Default::default()
    });
    let ns = ns(&[(ENFORCE, "baseline")], &[]);
    let Outcome::Injected { pod: injected, .. } = inject(&pod, &ns, &InjectorConfig::default())
    else {
        panic!("not injected")
    };
    let c = check(&ns, &injected, &[PROXY_CONTAINER], true);
    assert_eq!(c, None, "trellis-proxy passes baseline");
    let c = check(&ns, &injected, &[INIT_CONTAINER, PROXY_CONTAINER], true).unwrap();
    assert_eq!(c.objections.len(), 1);
}

#[test]
fn lists_read_as_english() {
    assert_eq!(and_list(&[]), "");
    assert_eq!(and_list(&["a"]), "a");
    assert_eq!(and_list(&["a", "b"]), "a and b");
    assert_eq!(and_list(&["a", "b", "c"]), "a, b and c");
}
