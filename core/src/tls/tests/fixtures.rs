//! Test PKI (root → intermediate → leaves, made with rcgen) and in-memory
//! handshake helpers.

use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::super::verify::{ClientIdVerifier, ServerIdVerifier};
use super::super::{provider, Credentials, HandshakeFailure, TrustRoots};
use crate::spiffe::SpiffeId;

pub const TD: &str = "cluster.local";
pub const H2: &[u8] = b"trellis.h2";
pub const TCP: &[u8] = b"trellis.tcp";

pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).unwrap()
}

pub fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

pub fn dns(s: &str) -> SanType {
    SanType::DnsName(s.try_into().unwrap())
}

/// A leaf certificate chain (leaf, intermediate) and its key.
pub struct Leaf {
    key: PrivateKeyDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf alone, PEM.
    pub pem: String,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// A mesh CA: a self-signed root and an intermediate that signs leaves.
pub struct Ca {
    pub root_pem: String,
    intermediate: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = ca_params(&format!("{name} root"), BasicConstraints::Unconstrained);
        root_params.not_before = date_time_ymd(2020, 1, 1);
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);

        let key = KeyPair::generate().unwrap();
        let params = ca_params(
            &format!("{name} intermediate"),
            BasicConstraints::Constrained(0),
        );
        let intermediate = params.signed_by(&key, &root_issuer).unwrap();
        Self {
            root_pem: root.pem(),
            intermediate: intermediate.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn roots(&self) -> Arc<TrustRoots> {
        Arc::new(TrustRoots::from_pem(self.root_pem.as_bytes()).unwrap())
    }

    /// A workload leaf for `id`, valid now.
    pub fn leaf(&self, id: &SpiffeId) -> Leaf {
        self.leaf_with(vec![uri(&id.to_string())], None)
    }

    /// A leaf with the given SANs and, optionally, validity (year from, year to).
    pub fn leaf_with(&self, sans: Vec<SanType>, years: Option<(i32, i32)>) -> Leaf {
        self.leaf_custom(|params| {
            params.subject_alt_names = sans;
            if let Some((from, to)) = years {
                params.not_before = date_time_ymd(from, 1, 1);
                params.not_after = date_time_ymd(to, 1, 1);
            }
        })
    }

    /// A leaf from workload defaults (no SAN, valid 2024–2100, both EKUs)
    /// changed by `edit`.
    pub fn leaf_custom(&self, edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "workload");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = date_time_ymd(2024, 1, 1);
        params.not_after = date_time_ymd(2100, 1, 1);
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            chain: vec![cert.der().clone(), self.intermediate.clone()],
            pem: cert.pem(),
        }
    }

    /// Credentials for `id` trusting `roots`, with a fresh leaf of this CA.
    pub fn creds(&self, id: &SpiffeId, roots: &Arc<TrustRoots>) -> Arc<Credentials> {
        let creds = Credentials::new(id.clone(), roots.clone());
        let leaf = self.leaf(id);
        creds.set(leaf.key(), leaf.chain).unwrap();
        Arc::new(creds)
    }
}

fn ca_params(cn: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// A bundle of several CAs' roots.
pub fn bundle(cas: &[&Ca]) -> Arc<TrustRoots> {
    let pem: String = cas.iter().map(|ca| ca.root_pem.as_str()).collect();
    Arc::new(TrustRoots::from_pem(pem.as_bytes()).unwrap())
}

/// A server presenting an arbitrary leaf (one `Credentials::set` would
/// refuse), with the mesh's client verifier.
pub fn raw_server(roots: &Arc<TrustRoots>, leaf: &Leaf) -> Arc<ServerConfig> {
    let verifier = ClientIdVerifier {
        roots: roots.clone(),
        trust_domain: TD.into(),
    };
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(leaf.chain.clone(), leaf.key())
        .unwrap();
    Arc::new(config)
}

/// A client presenting an arbitrary leaf, with the mesh's server verifier.
pub fn raw_client(
    roots: &Arc<TrustRoots>,
    expected: Vec<SpiffeId>,
    leaf: &Leaf,
) -> Arc<ClientConfig> {
    let verifier = ServerIdVerifier {
        roots: roots.clone(),
        expected,
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(leaf.chain.clone(), leaf.key())
        .unwrap();
    Arc::new(config)
}

pub type ServerStream = tokio_rustls::server::TlsStream<DuplexStream>;
pub type ClientStream = tokio_rustls::client::TlsStream<DuplexStream>;

/// What a mesh client passes as the server name: the destination's IP.
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(Ipv4Addr::LOCALHOST.into())
}

const BOUND: Duration = Duration::from_secs(10);

/// Runs both sides of a handshake over an in-memory pipe.
pub async fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
) -> (io::Result<ServerStream>, io::Result<ClientStream>) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
    let connector = tokio_rustls::TlsConnector::from(client.clone());
    let both = async {
        tokio::join!(
            acceptor.accept(server_io),
            connector.connect(server_name(), client_io)
        )
    };
    tokio::time::timeout(BOUND, both)
        .await
        .expect("handshake hung")
}

/// A handshake that must succeed.
pub async fn connected(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
) -> (ServerStream, ClientStream) {
    match handshake(server, client).await {
        (Ok(s), Ok(c)) => (s, c),
        (s, c) => panic!(
            "handshake failed: server {:?}, client {:?}",
            s.err(),
            c.err()
        ),
    }
}

/// A handshake the server must refuse; returns the server's error. In TLS
/// 1.3 the client may finish first and learn of the refusal on its first read.
pub async fn refused_by_server(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
) -> io::Error {
    let (s, c) = handshake(server, client).await;
    let err = match s {
        Ok(_) => panic!("server accepted"),
        Err(err) => err,
    };
    if let Ok(mut c) = c {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(BOUND, c.read(&mut buf))
            .await
            .expect("read hung");
        match read {
            Ok(n) => assert_eq!(n, 0, "client read data from a refusing server"),
            Err(e) => assert_eq!(
                HandshakeFailure::from_io(&e),
                HandshakeFailure::PeerRefused,
                "{e}"
            ),
        }
    }
    err
}

/// A handshake the client must refuse; returns the client's error.
pub async fn refused_by_client(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
) -> io::Error {
    let (s, c) = handshake(server, client).await;
    assert!(s.is_err(), "server finished a handshake the client refused");
    match c {
        Ok(_) => panic!("client accepted"),
        Err(err) => err,
    }
}

/// Bytes go both ways over an established connection.
pub async fn ping(s: &mut ServerStream, c: &mut ClientStream) {
    let exchange = async {
        c.write_all(b"ping").await.unwrap();
        c.flush().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        s.write_all(b"pong").await.unwrap();
        s.flush().await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    };
    tokio::time::timeout(BOUND, exchange)
        .await
        .expect("ping hung");
}

/// Waits (bounded) until `cond` holds, polling every few milliseconds.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
