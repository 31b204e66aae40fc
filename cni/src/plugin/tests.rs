//! Tests of the plugin's decisions without root or API server: the
//! protocol (versions, errors, pass-through), the choice of pods, the
//! records. The chain run by `cnitool` in network namespaces, against a real
//! API server, is `tests/tests/netns_cni.rs`.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use serde_json::{json, Value};

use super::pod::{decide, Capture, PodRef};
use super::*;

const PREV_RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1","interface":0}]}"#;

fn env(command: &str) -> Env {
    Env {
        command: command.into(),
        container_id: "c0ffee".into(),
        netns: "/var/run/netns/none-such".into(),
        ifname: "eth0".into(),
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1".into(),
    }
}

fn conf(extra: Value) -> Vec<u8> {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "trellis-cni",
        "prevResult": serde_json::from_str::<Value>(PREV_RESULT).unwrap(),
    });
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    serde_json::to_vec(&conf).unwrap()
}

fn error_of(command: &str, stdin: &[u8]) -> CniError {
    run(&env(command), stdin).unwrap_err()
}

#[test]
fn version_lists_1_0_and_1_1() {
    let out: Value = serde_json::from_str(
        &run(&env("VERSION"), br#"{"cniVersion":"1.0.0"}"#)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(out["cniVersion"], "1.0.0");
    assert_eq!(out["supportedVersions"], json!(["1.0.0", "1.1.0"]));
    // Asked in a version we do not speak: answered in ours.
    let out: Value = serde_json::from_str(
        &run(&env("VERSION"), br#"{"cniVersion":"0.3.1"}"#)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(out["cniVersion"], "1.1.0");
}

#[test]
fn an_unknown_version_is_error_1() {
    let stdin = br#"{"cniVersion":"0.4.0","name":"n","type":"trellis-cni"}"#;
    let e = error_of("ADD", stdin);
    assert_eq!(e.code, Code::IncompatibleVersion);
    assert!(
        e.msg.contains("\"0.4.0\"") && e.msg.contains("1.0.0, 1.1.0"),
        "{}",
        e.msg
    );
    let object: Value = serde_json::from_str(&e.to_json(stdin)).unwrap();
    assert_eq!(object["code"], 1);
    // Reported in the newest version, since 0.4.0 is not ours to speak.
    assert_eq!(object["cniVersion"], "1.1.0");
}

#[test]
fn malformed_configuration_is_error_6() {
    for stdin in [&b""[..], b"   ", b"{not json", b"[]", br#"{"name":"n"}"#] {
        let e = error_of("ADD", stdin);
        assert_eq!(e.code, Code::DecodeFailure, "{stdin:?}: {e}");
    }
}

#[test]
fn add_without_prev_result_is_error_7_naming_the_chain() {
    let stdin = br#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"trellis-cni"}"#;
    let e = error_of("ADD", stdin);
    assert_eq!(e.code, Code::InvalidConfig);
    assert!(e.msg.contains("chained plugin"), "{}", e.msg);
    let object: Value = serde_json::from_str(&e.to_json(stdin)).unwrap();
    assert_eq!(
        (object["cniVersion"].as_str(), object["code"].as_u64()),
        (Some("1.0.0"), Some(7))
    );
    assert!(object["msg"].as_str().unwrap().contains("prevResult"));
}

#[test]
fn add_for_a_non_kubernetes_container_passes_the_result_through() {
    let mut e = env("ADD");
    e.args = "IgnoreUnknown=1".into();
    let out = run(&e, &conf(json!({}))).unwrap().unwrap();
    let out: Value = serde_json::from_str(&out).unwrap();
    let prev: Value = serde_json::from_str(PREV_RESULT).unwrap();
    assert_eq!(out, prev);
}

#[test]
fn add_in_kube_system_passes_through_without_asking_the_api_server() {
    let mut e = env("ADD");
    e.args = "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1".into();
    // A kubeconfig that does not exist: reading the pod would fail.
    let out = run(&e, &conf(json!({ "kubeconfig": "/nonexistent" })))
        .unwrap()
        .unwrap();
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out, serde_json::from_str::<Value>(PREV_RESULT).unwrap());
}

#[test]
fn add_needs_the_runtime_variables() {
    let mut e = env("ADD");
    e.netns.clear();
    let err = run(&e, &conf(json!({}))).unwrap_err();
    assert_eq!(err.code, Code::InvalidEnv);
    assert!(err.msg.contains("CNI_NETNS"), "{}", err.msg);
}

#[test]
fn add_for_a_pod_without_kubeconfig_is_error_7() {
    let err = error_of("ADD", &conf(json!({})));
    assert_eq!(err.code, Code::InvalidConfig);
    assert!(err.msg.contains("kubeconfig"), "{}", err.msg);
}

#[test]
fn an_unknown_command_is_error_4() {
    let err = error_of("DANCE", &conf(json!({})));
    assert_eq!(err.code, Code::InvalidEnv);
    assert!(err.msg.contains("DANCE"));
}

#[test]
fn status_fails_until_the_kubeconfig_is_there() {
    let dir = trellis_core::test_support::TempDir::new("trellis-cni-status");
    let path = dir.path().join("kubeconfig");
    let stdin = conf(json!({ "kubeconfig": path }));
    let err = error_of("STATUS", &stdin);
    assert_eq!(err.code, Code::NotAvailable);
    std::fs::write(&path, "apiVersion: v1\n").unwrap();
    assert_eq!(run(&env("STATUS"), &stdin).unwrap(), None);
}

#[test]
fn cni_args_name_the_pod() {
    assert_eq!(
        PodRef::from_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc"),
        Some(PodRef { namespace: "shop".into(), name: "web-1".into() })
    );
    assert_eq!(PodRef::from_cni_args("K8S_POD_NAMESPACE=shop"), None);
    assert_eq!(
        PodRef::from_cni_args("K8S_POD_NAMESPACE=;K8S_POD_NAME=x"),
        None
    );
    assert_eq!(PodRef::from_cni_args(""), None);
}

fn pod(inits: Vec<Container>, host_network: bool) -> Pod {
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("web-1".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            init_containers: Some(inits),
            containers: vec![Container {
                name: "app".into(),
                ..Default::default()
            }],
            host_network: Some(host_network),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn init(args: &[&str]) -> Container {
    Container {
        name: "trellis-init".into(),
        command: Some(vec!["trellis-proxy".into()]),
        args: Some(args.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

#[test]
fn only_pods_injected_for_cni_capture_are_captured() {
    let cni = init(&[
        "init",
        "--check",
        "--proxy-uid",
        "7102",
        "--skip-inbound-ports",
        "22",
    ]);
    match decide(&pod(vec![cni.clone()], false)).unwrap() {
        Capture::Cni { args, argv } => {
            assert!(args.is_check());
            assert_eq!(argv[..2], ["init", "--check"]);
        }
        Capture::None(why) => panic!("not captured: {why}"),
    }
    let none = |p: &Pod| match decide(p).unwrap() {
        Capture::None(why) => why,
        Capture::Cni { .. } => panic!("captured"),
    };
    assert!(none(&pod(vec![], false)).contains("not injected"));
    assert!(
        none(&pod(vec![init(&["init", "--proxy-uid", "7102"])], false))
            .contains("init-container mode")
    );
    assert!(none(&pod(vec![cni], true)).contains("host's network"));
}

#[test]
fn a_trellis_init_with_bad_arguments_fails_the_pod() {
    let err = decide(&pod(
        vec![init(&["init", "--check", "--inbound-port", "zero"])],
        false,
    ))
    .unwrap_err();
    assert_eq!(err.code, Code::PodConfig);
    assert!(err.details.contains("--inbound-port"), "{}", err.details);
}

#[test]
fn records_are_kept_per_container_and_collected() {
    let dir = trellis_core::test_support::TempDir::new("trellis-cni-state");
    let stdin = conf(json!({ "stateDir": dir.path() }));
    let state = NetConf::parse(&stdin).unwrap().state().unwrap();
    let pod = PodRef {
        namespace: "shop".into(),
        name: "web-1".into(),
    };
    let args: Vec<String> = ["init", "--check"].map(String::from).to_vec();
    state.record("a1", &pod, &args).unwrap();
    state.record("b2", &pod, &args).unwrap();
    let record = state.read("a1").unwrap().unwrap();
    assert_eq!(
        (record.pod.clone(), record.args.clone()),
        (pod.clone(), args.clone())
    );
    assert!(record.init_args().unwrap().is_check());
    assert!(state.read("zz").unwrap().is_none());
    assert_eq!(
        state.record("../etc", &pod, &args).unwrap_err().code,
        Code::InvalidEnv
    );

    // GC keeps what the runtime lists, and without a list keeps all.
    let gc = |valid: Option<Value>| {
        let extra = match valid {
            Some(list) => json!({ "stateDir": dir.path(), "cni.dev/valid-attachments": list }),
            None => json!({ "stateDir": dir.path() }),
        };
        run(&env("GC"), &conf(extra)).unwrap();
    };
    gc(None);
    assert!(state.read("a1").unwrap().is_some() && state.read("b2").unwrap().is_some());
    gc(Some(json!([{ "containerID": "b2", "ifname": "eth0" }])));
    assert!(state.read("a1").unwrap().is_none());
    assert!(state.read("b2").unwrap().is_some());

    // DEL of a container this plugin never set up touches nothing.
    let mut del = env("DEL");
    del.container_id = "never".into();
    assert_eq!(
        run(&del, &conf(json!({ "stateDir": dir.path() }))).unwrap(),
        None
    );
    // DEL of a recorded one whose namespace is gone forgets it.
    del.container_id = "b2".into();
    assert_eq!(
        run(&del, &conf(json!({ "stateDir": dir.path() }))).unwrap(),
        None
    );
    assert!(state.read("b2").unwrap().is_none());
}
