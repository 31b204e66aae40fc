//! `trellis inject` as a user runs it: stdout for `kubectl apply -f -`,
//! one line per object on stderr, and the exit status.

// Helpers outside #[test] functions: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use serde::Deserialize as _;
use serde_json::Value;

/// Runs `trellis inject -f - ARGS` with `input` on stdin.
fn inject(input: &str, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["inject", "-f", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect()
}

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, enabled: 'on'}}
    spec:
      containers: [{name: web, image: 'nginx:1.27', env: [{name: A, value: 'yes'}]}]
";

#[test]
fn a_broken_deployment_in_the_middle_is_reported_and_the_others_printed() {
    let input = format!(
        "{DEPLOYMENT}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: broken}}\nspec: {{replicas: 1}}\n---\n{}",
        DEPLOYMENT.replace("name: web,", "name: api,")
    );
    let out = inject(&input, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("document 1: deployment/web (namespace shop): injected"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "document 2: deployment/broken: error: has no spec.template; printed unchanged"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("document 3: deployment/api (namespace shop): injected"),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 document(s) could not be processed"),
        "{stderr}"
    );
    let docs = yaml_docs(&text(&out.stdout));
    assert_eq!(docs.len(), 3);
    for i in [0, 2] {
        let inits = &docs[i]["spec"]["template"]["spec"]["initContainers"];
        assert_eq!(inits[1]["name"], "trellis-proxy", "{}", docs[i]);
    }
    assert_eq!(docs[1]["spec"], serde_json::json!({"replicas": 1}));
}

#[test]
fn unknown_kinds_are_printed_unchanged_and_reported_on_stderr() {
    let input = "\
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: canary}
spec: {template: {spec: {containers: [{name: a, image: a}]}}}
---
apiVersion: v1
kind: ReplicationController
metadata: {name: old}
spec: {template: {spec: {containers: [{name: a, image: a}]}}}
---
kind: Pod
metadata: {name: bare}
spec: {containers: [{name: a, image: a}]}
";
    let out = inject(input, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(text(&out.stdout), input);
    for line in [
        "document 1: rollout/canary: not injected: argoproj.io/v1alpha1 Rollout is not a kind trellis inject knows",
        "document 2: replicationcontroller/old: not injected: v1 ReplicationController is not a kind",
        "document 3: pod/bare: not injected: no apiVersion (expected v1); printed unchanged",
    ] {
        assert!(stderr.contains(line), "{line}\n{stderr}");
    }
    // --strict: these pods were left without a proxy.
    assert_eq!(inject(input, &["--strict"]).status.code(), Some(1));
}

#[test]
fn strict_accepts_input_that_is_already_injected() {
    let first = inject(DEPLOYMENT, &["--strict"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let again = inject(&text(&first.stdout), &["--strict"]);
    let stderr = text(&again.stderr);
    assert_eq!(again.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("skipped: the pod already has the Trellis proxy"),
        "{stderr}"
    );
    assert_eq!(
        text(&again.stdout),
        text(&first.stdout),
        "injecting twice changes nothing"
    );
    // What --strict still refuses: a template the injector left alone.
    let opted_out = DEPLOYMENT.replace(
        "labels: {app: web, enabled: 'on'}",
        "annotations: {trellis.dev/inject: disabled}",
    );
    let out = inject(&opted_out, &["--strict"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--strict: 1 pod template(s) were not injected"));
    assert_eq!(inject(&opted_out, &[]).status.code(), Some(0));
}

#[test]
fn json_in_gives_pretty_json_out() {
    let input = r#"{"kind":"Deployment","apiVersion":"apps/v1","metadata":{"name":"web"},"spec":{"template":{"metadata":{"labels":{"b":"on","a":"1"}},"spec":{"containers":[{"name":"web","image":"nginx"}]}},"selector":{"matchLabels":{"b":"on","a":"1"}}}}"#;
    let out = inject(input, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        doc["spec"]["template"]["spec"]["initContainers"][0]["name"],
        "trellis-init"
    );
    assert!(
        stdout.starts_with("{\n  \"kind\": \"Deployment\",\n  \"apiVersion\": \"apps/v1\","),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"b\": \"on\",\n          \"a\": \"1\""),
        "{stdout}"
    );
}

#[test]
fn comments_and_key_order_are_kept_where_the_document_allows() {
    let input = format!(
        "# a service, untouched\napiVersion: v1\nkind: Service   # trailing comment\nmetadata: {{name: web}}\nspec: {{ports: [{{port: 80}}]}}\n---\n# the deployment\n{DEPLOYMENT}"
    );
    let out = inject(&input, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The Service: byte for byte.
    assert!(
        stdout.starts_with(input.split("---\n").next().unwrap()),
        "{stdout}"
    );
    // The Deployment: its header comment and its key order.
    assert!(stdout.contains("---\n# the deployment\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  selector:\n"), "{stdout}");
    assert!(
        stdout.contains("      labels:\n        app: web\n        enabled: 'on'\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("        - name: A\n          value: 'yes'\n"),
        "{stdout}"
    );
}

#[test]
fn a_document_that_is_not_yaml_is_reported_with_its_line_and_the_rest_injected() {
    let input = format!("{DEPLOYMENT}---\nkind: [oops\n---\n{DEPLOYMENT}");
    let out = inject(&input, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("document 2: (unreadable): error: not YAML this program can read (the document starts at line 10)"),
        "{stderr}"
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("---\nkind: [oops\n---\n"), "{stdout}");
    assert_eq!(
        stdout.matches("- name: trellis-proxy\n").count(),
        2,
        "{stdout}"
    );
}

/// The pod of issue 17's security review, in a namespace whose floor
/// forbids what it asks for.
const BELOW_THE_FLOOR: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: payments
  annotations:
    config.trellis.dev/floor-skip-inbound-ports: none
    config.trellis.dev/floor-default-inbound-policy: all-authenticated
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ledger, namespace: payments}
spec:
  selector: {matchLabels: {app: ledger}}
  template:
    metadata:
      labels: {app: ledger}
      annotations:
        config.trellis.dev/skip-inbound-ports: 1-65535
        config.trellis.dev/skip-outbound-ports: 1-65535
        config.trellis.dev/default-inbound-policy: all-unauthenticated
    spec:
      containers: [{name: ledger, image: 'ledger:1'}]
";

#[test]
fn a_template_below_the_floor_is_refused_with_a_non_zero_exit() {
    let out = inject(BELOW_THE_FLOOR, &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    for needle in [
        "document 2: deployment/ledger (namespace payments): refused by the Trellis floor:",
        r#"config.trellis.dev/skip-inbound-ports: "1-65535" on the pod"#,
        "set by the namespace's config.trellis.dev/floor-skip-inbound-ports",
        r#"config.trellis.dev/default-inbound-policy: "all-unauthenticated" on the pod is weaker than the floor's all-authenticated"#,
        "1 pod template(s) refused by the Trellis floor",
    ] {
        assert!(
            stderr.contains(needle),
            "{needle:?} not in stderr:\n{stderr}"
        );
    }
    // Printed unchanged: no proxy.
    assert!(!stdout.contains("trellis-proxy"), "{stdout}");
    assert_eq!(yaml_docs(&stdout).len(), 2);
}

#[test]
fn a_template_below_a_warn_floor_is_injected_with_the_floor_and_a_warning() {
    let input = BELOW_THE_FLOOR.replace(
        "    config.trellis.dev/floor-skip-inbound-ports: none\n",
        "    config.trellis.dev/floor-skip-inbound-ports: none\n    config.trellis.dev/floor-enforcement: warn\n",
    );
    let out = inject(&input, &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stderr.contains(
            "deployment/ledger (namespace payments): injected with the floor applied (warning):"
        ),
        "{stderr}"
    );
    let docs = yaml_docs(&stdout);
    let inits = &docs[1]["spec"]["template"]["spec"]["initContainers"];
    let args = inits[0]["args"].as_array().unwrap();
    assert!(
        !args.iter().any(|a| a == "--skip-inbound-ports"),
        "{args:?}"
    );
    // No floor on outbound ports: the pod's own value stands.
    assert!(
        args.iter().any(|a| a == "--skip-outbound-ports"),
        "{args:?}"
    );
}
