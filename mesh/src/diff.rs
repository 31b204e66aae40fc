//! `mesh apply`, decided before anything is touched: what changes between
//! the plan a mesh runs and the plan of a changed file ([`diff`]), what
//! cannot change in place (refused, every reason at once), the plans of
//! the steps in between ([`surge_plan`], [`switch_plan`]), how a pod's
//! service rules are brought up to date ([`service_rules_update`]), and
//! what a crashed `apply` left half-made ([`orphans`]). Pure; table-tested.
//!
//! The new plan comes from [`plan::build_next`], which keeps the address of
//! every pod and service that stays, so a pod is the same pod in both plans
//! exactly when its network namespace name is the same.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use super::names;
use super::plan::{self, Plan, PodPlan, ServicePlan};
use super::state::State;

/// What `apply` will do.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Change {
    /// Pods to make, in the new plan's order.
    pub add: Vec<PodPlan>,
    /// Pods to remove, in the old plan's order.
    pub remove: Vec<PodPlan>,
    /// Meshed pods that stay and whose policy file changes (new version).
    pub policy: Vec<PodPlan>,
    /// `+demo/api 10.96.0.2`, `-demo/old`, `~demo/web (endpoints)`.
    pub services: Vec<String>,
    pub routes: bool,
    pub policies: bool,
}

impl Change {
    pub(crate) fn is_empty(&self) -> bool {
        self.add.is_empty()
            && self.remove.is_empty()
            && self.policy.is_empty()
            && self.services.is_empty()
            && !self.routes
            && !self.policies
    }

    /// One line per kind of change, for progress output.
    pub(crate) fn summary(&self) -> Vec<String> {
        let names = |pods: &[PodPlan]| {
            pods.iter()
                .map(PodPlan::qualified_name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = Vec::new();
        if !self.add.is_empty() {
            out.push(format!("pods to add: {}", names(&self.add)));
        }
        if !self.remove.is_empty() {
            out.push(format!("pods to remove: {}", names(&self.remove)));
        }
        if !self.services.is_empty() {
            out.push(format!("services: {}", self.services.join(", ")));
        }
        if self.routes {
            out.push("routes changed".to_string());
        }
        if self.policies || !self.policy.is_empty() {
            out.push(format!(
                "policies changed ({} pod policy file(s) to rewrite)",
                self.policy.len()
            ));
        }
        if out.is_empty() {
            out.push("nothing to change".to_string());
        }
        out
    }
}

/// Why a file cannot be applied to the running mesh: every reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused(pub Vec<String>);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot apply in place ({} problem(s); `trellis mesh down` then `up` makes the mesh anew):",
            self.0.len()
        )?;
        for r in &self.0 {
            write!(f, "\n  - {r}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}

/// A mesh that had meshed pods keeps its identity service and controller
/// running when the file no longer has any: `new` gets `old`'s.
pub(crate) fn carry_over(old: &Plan, new: &mut Plan) {
    if new.identity.is_none() {
        new.identity = old.identity.clone();
    }
    if new.controller.is_none() {
        new.controller = old.controller.clone();
    }
}

/// What changes from `old` (the running mesh) to `new`, or why it cannot.
pub(crate) fn diff(old: &Plan, new: &Plan) -> Result<Change, Refused> {
    let mut refused = Vec::new();
    let mut mesh_field = |field: &str, changed: bool, why: &str| {
        if changed {
            refused.push(format!("{field}: {why}"));
        }
    };
    mesh_field(
        "name",
        old.mesh != new.mesh,
        "names the mesh to change; it cannot be renamed",
    );
    mesh_field(
        "trustDomain",
        old.trust_domain != new.trust_domain,
        &format!(
            "cannot change in place ({} → {}): every identity and certificate depends on it",
            old.trust_domain, new.trust_domain
        ),
    );
    mesh_field(
        "podCidr",
        old.pod_cidr != new.pod_cidr,
        &format!(
            "cannot change in place ({} → {}): running pods have their addresses",
            old.pod_cidr, new.pod_cidr
        ),
    );
    mesh_field(
        "serviceCidr",
        old.service_cidr != new.service_cidr,
        &format!(
            "cannot change in place ({} → {}): running pods route the virtual IPs",
            old.service_cidr, new.service_cidr
        ),
    );
    mesh_field(
        "ipv6",
        old.node.gateway_v6.is_some() != new.node.gateway_v6.is_some(),
        "cannot change in place: running pods have their addresses",
    );
    match (&old.identity, &new.identity) {
        (None, Some(_)) => refused.push(
            "workloads: the file has meshed workloads, but the mesh was made without any, so it has no CA, identity service or controller; they are made only by `up`".to_string(),
        ),
        (Some(a), Some(b)) if cert_lifetime(a) != cert_lifetime(b) => refused.push(format!(
            "certLifetime: the identity service's setting cannot change in place ({} → {})",
            cert_lifetime(a),
            cert_lifetime(b)
        )),
        _ => {}
    }
    if old.controller.is_some()
        && new.controller.is_some()
        && old.default_inbound_policy != new.default_inbound_policy
    {
        refused.push(format!(
            "defaultInboundPolicy: the controller's setting cannot change in place ({} → {}); per-workload `config.trellis.dev/default-inbound-policy` annotations can",
            old.default_inbound_policy, new.default_inbound_policy
        ));
    }
    refused.extend(moved_workloads(old, new));
    refused.extend(changed_templates(old, new));
    if !refused.is_empty() {
        return Err(Refused(refused));
    }

    let old_pods: BTreeSet<&str> = old.pods.iter().map(|p| p.netns.as_str()).collect();
    let new_pods: BTreeMap<&str, &PodPlan> =
        new.pods.iter().map(|p| (p.netns.as_str(), p)).collect();
    let add = new
        .pods
        .iter()
        .filter(|p| !old_pods.contains(p.netns.as_str()))
        .cloned()
        .collect();
    let remove = old
        .pods
        .iter()
        .filter(|p| !new_pods.contains_key(p.netns.as_str()))
        .cloned()
        .collect();
    let policy = old
        .pods
        .iter()
        .filter_map(|o| {
            let n = new_pods.get(o.netns.as_str())?;
            let (a, b) = (o.proxy.as_ref()?, n.proxy.as_ref()?);
            (a.policy != b.policy).then(|| (*n).clone())
        })
        .collect();
    Ok(Change {
        add,
        remove,
        policy,
        services: service_changes(&old.services, &new.services),
        routes: old.routes != new.routes,
        policies: old.policies != new.policies,
    })
}

/// A workload that now lives in another namespace (same name, gone from
/// its old namespace).
fn moved_workloads(old: &Plan, new: &Plan) -> Vec<String> {
    let namespaces = |plan: &Plan| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for p in &plan.pods {
            m.entry(p.workload.clone())
                .or_default()
                .insert(p.namespace.clone());
        }
        m
    };
    let (before, after) = (namespaces(old), namespaces(new));
    let mut out = Vec::new();
    for (workload, now) in &after {
        let Some(was) = before.get(workload) else {
            continue;
        };
        if was.is_disjoint(now) {
            out.push(format!(
                "workload {workload}: its namespace cannot change in place ({} → {}); remove it from the file, apply, then add it in its new namespace",
                join(was),
                join(now)
            ));
        }
    }
    out
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// Pods that stay but would run differently: `apply` changes replicas,
/// services, routes and policies, not a running pod.
///
/// Settings a pod derives from the mesh's own fields (its identity from
/// `trustDomain`, its address from `podCidr`, …) are compared as if those
/// fields had not changed: a refused mesh-level change is listed once, not
/// again as a change of every workload.
fn changed_templates(old: &Plan, new: &Plan) -> Vec<String> {
    let mut fields: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    let addresses_follow_mesh = old.pod_cidr != new.pod_cidr
        || old.node.gateway_v6.is_some() != new.node.gateway_v6.is_some();
    for o in &old.pods {
        let Some(n) = new.pods.iter().find(|n| n.netns == o.netns) else {
            continue;
        };
        let n = &as_in_old_mesh(n, o, old, new);
        let (op, np) = (o.proxy.as_ref(), n.proxy.as_ref());
        let checks: [(&'static str, bool); 9] = [
            ("command", o.command != n.command),
            ("env", o.env != n.env),
            ("ports", o.ports != n.ports),
            ("probes", o.probes != n.probes),
            ("meshed", o.meshed != n.meshed),
            ("serviceAccount", o.service_account != n.service_account),
            (
                "proxy settings",
                op.map(|p| (&p.init_args, &p.env)) != np.map(|p| (&p.init_args, &p.env)),
            ),
            ("captured ports", o.captured_ports != n.captured_ports),
            (
                "address",
                !addresses_follow_mesh && (o.ip != n.ip || o.ipv6 != n.ipv6),
            ),
        ];
        for (field, changed) in checks {
            if changed && !(field == "proxy settings" && o.meshed != n.meshed) {
                fields
                    .entry(format!("{}/{}", o.namespace, o.workload))
                    .or_default()
                    .insert(field);
            }
        }
    }
    fields
        .into_iter()
        .map(|(workload, f)| {
            format!(
                "workload {workload}: {} would change its running pods, and `apply` changes replicas, services, routes and policies, not running pods; give the workload a new name (its pods are then new pods, made before the old ones go; point its services' selector at it), or run `trellis mesh down` then `up`",
                f.into_iter().collect::<Vec<_>>().join(", ")
            )
        })
        .collect()
}

/// The identity service's certificate lifetime setting, as configured.
fn cert_lifetime(id: &super::identity::IdentityPlan) -> &str {
    id.env
        .get(trellis_identity::config::CERT_LIFETIME)
        .map_or("default", String::as_str)
}

/// `new`'s pod with what it derives from the mesh's own fields (trust
/// domain, gateway, CIDRs, its address) written as in `old`'s mesh, so
/// that only what the workload itself changes is compared.
fn as_in_old_mesh(n: &PodPlan, o: &PodPlan, old: &Plan, new: &Plan) -> PodPlan {
    let mut pairs: Vec<(String, String)> = vec![
        (new.trust_domain.clone(), old.trust_domain.clone()),
        (new.pod_cidr.to_string(), old.pod_cidr.to_string()),
        (new.service_cidr.to_string(), old.service_cidr.to_string()),
        (new.node.gateway.to_string(), old.node.gateway.to_string()),
        (n.ip.to_string(), o.ip.to_string()),
    ];
    if let (Some(a), Some(b)) = (new.node.gateway_v6, old.node.gateway_v6) {
        pairs.push((a.to_string(), b.to_string()));
    }
    if let (Some(a), Some(b)) = (n.ipv6, o.ipv6) {
        pairs.push((a.to_string(), b.to_string()));
    }
    pairs.retain(|(a, b)| a != b && !a.is_empty());
    let rewrite = |v: &mut String| {
        for (from, to) in &pairs {
            if v.contains(from.as_str()) {
                *v = v.replace(from.as_str(), to);
            }
        }
    };
    let mut p = n.clone();
    p.env.values_mut().for_each(rewrite);
    if let Some(proxy) = &mut p.proxy {
        proxy.env.values_mut().for_each(rewrite);
        proxy.init_args.iter_mut().for_each(rewrite);
    }
    p
}

fn service_changes(old: &[ServicePlan], new: &[ServicePlan]) -> Vec<String> {
    let key = |s: &ServicePlan| format!("{}/{}", s.namespace, s.name);
    let before: BTreeMap<String, &ServicePlan> = old.iter().map(|s| (key(s), s)).collect();
    let after: BTreeSet<String> = new.iter().map(key).collect();
    let mut out = Vec::new();
    for s in new {
        match before.get(&key(s)) {
            None => out.push(format!("+{} {}", key(s), s.vip)),
            Some(o) => {
                let mut what = Vec::new();
                if o.ports != s.ports {
                    what.push("ports");
                }
                if o.endpoints != s.endpoints {
                    what.push("endpoints");
                }
                if !what.is_empty() {
                    out.push(format!("~{} ({})", key(s), what.join(", ")));
                }
            }
        }
    }
    for s in old.iter().filter(|s| !after.contains(&key(s))) {
        out.push(format!("-{}", key(s)));
    }
    out
}

/// While new pods start: the running mesh (`old`) with them added as pods,
/// but not yet as endpoints of any service.
pub(crate) fn surge_plan(old: &Plan, change: &Change) -> Plan {
    let mut plan = old.clone();
    plan.pods.extend(change.add.iter().cloned());
    plan
}

/// Once new pods are ready: `new`, with the pods being removed still listed
/// (they drain what they were sent) but no longer endpoints.
pub(crate) fn switch_plan(new: &Plan, change: &Change) -> Plan {
    let mut plan = new.clone();
    plan.pods.extend(change.remove.iter().cloned());
    plan
}

/// `plan` with only `pods` (for waiting on some pods).
pub(crate) fn only_pods(plan: &Plan, pods: &[PodPlan]) -> Plan {
    let mut p = plan.clone();
    p.pods = pods.to_vec();
    p
}

/// The `iptables-restore --noflush` input that brings a pod whose rules are
/// `saved` (`iptables-save` output) to the service rules of `services`.
/// Declaring a chain flushes it, so the update is atomic per table: the
/// services chain and each service's chain are refilled, chains of
/// services (or ports) that are gone are emptied and deleted, and the jumps
/// into them from the built-in chains are added only where missing.
pub(crate) fn service_rules_update(saved: &str, services: &[ServicePlan]) -> String {
    let fresh = plan::service_rules(services);
    let saved = tables(saved);
    let mut fresh_tables = tables(&fresh);
    // A reject chain left from before (every service has endpoints now):
    // emptied, and kept with its jump.
    if saved.contains_key("filter") && !fresh_tables.contains_key("filter") {
        let had = &saved["filter"];
        if had
            .iter()
            .any(|l| chain_of_decl(l) == Some(names::REJECT_CHAIN))
        {
            fresh_tables.insert(
                "filter".to_string(),
                vec![format!(":{} - [0:0]", names::REJECT_CHAIN)],
            );
        }
    }
    let mut out = String::new();
    for (table, lines) in &fresh_tables {
        let had: &[String] = saved.get(table).map(Vec::as_slice).unwrap_or_default();
        let declared: BTreeSet<&str> = lines.iter().filter_map(|l| chain_of_decl(l)).collect();
        let stale: Vec<&str> = had
            .iter()
            .filter_map(|l| chain_of_decl(l))
            .filter(|c| c.starts_with("TRELLIS_SVC_") && !declared.contains(c))
            .collect();
        out.push_str(&format!("*{table}\n"));
        for l in lines.iter().filter(|l| l.starts_with(':')) {
            out.push_str(l);
            out.push('\n');
        }
        for c in &stale {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        for l in lines.iter().filter(|l| l.starts_with("-A ")) {
            let into_builtin = l.starts_with("-A PREROUTING ") || l.starts_with("-A OUTPUT ");
            if into_builtin && had.contains(l) {
                continue;
            }
            out.push_str(l);
            out.push('\n');
        }
        for c in &stale {
            out.push_str(&format!("-X {c}\n"));
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// `iptables-save`/`-restore` text by table: each table's chain
/// declarations and rules, without comments and `COMMIT`.
fn tables(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in text.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('*') {
            current = Some(t.to_string());
            out.entry(t.to_string()).or_default();
        } else if line == "COMMIT" {
            current = None;
        } else if line.starts_with(':') || line.starts_with("-A ") {
            if let Some(t) = &current {
                out.entry(t.clone()).or_default().push(line.to_string());
            }
        }
    }
    out
}

/// `:CHAIN POLICY [0:0]` → `CHAIN`.
fn chain_of_decl(line: &str) -> Option<&str> {
    line.strip_prefix(':')?.split_whitespace().next()
}

/// Network namespaces the state's intent log records (the namespace
/// itself, its `/etc/netns` directory or a process in it) that are neither
/// the node's nor a pod of the plan: what an `apply` that died left.
pub(crate) fn orphans(state: &State) -> Vec<String> {
    let plan = &state.plan;
    let known: BTreeSet<&str> = std::iter::once(plan.node.netns.as_str())
        .chain(plan.pods.iter().map(|p| p.netns.as_str()))
        .collect();
    let mut out = Vec::new();
    let recorded = state
        .netns
        .iter()
        .map(String::as_str)
        .chain(
            state
                .etc_dirs
                .iter()
                .filter_map(|d| d.file_name().and_then(|n| n.to_str())),
        )
        .chain(state.processes.iter().map(|p| p.netns.as_str()));
    for ns in recorded {
        if !known.contains(ns) && !out.iter().any(|o| o == ns) {
            out.push(ns.to_string());
        }
    }
    out
}

/// Directories under `pods_dir` (`<namespace>.<name>`) that belong to no
/// meshed pod of `plan`.
pub(crate) fn stale_pod_dirs(plan: &Plan, pods_dir: &Path, entries: &[String]) -> Vec<String> {
    let live: BTreeSet<String> = plan
        .pods
        .iter()
        .filter_map(|p| p.proxy.as_ref()?.files.as_ref())
        .filter_map(|f| Some(f.dir.strip_prefix(pods_dir).ok()?.to_str()?.to_string()))
        .collect();
    entries
        .iter()
        .filter(|e| !live.contains(*e))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
