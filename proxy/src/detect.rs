//! Protocol detection: which protocol a client speaks, decided from its first
//! bytes, without ever stalling a protocol where the server speaks first.
//!
//! [`classify`] is pure and decides from a prefix; [`detect`] reads from the
//! socket until `classify` decides or the timeout fires. A client that sends
//! nothing within the timeout (SMTP, MySQL, SSH clients wait for the server)
//! is opaque at once.

use std::fmt;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (the connection preface, no TLS).
    H2,
    /// A TLS ClientHello. Passed through untouched (mesh TLS arrives with mTLS).
    Tls,
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2 => "h2",
            Self::Tls => "tls",
            Self::Opaque => "opaque",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why detection ended where it did (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The first bytes said which protocol it is.
    Detected,
    /// The destination port is configured as opaque; nothing was read.
    OpaquePort,
    /// The client sent nothing (or too little to decide) within the timeout.
    Timeout,
    /// The client closed before deciding.
    Eof,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Detected => "detected",
            Self::OpaquePort => "opaque_port",
            Self::Timeout => "timeout",
            Self::Eof => "eof",
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/1 request methods, each followed by the space that ends it.
const HTTP1_METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Bytes enough for any decision `classify` makes.
pub const MAX_PREFIX: usize = 64;

/// Decides the protocol from a connection's first bytes, or `None` when more
/// bytes are needed to tell.
pub fn classify(prefix: &[u8]) -> Option<Protocol> {
    if prefix.is_empty() {
        return None;
    }
    // HTTP/2 preface, or a prefix of it.
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(Protocol::H2)
        } else {
            None
        };
    }
    // TLS record: handshake (22), major version 3.
    if prefix[0] == 0x16 {
        return match prefix.get(1) {
            None => None,
            Some(3) => Some(Protocol::Tls),
            Some(_) => Some(Protocol::Opaque),
        };
    }
    let mut undecided = false;
    for m in HTTP1_METHODS {
        let n = prefix.len().min(m.len());
        if prefix[..n] == m[..n] {
            if n == m.len() {
                return Some(Protocol::Http1);
            }
            undecided = true;
        }
    }
    if undecided {
        None
    } else {
        Some(Protocol::Opaque)
    }
}

/// Reads a client's first bytes until [`classify`] decides, the client
/// closes, or `timeout` passes. Returns the protocol, why, and the bytes read
/// (which the caller must replay to whoever handles the connection).
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> std::io::Result<(Protocol, Reason, BytesMut)> {
    let mut buf = BytesMut::with_capacity(MAX_PREFIX);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            Err(_elapsed) => return Ok((Protocol::Opaque, Reason::Timeout, buf)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => return Ok((Protocol::Opaque, Reason::Eof, buf)),
            Ok(Ok(_)) => {
                if let Some(p) = classify(&buf) {
                    return Ok((p, Reason::Detected, buf));
                }
                if buf.len() >= MAX_PREFIX {
                    return Ok((Protocol::Opaque, Reason::Detected, buf));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classify_table() {
        let cases: &[(&[u8], Option<Protocol>)] = &[
            (b"GET / HTTP/1.1\r\n", Some(Protocol::Http1)),
            (b"POST /x HTTP/1.1\r\n", Some(Protocol::Http1)),
            (b"CONNECT a:443 HTTP/1.1\r\n", Some(Protocol::Http1)),
            (b"GE", None),
            (b"GET", None),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Protocol::H2)),
            (b"PRI * HTTP/2.0\r\n", None),
            (b"PRI", None),
            (b"\x16\x03\x01\x02\x00", Some(Protocol::Tls)),
            (b"\x16", None),
            (b"\x16\x09", Some(Protocol::Opaque)),
            (b"HELO example.com\r\n", Some(Protocol::Opaque)),
            (b"\x00\x00\x00\x01", Some(Protocol::Opaque)),
            (b"get / HTTP/1.1\r\n", Some(Protocol::Opaque)),
            (b"GETX / HTTP/1.1", Some(Protocol::Opaque)),
            (b"", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                classify(input),
                *want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn classify_never_needs_more_than_max_prefix() {
        // Every prefix is decided by MAX_PREFIX bytes, whatever it holds.
        for seed in 0u8..=255 {
            let bytes: Vec<u8> = (0..MAX_PREFIX)
                .map(|i| seed.wrapping_mul(i as u8 + 7))
                .collect();
            assert!(classify(&bytes).is_some());
        }
        assert!(classify(&H2_PREFACE[..MAX_PREFIX.min(H2_PREFACE.len())]).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_is_opaque_after_timeout() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let t0 = tokio::time::Instant::now();
        let (p, r, buf) = detect(&mut server, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!((p, r), (Protocol::Opaque, Reason::Timeout));
        assert!(buf.is_empty());
        assert_eq!(t0.elapsed(), Duration::from_millis(300));
        client.write_all(b"x").await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn split_preface_is_still_h2() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let task = tokio::spawn(async move {
            client.write_all(&H2_PREFACE[..5]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(&H2_PREFACE[5..]).await.unwrap();
            client
        });
        let (p, r, buf) = detect(&mut server, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!((p, r), (Protocol::H2, Reason::Detected));
        assert_eq!(&buf[..], H2_PREFACE);
        drop(task.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn partial_method_then_silence_is_opaque() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GE").await.unwrap();
        let (p, r, buf) = detect(&mut server, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!((p, r), (Protocol::Opaque, Reason::Timeout));
        assert_eq!(&buf[..], b"GE");
    }

    #[tokio::test]
    async fn eof_before_deciding() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let (p, r, _) = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!((p, r), (Protocol::Opaque, Reason::Eof));
    }
}
