//! A launch run for real: in a throwaway network namespace, as uid 65532
//! with one capability and a read-only mount. Needs root (network
//! namespaces, mounts, setpriv); without it the test fails, saying so.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Pod;

use super::*;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, mounts, setpriv): run the suite as root (scripts/test.sh)"
    );
}

/// A network namespace, deleted when dropped (the test failing or not).
struct Netns(String);

impl Netns {
    fn add() -> Self {
        let name = unique("trls-t-");
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(status.success(), "ip netns add {name}: {status}");
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A directory, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A directory anyone may write in: only the mount's `ro` stops a write.
fn open_dir(path: &Path) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o777)).unwrap();
}

/// Runs a pod's first container (of `example.com/sh`, which is `/bin/sh`)
/// in a throwaway network namespace; its stdout and stderr.
fn run(pod: serde_json::Value, volumes: &BTreeMap<String, PathBuf>) -> (String, String) {
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let none = BTreeMap::new();
    let env = PodEnv {
        pod: &pod,
        pod_ips: &[],
        host_ip: "192.168.1.10".parse().unwrap(),
        node_name: "node-1",
        kubernetes_service: None,
        volumes,
        config_maps: &none,
        secrets: &none,
        allocatable: Allocatable {
            cpu_millicores: 1000,
            memory_bytes: 1 << 30,
        },
    };
    let mut images = ImageMap::default();
    images
        .extend_from_yaml("images: [{image: example.com/sh, programs: {/bin/sh: /bin/sh}}]")
        .unwrap();
    let container = &pod.spec.as_ref().unwrap().containers[0];
    let launch = launch(&env, container, &images).unwrap();
    for (path, is_dir) in launch.mount_targets() {
        if is_dir {
            fs::create_dir_all(&path).unwrap();
        } else {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, "").unwrap();
        }
    }
    let netns = Netns::add();
    let output = launch.command(&netns.0).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    (stdout, stderr)
}

fn pod(container: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": "launch-test", "namespace": "default", "uid": "u1"},
        "spec": {"securityContext": {"fsGroup": 2000}, "containers": [container]},
    })
}

const CAPS: &str = "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status";

#[test]
fn netns_a_launch_runs_as_its_user_with_its_capabilities_and_mounts() {
    require_root();
    let dir = TempDir(std::env::temp_dir().join(unique("trellis-launch-")));
    let (data, scratch, mnt) = (dir.0.join("data"), dir.0.join("scratch"), dir.0.join("mnt"));
    open_dir(&data);
    open_dir(&scratch);
    fs::write(data.join("x"), "hello from the volume\n").unwrap();
    let volumes = BTreeMap::from([
        ("data".to_owned(), data.clone()),
        ("scratch".to_owned(), scratch.clone()),
    ]);

    let script = format!(
        r#"id -u; id -g; id -G
cat "$MNT/data/x"
{CAPS}
if (echo y > "$MNT/data/y") 2>/dev/null; then echo data: writable; else echo data: read-only; fi
echo z > "$MNT/scratch/z" && echo scratch: writable
echo "pwd: $(pwd)"
echo "interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ')"
echo "env: $(env | cut -d= -f1 | sort | tr '\n' ' ')FOO=$FOO"
"#
    );
    let mnt = mnt.display().to_string();
    let (stdout, stderr) = run(
        pod(serde_json::json!({
            "name": "sh",
            "image": "example.com/sh:1",
            "command": ["/bin/sh", "-c", script],
            "workingDir": format!("{mnt}/scratch"),
            "env": [{"name": "MNT", "value": mnt}, {"name": "FOO", "value": "bar"}],
            "securityContext": {
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "runAsNonRoot": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            },
            "volumeMounts": [
                {"name": "data", "mountPath": format!("{mnt}/data"), "readOnly": true},
                {"name": "scratch", "mountPath": format!("{mnt}/scratch")},
            ],
        })),
        &volumes,
    );
    // Groups: the primary one and fsGroup. CAP_NET_BIND_SERVICE is bit 10.
    // `PWD` is the shell's own.
    let want = format!(
        "65532
65532
65532 2000
hello from the volume
CapInh:\t0000000000000400
CapPrm:\t0000000000000400
CapEff:\t0000000000000400
CapBnd:\t0000000000000400
CapAmb:\t0000000000000400
NoNewPrivs:\t1
data: read-only
scratch: writable
pwd: {mnt}/scratch
interfaces: lo
env: FOO HOSTNAME MNT PATH PWD FOO=bar
"
    );
    assert_eq!(stdout, want, "stderr:\n{stderr}");
    assert_eq!(stderr, "");

    // The mounts were the process's own: the node sees the writes in the
    // sources and nothing at the targets.
    assert_eq!(fs::read_to_string(scratch.join("z")).unwrap(), "z\n");
    assert!(!data.join("y").exists());
    assert!(fs::read_dir(dir.0.join("mnt/data"))
        .unwrap()
        .next()
        .is_none());
    assert!(fs::read_dir(dir.0.join("mnt/scratch"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn netns_root_gets_only_its_bounding_set() {
    require_root();
    let (stdout, stderr) = run(
        pod(serde_json::json!({
            "name": "sh",
            "image": "example.com/sh:1",
            "command": ["/bin/sh", "-c", format!("id -u; id -G; {CAPS}")],
            "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "cap_net_raw"]}},
        })),
        &BTreeMap::new(),
    );
    // CAP_NET_ADMIN and CAP_NET_RAW are bits 12 and 13; root's execve
    // grants the bounding set, nothing is inherited or ambient.
    let want = "0
0 2000
CapInh:\t0000000000000000
CapPrm:\t0000000000003000
CapEff:\t0000000000003000
CapBnd:\t0000000000003000
CapAmb:\t0000000000000000
NoNewPrivs:\t0
";
    assert_eq!(stdout, want, "stderr:\n{stderr}");
}
