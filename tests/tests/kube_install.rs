//! The chart against a real kube-apiserver: `helm install` with the
//! default values, `helm upgrade` to the HA profile, `helm uninstall`; every
//! object accepted, the generated CA kept, nothing of Trellis left behind
//! (the controller's trust-roots copies included: the garbage collector of
//! kube-controller-manager removes them with the chart's object that owns
//! them).

// Test harness: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use trellis_e2e::kube::Cluster;
use trellis_e2e::{bin, eventually};

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
    c.install_gateway_api();

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
