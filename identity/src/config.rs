//! The identity service's configuration: `TRELLIS_IDENTITY_*` variables,
//! read through a [`Source`] with every error reported together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use trellis_core::config::{
    format_duration, serialize_display, serialize_duration, ConfigErrors, Reader, Source, Variable,
};
use trellis_core::service::Settings as ServiceSettings;
use trellis_core::spiffe::SpiffeId;

/// Every variable: (name, default, meaning). `--help` prints this table.
pub const VARIABLES: &[Variable] = &[
    (
        LISTEN,
        "0.0.0.0:7155",
        "address of the gRPC (TLS 1.3) listener",
    ),
    (
        ADMIN_LISTEN,
        "0.0.0.0:7195",
        "address of the admin server (/metrics, /ready, /live, /config)",
    ),
    (
        TRUST_DOMAIN,
        "cluster.local",
        "SPIFFE trust domain of the identities issued",
    ),
    (
        ISSUER_CERT_FILE,
        "/var/run/trellis/issuer/tls.crt",
        "issuer certificate, PEM: an intermediate (others may follow), or a root also in the roots",
    ),
    (
        ISSUER_KEY_FILE,
        "/var/run/trellis/issuer/tls.key",
        "issuer key, PEM: PKCS#8, SEC1 (P-256, P-384) or PKCS#1 (RSA), unencrypted",
    ),
    (
        TRUST_ROOTS_FILE,
        "/var/run/trellis/roots/roots.pem",
        "trust roots, PEM bundle",
    ),
    (
        RELOAD_INTERVAL,
        "5s",
        "how often the issuer, roots and JWKS files are checked for changes (duration)",
    ),
    (
        CERT_LIFETIME,
        "24h",
        "lifetime of issued certificates (duration; 10s to 8760h)",
    ),
    (
        CLOCK_SKEW,
        "1m",
        "how far issued certificates are back-dated for clock skew (duration; at most 1h)",
    ),
    (
        TOKEN_VERIFIER,
        "kubernetes",
        "how tokens are verified: kubernetes (TokenReview, one API call per new token; the API server also refuses the token of a deleted pod or ServiceAccount) or jwks (locally against JWKS_FILE, no API server, as in the local mesh; the token of a deleted pod or ServiceAccount keeps getting certificates until it expires)",
    ),
    (
        JWKS_FILE,
        "",
        "the token issuer's JWKS (JSON), required with TOKEN_VERIFIER=jwks",
    ),
    (
        TOKEN_ISSUER,
        "https://kubernetes.default.svc.cluster.local",
        "the tokens' expected iss (TOKEN_VERIFIER=jwks)",
    ),
    (
        AUDIENCE,
        "identity.trellis.dev",
        "the audience tokens must be minted for",
    ),
    (
        NAMESPACE,
        "trellis-system",
        "this service's namespace (for its own SPIFFE ID)",
    ),
    (
        SERVICE_ACCOUNT,
        "trellis-identity",
        "this service's ServiceAccount (for its own SPIFFE ID)",
    ),
    (
        CLIENT_RATE,
        "5",
        "Certify requests per second a client may make (its token bucket's refill; a client is the caller's address and its token's claimed subject)",
    ),
    (
        CLIENT_BURST,
        "20",
        "Certify requests a client may make at once after being idle (its bucket's size); an address may make four times a client's",
    ),
    (
        MAX_CONCURRENT_VERIFICATIONS,
        "64",
        "token verifications in progress at once, over all clients; more are refused at once (RESOURCE_EXHAUSTED)",
    ),
    (
        REFUSAL_CACHE_TTL,
        "1m",
        "how long a refused token is answered from memory without verifying it again (duration; 0s: never; at most 10m)",
    ),
    (
        SHUTDOWN_GRACE,
        "10s",
        "after SIGTERM, how long in-flight requests may run (duration)",
    ),
    (LOG, "info", "log filter, tracing-subscriber syntax"),
    (LOG_FORMAT, "plain", "log format: plain or json"),
];

/// The prefix of every variable.
const PREFIX: &str = "TRELLIS_IDENTITY_";
pub const LISTEN: &str = "TRELLIS_IDENTITY_LISTEN";
pub const ADMIN_LISTEN: &str = "TRELLIS_IDENTITY_ADMIN_LISTEN";
pub const TRUST_DOMAIN: &str = "TRELLIS_IDENTITY_TRUST_DOMAIN";
pub const ISSUER_CERT_FILE: &str = "TRELLIS_IDENTITY_ISSUER_CERT_FILE";
pub const ISSUER_KEY_FILE: &str = "TRELLIS_IDENTITY_ISSUER_KEY_FILE";
pub const TRUST_ROOTS_FILE: &str = "TRELLIS_IDENTITY_TRUST_ROOTS_FILE";
pub const RELOAD_INTERVAL: &str = "TRELLIS_IDENTITY_RELOAD_INTERVAL";
pub const CERT_LIFETIME: &str = "TRELLIS_IDENTITY_CERT_LIFETIME";
pub const CLOCK_SKEW: &str = "TRELLIS_IDENTITY_CLOCK_SKEW";
pub const TOKEN_VERIFIER: &str = "TRELLIS_IDENTITY_TOKEN_VERIFIER";
pub const JWKS_FILE: &str = "TRELLIS_IDENTITY_JWKS_FILE";
pub const TOKEN_ISSUER: &str = "TRELLIS_IDENTITY_TOKEN_ISSUER";
pub const AUDIENCE: &str = "TRELLIS_IDENTITY_AUDIENCE";
pub const NAMESPACE: &str = "TRELLIS_IDENTITY_NAMESPACE";
pub const SERVICE_ACCOUNT: &str = "TRELLIS_IDENTITY_SERVICE_ACCOUNT";
pub const CLIENT_RATE: &str = "TRELLIS_IDENTITY_CLIENT_RATE";
pub const CLIENT_BURST: &str = "TRELLIS_IDENTITY_CLIENT_BURST";
pub const MAX_CONCURRENT_VERIFICATIONS: &str = "TRELLIS_IDENTITY_MAX_CONCURRENT_VERIFICATIONS";
pub const REFUSAL_CACHE_TTL: &str = "TRELLIS_IDENTITY_REFUSAL_CACHE_TTL";
pub const SHUTDOWN_GRACE: &str = "TRELLIS_IDENTITY_SHUTDOWN_GRACE";
pub const LOG: &str = "TRELLIS_IDENTITY_LOG";
pub const LOG_FORMAT: &str = "TRELLIS_IDENTITY_LOG_FORMAT";

const MIN_LIFETIME: Duration = Duration::from_secs(10);
const MAX_SKEW: Duration = Duration::from_secs(3600);
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
const MAX_REFUSAL_TTL: Duration = Duration::from_secs(600);

/// How ServiceAccount tokens are verified (see [`crate::token`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifierKind {
    /// TokenReview against the API server: the default. The API server
    /// also checks that the pod and ServiceAccount the token is bound to
    /// still exist, so a deleted pod's token is refused.
    Kubernetes,
    /// Locally, against a JWKS file: no API server (the local mesh), and
    /// no such check: a deleted pod's token is accepted until it expires.
    Jwks,
}

impl std::str::FromStr for VerifierKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kubernetes" => Ok(Self::Kubernetes),
            "jwks" => Ok(Self::Jwks),
            other => Err(format!(
                "unknown token verifier {other:?}: use kubernetes or jwks"
            )),
        }
    }
}

impl std::fmt::Display for VerifierKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kubernetes => "kubernetes",
            Self::Jwks => "jwks",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub trust_domain: String,
    pub issuer_cert_file: PathBuf,
    pub issuer_key_file: PathBuf,
    pub trust_roots_file: PathBuf,
    #[serde(serialize_with = "serialize_duration")]
    pub reload_interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub cert_lifetime: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub clock_skew: Duration,
    #[serde(serialize_with = "serialize_display")]
    pub token_verifier: VerifierKind,
    pub jwks_file: Option<PathBuf>,
    pub token_issuer: String,
    pub audience: String,
    pub namespace: String,
    pub service_account: String,
    pub client_rate: f64,
    pub client_burst: u32,
    pub max_concurrent_verifications: usize,
    #[serde(serialize_with = "serialize_duration")]
    pub refusal_cache_ttl: Duration,
    /// `SHUTDOWN_GRACE`, `LOG`, `LOG_FORMAT`.
    #[serde(flatten)]
    pub service: ServiceSettings,
}

impl Config {
    /// Reads the configuration, reporting every bad variable together.
    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(src);
        let path = |s: &str| -> Result<PathBuf, String> {
            if s.is_empty() {
                Err("must not be empty".into())
            } else {
                Ok(PathBuf::from(s))
            }
        };
        let cfg = Config {
            listen: r.get(LISTEN, SocketAddr::from(([0, 0, 0, 0], 7155))),
            admin_listen: r.get(ADMIN_LISTEN, SocketAddr::from(([0, 0, 0, 0], 7195))),
            trust_domain: r.get(TRUST_DOMAIN, "cluster.local".to_string()),
            issuer_cert_file: r.parse_with(
                ISSUER_CERT_FILE,
                "/var/run/trellis/issuer/tls.crt".into(),
                path,
            ),
            issuer_key_file: r.parse_with(
                ISSUER_KEY_FILE,
                "/var/run/trellis/issuer/tls.key".into(),
                path,
            ),
            trust_roots_file: r.parse_with(
                TRUST_ROOTS_FILE,
                "/var/run/trellis/roots/roots.pem".into(),
                path,
            ),
            reload_interval: r.duration(RELOAD_INTERVAL, Duration::from_secs(5)),
            cert_lifetime: r.duration(CERT_LIFETIME, Duration::from_secs(24 * 3600)),
            clock_skew: r.duration(CLOCK_SKEW, Duration::from_secs(60)),
            token_verifier: r.get(TOKEN_VERIFIER, VerifierKind::Kubernetes),
            jwks_file: r.parse_with(JWKS_FILE, None, |s| {
                Ok((!s.is_empty()).then(|| PathBuf::from(s)))
            }),
            token_issuer: r.get(TOKEN_ISSUER, crate::token::DEFAULT_TOKEN_ISSUER.to_string()),
            audience: r.get(AUDIENCE, crate::token::DEFAULT_AUDIENCE.to_string()),
            namespace: r.get(NAMESPACE, "trellis-system".to_string()),
            service_account: r.get(SERVICE_ACCOUNT, "trellis-identity".to_string()),
            client_rate: r.get(CLIENT_RATE, 5.0),
            client_burst: r.get(CLIENT_BURST, 20),
            max_concurrent_verifications: r.get(MAX_CONCURRENT_VERIFICATIONS, 64),
            refusal_cache_ttl: r.duration(REFUSAL_CACHE_TTL, Duration::from_secs(60)),
            service: ServiceSettings::read(&mut r, PREFIX, Duration::from_secs(10)),
        };
        if let Err(e) = SpiffeId::new(&cfg.trust_domain, "ns", "sa") {
            r.invalid(TRUST_DOMAIN, &cfg.trust_domain, e.to_string());
        }
        if let Err(e) = SpiffeId::new("td", &cfg.namespace, "sa") {
            r.invalid(NAMESPACE, &cfg.namespace, e.to_string());
        }
        if let Err(e) = SpiffeId::new("td", "ns", &cfg.service_account) {
            r.invalid(SERVICE_ACCOUNT, &cfg.service_account, e.to_string());
        }
        if !(MIN_LIFETIME..=MAX_LIFETIME).contains(&cfg.cert_lifetime) {
            r.invalid(
                CERT_LIFETIME,
                format_duration(cfg.cert_lifetime),
                "must be 10s to 8760h",
            );
        }
        if cfg.clock_skew > MAX_SKEW {
            r.invalid(
                CLOCK_SKEW,
                format_duration(cfg.clock_skew),
                "must be at most 1h",
            );
        }
        if !(cfg.client_rate.is_finite() && cfg.client_rate > 0.0) {
            r.invalid(
                CLIENT_RATE,
                cfg.client_rate.to_string(),
                "must be a number of requests per second above zero",
            );
        }
        if cfg.client_burst == 0 {
            r.invalid(CLIENT_BURST, "0", "must be at least 1");
        }
        if cfg.max_concurrent_verifications == 0 {
            r.invalid(MAX_CONCURRENT_VERIFICATIONS, "0", "must be at least 1");
        }
        if cfg.refusal_cache_ttl > MAX_REFUSAL_TTL {
            r.invalid(
                REFUSAL_CACHE_TTL,
                format_duration(cfg.refusal_cache_ttl),
                "must be at most 10m",
            );
        }
        if cfg.reload_interval.is_zero() {
            r.invalid(RELOAD_INTERVAL, "0", "must be longer than zero");
        }
        if cfg.audience.is_empty() {
            r.invalid(AUDIENCE, "", "must not be empty");
        }
        if cfg.token_verifier == VerifierKind::Jwks {
            if cfg.jwks_file.is_none() {
                r.invalid(
                    JWKS_FILE,
                    "",
                    format!("is required with {TOKEN_VERIFIER}=jwks"),
                );
            }
            if cfg.token_issuer.is_empty() {
                r.invalid(
                    TOKEN_ISSUER,
                    "",
                    format!("is required with {TOKEN_VERIFIER}=jwks"),
                );
            }
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

    /// This service's own SPIFFE ID (checked when the config was read).
    pub fn server_identity(&self) -> Result<SpiffeId, trellis_core::spiffe::SpiffeIdError> {
        SpiffeId::new(&self.trust_domain, &self.namespace, &self.service_account)
    }

    pub fn issuer_files(&self) -> crate::ca::IssuerFiles {
        crate::ca::IssuerFiles {
            cert: self.issuer_cert_file.clone(),
            key: self.issuer_key_file.clone(),
            roots: self.trust_roots_file.clone(),
        }
    }

    /// The admission limits ([`crate::admission`]).
    pub fn limits(&self) -> crate::admission::Limits {
        crate::admission::Limits {
            rate: self.client_rate,
            burst: self.client_burst,
            max_concurrent: self.max_concurrent_verifications,
            refusal_ttl: self.refusal_cache_ttl,
        }
    }

    pub fn sign_policy(&self) -> crate::sign::SignPolicy {
        crate::sign::SignPolicy {
            lifetime: self.cert_lifetime,
            skew: self.clock_skew,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_core::config::MapSource;

    #[test]
    fn defaults() {
        let cfg = Config::from_source(&MapSource::default()).unwrap();
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:7155");
        assert_eq!(cfg.admin_listen.to_string(), "0.0.0.0:7195");
        assert_eq!(cfg.trust_domain, "cluster.local");
        assert_eq!(cfg.cert_lifetime, Duration::from_secs(86_400));
        assert_eq!(cfg.clock_skew, Duration::from_secs(60));
        assert_eq!(cfg.token_verifier, VerifierKind::Kubernetes);
        assert_eq!(cfg.audience, "identity.trellis.dev");
        assert_eq!(
            cfg.server_identity().unwrap().to_string(),
            "spiffe://cluster.local/ns/trellis-system/sa/trellis-identity"
        );
        for (name, default, _) in VARIABLES {
            assert!(name.starts_with("TRELLIS_IDENTITY_"), "{name}");
            // Each documented default is what an unset variable gives.
            if !default.is_empty() {
                let explicit = Config::from_source(&MapSource::new([(*name, *default)]));
                assert!(explicit.is_ok(), "{name}={default}: {explicit:?}");
            }
        }
        // The safer mode is the default, and `--help` says why.
        let (_, default, meaning) = VARIABLES
            .iter()
            .find(|(name, _, _)| *name == TOKEN_VERIFIER)
            .unwrap();
        assert_eq!(*default, "kubernetes");
        for trade_off in [
            "the API server also refuses the token of a deleted pod or ServiceAccount",
            "the token of a deleted pod or ServiceAccount keeps getting certificates until it expires",
        ] {
            assert!(meaning.contains(trade_off), "{meaning}");
        }
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["cert_lifetime"], "86400s");
        assert_eq!(json["token_verifier"], "kubernetes");
        assert_eq!(json["refusal_cache_ttl"], "60s");
        let limits = cfg.limits();
        assert_eq!(limits.rate, 5.0);
        assert_eq!(limits.burst, 20);
        assert_eq!(limits.max_concurrent, 64);
        assert_eq!(limits.refusal_ttl, Duration::from_secs(60));
    }

    #[test]
    fn admission_limits_are_checked() {
        let bad = [
            (CLIENT_RATE, "0"),
            (CLIENT_RATE, "-1"),
            (CLIENT_RATE, "NaN"),
            (CLIENT_RATE, "fast"),
            (CLIENT_BURST, "0"),
            (CLIENT_BURST, "-3"),
            (MAX_CONCURRENT_VERIFICATIONS, "0"),
            (REFUSAL_CACHE_TTL, "11m"),
            (REFUSAL_CACHE_TTL, "60"),
        ];
        for (name, value) in bad {
            let errs = Config::from_source(&MapSource::new([(name, value)])).unwrap_err();
            assert_eq!(errs.keys(), [name], "{name}={value}: {errs}");
        }
        let ok = Config::from_source(&MapSource::new([
            (CLIENT_RATE, "0.5"),
            (CLIENT_BURST, "1"),
            (MAX_CONCURRENT_VERIFICATIONS, "1"),
            (REFUSAL_CACHE_TTL, "0s"),
        ]))
        .unwrap();
        assert_eq!(ok.limits().rate, 0.5);
        assert!(ok.limits().refusal_ttl.is_zero());
    }

    #[test]
    fn reports_all_errors_together() {
        let src = MapSource::new([
            (LISTEN, "nowhere"),
            (TRUST_DOMAIN, "Bad Domain"),
            (CERT_LIFETIME, "24"),
            (CLOCK_SKEW, "2h"),
            (TOKEN_VERIFIER, "jwks"),
            (NAMESPACE, "-x"),
            (LOG_FORMAT, "xml"),
        ]);
        let errs = Config::from_source(&src).unwrap_err();
        let keys = errs.keys();
        assert_eq!(
            keys,
            [
                LISTEN,
                CERT_LIFETIME,
                LOG_FORMAT,
                TRUST_DOMAIN,
                NAMESPACE,
                CLOCK_SKEW,
                JWKS_FILE
            ],
            "{errs}"
        );
        let text = errs.to_string();
        assert!(
            text.contains("TRELLIS_IDENTITY_CERT_LIFETIME=\"24\""),
            "{text}"
        );
    }

    #[test]
    fn jwks_settings_and_port_clash() {
        let src = MapSource::new([
            (TOKEN_VERIFIER, "jwks"),
            (JWKS_FILE, "/tmp/jwks.json"),
            (CERT_LIFETIME, "5s"),
            (CLOCK_SKEW, "10s"),
            (ADMIN_LISTEN, "0.0.0.0:7155"),
        ]);
        let errs = Config::from_source(&src).unwrap_err();
        let keys = errs.keys();
        assert_eq!(keys, [CERT_LIFETIME, ADMIN_LISTEN]);
        let ok = Config::from_source(&MapSource::new([
            (TOKEN_VERIFIER, "jwks"),
            (JWKS_FILE, "/tmp/jwks.json"),
            (CERT_LIFETIME, "30s"),
        ]))
        .unwrap();
        assert_eq!(
            ok.jwks_file.as_deref(),
            Some(std::path::Path::new("/tmp/jwks.json"))
        );
        assert_eq!(ok.sign_policy().lifetime, Duration::from_secs(30));
    }
}
