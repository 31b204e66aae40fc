//! Helpers for the webhook tests: a CA and serving certificates, a Secret
//! volume updated as the kubelet does it, a running webhook, HTTPS and
//! admin clients, bounded polling.

// Test code: a panic is how a test fails; not every test uses every helper.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use trellis_core::config::MapSource;
use trellis_core::shutdown::Shutdown;
pub use trellis_core::test_support::{eventually, http_get, TempDir};
use trellis_injector::webhook::config::{self as cfg, Config};
use trellis_injector::webhook::{Metrics, StaticNamespaces, Webhook};
use trellis_injector::NamespaceInfo;

/// The name the API server would use: `<service>.<namespace>.svc`.
pub const SERVER_NAME: &str = "trellis-injector.trellis.svc";

/// A CA that signs serving certificates for [`SERVER_NAME`].
pub struct Pki {
    pub ca: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A serving certificate and its key, PEM.
#[derive(Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub leaf: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "trellis-injector test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2100, 1, 1);
        let ca = params.self_signed(&key).unwrap();
        Self {
            ca: ca.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn serving_pair(&self) -> Pair {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = date_time_ymd(2024, 1, 1);
        params.not_after = date_time_ymd(2100, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            leaf: cert.der().clone(),
        }
    }
}

/// A directory laid out as the kubelet mounts a Secret: `tls.crt` and
/// `tls.key` are symlinks through `..data`, itself a symlink to a
/// timestamped directory; an update writes a new directory and swaps
/// `..data` atomically.
pub struct SecretVolume {
    pub dir: TempDir,
    version: AtomicU32,
}

impl SecretVolume {
    pub fn new(pair: &Pair) -> Self {
        let v = Self {
            dir: TempDir::new("injector-it-secret"),
            version: AtomicU32::new(0),
        };
        v.update(&pair.cert_pem, &pair.key_pem);
        std::os::unix::fs::symlink("..data/tls.crt", v.dir.join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", v.dir.join("tls.key")).unwrap();
        v
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    /// Writes a new version and swaps `..data` to it, then removes the old.
    pub fn update(&self, cert_pem: &str, key_pem: &str) {
        let n = self.version.fetch_add(1, Ordering::Relaxed);
        let name = format!("..2024_01_01_00_00_{n:02}.{}", 1000 + n);
        let data = self.dir.join(&name);
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("tls.crt"), cert_pem).unwrap();
        std::fs::write(data.join("tls.key"), key_pem).unwrap();
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.path().join(old)).unwrap();
        }
    }
}

/// A webhook running in-process.
pub struct Running {
    pub pki: Pki,
    pub pair: Pair,
    pub secret: SecretVolume,
    pub config_dir: TempDir,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub namespaces: Arc<StaticNamespaces>,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<()>,
}

pub fn namespace(name: &str, annotations: &[(&str, &str)]) -> NamespaceInfo {
    NamespaceInfo {
        name: name.to_string(),
        labels: Default::default(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// Starts a webhook on `127.0.0.1:0` with the namespaces `demo`
/// (`trellis.dev/inject: enabled`) and `plain` (no annotation), a cache
/// already synced, a 50 ms reload interval, and `env` on top.
pub async fn start(env: &[(&str, &str)]) -> Running {
    let pki = Pki::new();
    let pair = pki.serving_pair();
    let secret = SecretVolume::new(&pair);
    let config_dir = TempDir::new("injector-it-config");
    std::fs::write(
        config_dir.join("config.yaml"),
        "trustDomain: cluster.local\n",
    )
    .unwrap();
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut vars: Vec<(String, String)> = vec![
        (cfg::LISTEN.into(), "127.0.0.1:0".into()),
        (cfg::ADMIN_LISTEN.into(), "127.0.0.1:0".into()),
        (cfg::TLS_CERT_FILE.into(), path(&secret.cert_path())),
        (cfg::TLS_KEY_FILE.into(), path(&secret.key_path())),
        (
            cfg::CONFIG_FILE.into(),
            path(&config_dir.join("config.yaml")),
        ),
        (cfg::RELOAD_INTERVAL.into(), "50ms".into()),
        (cfg::NAMESPACE_WAIT.into(), "100ms".into()),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let (config, injector) = Config::load(&MapSource::new(vars)).unwrap();
    let webhook = Webhook::bind(config, injector).await.unwrap();
    let namespaces = Arc::new(StaticNamespaces::new([
        namespace("demo", &[("trellis.dev/inject", "enabled")]),
        namespace("plain", &[]),
    ]));
    let shutdown = Shutdown::new();
    let (addr, admin, metrics) = (
        webhook.local_addr(),
        webhook.admin_addr(),
        webhook.metrics(),
    );
    let task = tokio::spawn(webhook.run(namespaces.clone(), shutdown.clone()));
    Running {
        pki,
        pair,
        secret,
        config_dir,
        addr,
        admin,
        metrics,
        namespaces,
        shutdown,
        task,
    }
}

/// A client configuration trusting `ca`, for the given TLS versions.
pub fn client_config(
    ca: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Handshakes with the webhook; the leaf it presented.
pub async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<(
    CertificateDer<'static>,
    tokio_rustls::client::TlsStream<TcpStream>,
)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok((leaf, tls))
}

/// The leaf the webhook presents to a new TLS 1.3 connection.
pub async fn presented(r: &Running) -> CertificateDer<'static> {
    let config = client_config(&r.pki.ca, &[&rustls::version::TLS13]);
    handshake(r.addr, config).await.unwrap().0
}

/// Sends one HTTP/1.1 request over a fresh TLS 1.3 connection.
pub async fn request(
    r: &Running,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (http::StatusCode, Bytes) {
    let config = client_config(&r.pki.ca, &[&rustls::version::TLS13]);
    let (_, tls) = handshake(r.addr, config).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, SERVER_NAME)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

/// POSTs one review over HTTP/2 (ALPN `h2`), as the API server may.
pub async fn review_h2(r: &Running, body: Vec<u8>) -> serde_json::Value {
    let mut config = (*client_config(&r.pki.ca, &[&rustls::version::TLS13])).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let (_, tls) = handshake(r.addr, Arc::new(config)).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("https://{SERVER_NAME}/inject"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// Sends `head` and `body` as they are, closes the writing side (TLS
/// close_notify, then FIN) and reads everything the server answers.
pub async fn raw_exchange(r: &Running, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = client_config(&r.pki.ca, &[&rustls::version::TLS13]);
    let (_, mut tls) = handshake(r.addr, config).await.unwrap();
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    tls.shutdown().await.unwrap();
    let mut out = Vec::new();
    // The server may end with a reset instead of close_notify; what was
    // read until then is the answer.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// POSTs a review to `/inject`; the answer must be 200 and JSON.
pub async fn review(r: &Running, body: impl Into<Vec<u8>>) -> serde_json::Value {
    let (status, body) = request(r, "POST", "/inject", body.into()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// GET on the admin port (plain HTTP/1.1): (status, body).
pub async fn admin_get(r: &Running, path: &str) -> (u16, String) {
    http_get(r.admin, path).await
}

/// A sample review from `tests/data`.
pub fn sample(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of one sample line of `/metrics` text, 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}
