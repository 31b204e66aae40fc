//! `trellis-proxy init --check`: is this pod's traffic captured?
//!
//! In CNI mode the capture rules are written by the Trellis CNI plugin when
//! the pod's network is set up, and `trellis-init` runs with no capability
//! at all, so it cannot read the rules. It tests them instead, as the
//! application's own traffic will meet them: it listens on the proxy's
//! outbound port on loopback, connects to an address of the IPv4
//! documentation range (TEST-NET-1, never a real host) and sends a random
//! token. With the rules in place `OUTPUT` redirects the connection to the
//! listener, which echoes the token; without them the connection goes
//! nowhere (no route, refused, or time-out) and the pod fails with a
//! message naming the fix. Retrying does not help such a pod (its network
//! was set up once, without the plugin, typically on a fresh node before
//! the installer ran there): it has to be deleted and created again.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::{InitError, Plan};

/// Where the probe connects: 192.0.2.1, TEST-NET-1 (RFC 5737).
const PROBE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// In an IPv6-only pod: 2001:db8::1, the documentation prefix (RFC 3849).
const PROBE_ADDR_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The first destination port tried; the first one not skipped is used.
const PROBE_PORT: u16 = 20_001;
/// How long the connect and the echo may take each: the redirected
/// connection is local, so seconds mean the rules are not there.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Fails unless a connection from this process (not the proxy's user) to an
/// outside address arrives at the outbound port. IPv4 first; an IPv6-only
/// pod (no IPv4 route) is probed over IPv6 (2001:db8::1, the documentation
/// prefix, redirected to `[::1]`).
pub(crate) fn redirect_in_place(plan: &Plan) -> Result<(), InitError> {
    let port = (PROBE_PORT..=u16::MAX)
        .find(|p| {
            !plan
                .skip_outbound
                .iter()
                .any(|r| r.first <= *p && *p <= r.last)
        })
        .unwrap_or(PROBE_PORT);
    let v4 = Probe {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, plan.outbound_port)),
        target: SocketAddr::from((PROBE_ADDR, port)),
    };
    let v6 = Probe {
        listen: SocketAddr::from((Ipv6Addr::LOCALHOST, plan.outbound_port)),
        target: SocketAddr::from((PROBE_ADDR_V6, port)),
    };
    let failed = match v4.run() {
        Ok(()) => return Ok(()),
        Err(Failure::Probe(e))
            if e.kind() == io::ErrorKind::NetworkUnreachable && super::apply::ipv6_enabled() =>
        {
            tracing::info!(target = %v4.target, "no IPv4 route: checking over IPv6");
            match v6.run() {
                Ok(()) => return Ok(()),
                Err(failure) => (v6, failure),
            }
        }
        Err(failure) => (v4, failure),
    };
    Err(failed.1.into_error(&failed.0, plan.outbound_port))
}

/// One probe: a listener on the proxy's outbound port on loopback, and a
/// connection to an outside address that the rules must redirect to it.
struct Probe {
    listen: SocketAddr,
    target: SocketAddr,
}

enum Failure {
    Bind(io::Error),
    Probe(io::Error),
}

impl Probe {
    fn run(&self) -> Result<(), Failure> {
        let listener = TcpListener::bind(self.listen).map_err(Failure::Bind)?;
        let token = format!("trellis-capture-check {:016x}\n", rand_u64());
        // The echo side: one connection, bounded by the same time-out.
        std::thread::spawn(move || echo_one(&listener));
        probe(self.target, &token).map_err(Failure::Probe)?;
        tracing::info!(target = %self.target, redirected_to = %self.listen, "the capture rules are in place");
        Ok(())
    }
}

impl Failure {
    fn into_error(self, probe: &Probe, port: u16) -> InitError {
        let (listen, target) = (probe.listen, probe.target);
        InitError::NotCaptured(match self {
            Failure::Bind(e) => format!(
                "could not listen on {listen} to check the capture rules: {e} (does another container of the pod use port {port}?)"
            ),
            Failure::Probe(e) => format!(
                "this pod's traffic is not captured: a connection to {target} was not redirected to the proxy's outbound port {listen} ({e}). \
                 The pod was injected for capture by the Trellis CNI plugin (trellis-init runs `init --check`), and the plugin did not set up \
                 this pod's network. Is the trellis-cni DaemonSet running on this node (chart value cni.enabled=true), and is trellis-cni \
                 chained in the node's CNI configuration? A pod's network is set up once, when it is created: once the plugin is in place, \
                 delete this pod so that it is created again. To capture with a privileged init container instead, install the \
                 chart with cni.enabled=false and re-create the pod."
            ),
        })
    }
}

fn probe(target: SocketAddr, token: &str) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(token.as_bytes())?;
    let mut echoed = vec![0; token.len()];
    stream.read_exact(&mut echoed)?;
    if echoed != token.as_bytes() {
        return Err(io::Error::other(
            "something answered, but not this check: the connection reached another listener",
        ));
    }
    Ok(())
}

fn echo_one(listener: &TcpListener) {
    let Ok((mut stream, _)) = listener.accept() else {
        return;
    };
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 64 {
        match stream.read(&mut byte) {
            Ok(1) => {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    break;
                }
            }
            _ => return,
        }
    }
    let _ = stream.write_all(&line);
}

/// A token that another listener cannot guess: the time and the process id,
/// hashed (no cryptographic strength is needed, only uniqueness).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()))
}
