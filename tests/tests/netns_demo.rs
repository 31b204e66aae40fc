//! `trellis demo`, bounded, as a user runs it: the built-in mesh comes up,
//! traffic flows over mutual TLS, the table shows it, and everything is
//! removed at the end.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_e2e::{require_root, trellis};

#[test]
fn netns_demo_runs_shows_golden_metrics_over_mtls_and_cleans_up() {
    require_root("network namespaces and iptables");
    let out = trellis(&["demo", "--duration", "10s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("6/6 proxies hold a certificate"), "{all}");
    for workload in ["demo/web", "demo/api", "demo/catalog", "demo/mail"] {
        let row = all
            .lines()
            .rev()
            .find(|l| l.starts_with(workload))
            .unwrap_or_else(|| panic!("no row for {workload}:\n{all}"));
        assert!(
            row.trim_end().ends_with("true"),
            "{workload} not over mTLS: {row}"
        );
    }
    assert!(all.contains("mail banner ok"), "{all}");
    assert!(all.contains("everything it made is removed"), "{all}");
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !left.contains("trls-demo"),
        "namespaces left behind: {left}"
    );
    assert!(!std::path::Path::new("/run/trellis/meshes/demo").exists());
}
