//! The node agent's pod lifecycle, against a real API server: init
//! containers in order, a native sidecar started and ready (by its startup
//! probe) before the next init container and stopped after the containers,
//! the environment (`fieldRef`, `$(VAR)`), the user, a ConfigMap volume kept
//! current, restarts with their count, an unmapped image reported on the
//! pod, and deletion within the grace period. Each container records what
//! it sees in a `hostPath` directory the test reads.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_e2e::kube_mesh::KubeMesh;
use trellis_e2e::{bin, eventually, unique};

/// The test's own image: a shell, with the host's programs behind it.
const IMAGES: &str = "images:
  - image: example.com/trellis-test/shell
    entrypoint: [/bin/sh]
    programs:
      /bin/sh: /bin/sh
";

fn lifecycle_pod(record: &Path, app: &Path) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: lifecycle
  namespace: life
spec:
  terminationGracePeriodSeconds: 3
  volumes:
    - name: record
      hostPath: {{path: {record}, type: Directory}}
    - name: settings
      configMap: {{name: settings}}
  initContainers:
    - name: first
      image: example.com/trellis-test/shell:1
      args: ["-c", "echo first >> /record/order"]
      volumeMounts: [{{name: record, mountPath: /record}}]
    - name: sidecar
      image: example.com/trellis-test/shell:1
      restartPolicy: Always
      args:
        - -c
        - |
          echo sidecar-start >> /record/order
          trap 'echo sidecar-term >> /record/order; kill $P; exit 0' TERM
          {app} http --listen 0.0.0.0:9000 --name sidecar &
          P=$!
          wait
      startupProbe:
        tcpSocket: {{port: 9000}}
        periodSeconds: 1
        failureThreshold: 30
      volumeMounts: [{{name: record, mountPath: /record}}]
    - name: second
      image: example.com/trellis-test/shell:1
      # 9000 is 0x2328: the sidecar listens when this one starts.
      args: ["-c", "grep -q ':2328 00000000:0000 0A' /proc/net/tcp && echo second-saw-sidecar >> /record/order"]
      volumeMounts: [{{name: record, mountPath: /record}}]
  containers:
    - name: main
      image: example.com/trellis-test/shell:1
      env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - name: GREETING
          value: hello-$(POD_NAME)
      securityContext: {{runAsUser: 1234, runAsGroup: 1234}}
      args:
        - -c
        - |
          echo "main uid=$(id -u) gid=$(id -g) greeting=$GREETING" >> /record/order
          trap 'echo main-term >> /record/order; sleep 0.5; exit 0' TERM
          while true; do cat /settings/colour > /record/colour.tmp; mv /record/colour.tmp /record/colour; sleep 0.2; done
      volumeMounts:
        - {{name: record, mountPath: /record}}
        - {{name: settings, mountPath: /settings}}
    - name: stubborn
      image: example.com/trellis-test/shell:1
      args: ["-c", "trap '' TERM; echo stubborn-up >> /record/order; while true; do sleep 0.2; done"]
      volumeMounts: [{{name: record, mountPath: /record}}]
"#,
        record = record.display(),
        app = app.display(),
    )
}

const SETTINGS: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: life}
data: {colour: blue}
";

const CRASHER: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: crasher, namespace: life}
spec:
  containers:
    - name: crasher
      image: example.com/trellis-test/shell:1
      args: ["-c", "exit 3"]
"#;

const UNMAPPED: &str = "apiVersion: v1
kind: Pod
metadata: {name: unmapped, namespace: life}
spec:
  containers:
    - name: app
      image: example.com/not-mapped/anything:1.0
";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn container_status<'a>(pod: &'a Value, key: &str, name: &str) -> &'a Value {
    pod["status"][key]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

#[test]
fn kube_node_runs_pods_with_kubelets_lifecycle() {
    let dir = std::env::temp_dir().join(unique("trellis-kube-node-"));
    std::fs::create_dir_all(dir.join("record")).unwrap();
    // The main container writes here as uid 1234.
    std::fs::set_permissions(dir.join("record"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let images = dir.join("images.yaml");
    std::fs::write(&images, IMAGES).unwrap();
    let record = dir.join("record");
    let order = record.join("order");

    // Mount points the pods need that the host lacks are made by the agent
    // and removed by `down`.
    let made = ["/record", "/settings"].map(Path::new);
    let existed: Vec<bool> = made.iter().map(|p| p.exists()).collect();

    let mut mesh = KubeMesh::up(&["--images", images.to_str().unwrap()]);
    let m = &mesh;
    m.kubectl_ok(&["create", "namespace", "life"]);
    m.apply(SETTINGS);
    m.apply(&lifecycle_pod(&record, &bin("trellis-app")));
    m.apply(CRASHER);
    m.apply(UNMAPPED);

    let ready = eventually(Duration::from_secs(60), || {
        let pod = m.json(&["get", "pod", "lifecycle", "-n", "life"]);
        pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    assert!(
        ready,
        "the lifecycle pod is not Ready: {}\norder: {}",
        m.kubectl_ok(&["get", "pod", "lifecycle", "-n", "life", "-o", "yaml"]),
        read(&order)
    );
    // Init containers in order; the sidecar listening (its startup probe
    // passed) before the second init container ran.
    let lines: Vec<String> = read(&order).lines().map(str::to_string).collect();
    assert_eq!(
        lines[..3],
        ["first", "sidecar-start", "second-saw-sidecar"],
        "order: {lines:?}"
    );
    assert!(
        lines.contains(&"main uid=1234 gid=1234 greeting=hello-lifecycle".to_string()),
        "the main container's user and environment: {lines:?}"
    );
    let pod = m.json(&["get", "pod", "lifecycle", "-n", "life"]);
    let sidecar = container_status(&pod, "initContainerStatuses", "sidecar");
    assert_eq!(sidecar["started"], true, "{sidecar}");
    assert!(sidecar["state"]["running"].is_object(), "{sidecar}");
    let first = container_status(&pod, "initContainerStatuses", "first");
    assert_eq!(first["state"]["terminated"]["exitCode"], 0, "{first}");
    assert_eq!(pod["status"]["phase"], "Running");

    // A ConfigMap volume is kept current.
    assert!(eventually(Duration::from_secs(10), || read(
        &record.join("colour")
    ) == "blue"));
    m.apply(&SETTINGS.replace("blue", "green"));
    let changed = eventually(Duration::from_secs(30), || {
        read(&record.join("colour")) == "green"
    });
    assert!(changed, "the ConfigMap's change did not reach the volume");

    // A container that exits is restarted, and counted.
    let restarted = eventually(Duration::from_secs(40), || {
        let pod = m.json(&["get", "pod", "crasher", "-n", "life"]);
        let c = container_status(&pod, "containerStatuses", "crasher");
        c["restartCount"].as_i64().unwrap_or(0) >= 1
            && c["lastState"]["terminated"]["exitCode"] == 3
    });
    assert!(
        restarted,
        "crasher: {}",
        m.kubectl_ok(&["get", "pod", "crasher", "-n", "life", "-o", "yaml"])
    );

    // An image with no local program: the pod says so, with an event, and
    // the agent carries on.
    let pod = m.json(&["get", "pod", "unmapped", "-n", "life"]);
    let waiting = &container_status(&pod, "containerStatuses", "app")["state"]["waiting"];
    assert_eq!(waiting["reason"], "ErrImageNeverPull", "{pod}");
    assert!(
        waiting["message"]
            .as_str()
            .unwrap_or_default()
            .contains("example.com/not-mapped/anything"),
        "{waiting}"
    );
    let events = m.kubectl_ok(&[
        "get",
        "events",
        "-n",
        "life",
        "--field-selector",
        "involvedObject.name=unmapped",
    ]);
    assert!(events.contains("ErrImageNeverPull"), "{events}");

    // Deletion: the containers get SIGTERM first, the sidecar after them;
    // the one that ignores it is killed when the grace period (3 s) ends.
    let started = Instant::now();
    m.kubectl_ok(&["delete", "pod", "lifecycle", "-n", "life", "--timeout=30s"]);
    let took = started.elapsed();
    let lines: Vec<String> = read(&order).lines().map(str::to_string).collect();
    let at = |what: &str| lines.iter().position(|l| l == what);
    let (main_term, sidecar_term) = (at("main-term"), at("sidecar-term"));
    assert!(
        main_term.is_some() && sidecar_term.is_some() && main_term < sidecar_term,
        "the sidecar must stop after the containers: {lines:?}"
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(12),
        "deletion with a 3 s grace period and a container ignoring SIGTERM took {took:?}"
    );
    let gone = m.kubectl(&["get", "pod", "lifecycle", "-n", "life"]);
    assert!(!gone.status.success(), "the pod object is still there");

    let name = mesh.name.clone();
    let out = mesh.down();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = trellis_e2e::kube_mesh::leftovers(&name);
    assert!(left.is_empty(), "mesh down left: {left:#?}");
    let now: Vec<bool> = made.iter().map(|p| p.exists()).collect();
    assert_eq!(
        now, existed,
        "mount points {made:?} made for the pods were left behind"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
