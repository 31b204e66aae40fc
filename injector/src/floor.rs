//! The floor: a minimum a security team sets, cluster-wide (the injector's
//! `floor:` configuration, chart value `injector.floor`) and per namespace
//! (`config.trellis.dev/floor-*` annotations on the Namespace), that a pod's
//! (or namespace's) `config.trellis.dev/*` overrides cannot lower.
//!
//! The effective floor of a pod is the stricter of the two, field by
//! field: a namespace can raise the cluster's floor, never lower it. Each
//! override is compared with it ([`check_policy`], [`check_mtls`],
//! [`PortAllowance::check`]); what falls below becomes a [`Violation`],
//! which the injector turns into a refusal (`enforcement: deny`, the
//! default) or a warning with the floor's value applied (`warn`).
//!
//! Pure: types, parsing and comparisons; no IO.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use trellis_core::config::{parse_ports, PortRange};
use trellis_core::policy::DefaultPolicy;

/// Namespace annotations that raise the floor for the namespace's pods.
pub const FLOOR_ENFORCEMENT: &str = "config.trellis.dev/floor-enforcement";
pub const FLOOR_DEFAULT_INBOUND_POLICY: &str = "config.trellis.dev/floor-default-inbound-policy";
pub const FLOOR_OUTBOUND_MTLS: &str = "config.trellis.dev/floor-outbound-mtls";
pub const FLOOR_SKIP_INBOUND_PORTS: &str = "config.trellis.dev/floor-skip-inbound-ports";
pub const FLOOR_SKIP_OUTBOUND_PORTS: &str = "config.trellis.dev/floor-skip-outbound-ports";
pub const FLOOR_ALLOW_OPT_OUT: &str = "config.trellis.dev/floor-allow-opt-out";
/// Every namespace floor annotation: accepted on a Namespace only.
pub const FLOOR_ANNOTATIONS: [&str; 6] = [
    FLOOR_ENFORCEMENT,
    FLOOR_DEFAULT_INBOUND_POLICY,
    FLOOR_OUTBOUND_MTLS,
    FLOOR_SKIP_INBOUND_PORTS,
    FLOOR_SKIP_OUTBOUND_PORTS,
    FLOOR_ALLOW_OPT_OUT,
];

pub use trellis_core::policy::OutboundMtls;

/// What the injector does with an override below the floor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    /// Admit the pod with the floor's values applied, and warn.
    Warn,
    /// Refuse the pod (AdmissionReview `allowed: false`).
    #[default]
    Deny,
}

impl FromStr for Enforcement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deny" => Ok(Self::Deny),
            "warn" => Ok(Self::Warn),
            other => Err(format!("{other:?} is not an enforcement: use deny or warn")),
        }
    }
}

/// The strictness rank of an inbound policy, SPEC order:
/// all-unauthenticated < audit < all-authenticated < deny.
pub fn policy_rank(p: DefaultPolicy) -> u8 {
    match p {
        DefaultPolicy::AllUnauthenticated => 0,
        DefaultPolicy::Audit => 1,
        DefaultPolicy::AllAuthenticated => 2,
        DefaultPolicy::Deny => 3,
    }
}

/// The stricter of two inbound policies.
pub fn stricter_policy(a: DefaultPolicy, b: DefaultPolicy) -> DefaultPolicy {
    if policy_rank(b) > policy_rank(a) {
        b
    } else {
        a
    }
}

/// Which skip-ports a floor lets an override ask for: `any` (no floor),
/// `none` (the annotation is forbidden), or a port list (only ports in it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PortAllowance {
    #[default]
    Any,
    None,
    Only(Vec<PortRange>),
}

impl FromStr for PortAllowance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "any" => Ok(Self::Any),
            "none" => Ok(Self::None),
            list => match parse_ports(list) {
                Ok(ranges) if !ranges.is_empty() => Ok(Self::Only(ranges)),
                Ok(_) => Err("empty: use any, none or a port list such as 9100,9200-9210".into()),
                Err(e) => Err(format!("use any, none or a port list: {e}")),
            },
        }
    }
}

impl fmt::Display for PortAllowance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::None => f.write_str("none"),
            Self::Only(r) => {
                let list: Vec<String> = r.iter().map(ToString::to_string).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

impl Serialize for PortAllowance {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortAllowance {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A single port is written as a number in YAML.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Port(u16),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Text(t) => t,
            Raw::Port(p) => p.to_string(),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl PortAllowance {
    fn rank(&self) -> u8 {
        match self {
            Self::Any => 0,
            Self::Only(_) => 1,
            Self::None => 2,
        }
    }

    /// The stricter of two: `none` over a list over `any`; of two lists,
    /// the ports in both.
    pub fn stricter(&self, other: &Self) -> Self {
        match (self, other) {
            (Self::Only(a), Self::Only(b)) => {
                let both: Vec<PortRange> = a
                    .iter()
                    .flat_map(|x| b.iter().filter_map(move |y| intersect(*x, *y)))
                    .collect();
                if both.is_empty() {
                    Self::None
                } else {
                    Self::Only(both)
                }
            }
            _ if other.rank() > self.rank() => other.clone(),
            _ => self.clone(),
        }
    }

    /// Splits a requested port list into what the floor allows and what it
    /// does not (each range whole: a range is allowed only when one allowed
    /// range holds all of it).
    pub fn check(&self, requested: &[PortRange]) -> (Vec<PortRange>, Vec<PortRange>) {
        match self {
            Self::Any => (requested.to_vec(), Vec::new()),
            Self::None => (Vec::new(), requested.to_vec()),
            Self::Only(allowed) => requested.iter().partition(|r| {
                allowed
                    .iter()
                    .any(|a| a.first <= r.first && r.last <= a.last)
            }),
        }
    }
}

fn intersect(a: PortRange, b: PortRange) -> Option<PortRange> {
    let first = a.first.max(b.first);
    let last = a.last.min(b.last);
    (first <= last).then_some(PortRange { first, last })
}

/// The cluster-wide floor, the injector configuration's `floor:` (and
/// the shape of the namespace annotations). Every field absent: no floor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FloorConfig {
    /// `deny` (default) or `warn`.
    pub enforcement: Option<Enforcement>,
    /// The weakest default inbound policy a pod may have.
    pub default_inbound_policy: Option<DefaultPolicy>,
    /// The weakest outbound mTLS mode a pod may have.
    pub outbound_mtls: Option<OutboundMtls>,
    /// `any` (default), `none`, or the ports a pod may skip.
    pub skip_inbound_ports: PortAllowance,
    pub skip_outbound_ports: PortAllowance,
    /// Whether a pod may say `trellis.dev/inject: disabled` in a namespace
    /// that says `enabled` (default true).
    pub allow_opt_out: Option<bool>,
}

impl FloorConfig {
    /// Whether it constrains anything (`enforcement` alone does not).
    pub fn has_constraints(&self) -> bool {
        self.default_inbound_policy.is_some()
            || self.outbound_mtls.is_some()
            || self.skip_inbound_ports != PortAllowance::Any
            || self.skip_outbound_ports != PortAllowance::Any
            || self.allow_opt_out == Some(false)
    }
}

/// Where a floor's value came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FloorSource {
    Cluster,
    Namespace(&'static str),
}

impl fmt::Display for FloorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cluster => f.write_str("the cluster floor"),
            Self::Namespace(key) => write!(f, "the namespace's {key}"),
        }
    }
}

/// One field of the effective floor and who set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound<T> {
    pub value: T,
    pub source: FloorSource,
}

/// A pod's effective floor: the cluster's raised by its namespace's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Floor {
    pub enforcement: Enforcement,
    pub default_inbound_policy: Option<Bound<DefaultPolicy>>,
    pub outbound_mtls: Option<Bound<OutboundMtls>>,
    pub skip_inbound_ports: Option<Bound<PortAllowance>>,
    pub skip_outbound_ports: Option<Bound<PortAllowance>>,
    /// `Some` when opting out is forbidden.
    pub no_opt_out: Option<FloorSource>,
}

impl Floor {
    /// Whether any constraint is set: only then are bad overrides refused
    /// (or overridden) rather than leaving the pod unmeshed with a warning.
    pub fn is_set(&self) -> bool {
        self.default_inbound_policy.is_some()
            || self.outbound_mtls.is_some()
            || self.skip_inbound_ports.is_some()
            || self.skip_outbound_ports.is_some()
            || self.no_opt_out.is_some()
    }

    /// The effective floor from the cluster's and the namespace's
    /// annotations. A bad namespace floor annotation is an error: the pod
    /// is refused rather than admitted under a floor nobody meant.
    pub fn resolve(
        cluster: &FloorConfig,
        ns: &BTreeMap<String, String>,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let read = |key: &'static str| -> Option<(&'static str, String)> {
            ns.get(key).map(|v| (key, v.trim().to_string()))
        };
        let mut floor = Floor {
            enforcement: cluster.enforcement.unwrap_or_default(),
            default_inbound_policy: cluster.default_inbound_policy.map(|value| Bound {
                value,
                source: FloorSource::Cluster,
            }),
            outbound_mtls: cluster.outbound_mtls.map(|value| Bound {
                value,
                source: FloorSource::Cluster,
            }),
            skip_inbound_ports: bound_ports(&cluster.skip_inbound_ports),
            skip_outbound_ports: bound_ports(&cluster.skip_outbound_ports),
            no_opt_out: (cluster.allow_opt_out == Some(false)).then_some(FloorSource::Cluster),
        };
        let enforcement = read(FLOOR_ENFORCEMENT);
        let policy = read(FLOOR_DEFAULT_INBOUND_POLICY);
        let mtls = read(FLOOR_OUTBOUND_MTLS);
        let skip_in = read(FLOOR_SKIP_INBOUND_PORTS);
        let skip_out = read(FLOOR_SKIP_OUTBOUND_PORTS);
        let opt_out = read(FLOOR_ALLOW_OPT_OUT);
        if let Some((key, v)) = enforcement {
            match v.parse::<Enforcement>() {
                // Deny is stricter than warn: a namespace cannot relax a
                // cluster floor's enforcement, only choose its own when
                // the cluster sets no floor.
                Ok(e) if cluster.enforcement.is_none() && !cluster.has_constraints() => {
                    floor.enforcement = e
                }
                Ok(e) => floor.enforcement = floor.enforcement.max(e),
                Err(e) => problems.push(format!("{key} on the namespace: {e}")),
            }
        }
        if let Some((key, v)) = policy {
            match v.parse::<DefaultPolicy>() {
                Ok(p) => raise(&mut floor.default_inbound_policy, p, key, |a, b| {
                    policy_rank(*b) > policy_rank(*a)
                }),
                Err(e) => problems.push(format!("{key} on the namespace: {e}")),
            }
        }
        if let Some((key, v)) = mtls {
            match v.parse::<OutboundMtls>() {
                Ok(m) => raise(&mut floor.outbound_mtls, m, key, |a, b| b > a),
                Err(e) => problems.push(format!("{key} on the namespace: {e}")),
            }
        }
        for (slot, found) in [
            (&mut floor.skip_inbound_ports, skip_in),
            (&mut floor.skip_outbound_ports, skip_out),
        ] {
            if let Some((key, v)) = found {
                match v.parse::<PortAllowance>() {
                    Ok(a) => {
                        let merged = match slot.as_ref() {
                            Some(b) => b.value.stricter(&a),
                            None => a.clone(),
                        };
                        if slot.as_ref().map(|b| &b.value) != Some(&merged)
                            && merged != PortAllowance::Any
                        {
                            *slot = Some(Bound {
                                value: merged,
                                source: FloorSource::Namespace(key),
                            });
                        }
                    }
                    Err(e) => problems.push(format!("{key} on the namespace: {e}")),
                }
            }
        }
        if let Some((key, v)) = opt_out {
            match v.as_str() {
                "true" => {}
                "false" => {
                    floor.no_opt_out.get_or_insert(FloorSource::Namespace(key));
                }
                other => problems.push(format!(
                    "{key} on the namespace: {other:?} is not true or false"
                )),
            }
        }
        if problems.is_empty() {
            Ok(floor)
        } else {
            Err(problems)
        }
    }
}

fn bound_ports(a: &PortAllowance) -> Option<Bound<PortAllowance>> {
    (*a != PortAllowance::Any).then(|| Bound {
        value: a.clone(),
        source: FloorSource::Cluster,
    })
}

/// Raises `slot` to `value` when stricter (or unset).
fn raise<T>(
    slot: &mut Option<Bound<T>>,
    value: T,
    key: &'static str,
    stricter: impl Fn(&T, &T) -> bool,
) {
    let replace = match slot {
        Some(b) => stricter(&b.value, &value),
        None => true,
    };
    if replace {
        *slot = Some(Bound {
            value,
            source: FloorSource::Namespace(key),
        });
    }
}

/// What a violation is about: the metric `reason` (`floor_<kind>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FloorKind {
    /// A namespace floor annotation that cannot be read.
    InvalidFloor,
    /// `trellis.dev/inject: disabled` where the floor forbids opting out.
    OptOut,
    DefaultInboundPolicy,
    OutboundMtls,
    SkipPorts,
    /// An override whose value cannot be read, under a floor.
    InvalidOverride,
}

impl FloorKind {
    /// The metric label: bounded.
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidFloor => "floor_invalid_floor",
            Self::OptOut => "floor_opt_out",
            Self::DefaultInboundPolicy => "floor_default_inbound_policy",
            Self::OutboundMtls => "floor_outbound_mtls",
            Self::SkipPorts => "floor_skip_ports",
            Self::InvalidOverride => "floor_invalid_override",
        }
    }
}

/// One override below the floor, with what it asked for and the floor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: FloorKind,
    /// The whole message: annotation, value, floor, and what was done.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The pod refused under `enforcement: deny`: every violation, the first
/// (by kind) giving the metric reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub violations: Vec<Violation>,
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        self.violations
            .iter()
            .map(|v| v.kind)
            .min()
            .unwrap_or(FloorKind::InvalidOverride)
            .label()
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("refused by the Trellis floor: ")?;
        let all: Vec<String> = self.violations.iter().map(ToString::to_string).collect();
        f.write_str(&all.join("; "))
    }
}

/// Whether an inbound policy is below the floor.
pub fn check_policy(asked: DefaultPolicy, floor: &Option<Bound<DefaultPolicy>>) -> bool {
    floor
        .as_ref()
        .is_some_and(|b| policy_rank(asked) < policy_rank(b.value))
}

/// Whether an outbound mTLS mode is below the floor.
pub fn check_mtls(asked: OutboundMtls, floor: &Option<Bound<OutboundMtls>>) -> bool {
    floor.as_ref().is_some_and(|b| asked < b.value)
}

#[cfg(test)]
mod tests;
