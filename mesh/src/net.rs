//! Address arithmetic for the local mesh: CIDRs, and who gets which address.
//!
//! Pure: no sockets, no system calls. The first host address of the pod CIDR
//! is the bridge's (the pods' gateway); pods follow in file order. Service
//! virtual IPs are taken from the service CIDR the same way. Once a mesh
//! runs, `apply` keeps every address it gave ([`Slots`]): pods and services
//! that stay keep theirs, new ones get the lowest address nobody had.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The IPv6 prefix pods get when the mesh file says `ipv6: true` (a ULA /64).
/// Each mesh has a bridge of its own, so meshes never see each other's
/// addresses and can all use the same prefix.
pub(crate) const POD_PREFIX_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0);
pub(crate) const POD_PREFIX_V6_LEN: u8 = 64;

/// An IPv4 network such as `10.77.0.0/16`: the network address and prefix
/// length, with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// Narrowest and widest networks the mesh accepts: a /30 holds two
    /// hosts, and anything wider than a /8 is surely a typo.
    pub(crate) const MIN_PREFIX: u8 = 8;
    pub(crate) const MAX_PREFIX: u8 = 30;

    pub(crate) fn prefix(self) -> u8 {
        self.prefix
    }

    fn size(self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// How many host addresses there are (without network and broadcast).
    pub(crate) fn host_capacity(self) -> u64 {
        self.size().saturating_sub(2)
    }

    /// The `n`th host address (1-based: `host(1)` is the first usable one),
    /// or `None` past the last.
    pub(crate) fn host(self, n: u64) -> Option<Ipv4Addr> {
        if n == 0 || n > self.host_capacity() {
            return None;
        }
        let base = u64::from(u32::from(self.network));
        u32::try_from(base + n).ok().map(Ipv4Addr::from)
    }

    pub(crate) fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    pub(crate) fn overlaps(self, other: Ipv4Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// Why this network cannot hold pods or services, if it cannot.
    pub(crate) fn unusable_reason(self) -> Option<String> {
        let special: [(&str, Ipv4Cidr); 5] = [
            ("\"this network\" (0.0.0.0/8)", cidr([0, 0, 0, 0], 8)),
            ("loopback (127.0.0.0/8)", cidr([127, 0, 0, 0], 8)),
            ("link-local (169.254.0.0/16)", cidr([169, 254, 0, 0], 16)),
            ("multicast (224.0.0.0/4)", cidr([224, 0, 0, 0], 4)),
            ("reserved (240.0.0.0/4)", cidr([240, 0, 0, 0], 4)),
        ];
        if self.prefix < Self::MIN_PREFIX || self.prefix > Self::MAX_PREFIX {
            return Some(format!(
                "prefix length must be between /{} and /{}",
                Self::MIN_PREFIX,
                Self::MAX_PREFIX
            ));
        }
        special
            .iter()
            .find(|(_, net)| net.overlaps(self))
            .map(|(what, _)| format!("overlaps {what}"))
    }
}

const fn cidr(o: [u8; 4], prefix: u8) -> Ipv4Cidr {
    Ipv4Cidr {
        network: Ipv4Addr::new(o[0], o[1], o[2], o[3]),
        prefix,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not a CIDR such as 10.77.0.0/16")]
    Syntax(String),
    #[error("{given} has host bits set; the network is {network}")]
    HostBits { given: String, network: String },
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if prefix > 32 {
            return Err(syntax());
        }
        let net = Ipv4Cidr {
            network: addr,
            prefix,
        };
        let masked = Ipv4Addr::from(u32::from(addr) & net.mask());
        if masked != addr {
            return Err(CidrError::HostBits {
                given: s.to_string(),
                network: format!("{masked}/{prefix}"),
            });
        }
        Ok(net)
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = CidrError;
    fn try_from(s: String) -> Result<Self, CidrError> {
        s.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(c: Ipv4Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Addresses of the mesh's bridge and pods, in the pod CIDR.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PodAddresses {
    cidr: Ipv4Cidr,
    ipv6: bool,
}

impl PodAddresses {
    pub(crate) fn new(cidr: Ipv4Cidr, ipv6: bool) -> Self {
        Self { cidr, ipv6 }
    }

    /// Pods fit beside the gateway.
    pub(crate) fn capacity(self) -> u64 {
        self.cidr.host_capacity().saturating_sub(1)
    }

    pub(crate) fn gateway(self) -> Option<Ipv4Addr> {
        self.cidr.host(1)
    }

    pub(crate) fn gateway_v6(self) -> Option<Ipv6Addr> {
        self.ipv6.then(|| v6_host(1))
    }

    /// The address of the `index`th pod (0-based, in file order).
    pub(crate) fn pod(self, index: usize) -> Option<Ipv4Addr> {
        self.cidr.host(u64::try_from(index).ok()? + 2)
    }

    pub(crate) fn pod_v6(self, index: usize) -> Option<Ipv6Addr> {
        if !self.ipv6 {
            return None;
        }
        Some(v6_host(u64::try_from(index).ok()? + 2))
    }

    /// The index [`Self::pod`] gave `ip`, if it is a pod address.
    pub(crate) fn index_of(self, ip: Ipv4Addr) -> Option<usize> {
        host_number(self.cidr, ip)?
            .checked_sub(2)
            .and_then(|n| usize::try_from(n).ok())
    }
}

/// Which host number `ip` is in `cidr` (the inverse of [`Ipv4Cidr::host`]).
fn host_number(cidr: Ipv4Cidr, ip: Ipv4Addr) -> Option<u64> {
    if !cidr.contains(ip) {
        return None;
    }
    let n = u64::from(u32::from(ip)) - u64::from(u32::from(cidr.network));
    (1..=cidr.host_capacity()).contains(&n).then_some(n)
}

fn v6_host(n: u64) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(POD_PREFIX_V6) | u128::from(n))
}

/// The `index`th service's virtual IP (0-based, in file order).
pub(crate) fn service_vip(cidr: Ipv4Cidr, index: usize) -> Option<Ipv4Addr> {
    cidr.host(u64::try_from(index).ok()? + 1)
}

/// The index [`service_vip`] gave `vip`.
pub(crate) fn service_vip_index(cidr: Ipv4Cidr, vip: Ipv4Addr) -> Option<usize> {
    host_number(cidr, vip)?
        .checked_sub(1)
        .and_then(|n| usize::try_from(n).ok())
}

/// The bridge's MAC address: fixed, locally administered and unicast, from
/// a hash of `name`. A Linux bridge whose address was never set takes the
/// lowest of its ports', so it would change as pods come and go, and every
/// pod would lose its gateway until its neighbour entry expired.
pub(crate) fn bridge_mac(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    let mut mac = String::from("02");
    for b in &digest[..5] {
        mac.push_str(&format!(":{b:02x}"));
    }
    mac
}

/// Address indexes handed out by name: a name that had one keeps it; a
/// new name gets the lowest index no name had before (what it had may
/// still be in use while `apply` works) and none took since. With nothing
/// before, names get 0, 1, 2… in the order asked: file order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Slots {
    kept: BTreeMap<String, usize>,
    taken: BTreeSet<usize>,
}

impl Slots {
    /// `before`: every name that had an index, and that index.
    pub(crate) fn new(before: impl IntoIterator<Item = (String, usize)>) -> Self {
        let kept: BTreeMap<String, usize> = before.into_iter().collect();
        let taken = kept.values().copied().collect();
        Self { kept, taken }
    }

    /// The index of `name`.
    pub(crate) fn slot(&mut self, name: &str) -> usize {
        if let Some(&i) = self.kept.get(name) {
            return i;
        }
        let i = (0..).find(|i| !self.taken.contains(i)).unwrap_or_default();
        self.taken.insert(i);
        self.kept.insert(name.to_string(), i);
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(c("10.77.0.0/16").to_string(), "10.77.0.0/16");
        assert_eq!(c("10.77.0.0/16").prefix(), 16);
        assert!(matches!(
            "10.77.0.0".parse::<Ipv4Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            "10.77.0.0/33".parse::<Ipv4Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            "nope/8".parse::<Ipv4Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        let err = "10.77.1.5/16".parse::<Ipv4Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "10.77.1.5/16 has host bits set; the network is 10.77.0.0/16"
        );
    }

    #[test]
    fn hosts_skip_network_and_broadcast() {
        let net = c("10.1.2.0/30");
        assert_eq!(net.host_capacity(), 2);
        assert_eq!(net.host(0), None);
        assert_eq!(net.host(1), Some(Ipv4Addr::new(10, 1, 2, 1)));
        assert_eq!(net.host(2), Some(Ipv4Addr::new(10, 1, 2, 2)));
        assert_eq!(net.host(3), None);
        assert_eq!(
            c("10.0.0.0/8").host(65_536),
            Some(Ipv4Addr::new(10, 1, 0, 0))
        );
    }

    #[test]
    fn overlap_and_sanity() {
        assert!(c("10.0.0.0/8").overlaps(c("10.77.0.0/16")));
        assert!(c("10.77.0.0/16").overlaps(c("10.0.0.0/8")));
        assert!(!c("10.77.0.0/16").overlaps(c("10.96.0.0/16")));
        assert!(c("10.77.0.0/16").unusable_reason().is_none());
        assert!(c("127.0.0.0/16")
            .unusable_reason()
            .unwrap()
            .contains("loopback"));
        assert!(c("10.0.0.0/31")
            .unusable_reason()
            .unwrap()
            .contains("prefix length"));
        assert!(c("0.0.0.0/0").unusable_reason().is_some());
        assert!(c("169.254.0.0/16")
            .unusable_reason()
            .unwrap()
            .contains("link-local"));
    }

    #[test]
    fn pods_follow_the_gateway() {
        let pods = PodAddresses::new(c("10.77.0.0/16"), false);
        assert_eq!(pods.gateway(), Some(Ipv4Addr::new(10, 77, 0, 1)));
        assert_eq!(pods.pod(0), Some(Ipv4Addr::new(10, 77, 0, 2)));
        assert_eq!(pods.pod(254), Some(Ipv4Addr::new(10, 77, 1, 0)));
        assert_eq!(pods.pod_v6(0), None);
        assert_eq!(pods.gateway_v6(), None);
        let small = PodAddresses::new(c("10.9.9.0/29"), true);
        assert_eq!(small.capacity(), 5);
        assert_eq!(small.pod(4), Some(Ipv4Addr::new(10, 9, 9, 6)));
        assert_eq!(small.pod(5), None);
        assert_eq!(small.gateway_v6(), Some("fd77::1".parse().unwrap()));
        assert_eq!(small.pod_v6(3), Some("fd77::5".parse().unwrap()));
    }

    #[test]
    fn service_vips_start_at_the_first_host() {
        let net = c("10.96.0.0/16");
        assert_eq!(service_vip(net, 0), Some(Ipv4Addr::new(10, 96, 0, 1)));
        assert_eq!(service_vip(net, 9), Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(service_vip(c("10.96.0.0/30"), 2), None);
    }

    #[test]
    fn indexes_invert_addresses() {
        let pods = PodAddresses::new(c("10.77.0.0/16"), false);
        for i in [0, 1, 253, 254, 1000] {
            assert_eq!(pods.index_of(pods.pod(i).unwrap()), Some(i));
        }
        assert_eq!(pods.index_of(Ipv4Addr::new(10, 77, 0, 1)), None, "gateway");
        assert_eq!(pods.index_of(Ipv4Addr::new(10, 78, 0, 2)), None, "outside");
        let net = c("10.96.0.0/16");
        assert_eq!(
            service_vip_index(net, service_vip(net, 7).unwrap()),
            Some(7)
        );
        assert_eq!(service_vip_index(net, Ipv4Addr::new(10, 96, 0, 0)), None);
    }

    #[test]
    fn bridge_macs_are_stable_local_unicast() {
        let mac = bridge_mac("trls-m-node");
        assert_eq!(mac, bridge_mac("trls-m-node"));
        assert_ne!(mac, bridge_mac("trls-n-node"));
        assert!(mac.starts_with("02:"), "{mac}");
        assert_eq!(mac.len(), 17, "{mac}");
    }

    #[test]
    fn slots_keep_old_names_and_never_reuse_their_indexes() {
        // Fresh: file order.
        let mut s = Slots::new([]);
        assert_eq!(
            [s.slot("a"), s.slot("b"), s.slot("a"), s.slot("c")],
            [0, 1, 0, 2]
        );
        // `b` (1) is gone, `a` and `c` stay, `d` and `e` are new: `d` must
        // not take 1 while `b` may still run.
        let mut s = Slots::new([("a".into(), 0), ("b".into(), 1), ("c".into(), 2)]);
        assert_eq!(
            [s.slot("d"), s.slot("c"), s.slot("e"), s.slot("a")],
            [3, 2, 4, 0]
        );
        // Holes left by earlier applies are filled first.
        let mut s = Slots::new([("a".into(), 0), ("c".into(), 2)]);
        assert_eq!([s.slot("x"), s.slot("y")], [1, 3]);
    }

    #[test]
    fn serde_round_trip() {
        let net = c("10.77.0.0/16");
        let json = serde_json::to_string(&net).unwrap();
        assert_eq!(json, "\"10.77.0.0/16\"");
        assert_eq!(serde_json::from_str::<Ipv4Cidr>(&json).unwrap(), net);
    }
}
