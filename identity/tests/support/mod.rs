//! Helpers for the component tests: a running service, CSRs, openssl;
//! temporary directories, HTTP and bounded polling (from
//! `trellis_core::test_support`).

// Test code: a panic is how a test fails; not every test file uses every helper.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use trellis_core::config::MapSource;
use trellis_core::shutdown::Shutdown;
use trellis_core::spiffe::SpiffeId;
pub use trellis_core::test_support::{eventually, http_get, TempDir};
use trellis_core::tls::TrustRoots;
use trellis_identity::config::{self as cfg, Config};
use trellis_identity::token::{
    JwksVerifier, KeyError, ServiceAccount, TokenError, DEFAULT_AUDIENCE, DEFAULT_TOKEN_ISSUER,
};
use trellis_identity::{bootstrap, Bundle, LocalIssuer, Server, TokenVerifier};

pub const DAY: Duration = Duration::from_secs(86_400);
pub const HOUR: Duration = Duration::from_secs(3600);
pub const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";

pub fn write_ca(dir: &TempDir, b: &Bundle) {
    dir.write("issuer.crt", &b.issuer_cert_pem);
    dir.write("issuer.key", &b.issuer_key_pem);
    dir.write("roots.pem", &b.roots_pem);
}

pub fn config_in(dir: &TempDir) -> Config {
    config_with(dir, &[])
}

pub fn config_with(dir: &TempDir, vars: &[(&str, &str)]) -> Config {
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let mut all = vec![
        (cfg::LISTEN, "127.0.0.1:0".to_string()),
        (cfg::ADMIN_LISTEN, "127.0.0.1:0".to_string()),
        (cfg::ISSUER_CERT_FILE, p("issuer.crt")),
        (cfg::ISSUER_KEY_FILE, p("issuer.key")),
        (cfg::TRUST_ROOTS_FILE, p("roots.pem")),
        (cfg::TOKEN_VERIFIER, "jwks".to_string()),
        (cfg::JWKS_FILE, p("jwks.json")),
        (cfg::RELOAD_INTERVAL, "100ms".to_string()),
    ];
    all.extend(vars.iter().map(|(k, v)| (*k, v.to_string())));
    Config::from_source(&MapSource::new(all)).unwrap()
}

pub struct Running {
    pub dir: TempDir,
    pub bundle: Bundle,
    pub tokens: LocalIssuer,
    pub addr: String,
    pub admin: std::net::SocketAddr,
    pub server_id: SpiffeId,
    pub metrics: Arc<trellis_identity::metrics::Metrics>,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<Result<(), trellis_identity::server::ServeError>>,
}

impl Running {
    pub fn roots(&self) -> Arc<TrustRoots> {
        Arc::new(TrustRoots::from_pem(self.bundle.roots_pem.as_bytes()).unwrap())
    }
    pub fn token(&self, ns: &str, sa: &str) -> String {
        self.tokens
            .sign(ns, sa, "pod-0", DEFAULT_AUDIENCE, HOUR)
            .unwrap()
    }
}

/// The service with a fresh CA (root and issuer) of its own.
pub async fn start(tag: &str) -> Running {
    start_with(tag, bootstrap("cluster.local", 10 * DAY, 5 * DAY).unwrap()).await
}

/// The service with the CA files `bundle`.
pub async fn start_with(tag: &str, bundle: Bundle) -> Running {
    start_verifying(tag, bundle, &[], async |config, _| {
        trellis_identity::verifier_from_config(config)
            .await
            .unwrap()
    })
    .await
}

/// A stand-in for the API server's TokenReview: counts every review, takes
/// a little while to answer (a simulated round trip, not a wait for
/// anything), and answers as the JWKS of the test's token signer would.
pub struct CountingReview {
    jwks: JwksVerifier,
    pub calls: Arc<AtomicUsize>,
}

impl CountingReview {
    pub fn new(tokens: &LocalIssuer, calls: Arc<AtomicUsize>) -> Self {
        let jwks = JwksVerifier::from_jwks(&tokens.jwks(), DEFAULT_TOKEN_ISSUER, DEFAULT_AUDIENCE)
            .unwrap();
        Self { jwks, calls }
    }
}

impl TokenVerifier for CountingReview {
    async fn verify(&self, token: &str) -> Result<ServiceAccount, TokenError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.jwks.verify(token).await
    }

    fn refresh(&self) -> Result<bool, KeyError> {
        Ok(false)
    }
}

/// The service with a fresh CA, extra configuration `vars`, and the token
/// verifier `make` builds from the configuration and the token signer.
pub async fn start_verifying<V: TokenVerifier>(
    tag: &str,
    bundle: Bundle,
    vars: &[(&str, &str)],
    make: impl AsyncFnOnce(&Config, &LocalIssuer) -> V,
) -> Running {
    let dir = TempDir::new(&format!("identity-it-{tag}"));
    write_ca(&dir, &bundle);
    let tokens = LocalIssuer::generate(DEFAULT_TOKEN_ISSUER).unwrap();
    dir.write("jwks.json", &tokens.jwks());
    let config = config_with(&dir, vars);
    let verifier = make(&config, &tokens).await;
    let server = Server::bind(config, verifier).await.unwrap();
    let addr = server.local_addr().to_string();
    let admin = server.admin_addr();
    let server_id = server.server_identity().clone();
    let metrics = server.metrics();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    let r = Running {
        dir,
        bundle,
        tokens,
        addr,
        admin,
        server_id,
        metrics,
        shutdown,
        task,
    };
    eventually("/ready", async || {
        (http_get(r.admin, "/ready").await.0 == 200).then_some(())
    })
    .await;
    r
}

pub fn csr_for(sans: Vec<SanType>) -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = sans;
    let der = p.serialize_request(&key).unwrap().der().to_vec();
    (key, der)
}

pub fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

pub fn openssl(args: &[&str], dir: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (scripts/install-deps.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?}: {text}");
    text
}

pub fn unix_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// The value of the sample `name` (with labels, as written) in `text`.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

impl Running {
    pub async fn metrics_text(&self) -> String {
        http_get(self.admin, "/metrics").await.1
    }
}
