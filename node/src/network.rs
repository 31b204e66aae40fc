//! Network namespaces: the node's (a bridge holding the pod CIDR's first
//! address) and each pod's (a veth into the bridge, an address from the pod
//! CIDR, a default route via the bridge). What a CNI bridge plugin and
//! host-local IPAM do, with `ip`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use trellis_mesh::{names, sys};

/// The pod CIDR, parsed: `10.244.0.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodCidr {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl std::str::FromStr for PodCidr {
    type Err = String;

    fn from_str(s: &str) -> Result<PodCidr, String> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (like 10.244.0.0/24)"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{s:?}: {ip:?} is not an IPv4 address"))?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| (8..=28).contains(l))
            .ok_or_else(|| format!("{s:?}: the prefix length must be 8 to 28"))?;
        let mask = u32::MAX << (32 - prefix_len);
        if u32::from(ip) & !mask != 0 {
            return Err(format!(
                "{s:?} has host bits set (did you mean {}/{prefix_len}?)",
                Ipv4Addr::from(u32::from(ip) & mask)
            ));
        }
        Ok(PodCidr {
            network: ip,
            prefix_len,
        })
    }
}

impl std::fmt::Display for PodCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl PodCidr {
    /// The bridge's (the node's) address: the first host address.
    pub fn gateway(self) -> Ipv4Addr {
        self.host(1).unwrap_or(self.network)
    }

    /// Host address `n` (1-based), if inside the CIDR and not broadcast.
    pub fn host(self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u32 << (32 - self.prefix_len);
        (n >= 1 && n < size - 1).then(|| Ipv4Addr::from(u32::from(self.network) + n))
    }

    /// The first address from 2 up that is not in `taken`.
    pub fn free(self, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        (2..)
            .map_while(|n| self.host(n))
            .find(|ip| !taken.contains(ip))
    }
}

/// The node's namespace with its bridge.
pub fn make_node(netns: &str, cidr: PodCidr) -> anyhow::Result<()> {
    sys::ip(&["netns", "add", netns])?;
    sys::ip(&["-n", netns, "link", "set", "lo", "up"])?;
    sys::ip(&["-n", netns, "link", "add", names::BRIDGE, "type", "bridge"])?;
    let gw = format!("{}/{}", cidr.gateway(), cidr.prefix_len);
    sys::ip(&["-n", netns, "addr", "add", &gw, "dev", names::BRIDGE])?;
    sys::ip(&["-n", netns, "link", "set", names::BRIDGE, "up"])?;
    Ok(())
}

/// `trls-<mesh>-p<first 12 hex digits of the pod's UID>`.
pub fn pod_netns(mesh: &str, uid: &str) -> String {
    let short: String = uid.chars().filter(|c| *c != '-').take(12).collect();
    format!("{}p{short}", names::netns_prefix(mesh))
}

/// The pod's namespace, veth and address. Idempotent on a namespace that
/// exists already (the agent restarted): it is kept as it is.
pub fn make_pod(node_netns: &str, netns: &str, ip: Ipv4Addr, cidr: PodCidr) -> anyhow::Result<()> {
    if sys::netns_exists(netns) {
        return Ok(());
    }
    let veth = names::host_veth_name(netns);
    sys::ip(&["netns", "add", netns])?;
    let made = (|| -> anyhow::Result<()> {
        sys::ip(&["-n", netns, "link", "set", "lo", "up"])?;
        sys::ip(&[
            "-n", node_netns, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
            "netns", netns,
        ])?;
        sys::ip(&[
            "-n",
            node_netns,
            "link",
            "set",
            &veth,
            "master",
            names::BRIDGE,
            "up",
        ])?;
        let addr = format!("{ip}/{}", cidr.prefix_len);
        sys::ip(&["-n", netns, "addr", "add", &addr, "dev", "eth0"])?;
        sys::ip(&["-n", netns, "link", "set", "eth0", "up"])?;
        let gw = cidr.gateway().to_string();
        sys::ip(&["-n", netns, "route", "add", "default", "via", &gw])?;
        Ok(())
    })();
    if made.is_err() {
        let _ = remove_pod(netns);
    }
    made.with_context(|| format!("making the network of {netns}"))
}

/// The pod's IPv4 address on eth0, if its namespace exists.
pub fn pod_ip(netns: &str) -> Option<Ipv4Addr> {
    let out = sys::ip(&["-n", netns, "-4", "-o", "addr", "show", "dev", "eth0"]).ok()?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// Removes the namespace (its veth goes with it) and its `/etc/netns`
/// directory. Processes still in it must be gone first.
pub fn remove_pod(netns: &str) -> anyhow::Result<()> {
    if sys::netns_exists(netns) {
        sys::ip(&["netns", "delete", netns])?;
    }
    let etc = etc_dir(netns);
    if etc.exists() {
        std::fs::remove_dir_all(&etc).with_context(|| format!("removing {}", etc.display()))?;
    }
    Ok(())
}

/// `/etc/netns/<netns>`: what `ip netns exec` mounts over `/etc` files.
pub fn etc_dir(netns: &str) -> PathBuf {
    Path::new(sys::ETC_NETNS_DIR).join(netns)
}

/// Writes the pod's `/etc/hosts` and `/etc/resolv.conf` (no resolver:
/// cluster names are in `hosts`), in place: `ip netns exec` bind-mounts
/// them, so a running container sees the change.
pub fn write_etc(netns: &str, hosts: &str) -> anyhow::Result<()> {
    let dir = etc_dir(netns);
    if !dir.exists() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let path = dir.join("hosts");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(hosts) {
        std::fs::write(&path, hosts).with_context(|| format!("writing {}", path.display()))?;
    }
    let resolv = dir.join("resolv.conf");
    if !resolv.exists() {
        std::fs::write(
            &resolv,
            "# trellis: cluster names are in /etc/hosts; no resolver\noptions ndots:1\n",
        )
        .with_context(|| format!("writing {}", resolv.display()))?;
    }
    Ok(())
}

/// Brings the pod's Service rules to `views`: what `iptables-save` shows
/// now, changed by one `iptables-restore --noflush` (only the Trellis
/// Service chains, and the jumps to them appended if missing).
pub fn apply_services(netns: &str, views: &[crate::services::ServiceView]) -> anyhow::Result<()> {
    let current = sys::run("ip", &["netns", "exec", netns, "iptables-save"], None)?;
    let script = crate::services::iptables_restore(views, &current);
    sys::run(
        "ip",
        &["netns", "exec", netns, "iptables-restore", "--noflush"],
        Some(&script),
    )?;
    Ok(())
}

/// Checks the pod CIDR fits in the node's namespace, before any is made.
pub fn check_cidr(cidr: PodCidr) -> anyhow::Result<()> {
    let service: PodCidr = crate::record::SERVICE_CIDR
        .parse()
        .map_err(anyhow::Error::msg)?;
    let overlap = |a: PodCidr, b: PodCidr| {
        let len = a.prefix_len.min(b.prefix_len);
        let mask = u32::MAX << (32 - len);
        u32::from(a.network) & mask == u32::from(b.network) & mask
    };
    if overlap(cidr, service) {
        bail!("the pod CIDR {cidr} overlaps the Service range {service}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_are_checked_and_allocated_from_the_third_address() {
        let c: PodCidr = "10.244.0.0/24".parse().unwrap();
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 244, 0, 1));
        let taken: BTreeSet<_> = [Ipv4Addr::new(10, 244, 0, 2)].into();
        assert_eq!(c.free(&taken), Some(Ipv4Addr::new(10, 244, 0, 3)));
        assert_eq!(c.host(254), Some(Ipv4Addr::new(10, 244, 0, 254)));
        assert_eq!(c.host(255), None, "the broadcast address is not a host");
        let full: BTreeSet<_> = (2..=254).filter_map(|n| c.host(n)).collect();
        assert_eq!(c.free(&full), None);
        for bad in [
            "10.244.0.1/24",
            "10.244.0.0",
            "10.244.0.0/31",
            "x/24",
            "10.0.0.0/4",
        ] {
            assert!(bad.parse::<PodCidr>().is_err(), "{bad}");
        }
        assert!(check_cidr("10.96.0.0/20".parse().unwrap()).is_err());
        assert!(check_cidr(c).is_ok());
    }

    #[test]
    fn pod_netns_names_fit_and_differ_by_uid() {
        let a = pod_netns("kube", "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9");
        assert_eq!(a, "trls-kube-p0f1e2d3c4b5a");
        assert_ne!(a, pod_netns("kube", "1f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"));
    }
}
