//! The webhook server's configuration: `TRELLIS_INJECTOR_*` variables, read
//! through a [`Source`] with every error reported together, and the
//! injection settings file ([`InjectorConfig`]) they point to.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use trellis_core::config::{
    format_duration, serialize_duration, ConfigError, ConfigErrors, Reader, Source, Variable,
};
use trellis_core::service::Settings as ServiceSettings;

use crate::InjectorConfig;

/// Every variable: (name, default, meaning). `--help` prints this table.
pub const VARIABLES: &[Variable] = &[
    (
        LISTEN,
        "0.0.0.0:7157",
        "address of the webhook's HTTPS (TLS 1.3) listener; AdmissionReview v1 on POST /inject",
    ),
    (
        ADMIN_LISTEN,
        "0.0.0.0:7197",
        "address of the admin server (/metrics, /ready, /live, /config), plain HTTP",
    ),
    (
        TLS_CERT_FILE,
        "/var/run/trellis/tls/tls.crt",
        "serving certificate chain, PEM (a mounted kubernetes.io/tls Secret)",
    ),
    (
        TLS_KEY_FILE,
        "/var/run/trellis/tls/tls.key",
        "serving key, PEM (PKCS#8, PKCS#1 or SEC1)",
    ),
    (
        CONFIG_FILE,
        "/etc/trellis/injector/config.yaml",
        "injection settings (the chart's ConfigMap, YAML); must exist",
    ),
    (
        RELOAD_INTERVAL,
        "5s",
        "how often the certificate and key files are checked for changes (duration)",
    ),
    (
        MAX_REVIEW_BYTES,
        "3145728",
        "largest AdmissionReview body read, in bytes; a larger one is refused with a review",
    ),
    (
        NAMESPACE_WAIT,
        "1s",
        "how long a review waits for its namespace to reach the cache before deciding without its annotations (duration)",
    ),
    (
        SHUTDOWN_GRACE,
        "10s",
        "after SIGTERM, how long in-flight reviews may take (duration)",
    ),
    (LOG, "info", "log filter, tracing-subscriber syntax"),
    (LOG_FORMAT, "plain", "log format: plain or json"),
];

/// The prefix of every variable.
const PREFIX: &str = "TRELLIS_INJECTOR_";
pub const LISTEN: &str = "TRELLIS_INJECTOR_LISTEN";
pub const ADMIN_LISTEN: &str = "TRELLIS_INJECTOR_ADMIN_LISTEN";
pub const TLS_CERT_FILE: &str = "TRELLIS_INJECTOR_TLS_CERT_FILE";
pub const TLS_KEY_FILE: &str = "TRELLIS_INJECTOR_TLS_KEY_FILE";
pub const CONFIG_FILE: &str = "TRELLIS_INJECTOR_CONFIG_FILE";
pub const RELOAD_INTERVAL: &str = "TRELLIS_INJECTOR_RELOAD_INTERVAL";
pub const MAX_REVIEW_BYTES: &str = "TRELLIS_INJECTOR_MAX_REVIEW_BYTES";
pub const NAMESPACE_WAIT: &str = "TRELLIS_INJECTOR_NAMESPACE_WAIT";
pub const SHUTDOWN_GRACE: &str = "TRELLIS_INJECTOR_SHUTDOWN_GRACE";
pub const LOG: &str = "TRELLIS_INJECTOR_LOG";
pub const LOG_FORMAT: &str = "TRELLIS_INJECTOR_LOG_FORMAT";

/// The smallest body limit accepted: a review of a small pod is a few kB.
const MIN_REVIEW_BYTES: usize = 4096;
/// The largest: the API server's own request limit is 3 MiB, and a review
/// carries at most the object and the old object.
const MAX_REVIEW_BYTES_LIMIT: usize = 64 * 1024 * 1024;
/// A longer wait would hold pod creation up for little gain.
const MAX_NAMESPACE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    pub config_file: PathBuf,
    #[serde(serialize_with = "serialize_duration")]
    pub reload_interval: Duration,
    pub max_review_bytes: usize,
    #[serde(serialize_with = "serialize_duration")]
    pub namespace_wait: Duration,
    /// `SHUTDOWN_GRACE`, `LOG`, `LOG_FORMAT`.
    #[serde(flatten)]
    pub service: ServiceSettings,
}

impl Config {
    /// Reads the variables, reporting every bad one together.
    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(src);
        let cfg = Self::read(&mut r);
        r.finish()?;
        Ok(cfg)
    }

    /// Reads the variables and the settings file they name; the errors of
    /// both are reported together.
    pub fn load(src: &dyn Source) -> Result<(Self, InjectorConfig), ConfigErrors> {
        let mut r = Reader::new(src);
        let cfg = Self::read(&mut r);
        let injector = read_injector_config(&cfg.config_file);
        let env = r.finish();
        match (env, injector) {
            (Ok(()), Ok(injector)) => Ok((cfg, injector)),
            (env, injector) => {
                let mut errors = env.err().map(|e| e.0).unwrap_or_default();
                errors.extend(injector.err());
                Err(ConfigErrors(errors))
            }
        }
    }

    fn read(r: &mut Reader<'_, dyn Source + '_>) -> Self {
        let path = |s: &str| {
            if s.is_empty() {
                Err("must not be empty".to_string())
            } else {
                Ok(PathBuf::from(s))
            }
        };
        let cfg = Config {
            listen: r.get(LISTEN, SocketAddr::from(([0, 0, 0, 0], 7157))),
            admin_listen: r.get(ADMIN_LISTEN, SocketAddr::from(([0, 0, 0, 0], 7197))),
            tls_cert_file: r.parse_with(TLS_CERT_FILE, "/var/run/trellis/tls/tls.crt".into(), path),
            tls_key_file: r.parse_with(TLS_KEY_FILE, "/var/run/trellis/tls/tls.key".into(), path),
            config_file: r.parse_with(
                CONFIG_FILE,
                "/etc/trellis/injector/config.yaml".into(),
                path,
            ),
            reload_interval: r.duration(RELOAD_INTERVAL, Duration::from_secs(5)),
            max_review_bytes: r.parse_with(MAX_REVIEW_BYTES, 3 * 1024 * 1024, parse_review_bytes),
            namespace_wait: r.duration(NAMESPACE_WAIT, Duration::from_secs(1)),
            service: ServiceSettings::read(r, PREFIX, Duration::from_secs(10)),
        };
        if cfg.reload_interval.is_zero() {
            r.invalid(RELOAD_INTERVAL, "0ms", "must be more than zero");
        }
        if cfg.namespace_wait > MAX_NAMESPACE_WAIT {
            r.invalid(
                NAMESPACE_WAIT,
                format_duration(cfg.namespace_wait),
                format!("must be at most {}", format_duration(MAX_NAMESPACE_WAIT)),
            );
        }
        if cfg.listen.port() != 0 && cfg.listen.port() == cfg.admin_listen.port() {
            r.invalid(
                ADMIN_LISTEN,
                cfg.admin_listen.to_string(),
                format!("uses the same port as {LISTEN}"),
            );
        }
        cfg
    }
}

fn parse_review_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| "a whole number of bytes, e.g. 3145728".to_string())?;
    if (MIN_REVIEW_BYTES..=MAX_REVIEW_BYTES_LIMIT).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "must be {MIN_REVIEW_BYTES} to {MAX_REVIEW_BYTES_LIMIT} bytes"
        ))
    }
}

/// Reads and checks the settings file; a missing file is an error (the
/// chart always mounts one, and an empty document is a valid one).
pub fn read_injector_config(path: &Path) -> Result<InjectorConfig, ConfigError> {
    let error = |reason: String| ConfigError {
        key: CONFIG_FILE.to_string(),
        value: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
    InjectorConfig::from_yaml(&text).map_err(error)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails

    use super::*;
    use trellis_core::config::MapSource;
    use trellis_core::telemetry::LogFormat;
    use trellis_core::test_support::TempDir;

    #[test]
    fn defaults() {
        let cfg = Config::from_source(&MapSource::default()).unwrap();
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:7157");
        assert_eq!(cfg.admin_listen.to_string(), "0.0.0.0:7197");
        assert_eq!(cfg.tls_cert_file, Path::new("/var/run/trellis/tls/tls.crt"));
        assert_eq!(cfg.tls_key_file, Path::new("/var/run/trellis/tls/tls.key"));
        assert_eq!(
            cfg.config_file,
            Path::new("/etc/trellis/injector/config.yaml")
        );
        assert_eq!(cfg.reload_interval, Duration::from_secs(5));
        assert_eq!(cfg.max_review_bytes, 3_145_728);
        assert_eq!(cfg.namespace_wait, Duration::from_secs(1));
        assert_eq!(cfg.service.shutdown_grace, Duration::from_secs(10));
        assert_eq!(cfg.service.log_format, LogFormat::Plain);
        for (name, default, _) in VARIABLES {
            assert!(name.starts_with("TRELLIS_INJECTOR_"), "{name}");
            let explicit = Config::from_source(&MapSource::new([(*name, *default)]));
            assert!(explicit.is_ok(), "{name}={default}: {explicit:?}");
        }
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["reload_interval"], "5s");
        assert_eq!(json["log_format"], "plain");
    }

    #[test]
    fn reports_all_errors_together() {
        let src = MapSource::new([
            (LISTEN, "nowhere"),
            (TLS_CERT_FILE, ""),
            (RELOAD_INTERVAL, "5"),
            (MAX_REVIEW_BYTES, "12"),
            (NAMESPACE_WAIT, "1m"),
            (LOG_FORMAT, "xml"),
        ]);
        let errs = Config::from_source(&src).unwrap_err();
        let keys = errs.keys();
        assert_eq!(
            keys,
            [
                LISTEN,
                TLS_CERT_FILE,
                RELOAD_INTERVAL,
                MAX_REVIEW_BYTES,
                LOG_FORMAT,
                NAMESPACE_WAIT
            ],
            "{errs}"
        );
        // The port clash needs a readable LISTEN.
        let errs =
            Config::from_source(&MapSource::new([(ADMIN_LISTEN, "0.0.0.0:7157")])).unwrap_err();
        assert_eq!(errs.0[0].key, ADMIN_LISTEN);
    }

    #[test]
    fn load_reads_the_settings_file_and_reports_its_errors_with_the_rest() {
        let dir = TempDir::new("injector-config");
        let good = dir.write("good.yaml", "controlPlaneNamespace: mesh\n");
        let bad = dir.write("bad.yaml", "proxy:\n  imagee: x\n");
        let path = |p: &Path| p.to_string_lossy().into_owned();

        let (cfg, injector) = Config::load(&MapSource::new([(CONFIG_FILE, path(&good))])).unwrap();
        assert_eq!(cfg.config_file, good);
        assert_eq!(injector.control_plane_namespace, "mesh");

        let errs = Config::load(&MapSource::new([
            (CONFIG_FILE, path(&bad)),
            (LOG_FORMAT, "xml".into()),
        ]))
        .unwrap_err();
        let keys = errs.keys();
        assert_eq!(keys, [LOG_FORMAT, CONFIG_FILE], "{errs}");
        assert!(errs.0[1].reason.contains("imagee"), "{errs}");

        let missing = dir.join("missing.yaml");
        let errs = Config::load(&MapSource::new([(CONFIG_FILE, path(&missing))])).unwrap_err();
        assert_eq!(errs.0.len(), 1);
        assert!(errs.0[0].reason.contains("cannot read"), "{errs}");
    }
}
