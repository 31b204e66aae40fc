//! Whether to inject, and the settings the sidecar gets: the pod's and its
//! namespace's `config.trellis.dev/*` overrides (the pod's win) resolved
//! over the injector's configuration, every one checked.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use trellis_core::config::parse_ports;
use trellis_core::policy::DefaultPolicy;

use super::{
    NamespaceInfo, SkipReason, CONFIG_PREFIX, INIT_CONTAINER, INJECTED_ANNOTATION,
    INJECT_ANNOTATION, PROXY_CONTAINER, WEBHOOK_LABEL,
};
use crate::config::{InjectorConfig, Resources};

/// The proxy's own ports: an application container listening on one of
/// them would collide with the sidecar in the pod's network namespace.
pub(super) const PROXY_PORTS: [(u16, &str); 3] =
    [(7140, "outbound"), (7143, "inbound"), (7191, "admin")];

/// Overrides read from `config.trellis.dev/<name>`.
const OVERRIDES: [&str; 10] = [
    "skip-inbound-ports",
    "skip-outbound-ports",
    "opaque-ports",
    "proxy-log-level",
    "proxy-cpu-request",
    "proxy-memory-request",
    "proxy-cpu-limit",
    "proxy-memory-limit",
    "default-inbound-policy",
    // Read by the controller (per-port policy), accepted here.
    "port-inbound-policy",
];

/// Other meshes' sidecars and init containers, by container name.
const OTHER_MESHES: [&str; 5] = [
    "istio-proxy",
    "istio-init",
    "linkerd-proxy",
    "linkerd-init",
    "kuma-sidecar",
];

/// Everything the injected containers are built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Settings {
    pub native_sidecar: bool,
    /// Normalised port lists (`a,b-c`), empty when none.
    pub skip_inbound_ports: String,
    pub skip_outbound_ports: String,
    pub opaque_ports: String,
    pub log_level: String,
    pub default_inbound_policy: DefaultPolicy,
    pub resources: Resources,
}

pub(super) fn decide(
    pod: &Pod,
    ns: &NamespaceInfo,
    cfg: &InjectorConfig,
) -> Result<Settings, SkipReason> {
    if ns.name == "kube-system"
        || cfg.excluded_namespaces.contains(&ns.name)
        || ns.labels.get(WEBHOOK_LABEL).map(String::as_str) == Some("disabled")
    {
        return Err(SkipReason::ExcludedNamespace);
    }
    if ns.name == cfg.control_plane_namespace {
        return Err(SkipReason::ControlPlane);
    }
    let empty = BTreeMap::new();
    let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    enabled(pod_annotations, &ns.annotations)?;

    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| SkipReason::Invalid("the pod has no spec".into()))?;
    if spec.host_network == Some(true) {
        return Err(SkipReason::HostNetwork);
    }
    if spec.os.as_ref().is_some_and(|os| os.name == "windows") {
        return Err(SkipReason::Invalid(
            "a Windows pod: the proxy and its capture rules are Linux-only".into(),
        ));
    }
    let names = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| c.name.as_str());
    let mut already = pod_annotations.contains_key(INJECTED_ANNOTATION);
    for name in names {
        if name == PROXY_CONTAINER || name == INIT_CONTAINER {
            already = true;
        } else if OTHER_MESHES.contains(&name) {
            return Err(SkipReason::OtherMesh(name.to_string()));
        }
    }
    if already {
        return Err(SkipReason::AlreadyInjected);
    }
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for p in c.ports.iter().flatten() {
            if let Some((_, what)) = PROXY_PORTS
                .iter()
                .find(|(port, _)| i32::from(*port) == p.container_port)
            {
                return Err(SkipReason::Invalid(format!(
                    "container {:?} uses port {}, the proxy's {what} port",
                    c.name, p.container_port
                )));
            }
        }
    }
    if let Some(v) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| super::build::VOLUMES.contains(&v.name.as_str()))
    {
        return Err(SkipReason::Invalid(format!(
            "the pod already has a volume named {:?}, which the proxy needs",
            v.name
        )));
    }
    settings(pod_annotations, &ns.annotations, cfg).map_err(SkipReason::Invalid)
}

/// `trellis.dev/inject`: the pod's value wins over its namespace's.
fn enabled(
    pod: &BTreeMap<String, String>,
    ns: &BTreeMap<String, String>,
) -> Result<(), SkipReason> {
    let value = |from: &BTreeMap<String, String>, whose: &str| match from
        .get(INJECT_ANNOTATION)
        .map(|v| v.trim())
    {
        None => Ok(None),
        Some("enabled") => Ok(Some(true)),
        Some("disabled") => Ok(Some(false)),
        Some(other) => Err(SkipReason::Invalid(format!(
            "the {whose}'s {INJECT_ANNOTATION} is {other:?}; use enabled or disabled"
        ))),
    };
    match value(pod, "pod")? {
        Some(true) => Ok(()),
        Some(false) => Err(SkipReason::OptedOut),
        None => match value(ns, "namespace")? {
            Some(true) => Ok(()),
            _ => Err(SkipReason::NotEnabled),
        },
    }
}

/// Resolves every override (pod over namespace over configuration),
/// reporting all bad ones together.
fn settings(
    pod: &BTreeMap<String, String>,
    ns: &BTreeMap<String, String>,
    cfg: &InjectorConfig,
) -> Result<Settings, String> {
    let mut problems = Vec::new();
    for (key, whose) in pod
        .keys()
        .map(|k| (k, "pod"))
        .chain(ns.keys().map(|k| (k, "namespace")))
    {
        if let Some(name) = key.strip_prefix(CONFIG_PREFIX) {
            if !OVERRIDES.contains(&name) {
                problems.push(format!(
                    "unknown annotation {key} on the {whose} (known: {})",
                    OVERRIDES.map(|o| format!("{CONFIG_PREFIX}{o}")).join(", ")
                ));
            }
        }
    }
    let get = |name: &str| -> Option<(String, String)> {
        let key = format!("{CONFIG_PREFIX}{name}");
        pod.get(&key)
            .or_else(|| ns.get(&key))
            .map(|v| (key, v.trim().to_string()))
    };
    let mut ports = |name: &str, base: &str| -> String {
        let mut lists: Vec<String> = Vec::new();
        if !base.is_empty() {
            lists.push(base.to_string());
        }
        if let Some((key, value)) = get(name) {
            match parse_ports(&value) {
                Ok(_) => lists.push(value),
                Err(e) => problems.push(format!("{key}: {e}")),
            }
        }
        normalise_ports(&lists.join(","))
    };
    let skip_inbound_ports = ports("skip-inbound-ports", "");
    let skip_outbound_ports = ports("skip-outbound-ports", "");
    let opaque_ports = ports("opaque-ports", &cfg.proxy.opaque_ports);

    let log_level = match get("proxy-log-level") {
        Some((key, v)) if !is_log_filter(&v) => {
            problems.push(format!(
                "{key}: {v:?} is not a log filter (e.g. info, debug, warn,trellis_proxy=debug)"
            ));
            cfg.proxy.log_level.clone()
        }
        Some((_, v)) => v,
        None => cfg.proxy.log_level.clone(),
    };
    let default_inbound_policy = match get("default-inbound-policy") {
        Some((key, v)) => v.parse().unwrap_or_else(|e: String| {
            problems.push(format!("{key}: {e}"));
            cfg.proxy.default_inbound_policy
        }),
        None => cfg.proxy.default_inbound_policy,
    };
    let mut resources = cfg.proxy.resources.clone();
    for (name, slot) in [
        ("proxy-cpu-request", &mut resources.cpu_request),
        ("proxy-memory-request", &mut resources.memory_request),
        ("proxy-cpu-limit", &mut resources.cpu_limit),
        ("proxy-memory-limit", &mut resources.memory_limit),
    ] {
        if let Some((key, v)) = get(name) {
            if crate::quantity::is_quantity(&v) {
                *slot = v;
            } else {
                problems.push(format!("{key}: {v:?} is not a Kubernetes quantity"));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(Settings {
        native_sidecar: cfg.proxy.native_sidecar,
        skip_inbound_ports,
        skip_outbound_ports,
        opaque_ports,
        log_level,
        default_inbound_policy,
        resources,
    })
}

/// `"443, 8080-8090,443"` → `"443,8080-8090"`: the order given, spaces and
/// repeats dropped. Only called on lists `parse_ports` accepted.
fn normalise_ports(list: &str) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen.join(",")
}

/// A tracing-subscriber filter: directives of `target=level` or `level`.
fn is_log_filter(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_=,:.-".contains(c))
}
