//! The proxy's configuration: one typed [`Config`], read from
//! `TRELLIS_PROXY_*` variables through a [`Source`], with every error
//! reported at once. Shown (secrets redacted, of which there are none yet)
//! at the admin endpoint `/config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use trellis_core::config::{
    parse_ports, serialize_display, serialize_duration, ConfigErrors, PortRange, Reader, Source,
    Variable,
};
// The variables' names are the contract's: the injector and the local mesh
// set them with the same constants.
use trellis_core::contract::proxy_env::*;
use trellis_core::contract::{
    DEFAULT_ADMIN_LISTEN, DEFAULT_INBOUND_LISTEN, DEFAULT_OUTBOUND_LISTEN,
};
use trellis_core::spiffe::SpiffeId;
use trellis_core::telemetry::{parse_log_filter, LogFormat};

use crate::plaintext::OutboundMtls;
use crate::policy::DefaultPolicy;
use crate::probe::ProbeSource;
use crate::trace::TraceConfig;
use ipnet::IpNet;

trait NonEmptyPath {
    fn non_empty_path(self) -> Option<PathBuf>;
}

impl NonEmptyPath for String {
    fn non_empty_path(self) -> Option<PathBuf> {
        (!self.is_empty()).then(|| PathBuf::from(self))
    }
}

/// Every variable the proxy reads: name, default, meaning (with unit).
/// `trellis-proxy --help` prints this table, and README's "Configuration of
/// the proxy" is this table too (a test keeps them equal).
pub const VARIABLES: &[Variable] = &[
    (OUTBOUND_LISTEN, "127.0.0.1:7140", "address of the outbound listener (connections redirected from the pod)"),
    (INBOUND_LISTEN, "0.0.0.0:7143", "address of the inbound listener (connections redirected to the pod)"),
    (ADMIN_LISTEN, "0.0.0.0:7191", "address of the admin server: /metrics, /ready, /live to any client; /config, /identity only to clients on this host"),
    (IPV6, "auto", "also listen on IPv6 ([::1] outbound, [::] inbound, same ports): on, off, or auto (when this host has IPv6)"),
    (DETECT_TIMEOUT, "300ms", "how long to wait for a client's first bytes before treating the connection as opaque TCP (duration: ms, s, m)"),
    (OPAQUE_PORTS, "", "destination ports that skip protocol detection and are proxied as opaque TCP (e.g. 25,3306,4000-4010)"),
    (CONNECT_TIMEOUT, "3s", "time allowed to connect to an upstream (duration)"),
    (HEADER_READ_TIMEOUT, "10s", "time allowed for a client to send a complete HTTP/1 request head (duration)"),
    (MAX_HEADER_BYTES, "65536", "largest HTTP request head accepted, in bytes; larger ones get 431"),
    (POOL_IDLE_TIMEOUT, "90s", "how long an idle upstream HTTP connection stays pooled (duration)"),
    (SHUTDOWN_GRACE, "30s", "after SIGTERM, how long in-flight connections may run before the proxy exits (duration)"),
    (WORKER_THREADS, "1", "tokio worker threads (a sidecar usually wants 1 or 2)"),
    (LOG, "info", "log filter, tracing-subscriber syntax (e.g. warn,trellis_proxy=debug)"),
    (LOG_FORMAT, "plain", "log format: plain or json"),
    (WORKLOAD, "", "the workload this proxy serves, for logs (e.g. demo/web-0)"),
    (IDENTITY_ADDR, "", "identity service address (host:port); unset: no identity, no mTLS (plaintext mesh)"),
    (IDENTITY_SERVER_ID, "spiffe://cluster.local/ns/trellis-system/sa/trellis-identity", "SPIFFE ID the identity service must present"),
    (IDENTITY, "", "this workload's SPIFFE ID (spiffe://TD/ns/NS/sa/SA); required with an identity service"),
    (IDENTITY_TOKEN_FILE, "/var/run/secrets/tokens/trellis-identity", "the projected ServiceAccount token (audience identity.trellis.dev)"),
    (TRUST_ROOTS_FILE, "/var/run/trellis/roots.pem", "PEM bundle of the mesh's trust roots; reloaded when it changes"),
    (DESTINATIONS_FILE, "", "JSON list of meshed destinations (addresses) and their identities; reloaded when it changes. Not with CONTROLLER_ADDR: a proxy has exactly one source of destinations"),
    (POLICY_FILE, "", "JSON inbound policy of this pod; reloaded when it changes. Not with CONTROLLER_ADDR: a proxy has exactly one source of policy"),
    (DEFAULT_INBOUND_POLICY, "all-unauthenticated", "inbound policy when no policy file is given: all-unauthenticated, all-authenticated, deny, audit"),
    (CONTROLLER_ADDR, "", "controller address (host:port): services, endpoints with their identities, routes and the inbound policy come from it, and from nothing else (DESTINATIONS_FILE and POLICY_FILE must then be unset); unset: the files only"),
    (POD_NAMESPACE, "", "this pod's namespace (required with a controller)"),
    (POD_NAME, "", "this pod's name (required with a controller)"),
    (OUTBOUND_MTLS, "opportunistic", "outbound mutual TLS: opportunistic (mTLS to every destination the controller names with an identity, and never plaintext again to one seen meshed) or required (nothing leaves in plaintext but to PLAINTEXT_DESTINATIONS; refusals are counted)"),
    (PLAINTEXT_DESTINATIONS, "", "addresses and CIDRs that may be reached in plaintext under OUTBOUND_MTLS=required (e.g. 10.96.0.10/32,203.0.113.0/24)"),
    (PROBE_SOURCES, "gateway", "where kubelet probes come from: addresses, CIDRs, and `gateway` (this pod's default gateways); a probe-like request from elsewhere is decided like any other"),
    (BALANCER_DECAY, "1s", "time constant of the balancer's latency estimate: how fast an endpoint avoided as slow is tried again (duration)"),
    (RESOLVE_TIMEOUT, "1s", "how long the first connection to a destination waits for the controller's answer before it is forwarded as unknown (duration)"),
    (TRACE_COLLECTOR, "", "OTLP/gRPC collector (host:port or http://host:port) that request spans are exported to; unset: tracing off"),
    (TRACE_SAMPLING, "0.01", "share of new traces sampled, 0 to 1; a request whose caller sent a sampling decision (traceparent, B3) follows it"),
];

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub outbound_listen: SocketAddr,
    pub inbound_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    #[serde(serialize_with = "serialize_display")]
    pub ipv6: Ipv6Mode,
    #[serde(serialize_with = "serialize_duration")]
    pub detect_timeout: Duration,
    #[serde(serialize_with = "ser_ports")]
    pub opaque_ports: Vec<PortRange>,
    #[serde(serialize_with = "serialize_duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    #[serde(serialize_with = "serialize_duration")]
    pub pool_idle_timeout: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub shutdown_grace: Duration,
    pub worker_threads: usize,
    pub log: String,
    #[serde(serialize_with = "serialize_display")]
    pub log_format: LogFormat,
    pub workload: String,
    /// Present when the proxy has an identity (and so speaks mTLS).
    pub identity: Option<IdentityConfig>,
    pub destinations_file: Option<PathBuf>,
    pub policy_file: Option<PathBuf>,
    #[serde(serialize_with = "serialize_display")]
    pub default_inbound_policy: DefaultPolicy,
    /// Present when a controller streams destinations and policy.
    pub controller: Option<ControllerConfig>,
    #[serde(serialize_with = "serialize_display")]
    pub outbound_mtls: OutboundMtls,
    #[serde(serialize_with = "ser_list")]
    pub plaintext_destinations: Vec<IpNet>,
    #[serde(serialize_with = "ser_list")]
    pub probe_sources: Vec<ProbeSource>,
    /// Present when tracing is on.
    pub trace: Option<TraceConfig>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControllerConfig {
    pub addr: String,
    pub pod_namespace: String,
    pub pod_name: String,
    #[serde(serialize_with = "serialize_duration")]
    pub resolve_timeout: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub balancer_decay: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdentityConfig {
    pub addr: String,
    #[serde(serialize_with = "serialize_display")]
    pub server_id: SpiffeId,
    #[serde(serialize_with = "serialize_display")]
    pub id: SpiffeId,
    /// The token's path; its content is a secret and never shown.
    pub token_file: PathBuf,
    pub trust_roots_file: PathBuf,
}

/// hyper refuses an HTTP/1 read buffer smaller than this.
const MIN_HEADER_BYTES: usize = 8192;

impl Config {
    /// Reads the configuration, reporting every bad variable together.
    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(src);
        let cfg = Config {
            outbound_listen: r.get(OUTBOUND_LISTEN, DEFAULT_OUTBOUND_LISTEN),
            inbound_listen: r.get(INBOUND_LISTEN, DEFAULT_INBOUND_LISTEN),
            admin_listen: r.get(ADMIN_LISTEN, DEFAULT_ADMIN_LISTEN),
            ipv6: r.get(IPV6, Ipv6Mode::Auto),
            detect_timeout: r.duration(DETECT_TIMEOUT, Duration::from_millis(300)),
            opaque_ports: r.parse_with(OPAQUE_PORTS, Vec::new(), parse_ports),
            connect_timeout: r.duration(CONNECT_TIMEOUT, Duration::from_secs(3)),
            header_read_timeout: r.duration(HEADER_READ_TIMEOUT, Duration::from_secs(10)),
            max_header_bytes: r.get(MAX_HEADER_BYTES, 65536),
            pool_idle_timeout: r.duration(POOL_IDLE_TIMEOUT, Duration::from_secs(90)),
            shutdown_grace: r.duration(SHUTDOWN_GRACE, Duration::from_secs(30)),
            worker_threads: r.get(WORKER_THREADS, 1),
            log: r.parse_with(LOG, "info".to_string(), parse_log_filter),
            log_format: r.get(LOG_FORMAT, LogFormat::Plain),
            workload: r.get(WORKLOAD, String::new()),
            identity: None,
            destinations_file: r
                .get::<String>(DESTINATIONS_FILE, String::new())
                .non_empty_path(),
            policy_file: r.get::<String>(POLICY_FILE, String::new()).non_empty_path(),
            default_inbound_policy: r
                .get(DEFAULT_INBOUND_POLICY, DefaultPolicy::AllUnauthenticated),
            controller: None,
            outbound_mtls: r.get(OUTBOUND_MTLS, OutboundMtls::Opportunistic),
            plaintext_destinations: r.parse_with(
                PLAINTEXT_DESTINATIONS,
                Vec::new(),
                crate::plaintext::parse_exceptions,
            ),
            probe_sources: r.parse_with(
                PROBE_SOURCES,
                vec![ProbeSource::Gateway],
                crate::probe::parse_sources,
            ),
            trace: None,
        };
        let mut cfg = cfg;
        let addr: String = r.get(IDENTITY_ADDR, String::new());
        if !addr.is_empty() {
            let server_id = r.parse_with(IDENTITY_SERVER_ID, None, |s| {
                s.parse::<SpiffeId>().map(Some).map_err(|e| e.to_string())
            });
            let server_id = server_id.or_else(|| {
                SpiffeId::new("cluster.local", "trellis-system", "trellis-identity").ok()
            });
            let id = r.parse_with(IDENTITY, None, |s| {
                s.parse::<SpiffeId>().map(Some).map_err(|e| e.to_string())
            });
            if id.is_none() {
                r.invalid(
                    IDENTITY,
                    "",
                    format!("required when {IDENTITY_ADDR} is set"),
                );
            }
            let token_file = PathBuf::from(r.get::<String>(
                IDENTITY_TOKEN_FILE,
                "/var/run/secrets/tokens/trellis-identity".into(),
            ));
            let trust_roots_file = PathBuf::from(
                r.get::<String>(TRUST_ROOTS_FILE, "/var/run/trellis/roots.pem".into()),
            );
            if let (Some(server_id), Some(id)) = (server_id, id) {
                cfg.identity = Some(IdentityConfig {
                    addr,
                    server_id,
                    id,
                    token_file,
                    trust_roots_file,
                });
            }
        }
        let controller: String = r.get(CONTROLLER_ADDR, String::new());
        let resolve_timeout = r.duration(RESOLVE_TIMEOUT, Duration::from_secs(1));
        let balancer_decay = r.duration(BALANCER_DECAY, Duration::from_secs(1));
        if balancer_decay.is_zero() {
            r.invalid(BALANCER_DECAY, "0", "must be longer than zero");
        }
        if !controller.is_empty() {
            let pod_namespace: String = r.get(POD_NAMESPACE, String::new());
            let pod_name: String = r.get(POD_NAME, String::new());
            for (name, value) in [(POD_NAMESPACE, &pod_namespace), (POD_NAME, &pod_name)] {
                if value.is_empty() {
                    r.invalid(name, "", format!("required when {CONTROLLER_ADDR} is set"));
                }
            }
            if !controller.contains(':') {
                r.invalid(CONTROLLER_ADDR, controller.clone(), "must be host:port");
            }
            // Exactly one source for each security decision: a file beside
            // the controller would make the last writer win.
            for (name, file) in [
                (DESTINATIONS_FILE, &cfg.destinations_file),
                (POLICY_FILE, &cfg.policy_file),
            ] {
                if let Some(path) = file {
                    r.invalid(
                        name,
                        path.display().to_string(),
                        format!(
                            "must be unset when {CONTROLLER_ADDR} is set: the controller is then the one source of destinations and policy"
                        ),
                    );
                }
            }
            cfg.controller = Some(ControllerConfig {
                addr: controller,
                pod_namespace,
                pod_name,
                resolve_timeout,
                balancer_decay,
            });
        }
        let collector = r.parse_with(TRACE_COLLECTOR, None, |s| {
            if s.trim().is_empty() {
                return Ok(None);
            }
            crate::trace::parse_collector(s).map(Some)
        });
        let sampling = r.parse_with(
            TRACE_SAMPLING,
            trellis_core::contract::trace::DEFAULT_SAMPLING,
            crate::trace::parse_sampling,
        );
        cfg.trace = collector.map(|collector| TraceConfig {
            collector,
            sampling,
        });
        if cfg.max_header_bytes < MIN_HEADER_BYTES {
            r.invalid(
                MAX_HEADER_BYTES,
                cfg.max_header_bytes.to_string(),
                format!("must be at least {MIN_HEADER_BYTES}"),
            );
        }
        if !(1..=64).contains(&cfg.worker_threads) {
            r.invalid(
                WORKER_THREADS,
                cfg.worker_threads.to_string(),
                "must be 1 to 64",
            );
        }
        if cfg.detect_timeout.is_zero() {
            r.invalid(DETECT_TIMEOUT, "0", "must be longer than zero");
        }
        let ports = [
            (OUTBOUND_LISTEN, cfg.outbound_listen),
            (INBOUND_LISTEN, cfg.inbound_listen),
            (ADMIN_LISTEN, cfg.admin_listen),
        ];
        for (i, (name, a)) in ports.iter().enumerate() {
            for (other, b) in &ports[i + 1..] {
                if a.port() != 0 && a.port() == b.port() {
                    r.invalid(
                        name,
                        a.to_string(),
                        format!("uses the same port as {other}"),
                    );
                }
            }
        }
        r.finish()?;
        Ok(cfg)
    }

    pub fn is_opaque_port(&self, port: u16) -> bool {
        self.opaque_ports.iter().any(|r| r.contains(port))
    }
}

/// Whether the proxy also listens on IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Mode {
    On,
    Off,
    /// On when the host has an IPv6 loopback address.
    Auto,
}

impl std::str::FromStr for Ipv6Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            "auto" => Ok(Self::Auto),
            other => Err(format!("unknown IPv6 mode {other:?}: use on, off or auto")),
        }
    }
}

impl std::fmt::Display for Ipv6Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::On => "on",
            Self::Off => "off",
            Self::Auto => "auto",
        })
    }
}

fn ser_list<S: serde::Serializer, T: std::fmt::Display>(p: &[T], s: S) -> Result<S::Ok, S::Error> {
    let joined: Vec<String> = p.iter().map(ToString::to_string).collect();
    s.serialize_str(&joined.join(","))
}

fn ser_ports<S: serde::Serializer>(p: &[PortRange], s: S) -> Result<S::Ok, S::Error> {
    let joined: Vec<String> = p.iter().map(ToString::to_string).collect();
    s.serialize_str(&joined.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_core::config::MapSource;

    #[test]
    fn defaults_match_spec_ports() {
        let cfg = Config::from_source(&MapSource::default()).unwrap();
        assert_eq!(cfg.outbound_listen.to_string(), "127.0.0.1:7140");
        assert_eq!(cfg.inbound_listen.to_string(), "0.0.0.0:7143");
        assert_eq!(cfg.admin_listen.to_string(), "0.0.0.0:7191");
        assert_eq!(cfg.detect_timeout, Duration::from_millis(300));
    }

    /// `--help` lists every variable of the contract, once, in its order,
    /// and shows the contract's listen addresses as their defaults.
    #[test]
    fn variables_are_the_contract_s() {
        let names: Vec<&str> = VARIABLES.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(names, ALL);
        let default = |want: &str| {
            VARIABLES
                .iter()
                .find(|(name, _, _)| *name == want)
                .map(|(_, default, _)| *default)
                .unwrap()
        };
        for (name, addr) in [
            (OUTBOUND_LISTEN, DEFAULT_OUTBOUND_LISTEN),
            (INBOUND_LISTEN, DEFAULT_INBOUND_LISTEN),
            (ADMIN_LISTEN, DEFAULT_ADMIN_LISTEN),
        ] {
            assert_eq!(default(name), addr.to_string(), "{name}");
        }
    }

    fn repo_file(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// README's proxy variable table, as it must read: [`VARIABLES`],
    /// which `--help` prints.
    fn readme_table() -> String {
        let mut out = String::from("| variable | default | meaning |\n|---|---|---|\n");
        for (name, default, meaning) in VARIABLES {
            let default = if default.is_empty() {
                "(none)".to_string()
            } else {
                format!("`{default}`")
            };
            out.push_str(&format!("| `{name}` | {default} | {meaning} |\n"));
        }
        out
    }

    #[test]
    fn readme_lists_the_variables_help_prints() {
        let readme = repo_file("README.md");
        let begin = "<!-- proxy-variables:begin -->\n";
        let start = readme
            .find(begin)
            .expect("README has no proxy-variables:begin")
            + begin.len();
        let len = readme[start..]
            .find("<!-- proxy-variables:end -->")
            .expect("README has no proxy-variables:end");
        let want = readme_table();
        assert!(
            readme[start..start + len] == want,
            "README's proxy variable table differs from VARIABLES (what --help prints); it should read:\n{want}"
        );
        for (name, default, meaning) in VARIABLES {
            assert!(
                !meaning.contains('|') && !default.contains('|'),
                "{name}: a '|' breaks the table"
            );
            assert!(
                !meaning.contains("issue "),
                "{name}: describe the behaviour, not an issue number"
            );
        }
    }

    #[test]
    fn docs_and_help_list_every_admin_path() {
        let readme = repo_file("README.md");
        let architecture = repo_file("ARCHITECTURE.md");
        let help = VARIABLES
            .iter()
            .find(|(name, _, _)| *name == ADMIN_LISTEN)
            .map(|(_, _, meaning)| *meaning)
            .unwrap();
        let ports_row = architecture
            .lines()
            .find(|l| l.starts_with("| 7191 "))
            .expect("ARCHITECTURE.md has no 7191 row");
        for path in crate::admin::PATHS {
            assert!(
                readme.contains(&format!("`{path}`")),
                "README leaves out {path}"
            );
            assert!(
                ports_row.contains(&format!("`{path}`")),
                "ARCHITECTURE.md's 7191 row leaves out {path}"
            );
            assert!(
                help.contains(path),
                "--help ({ADMIN_LISTEN}) leaves out {path}"
            );
        }
        // What answers remote clients is said too.
        for open in trellis_core::admin::OPEN_PATHS {
            assert!(crate::admin::PATHS.contains(&open), "{open}");
        }
        assert!(help.contains("only to clients on this host"), "{help}");
    }

    #[test]
    fn reports_all_errors_together() {
        let src = MapSource::new([
            (OUTBOUND_LISTEN, "localhost"),
            (DETECT_TIMEOUT, "300"),
            (OPAQUE_PORTS, "25,x"),
            (MAX_HEADER_BYTES, "100"),
            (LOG_FORMAT, "xml"),
        ]);
        let errs = Config::from_source(&src).unwrap_err();
        let keys = errs.keys();
        assert_eq!(
            keys,
            [
                OUTBOUND_LISTEN,
                DETECT_TIMEOUT,
                OPAQUE_PORTS,
                LOG_FORMAT,
                MAX_HEADER_BYTES
            ]
        );
        let text = errs.to_string();
        assert!(
            text.contains("TRELLIS_PROXY_DETECT_TIMEOUT=\"300\""),
            "{text}"
        );
    }

    #[test]
    fn refuses_shared_ports() {
        let src = MapSource::new([(ADMIN_LISTEN, "0.0.0.0:7143")]);
        let errs = Config::from_source(&src).unwrap_err();
        assert_eq!(errs.0.len(), 1);
        assert!(
            errs.0[0].reason.contains(ADMIN_LISTEN) || errs.0[0].reason.contains(INBOUND_LISTEN)
        );
    }

    #[test]
    fn identity_settings() {
        let src = MapSource::new([
            (IDENTITY_ADDR, "10.77.0.1:7155"),
            (IDENTITY, "spiffe://cluster.local/ns/demo/sa/web"),
            (TRUST_ROOTS_FILE, "/tmp/roots.pem"),
        ]);
        let cfg = Config::from_source(&src).unwrap();
        let id = cfg.identity.unwrap();
        assert_eq!(id.id.to_string(), "spiffe://cluster.local/ns/demo/sa/web");
        assert_eq!(
            id.server_id.to_string(),
            "spiffe://cluster.local/ns/trellis-system/sa/trellis-identity"
        );

        let missing = MapSource::new([
            (IDENTITY_ADDR, "10.77.0.1:7155"),
            (IDENTITY_SERVER_ID, "nope"),
        ]);
        let errs = Config::from_source(&missing).unwrap_err();
        let keys = errs.keys();
        assert_eq!(keys, [IDENTITY_SERVER_ID, IDENTITY]);
        assert!(Config::from_source(&MapSource::default())
            .unwrap()
            .identity
            .is_none());
    }

    #[test]
    fn controller_settings() {
        let src = MapSource::new([
            (CONTROLLER_ADDR, "10.77.0.1:7156"),
            (POD_NAMESPACE, "demo"),
            (POD_NAME, "web-0"),
            (RESOLVE_TIMEOUT, "250ms"),
        ]);
        let c = Config::from_source(&src).unwrap().controller.unwrap();
        assert_eq!(c.addr, "10.77.0.1:7156");
        assert_eq!(
            (c.pod_namespace.as_str(), c.pod_name.as_str()),
            ("demo", "web-0")
        );
        assert_eq!(c.resolve_timeout, Duration::from_millis(250));

        let missing = MapSource::new([(CONTROLLER_ADDR, "controller")]);
        let errs = Config::from_source(&missing).unwrap_err();
        let keys = errs.keys();
        assert_eq!(keys, [POD_NAMESPACE, POD_NAME, CONTROLLER_ADDR]);
        assert!(Config::from_source(&MapSource::default())
            .unwrap()
            .controller
            .is_none());

        // One source: files beside a controller are refused, by name.
        let both = MapSource::new([
            (CONTROLLER_ADDR, "10.77.0.1:7156"),
            (POD_NAMESPACE, "demo"),
            (POD_NAME, "web-0"),
            (POLICY_FILE, "/run/policy.json"),
            (DESTINATIONS_FILE, "/run/destinations.json"),
        ]);
        let errs = Config::from_source(&both).unwrap_err();
        assert_eq!(errs.keys(), [DESTINATIONS_FILE, POLICY_FILE]);
        assert!(errs.to_string().contains("one source"), "{errs}");
    }

    #[test]
    fn opaque_ports() {
        let src = MapSource::new([(OPAQUE_PORTS, "25, 4000-4010")]);
        let cfg = Config::from_source(&src).unwrap();
        assert!(cfg.is_opaque_port(25) && cfg.is_opaque_port(4005));
        assert!(!cfg.is_opaque_port(80));
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["opaque_ports"], "25,4000-4010");
        assert_eq!(json["detect_timeout"], "300ms");
    }
}
