//! The controller's configuration: `TRELLIS_CONTROLLER_*` variables, read
//! through a [`Source`] with every error reported together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use trellis_core::config::{
    serialize_display, serialize_duration, ConfigErrors, Reader, Source, Variable,
};
use trellis_core::service::Settings as ServiceSettings;

use crate::index::{DefaultPolicy, Settings};

/// Every variable: (name, default, meaning). `--help` prints this table.
pub const VARIABLES: &[Variable] = &[
    (
        SOURCE,
        "kubernetes",
        "where objects come from: kubernetes (watch the API server) or file (FILE)",
    ),
    (
        FILE,
        "",
        "with SOURCE=file: a Kubernetes List (YAML or JSON) or multi-document YAML of Namespaces, Pods, Services, EndpointSlices, HTTPRoutes, GRPCRoutes and AuthorizationPolicies; re-read when it changes",
    ),
    (
        FILE_POLL_INTERVAL,
        "250ms",
        "with SOURCE=file: how often the file's hash is checked (duration)",
    ),
    (
        LISTEN,
        "0.0.0.0:7156",
        "address of the Discovery gRPC listener (plaintext h2)",
    ),
    (
        ADMIN_LISTEN,
        "0.0.0.0:7196",
        "address of the admin server (/metrics, /ready, /live, /config, /routes, /warnings)",
    ),
    (
        TRUST_DOMAIN,
        "cluster.local",
        "SPIFFE trust domain of workload identities",
    ),
    (
        CLUSTER_DOMAIN,
        "cluster.local",
        "DNS suffix of service authorities (NAME.NS.svc.CLUSTER_DOMAIN:PORT)",
    ),
    (
        DEFAULT_INBOUND_POLICY,
        "all-unauthenticated",
        "mesh-wide default inbound policy: all-unauthenticated, all-authenticated, deny or audit",
    ),
    (
        NAMESPACE,
        "trellis-system",
        "the control plane's own namespace (the chart sets it from the pod's metadata.namespace): where the trust roots source is, never given a copy",
    ),
    (
        TRUST_ROOTS_CONFIGMAP,
        "trellis-trust-roots",
        "name of the trust roots ConfigMap (key roots.pem) in NAMESPACE, and of its copies",
    ),
    (
        DISTRIBUTE_TRUST_ROOTS,
        "true",
        "with SOURCE=kubernetes: copy the trust roots ConfigMap into every namespace that may hold injected pods and keep the copies current (true or false)",
    ),
    (
        TRUST_ROOTS_OWNER,
        "trellis-controller",
        "the ClusterRole every trust roots copy names as its owner (an ownerReference), so that deleting it (helm uninstall) has the garbage collector delete the copies; empty: no owner",
    ),
    (
        SHUTDOWN_GRACE,
        "10s",
        "after SIGTERM, how long open streams may take to end (duration)",
    ),
    (
        LOG,
        "info",
        "log filter, tracing-subscriber syntax; kube_client and kube_runtime are held at error unless the filter names them (the controller logs each watch's failures itself, once per change)",
    ),
    (LOG_FORMAT, "plain", "log format: plain or json"),
];

/// The prefix of every variable.
const PREFIX: &str = "TRELLIS_CONTROLLER_";
pub const SOURCE: &str = "TRELLIS_CONTROLLER_SOURCE";
pub const FILE: &str = "TRELLIS_CONTROLLER_FILE";
pub const FILE_POLL_INTERVAL: &str = "TRELLIS_CONTROLLER_FILE_POLL_INTERVAL";
pub const LISTEN: &str = "TRELLIS_CONTROLLER_LISTEN";
pub const ADMIN_LISTEN: &str = "TRELLIS_CONTROLLER_ADMIN_LISTEN";
pub const TRUST_DOMAIN: &str = "TRELLIS_CONTROLLER_TRUST_DOMAIN";
pub const CLUSTER_DOMAIN: &str = "TRELLIS_CONTROLLER_CLUSTER_DOMAIN";
pub const DEFAULT_INBOUND_POLICY: &str = "TRELLIS_CONTROLLER_DEFAULT_INBOUND_POLICY";
pub const NAMESPACE: &str = "TRELLIS_CONTROLLER_NAMESPACE";
pub const TRUST_ROOTS_CONFIGMAP: &str = "TRELLIS_CONTROLLER_TRUST_ROOTS_CONFIGMAP";
pub const DISTRIBUTE_TRUST_ROOTS: &str = "TRELLIS_CONTROLLER_DISTRIBUTE_TRUST_ROOTS";
pub const TRUST_ROOTS_OWNER: &str = "TRELLIS_CONTROLLER_TRUST_ROOTS_OWNER";
pub const SHUTDOWN_GRACE: &str = "TRELLIS_CONTROLLER_SHUTDOWN_GRACE";
pub const LOG: &str = "TRELLIS_CONTROLLER_LOG";
pub const LOG_FORMAT: &str = "TRELLIS_CONTROLLER_LOG_FORMAT";

/// Added to the log filter unless it names these targets: kube-client logs
/// every refused request at WARN (`Unsuccessful data error parse: 404 page
/// not found`) and kube-runtime every 403, once per retry; the controller
/// says the same once per change of a watch's state ([`crate::watches`]).
pub const QUIET_KUBE: &str = "kube_client=error,kube_runtime=error";

/// Where the controller's objects come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Kubernetes,
    File,
}

impl std::str::FromStr for SourceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kubernetes" => Ok(Self::Kubernetes),
            "file" => Ok(Self::File),
            other => Err(format!("unknown source {other:?}: use kubernetes or file")),
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kubernetes => "kubernetes",
            Self::File => "file",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    #[serde(serialize_with = "serialize_display")]
    pub source: SourceKind,
    pub file: Option<PathBuf>,
    #[serde(serialize_with = "serialize_duration")]
    pub file_poll_interval: Duration,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub trust_domain: String,
    pub cluster_domain: String,
    #[serde(serialize_with = "serialize_display")]
    pub default_inbound_policy: DefaultPolicy,
    pub namespace: String,
    pub trust_roots_configmap: String,
    pub distribute_trust_roots: bool,
    /// The trust roots copies' owner ClusterRole; `None`: no owner.
    pub trust_roots_owner: Option<String>,
    /// `SHUTDOWN_GRACE`, `LOG` (with [`QUIET_KUBE`] added), `LOG_FORMAT`.
    #[serde(flatten)]
    pub service: ServiceSettings,
}

impl Config {
    /// Reads the configuration, reporting every bad variable together.
    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(src);
        let mut cfg = Config {
            source: r.get(SOURCE, SourceKind::Kubernetes),
            file: r.parse_with(
                FILE,
                None,
                |s| Ok((!s.is_empty()).then(|| PathBuf::from(s))),
            ),
            file_poll_interval: r.duration(FILE_POLL_INTERVAL, Duration::from_millis(250)),
            listen: r.get(LISTEN, SocketAddr::from(([0, 0, 0, 0], 7156))),
            admin_listen: r.get(ADMIN_LISTEN, SocketAddr::from(([0, 0, 0, 0], 7196))),
            trust_domain: r.parse_with(TRUST_DOMAIN, "cluster.local".into(), check_trust_domain),
            cluster_domain: r.parse_with(
                CLUSTER_DOMAIN,
                "cluster.local".into(),
                check_cluster_domain,
            ),
            default_inbound_policy: r
                .get(DEFAULT_INBOUND_POLICY, DefaultPolicy::AllUnauthenticated),
            namespace: r.parse_with(NAMESPACE, "trellis-system".into(), check_namespace),
            trust_roots_configmap: r.parse_with(
                TRUST_ROOTS_CONFIGMAP,
                "trellis-trust-roots".into(),
                check_object_name,
            ),
            distribute_trust_roots: r.get(DISTRIBUTE_TRUST_ROOTS, true),
            trust_roots_owner: r.parse_with(
                TRUST_ROOTS_OWNER,
                Some("trellis-controller".into()),
                |s| {
                    if s.is_empty() {
                        Ok(None)
                    } else {
                        check_object_name(s).map(Some)
                    }
                },
            ),
            service: ServiceSettings::read(&mut r, PREFIX, Duration::from_secs(10)),
        };
        cfg.service.log = quiet_kube(&cfg.service.log);
        if cfg.source == SourceKind::File && cfg.file.is_none() {
            r.invalid(FILE, "", format!("is required with {SOURCE}=file"));
        }
        if cfg.file_poll_interval.is_zero() {
            r.invalid(FILE_POLL_INTERVAL, "0ms", "must be more than zero");
        }
        if cfg.listen.port() != 0 && cfg.listen.port() == cfg.admin_listen.port() {
            r.invalid(
                ADMIN_LISTEN,
                cfg.admin_listen.to_string(),
                format!("uses the same port as {LISTEN}"),
            );
        }
        r.finish()?;
        Ok(cfg)
    }

    /// What the index needs to know.
    pub fn settings(&self) -> Settings {
        Settings {
            trust_domain: self.trust_domain.clone(),
            cluster_domain: self.cluster_domain.clone(),
            default_inbound: self.default_inbound_policy,
        }
    }

    /// The trust roots distributor's settings (used with the Kubernetes
    /// source when `distribute_trust_roots`).
    pub fn trust_roots(&self) -> crate::roots::Settings {
        crate::roots::Settings::new(&self.namespace, &self.trust_roots_configmap)
            .with_owner(self.trust_roots_owner.clone())
    }
}

/// `filter` with [`QUIET_KUBE`] added, unless it names either target.
fn quiet_kube(filter: &str) -> String {
    if filter.contains("kube_client") || filter.contains("kube_runtime") {
        filter.to_string()
    } else {
        format!("{filter},{QUIET_KUBE}")
    }
}

/// A namespace name: a DNS label (RFC 1123), at most 63 characters.
fn check_namespace(s: &str) -> Result<String, String> {
    if s.len() <= 63 && dns_label(s) {
        Ok(s.to_string())
    } else {
        Err("not a namespace name (lower-case letters, digits and '-', at most 63)".into())
    }
}

/// A ConfigMap name: a DNS subdomain (RFC 1123), at most 253 characters.
fn check_object_name(s: &str) -> Result<String, String> {
    if s.len() <= 253 && s.split('.').all(dns_label) {
        Ok(s.to_string())
    } else {
        Err("not an object name (lower-case DNS labels separated by '.', at most 253)".into())
    }
}

fn dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// A SPIFFE trust domain (checked the way `trellis_core::spiffe` does).
fn check_trust_domain(s: &str) -> Result<String, String> {
    trellis_core::spiffe::SpiffeId::new(s, "a", "a")
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// A DNS suffix: lower-case labels separated by dots.
fn check_cluster_domain(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 253 && s.split('.').all(dns_label) {
        Ok(s.to_string())
    } else {
        Err("not a DNS suffix (lower-case labels separated by '.')".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_core::config::MapSource;

    #[test]
    fn defaults() {
        let cfg = Config::from_source(&MapSource::default()).unwrap();
        assert_eq!(cfg.source, SourceKind::Kubernetes);
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:7156");
        assert_eq!(cfg.admin_listen.to_string(), "0.0.0.0:7196");
        assert_eq!(cfg.trust_domain, "cluster.local");
        assert_eq!(cfg.cluster_domain, "cluster.local");
        assert_eq!(
            cfg.default_inbound_policy,
            DefaultPolicy::AllUnauthenticated
        );
        assert_eq!(cfg.file_poll_interval, Duration::from_millis(250));
        for (name, default, _) in VARIABLES {
            assert!(name.starts_with("TRELLIS_CONTROLLER_"), "{name}");
            if !default.is_empty() {
                let explicit = Config::from_source(&MapSource::new([(*name, *default)]));
                assert!(explicit.is_ok(), "{name}={default}: {explicit:?}");
            }
        }
        assert_eq!(cfg.service.log, "info,kube_client=error,kube_runtime=error");
        assert_eq!(cfg.trust_roots_owner.as_deref(), Some("trellis-controller"));
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["source"], "kubernetes");
        assert_eq!(json["default_inbound_policy"], "all-unauthenticated");
        assert_eq!(json["file_poll_interval"], "250ms");
    }

    #[test]
    fn reports_all_errors_together() {
        let src = MapSource::new([
            (SOURCE, "file"),
            (LISTEN, "nowhere"),
            (TRUST_DOMAIN, "Bad Domain"),
            (CLUSTER_DOMAIN, "-x."),
            (DEFAULT_INBOUND_POLICY, "allow"),
            (FILE_POLL_INTERVAL, "5"),
            (LOG_FORMAT, "xml"),
        ]);
        let errs = Config::from_source(&src).unwrap_err();
        let keys = errs.keys();
        assert_eq!(
            keys,
            [
                FILE_POLL_INTERVAL,
                LISTEN,
                TRUST_DOMAIN,
                CLUSTER_DOMAIN,
                DEFAULT_INBOUND_POLICY,
                LOG_FORMAT,
                FILE
            ],
            "{errs}"
        );
    }

    #[test]
    fn trust_roots() {
        let cfg = Config::from_source(&MapSource::default()).unwrap();
        assert_eq!(cfg.namespace, "trellis-system");
        assert_eq!(cfg.trust_roots_configmap, "trellis-trust-roots");
        assert!(cfg.distribute_trust_roots);
        let settings = cfg.trust_roots();
        assert_eq!(
            settings.names.source(),
            "trellis-system/trellis-trust-roots"
        );

        let cfg = Config::from_source(&MapSource::new([
            (NAMESPACE, "mesh-system"),
            (TRUST_ROOTS_CONFIGMAP, "mesh.roots"),
            (DISTRIBUTE_TRUST_ROOTS, "false"),
        ]))
        .unwrap();
        assert!(!cfg.distribute_trust_roots);
        assert_eq!(cfg.trust_roots().names.source(), "mesh-system/mesh.roots");
        assert_eq!(
            cfg.trust_roots().owner.as_deref(),
            Some("trellis-controller")
        );
        let cfg = Config::from_source(&MapSource::new([(TRUST_ROOTS_OWNER, "")])).unwrap();
        assert_eq!(cfg.trust_roots().owner, None);

        let errs = Config::from_source(&MapSource::new([
            (NAMESPACE, "Trellis"),
            (TRUST_ROOTS_CONFIGMAP, "roots/pem"),
            (DISTRIBUTE_TRUST_ROOTS, "yes"),
            (TRUST_ROOTS_OWNER, "Trellis Controller"),
        ]))
        .unwrap_err();
        let keys = errs.keys();
        assert_eq!(
            keys,
            [
                NAMESPACE,
                TRUST_ROOTS_CONFIGMAP,
                DISTRIBUTE_TRUST_ROOTS,
                TRUST_ROOTS_OWNER
            ],
            "{errs}"
        );
    }

    #[test]
    fn kube_client_warnings_are_quiet_unless_asked_for() {
        let log = |v: &str| {
            Config::from_source(&MapSource::new([(LOG, v)]))
                .unwrap()
                .service
                .log
        };
        assert_eq!(log("debug"), "debug,kube_client=error,kube_runtime=error");
        assert_eq!(log("info,kube_client=debug"), "info,kube_client=debug");
        assert_eq!(log("kube_runtime=trace"), "kube_runtime=trace");
    }

    #[test]
    fn file_source_and_port_clash() {
        let errs = Config::from_source(&MapSource::new([
            (SOURCE, "file"),
            (FILE, "/tmp/mesh.yaml"),
            (ADMIN_LISTEN, "0.0.0.0:7156"),
        ]))
        .unwrap_err();
        let keys = errs.keys();
        assert_eq!(keys, [ADMIN_LISTEN]);
        let ok = Config::from_source(&MapSource::new([
            (SOURCE, "file"),
            (FILE, "/tmp/mesh.yaml"),
            (DEFAULT_INBOUND_POLICY, "deny"),
        ]))
        .unwrap();
        assert_eq!(
            ok.file.as_deref(),
            Some(std::path::Path::new("/tmp/mesh.yaml"))
        );
        assert_eq!(ok.settings().default_inbound, DefaultPolicy::Deny);
    }
}
