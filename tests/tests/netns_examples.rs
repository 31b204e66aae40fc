//! `examples/routes.yaml`, run as its comments say: routes and policies
//! beside a service do what the example promises. (Every example is also
//! parsed and validated by the unit tests of trellis-mesh, `mesh/src/docs_tests.rs`.)

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_e2e::{repo, require_root, require_tool, Mesh};

/// `curl` from `pod`: (status code, body).
fn curl(mesh: &Mesh, pod: &str, args: &[&str]) -> (u16, String) {
    let mut argv = vec!["curl", "-sS", "-m", "10", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    let out = mesh.exec_ok(pod, &argv);
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.parse().unwrap(), body.to_string())
}

#[test]
fn netns_examples_routes_yaml_canary_retries_and_policies() {
    require_root("network namespaces, iptables and the proxies' uid");
    require_tool("curl");
    let text = std::fs::read_to_string(repo().join("examples/routes.yaml")).unwrap();
    let yaml = text.replacen("\nname: routes\n", "\nname: {mesh}\n", 1);
    assert_ne!(
        yaml, text,
        "examples/routes.yaml no longer says `name: routes`"
    );
    let mesh = Mesh::up("rt", &yaml);

    // The canary header always reaches v2.
    for _ in 0..5 {
        let (code, body) = curl(&mesh, "client", &["-H", "x-canary: 1", "http://web.shop/"]);
        assert_eq!(code, 200, "{body}");
        assert!(body.starts_with("web-v2-0:"), "{body}");
    }
    // Without it: web (one request in ten failing, retried) or v2, and
    // every request succeeds.
    for _ in 0..20 {
        let (code, body) = curl(&mesh, "client", &["http://web.shop/"]);
        assert_eq!(code, 200, "{body}");
        assert!(body.starts_with("web-"), "{body}");
    }
    // Only the client is authorized, and only for GET and HEAD.
    let (code, body) = curl(&mesh, "intruder", &["http://web.shop/"]);
    assert_eq!(code, 403, "{body}");
    let (code, body) = curl(
        &mesh,
        "client",
        &["-X", "POST", "-H", "x-canary: 1", "http://web.shop/"],
    );
    assert_eq!(code, 403, "{body}");
}
