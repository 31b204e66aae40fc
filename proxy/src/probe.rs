//! Where kubelet's probes come from: the node. A plaintext request that
//! looks like a probe is let in as one only from these addresses
//! ([`crate::policy`]), so a pod cannot pass for kubelet.
//!
//! `TRELLIS_PROXY_PROBE_SOURCES` lists them: addresses, CIDRs, and the word
//! `gateway`, this pod's default gateways as its routing table has them
//! when the proxy starts (bridge-based networks, and the local mesh, send
//! node traffic from there). In a cluster whose kubelet speaks from the
//! node's own address the injector adds it (`status.hostIP`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

/// One entry of `TRELLIS_PROXY_PROBE_SOURCES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeSource {
    /// The pod's default gateways.
    Gateway,
    Net(IpNet),
}

impl FromStr for ProbeSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "gateway" {
            return Ok(Self::Gateway);
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Self::Net(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Self::Net(IpNet::from(ip)))
            .map_err(|_| format!("{s:?} is not an address, a CIDR or `gateway`"))
    }
}

impl std::fmt::Display for ProbeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gateway => f.write_str("gateway"),
            Self::Net(n) => n.fmt(f),
        }
    }
}

/// Parses a comma-separated list; empty entries are skipped.
pub fn parse_sources(s: &str) -> Result<Vec<ProbeSource>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// The resolved set: what `gateway` meant when the proxy started, and the
/// listed networks.
#[derive(Debug, Clone, Default)]
pub struct ProbeSources {
    nets: Vec<IpNet>,
}

impl ProbeSources {
    /// Resolves `gateway` from this host's routing tables.
    pub fn resolve(sources: &[ProbeSource]) -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        Self::resolve_with(
            sources,
            &read("/proc/net/route"),
            &read("/proc/net/ipv6_route"),
        )
    }

    /// [`resolve`](Self::resolve) from the text of `/proc/net/route` and
    /// `/proc/net/ipv6_route`.
    pub fn resolve_with(sources: &[ProbeSource], route: &str, ipv6_route: &str) -> Self {
        let mut nets = Vec::new();
        for s in sources {
            match s {
                ProbeSource::Net(n) => nets.push(*n),
                ProbeSource::Gateway => nets.extend(
                    default_gateways_v4(route)
                        .into_iter()
                        .map(IpAddr::V4)
                        .chain(default_gateways_v6(ipv6_route).into_iter().map(IpAddr::V6))
                        .map(IpNet::from),
                ),
            }
        }
        nets.sort();
        nets.dedup();
        Self { nets }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.nets.iter().any(|n| n.contains(&ip))
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }
}

/// The gateways of default routes in `/proc/net/route`: the destination
/// and gateway columns are hex in host (little-endian) byte order.
fn default_gateways_v4(route: &str) -> Vec<Ipv4Addr> {
    route
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (dst, gw, mask) = (cols.get(1)?, cols.get(2)?, cols.get(7)?);
            if *dst != "00000000" || *mask != "00000000" {
                return None;
            }
            let gw = u32::from_str_radix(gw, 16).ok()?;
            (gw != 0).then(|| Ipv4Addr::from(gw.swap_bytes()))
        })
        .collect()
}

/// The next hops of default routes in `/proc/net/ipv6_route` (32 hex
/// digits each, network order).
fn default_gateways_v6(route: &str) -> Vec<Ipv6Addr> {
    route
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (dst, len, hop) = (cols.first()?, cols.get(1)?, cols.get(4)?);
            if dst.chars().any(|c| c != '0') || *len != "00" {
                return None;
            }
            let hop = u128::from_str_radix(hop, 16).ok()?;
            (hop != 0).then(|| Ipv6Addr::from(hop))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t01004D0A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t00004D0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
";
    const IPV6_ROUTE: &str = "\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd770000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
fd770000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
";

    #[test]
    fn gateways_are_read_from_the_routing_tables() {
        assert_eq!(default_gateways_v4(ROUTE), [Ipv4Addr::new(10, 77, 0, 1)]);
        assert_eq!(
            default_gateways_v6(IPV6_ROUTE),
            ["fd77::1".parse::<Ipv6Addr>().unwrap()]
        );
        let s = ProbeSources::resolve_with(&[ProbeSource::Gateway], ROUTE, IPV6_ROUTE);
        assert!(s.contains("10.77.0.1".parse().unwrap()));
        assert!(s.contains("::ffff:10.77.0.1".parse().unwrap()));
        assert!(s.contains("fd77::1".parse().unwrap()));
        assert!(!s.contains("10.77.0.2".parse().unwrap()));
        // No default route: no gateway.
        let none = ProbeSources::resolve_with(&[ProbeSource::Gateway], "Iface\n", "");
        assert!(none.nets().is_empty());
    }

    #[test]
    fn sources_parse() {
        let s = parse_sources("gateway, 10.0.0.0/8,192.168.1.7,,fd00::1").unwrap();
        assert_eq!(
            s,
            [
                ProbeSource::Gateway,
                ProbeSource::Net("10.0.0.0/8".parse().unwrap()),
                ProbeSource::Net("192.168.1.7/32".parse().unwrap()),
                ProbeSource::Net("fd00::1/128".parse().unwrap()),
            ]
        );
        assert!(parse_sources("nodes").unwrap_err().contains("nodes"));
        let r = ProbeSources::resolve_with(&s, "", "");
        assert!(r.contains("10.1.2.3".parse().unwrap()));
        assert!(!r.contains("11.1.2.3".parse().unwrap()));
    }
}
