//! Table tests of [`launch`]: each rule of kubelet and containerd it
//! follows, from pod manifests. The root-only test that runs a launch for
//! real is in `netns_tests.rs`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;

use super::*;

mod command;
mod env;
mod security;

/// A pod's node, ConfigMaps, Secrets and volumes.
struct Fixture {
    pod: Pod,
    pod_ips: Vec<IpAddr>,
    host_ip: IpAddr,
    kubernetes_service: Option<SocketAddr>,
    volumes: BTreeMap<String, PathBuf>,
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
    secrets: BTreeMap<String, BTreeMap<String, String>>,
}

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Fixture {
    /// `spec` is the pod's spec (YAML); the pod is `default/web-0`.
    fn new(spec: &str) -> Self {
        let pod = format!(
            "metadata:
  name: web-0
  namespace: default
  uid: 0b6f-uid
  labels: {{app: web, tier: front}}
  annotations: {{example.com/owner: team-a}}
spec:
{}",
            indent(spec)
        );
        Self {
            pod: serde_yaml_ng::from_str(&pod).unwrap_or_else(|e| panic!("{e}\n{pod}")),
            pod_ips: vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            host_ip: "192.168.1.10".parse().unwrap(),
            kubernetes_service: Some("10.96.0.1:443".parse().unwrap()),
            volumes: [
                ("data", "/pods/u1/data"),
                ("config", "/pods/u1/config"),
                ("token", "/pods/u1/token"),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), PathBuf::from(v)))
            .collect(),
            config_maps: BTreeMap::from([(
                "app-config".to_owned(),
                data(&[
                    ("LOG_LEVEL", "debug"),
                    ("PORT", "8080"),
                    ("bad=key", "x"),
                    ("", "y"),
                ]),
            )]),
            secrets: BTreeMap::from([("app-secret".to_owned(), data(&[("PASSWORD", "hunter2")]))]),
        }
    }

    fn env(&self) -> PodEnv<'_> {
        PodEnv {
            pod: &self.pod,
            pod_ips: &self.pod_ips,
            host_ip: self.host_ip,
            node_name: "node-1",
            kubernetes_service: self.kubernetes_service,
            volumes: &self.volumes,
            config_maps: &self.config_maps,
            secrets: &self.secrets,
            allocatable: Allocatable {
                cpu_millicores: 2000,
                memory_bytes: 4 << 30,
            },
        }
    }

    /// The launch of the pod's first container.
    fn launch(&self) -> Result<Launch, LaunchError> {
        let spec = self.pod.spec.as_ref().unwrap();
        launch(&self.env(), &spec.containers[0], &images())
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// `example.com/app`: `/app/server`, with a shell.
fn images() -> ImageMap {
    let mut map = ImageMap::default();
    map.extend_from_yaml(
        "images:
  - image: example.com/app
    entrypoint: [/app/server]
    cmd: [--serve]
    programs: {/app/server: /opt/app/server, /bin/sh: /bin/sh}
  - image: example.com/nonroot
    entrypoint: [/app/server]
    user: 65532
    programs: {/app/server: /opt/app/server}
  - image: example.com/root
    entrypoint: [/app/server]
    user: 0
    programs: {/app/server: /opt/app/server}
  - image: example.com/odd
    entrypoint: [/app/server]
    programs: {/app/server: /opt/a=b/server}
",
    )
    .unwrap();
    map
}

/// A pod of one container `app` of `example.com/app`, with more of the
/// container's fields (YAML, indented as its fields).
fn app(fields: &str) -> Fixture {
    Fixture::new(&format!(
        "containers:\n- name: app\n  image: example.com/app:1\n{}",
        indent(fields)
    ))
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn expansion_is_kubernetes_expansion() {
    // Kubernetes' own cases (third_party/forked/golang/expansion).
    let vars = data(&[
        ("VAR_A", "A"),
        ("VAR_B", "B"),
        ("VAR_C", "C"),
        ("VAR_REF", "$(VAR_A)"),
        ("VAR_EMPTY", ""),
    ]);
    let cases: &[(&str, &str)] = &[
        ("$(VAR_A)", "A"),
        ("$(VAR_A)-$(VAR_A)", "A-A"),
        ("$(VAR_A)-1", "A-1"),
        ("___$(VAR_B)___", "___B___"),
        ("___$(VAR_C)", "___C"),
        ("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
        ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
        ("$$(VAR_A)_$$(VAR_B)", "$(VAR_A)_$(VAR_B)"),
        ("f000-$$VAR_A", "f000-$VAR_A"),
        ("foo\\$(VAR_C)bar", "foo\\Cbar"),
        ("foo\\\\$(VAR_C)bar", "foo\\\\Cbar"),
        ("foo\\\\\\\\$(VAR_A)bar", "foo\\\\\\\\Abar"),
        ("$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"),
        ("$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),
        ("$(VAR_REF)", "$(VAR_A)"),
        ("%%$(VAR_REF)--$(VAR_REF)%%", "%%$(VAR_A)--$(VAR_A)%%"),
        ("foo$(VAR_EMPTY)bar", "foobar"),
        ("foo$(VAR_Awhoops!", "foo$(VAR_Awhoops!"),
        ("f00__(VAR_A)__", "f00__(VAR_A)__"),
        ("$?_boo_$!", "$?_boo_$!"),
        ("$VAR_A", "$VAR_A"),
        ("$(VAR_DNE)", "$(VAR_DNE)"),
        ("$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"),
        ("$$$$$$(VAR_A)", "$$$(VAR_A)"),
        ("$$$$$$$(GOOD_ODDS)", "$$$$(GOOD_ODDS)"),
        ("$$$$$$$(VAR_A)", "$$$A"),
        ("$VAR_A)", "$VAR_A)"),
        ("${VAR_A}", "${VAR_A}"),
        ("$(VAR_B)_______$(A", "B_______$(A"),
        ("$(VAR_C)_______$(", "C_______$("),
        ("$(VAR_A)foobarzab$", "Afoobarzab$"),
        ("foo-\\$(VAR_A", "foo-\\$(VAR_A"),
        ("--$($($($($--", "--$($($($($--"),
        ("$($($($($--foo$(", "$($($($($--foo$("),
        ("foo0--$($($($(", "foo0--$($($($("),
        ("$(foo$$var)", "$(foo$$var)"),
        ("\n", "\n"),
        // And ours: `$$` at the end, `$()`, characters past ASCII.
        ("$$", "$"),
        ("$", "$"),
        ("$()", "$()"),
        ("é$(VAR_A)ü$é$$ü", "éAü$é$ü"),
    ];
    for (input, want) in cases {
        let got = expand::expand(input, |name| vars.get(name).map(String::as_str));
        assert_eq!(got, *want, "{input:?}");
    }
}

#[test]
fn quantities_round_up_as_kubernetes_does() {
    use quantity::Quantity;
    // (quantity, Value(), MilliValue())
    let cases: &[(&str, u128, u128)] = &[
        ("0", 0, 0),
        ("1", 1, 1000),
        ("+2", 2, 2000),
        ("100m", 1, 100),
        ("1500m", 2, 1500),
        ("0.5", 1, 500),
        (".5", 1, 500),
        ("5.", 5, 5000),
        ("0.1m", 1, 1),
        ("250u", 1, 1),
        ("1n", 1, 1),
        ("1k", 1000, 1_000_000),
        ("1M", 1_000_000, 1_000_000_000),
        ("1G", 1_000_000_000, 1_000_000_000_000),
        ("1Ki", 1024, 1_024_000),
        ("1.5Gi", 1_610_612_736, 1_610_612_736_000),
        ("64Mi", 67_108_864, 67_108_864_000),
        ("1Ei", 1 << 60, (1 << 60) * 1000),
        (
            "1E",
            1_000_000_000_000_000_000,
            1_000_000_000_000_000_000_000,
        ),
        ("1e3", 1000, 1_000_000),
        ("1E3", 1000, 1_000_000),
        ("15e-1", 2, 1500),
        ("1e-30", 1, 1),
    ];
    for (text, value, milli) in cases {
        let q = Quantity::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(q.value(), Some(*value), "{text}");
        assert_eq!(q.milli_value(), Some(*milli), "{text}");
    }
    for text in [
        "", ".", "-1", "1.2.3", "abc", "1Kb", "1e", "1e1.5", "1 Gi", "1mi",
    ] {
        assert!(Quantity::parse(text).is_err(), "{text}");
    }
    assert_eq!(Quantity::parse("1e40").unwrap().value(), None);
}

#[test]
fn a_launch_from_a_plain_pod() {
    let got = app("").launch().unwrap();
    let want = Launch {
        program: PathBuf::from("/opt/app/server"),
        args: strings(&["--serve"]),
        env: vec![
            ("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), "443".into()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), "443".into()),
            ("KUBERNETES_PORT".into(), "tcp://10.96.0.1:443".into()),
            (
                "KUBERNETES_PORT_443_TCP".into(),
                "tcp://10.96.0.1:443".into(),
            ),
            ("KUBERNETES_PORT_443_TCP_PROTO".into(), "tcp".into()),
            ("KUBERNETES_PORT_443_TCP_PORT".into(), "443".into()),
            ("KUBERNETES_PORT_443_TCP_ADDR".into(), "10.96.0.1".into()),
            ("HOSTNAME".into(), "web-0".into()),
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        ],
        uid: 0,
        gid: 0,
        groups: vec![0],
        capabilities: DEFAULT_CAPABILITIES
            .iter()
            .map(|c| (*c).to_owned())
            .collect(),
        no_new_privs: false,
        mounts: vec![],
        working_dir: None,
    };
    assert_eq!(got, want);
}

#[test]
fn command_and_args_are_expanded_with_every_variable() {
    let got = app(
        "command: [/bin/sh, -c, 'echo $(LATER) $(PORT) $$(PORT) $(HOSTNAME) $(KUBERNETES_SERVICE_HOST)']
args: [$(LATER), $(NOPE)]
envFrom: [{configMapRef: {name: app-config}}]
env: [{name: LATER, value: late}]",
    )
    .launch()
    .unwrap();
    assert_eq!(got.program, PathBuf::from("/bin/sh"));
    // HOSTNAME is containerd's, not kubelet's: not expanded.
    assert_eq!(
        got.args,
        strings(&[
            "-c",
            "echo late 8080 $(PORT) $(HOSTNAME) 10.96.0.1",
            "late",
            "$(NOPE)"
        ])
    );
}

#[test]
fn errors_come_in_kubelet_order_with_their_reason() {
    // (container fields, image, reason, message)
    let cases: &[(&str, &str, &str, &str)] = &[
        // The image first (kubelet checks it before the config)…
        (
            "envFrom: [{configMapRef: {name: nope}}]",
            "example.com/unknown:1",
            "ErrImageNeverPull",
            "image \"example.com/unknown:1\" has no local program",
        ),
        ("", "Bad:Image", "InvalidImageName", "invalid image name \"Bad:Image\""),
        // …then env, mounts, user…
        (
            "envFrom: [{configMapRef: {name: nope}}]\nvolumeMounts: [{name: nope, mountPath: /x}]",
            "example.com/app",
            "CreateContainerConfigError",
            "configmap \"nope\" not found",
        ),
        (
            "volumeMounts: [{name: nope, mountPath: /x}]\nsecurityContext: {runAsNonRoot: true}",
            "example.com/app",
            "CreateContainerConfigError",
            "cannot find volume \"nope\" to mount into container \"app\"",
        ),
        (
            "securityContext: {runAsNonRoot: true, capabilities: {add: [bogus]}}",
            "example.com/app",
            "CreateContainerConfigError",
            "container has runAsNonRoot and image will run as root (pod: \"web-0_default(0b6f-uid)\", container: app)",
        ),
        // …then the runtime's: capabilities, the program.
        (
            "securityContext: {capabilities: {add: [bogus]}}\ncommand: [python3]",
            "example.com/app",
            "CreateContainerError",
            "unknown capability \"bogus\"",
        ),
        (
            "command: [python3]",
            "example.com/app",
            "CreateContainerError",
            "image \"example.com/app\" has no program \"python3\"",
        ),
        (
            "",
            "example.com/odd",
            "CreateContainerError",
            "the local program /opt/a=b/server has a '='",
        ),
    ];
    for (fields, image, reason, message) in cases {
        let fixture = Fixture::new(&format!(
            "containers:\n- name: app\n  image: {image}\n{}",
            indent(fields)
        ));
        let err = fixture.launch().expect_err(fields);
        assert_eq!(err.reason(), *reason, "{fields}: {err}");
        assert!(
            err.to_string().starts_with(message),
            "{fields}\n got: {err}\nwant: {message}"
        );
    }
}
