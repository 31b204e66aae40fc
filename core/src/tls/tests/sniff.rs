//! Sniffing ClientHellos: real ones, truncated ones, other protocols, noise.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use super::fixtures::*;
use crate::tls::verify::ServerIdVerifier;
use crate::tls::*;

/// The bytes a rustls client writes first.
fn client_hello(config: Arc<ClientConfig>, name: ServerName<'static>) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

fn mesh_hello() -> Vec<u8> {
    let ca = Ca::new("mesh");
    let roots = ca.roots();
    let creds = ca.creds(&id("demo", "client"), &roots);
    let config = client_config(&creds, vec![id("demo", "web")], &[H2, TCP]).unwrap();
    client_hello(config, server_name())
}

#[test]
fn sniff_reads_alpn_of_a_mesh_client_hello() {
    let hello = mesh_hello();
    assert_eq!(
        sniff_client_hello(&hello),
        Sniff::ClientHello {
            alpn: vec![H2.to_vec(), TCP.to_vec()],
            sni: None,
        }
    );
    // Bytes after the ClientHello do not matter.
    let mut more = hello.clone();
    more.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]);
    assert!(matches!(
        sniff_client_hello(&more),
        Sniff::ClientHello { .. }
    ));
}

#[test]
fn sniff_reads_sni_of_another_client() {
    let ca = Ca::new("mesh");
    let verifier = ServerIdVerifier {
        roots: ca.roots(),
        expected: vec![id("demo", "web")],
    };
    let config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let name = ServerName::try_from("web.demo.svc.cluster.local").unwrap();
    let hello = client_hello(Arc::new(config), name);
    assert_eq!(
        sniff_client_hello(&hello),
        Sniff::ClientHello {
            alpn: vec![],
            sni: Some("web.demo.svc.cluster.local".into()),
        }
    );
}

#[test]
fn sniff_needs_more_for_every_truncation() {
    let hello = mesh_hello();
    for len in 0..hello.len() {
        assert_eq!(
            sniff_client_hello(&hello[..len]),
            Sniff::NeedMore,
            "prefix of {len} bytes"
        );
    }
}

#[test]
fn sniff_reads_a_client_hello_split_across_records() {
    let hello = mesh_hello();
    let message = &hello[5..];
    let (first, second) = message.split_at(message.len() / 2);
    let mut split = Vec::new();
    for part in [first, second] {
        split.extend_from_slice(&[0x16, 0x03, 0x01]);
        split.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
        split.extend_from_slice(part);
    }
    assert!(
        matches!(sniff_client_hello(&split), Sniff::ClientHello { ref alpn, .. } if alpn.len() == 2)
    );
    for len in 0..split.len() {
        assert_eq!(
            sniff_client_hello(&split[..len]),
            Sniff::NeedMore,
            "prefix of {len} bytes"
        );
    }
}

#[test]
fn sniff_says_not_tls_for_other_protocols() {
    let cases: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x16\x02\x00",
        b"\x15\x03\x03\x00\x02\x02\x28",
        // A handshake record holding a ServerHello, not a ClientHello.
        b"\x16\x03\x03\x00\x04\x02\x00\x00\x00",
    ];
    for bytes in cases {
        assert_eq!(sniff_client_hello(bytes), Sniff::NotTls, "{bytes:?}");
    }
}

#[test]
fn sniff_never_panics_on_random_or_mutated_input() {
    // A deterministic sweep standing in for a fuzz target.
    let hello = mesh_hello();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..6_000 {
        let input: Vec<u8> = match round % 3 {
            0 => (0..next() % 600).map(|_| next() as u8).collect(),
            1 => {
                let mut v = vec![0x16, 0x03, (next() % 4) as u8];
                v.extend((0..next() % 600).map(|_| next() as u8));
                v
            }
            _ => {
                let mut v = hello.clone();
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % v.len();
                    v[i] = next() as u8;
                }
                v.truncate((next() as usize) % (v.len() + 1));
                v
            }
        };
        let _ = sniff_client_hello(&input);
    }
}
