//! The installer on real files in temporary directories: a node's CNI
//! binary and configuration directories, a ServiceAccount mount, and a
//! primary plugin's configuration as bridge + host-local + portmap write it.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use trellis_core::shutdown::Shutdown;
use trellis_core::test_support::{eventually, TempDir};

use super::conflist::{self, Doc};
use super::files::{self, Outcome};
use super::node::{Chained, Check, Dirs, Installer, STATE_DIR};
use super::watch::{self, Watch};
use super::*;

/// The primary plugin's list, as a bridge network is configured.
const BRIDGE_LIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.244.0.0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
"#;

/// A single plugin's configuration, as older bridge setups write it.
const BRIDGE_CONF: &str = r#"{
    "cniVersion": "0.4.0",
    "name": "bridge",
    "type": "bridge",
    "bridge": "cnio0",
    "isGateway": true,
    "ipMasq": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.22.0.0/16"}]]}
}
"#;

/// Where the plugin's files are on the node, as written into the entry.
const HOST_CONF_DIR: &str = "/etc/cni/net.d";
const API_SERVER: &str = "https://10.96.0.1:443";

fn our_entry() -> Value {
    json!({
        "type": "trellis-cni",
        "kubeconfig": "/etc/cni/net.d/trellis-cni.d/kubeconfig",
        "logLevel": "info",
    })
}

/// A node: `bin/`, `net.d/`, the installer's ServiceAccount mount `sa/`,
/// and the installer's own binary `exe`.
struct Node {
    dir: TempDir,
    args: InstallArgs,
}

impl Node {
    fn new() -> Self {
        let dir = TempDir::new("cni-install");
        for d in ["bin", "net.d", "sa"] {
            fs::create_dir(dir.join(d)).unwrap();
        }
        fs::write(dir.join("exe"), "#!/bin/false\n(the trellis-cni binary)\n").unwrap();
        put(&dir.join("sa/token"), "token-1");
        put(&dir.join("sa/ca.crt"), "-----BEGIN CERTIFICATE-----\n");
        let args = InstallArgs {
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            host_conf_dir: HOST_CONF_DIR.into(),
            token_file: dir.join("sa/token"),
            ca_file: dir.join("sa/ca.crt"),
            api_server: API_SERVER.into(),
            log_level: "info".into(),
            once: false,
            poll_interval: Duration::from_millis(10),
            daemonset: String::new(),
        };
        Self { dir, args }
    }

    fn installer(&self) -> Installer {
        Installer::new(&self.args, self.dir.join("exe"), API_SERVER).unwrap()
    }

    /// One installation pass, as `install()` does it.
    fn install(&self) -> Result<Chained, InstallError> {
        let installer = self.installer();
        installer.prepare(Check::Content)?;
        installer.chain()
    }

    fn uninstall(&self) -> Result<(), InstallError> {
        Dirs::new(&self.args).uninstall()
    }

    /// The installer's watch, running until the returned shutdown begins,
    /// its DaemonSet then gone.
    fn start(&self, once: bool) -> (Shutdown, tokio::task::JoinHandle<Result<(), InstallError>>) {
        self.start_with(once, false)
    }

    /// As [`Node::start`]; `staying`: the DaemonSet still there at shutdown.
    fn start_with(
        &self,
        once: bool,
        staying: bool,
    ) -> (Shutdown, tokio::task::JoinHandle<Result<(), InstallError>>) {
        let shutdown = Shutdown::new();
        let watch = Watch {
            poll: self.args.poll_interval,
            once,
        };
        let running = tokio::spawn(watch::run(
            self.installer(),
            watch,
            shutdown.clone(),
            move || async move { staying },
        ));
        (shutdown, running)
    }

    fn conf(&self, name: &str) -> PathBuf {
        self.args.conf_dir.join(name)
    }

    fn state(&self, name: &str) -> PathBuf {
        self.args.conf_dir.join(STATE_DIR).join(name)
    }

    fn binary(&self) -> PathBuf {
        self.args.bin_dir.join("trellis-cni")
    }

    /// Writes a configuration file as a primary plugin's installer does:
    /// atomically.
    fn write_conf(&self, name: &str, text: &str) {
        put(&self.conf(name), text);
    }

    fn json(&self, name: &str) -> Value {
        serde_json::from_slice(&fs::read(self.conf(name)).unwrap()).unwrap()
    }

    /// Whether `name` holds a list ending with our entry (false while it is
    /// missing or half-written).
    fn is_chained(&self, name: &str) -> bool {
        let Ok(bytes) = fs::read(self.conf(name)) else {
            return false;
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        v["plugins"].as_array().and_then(|p| p.last()) == Some(&our_entry())
    }

    async fn eventually_chained(&self, name: &str) {
        eventually(&format!("our entry in {name}"), async || {
            self.is_chained(name).then_some(())
        })
        .await;
    }

    /// Our files all gone.
    fn assert_uninstalled(&self) {
        assert!(!self.binary().exists(), "the binary is left");
        assert!(!self.conf(STATE_DIR).exists(), "trellis-cni.d is left");
    }
}

/// Replaces `path` atomically (write, then rename), as a primary plugin's
/// installer and the kubelet do.
fn put(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// The file text of `doc` in its order, compact: the same for two texts
/// that differ only in white space.
fn ordered(text: &str) -> String {
    let doc: Doc = serde_json::from_str(text).unwrap();
    serde_json::to_string(&doc).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Sets the modification time well in the past, so that a rewrite shows
/// whatever the filesystem's timestamp resolution.
fn age(path: &Path) -> SystemTime {
    let then = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(then)
        .unwrap();
    then
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn install_appends_the_entry_last_and_keeps_everything_else() {
    let node = Node::new();
    node.write_conf("10-bridge.conflist", BRIDGE_LIST);
    let chained = node.install().unwrap();
    assert_eq!(chained.path, node.conf("10-bridge.conflist"));
    assert_eq!(chained.outcome, Outcome::Written);

    // Everything of the original, in its order, then ours.
    let mut want: Doc = serde_json::from_str(BRIDGE_LIST).unwrap();
    want["plugins"]
        .as_sequence_mut()
        .unwrap()
        .push(conflist::entry(&PluginConf {
            kubeconfig: "/etc/cni/net.d/trellis-cni.d/kubeconfig".into(),
            log_level: "info".into(),
        }));
    let written = fs::read_to_string(node.conf("10-bridge.conflist")).unwrap();
    assert_eq!(ordered(&written), serde_json::to_string(&want).unwrap());
    assert_eq!(mode(&node.conf("10-bridge.conflist")), 0o644);

    // The binary and the plugin's credentials.
    assert_eq!(
        fs::read(node.binary()).unwrap(),
        fs::read(node.dir.join("exe")).unwrap()
    );
    assert_eq!(mode(&node.binary()), 0o755);
    assert_eq!(mode(&node.conf(STATE_DIR)), 0o700);
    assert_eq!(fs::read_to_string(node.state("token")).unwrap(), "token-1");
    assert_eq!(mode(&node.state("token")), 0o600);
    assert_eq!(mode(&node.state("kubeconfig")), 0o600);
    assert!(node.state("ca.crt").exists());
    // No temporary file left anywhere.
    let names = |d: &Path| fs::read_dir(d).unwrap().count();
    assert_eq!(names(&node.args.bin_dir), 1);
    assert_eq!(names(&node.args.conf_dir), 2);
    assert_eq!(names(&node.conf(STATE_DIR)), 3);
}

#[test]
fn installing_again_leaves_every_file_byte_identical_and_unmodified() {
    let node = Node::new();
    node.write_conf("10-bridge.conflist", BRIDGE_LIST);
    node.install().unwrap();
    let paths = [
        node.conf("10-bridge.conflist"),
        node.binary(),
        node.state("token"),
        node.state("ca.crt"),
        node.state("kubeconfig"),
    ];
    let before: Vec<_> = paths
        .iter()
        .map(|p| (fs::read(p).unwrap(), age(p)))
        .collect();
    let chained = node.install().unwrap();
    assert_eq!(chained.outcome, Outcome::Unchanged);
    for (path, (bytes, then)) in paths.iter().zip(before) {
        assert_eq!(fs::read(path).unwrap(), bytes, "{}", path.display());
        assert_eq!(mtime(path), then, "{} was rewritten", path.display());
    }
}

#[test]
fn uninstall_restores_the_original_and_removes_only_our_files() {
    let node = Node::new();
    node.write_conf("10-bridge.conflist", BRIDGE_LIST);
    node.write_conf(
        "99-loopback.conf",
        r#"{"cniVersion":"1.0.0","name":"lo","type":"loopback"}"#,
    );
    fs::write(node.args.bin_dir.join("bridge"), "another plugin").unwrap();
    node.install().unwrap();
    // What a killed installer leaves, and what others leave.
    fs::write(node.conf(".trellis-cni-999-0.tmp"), "{").unwrap();
    fs::write(node.conf(".10-bridge.conflist.swp"), "").unwrap();

    node.uninstall().unwrap();
    assert_eq!(
        node.json("10-bridge.conflist"),
        serde_json::from_str::<Value>(BRIDGE_LIST).unwrap()
    );
    let written = fs::read_to_string(node.conf("10-bridge.conflist")).unwrap();
    assert_eq!(ordered(&written), ordered(BRIDGE_LIST));
    node.assert_uninstalled();
    assert!(node.args.bin_dir.join("bridge").exists());
    assert!(node.conf("99-loopback.conf").exists());
    assert!(node.conf(".10-bridge.conflist.swp").exists());
    assert!(!node.conf(".trellis-cni-999-0.tmp").exists());
}

#[test]
fn uninstall_leaves_a_file_without_our_entry_untouched() {
    let node = Node::new();
    node.write_conf("10-bridge.conflist", BRIDGE_LIST);
    let then = age(&node.conf("10-bridge.conflist"));
    // Our directory holding a file we did not write stays, with it.
    fs::create_dir(node.conf(STATE_DIR)).unwrap();
    fs::write(node.state("notes"), "someone else's").unwrap();

    node.uninstall().unwrap();
    assert_eq!(
        fs::read_to_string(node.conf("10-bridge.conflist")).unwrap(),
        BRIDGE_LIST
    );
    assert_eq!(mtime(&node.conf("10-bridge.conflist")), then);
    assert!(node.state("notes").exists());
}

#[test]
fn a_single_plugin_conf_is_converted_and_uninstall_puts_it_back() {
    let node = Node::new();
    node.write_conf("10-bridge.conf", BRIDGE_CONF);
    let chained = node.install().unwrap();
    assert_eq!(chained.path, node.conf("10-bridge.conflist"));
    assert!(!node.conf("10-bridge.conf").exists());
    assert_eq!(
        node.json("10-bridge.conflist"),
        json!({
            "cniVersion": "0.4.0",
            "name": "bridge",
            "plugins": [
                {"type": "bridge", "bridge": "cnio0", "isGateway": true, "ipMasq": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.22.0.0/16"}]]}},
                our_entry(),
            ],
        })
    );
    // Installing again: the list is the primary now, and already chained.
    assert_eq!(node.install().unwrap().outcome, Outcome::Unchanged);

    node.uninstall().unwrap();
    assert_eq!(
        fs::read_to_string(node.conf("10-bridge.conf")).unwrap(),
        BRIDGE_CONF
    );
    assert!(!node.conf("10-bridge.conflist").exists());
    node.assert_uninstalled();
}

#[test]
fn a_conf_rewritten_after_conversion_is_converted_again_and_restored() {
    let node = Node::new();
    node.write_conf("10-bridge.conf", BRIDGE_CONF);
    node.install().unwrap();
    // The primary plugin's installer writes its file again (a new subnet);
    // it sorts before our list, so it is in use, without us.
    let newer = BRIDGE_CONF.replace("10.22.0.0/16", "10.33.0.0/16");
    node.write_conf("10-bridge.conf", &newer);
    node.install().unwrap();
    assert!(!node.conf("10-bridge.conf").exists());
    assert!(node.is_chained("10-bridge.conflist"));
    assert_eq!(
        node.json("10-bridge.conflist")["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        "10.33.0.0/16"
    );
    node.uninstall().unwrap();
    assert_eq!(
        fs::read_to_string(node.conf("10-bridge.conf")).unwrap(),
        newer
    );
    assert!(!node.conf("10-bridge.conflist").exists());
}

#[test]
fn a_converted_list_changed_since_stays_a_list_on_uninstall() {
    let node = Node::new();
    node.write_conf("10-bridge.conf", BRIDGE_CONF);
    node.install().unwrap();
    // Someone adds a plugin to the list we made: the original no longer
    // says what the node uses.
    let mut list = node.json("10-bridge.conflist");
    let plugins = list["plugins"].as_array_mut().unwrap();
    plugins.insert(1, json!({"type": "bandwidth"}));
    node.write_conf("10-bridge.conflist", &list.to_string());

    node.uninstall().unwrap();
    assert!(!node.conf("10-bridge.conf").exists());
    let kept = node.json("10-bridge.conflist");
    let types: Vec<_> = kept["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["type"])
        .collect();
    assert_eq!(types, ["bridge", "bandwidth"]);
    node.assert_uninstalled();
}

#[test]
fn conversion_will_not_overwrite_a_list_it_did_not_write() {
    let node = Node::new();
    node.write_conf("10-bridge.conf", BRIDGE_CONF);
    node.write_conf("10-bridge.conflist", BRIDGE_LIST);
    let e = node.install().unwrap_err();
    assert!(matches!(e, InstallError::ConversionBlocked { .. }), "{e}");
    assert!(
        e.to_string().contains("10-bridge.conflist, which exists"),
        "{e}"
    );
    assert_eq!(
        fs::read_to_string(node.conf("10-bridge.conf")).unwrap(),
        BRIDGE_CONF
    );
    assert_eq!(
        fs::read_to_string(node.conf("10-bridge.conflist")).unwrap(),
        BRIDGE_LIST
    );
}

#[test]
fn a_malformed_primary_is_reported_and_left_untouched() {
    let node = Node::new();
    let broken = "{\"cniVersion\": \"1.0.0\", \"plugins\": [\n  {\"type\": \"bridge\"\n";
    node.write_conf("10-bridge.conflist", broken);
    let then = age(&node.conf("10-bridge.conflist"));
    let e = node.install().unwrap_err();
    assert_eq!(e.reason(), "malformed_config");
    let message = e.to_string();
    assert!(
        message.starts_with(&format!("{}: ", node.conf("10-bridge.conflist").display())),
        "{message}"
    );
    assert!(
        message.contains("not valid JSON: EOF while parsing"),
        "{message}"
    );
    assert!(message.ends_with("left as it is"), "{message}");
    assert_eq!(
        fs::read_to_string(node.conf("10-bridge.conflist")).unwrap(),
        broken
    );
    assert_eq!(mtime(&node.conf("10-bridge.conflist")), then);
    // Uninstall skips it too (it is not ours), and removes our files.
    node.uninstall().unwrap();
    assert_eq!(
        fs::read_to_string(node.conf("10-bridge.conflist")).unwrap(),
        broken
    );
    node.assert_uninstalled();
}

#[test]
fn a_malformed_file_that_is_not_the_primary_is_ignored() {
    let node = Node::new();
    node.write_conf("10-bridge.conflist", BRIDGE_LIST);
    node.write_conf("20-broken.conf", "{");
    node.install().unwrap();
    assert!(node.is_chained("10-bridge.conflist"));
    assert_eq!(
        fs::read_to_string(node.conf("20-broken.conf")).unwrap(),
        "{"
    );
}

#[test]
fn no_configuration_yet_is_an_error_of_its_own() {
    let node = Node::new();
    let e = node.install().unwrap_err();
    assert!(matches!(e, InstallError::NoNetworkConfig { .. }), "{e}");
    assert!(e
        .to_string()
        .contains("is the primary CNI plugin installed?"));
    // Our directory and temporary files are no candidates.
    assert_eq!(fs::read_dir(&node.args.conf_dir).unwrap().count(), 1);
}

#[test]
fn a_symlinked_primary_is_refused() {
    let node = Node::new();
    node.write_conf("real.json.orig", BRIDGE_LIST);
    std::os::unix::fs::symlink(node.conf("real.json.orig"), node.conf("10-bridge.conflist"))
        .unwrap();
    let e = node.install().unwrap_err();
    assert!(matches!(e, InstallError::Symlink { .. }), "{e}");
    assert_eq!(
        fs::read_to_string(node.conf("real.json.orig")).unwrap(),
        BRIDGE_LIST
    );
}

#[test]
fn an_unusable_bin_dir_is_named_in_the_error() {
    let mut node = Node::new();
    node.args.bin_dir = node.dir.join("exe"); // a file, not a directory
    let e = node.install().unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "writing {}/trellis-cni: Not a directory (os error 20)",
            node.args.bin_dir.display()
        )
    );
    let denied = InstallError::Write {
        path: "/host/opt/cni/bin/trellis-cni".into(),
        source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    };
    assert_eq!(
        denied.to_string(),
        "writing /host/opt/cni/bin/trellis-cni: permission denied \
         (the installer needs write access to the node's CNI directories)"
    );
}

#[test]
fn the_binary_copy_is_atomic_and_skipped_when_identical() {
    let dir = TempDir::new("cni-copy");
    let exe = dir.join("exe");
    let dest = dir.join("trellis-cni");
    let old: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&exe, &old).unwrap();
    assert_eq!(files::copy(&exe, &dest, 0o755).unwrap(), Outcome::Written);
    assert_eq!(fs::read(&dest).unwrap(), old);
    assert_eq!(mode(&dest), 0o755);

    let then = age(&dest);
    assert_eq!(files::copy(&exe, &dest, 0o755).unwrap(), Outcome::Unchanged);
    assert_eq!(mtime(&dest), then);

    // A plugin run holding the old binary open; a new binary of the same
    // size: compared by content, replaced by a rename, so the running one
    // keeps its file.
    let mut running = File::open(&dest).unwrap();
    let mut new = old.clone();
    new[150_000] ^= 0xff;
    fs::write(&exe, &new).unwrap();
    assert_eq!(files::copy(&exe, &dest, 0o755).unwrap(), Outcome::Written);
    assert_eq!(fs::read(&dest).unwrap(), new);
    let mut seen = Vec::new();
    std::io::Read::read_to_end(&mut running, &mut seen).unwrap();
    assert_eq!(seen, old);
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        2,
        "a temporary file is left"
    );
}

#[test]
fn a_reader_never_sees_a_partial_file() {
    let node = Node::new();
    let name = "10-bridge.conflist";
    // Large enough that a file written in place would be seen half-written.
    let padding = "x".repeat(256 * 1024);
    let version = |generation: u32| {
        let mut v: Value = serde_json::from_str(BRIDGE_LIST).unwrap();
        v["plugins"][0]["padding"] = json!(padding);
        v["plugins"][0]["generation"] = json!(generation);
        v.to_string()
    };
    node.write_conf(name, &version(0));
    let installer = node.installer();
    installer.prepare(Check::Content).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, path) = (stop.clone(), node.conf(name));
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) && reads < 1_000_000 {
                let bytes = fs::read(&path).unwrap();
                if let Err(e) = serde_json::from_slice::<Value>(&bytes) {
                    panic!("read {} bytes of invalid JSON: {e}", bytes.len());
                }
                reads += 1;
            }
            reads
        })
    };
    for generation in 1..=20 {
        node.write_conf(name, &version(generation));
        assert_eq!(installer.chain().unwrap().outcome, Outcome::Written);
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert!(node.is_chained(name));
    assert_eq!(node.json(name)["plugins"][0]["generation"], 20);
}

#[tokio::test]
async fn the_watch_keeps_the_entry_until_shutdown_then_uninstalls() {
    let node = Node::new();
    node.write_conf("10-bridge.conflist", BRIDGE_LIST);
    let (shutdown, running) = node.start(false);
    node.eventually_chained("10-bridge.conflist").await;

    // The primary plugin's installer rewrites its file without our entry:
    // by a rename, then in place (a reader may see it half-written).
    let mtu = BRIDGE_LIST.replace(r#""bridge": "cni0","#, r#""bridge": "cni0", "mtu": 1450,"#);
    node.write_conf("10-bridge.conflist", &mtu);
    node.eventually_chained("10-bridge.conflist").await;
    assert_eq!(node.json("10-bridge.conflist")["plugins"][0]["mtu"], 1450);
    fs::write(node.conf("10-bridge.conflist"), BRIDGE_LIST).unwrap();
    node.eventually_chained("10-bridge.conflist").await;

    // A new primary sorts first; a removed binary is copied again.
    node.write_conf(
        "05-calico.conflist",
        &BRIDGE_LIST.replace("bridge", "calico"),
    );
    node.eventually_chained("05-calico.conflist").await;
    fs::remove_file(node.binary()).unwrap();
    eventually("the binary back", async || {
        node.binary().exists().then_some(())
    })
    .await;

    shutdown.begin();
    running.await.unwrap().unwrap();
    for name in ["05-calico.conflist", "10-bridge.conflist"] {
        let plugins = node.json(name)["plugins"].as_array().unwrap().clone();
        assert_eq!(plugins.len(), 2, "{name}: {plugins:?}");
    }
    node.assert_uninstalled();
}

#[tokio::test]
async fn an_update_of_the_installer_leaves_the_plugin_chained() {
    let node = Node::new();
    node.write_conf("10-bridge.conflist", BRIDGE_LIST);
    let (shutdown, running) = node.start_with(false, true);
    node.eventually_chained("10-bridge.conflist").await;
    let before = fs::read(node.conf("10-bridge.conflist")).unwrap();
    shutdown.begin();
    running.await.unwrap().unwrap();
    // Everything stays for the next installer pod.
    assert!(node.is_chained("10-bridge.conflist"));
    assert_eq!(fs::read(node.conf("10-bridge.conflist")).unwrap(), before);
    assert!(node.binary().exists() && node.state("kubeconfig").exists());
    // And the next one finds nothing to change.
    node.install().unwrap();
    assert_eq!(fs::read(node.conf("10-bridge.conflist")).unwrap(), before);
}

#[tokio::test]
async fn the_watch_waits_for_a_configuration() {
    let node = Node::new();
    let (shutdown, running) = node.start(false);
    // The binary and credentials come first; the entry waits.
    eventually("the kubeconfig", async || {
        node.state("kubeconfig").exists().then_some(())
    })
    .await;
    assert!(node.binary().exists());
    node.write_conf("10-bridge.conflist", BRIDGE_LIST);
    node.eventually_chained("10-bridge.conflist").await;
    shutdown.begin();
    running.await.unwrap().unwrap();
    node.assert_uninstalled();
}

#[tokio::test]
async fn the_watch_copies_a_rotated_token() {
    let node = Node::new();
    node.write_conf("10-bridge.conflist", BRIDGE_LIST);
    let (shutdown, running) = node.start(false);
    node.eventually_chained("10-bridge.conflist").await;
    assert_eq!(fs::read_to_string(node.state("token")).unwrap(), "token-1");
    // The kubelet replaces a projected token atomically.
    put(&node.args.token_file, "token-2");
    eventually("the new token", async || {
        let copied = fs::read_to_string(node.state("token")).ok()?;
        (copied == "token-2").then_some(())
    })
    .await;
    assert_eq!(mode(&node.state("token")), 0o600);
    shutdown.begin();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn once_installs_and_leaves_it_installed() {
    let node = Node::new();
    node.write_conf("10-bridge.conflist", BRIDGE_LIST);
    let (_shutdown, running) = node.start(true);
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("--once did not end")
        .unwrap()
        .unwrap();
    assert!(node.is_chained("10-bridge.conflist"));
    assert!(node.binary().exists());
}

#[tokio::test]
async fn once_stopped_before_a_configuration_says_why() {
    let node = Node::new();
    let (shutdown, running) = node.start(true);
    eventually("the kubeconfig", async || {
        node.state("kubeconfig").exists().then_some(())
    })
    .await;
    shutdown.begin();
    let e = running.await.unwrap().unwrap_err();
    assert!(matches!(e, InstallError::NoNetworkConfig { .. }), "{e}");
}

#[tokio::test]
async fn a_failing_first_pass_ends_the_installer_naming_the_file() {
    let mut node = Node::new();
    node.write_conf("10-bridge.conflist", BRIDGE_LIST);
    node.args.token_file = node.dir.join("sa/missing");
    let (_shutdown, running) = node.start(false);
    let e = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the installer went on without a token")
        .unwrap()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "reading {}: No such file or directory (os error 2)",
            node.args.token_file.display()
        )
    );
    assert!(!node.is_chained("10-bridge.conflist"));
}

#[test]
fn the_api_server_comes_from_the_flag_or_the_pods_environment() {
    let cases = [
        (
            "https://api.example:6443",
            None,
            None,
            Some("https://api.example:6443"),
        ),
        (
            "",
            Some("10.96.0.1"),
            Some("443"),
            Some("https://10.96.0.1:443"),
        ),
        (
            "",
            Some("fd00:10:96::1"),
            Some("443"),
            Some("https://[fd00:10:96::1]:443"),
        ),
        (
            "",
            Some("kubernetes.default.svc"),
            Some("443"),
            Some("https://kubernetes.default.svc:443"),
        ),
        ("", Some("10.96.0.1"), None, None),
        ("", Some(""), Some("443"), None),
        ("", None, None, None),
    ];
    for (flag, host, port, want) in cases {
        let got = kubeconfig::api_server(flag, host, port).ok();
        assert_eq!(got.as_deref(), want, "{flag:?} {host:?} {port:?}");
    }
    assert!(kubeconfig::api_server("", None, None)
        .unwrap_err()
        .to_string()
        .contains("KUBERNETES_SERVICE_HOST"));
}

#[test]
fn the_kubeconfig_is_what_kube_rs_reads() {
    let node = Node::new();
    node.write_conf("10-bridge.conflist", BRIDGE_LIST);
    node.install().unwrap();
    let text = fs::read_to_string(node.state("kubeconfig")).unwrap();
    let config = kube::config::Kubeconfig::from_yaml(&text).unwrap();
    let cluster = config.clusters[0].cluster.as_ref().unwrap();
    assert_eq!(cluster.server.as_deref(), Some(API_SERVER));
    assert_eq!(
        cluster.certificate_authority.as_deref(),
        Some("/etc/cni/net.d/trellis-cni.d/ca.crt")
    );
    let user = config.auth_infos[0].auth_info.as_ref().unwrap();
    assert_eq!(
        user.token_file.as_deref(),
        Some("/etc/cni/net.d/trellis-cni.d/token")
    );
    assert_eq!(config.current_context.as_deref(), Some("trellis-cni"));
    assert_eq!(
        config.contexts[0].context.as_ref().unwrap().user.as_deref(),
        Some("trellis-cni")
    );
}
