//! Whether to inject, and the settings the sidecar gets: the pod's and its
//! namespace's `config.trellis.dev/*` overrides (the pod's win) resolved
//! over the injector's configuration, every one checked, then held to the
//! floor ([`crate::floor`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use trellis_core::config::parse_ports;
use trellis_core::contract::PROXY_PORTS;
use trellis_core::policy::DefaultPolicy;

use super::{
    NamespaceInfo, SkipReason, CONFIG_PREFIX, INIT_CONTAINER, INJECTED_ANNOTATION,
    INJECT_ANNOTATION, PROXY_CONTAINER, WEBHOOK_LABEL,
};
use crate::config::{InjectorConfig, Resources};
use crate::floor::{
    check_mtls, check_policy, stricter_policy, Bound, Enforcement, Floor, FloorKind, OutboundMtls,
    PortAllowance, Refusal, Violation, FLOOR_ANNOTATIONS,
};

/// Overrides read from `config.trellis.dev/<name>`.
const OVERRIDES: [&str; 13] = [
    "skip-inbound-ports",
    "skip-outbound-ports",
    "opaque-ports",
    "proxy-log-level",
    "proxy-cpu-request",
    "proxy-memory-request",
    "proxy-cpu-limit",
    "proxy-memory-limit",
    "default-inbound-policy",
    "outbound-mtls",
    "trace-collector",
    "trace-sampling",
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
    pub outbound_mtls: OutboundMtls,
    pub resources: Resources,
    /// `http://host:port` of the trace collector; empty: tracing off.
    pub trace_collector: String,
    /// The share of new traces sampled; empty: the proxy's default.
    pub trace_sampling: String,
}

/// A pod to inject: its settings, and what the floor changed (warned
/// about, or refused under `enforcement: deny`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Decided {
    pub settings: Settings,
    pub violations: Vec<Violation>,
    pub enforcement: Enforcement,
    /// Whether the pod may opt out (the floor does not forbid it).
    pub opt_out_allowed: bool,
}

pub(super) fn decide(pod: &Pod, ns: &NamespaceInfo, cfg: &InjectorConfig) -> Result<Decided, Stop> {
    if ns.name == "kube-system"
        || cfg.excluded_namespaces.contains(&ns.name)
        || ns.labels.get(WEBHOOK_LABEL).map(String::as_str) == Some("disabled")
    {
        return Err(Stop::Skip(SkipReason::ExcludedNamespace));
    }
    if ns.name == cfg.control_plane_namespace {
        return Err(Stop::Skip(SkipReason::ControlPlane));
    }
    let empty = BTreeMap::new();
    let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let floor = Floor::resolve(&cfg.floor, &ns.annotations);
    let opted_out = enabled(pod_annotations, &ns.annotations).map_err(Stop::Skip)?;
    // A namespace floor that cannot be read refuses its pods: admitting
    // them under a floor nobody meant would be the silent failure.
    let floor = floor.map_err(|problems| {
        Stop::Refuse(Refusal {
            violations: problems
                .into_iter()
                .map(|message| Violation {
                    kind: FloorKind::InvalidFloor,
                    message,
                })
                .collect(),
        })
    })?;
    let mut violations = Vec::new();
    if let Some(opt_out) = opted_out {
        match &floor.no_opt_out {
            Some(source) => violations.push(Violation {
                kind: FloorKind::OptOut,
                message: format!(
                    "{INJECT_ANNOTATION}: {opt_out:?} on the pod opts out of a namespace that says enabled; {source} forbids opting out"
                ),
            }),
            None => return Err(Stop::Skip(SkipReason::OptedOut)),
        }
    }

    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| SkipReason::Invalid("the pod has no spec".into()))
        .map_err(Stop::Skip)?;
    if spec.host_network == Some(true) {
        return Err(Stop::Skip(SkipReason::HostNetwork));
    }
    if spec.os.as_ref().is_some_and(|os| os.name == "windows") {
        return Err(Stop::Skip(SkipReason::Invalid(
            "a Windows pod: the proxy and its capture rules are Linux-only".into(),
        )));
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
            return Err(Stop::Skip(SkipReason::OtherMesh(name.to_string())));
        }
    }
    if already {
        return Err(Stop::Skip(SkipReason::AlreadyInjected));
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
                return Err(Stop::Skip(SkipReason::Invalid(format!(
                    "container {:?} uses port {}, the proxy's {what} port",
                    c.name, p.container_port
                ))));
            }
        }
    }
    if let Some(v) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| super::build::VOLUMES.contains(&v.name.as_str()))
    {
        return Err(Stop::Skip(SkipReason::Invalid(format!(
            "the pod already has a volume named {:?}, which the proxy needs",
            v.name
        ))));
    }
    let resolved = settings(pod_annotations, &ns.annotations, cfg, &floor);
    if !resolved.problems.is_empty() {
        if !floor.is_set() {
            return Err(Stop::Skip(SkipReason::Invalid(
                resolved.problems.join("; "),
            )));
        }
        // Under a floor a bad override never leaves the pod unmeshed.
        violations.extend(resolved.problems.into_iter().map(|p| Violation {
            kind: FloorKind::InvalidOverride,
            message: format!("{p} (a floor applies: the value is not used)"),
        }));
    }
    violations.extend(resolved.violations);
    Ok(Decided {
        settings: resolved.settings,
        violations,
        enforcement: floor.enforcement,
        opt_out_allowed: floor.no_opt_out.is_none(),
    })
}

/// Why a pod is not injected: left alone, or refused by the floor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stop {
    Skip(SkipReason),
    Refuse(Refusal),
}

/// `trellis.dev/inject`: the pod's value wins over its namespace's.
/// `Some(value)` when the pod opts out of a namespace that opted in (the
/// floor may forbid it).
fn enabled(
    pod: &BTreeMap<String, String>,
    ns: &BTreeMap<String, String>,
) -> Result<Option<String>, SkipReason> {
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
    let ns_value = value(ns, "namespace");
    match value(pod, "pod")? {
        Some(true) => Ok(None),
        Some(false) if ns_value == Ok(Some(true)) => Ok(Some("disabled".into())),
        Some(false) => Err(SkipReason::OptedOut),
        None => match ns_value? {
            Some(true) => Ok(None),
            _ => Err(SkipReason::NotEnabled),
        },
    }
}

/// Resolved overrides: the settings (bad values replaced by the
/// configuration's, values below the floor by the floor's), the bad
/// values, and what fell below the floor.
struct Resolved {
    settings: Settings,
    problems: Vec<String>,
    violations: Vec<Violation>,
}

/// Resolves every override (pod over namespace over configuration, then
/// raised to the floor), reporting all bad ones together.
fn settings(
    pod: &BTreeMap<String, String>,
    ns: &BTreeMap<String, String>,
    cfg: &InjectorConfig,
    floor: &Floor,
) -> Resolved {
    let mut problems = Vec::new();
    let mut violations = Vec::new();
    for (key, whose) in pod
        .keys()
        .map(|k| (k, "pod"))
        .chain(ns.keys().map(|k| (k, "namespace")))
    {
        if FLOOR_ANNOTATIONS.contains(&key.as_str()) {
            if whose == "pod" {
                problems.push(format!(
                    "{key} on the pod: a floor is set on the Namespace (or cluster-wide), never by the pod it binds"
                ));
            }
            continue;
        }
        if let Some(name) = key.strip_prefix(CONFIG_PREFIX) {
            if !OVERRIDES.contains(&name) {
                problems.push(format!(
                    "unknown annotation {key} on the {whose} (known: {})",
                    OVERRIDES.map(|o| format!("{CONFIG_PREFIX}{o}")).join(", ")
                ));
            }
        }
    }
    // (annotation, whose, value)
    let get = |name: &str| -> Option<(String, &'static str, String)> {
        let key = format!("{CONFIG_PREFIX}{name}");
        match pod.get(&key) {
            Some(v) => Some((key, "pod", v.trim().to_string())),
            None => ns
                .get(&key)
                .map(|v| (key, "namespace", v.trim().to_string())),
        }
    };
    let mut skip_ports = |name: &str, bound: &Option<Bound<PortAllowance>>| -> String {
        let Some((key, whose, value)) = get(name) else {
            return String::new();
        };
        let ranges = match parse_ports(&value) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("{key}: {e}"));
                return String::new();
            }
        };
        let Some(bound) = bound else {
            return normalise_ports(&value);
        };
        let (allowed, refused) = bound.value.check(&ranges);
        if !refused.is_empty() {
            let list = |r: &[trellis_core::config::PortRange]| {
                r.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            violations.push(Violation {
                kind: FloorKind::SkipPorts,
                message: format!(
                    "{key}: {value:?} on the {whose} skips ports {}, which the floor does not allow (floor {name}: {}, set by {})",
                    list(&refused),
                    bound.value,
                    bound.source
                ),
            });
        }
        normalise_ports(&list_of(&allowed))
    };
    let skip_inbound_ports = skip_ports("skip-inbound-ports", &floor.skip_inbound_ports);
    let skip_outbound_ports = skip_ports("skip-outbound-ports", &floor.skip_outbound_ports);
    let opaque_ports = {
        let mut lists: Vec<String> = Vec::new();
        if !cfg.proxy.opaque_ports.is_empty() {
            lists.push(cfg.proxy.opaque_ports.clone());
        }
        if let Some((key, _, value)) = get("opaque-ports") {
            match parse_ports(&value) {
                Ok(_) => lists.push(value),
                Err(e) => problems.push(format!("{key}: {e}")),
            }
        }
        normalise_ports(&lists.join(","))
    };

    let log_level = match get("proxy-log-level") {
        Some((key, _, v)) if !is_log_filter(&v) => {
            problems.push(format!(
                "{key}: {v:?} is not a log filter (e.g. info, debug, warn,trellis_proxy=debug)"
            ));
            cfg.proxy.log_level.clone()
        }
        Some((_, _, v)) => v,
        None => cfg.proxy.log_level.clone(),
    };
    let floor_policy = floor.default_inbound_policy.as_ref();
    let raised_policy = |p: DefaultPolicy| match floor_policy {
        Some(b) => stricter_policy(p, b.value),
        None => p,
    };
    let default_inbound_policy = match get("default-inbound-policy") {
        Some((key, whose, v)) => match v.parse::<DefaultPolicy>() {
            Ok(asked) => {
                if let (true, Some(b)) = (
                    check_policy(asked, &floor.default_inbound_policy),
                    floor_policy,
                ) {
                    violations.push(Violation {
                        kind: FloorKind::DefaultInboundPolicy,
                        message: format!(
                            "{key}: {v:?} on the {whose} is weaker than the floor's {} (set by {})",
                            b.value, b.source
                        ),
                    });
                }
                raised_policy(asked)
            }
            Err(e) => {
                problems.push(format!("{key}: {e}"));
                raised_policy(cfg.proxy.default_inbound_policy)
            }
        },
        None => raised_policy(cfg.proxy.default_inbound_policy),
    };
    let floor_mtls = floor.outbound_mtls.as_ref();
    let raised_mtls = |m: OutboundMtls| match floor_mtls {
        Some(b) => m.max(b.value),
        None => m,
    };
    let outbound_mtls = match get("outbound-mtls") {
        Some((key, whose, v)) => match v.parse::<OutboundMtls>() {
            Ok(asked) => {
                if let (true, Some(b)) = (check_mtls(asked, &floor.outbound_mtls), floor_mtls) {
                    violations.push(Violation {
                        kind: FloorKind::OutboundMtls,
                        message: format!(
                            "{key}: {v:?} on the {whose} is weaker than the floor's {} (set by {})",
                            b.value, b.source
                        ),
                    });
                }
                raised_mtls(asked)
            }
            Err(e) => {
                problems.push(format!("{key}: {e}"));
                raised_mtls(cfg.proxy.outbound_mtls)
            }
        },
        None => raised_mtls(cfg.proxy.outbound_mtls),
    };
    let mut resources = cfg.proxy.resources.clone();
    for (name, slot) in [
        ("proxy-cpu-request", &mut resources.cpu_request),
        ("proxy-memory-request", &mut resources.memory_request),
        ("proxy-cpu-limit", &mut resources.cpu_limit),
        ("proxy-memory-limit", &mut resources.memory_limit),
    ] {
        if let Some((key, _, v)) = get(name) {
            if crate::quantity::is_quantity(&v) {
                *slot = v;
            } else {
                problems.push(format!("{key}: {v:?} is not a Kubernetes quantity"));
            }
        }
    }
    use trellis_core::contract::trace::{parse_collector, parse_sampling};
    let chart = &cfg.proxy.tracing;
    let chart_collector = parse_collector(&chart.collector).unwrap_or_default();
    let trace_collector = match get("trace-collector") {
        Some((_, _, v)) if v.trim().is_empty() => String::new(),
        Some((key, _, v)) => match parse_collector(&v) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("{key}: {v:?} {e}"));
                chart_collector
            }
        },
        None => chart_collector,
    };
    let trace_sampling = match get("trace-sampling") {
        Some((key, _, v)) => match parse_sampling(&v) {
            Ok(_) => v.trim().to_string(),
            Err(e) => {
                problems.push(format!("{key}: {v:?} {e}"));
                chart.sampling.trim().to_string()
            }
        },
        None => chart.sampling.trim().to_string(),
    };
    Resolved {
        settings: Settings {
            native_sidecar: cfg.proxy.native_sidecar,
            skip_inbound_ports,
            skip_outbound_ports,
            opaque_ports,
            log_level,
            default_inbound_policy,
            outbound_mtls,
            resources,
            trace_collector,
            trace_sampling,
        },
        problems,
        violations,
    }
}

fn list_of(ranges: &[trellis_core::config::PortRange]) -> String {
    ranges
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
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
