//! Privileged tests of `trellis-proxy init`: the real binary installs the
//! capture rules in a fresh network namespace, and the tests read them back
//! with `iptables-save` and send connections through them.
//!
//! Needs root (network namespaces, iptables), iproute2, iptables with both
//! the nft and legacy variants, `bash` and `setpriv`. Without root every test
//! fails, saying so; none passes silently. Each namespace is named
//! `trellis-init-test-<pid>-<n>` and deleted when its test ends, pass or fail.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_trellis-proxy");

/// Flags used by the install tests; the expected rule counts follow from them.
const SKIPS: [&str; 4] = [
    "--skip-inbound-ports",
    "22,4000-4010",
    "--skip-outbound-ports",
    "25",
];
/// Trellis rules those flags give, per family: inbound 3 (admin, skips,
/// redirect jump) + 1 redirect; outbound 5 (uid, -o lo, loopback, skips,
/// redirect jump) + 1 redirect; the 2 jumps from PREROUTING and OUTPUT.
const TRELLIS_RULES: usize = 12;
/// Trellis rules with no skipped ports: two fewer.
const DEFAULT_TRELLIS_RULES: usize = 10;

/// A Service-style DNAT rule another component owns; it must survive.
const FOREIGN_DNAT: [&str; 12] = [
    "-t",
    "nat",
    "-A",
    "OUTPUT",
    "-d",
    "10.96.0.10/32",
    "-p",
    "tcp",
    "-j",
    "DNAT",
    "--to-destination",
    "10.0.0.5:8080",
];

// ---- the tests ----

#[test]
fn init_installs_each_rule_once_and_removes_them_nft() {
    installs_each_rule_once_and_removes_them("nft");
}

#[test]
fn init_installs_each_rule_once_and_removes_them_legacy() {
    installs_each_rule_once_and_removes_them("legacy");
}

fn installs_each_rule_once_and_removes_them(variant: &str) {
    let ns = Netns::new(true);
    let other = if variant == "nft" { "legacy" } else { "nft" };
    let iptables = format!("iptables-{variant}");
    ns.ok(&[iptables.as_str(), "-w"]
        .into_iter()
        .chain(FOREIGN_DNAT)
        .collect::<Vec<_>>());
    let flags: Vec<&str> = ["--iptables-mode", variant, "--ipv6", "on"]
        .into_iter()
        .chain(SKIPS)
        .collect();

    ns.init(&flags);
    let first = [
        ns.nat(&format!("iptables-{variant}-save")),
        ns.nat(&format!("ip6tables-{variant}-save")),
    ];
    ns.init(&flags);
    let second = [
        ns.nat(&format!("iptables-{variant}-save")),
        ns.nat(&format!("ip6tables-{variant}-save")),
    ];

    for (family, (first, second)) in ["v4", "v6"].iter().zip(first.iter().zip(&second)) {
        assert_eq!(
            first, second,
            "{variant} {family}: a second run changed the rules"
        );
        let ours = trellis_rules(second);
        assert_eq!(
            ours.len(),
            TRELLIS_RULES,
            "{variant} {family}: rules:\n{second}"
        );
        assert_eq!(
            ours.iter().collect::<HashSet<_>>().len(),
            ours.len(),
            "{variant} {family}: a duplicate:\n{second}"
        );
        for rule in &ours {
            assert!(
                rule.contains("-m comment --comment \"trellis/"),
                "{variant} {family}: no comment: {rule}"
            );
        }
        for jump in ["-A PREROUTING -p tcp", "-A OUTPUT -p tcp"] {
            let n = ours.iter().filter(|r| r.starts_with(jump)).count();
            assert_eq!(n, 1, "{variant} {family}: `{jump}` jumps: {n}\n{second}");
        }
        let loopback = if *family == "v4" {
            "-d 127.0.0.0/8"
        } else {
            "-d ::1/128"
        };
        for needle in [
            "--uid-owner 7102",
            "-o lo",
            loopback,
            "--dports 22,4000:4010",
            "--dport 25",
            "--to-ports 7143",
            "--to-ports 7140",
            "--dport 7191",
        ] {
            assert!(
                second.contains(needle),
                "{variant} {family}: no `{needle}` in\n{second}"
            );
        }
    }

    // The other component's DNAT rule is still there, after the capture jump.
    let v4 = &second[0];
    let output: Vec<&str> = v4.lines().filter(|l| l.starts_with("-A OUTPUT ")).collect();
    assert_eq!(output.len(), 2, "{v4}");
    assert!(
        output[0].ends_with("-j TRELLIS_OUTBOUND") && output[1].contains("-j DNAT"),
        "{v4}"
    );

    // Nothing went to the other variant.
    for save in [
        format!("iptables-{other}-save"),
        format!("ip6tables-{other}-save"),
    ] {
        assert!(
            !ns.nat(&save).contains("TRELLIS"),
            "{save} holds Trellis rules"
        );
    }

    // --remove deletes every Trellis rule and chain, and only those; twice
    // is fine.
    let remove = ["--iptables-mode", variant, "--ipv6", "on", "--remove"];
    ns.init(&remove);
    ns.init(&remove);
    for save in [
        format!("iptables-{variant}-save"),
        format!("ip6tables-{variant}-save"),
    ] {
        let after = ns.nat(&save);
        assert!(
            !after.contains("TRELLIS") && !after.contains("trellis/"),
            "{save} after --remove:\n{after}"
        );
    }
    assert!(ns
        .nat(&format!("iptables-{variant}-save"))
        .contains("--to-destination 10.0.0.5:8080"));
}

#[test]
fn init_auto_mode_uses_the_variant_that_holds_rules() {
    // A namespace whose rules are legacy: init follows.
    let legacy_ns = Netns::new(false);
    legacy_ns.ok(&[
        "iptables-legacy",
        "-w",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "9",
        "-j",
        "ACCEPT",
    ]);
    let plan = legacy_ns.init(&["--dry-run"]);
    assert!(
        plan.starts_with("# iptables-restore (v4): iptables-legacy-restore "),
        "{plan}"
    );
    legacy_ns.init(&[]);
    assert_eq!(
        trellis_rules(&legacy_ns.nat("iptables-legacy-save")).len(),
        DEFAULT_TRELLIS_RULES
    );
    assert!(!legacy_ns.nat("iptables-nft-save").contains("TRELLIS"));

    // A fresh namespace: nft, which is installed here.
    let fresh = Netns::new(false);
    fresh.init(&[]);
    assert_eq!(
        trellis_rules(&fresh.nat("iptables-nft-save")).len(),
        DEFAULT_TRELLIS_RULES
    );
    assert!(!fresh.nat("iptables-legacy-save").contains("TRELLIS"));
}

#[test]
fn init_ipv6_rules_follow_the_namespace_and_the_flag() {
    // `lo` down: no IPv6 address, so `auto` installs IPv4 only.
    let no_v6 = Netns::new(false);
    no_v6.init(&["--iptables-mode", "nft"]);
    assert!(no_v6.nat("iptables-nft-save").contains("TRELLIS_OUTBOUND"));
    assert!(!no_v6.nat("ip6tables-nft-save").contains("TRELLIS"));
    no_v6.init(&["--iptables-mode", "nft", "--ipv6", "on"]);
    assert!(no_v6.nat("ip6tables-nft-save").contains("-d ::1/128"));

    // `lo` up (::1): `auto` installs both, `off` only IPv4.
    let v6 = Netns::new(true);
    v6.init(&["--iptables-mode", "nft", "--ipv6", "off"]);
    assert!(!v6.nat("ip6tables-nft-save").contains("TRELLIS"));
    v6.init(&["--iptables-mode", "nft"]);
    assert!(v6.nat("ip6tables-nft-save").contains("TRELLIS_OUTBOUND"));
}

#[test]
fn init_dry_run_prints_the_scripts_and_changes_nothing() {
    let ns = Netns::new(true);
    let printed = ns.init(&["--dry-run", "--iptables-mode", "nft"]);
    assert!(
        printed.starts_with("# iptables-restore (v4): iptables-nft-restore --noflush"),
        "{printed}"
    );
    assert!(
        printed.contains("\n# ip6tables-restore (v6): ip6tables-nft-restore --noflush"),
        "{printed}"
    );
    assert_eq!(printed.matches("*nat\n").count(), 2, "{printed}");
    assert_eq!(printed.matches("-I OUTPUT 1 ").count(), 2, "{printed}");
    assert!(!ns.nat("iptables-nft-save").contains("TRELLIS"));
    assert!(!ns.nat("ip6tables-nft-save").contains("TRELLIS"));

    // Once installed, the dry run shows the rerun: no new jumps. The flags
    // also come from TRELLIS_INIT_* variables.
    ns.init(&["--iptables-mode", "nft"]);
    let env = [
        ("TRELLIS_INIT_DRY_RUN", "1"),
        ("TRELLIS_INIT_SKIP_OUTBOUND_PORTS", "25"),
        ("TRELLIS_INIT_IPTABLES_MODE", "nft"),
    ];
    let rerun = ns.ok_with_env(&[BIN, "init"], &env);
    assert!(
        !rerun.contains("-I PREROUTING") && !rerun.contains("-I OUTPUT"),
        "{rerun}"
    );
    assert!(
        rerun.contains("trellis/outbound: skip-outbound-ports 25"),
        "{rerun}"
    );
    assert_eq!(
        trellis_rules(&ns.nat("iptables-nft-save")).len(),
        DEFAULT_TRELLIS_RULES,
        "the dry run applied nothing"
    );
}

#[test]
fn init_redirects_connections_except_the_exempt_ones() {
    // pod (10.99.0.1) <-veth-> peer (10.99.0.2). Nothing listens anywhere,
    // so every connection is refused at once, by the pod itself when
    // redirected or by the peer when not; the rules' packet counters say
    // which rule each connection met.
    let pod = Netns::new(true);
    let peer = Netns::new(true);
    pod.link_to(&peer, "10.99.0.1/24", "10.99.0.2/24");

    pod.init(&[
        "--iptables-mode",
        "nft",
        "--ipv6",
        "off",
        "--skip-outbound-ports",
        "25",
        "--skip-inbound-ports",
        "22",
    ]);
    let counter = |comment: &str| -> u64 {
        let save = pod.ok(&["iptables-nft-save", "-c", "-t", "nat"]);
        let line = save
            .lines()
            .find(|l| l.contains(comment))
            .unwrap_or_else(|| panic!("no rule `{comment}` in\n{save}"));
        let packets = line
            .trim_start_matches('[')
            .split(':')
            .next()
            .unwrap_or_default();
        packets
            .parse()
            .unwrap_or_else(|_| panic!("no packet counter in {line}"))
    };
    let outbound_redirect = "trellis/outbound: redirect to the proxy outbound port";
    let inbound_redirect = "trellis/inbound: redirect to the proxy inbound port";

    // Outbound, from the application (root): captured.
    connect(&pod, None, "10.99.0.2", 80);
    assert_eq!(counter(outbound_redirect), 1);
    // From the proxy's uid, to a skipped port, to loopback: left alone.
    connect(&pod, Some(7102), "10.99.0.2", 80);
    assert_eq!(
        counter("trellis/outbound: skip traffic of the proxy user"),
        1
    );
    connect(&pod, None, "10.99.0.2", 25);
    assert_eq!(counter("trellis/outbound: skip-outbound-ports 25"), 1);
    connect(&pod, None, "127.0.0.1", 80);
    assert_eq!(
        counter("trellis/outbound: skip traffic leaving through loopback"),
        1
    );
    assert_eq!(
        counter(outbound_redirect),
        1,
        "only the application's connection was redirected"
    );

    // Inbound, from the peer: captured, except the admin and skipped ports.
    connect(&peer, None, "10.99.0.1", 8080);
    assert_eq!(counter(inbound_redirect), 1);
    connect(&peer, None, "10.99.0.1", 7191);
    assert_eq!(
        counter("trellis/inbound: skip the proxy admin port 7191"),
        1
    );
    connect(&peer, None, "10.99.0.1", 22);
    assert_eq!(counter("trellis/inbound: skip-inbound-ports 22"), 1);
    assert_eq!(
        counter(inbound_redirect),
        1,
        "only the connection to 8080 was redirected"
    );
}

// ---- helpers ----

#[test]
fn init_check_passes_only_with_the_rules_in_place_and_needs_no_privilege() {
    // A pod with a default route (as every pod has) through a veth whose
    // peer namespace answers nothing on the probe port.
    let pod = Netns::new(true);
    let peer = Netns::new(true);
    pod.link_to(&peer, "10.98.0.1/24", "10.98.0.2/24");
    pod.ok(&["ip", "route", "add", "default", "via", "10.98.0.2"]);

    let before = pod.check_unprivileged(&[]);
    let stderr = String::from_utf8_lossy(&before.stderr);
    assert_eq!(before.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("this pod's traffic is not captured")
            && stderr.contains("cni.enabled")
            && stderr.contains("192.0.2.1:20001"),
        "{stderr}"
    );

    pod.init(&[
        "--iptables-mode",
        "nft",
        "--ipv6",
        "off",
        "--skip-outbound-ports",
        "20001",
    ]);
    // The probe picks the first port not skipped: 20002.
    let after = pod.check_unprivileged(&["--skip-outbound-ports", "20001"]);
    assert!(
        after.status.success(),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
    assert!(String::from_utf8_lossy(&after.stderr).contains("the capture rules are in place"));
    // Nothing was installed or changed by the check.
    assert_eq!(
        trellis_rules(&pod.nat("iptables-nft-save")).len(),
        DEFAULT_TRELLIS_RULES + 1
    );
}

#[test]
fn init_check_probes_over_ipv6_in_an_ipv6_only_pod() {
    // No IPv4 route at all: the check goes to 2001:db8::1 and expects to be
    // redirected to [::1] on the outbound port.
    let pod = Netns::new(true);
    let peer = Netns::new(true);
    pod.link_to(&peer, "fd00:98::1/64", "fd00:98::2/64");
    pod.ok(&["ip", "-6", "route", "add", "default", "via", "fd00:98::2"]);

    let before = pod.check_unprivileged(&[]);
    let stderr = String::from_utf8_lossy(&before.stderr);
    assert_eq!(before.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("[2001:db8::1]:20001") && stderr.contains("[::1]:7140"),
        "{stderr}"
    );

    pod.init(&["--iptables-mode", "nft", "--ipv6", "on"]);
    let after = pod.check_unprivileged(&[]);
    let stderr = String::from_utf8_lossy(&after.stderr);
    assert!(after.status.success(), "{stderr}");
    assert!(
        stderr.contains("checking over IPv6") && stderr.contains("the capture rules are in place"),
        "{stderr}"
    );
}

/// The `-A` lines of a saved table that mention Trellis.
fn trellis_rules(save: &str) -> Vec<String> {
    save.lines()
        .filter(|l| l.starts_with("-A ") && l.contains("TRELLIS"))
        .map(str::to_string)
        .collect()
}

/// Opens a TCP connection from inside `ns` (as `uid`, else root) and expects
/// it refused: nothing listens in these tests.
fn connect(ns: &Netns, uid: Option<u32>, host: &str, port: u16) {
    let script = format!("exec 3<>/dev/tcp/{host}/{port}");
    let mut argv: Vec<String> = Vec::new();
    if let Some(uid) = uid {
        argv.extend(
            [
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ]
            .map(String::from),
        );
    }
    argv.extend(["timeout", "10", "bash", "-c", &script].map(String::from));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = ns.exec(&argv, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Connection refused"),
        "{argv:?} in {}: {:?} {stderr}",
        ns.name,
        out.status
    );
}

/// Fails the test unless it runs as root: namespaces and iptables need it.
fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    assert_eq!(
        euid,
        Some("0"),
        "this test needs root (network namespaces, iptables): run as root"
    );
}

/// A network namespace standing in for a pod, deleted on drop.
struct Netns {
    name: String,
    id: usize,
}

impl Netns {
    /// A new namespace, with `lo` up (which gives it `::1`) or down.
    fn new(lo_up: bool) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        require_root();
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("trellis-init-test-{}-{id}", std::process::id());
        let out = run(Command::new("ip").args(["netns", "add", &name]));
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name, id };
        if lo_up {
            ns.ok(&["ip", "link", "set", "lo", "up"]);
        }
        ns
    }

    /// Runs `trellis-proxy init FLAGS` in the namespace; returns its stdout.
    fn init(&self, flags: &[&str]) -> String {
        let argv: Vec<&str> = [BIN, "init"]
            .into_iter()
            .chain(flags.iter().copied())
            .collect();
        self.ok(&argv)
    }

    /// The namespace's `nat` table, as `save_tool` prints it, without its
    /// `#` lines (which carry a timestamp).
    fn nat(&self, save_tool: &str) -> String {
        let save = self.ok(&[save_tool, "-t", "nat"]);
        save.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// A veth pair from this namespace to `peer`, both ends up, with these
    /// addresses (`nodad`: an IPv6 address is usable at once).
    fn link_to(&self, peer: &Netns, addr: &str, peer_addr: &str) {
        let (here, there) = (format!("tl{}", self.id), format!("tm{}", self.id));
        self.ok(&[
            "ip", "link", "add", &here, "type", "veth", "peer", "name", &there, "netns", &peer.name,
        ]);
        for (ns, dev, addr) in [(self, &here, addr), (peer, &there, peer_addr)] {
            ns.ok(&["ip", "addr", "add", addr, "dev", dev, "nodad"]);
            ns.ok(&["ip", "link", "set", dev, "up"]);
        }
    }

    /// `trellis-proxy init --check FLAGS` as the CNI-mode `trellis-init`
    /// runs: uid 65534, no capability at all.
    fn check_unprivileged(&self, flags: &[&str]) -> Output {
        let argv: Vec<&str> = [
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--inh-caps",
            "-all",
            "--bounding-set",
            "-all",
            BIN,
            "init",
            "--check",
        ]
        .into_iter()
        .chain(flags.iter().copied())
        .collect();
        self.exec(&argv, &[])
    }

    fn ok(&self, argv: &[&str]) -> String {
        self.ok_with_env(argv, &[])
    }

    fn ok_with_env(&self, argv: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.exec(argv, env);
        assert!(
            out.status.success(),
            "{argv:?} in {} failed ({}):\n{}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn exec(&self, argv: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd.envs(env.iter().copied());
        run(&mut cmd)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = run(Command::new("ip").args(["netns", "del", &self.name]));
        if !out.status.success() {
            eprintln!(
                "could not delete network namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (are iproute2 and iptables installed?)"))
}
