//! Handshakes: who is accepted, who is refused, and how refusals surface.

use std::time::Duration;

use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::fixtures::*;
use crate::tls::verify::ClientIdVerifier;
use crate::tls::*;

#[tokio::test]
async fn mutual_handshake_over_tcp_sees_both_identities_and_alpn() {
    let ca = Ca::new("mesh");
    let roots = ca.roots();
    let (web, client_id) = (id("demo", "web"), id("demo", "client"));
    let server_creds = ca.creds(&web, &roots);
    let client_creds = ca.creds(&client_id, &roots);
    let server = server_config(&server_creds, &[H2, TCP]).unwrap();
    let client = client_config(&client_creds, vec![web.clone()], &[TCP]).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let serve = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let (_, conn) = tls.get_ref();
        let peer = peer_identity(conn.peer_certificates().unwrap_or_default()).unwrap();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(&buf).await.unwrap();
        tls.shutdown().await.unwrap();
        (peer, alpn)
    });

    let run = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(client);
        let mut tls = connector
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .unwrap();
        let (_, conn) = tls.get_ref();
        assert_eq!(
            peer_identity(conn.peer_certificates().unwrap_or_default()).unwrap(),
            web
        );
        assert_eq!(conn.alpn_protocol(), Some(TCP));
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        tls.write_all(b"hello").await.unwrap();
        let mut echo = [0u8; 5];
        tls.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"hello");
        serve.await.unwrap()
    };
    let (peer, alpn) = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap();
    assert_eq!(peer, client_id);
    assert_eq!(alpn.as_deref(), Some(TCP));
}

#[tokio::test]
async fn server_refuses_client_without_certificate() {
    let ca = Ca::new("mesh");
    let roots = ca.roots();
    let web = id("demo", "web");
    let server = server_config(&ca.creds(&web, &roots), &[]).unwrap();
    let client = client_config_anonymous(&roots, vec![web], &[]).unwrap();
    let err = refused_by_server(&server, &client).await;
    assert_eq!(
        HandshakeFailure::from_io(&err),
        HandshakeFailure::NoCertificate,
        "{err}"
    );

    // A client whose credentials are not ready yet sends none either.
    let pending = std::sync::Arc::new(Credentials::new(id("demo", "client"), roots.clone()));
    let client = client_config(&pending, vec![id("demo", "web")], &[]).unwrap();
    let err = refused_by_server(&server, &client).await;
    assert_eq!(
        HandshakeFailure::from_io(&err),
        HandshakeFailure::NoCertificate,
        "{err}"
    );
}

#[tokio::test]
async fn server_refuses_client_from_another_ca() {
    let (mesh, other) = (Ca::new("mesh"), Ca::new("other"));
    let web = id("demo", "web");
    let server = server_config(&mesh.creds(&web, &mesh.roots()), &[]).unwrap();
    // The client trusts both CAs (so it accepts the server) but holds a
    // certificate of the other one.
    let client_creds = other.creds(&id("demo", "client"), &bundle(&[&mesh, &other]));
    let client = client_config(&client_creds, vec![web], &[]).unwrap();
    let err = refused_by_server(&server, &client).await;
    assert_eq!(
        HandshakeFailure::from_io(&err),
        HandshakeFailure::UnknownIssuer,
        "{err}"
    );
}

#[tokio::test]
async fn server_refuses_expired_client_certificate() {
    let ca = Ca::new("mesh");
    let roots = ca.roots();
    let web = id("demo", "web");
    let server = server_config(&ca.creds(&web, &roots), &[]).unwrap();
    let expired = ca.leaf_with(
        vec![uri("spiffe://cluster.local/ns/demo/sa/client")],
        Some((2020, 2021)),
    );
    let client = raw_client(&roots, vec![web], &expired);
    let err = refused_by_server(&server, &client).await;
    assert_eq!(
        HandshakeFailure::from_io(&err),
        HandshakeFailure::Expired,
        "{err}"
    );
}

#[tokio::test]
async fn server_refuses_client_without_one_spiffe_id_of_its_trust_domain() {
    let ca = Ca::new("mesh");
    let roots = ca.roots();
    let web = id("demo", "web");
    let server = server_config(&ca.creds(&web, &roots), &[]).unwrap();
    let cases = [
        (
            vec![
                uri("spiffe://cluster.local/ns/demo/sa/a"),
                uri("spiffe://cluster.local/ns/demo/sa/b"),
            ],
            HandshakeFailure::BadIdentity,
        ),
        (vec![dns("client.demo.svc")], HandshakeFailure::BadIdentity),
        (
            vec![uri("https://client.demo/")],
            HandshakeFailure::BadIdentity,
        ),
        (
            vec![uri("spiffe://elsewhere.org/ns/demo/sa/client")],
            HandshakeFailure::WrongIdentity,
        ),
    ];
    for (sans, want) in cases {
        let client = raw_client(&roots, vec![web.clone()], &ca.leaf_with(sans.clone(), None));
        let err = refused_by_server(&server, &client).await;
        assert_eq!(HandshakeFailure::from_io(&err), want, "{sans:?}: {err}");
        assert!(TlsError::in_io_error(&err).is_some(), "{err}");
    }
}

#[tokio::test]
async fn client_refuses_server_with_wrong_identity() {
    let ca = Ca::new("mesh");
    let roots = ca.roots();
    let (web, api) = (id("demo", "web"), id("demo", "api"));
    let server = server_config(&ca.creds(&api, &roots), &[]).unwrap();
    let client = client_config(
        &ca.creds(&id("demo", "client"), &roots),
        vec![web.clone()],
        &[],
    )
    .unwrap();
    let err = refused_by_client(&server, &client).await;
    assert_eq!(
        HandshakeFailure::from_io(&err),
        HandshakeFailure::WrongIdentity
    );
    match TlsError::in_io_error(&err) {
        Some(TlsError::WrongIdentity { expected, got }) => {
            assert_eq!(expected, std::slice::from_ref(&web));
            assert_eq!(got, &api);
        }
        other => panic!("not a wrong-identity error: {other:?} ({err})"),
    }
    // rustls shows the inner error with Debug; this module's Display names both IDs.
    let message = TlsError::in_io_error(&err).unwrap().to_string();
    assert_eq!(
        message,
        "wrong identity: expected spiffe://cluster.local/ns/demo/sa/web, got spiffe://cluster.local/ns/demo/sa/api"
    );

    // One of several expected identities is enough.
    let client = client_config(
        &ca.creds(&id("demo", "client"), &roots),
        vec![web, api],
        &[],
    )
    .unwrap();
    connected(&server, &client).await;
}

#[tokio::test]
async fn client_refuses_server_from_another_ca() {
    let (mesh, other) = (Ca::new("mesh"), Ca::new("other"));
    let web = id("demo", "web");
    let server_creds = other.creds(&web, &bundle(&[&mesh, &other]));
    let server = server_config(&server_creds, &[]).unwrap();
    let client = client_config(
        &mesh.creds(&id("demo", "client"), &mesh.roots()),
        vec![web],
        &[],
    )
    .unwrap();
    let err = refused_by_client(&server, &client).await;
    assert_eq!(
        HandshakeFailure::from_io(&err),
        HandshakeFailure::UnknownIssuer,
        "{err}"
    );
}

#[tokio::test]
async fn client_refuses_expired_server_certificate() {
    let ca = Ca::new("mesh");
    let roots = ca.roots();
    let web = id("demo", "web");
    let server = raw_server(
        &roots,
        &ca.leaf_with(vec![uri(&web.to_string())], Some((2020, 2021))),
    );
    let client = client_config(&ca.creds(&id("demo", "client"), &roots), vec![web], &[]).unwrap();
    let err = refused_by_client(&server, &client).await;
    assert_eq!(
        HandshakeFailure::from_io(&err),
        HandshakeFailure::Expired,
        "{err}"
    );
}

#[tokio::test]
async fn client_refuses_server_with_dns_san_only() {
    let ca = Ca::new("mesh");
    let roots = ca.roots();
    let server = raw_server(
        &roots,
        &ca.leaf_with(vec![dns("web.demo.svc.cluster.local")], None),
    );
    let client = client_config(
        &ca.creds(&id("demo", "client"), &roots),
        vec![id("demo", "web")],
        &[],
    )
    .unwrap();
    let err = refused_by_client(&server, &client).await;
    assert_eq!(
        HandshakeFailure::from_io(&err),
        HandshakeFailure::BadIdentity,
        "{err}"
    );
    assert!(
        matches!(TlsError::in_io_error(&err), Some(TlsError::NoUriSan)),
        "{err}"
    );
}

#[tokio::test]
async fn server_without_certificate_refuses_handshakes() {
    let ca = Ca::new("mesh");
    let roots = ca.roots();
    let web = id("demo", "web");
    let pending = std::sync::Arc::new(Credentials::new(web.clone(), roots.clone()));
    let server = server_config(&pending, &[]).unwrap();
    let client = client_config(&ca.creds(&id("demo", "client"), &roots), vec![web], &[]).unwrap();
    let (s, c) = handshake(&server, &client).await;
    assert!(s.is_err() && c.is_err());
}

#[tokio::test]
async fn alpn_mismatch_is_refused() {
    let ca = Ca::new("mesh");
    let roots = ca.roots();
    let web = id("demo", "web");
    let server = server_config(&ca.creds(&web, &roots), &[H2]).unwrap();
    let client =
        client_config(&ca.creds(&id("demo", "client"), &roots), vec![web], &[TCP]).unwrap();
    let (s, c) = handshake(&server, &client).await;
    let err = s.err().unwrap();
    assert_eq!(
        HandshakeFailure::from_io(&err),
        HandshakeFailure::Protocol,
        "{err}"
    );
    assert_eq!(
        HandshakeFailure::from_io(&c.err().unwrap()),
        HandshakeFailure::PeerRefused
    );
}

/// A ClientHello offering TLS 1.2 only (no supported_versions extension),
/// written by hand: the workspace's rustls has no TLS 1.2 client.
fn tls12_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x03]; // client_version: TLS 1.2
    body.extend([7u8; 32]); // random
    body.push(0); // no session id
    let suites = [0xc0, 0x2b, 0xc0, 0x2f, 0xcc, 0xa9, 0xcc, 0xa8]; // ECDHE-ECDSA/RSA AES-GCM, ChaCha20
    body.extend(u16::try_from(suites.len()).unwrap().to_be_bytes());
    body.extend(suites);
    body.extend([1, 0]); // compression: null
    let extensions = [
        0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00,
        0x17, // supported_groups: x25519, secp256r1
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats: uncompressed
        0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04, // signature_algorithms
    ];
    body.extend(u16::try_from(extensions.len()).unwrap().to_be_bytes());
    body.extend(extensions);
    let mut message = vec![0x01]; // client_hello
    message.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    message.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16::try_from(message.len()).unwrap().to_be_bytes());
    record.extend(message);
    record
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    let ca = Ca::new("mesh");
    let roots = ca.roots();
    let server = server_config(&ca.creds(&id("demo", "web"), &roots), &[]).unwrap();
    let hello = tls12_client_hello();
    assert_eq!(
        sniff_client_hello(&hello),
        Sniff::ClientHello {
            alpn: vec![],
            sni: None
        }
    );

    let (mut client_io, server_io) = tokio::io::duplex(64 * 1024);
    client_io.write_all(&hello).await.unwrap();
    let accept = tokio_rustls::TlsAcceptor::from(server).accept(server_io);
    let err = tokio::time::timeout(Duration::from_secs(10), accept)
        .await
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(
        HandshakeFailure::from_io(&err),
        HandshakeFailure::Protocol,
        "{err}"
    );
    let mut reply = Vec::new();
    client_io.read_to_end(&mut reply).await.unwrap();
    // One fatal alert record: protocol_version (70).
    assert_eq!(reply.first(), Some(&0x15), "{reply:?}");
    assert_eq!(reply.get(5..7), Some(&[2u8, 70][..]), "{reply:?}");
}

#[test]
fn client_verifier_demands_a_certificate() {
    let ca = Ca::new("mesh");
    let verifier = ClientIdVerifier {
        roots: ca.roots(),
        trust_domain: TD.into(),
    };
    assert!(verifier.offer_client_auth() && verifier.client_auth_mandatory());
    assert!(verifier.root_hint_subjects().is_empty());
}

#[test]
fn client_config_needs_an_expected_identity() {
    let ca = Ca::new("mesh");
    let err = client_config_anonymous(&ca.roots(), vec![], &[]).unwrap_err();
    assert!(matches!(err, TlsError::NoExpectedIdentity));
}
