//! The injector's CNI mode against a real kube-apiserver (the integration
//! tier; see TESTING.md), in namespaces that enforce Pod Security
//! `restricted`. The chart is installed with `cni.enabled=true`, and two
//! injectors run beside each other as the chart's Deployment would run
//! them (its environment and volumes, its ServiceAccount's token):
//!
//! - one with the chart's own configuration (capture mode `cni`), called
//!   by the chart's webhook;
//! - one with the same configuration but capture mode `init` (what the
//!   chart renders with `cni.enabled=false`), called by a copy of the
//!   webhook for namespaces labelled `trellis-test/capture: init` only
//!   (the chart's webhook is kept away from those).
//!
//! The same restricted pod is then admitted in CNI mode and refused by the
//! API server, with the injector's warning naming `cni.enabled`, in
//! init-container mode. The installer's DaemonSet is only stored (there is
//! no kubelet): its privileges are checked with the API server's
//! authorizer and its Pod Security admission.

// Test harness: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use trellis_e2e::kube::{http_get, Cluster, Proc};
use trellis_e2e::{bin, eventually, Metrics};

const NS: &str = "trellis-system";
/// The label that sends a namespace to the init-mode injector.
const CAPTURE_LABEL: &str = "trellis-test/capture";
const ENFORCE: &str = "pod-security.kubernetes.io/enforce";

struct Plane {
    c: &'static Cluster,
    /// The chart's configuration: capture mode `cni`.
    cni: Proc,
    /// The same, with capture mode `init`.
    init: Proc,
}

fn plane() -> &'static Plane {
    static PLANE: OnceLock<Plane> = OnceLock::new();
    PLANE.get_or_init(|| {
        let c = Cluster::shared();
        c.install_chart(&[], &["cni.enabled=true"]);
        let config = c
            .get(&["configmap", "trellis-injector-config", "-n", NS])
            .unwrap()["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .to_string();
        let mut parsed: Value = serde_yaml_ng::from_str(&config).unwrap();
        assert_eq!(
            parsed["init"]["captureMode"], "cni",
            "cni.enabled=true renders the injector's capture mode cni:\n{config}"
        );
        parsed["init"]["captureMode"] = json!("init");
        let init_config = c.dir.join("injector-init-mode.yaml");
        std::fs::write(&init_config, serde_yaml_ng::to_string(&parsed).unwrap()).unwrap();

        // Both serve a certificate for 127.0.0.1, where the webhooks call.
        let (crt, key) = c.ca.issue("trellis-injector", None, &["127.0.0.1"], true);
        let crt_file = c.dir.join("injector-cni.crt");
        let key_file = c.dir.join("injector-cni.key");
        std::fs::write(&crt_file, crt).unwrap();
        std::fs::write(&key_file, key).unwrap();
        let tls = [
            ("TRELLIS_INJECTOR_TLS_CERT_FILE", crt_file.to_str().unwrap()),
            ("TRELLIS_INJECTOR_TLS_KEY_FILE", key_file.to_str().unwrap()),
        ];
        let injector = bin("trellis-injector");
        let cni = c.run_container(NS, "trellis-injector", "injector", &injector, &tls);
        let mut init_env = tls.to_vec();
        init_env.push((
            "TRELLIS_INJECTOR_CONFIG_FILE",
            init_config.to_str().unwrap(),
        ));
        let init = c.run_container(NS, "trellis-injector", "injector", &injector, &init_env);
        for p in [&cni, &init] {
            wait_ready(p);
        }

        // The chart's webhook, kept away from the init-mode namespaces,
        // calls the CNI-mode injector; a copy selecting only them calls
        // the init-mode one.
        let mut copy = c
            .get(&["mutatingwebhookconfiguration", "trellis-injector"])
            .unwrap();
        c.kubectl_ok(&[
            "patch",
            "mutatingwebhookconfiguration",
            "trellis-injector",
            "--type=json",
            "-p",
            &json!([{
                "op": "add",
                "path": "/webhooks/0/namespaceSelector/matchExpressions/-",
                "value": {"key": CAPTURE_LABEL, "operator": "NotIn", "values": ["init"]},
            }])
            .to_string(),
        ]);
        point_webhook(c, "trellis-injector", cni.port("https"));
        copy["metadata"] = json!({"name": "trellis-injector-init-mode"});
        for w in copy["webhooks"].as_array_mut().unwrap() {
            w["namespaceSelector"]["matchExpressions"]
                .as_array_mut()
                .unwrap()
                .push(json!({"key": CAPTURE_LABEL, "operator": "In", "values": ["init"]}));
        }
        c.apply_ok(&serde_json::to_string(&copy).unwrap());
        point_webhook(c, "trellis-injector-init-mode", init.port("https"));
        Plane { c, cni, init }
    })
}

fn wait_ready(p: &Proc) {
    let admin = p.port("admin");
    assert!(
        eventually(Duration::from_secs(60), || http_get(admin, "/ready")
            .is_some_and(|(s, _)| s == 200)),
        "{} did not become ready: /ready answers {:?}\n{}",
        p.name,
        http_get(admin, "/ready"),
        p.output()
    );
}

/// Points every webhook of MutatingWebhookConfiguration `name` at
/// `https://<addr>/inject`, trusting the cluster's CA.
fn point_webhook(c: &Cluster, name: &str, addr: SocketAddr) {
    let config = c.get(&["mutatingwebhookconfiguration", name]).unwrap();
    let ca = base64::engine::general_purpose::STANDARD.encode(&c.ca.cert_pem);
    let ops: Vec<Value> = (0..config["webhooks"].as_array().unwrap().len())
        .map(|i| {
            json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig"),
                   "value": {"url": format!("https://{addr}/inject"), "caBundle": ca}})
        })
        .collect();
    c.kubectl_ok(&[
        "patch",
        "mutatingwebhookconfiguration",
        name,
        "--type=json",
        "-p",
        &serde_json::to_string(&ops).unwrap(),
    ]);
}

fn metrics(p: &Proc) -> Metrics {
    Metrics(http_get(p.port("admin"), "/metrics").unwrap().1)
}

fn reviews(m: &Metrics, outcome: &str, reason: &str) -> f64 {
    m.sum(
        "trellis_injector_reviews_total",
        &[("outcome", outcome), ("reason", reason)],
    )
}

/// A pod that meets `restricted` by itself: only what injection adds can
/// make the API server refuse it.
fn restricted_pod(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  securityContext:\n    runAsNonRoot: true\n    runAsUser: 1000\n    seccompProfile: {{type: RuntimeDefault}}\n  \
         containers:\n  - name: app\n    image: registry.example/app:1\n    ports:\n    - containerPort: 8080\n    \
         securityContext:\n      allowPrivilegeEscalation: false\n      capabilities: {{drop: [ALL]}}\n"
    )
}

fn container<'a>(pod: &'a Value, field: &str, name: &str) -> Option<&'a Value> {
    pod["spec"][field]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

#[test]
fn kube_cni_mode_pod_passes_restricted_and_init_mode_is_refused_naming_cni_enabled() {
    let p = plane();
    let c = p.c;
    let (cni_before, init_before) = (metrics(&p.cni), metrics(&p.init));

    // CNI mode: the API server admits the injected pod.
    let ns = c.namespace(
        "cni",
        &[(ENFORCE, "restricted")],
        &[("trellis.dev/inject", "enabled")],
    );
    let out = c.apply(&restricted_pod(&ns, "web"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the API server refused the pod injected in CNI mode: {stderr}\ninjector log:\n{}",
        p.cni.output()
    );
    assert!(
        !stderr.contains("Warning"),
        "no warning in CNI mode: {stderr}"
    );
    let pod = c.get(&["pod", "web", "-n", &ns]).unwrap();
    let inits: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["trellis-init", "trellis-proxy"], "{pod:#}");
    let check = container(&pod, "initContainers", "trellis-init").unwrap();
    assert_eq!(
        check["args"],
        json!([
            "init",
            "--check",
            "--proxy-uid",
            "7102",
            "--iptables-mode",
            "auto"
        ]),
        "trellis-init runs `trellis-proxy init --check` with the capture flags"
    );
    assert_eq!(check["command"], json!(["trellis-proxy"]));
    let sc = &check["securityContext"];
    assert_eq!(sc["runAsUser"], 65534);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    let text = pod.to_string();
    assert!(
        !text.contains("NET_ADMIN") && !text.contains("NET_RAW"),
        "no capability added anywhere: {pod:#}"
    );
    assert!(
        !text.contains("trellis-init-run"),
        "no /run volume: {pod:#}"
    );
    assert_eq!(
        container(&pod, "initContainers", "trellis-proxy").unwrap()["restartPolicy"],
        "Always"
    );

    // A Deployment's pods, made by kube-controller-manager, pass as well.
    c.apply_ok(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\n  namespace: {ns}\n\
         spec:\n  replicas: 1\n  selector: {{matchLabels: {{app: api}}}}\n  template:\n    metadata: {{labels: {{app: api}}}}\n    \
         spec:\n      securityContext:\n        runAsNonRoot: true\n        runAsUser: 1000\n        seccompProfile: {{type: RuntimeDefault}}\n      \
         containers:\n      - name: app\n        image: registry.example/app:1\n        \
         securityContext:\n          allowPrivilegeEscalation: false\n          capabilities: {{drop: [ALL]}}\n"
    ));
    let mut made = Value::Null;
    assert!(
        eventually(Duration::from_secs(60), || {
            made = c
                .get(&["pods", "-n", &ns, "-l", "app=api"])
                .unwrap_or(Value::Null);
            made["items"].as_array().is_some_and(|i| i.len() == 1)
        }),
        "the ReplicaSet made no pod in a restricted namespace: {}\n{}",
        c.kubectl_ok(&["get", "events", "-n", &ns]),
        c.failure("")
    );
    let made = &made["items"][0];
    assert_eq!(
        container(made, "initContainers", "trellis-init").unwrap()["args"][1],
        "--check",
        "{made:#}"
    );

    // Init-container mode: the same pod, in the same kind of namespace, is
    // refused by the API server, and the injector's warning names the fix.
    let ns_init = c.namespace(
        "init",
        &[(ENFORCE, "restricted"), (CAPTURE_LABEL, "init")],
        &[("trellis.dev/inject", "enabled")],
    );
    let out = c.apply(&restricted_pod(&ns_init, "web"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the API server stored a pod injected in init-container mode (NET_ADMIN) in a restricted namespace"
    );
    assert!(
        stderr.contains("violates PodSecurity \"restricted:latest\"")
            && stderr.contains("trellis-init"),
        "the API server's own refusal: {stderr}"
    );
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("Warning: trellis: "))
        .unwrap_or_else(|| {
            panic!(
                "no warning from the injector: {stderr}\ninjector log:\n{}",
                p.init.output()
            )
        });
    for needle in [
        &format!("namespace {ns_init} enforces Pod Security \"restricted\""),
        "adds capabilities NET_ADMIN and NET_RAW",
        "install the Trellis CNI plugin (Helm chart value cni.enabled=true)",
        "pod-security.kubernetes.io/enforce=privileged",
        "trellis.dev/inject: disabled",
    ] {
        assert!(warning.contains(needle), "{needle:?} not in {warning}");
    }
    assert!(c.get(&["pod", "web", "-n", &ns_init]).is_none());

    // Each outcome counted by the injector that decided it.
    let (cni_after, init_after) = (metrics(&p.cni), metrics(&p.init));
    let delta = |a: &Metrics, b: &Metrics, outcome, reason| {
        reviews(a, outcome, reason) - reviews(b, outcome, reason)
    };
    assert_eq!(
        delta(&cni_after, &cni_before, "injected", "injected"),
        2.0,
        "the bare pod and the Deployment's:\n{}",
        cni_after.0
    );
    assert_eq!(
        cni_after.sum(
            "trellis_injector_reviews_total",
            &[("outcome", "injected_pod_security_refused")]
        ),
        0.0
    );
    assert_eq!(
        delta(
            &init_after,
            &init_before,
            "injected_pod_security_refused",
            "pod_security_restricted"
        ),
        1.0,
        "{}",
        init_after.0
    );
    assert_eq!(
        delta(&init_after, &init_before, "injected", "injected"),
        0.0
    );
}

#[test]
fn kube_cni_installer_has_least_privilege_and_needs_a_privileged_namespace() {
    let p = plane();
    let c = p.c;
    // Every object of the release is stored.
    let manifest = c.helm_ok(&["get", "manifest", "trellis", "-n", NS]);
    let out = c.kubectl_as(&c.admin, &["get", "-f", "-", "-o", "name"], Some(&manifest));
    assert!(
        out.status.success(),
        "objects of the release are missing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ds = c.get(&["daemonset", "trellis-cni", "-n", NS]).unwrap();
    let template = &ds["spec"]["template"];
    assert_eq!(
        template["spec"]["containers"][0]["command"],
        json!(["trellis-cni", "install"])
    );

    // The plugin reads the pod it sets up, with the installer's token:
    // `get pods`, nothing more.
    let sa = "trellis-cni";
    for (verb, resource, allowed) in [
        ("get", "pods", true),
        ("list", "pods", false),
        ("watch", "pods", false),
        ("create", "pods", false),
        ("patch", "pods", false),
        ("delete", "pods", false),
        ("get", "secrets", false),
        ("get", "configmaps", false),
        ("get", "nodes", false),
        ("create", "pods/exec", false),
    ] {
        assert_eq!(
            c.can_i(NS, sa, verb, resource, None),
            allowed,
            "trellis-cni {verb} {resource}"
        );
    }
    // And, at SIGTERM, its own DaemonSet (an update or a removal?), no other.
    for (verb, resource, allowed) in [
        ("get", "daemonsets.apps/trellis-cni", true),
        ("get", "daemonsets.apps/other", false),
        ("list", "daemonsets.apps", false),
        ("patch", "daemonsets.apps/trellis-cni", false),
        ("delete", "daemonsets.apps/trellis-cni", false),
    ] {
        assert_eq!(
            c.can_i(NS, sa, verb, resource, Some(NS)),
            allowed,
            "trellis-cni {verb} {resource} in {NS}"
        );
    }
    assert!(!c.can_i(
        NS,
        sa,
        "get",
        "daemonsets.apps/trellis-cni",
        Some("default")
    ));

    // hostPath: the installer's pod is refused by Pod Security baseline
    // and restricted, admitted where privileged is enforced. (Its pod,
    // as the DaemonSet controller would make it, in a server-side dry run.)
    let pod = |ns: &str| {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "trellis-cni-probe", "namespace": ns},
            "spec": template["spec"],
        })
        .to_string()
    };
    for level in ["baseline", "restricted", "privileged"] {
        let ns = c.namespace("cni-ns", &[(ENFORCE, level)], &[]);
        // The pod's ServiceAccount, as the chart makes it in its namespace.
        c.kubectl_ok(&["create", "serviceaccount", sa, "-n", &ns]);
        let out = c.kubectl_as(
            &c.admin,
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&pod(&ns)),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        if level == "privileged" {
            assert!(out.status.success(), "{level}: {stderr}");
        } else {
            assert!(!out.status.success(), "{level} admitted hostPath");
            assert!(
                stderr.contains(&format!("violates PodSecurity \"{level}:latest\""))
                    && stderr.contains("hostPath")
                    && stderr.contains("cni-bin"),
                "{level}: {stderr}"
            );
        }
    }
}
