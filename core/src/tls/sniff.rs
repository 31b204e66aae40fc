//! What a buffered TLS ClientHello asks for, without consuming it.

use rustls::server::Acceptor;

/// The result of [`sniff_client_hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sniff {
    /// A complete ClientHello: the ALPN protocols it offers (in its order;
    /// empty if it offers none) and its SNI host name, if any.
    ClientHello {
        alpn: Vec<Vec<u8>>,
        sni: Option<String>,
    },
    /// The bytes so far are the start of a TLS handshake; read more.
    NeedMore,
    /// Not a TLS ClientHello (or one too malformed to read): treat the bytes
    /// as something else.
    NotTls,
}

/// Peeks at the start of a connection (the bytes protocol detection has
/// buffered, possibly incomplete) for a TLS ClientHello. The bytes are only
/// read: the caller replays them to whichever handler it picks.
///
/// Never panics; bounded work for any input (rustls refuses handshake
/// messages beyond 64 KiB).
pub fn sniff_client_hello(buf: &[u8]) -> Sniff {
    // A TLS record starts with content type 22 (handshake) and major version 3.
    match buf {
        [] | [0x16] => return Sniff::NeedMore,
        [0x16, 0x03, ..] => {}
        _ => return Sniff::NotTls,
    }
    let mut acceptor = Acceptor::default();
    let mut rest = buf;
    loop {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => return Sniff::NeedMore,
            Ok(_) => {}
            Err(_) => return Sniff::NotTls,
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                return Sniff::ClientHello {
                    alpn: hello
                        .alpn()
                        .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
                        .unwrap_or_default(),
                    sni: hello.server_name().map(str::to_string),
                };
            }
            Ok(None) if rest.is_empty() => return Sniff::NeedMore,
            Ok(None) => {}
            Err(_) => return Sniff::NotTls,
        }
    }
}
