//! The restore scripts: pure functions from a [`Plan`] and the current `nat`
//! table (as `iptables-save -t nat` prints it) to `iptables-restore --noflush`
//! input. No IO here.

use std::fmt;

use crate::config::PortRange;

use super::Plan;

/// The chain that built-in `PREROUTING` jumps to.
pub(crate) const INBOUND: &str = "TRELLIS_INBOUND";
/// The chain that redirects inbound TCP to the proxy's inbound port.
pub(crate) const INBOUND_REDIRECT: &str = "TRELLIS_INBOUND_REDIRECT";
/// The chain that built-in `OUTPUT` jumps to.
pub(crate) const OUTBOUND: &str = "TRELLIS_OUTBOUND";
/// The chain that redirects outbound TCP to the proxy's outbound port.
pub(crate) const OUTBOUND_REDIRECT: &str = "TRELLIS_OUTBOUND_REDIRECT";

/// Every chain Trellis owns, in the order they are declared.
const CHAINS: [&str; 4] = [INBOUND, INBOUND_REDIRECT, OUTBOUND, OUTBOUND_REDIRECT];

/// A jump from a built-in chain into a Trellis chain.
struct Jump {
    from: &'static str,
    to: &'static str,
    comment: &'static str,
}

const JUMPS: [Jump; 2] = [
    Jump {
        from: "PREROUTING",
        to: INBOUND,
        comment: "inbound: capture TCP connections to the pod",
    },
    Jump {
        from: "OUTPUT",
        to: OUTBOUND,
        comment: "outbound: capture TCP connections from the pod",
    },
];

/// `-m multiport` takes at most 15 ports, a range counting as two.
const MULTIPORT_MAX: usize = 15;

/// An address family: which `*tables-restore` and which loopback network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        })
    }
}

/// The `iptables-restore --noflush` input that installs the capture rules.
///
/// `existing_save_output` is the current `nat` table of the same family and
/// variant (empty when there is none): jumps already there are not added a
/// second time. The Trellis chains themselves are declared, which empties
/// them, and refilled, so the result is the same however often it runs.
pub(crate) fn rules(plan: &Plan, family: Family, existing_save_output: &str) -> String {
    let current = NatTable::parse(existing_save_output);
    let mut script = Script::default();

    script.line("*nat");
    for chain in CHAINS {
        script.line(&format!(":{chain} - [0:0]"));
    }

    // Inbound: everything but the admin port and the skipped ports.
    let admin = plan.admin_port;
    script.rule(
        INBOUND,
        &format!("-p tcp --dport {admin}"),
        "RETURN",
        &format!("inbound: skip the proxy admin port {admin}"),
    );
    for (matcher, ports) in port_matches(&plan.skip_inbound) {
        script.rule(
            INBOUND,
            &matcher,
            "RETURN",
            &format!("inbound: skip-inbound-ports {ports}"),
        );
    }
    script.rule(
        INBOUND,
        "-p tcp",
        INBOUND_REDIRECT,
        "inbound: redirect all other TCP to the proxy",
    );
    let port = plan.inbound_port;
    script.rule(
        INBOUND_REDIRECT,
        "-p tcp",
        &format!("REDIRECT --to-ports {port}"),
        &format!("inbound: redirect to the proxy inbound port {port}"),
    );

    // Outbound: everything but the proxy's own, loopback and skipped ports.
    let uid = plan.proxy_uid;
    script.rule(
        OUTBOUND,
        &format!("-m owner --uid-owner {uid}"),
        "RETURN",
        &format!("outbound: skip traffic of the proxy user (uid {uid})"),
    );
    script.rule(
        OUTBOUND,
        "-o lo",
        "RETURN",
        "outbound: skip traffic leaving through loopback",
    );
    let loopback = family.loopback();
    script.rule(
        OUTBOUND,
        &format!("-d {loopback}"),
        "RETURN",
        &format!("outbound: skip loopback destinations {loopback}"),
    );
    for (matcher, ports) in port_matches(&plan.skip_outbound) {
        script.rule(
            OUTBOUND,
            &matcher,
            "RETURN",
            &format!("outbound: skip-outbound-ports {ports}"),
        );
    }
    script.rule(
        OUTBOUND,
        "-p tcp",
        OUTBOUND_REDIRECT,
        "outbound: redirect all other TCP to the proxy",
    );
    let port = plan.outbound_port;
    script.rule(
        OUTBOUND_REDIRECT,
        "-p tcp",
        &format!("REDIRECT --to-ports {port}"),
        &format!("outbound: redirect to the proxy outbound port {port}"),
    );

    // The jumps, first in their built-in chain, unless already there.
    for jump in &JUMPS {
        if !current.has_jump(jump.from, jump.to) {
            script.line(&format!(
                "-I {} 1 -p tcp {} -j {}",
                jump.from,
                comment(jump.comment),
                jump.to
            ));
        }
    }

    script.line("COMMIT");
    script.text
}

/// The `iptables-restore --noflush` input that deletes every Trellis chain
/// and every rule jumping into one, or `None` when there is nothing to delete.
pub(crate) fn removal(existing_save_output: &str) -> Option<String> {
    let current = NatTable::parse(existing_save_output);
    let ours = |chain: &str| CHAINS.contains(&chain);
    let chains: Vec<&str> = CHAINS
        .into_iter()
        .filter(|c| current.chains.contains(c))
        .collect();
    let jumps: Vec<&SavedRule<'_>> = current
        .rules
        .iter()
        .filter(|r| !ours(r.chain) && r.target.as_deref().is_some_and(ours))
        .collect();
    if chains.is_empty() && jumps.is_empty() {
        return None;
    }

    let mut script = Script::default();
    script.line("*nat");
    // Declaring a chain in a --noflush restore empties it, so nothing inside
    // still refers to another Trellis chain when the chains are deleted.
    for chain in &chains {
        script.line(&format!(":{chain} - [0:0]"));
    }
    for jump in jumps {
        script.line(&format!("-D {}", jump.spec));
    }
    for chain in &chains {
        script.line(&format!("-X {chain}"));
    }
    script.line("COMMIT");
    Some(script.text)
}

/// What differs between the capture rules `plan` asks for and the saved
/// `nat` table (`iptables-save -t nat` output) of one family: each rule of
/// a Trellis chain is known by its chain and comment (which name the ports
/// it concerns), so a missing, extra or changed rule, or a missing jump,
/// is one line of the answer. Empty: the rules are in place.
pub(crate) fn differences(plan: &Plan, family: Family, save_output: &str) -> Vec<String> {
    let current = NatTable::parse(save_output);
    let wanted = rules(plan, family, "");
    // Our own restore script has the shape of a saved table.
    let wanted = NatTable::parse(&wanted);
    let mut problems = Vec::new();
    for chain in CHAINS {
        if !current.chains.contains(&chain) {
            problems.push(format!("chain {chain} is missing"));
        }
    }
    let ours = |r: &&SavedRule<'_>| CHAINS.contains(&r.chain);
    let key = |r: &SavedRule<'_>| (r.chain.to_string(), rule_comment(r.spec));
    let have: Vec<_> = current.rules.iter().filter(ours).map(key).collect();
    let want: Vec<_> = wanted.rules.iter().filter(ours).map(key).collect();
    for (chain, comment) in &want {
        if !have.contains(&(chain.clone(), comment.clone())) {
            problems.push(format!("{chain} lacks the rule {comment:?}"));
        }
    }
    for (chain, comment) in &have {
        if !want.contains(&(chain.clone(), comment.clone())) {
            problems.push(format!("{chain} holds an unexpected rule {comment:?}"));
        }
    }
    for jump in &JUMPS {
        if !current.has_jump(jump.from, jump.to) {
            problems.push(format!("{} does not jump to {}", jump.from, jump.to));
        }
    }
    problems
}

/// The text of a rule's `--comment`, or the whole spec when it has none.
fn rule_comment(spec: &str) -> String {
    let words = words(spec);
    words
        .iter()
        .position(|w| w == "--comment")
        .and_then(|i| words.get(i + 1).cloned())
        .unwrap_or_else(|| spec.to_string())
}

/// A restore script being written.
#[derive(Default)]
struct Script {
    text: String,
}

impl Script {
    fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
    }

    /// Appends `-A chain matcher -m comment --comment "trellis/…" -j target`.
    fn rule(&mut self, chain: &str, matcher: &str, target: &str, what: &str) {
        self.line(&format!(
            "-A {chain} {matcher} {} -j {target}",
            comment(what)
        ));
    }
}

/// The comment match every Trellis rule carries. `what` is our own text,
/// well under the 256-byte limit, with no quote or apostrophe: the save
/// tools print those escaped (`\'`), and the tests find rules by comment.
fn comment(what: &str) -> String {
    format!("-m comment --comment \"trellis/{what}\"")
}

/// Destination-port matchers for a port list, split so that no
/// `-m multiport` rule holds more than [`MULTIPORT_MAX`] ports; each comes
/// with the ports it covers, for the rule's comment.
fn port_matches(ports: &[PortRange]) -> Vec<(String, String)> {
    let weight = |p: &PortRange| if p.first == p.last { 1 } else { 2 };
    let mut chunks: Vec<Vec<PortRange>> = Vec::new();
    let mut used = 0;
    for port in ports {
        match chunks.last_mut() {
            Some(chunk) if used + weight(port) <= MULTIPORT_MAX => chunk.push(*port),
            _ => {
                chunks.push(vec![*port]);
                used = 0;
            }
        }
        used += weight(port);
    }

    let iptables = |p: &PortRange| {
        if p.first == p.last {
            p.first.to_string()
        } else {
            format!("{}:{}", p.first, p.last)
        }
    };
    let join = |chunk: &[PortRange], f: &dyn Fn(&PortRange) -> String| {
        chunk.iter().map(f).collect::<Vec<_>>().join(",")
    };
    chunks
        .iter()
        .map(|chunk| {
            let matcher = match chunk.as_slice() {
                [one] => format!("-p tcp --dport {}", iptables(one)),
                _ => format!("-p tcp -m multiport --dports {}", join(chunk, &iptables)),
            };
            (matcher, join(chunk, &|p| p.to_string()))
        })
        .collect()
}

/// The parts of a saved `nat` table that matter here.
#[derive(Debug, Default)]
struct NatTable<'a> {
    /// Chains declared in it (`:NAME POLICY [counters]`).
    chains: Vec<&'a str>,
    rules: Vec<SavedRule<'a>>,
}

/// One `-A CHAIN …` line of `iptables-save`.
#[derive(Debug)]
struct SavedRule<'a> {
    chain: &'a str,
    /// The line without its leading `-A `: a rule spec `-D` accepts.
    spec: &'a str,
    /// The `-j`/`-g` target, if any.
    target: Option<String>,
}

impl<'a> NatTable<'a> {
    /// Reads the `*nat` section of `iptables-save` output; other tables and
    /// comment lines are ignored.
    fn parse(save_output: &'a str) -> Self {
        let mut table = NatTable::default();
        let mut in_nat = false;
        for line in save_output.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                in_nat = name == "nat";
            } else if line == "COMMIT" {
                in_nat = false;
            } else if !in_nat {
                continue;
            } else if let Some(decl) = line.strip_prefix(':') {
                table.chains.extend(decl.split_whitespace().next());
            } else if let Some(spec) = line.strip_prefix("-A ") {
                let words = words(spec);
                let Some(chain) = spec.split_whitespace().next() else {
                    continue;
                };
                let target = words
                    .iter()
                    .rposition(|w| w == "-j" || w == "-g" || w == "--jump" || w == "--goto")
                    .and_then(|i| words.get(i + 1).cloned());
                table.rules.push(SavedRule {
                    chain,
                    spec,
                    target,
                });
            }
        }
        table
    }

    fn has_jump(&self, from: &str, to: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.chain == from && r.target.as_deref() == Some(to))
    }
}

/// Splits a saved rule into words as iptables-restore does: whitespace
/// separates, double quotes group, a backslash escapes the next character.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                word.extend(chars.next());
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    //! Tests of the private parsing helpers; script tests are in `tests.rs`.
    use super::*;

    #[test]
    fn words_follow_quotes_and_escapes() {
        assert_eq!(
            words(r#"OUTPUT -m comment --comment "say \"-j TRELLIS_OUTBOUND\" here" -j DNAT"#),
            [
                "OUTPUT",
                "-m",
                "comment",
                "--comment",
                r#"say "-j TRELLIS_OUTBOUND" here"#,
                "-j",
                "DNAT"
            ]
        );
        assert_eq!(words("  a  \"\" b "), ["a", "", "b"]);
    }

    #[test]
    fn a_comment_mentioning_the_chain_is_not_a_jump() {
        let save = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -m comment --comment \"-j TRELLIS_OUTBOUND\" -j RETURN\nCOMMIT\n";
        let table = NatTable::parse(save);
        assert!(!table.has_jump("OUTPUT", OUTBOUND));
        assert_eq!(table.rules[0].target.as_deref(), Some("RETURN"));
    }

    #[test]
    fn only_the_nat_table_counts() {
        let save = "*filter\n:TRELLIS_INBOUND - [0:0]\n-A INPUT -j TRELLIS_INBOUND\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n";
        let table = NatTable::parse(save);
        assert_eq!(table.chains, ["PREROUTING"]);
        assert!(table.rules.is_empty());
    }
}
