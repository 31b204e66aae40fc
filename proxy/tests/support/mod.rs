//! Test support: an in-process proxy with a fake original-destination
//! lookup, upstream servers, and an "eventually" helper.

#![allow(dead_code)] // each test file uses a different part of this module

pub mod controller;
pub mod identity;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trellis_core::config::MapSource;
use trellis_core::contract::proxy_env;
use trellis_core::shutdown::Shutdown;
use trellis_proxy::orig_dst::FixedOrigDst;
use trellis_proxy::{Config, Proxy};

pub struct TestProxy {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts a proxy on ephemeral ports whose every connection's original
/// destination is `dst`. `extra` overrides config variables.
pub async fn start_proxy(dst: SocketAddr, extra: &[(&str, &str)]) -> TestProxy {
    let mut vars = vec![
        (proxy_env::OUTBOUND_LISTEN, "127.0.0.1:0"),
        (proxy_env::INBOUND_LISTEN, "127.0.0.1:0"),
        (proxy_env::ADMIN_LISTEN, "127.0.0.1:0"),
        (proxy_env::DETECT_TIMEOUT, "100ms"),
    ];
    vars.extend_from_slice(extra);
    let config = Config::from_source(&MapSource::new(vars)).expect("test config is valid");
    let proxy = Proxy::bind(config, Arc::new(FixedOrigDst(dst)))
        .await
        .expect("bind proxy");
    let (outbound, inbound, admin) = (
        proxy.outbound_addr(),
        proxy.inbound_addr(),
        proxy.admin_addr(),
    );
    let shutdown = Shutdown::new();
    let task = tokio::spawn(proxy.run(shutdown.clone()));
    TestProxy {
        outbound,
        inbound,
        admin,
        shutdown,
        task,
    }
}

/// An upstream HTTP server (HTTP/1.1 and h2c) with a few endpoints:
/// `/status/N`, `/delay/MS`, `/echo` (streams the body back), `/upgrade`
/// (101, then echoes raw bytes), `/grpc-fail` (gRPC status 14 in trailers),
/// anything else: 200 "hello".
pub async fn http_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(upstream_handler);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

async fn upstream_handler(mut req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let path = req.uri().path().to_string();
    let mut rsp = if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full("status"));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        r
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(full("delayed"))
    } else if path == "/echo" {
        Response::new(req.into_body().boxed())
    } else if path == "/upgrade" {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r.headers_mut().insert("upgrade", "echo".parse().unwrap());
        r
    } else if path == "/grpc-fail" {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(vec![
            Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(hyper::body::Frame::trailers(trailers)),
        ]));
        let mut r = Response::new(body.boxed());
        r.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        r
    } else {
        Response::new(full("hello"))
    };
    rsp.headers_mut()
        .insert("x-upstream", "yes".parse().unwrap());
    Ok(rsp)
}

/// A server-speaks-first TCP service: writes a banner on accept, then
/// echoes.
pub async fn banner_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind banner");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = s.write_all(b"220 ready\r\n").await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// An HTTP/1.1 client (keep-alive pool) and an h2c client.
pub fn h1_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub async fn get(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    proxy: SocketAddr,
    path: &str,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let req = Request::get(format!("http://{proxy}{path}"))
        .header("host", "web.demo.svc.cluster.local:80")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let rsp = client.request(req).await.expect("response");
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

/// The proxy's `/metrics` text.
pub async fn metrics(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).await.expect("connect admin");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Value of the sample whose line starts with `prefix` (name and labels).
pub fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `check` until it returns true, at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A test mesh CA (root → intermediate) issuing workload certificates.
pub struct TestCa {
    pub root_pem: String,
    intermediate: rustls_pki_types::CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca = |cn: String, c: BasicConstraints| {
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.is_ca = IsCa::Ca(c);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p
        };
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca(format!("{name} root"), BasicConstraints::Unconstrained);
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let key = KeyPair::generate().unwrap();
        let params = ca(format!("{name} issuer"), BasicConstraints::Constrained(0));
        let intermediate = params.signed_by(&key, &root_issuer).unwrap();
        Self {
            root_pem: root.pem(),
            intermediate: intermediate.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn roots(&self) -> Arc<trellis_core::tls::TrustRoots> {
        Arc::new(trellis_core::tls::TrustRoots::from_pem(self.root_pem.as_bytes()).unwrap())
    }

    /// Credentials for `id`, holding a fresh certificate of this CA.
    pub fn creds(
        &self,
        id: &str,
        roots: &Arc<trellis_core::tls::TrustRoots>,
    ) -> Arc<trellis_core::tls::Credentials> {
        use rcgen::{
            CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
        };
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::ExplicitNoCa;
        p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let creds = trellis_core::tls::Credentials::new(id.parse().unwrap(), roots.clone());
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        creds
            .set(der, vec![cert.der().clone(), self.intermediate.clone()])
            .unwrap();
        Arc::new(creds)
    }
}

/// Starts a proxy with a mesh view: its own credentials and policy.
pub async fn start_mesh_proxy(
    dst: SocketAddr,
    mesh: trellis_proxy::mesh::Mesh,
) -> (TestProxy, Arc<trellis_proxy::mesh::Mesh>) {
    let vars = vec![
        (proxy_env::OUTBOUND_LISTEN, "127.0.0.1:0"),
        (proxy_env::INBOUND_LISTEN, "127.0.0.1:0"),
        (proxy_env::ADMIN_LISTEN, "127.0.0.1:0"),
        (proxy_env::DETECT_TIMEOUT, "100ms"),
    ];
    let config = Config::from_source(&MapSource::new(vars)).unwrap();
    let proxy = Proxy::bind_with_mesh(config, Arc::new(FixedOrigDst(dst)), mesh)
        .await
        .unwrap();
    let mesh = proxy.mesh().clone();
    let (outbound, inbound, admin) = (
        proxy.outbound_addr(),
        proxy.inbound_addr(),
        proxy.admin_addr(),
    );
    let shutdown = Shutdown::new();
    let task = tokio::spawn(proxy.run(shutdown.clone()));
    (
        TestProxy {
            outbound,
            inbound,
            admin,
            shutdown,
            task,
        },
        mesh,
    )
}
