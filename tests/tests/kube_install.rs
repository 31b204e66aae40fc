//! The chart against a real kube-apiserver: `helm install` with the
//! default values, `helm upgrade` to the HA profile, then with
//! `cni.enabled=true`, `helm uninstall`; every
//! object accepted, the generated CA kept, nothing of Trellis left behind
//! (the controller's trust-roots copies included: the garbage collector of
//! kube-controller-manager removes them with the chart's object that owns
//! them).

// Test harness: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use trellis_e2e::kube::{http_get, Cluster, Proc};
use trellis_e2e::{bin, eventually, Metrics};

const NS: &str = "trellis-system";

/// The release's manifest as kubectl reads it back: fails unless every
/// object of it exists in the API server.
fn assert_all_stored(c: &Cluster, what: &str) -> usize {
    let manifest = c.helm_ok(&["get", "manifest", "trellis", "-n", NS]);
    let out = c.kubectl_as(&c.admin, &["get", "-f", "-", "-o", "name"], Some(&manifest));
    assert!(
        out.status.success(),
        "{what}: objects of the release are missing from the API server:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = String::from_utf8_lossy(&out.stdout).lines().count();
    let docs = manifest.matches("\nkind: ").count() + usize::from(manifest.starts_with("kind: "));
    assert_eq!(
        names, docs,
        "{what}: kubectl read back {names} of {docs} objects"
    );
    names
}

fn issuer_ca(c: &Cluster) -> String {
    let s = c
        .get(&["secret", "trellis-identity-issuer", "-n", NS])
        .expect("the chart made the issuer Secret");
    s["data"]["issuer.crt"].as_str().unwrap().to_string()
}

fn replicas(c: &Cluster, deployment: &str) -> i64 {
    c.get(&["deployment", deployment, "-n", NS]).unwrap()["spec"]["replicas"]
        .as_i64()
        .unwrap()
}

/// Every object of Trellis still stored: anything labelled as the chart's
/// or the controller's, anything named `trellis…`, and anything in the
/// control plane's namespace but what Kubernetes puts in every namespace.
/// The namespace itself (helm never deletes one) and the CRD of the chart's
/// `crds/` (helm never deletes those, so users' policies survive) are kept
/// by design and not listed.
fn leftovers(c: &Cluster) -> Vec<String> {
    let kinds = c.kubectl_ok(&["api-resources", "--verbs=list,delete", "-o", "name"]);
    let kinds: Vec<&str> = kinds
        .lines()
        .filter(|k| !k.starts_with("events") && *k != "componentstatuses")
        .collect();
    let list = c.kubectl_ok(&["get", &kinds.join(","), "-A", "-o", "json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    let mut left = Vec::new();
    for item in list["items"].as_array().unwrap() {
        let kind = item["kind"].as_str().unwrap_or("?");
        let meta = &item["metadata"];
        let name = meta["name"].as_str().unwrap_or("");
        let ns = meta["namespace"].as_str().unwrap_or("");
        let labels = &meta["labels"];
        let ours = labels["app.kubernetes.io/part-of"] == "trellis"
            || labels["app.kubernetes.io/managed-by"] == "trellis-controller"
            || name.starts_with("trellis")
            || ns == NS;
        let kept = (kind == "Namespace" && name == NS)
            || (kind == "CustomResourceDefinition" && name == "authorizationpolicies.policy.trellis.dev")
            // What Kubernetes itself puts in every namespace.
            || (ns == NS && kind == "ServiceAccount" && name == "default")
            || (ns == NS && kind == "ConfigMap" && name == "kube-root-ca.crt");
        if ours && !kept {
            left.push(format!("{kind} {ns}/{name}"));
        }
    }
    left
}

#[test]
fn kube_install_upgrade_and_uninstall_leave_nothing() {
    let c = Cluster::start();

    // Install with the default values: every object accepted.
    c.install_chart(&[], &[]);
    let n = assert_all_stored(&c, "install");
    assert!(n >= 20, "the default release has only {n} objects");
    let ca = issuer_ca(&c);
    assert_eq!(replicas(&c, "trellis-controller"), 1);

    // The controller, run with its own ServiceAccount's token, copies the
    // trust roots into the namespaces that may hold meshed pods.
    let app = c.namespace("app", &[], &[("trellis.dev/inject", "enabled")]);
    let mut controller = c.run_container(
        NS,
        "trellis-controller",
        "controller",
        &bin("trellis-controller"),
        &[],
    );
    assert!(
        eventually(Duration::from_secs(30), || c
            .get(&["configmap", "trellis-trust-roots", "-n", &app])
            .is_some()),
        "the controller copied no trust roots into {app}:\n{}",
        controller.output()
    );

    // The Gateway API is not installed yet: the watches of HTTPRoute and
    // GRPCRoute fail, say so once, back off, and show it.
    gateway_api_installed_later(&c, &controller, &app);

    // Upgrade to the HA profile: accepted, scaled, the CA kept.
    c.install_chart(&["values-ha.yaml"], &[]);
    assert_all_stored(&c, "upgrade to values-ha.yaml");
    assert_eq!(replicas(&c, "trellis-controller"), 3);
    assert_eq!(issuer_ca(&c), ca, "the upgrade replaced the generated CA");
    assert!(
        c.get(&["poddisruptionbudget", "trellis-controller", "-n", NS])
            .is_some(),
        "the HA profile has a PodDisruptionBudget"
    );

    // Switch on the CNI plugin: its installer's DaemonSet and RBAC are
    // accepted, the injector's capture mode follows; uninstall then takes
    // them too.
    c.install_chart(&["values-ha.yaml"], &["cni.enabled=true"]);
    assert_all_stored(&c, "upgrade to cni.enabled=true");
    assert!(
        c.get(&["daemonset", "trellis-cni", "-n", NS]).is_some(),
        "cni.enabled makes the installer's DaemonSet"
    );
    let config = c
        .get(&["configmap", "trellis-injector-config", "-n", NS])
        .unwrap();
    assert!(
        config["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .contains("captureMode: cni"),
        "{config:#}"
    );
    assert_eq!(issuer_ca(&c), ca, "the upgrade replaced the generated CA");

    // Uninstall: nothing of Trellis is left, the copies included.
    controller.stop();
    c.helm_ok(&["uninstall", "trellis", "-n", NS, "--wait", "--timeout=60s"]);
    let mut left = Vec::new();
    let clean = eventually(Duration::from_secs(60), || {
        left = leftovers(&c);
        left.is_empty()
    });
    assert!(
        clean,
        "helm uninstall left these behind:\n  {}\n(controller log:\n{})",
        left.join("\n  "),
        controller.output()
    );
}

const HTTPROUTES: &str = "httproutes.gateway.networking.k8s.io";

/// The controller started before the Gateway API's CRDs: its route watches
/// fail as "not installed", it is ready all the same (routes are optional),
/// it retries with backoff and logs once per change of state, not once per
/// retry; installed later, the CRDs are picked up within the backoff's cap.
fn gateway_api_installed_later(c: &Cluster, controller: &Proc, app: &str) {
    let admin = controller.port("admin");
    let metrics = || Metrics(http_get(admin, "/metrics").unwrap().1);
    let failing = |m: &Metrics| {
        m.sum(
            "trellis_controller_watch_failing",
            &[("resource", HTTPROUTES), ("reason", "not_installed")],
        )
    };
    assert!(
        eventually(Duration::from_secs(10), || failing(&metrics()) == 1.0),
        "the failing watch is not in the metrics:\n{}",
        metrics().0
    );
    // Ready once the other kinds are listed: the routes are optional.
    let ready = || http_get(admin, "/ready").unwrap_or((0, String::new()));
    assert!(
        eventually(Duration::from_secs(20), || ready().0 == 200),
        "routes are optional, yet: {:?}",
        ready()
    );
    let (_, body) = ready();
    assert!(
        body.contains(&format!("watch failing: {HTTPROUTES}")) && body.contains("not installed"),
        "/ready names the failing watch: {body}"
    );

    // Attempts back off: eight more failed attempts take at least 6 s,
    // where a retry without backoff (1.6 a second before) takes 5 s. With
    // full jitter a wait may be short, but not seven in a row: their
    // ceilings double from 1 s to 10 s, so they sum to ~28 s on average
    // and under 6 s about once in a thousand runs at the very worst.
    let errors = |m: &Metrics| {
        m.sum(
            "trellis_controller_watch_errors_total",
            &[("resource", HTTPROUTES)],
        )
    };
    let before = errors(&metrics());
    let window = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(90), || errors(&metrics())
            >= before + 8.0),
        "the watch is not retried:\n{}",
        metrics().0
    );
    assert!(
        window.elapsed() >= Duration::from_secs(6),
        "8 failed attempts within {:?}: no backoff",
        window.elapsed()
    );
    let log = controller.output();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert!(
        warnings.iter().filter(|l| l.contains(HTTPROUTES)).count() == 1
            && !log.contains("Unsuccessful data error parse"),
        "one warning per failing watch, not one per retry:\n{}",
        warnings.join("\n")
    );

    // Installed now: picked up within the backoff's cap (10 s), and a route
    // is served.
    c.install_gateway_api();
    c.apply_ok(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {app}\nspec:\n  ports:\n  - {{name: http, port: 80}}\n\
         ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: late\n  namespace: {app}\nspec:\n  \
         parentRefs:\n  - {{group: \"\", kind: Service, name: web, port: 80}}\n  rules:\n  - backendRefs:\n    - {{name: web, port: 80}}\n"
    ));
    let routes = || {
        http_get(admin, "/routes")
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(20), || routes().contains("late")),
        "the route made after the CRDs were installed is not served: {}\n{}",
        routes(),
        controller.output()
    );
    assert!(
        eventually(Duration::from_secs(10), || failing(&metrics()) == 0.0),
        "the watch still shows failing:\n{}",
        metrics().0
    );
    // Both route watches (each on its own backoff) recover.
    let ready = || {
        http_get(admin, "/ready")
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(20), || !ready()
            .contains("watch failing")),
        "/ready after recovery: {}",
        ready()
    );
    assert!(
        controller.output().contains("watch recovered"),
        "the recovery is logged once:\n{}",
        controller.output()
    );
}
