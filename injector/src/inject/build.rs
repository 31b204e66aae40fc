//! The injected pod: the pod with the `trellis-init` and `trellis-proxy`
//! containers, their volumes and the injection annotations.
//!
//! Native sidecar (default): `initContainers` become
//! `[trellis-init, trellis-proxy (restartPolicy: Always), <the pod's own>]`,
//! so the pod's init containers already run inside the mesh, and its
//! containers start once the proxy's startup probe (`/ready`: certificate
//! and policy in hand) passes. Plain container: `trellis-init` runs after
//! the pod's own init containers (which then run outside the mesh: there
//! is no proxy yet to send their traffic to), and `trellis-proxy` is the
//! first container.
//!
//! `trellis-init` depends on the capture mode ([`CaptureMode`]); its
//! arguments do not, but for `--check`:
//!
//! | mode | `trellis-init` runs | privileges | volumes |
//! |---|---|---|---|
//! | `init` | `trellis-proxy init …`: writes the capture rules | NET_ADMIN, NET_RAW; root, or 65534 with privilege escalation | an in-memory `/run` (the iptables lock) |
//! | `cni` | `trellis-proxy init --check …`: confirms the CNI plugin wrote them | none: uid 65534, everything dropped (passes `restricted`) | none |
//!
//! In CNI mode the plugin reads the rules from the check container's
//! arguments (the same flags), so they have one source.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use trellis_core::contract::{
    proxy_env, ADMIN_PORT, DEFAULT_ADMIN_LISTEN, DEFAULT_INBOUND_LISTEN, DEFAULT_OUTBOUND_LISTEN,
    PROXY_UID,
};

use super::decide::Settings;
use super::{
    CHECK_FLAG, INIT_CONTAINER, INJECTED_ANNOTATION, PROXY_CONTAINER, PROXY_VERSION_ANNOTATION,
};
use crate::config::{CaptureMode, InjectorConfig};

/// The audience of the projected token the identity service verifies.
pub const TOKEN_AUDIENCE: &str = "identity.trellis.dev";
pub const TOKEN_VOLUME: &str = "trellis-identity-token";
pub const ROOTS_VOLUME: &str = "trellis-trust-roots";
pub const INIT_RUN_VOLUME: &str = "trellis-init-run";
/// Every volume injection may add (CNI mode leaves out
/// [`INIT_RUN_VOLUME`]): a pod with one of these names already cannot be
/// injected, whatever the mode.
pub const VOLUMES: [&str; 3] = [TOKEN_VOLUME, ROOTS_VOLUME, INIT_RUN_VOLUME];
pub const TOKEN_DIR: &str = "/var/run/trellis/identity";
pub const TOKEN_PATH: &str = "token";
pub const ROOTS_DIR: &str = "/var/run/trellis/roots";
pub const ROOTS_KEY: &str = "roots.pem";
/// The node's address (downward API `status.hostIP`), which
/// `TRELLIS_PROXY_PROBE_SOURCES` names.
pub const NODE_IP_ENV: &str = "TRELLIS_NODE_IP";
/// The pod's ServiceAccount (downward API), which the proxy's identity
/// names.
const SERVICE_ACCOUNT_ENV: &str = "TRELLIS_POD_SERVICE_ACCOUNT";
/// The uid a non-root `trellis-init` runs as, and the CNI mode's check
/// always: not the proxy's, whose traffic the rules never redirect.
const INIT_NONROOT_UID: i64 = 65534;

pub(super) fn injected_pod(pod: &Pod, s: &Settings, cfg: &InjectorConfig) -> Pod {
    let mut out = pod.clone();
    let annotations = out.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(INJECTED_ANNOTATION.into(), "true".into());
    annotations.insert(PROXY_VERSION_ANNOTATION.into(), cfg.proxy.version.clone());

    let spec = out.spec.get_or_insert_with(Default::default);
    spec.volumes
        .get_or_insert_with(Vec::new)
        .extend(volumes(cfg));
    let init = match cfg.init.capture_mode {
        CaptureMode::Init => init_container(s, cfg),
        CaptureMode::Cni => check_container(s, cfg),
    };
    let proxy = proxy_container(s, cfg);
    let inits = spec.init_containers.get_or_insert_with(Vec::new);
    if s.native_sidecar {
        inits.splice(0..0, [init, proxy]);
    } else {
        // In CNI mode the rules exist before any container starts, and
        // the check comes first (the configuration refuses CNI mode with
        // plain containers: the pod's own init containers would have no
        // proxy to reach).
        match cfg.init.capture_mode {
            CaptureMode::Init => inits.push(init),
            CaptureMode::Cni => inits.insert(0, init),
        }
        spec.containers.insert(0, proxy);
    }
    out
}

fn volumes(cfg: &InjectorConfig) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o444),
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(cfg.proxy.token_expiration_seconds),
                        path: TOKEN_PATH.into(),
                    }),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        },
        Volume {
            name: ROOTS_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cfg.proxy.trust_roots_config_map.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    // iptables takes its lock under /run; the root filesystem is
    // read-only. The check runs no iptables.
    if cfg.init.capture_mode == CaptureMode::Init {
        volumes.push(Volume {
            name: INIT_RUN_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("1Mi".into())),
            }),
            ..Default::default()
        });
    }
    volumes
}

/// `trellis-proxy init`'s flags after `init`: the pod's capture rules. The
/// CNI plugin parses the same flags out of the check container.
fn capture_args(s: &Settings, cfg: &InjectorConfig) -> Vec<String> {
    let mut args = vec![
        "--proxy-uid".to_string(),
        PROXY_UID.to_string(),
        "--iptables-mode".into(),
        cfg.init.iptables_mode.clone(),
    ];
    for (flag, list) in [
        ("--skip-inbound-ports", &s.skip_inbound_ports),
        ("--skip-outbound-ports", &s.skip_outbound_ports),
    ] {
        if !list.is_empty() {
            args.push(flag.into());
            args.push(list.clone());
        }
    }
    args
}

/// Init-container mode: `trellis-init` writes the capture rules.
fn init_container(s: &Settings, cfg: &InjectorConfig) -> Container {
    let mut args = vec!["init".to_string()];
    args.extend(capture_args(s, cfg));
    let (uid, non_root) = if cfg.init.run_as_root {
        (0, false)
    } else {
        (INIT_NONROOT_UID, true)
    };
    let security = SecurityContext {
        run_as_user: Some(uid),
        run_as_non_root: Some(non_root),
        // A non-root init gets NET_ADMIN and NET_RAW from its iptables
        // binaries' file capabilities, which no_new_privs would void.
        allow_privilege_escalation: Some(!cfg.init.run_as_root),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
            drop: Some(vec!["ALL".into()]),
        }),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    };
    Container {
        volume_mounts: Some(vec![VolumeMount {
            name: INIT_RUN_VOLUME.into(),
            mount_path: "/run".into(),
            ..Default::default()
        }]),
        ..trellis_init(cfg, args, security)
    }
}

/// CNI mode: `trellis-init` only checks that the plugin wrote the rules
/// (it binds the outbound port on 127.0.0.1, connects to a TEST-NET
/// address and expects to reach itself), and fails the pod saying the
/// node lacks the plugin when it did not. It needs nothing Pod Security
/// `restricted` forbids: not root (nor the proxy's uid, whose connections
/// are never redirected), no capability, no privilege escalation.
fn check_container(s: &Settings, cfg: &InjectorConfig) -> Container {
    let mut args = vec!["init".to_string(), CHECK_FLAG.to_string()];
    args.extend(capture_args(s, cfg));
    trellis_init(cfg, args, restricted(INIT_NONROOT_UID))
}

/// `trellis-init` in either mode: `trellis-proxy ARGS` in the init image,
/// small resources, its failure message (the iptables tool's, or the
/// missing plugin and what to do) as the termination message.
fn trellis_init(cfg: &InjectorConfig, args: Vec<String>, security: SecurityContext) -> Container {
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(cfg.init_image().to_string()),
        image_pull_policy: Some(cfg.proxy.image_pull_policy.clone()),
        command: Some(vec!["trellis-proxy".into()]),
        args: Some(args),
        resources: Some(resources(
            &[("cpu", "10m"), ("memory", "10Mi")],
            &[("memory", "50Mi")],
        )),
        security_context: Some(security),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

fn proxy_container(s: &Settings, cfg: &InjectorConfig) -> Container {
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let from = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(field(path)),
        ..Default::default()
    };
    let value = |name: &str, v: String| EnvVar {
        name: name.into(),
        value: Some(v),
        ..Default::default()
    };
    // Kubernetes expands $(VAR) from variables defined earlier in the list.
    let mut env = vec![
        from(proxy_env::POD_NAMESPACE, "metadata.namespace"),
        from(proxy_env::POD_NAME, "metadata.name"),
        from(SERVICE_ACCOUNT_ENV, "spec.serviceAccountName"),
        value(
            proxy_env::WORKLOAD,
            format!("$({})/$({})", proxy_env::POD_NAMESPACE, proxy_env::POD_NAME),
        ),
        value(proxy_env::LOG, s.log_level.clone()),
        value(
            proxy_env::OUTBOUND_LISTEN,
            DEFAULT_OUTBOUND_LISTEN.to_string(),
        ),
        value(
            proxy_env::INBOUND_LISTEN,
            DEFAULT_INBOUND_LISTEN.to_string(),
        ),
        value(proxy_env::ADMIN_LISTEN, DEFAULT_ADMIN_LISTEN.to_string()),
        value(
            proxy_env::DEFAULT_INBOUND_POLICY,
            s.default_inbound_policy.to_string(),
        ),
        value(proxy_env::OUTBOUND_MTLS, s.outbound_mtls.to_string()),
        // Kubelet probes come from the node: from the pod's gateway with a
        // bridge CNI, from the node's own address with others.
        from(NODE_IP_ENV, "status.hostIP"),
        value(
            proxy_env::PROBE_SOURCES,
            format!("gateway,$({NODE_IP_ENV})"),
        ),
        value(proxy_env::IDENTITY_ADDR, cfg.proxy.identity_addr.clone()),
        value(proxy_env::IDENTITY_SERVER_ID, cfg.identity_server_id()),
        value(
            proxy_env::IDENTITY,
            format!(
                "spiffe://{}/ns/$({})/sa/$({SERVICE_ACCOUNT_ENV})",
                cfg.trust_domain,
                proxy_env::POD_NAMESPACE
            ),
        ),
        value(
            proxy_env::IDENTITY_TOKEN_FILE,
            format!("{TOKEN_DIR}/{TOKEN_PATH}"),
        ),
        value(
            proxy_env::TRUST_ROOTS_FILE,
            format!("{ROOTS_DIR}/{ROOTS_KEY}"),
        ),
        value(
            proxy_env::CONTROLLER_ADDR,
            cfg.proxy.controller_addr.clone(),
        ),
    ];
    if !s.opaque_ports.is_empty() {
        env.push(value(proxy_env::OPAQUE_PORTS, s.opaque_ports.clone()));
    }
    if !cfg.proxy.plaintext_destinations.trim().is_empty() {
        env.push(value(
            proxy_env::PLAINTEXT_DESTINATIONS,
            cfg.proxy
                .plaintext_destinations
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .collect::<Vec<_>>()
                .join(","),
        ));
    }
    // Tracing: only when a collector is named (off by default).
    if !s.trace_collector.is_empty() {
        env.push(value(proxy_env::TRACE_COLLECTOR, s.trace_collector.clone()));
        if !s.trace_sampling.is_empty() {
            env.push(value(proxy_env::TRACE_SAMPLING, s.trace_sampling.clone()));
        }
    }
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(ADMIN_PORT.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    };
    let r = &s.resources;
    let requests: Vec<(&str, &str)> = [("cpu", &r.cpu_request), ("memory", &r.memory_request)]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.as_str()))
        .collect();
    let limits: Vec<(&str, &str)> = [("cpu", &r.cpu_limit), ("memory", &r.memory_limit)]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.as_str()))
        .collect();
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(cfg.proxy.image.clone()),
        image_pull_policy: Some(cfg.proxy.image_pull_policy.clone()),
        command: Some(vec!["trellis-proxy".into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("trellis-admin".into()),
            container_port: ADMIN_PORT.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // The app starts once the proxy has its certificate and policy.
        startup_probe: s.native_sidecar.then(|| probe("/ready", 1, 120)),
        readiness_probe: Some(probe("/ready", 5, 3)),
        liveness_probe: Some(probe("/live", 10, 3)),
        resources: Some(resources(&requests, &limits)),
        restart_policy: s.native_sidecar.then(|| "Always".to_string()),
        security_context: Some(restricted(PROXY_UID.into())),
        volume_mounts: Some(vec![
            VolumeMount {
                name: TOKEN_VOLUME.into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: ROOTS_VOLUME.into(),
                mount_path: ROOTS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// What Pod Security `restricted` asks of a container, as `uid`: non-root,
/// no privilege escalation, every capability dropped, RuntimeDefault
/// seccomp; and a read-only root filesystem.
fn restricted(uid: i64) -> SecurityContext {
    SecurityContext {
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

fn resources(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> ResourceRequirements {
    let map = |pairs: &[(&str, &str)]| {
        (!pairs.is_empty()).then(|| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect()
        })
    };
    ResourceRequirements {
        requests: map(requests),
        limits: map(limits),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}
