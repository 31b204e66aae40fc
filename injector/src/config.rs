//! What the injector writes into pods: images, addresses of the control
//! plane, resources, the sidecar mode and the capture mode. One YAML document, rendered by
//! the chart into a ConfigMap (`config.yaml`) and read by both the webhook
//! and `trellis inject --config`. Every field has a default, so an empty
//! document is a valid configuration for a chart installed in `trellis`.

use serde::{Deserialize, Serialize};
use trellis_core::policy::DefaultPolicy;

use crate::floor::{FloorConfig, OutboundMtls};

/// The injector's configuration. Unknown fields are refused, so a typo in
/// the chart's ConfigMap stops the injector at start-up with its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct InjectorConfig {
    /// The control plane's namespace: its pods are never injected.
    pub control_plane_namespace: String,
    /// The SPIFFE trust domain of workload identities.
    pub trust_domain: String,
    /// Namespaces never injected besides `kube-system` and the control
    /// plane's own.
    pub excluded_namespaces: Vec<String>,
    pub proxy: ProxyConfig,
    pub init: InitConfig,
    /// The cluster-wide floor that pod and namespace overrides cannot
    /// lower (see [`crate::floor`]); empty: none.
    pub floor: FloorConfig,
}

/// The `trellis-proxy` sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Image reference, `name:tag` (or `name@digest`).
    pub image: String,
    pub image_pull_policy: String,
    /// Recorded in the pod's `trellis.dev/proxy-version` annotation.
    pub version: String,
    /// `true`: an init container with `restartPolicy: Always` (Kubernetes
    /// 1.29+); `false`: a plain container, for older clusters.
    pub native_sidecar: bool,
    /// Log filter (`config.trellis.dev/proxy-log-level` overrides it).
    pub log_level: String,
    pub resources: Resources,
    /// `host:port` of trellis-identity.
    pub identity_addr: String,
    /// The identity service's own SPIFFE ID, checked on its certificate.
    /// Empty: `spiffe://<trustDomain>/ns/<controlPlaneNamespace>/sa/trellis-identity`.
    pub identity_server_id: String,
    /// `host:port` of trellis-controller.
    pub controller_addr: String,
    /// The ConfigMap holding the trust roots (key `roots.pem`).
    pub trust_roots_config_map: String,
    /// The mesh-wide default inbound policy
    /// (`config.trellis.dev/default-inbound-policy` overrides it).
    pub default_inbound_policy: DefaultPolicy,
    /// The mesh-wide outbound mTLS mode, `opportunistic` or `required`
    /// (`config.trellis.dev/outbound-mtls` overrides it).
    pub outbound_mtls: OutboundMtls,
    /// Addresses and CIDRs the proxy may reach in plaintext under
    /// `outboundMtls: required` (`TRELLIS_PROXY_PLAINTEXT_DESTINATIONS`).
    pub plaintext_destinations: String,
    /// Ports always treated as opaque TCP, added to the pod's own
    /// `config.trellis.dev/opaque-ports`.
    pub opaque_ports: String,
    /// Lifetime of the projected ServiceAccount token, in seconds.
    pub token_expiration_seconds: i64,
    /// Request spans to an OTLP/gRPC collector; off without one.
    pub tracing: TracingConfig,
}

/// The chart's `proxy.tracing`: where every injected proxy sends its
/// request spans (`config.trellis.dev/trace-collector` and
/// `trace-sampling` override each for a namespace or pod).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TracingConfig {
    /// `host:port` of the collector's OTLP/gRPC port; empty: tracing off.
    pub collector: String,
    /// The share of new traces sampled, 0 to 1; empty: the proxy's default
    /// (0.01).
    pub sampling: String,
}

/// Requests and limits; an empty string leaves that one unset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

/// The `trellis-init` init container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct InitConfig {
    /// Who installs the pod's capture rules (the chart's `cni.enabled`
    /// sets `cni`).
    pub capture_mode: CaptureMode,
    /// Empty: the proxy's image (`trellis-proxy init` lives in it).
    pub image: String,
    /// `false` runs iptables as uid 65534 with NET_ADMIN and NET_RAW; it
    /// needs a runtime that grants the capabilities to a non-root user (the
    /// image's iptables binaries carry file capabilities for this).
    /// Init-container mode only: in CNI mode `trellis-init` is always the
    /// unprivileged check, as uid 65534.
    pub run_as_root: bool,
    /// `auto`, `legacy` or `nft`, passed to `trellis-proxy init` (in CNI
    /// mode, read from the check container's arguments by the plugin).
    pub iptables_mode: String,
}

/// Who installs a meshed pod's traffic-capture rules. Either way the
/// injector adds `trellis-init` as the pod's first init container, and its
/// arguments (`init`, `--proxy-uid`, `--iptables-mode`, the skip ports)
/// are the one statement of the pod's capture rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// `trellis-init` runs `trellis-proxy init` and writes the rules
    /// itself: it needs NET_ADMIN and NET_RAW, which Pod Security
    /// `baseline` and `restricted` refuse.
    #[default]
    Init,
    /// The Trellis CNI plugin (`trellis-cni`, chained after the cluster's
    /// own, installed on every node by the chart's DaemonSet) writes the
    /// rules when the pod's network is set up, reading them from
    /// `trellis-init`'s arguments. `trellis-init` runs `trellis-proxy init
    /// --check`: unprivileged, it only confirms the redirect is in place and
    /// fails the pod, saying how to fix it, when the node lacks the plugin.
    /// The pod then passes `restricted`.
    Cni,
}

impl CaptureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Init => "init",
            Self::Cni => "cni",
        }
    }
}

impl Default for InjectorConfig {
    fn default() -> Self {
        Self {
            control_plane_namespace: "trellis-system".into(),
            trust_domain: "cluster.local".into(),
            excluded_namespaces: Vec::new(),
            proxy: ProxyConfig::default(),
            init: InitConfig::default(),
            floor: FloorConfig::default(),
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        Self {
            image: format!("ghcr.io/trellis-mesh/trellis-proxy:{version}"),
            image_pull_policy: "IfNotPresent".into(),
            version: version.into(),
            native_sidecar: true,
            log_level: "info".into(),
            resources: Resources::default(),
            identity_addr: "trellis-identity.trellis-system.svc.cluster.local:7155".into(),
            identity_server_id: String::new(),
            controller_addr: "trellis-controller.trellis-system.svc.cluster.local:7156".into(),
            trust_roots_config_map: "trellis-trust-roots".into(),
            default_inbound_policy: DefaultPolicy::AllUnauthenticated,
            outbound_mtls: OutboundMtls::Opportunistic,
            plaintext_destinations: String::new(),
            opaque_ports: String::new(),
            token_expiration_seconds: 3600,
            tracing: TracingConfig::default(),
        }
    }
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu_request: "100m".into(),
            memory_request: "20Mi".into(),
            cpu_limit: String::new(),
            memory_limit: "250Mi".into(),
        }
    }
}

impl Default for InitConfig {
    fn default() -> Self {
        Self {
            capture_mode: CaptureMode::Init,
            image: String::new(),
            run_as_root: true,
            iptables_mode: "auto".into(),
        }
    }
}

impl InjectorConfig {
    /// Parses and checks a YAML document; the error names every problem.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let cfg: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| format!("injector config: {e}"))?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: non-empty names, `host:port` addresses,
    /// quantities and port lists that Kubernetes and the proxy accept.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("controlPlaneNamespace", &self.control_plane_namespace),
            ("trustDomain", &self.trust_domain),
            ("proxy.image", &self.proxy.image),
            ("proxy.version", &self.proxy.version),
            (
                "proxy.trustRootsConfigMap",
                &self.proxy.trust_roots_config_map,
            ),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("{name} must not be empty"));
            }
        }
        for (name, value) in [
            ("proxy.identityAddr", &self.proxy.identity_addr),
            ("proxy.controllerAddr", &self.proxy.controller_addr),
        ] {
            if !is_host_port(value) {
                problems.push(format!("{name} {value:?} must be host:port"));
            }
        }
        use trellis_core::contract::trace::{parse_collector, parse_sampling};
        let tracing = &self.proxy.tracing;
        if !tracing.collector.trim().is_empty() {
            if let Err(e) = parse_collector(&tracing.collector) {
                problems.push(format!(
                    "proxy.tracing.collector {:?} {e}",
                    tracing.collector
                ));
            }
        }
        if !tracing.sampling.trim().is_empty() {
            if let Err(e) = parse_sampling(&tracing.sampling) {
                problems.push(format!("proxy.tracing.sampling {:?} {e}", tracing.sampling));
            }
        }
        if !["Always", "IfNotPresent", "Never"].contains(&self.proxy.image_pull_policy.as_str()) {
            problems.push(format!(
                "proxy.imagePullPolicy {:?} must be Always, IfNotPresent or Never",
                self.proxy.image_pull_policy
            ));
        }
        if !["auto", "legacy", "nft"].contains(&self.init.iptables_mode.as_str()) {
            problems.push(format!(
                "init.iptablesMode {:?} must be auto, legacy or nft",
                self.init.iptables_mode
            ));
        }
        if self.init.capture_mode == CaptureMode::Cni && !self.proxy.native_sidecar {
            problems.push(
                "init.captureMode cni needs proxy.nativeSidecar true: the CNI plugin installs \
                 the capture rules before any container starts, so the pod's own init containers \
                 would run with their connections redirected to a proxy that, as a plain \
                 container, starts only after them"
                    .to_string(),
            );
        }
        if !self.proxy.identity_server_id.is_empty()
            && self
                .proxy
                .identity_server_id
                .parse::<trellis_core::spiffe::SpiffeId>()
                .is_err()
        {
            problems.push(format!(
                "proxy.identityServerId {:?} is not a SPIFFE ID",
                self.proxy.identity_server_id
            ));
        }
        if !(600..=86_400).contains(&self.proxy.token_expiration_seconds) {
            problems.push(format!(
                "proxy.tokenExpirationSeconds {} must be 600 to 86400 (the API server's bounds)",
                self.proxy.token_expiration_seconds
            ));
        }
        if let Err(e) = trellis_core::config::parse_ports(&self.proxy.opaque_ports) {
            problems.push(format!("proxy.opaquePorts: {e}"));
        }
        for item in self
            .proxy
            .plaintext_destinations
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            if !is_ip_or_cidr(item) {
                problems.push(format!(
                    "proxy.plaintextDestinations: {item:?} is not an IP address or CIDR"
                ));
            }
        }
        let r = &self.proxy.resources;
        for (name, value) in [
            ("proxy.resources.cpuRequest", &r.cpu_request),
            ("proxy.resources.memoryRequest", &r.memory_request),
            ("proxy.resources.cpuLimit", &r.cpu_limit),
            ("proxy.resources.memoryLimit", &r.memory_limit),
        ] {
            if !value.is_empty() && !crate::quantity::is_quantity(value) {
                problems.push(format!("{name} {value:?} is not a Kubernetes quantity"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("injector config: {}", problems.join("; ")))
        }
    }

    /// The identity service's SPIFFE ID, derived when not configured.
    pub fn identity_server_id(&self) -> String {
        if self.proxy.identity_server_id.is_empty() {
            format!(
                "spiffe://{}/ns/{}/sa/trellis-identity",
                self.trust_domain, self.control_plane_namespace
            )
        } else {
            self.proxy.identity_server_id.clone()
        }
    }

    /// The init container's image.
    pub fn init_image(&self) -> &str {
        if self.init.image.is_empty() {
            &self.proxy.image
        } else {
            &self.init.image
        }
    }
}

/// `10.0.0.1`, `10.0.0.0/8`, `fd00::/8`.
fn is_ip_or_cidr(s: &str) -> bool {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= max))
}

fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_is_the_default() {
        assert_eq!(InjectorConfig::from_yaml(""), Ok(InjectorConfig::default()));
        assert_eq!(
            InjectorConfig::default().identity_server_id(),
            "spiffe://cluster.local/ns/trellis-system/sa/trellis-identity"
        );
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let err = InjectorConfig::from_yaml("proxy:\n  imagee: x\n").unwrap_err();
        assert!(err.contains("imagee"), "{err}");
    }

    #[test]
    fn every_problem_is_reported() {
        let err = InjectorConfig::from_yaml(
            "proxy:\n  controllerAddr: nohost\n  imagePullPolicy: Sometimes\n  resources: {cpuRequest: lots}\n  opaquePorts: '70000'\n",
        )
        .unwrap_err();
        for needle in [
            "controllerAddr",
            "imagePullPolicy",
            "cpuRequest",
            "opaquePorts",
        ] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
    }

    #[test]
    fn floor_and_outbound_mtls_are_read() {
        let cfg = InjectorConfig::from_yaml(
            "proxy:\n  outboundMtls: required\n  plaintextDestinations: 10.96.0.10/32, fd00::1\nfloor:\n  enforcement: warn\n  defaultInboundPolicy: all-authenticated\n  skipInboundPorts: none\n  skipOutboundPorts: 5432\n  allowOptOut: false\n",
        )
        .unwrap();
        assert_eq!(cfg.proxy.outbound_mtls, OutboundMtls::Required);
        assert_eq!(cfg.floor.enforcement, Some(crate::floor::Enforcement::Warn));
        assert_eq!(cfg.floor.skip_outbound_ports.to_string(), "5432");
        for (bad, needle) in [
            (
                "proxy:\n  plaintextDestinations: 10.0.0.0/33\n",
                "plaintextDestinations",
            ),
            ("proxy:\n  outboundMtls: maybe\n", "maybe"),
            ("floor:\n  skipInboundPorts: some\n", "some"),
            ("floor:\n  enforcement: loud\n", "loud"),
        ] {
            let err = InjectorConfig::from_yaml(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn the_capture_mode_is_read_and_checked() {
        assert_eq!(
            InjectorConfig::default().init.capture_mode,
            CaptureMode::Init
        );
        let cfg = InjectorConfig::from_yaml("init:\n  captureMode: cni\n").unwrap();
        assert_eq!(cfg.init.capture_mode, CaptureMode::Cni);
        assert_eq!(cfg.init.iptables_mode, "auto", "the rest keeps its default");
        let err = InjectorConfig::from_yaml("init:\n  captureMode: ebpf\n").unwrap_err();
        assert!(err.contains("ebpf") && err.contains("cni"), "{err}");
        let err = InjectorConfig::from_yaml(
            "init:\n  captureMode: cni\nproxy:\n  nativeSidecar: false\n",
        )
        .unwrap_err();
        assert!(
            err.contains("init.captureMode cni needs proxy.nativeSidecar true"),
            "{err}"
        );
    }

    #[test]
    fn partial_documents_keep_other_defaults() {
        let cfg = InjectorConfig::from_yaml("proxy:\n  nativeSidecar: false\n").unwrap();
        assert!(!cfg.proxy.native_sidecar);
        assert_eq!(cfg.proxy.resources, Resources::default());
        assert_eq!(cfg.init_image(), cfg.proxy.image);
    }
}
