//! Where a redirected connection was going: `SO_ORIGINAL_DST`, behind a
//! small trait so tests can run the proxy without iptables.

use std::io;

use tokio::net::TcpStream;
use trellis_core::addr::OrigDstAddr;

pub trait OrigDstLookup: Send + Sync + 'static {
    fn orig_dst(&self, stream: &TcpStream) -> io::Result<OrigDstAddr>;
}

/// The real lookup: the address iptables' REDIRECT recorded in conntrack,
/// read with `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6).
/// For a connection that was not redirected this is its own local address.
#[derive(Debug, Default, Clone, Copy)]
pub struct SoOriginalDst;

impl OrigDstLookup for SoOriginalDst {
    fn orig_dst(&self, stream: &TcpStream) -> io::Result<OrigDstAddr> {
        let sock = socket2::SockRef::from(stream);
        let addr = if stream.local_addr()?.is_ipv4() {
            sock.original_dst_v4()?
        } else {
            sock.original_dst_v6()?
        };
        let addr = addr.as_socket().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "original destination is not an IP address",
            )
        })?;
        Ok(OrigDstAddr(canonical(addr)))
    }
}

/// An IPv4 destination seen through an IPv6 socket is still IPv4.
fn canonical(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    match addr {
        std::net::SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => (v4, v6.port()).into(),
            None => addr,
        },
        v4 => v4,
    }
}

/// Every connection goes to one fixed address (tests, benchmarks without
/// iptables).
#[derive(Debug, Clone, Copy)]
pub struct FixedOrigDst(pub std::net::SocketAddr);

impl OrigDstLookup for FixedOrigDst {
    fn orig_dst(&self, _: &TcpStream) -> io::Result<OrigDstAddr> {
        Ok(OrigDstAddr(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unredirected_connection_reports_its_own_address() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        // Without conntrack state for the connection the kernel has no
        // answer (ENOENT); with it, the answer is the address itself.
        match SoOriginalDst.orig_dst(&s) {
            Ok(dst) => assert_eq!(dst.get(), addr),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}"),
        }
    }

    #[test]
    fn mapped_v4_is_v4() {
        let a: std::net::SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(canonical(a).to_string(), "10.0.0.1:80");
    }
}
