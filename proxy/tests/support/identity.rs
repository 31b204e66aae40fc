//! The real identity service, in-process on loopback: a fresh CA, JWKS
//! tokens from a local signer, certificates of the lifetime asked for.
//! The proxy's ServiceAccount token is written only when the test says so
//! ([`TestIdentity::write_token`]): until then every certificate request of
//! a proxy fails with "reading the ServiceAccount token".

use std::time::Duration;

use trellis_core::config::MapSource;
use trellis_core::contract::proxy_env;
use trellis_core::shutdown::Shutdown;
use trellis_core::test_support::TempDir;
use trellis_identity::config as idcfg;
use trellis_identity::token::{DEFAULT_AUDIENCE, DEFAULT_TOKEN_ISSUER};

pub struct TestIdentity {
    /// `host:port` of the `Certify` service.
    pub addr: String,
    /// The SPIFFE ID the service presents.
    pub server_id: String,
    pub metrics: std::sync::Arc<trellis_identity::metrics::Metrics>,
    dir: TempDir,
    tokens: trellis_identity::LocalIssuer,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), trellis_identity::ServeError>>,
}

impl TestIdentity {
    /// Starts the service, issuing certificates that live `lifetime`
    /// (e.g. `"10s"`).
    pub async fn start(lifetime: &str) -> Self {
        let dir = TempDir::new("proxy-identity");
        let day = Duration::from_secs(86_400);
        let bundle = trellis_identity::bootstrap("cluster.local", day * 10, day * 5).unwrap();
        let tokens = trellis_identity::LocalIssuer::generate(DEFAULT_TOKEN_ISSUER).unwrap();
        let path = |n: &str| dir.join(n).to_string_lossy().into_owned();
        dir.write("issuer.crt", &bundle.issuer_cert_pem);
        dir.write("issuer.key", &bundle.issuer_key_pem);
        dir.write("roots.pem", &bundle.roots_pem);
        dir.write("jwks.json", &tokens.jwks());
        let config = trellis_identity::Config::from_source(&MapSource::new([
            (idcfg::LISTEN, "127.0.0.1:0".to_string()),
            (idcfg::ADMIN_LISTEN, "127.0.0.1:0".to_string()),
            (idcfg::ISSUER_CERT_FILE, path("issuer.crt")),
            (idcfg::ISSUER_KEY_FILE, path("issuer.key")),
            (idcfg::TRUST_ROOTS_FILE, path("roots.pem")),
            (idcfg::TOKEN_VERIFIER, "jwks".to_string()),
            (idcfg::JWKS_FILE, path("jwks.json")),
            (idcfg::CERT_LIFETIME, lifetime.to_string()),
        ]))
        .unwrap();
        let verifier = trellis_identity::verifier_from_config(&config)
            .await
            .unwrap();
        let server = trellis_identity::Server::bind(config, verifier)
            .await
            .unwrap();
        let addr = server.local_addr().to_string();
        let server_id = server.server_identity().to_string();
        let metrics = server.metrics();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Self {
            addr,
            server_id,
            metrics,
            dir,
            tokens,
            shutdown,
            task,
        }
    }

    /// Writes the token of ServiceAccount `demo/web` where the proxy reads
    /// it: from now on its certificate requests succeed.
    pub fn write_token(&self) {
        let token = self
            .tokens
            .sign(
                "demo",
                "web",
                "web-0",
                DEFAULT_AUDIENCE,
                Duration::from_secs(3600),
            )
            .unwrap();
        self.dir.write("token", &token);
    }

    /// The proxy's identity variables, for `spiffe://cluster.local/ns/demo/sa/web`.
    pub fn proxy_vars(&self) -> Vec<(&'static str, String)> {
        let path = |n: &str| self.dir.join(n).to_string_lossy().into_owned();
        vec![
            (proxy_env::IDENTITY_ADDR, self.addr.clone()),
            (proxy_env::IDENTITY_SERVER_ID, self.server_id.clone()),
            (
                proxy_env::IDENTITY,
                "spiffe://cluster.local/ns/demo/sa/web".to_string(),
            ),
            (proxy_env::IDENTITY_TOKEN_FILE, path("token")),
            (proxy_env::TRUST_ROOTS_FILE, path("roots.pem")),
        ]
    }

    pub async fn stop(self) {
        self.shutdown.begin();
        self.task.await.unwrap().unwrap();
    }
}
