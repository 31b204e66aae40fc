//! User, groups, capabilities, no_new_privs, mounts, working directory.

use super::*;

fn caps(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|c| (*c).to_owned()).collect()
}

#[test]
fn users_and_groups() {
    // (pod securityContext, container securityContext, image, uid, gid, groups)
    type Case<'a> = (&'a str, &'a str, &'a str, u32, u32, &'a [u32]);
    let cases: &[Case] = &[
        ("{}", "{}", "example.com/app", 0, 0, &[0]),
        ("{runAsUser: 1000, runAsGroup: 3000}", "{}", "example.com/app", 1000, 3000, &[3000]),
        ("{runAsUser: 1000, runAsGroup: 3000}", "{runAsUser: 2000}", "example.com/app", 2000, 3000, &[3000]),
        ("{runAsUser: 1000}", "{runAsGroup: 5}", "example.com/app", 1000, 5, &[5]),
        // The primary group, fsGroup, supplementalGroups; each once.
        (
            "{runAsUser: 1000, runAsGroup: 3000, fsGroup: 2000, supplementalGroups: [4000, 3000, 2000, 5000]}",
            "{}",
            "example.com/app",
            1000,
            3000,
            &[3000, 2000, 4000, 5000],
        ),
        // The image's USER, unless the security context sets one.
        ("{}", "{}", "example.com/nonroot", 65532, 0, &[0]),
        ("{runAsNonRoot: true}", "{}", "example.com/nonroot", 65532, 0, &[0]),
        ("{}", "{runAsUser: 0}", "example.com/nonroot", 0, 0, &[0]),
        ("{runAsNonRoot: true}", "{runAsNonRoot: false}", "example.com/app", 0, 0, &[0]),
        ("{runAsNonRoot: true, runAsUser: 7}", "{}", "example.com/root", 7, 0, &[0]),
    ];
    for (pod_sc, sc, image, uid, gid, groups) in cases {
        let fixture = Fixture::new(&format!(
            "securityContext: {pod_sc}\ncontainers: [{{name: app, image: {image}, securityContext: {sc}}}]"
        ));
        let got = fixture
            .launch()
            .unwrap_or_else(|e| panic!("{pod_sc} {sc} {image}: {e}"));
        assert_eq!(
            (got.uid, got.gid, got.groups.as_slice()),
            (*uid, *gid, *groups),
            "{pod_sc} {sc} {image}"
        );
    }
}

#[test]
fn run_as_non_root_refuses_root_as_kubelet_does() {
    let ours = "(pod: \"web-0_default(0b6f-uid)\", container: app)";
    // (pod securityContext, container securityContext, image, message)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "{runAsNonRoot: true}",
            "{}",
            "example.com/app",
            "container has runAsNonRoot and image will run as root",
        ),
        (
            "{}",
            "{runAsNonRoot: true}",
            "example.com/root",
            "container has runAsNonRoot and image will run as root",
        ),
        (
            "{runAsNonRoot: true}",
            "{runAsUser: 0}",
            "example.com/nonroot",
            "container's runAsUser breaks non-root policy",
        ),
        (
            "{runAsNonRoot: true, runAsUser: 0}",
            "{}",
            "example.com/app",
            "container's runAsUser breaks non-root policy",
        ),
        (
            "{runAsUser: -1}",
            "{}",
            "example.com/app",
            "runAsUser -1 is not a valid id",
        ),
        (
            "{fsGroup: 4294967296}",
            "{}",
            "example.com/app",
            "a supplemental group 4294967296 is not a valid id",
        ),
    ];
    for (pod_sc, sc, image, want) in cases {
        let fixture = Fixture::new(&format!(
            "securityContext: {pod_sc}\ncontainers: [{{name: app, image: {image}, securityContext: {sc}}}]"
        ));
        let err = fixture.launch().expect_err(want);
        assert_eq!(err.reason(), "CreateContainerConfigError");
        let message = err.to_string();
        let want = if want.starts_with("container") {
            format!("{want} {ours}")
        } else {
            (*want).to_owned()
        };
        assert_eq!(message, want);
    }
}

#[test]
fn capabilities_as_containerd_computes_them() {
    let default = DEFAULT_CAPABILITIES.to_vec();
    let without = |gone: &[&str]| {
        default
            .iter()
            .copied()
            .filter(|c| !gone.contains(c))
            .collect::<Vec<_>>()
    };
    let with = |more: &[&'static str]| default.iter().chain(more).copied().collect::<Vec<_>>();
    let all_but = |gone: &[&str]| {
        ALL_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| !gone.contains(c))
            .collect::<Vec<_>>()
    };
    // (securityContext, capabilities, no_new_privs)
    let cases: Vec<(&str, Vec<&str>, bool)> = vec![
        ("{}", default.clone(), false),
        ("{capabilities: {}}", default.clone(), false),
        (
            "{capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}",
            vec!["net_bind_service"],
            false,
        ),
        (
            "{capabilities: {drop: [all]}, allowPrivilegeEscalation: false}",
            vec![],
            true,
        ),
        (
            "{capabilities: {add: [NET_ADMIN, CAP_sys_time]}}",
            with(&["net_admin", "sys_time"]),
            false,
        ),
        (
            "{capabilities: {drop: [chown, Cap_Kill]}}",
            without(&["chown", "kill"]),
            false,
        ),
        // A capability both added and dropped is dropped.
        (
            "{capabilities: {add: [NET_ADMIN], drop: [NET_ADMIN, NET_RAW]}}",
            without(&["net_raw"]),
            false,
        ),
        (
            "{capabilities: {add: [ALL], drop: [SYS_ADMIN]}}",
            all_but(&["sys_admin"]),
            false,
        ),
        ("{capabilities: {add: [ALL], drop: [ALL]}}", vec![], false),
        (
            "{privileged: true, capabilities: {drop: [ALL]}}",
            ALL_CAPABILITIES.to_vec(),
            false,
        ),
        ("{allowPrivilegeEscalation: true}", default.clone(), false),
    ];
    for (sc, want, nnp) in cases {
        let got = app(&format!("securityContext: {sc}"))
            .launch()
            .unwrap_or_else(|e| panic!("{sc}: {e}"));
        assert_eq!(got.capabilities, caps(&want), "{sc}");
        assert_eq!(got.no_new_privs, nnp, "{sc}");
    }
    let err = app("securityContext: {capabilities: {add: [CAP_ALL]}}")
        .launch()
        .unwrap_err();
    assert_eq!(err.reason(), "CreateContainerError");
}

#[test]
fn volume_mounts_and_working_dir() {
    let mount = |source: &str, target: &str, read_only: bool| Mount {
        source: PathBuf::from(source),
        target: PathBuf::from(target),
        read_only,
    };
    let got = app("workingDir: /srv
env: [{name: SUB, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
volumeMounts:
- {name: data, mountPath: /srv/data/cache, subPath: cache/a}
- {name: config, mountPath: /etc/app/app.yaml, subPath: app.yaml, readOnly: true}
- {name: data, mountPath: /srv/data, subPathExpr: 'pods/$(SUB)'}
- {name: token, mountPath: /var/run/secrets/kubernetes.io/serviceaccount, readOnly: true}
- {name: data, mountPath: /scratch, readOnly: false}
- {name: data, mountPath: relative, subPath: ''}")
    .launch()
    .unwrap();
    assert_eq!(
        got.mounts,
        [
            mount("/pods/u1/data", "/scratch", false),
            mount("/pods/u1/data", "/relative", false),
            mount("/pods/u1/data/pods/web-0", "/srv/data", false),
            mount("/pods/u1/data/cache/a", "/srv/data/cache", false),
            mount("/pods/u1/config/app.yaml", "/etc/app/app.yaml", true),
            mount(
                "/pods/u1/token",
                "/var/run/secrets/kubernetes.io/serviceaccount",
                true
            ),
        ]
    );
    assert_eq!(got.working_dir, Some(PathBuf::from("/srv")));
}

#[test]
fn bad_volume_mounts_are_config_errors() {
    // (volumeMounts, message)
    let cases: &[(&str, &str)] = &[
        (
            "[{name: nope, mountPath: /x}]",
            "cannot find volume \"nope\" to mount into container \"app\"",
        ),
        (
            "[{name: data, mountPath: /x, subPath: /etc}]",
            "error SubPath `/etc` must not be an absolute path",
        ),
        (
            "[{name: data, mountPath: /x, subPath: a/../../b}]",
            "error SubPath `a/../../b` must not contain '..'",
        ),
        (
            "[{name: data, mountPath: /x, subPathExpr: '$(B)/$(EMPTY)/$(A)/$(HOSTNAME)'}]",
            "subPathExpr `$(B)/$(EMPTY)/$(A)/$(HOSTNAME)`: missing value for A, B, EMPTY, HOSTNAME",
        ),
        (
            "[{name: data, mountPath: /x, subPathExpr: '$(DOTS)'}]",
            "error SubPath `..` must not contain '..'",
        ),
        (
            "[{name: data, mountPath: /x/../etc}]",
            "mountPath `/x/../etc` must not contain '..'",
        ),
    ];
    for (mounts, want) in cases {
        let fields =
            format!("env: [{{name: EMPTY}}, {{name: DOTS, value: '..'}}]\nvolumeMounts: {mounts}");
        let err = app(&fields).launch().expect_err(mounts);
        assert_eq!(err.reason(), "CreateContainerConfigError", "{mounts}");
        assert_eq!(err.to_string(), *want, "{mounts}");
    }
}
