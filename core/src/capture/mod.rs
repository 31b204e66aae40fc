//! The pod's traffic-capture rules: `trellis-proxy init`, and the CNI plugin.
//!
//! They are installed once per pod, before the application and the proxy
//! start: by the `trellis-init` init container (`trellis-proxy init`; in the
//! local mesh inside each workload's network namespace), or, in CNI mode, by
//! `trellis-cni` when the pod's network is set up, from the same
//! `trellis-init` arguments (`InitArgs::from_container_args`) and with this
//! same code; `trellis-init` then only checks them without privilege
//! (`--check`, in `check.rs`). They redirect the pod's TCP connections to
//! the proxy with `REDIRECT` rules in the `nat` table of the current network
//! namespace, in four chains of its own:
//!
//! ```text
//!      TCP arriving at the pod                  TCP leaving the pod
//!              │                                        │
//!       nat PREROUTING                             nat OUTPUT
//!              │ (first rule: jump)                     │ (first rule: jump)
//!              ▼                                        ▼
//!       TRELLIS_INBOUND                          TRELLIS_OUTBOUND
//!         RETURN  admin port (7191)                RETURN  uid 7102 (the proxy itself)
//!         RETURN  --skip-inbound-ports             RETURN  -o lo
//!              │                                   RETURN  -d 127.0.0.0/8 (v6: ::1/128)
//!              │                                   RETURN  --skip-outbound-ports
//!              ▼                                        ▼
//!       TRELLIS_INBOUND_REDIRECT                 TRELLIS_OUTBOUND_REDIRECT
//!         REDIRECT --to-ports 7143                 REDIRECT --to-ports 7140
//! ```
//!
//! A `RETURN` hands the connection back to the built-in chain, so whatever
//! else the namespace keeps there (Service DNAT rules, say) still applies to
//! the traffic the mesh leaves alone. The jumps are *inserted* as the first
//! rule of `PREROUTING`/`OUTPUT`, so capture comes before such DNAT rules
//! whichever was installed first. Every rule carries a
//! `-m comment --comment "trellis/…"` saying what it does.
//!
//! The work is decide-then-act:
//!
//! 1. **decide**: `Plan::from_args` validates the flags (every problem
//!    reported at once); `apply::choose_variant` picks the iptables variant
//!    (`auto`: the one already holding more rules, else nft if installed, else
//!    legacy); `rules::rules` turns the plan and the current `nat` table
//!    (`iptables-save -t nat`) into `iptables-restore` input. That last step
//!    is a pure function, table-tested without root in `tests.rs`.
//! 2. **act**: `apply::restore` feeds the script on stdin to
//!    `iptables-restore --noflush` (and `ip6tables-restore` when the namespace
//!    has IPv6), reporting the tool's stderr and the offending line on
//!    failure. One restore is one atomic commit; `--noflush` leaves every
//!    other chain and table alone.
//!
//! Re-running replaces rather than duplicates: declaring `:TRELLIS_X - [0:0]`
//! in a `--noflush` restore empties that chain before it is refilled, and a
//! jump from a built-in chain is added only when the saved table lacks it.
//! `--remove` deletes the jumps and the chains. `--dry-run` prints the scripts
//! instead of running them; it still reads the current rules (read-only), so
//! it prints exactly what would be applied, and when it cannot read them (not
//! root, say) it assumes a fresh table and says so in a `#` comment line.

mod apply;
mod check;
mod rules;

#[cfg(test)]
mod tests;

use std::io::{self, Write};
use std::process::ExitStatus;

use crate::config::{parse_ports, PortRange};
use crate::contract::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID};
use clap::builder::BoolishValueParser;

use self::rules::Family;

/// The init container the injector adds to every meshed pod (SPEC).
pub const INIT_CONTAINER: &str = "trellis-init";
/// In CNI mode, the argument after `init` in `trellis-init`'s arguments:
/// the container then confirms the capture rules instead of writing them,
/// and the CNI plugin writes them, from those same arguments, for a pod
/// whose `trellis-init` says so (a pod without it was injected in
/// init-container mode and is left alone). The contract between the
/// injector and `trellis-cni`, kept here so that neither spells it alone.
pub const CHECK_FLAG: &str = "--check";

/// Flags of `trellis-proxy init`; each can also come from a `TRELLIS_INIT_*`
/// variable (the flag wins).
#[derive(clap::Args, Debug, Clone)]
pub struct InitArgs {
    /// Port of the proxy's inbound listener: TCP arriving at the pod is
    /// redirected there.
    #[arg(long, env = "TRELLIS_INIT_INBOUND_PORT", value_name = "PORT", default_value_t = INBOUND_PORT)]
    pub(crate) inbound_port: u16,

    /// Port of the proxy's outbound listener: TCP leaving the pod is
    /// redirected there.
    #[arg(long, env = "TRELLIS_INIT_OUTBOUND_PORT", value_name = "PORT", default_value_t = OUTBOUND_PORT)]
    pub(crate) outbound_port: u16,

    /// Port of the proxy's admin server; inbound TCP to it is not redirected.
    #[arg(long, env = "TRELLIS_INIT_ADMIN_PORT", value_name = "PORT", default_value_t = ADMIN_PORT)]
    pub(crate) admin_port: u16,

    /// User id the proxy runs as; its own connections are not redirected.
    #[arg(long, env = "TRELLIS_INIT_PROXY_UID", value_name = "UID", default_value_t = PROXY_UID)]
    pub(crate) proxy_uid: u32,

    /// Inbound destination ports that bypass the proxy, e.g. `22,4000-4010`.
    #[arg(
        long,
        env = "TRELLIS_INIT_SKIP_INBOUND_PORTS",
        value_name = "PORTS",
        default_value = ""
    )]
    pub(crate) skip_inbound_ports: String,

    /// Outbound destination ports that bypass the proxy, e.g. `25,3306`.
    #[arg(
        long,
        env = "TRELLIS_INIT_SKIP_OUTBOUND_PORTS",
        value_name = "PORTS",
        default_value = ""
    )]
    pub(crate) skip_outbound_ports: String,

    /// Which iptables to use: `auto` picks the variant that already holds
    /// rules, else nft when installed, else legacy.
    #[arg(long, env = "TRELLIS_INIT_IPTABLES_MODE", value_enum, default_value_t = IptablesMode::Auto)]
    pub(crate) iptables_mode: IptablesMode,

    /// Also install the IPv6 rules: `auto` does when the namespace has IPv6.
    #[arg(long, env = "TRELLIS_INIT_IPV6", value_enum, default_value_t = Ipv6Mode::Auto)]
    pub(crate) ipv6: Ipv6Mode,

    /// Print the iptables-restore input instead of applying it.
    #[arg(long, env = "TRELLIS_INIT_DRY_RUN", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub(crate) dry_run: bool,

    /// Delete the Trellis chains and the jumps to them instead of installing.
    #[arg(long, env = "TRELLIS_INIT_REMOVE", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub(crate) remove: bool,

    /// Install nothing: check, without privilege, that the rules these
    /// flags describe are in place (the Trellis CNI plugin installed them)
    /// by connecting to a documentation address and expecting to be
    /// redirected to this process on the outbound port.
    #[arg(long, env = "TRELLIS_INIT_CHECK", value_parser = BoolishValueParser::new(), default_value_t = false, conflicts_with_all = ["remove", "dry_run"])]
    pub(crate) check: bool,
}

impl InitArgs {
    /// Reads the arguments of a `trellis-init` container (`["init",
    /// "--check", …]`, as the injector writes them), with the parser of
    /// `trellis-proxy init` itself: the CNI plugin installs exactly what
    /// these flags describe. `TRELLIS_INIT_*` variables of the calling
    /// process are not consulted.
    pub fn from_container_args(args: &[String]) -> Result<Self, String> {
        #[derive(clap::Parser)]
        #[command(name = "trellis-proxy", no_binary_name = true)]
        enum Cli {
            Init(InitArgs),
        }
        // clap falls back to TRELLIS_INIT_* variables for flags not given:
        // the CNI plugin clears those from its environment first.
        let parsed = <Cli as clap::Parser>::try_parse_from(args)
            .map_err(|e| e.render().to_string().trim().to_string())?;
        let Cli::Init(args) = parsed;
        Ok(args)
    }

    /// Whether these arguments ask only for the unprivileged check, that is,
    /// the pod's capture is the CNI plugin's job.
    pub fn is_check(&self) -> bool {
        self.check
    }

    /// The same rules, to be installed (not checked, printed or removed).
    pub fn to_install(&self) -> Self {
        Self {
            check: false,
            dry_run: false,
            remove: false,
            ..self.clone()
        }
    }

    /// The same rules, to be removed.
    pub fn to_remove(&self) -> Self {
        Self {
            remove: true,
            ..self.to_install()
        }
    }
}

/// `--iptables-mode`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IptablesMode {
    Auto,
    Nft,
    Legacy,
}

/// `--ipv6`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ipv6Mode {
    Auto,
    On,
    Off,
}

/// Why `trellis-proxy init` failed.
#[derive(thiserror::Error, Debug)]
pub enum InitError {
    /// The flags are wrong; every problem found is listed.
    #[error("invalid arguments: {}", .0.join("; "))]
    InvalidArgs(Vec<String>),

    #[error("{tool} not found (searched PATH, /usr/sbin, /sbin): is iptables installed?")]
    ToolNotFound { tool: String },

    #[error("could not run {tool}: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: io::Error,
    },

    #[error("{tool} failed ({status}): {}", failure_detail(.stderr, .failed_line.as_deref()))]
    ToolFailed {
        tool: String,
        status: ExitStatus,
        stderr: String,
        /// The script line the tool complained about, when it named one.
        failed_line: Option<String>,
    },

    #[error("could not print the rules: {0}")]
    Print(#[source] io::Error),

    /// `--check`: the pod's traffic is not captured.
    #[error("{0}")]
    NotCaptured(String),
}

impl InitError {
    /// The process exit code for this error: 2 for bad arguments (the
    /// caller's fault, retrying will not help), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            InitError::InvalidArgs(_) => 2,
            _ => 1,
        }
    }
}

fn failure_detail(stderr: &str, failed_line: Option<&str>) -> String {
    let stderr = stderr.trim();
    let stderr = if stderr.is_empty() {
        "no error output"
    } else {
        stderr
    };
    match failed_line {
        Some(line) => format!("{stderr} (the line: `{line}`)"),
        None => stderr.to_string(),
    }
}

/// The validated parameters of the capture rules: what [`rules::rules`]
/// needs, nothing about how or whether to apply them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) inbound_port: u16,
    pub(crate) outbound_port: u16,
    pub(crate) admin_port: u16,
    pub(crate) proxy_uid: u32,
    pub(crate) skip_inbound: Vec<PortRange>,
    pub(crate) skip_outbound: Vec<PortRange>,
}

impl Plan {
    /// Validates the flags, reporting every problem at once.
    pub(crate) fn from_args(args: &InitArgs) -> Result<Self, InitError> {
        let mut problems = Vec::new();

        let ports = [
            ("--inbound-port", args.inbound_port),
            ("--outbound-port", args.outbound_port),
            ("--admin-port", args.admin_port),
        ];
        for (flag, port) in ports {
            if port == 0 {
                problems.push(format!("{flag} 0: not a port (1-65535)"));
            }
        }
        for (i, (flag_a, a)) in ports.iter().enumerate() {
            for (flag_b, b) in &ports[i + 1..] {
                if a == b && *a != 0 {
                    problems.push(format!(
                        "{flag_a} and {flag_b} are both {a}: the proxy's ports must differ"
                    ));
                }
            }
        }

        let mut port_list = |flag: &str, value: &str| match parse_ports(value) {
            Ok(list) => list,
            Err(reason) => {
                problems.push(format!("{flag} {value:?}: {reason}"));
                Vec::new()
            }
        };
        let skip_inbound = port_list("--skip-inbound-ports", &args.skip_inbound_ports);
        let skip_outbound = port_list("--skip-outbound-ports", &args.skip_outbound_ports);

        if !problems.is_empty() {
            return Err(InitError::InvalidArgs(problems));
        }
        Ok(Plan {
            inbound_port: args.inbound_port,
            outbound_port: args.outbound_port,
            admin_port: args.admin_port,
            proxy_uid: args.proxy_uid,
            skip_inbound,
            skip_outbound,
        })
    }
}

/// Installs (or, with `--remove`, deletes) the capture rules in the current
/// network namespace, or prints them with `--dry-run`.
pub fn run(args: &InitArgs) -> Result<(), InitError> {
    // Decide: every script is written before any is applied, so a failure
    // to read the IPv6 rules cannot leave the IPv4 half installed.
    let plan = Plan::from_args(args)?;
    if args.check {
        return check::redirect_in_place(&plan);
    }
    let choice = apply::choose_variant(args.iptables_mode);
    tracing::info!(variant = %choice.variant, reason = %choice.reason, "chose the iptables variant");
    let mut scripts = Vec::new();
    for (family, required) in families(args) {
        // The current `nat` table says which jumps already exist.
        let current = match apply::save(choice.variant, family) {
            Ok(text) => Current::Read(text),
            Err(error) if !required => {
                tracing::debug!(%family, %error, "skipping a family with no readable rules");
                continue;
            }
            Err(error) if args.dry_run => Current::Unreadable(error.to_string()),
            Err(error) => return Err(error),
        };
        let script = if args.remove {
            rules::removal(current.text())
        } else {
            Some(rules::rules(&plan, family, current.text()))
        };
        scripts.push((family, current, script));
    }

    // Act: print, or apply.
    if args.dry_run {
        let mut out = io::stdout().lock();
        for (family, current, script) in &scripts {
            match print_script(&mut out, *family, &choice, current, script.as_deref()) {
                Ok(()) => {}
                // The reader is gone (`| head`): nothing more to print to.
                Err(e) if crate::stdio::is_broken_pipe(&e) => return Ok(()),
                Err(e) => return Err(InitError::Print(e)),
            }
        }
        return Ok(());
    }
    let mut installed = Vec::new();
    for (family, _, script) in scripts {
        let Some(script) = script else {
            tracing::info!(%family, "no Trellis rules to remove");
            continue;
        };
        if let Err(error) = apply::restore(choice.variant, family, &script) {
            // One restore is atomic; undo the families already installed so
            // that nothing is left half-applied.
            for family in installed {
                undo(choice.variant, family);
            }
            return Err(error);
        }
        let done = if args.remove { "removed" } else { "installed" };
        let tool = choice.variant.tool(family, "restore");
        tracing::info!(%family, %tool, "{done} the Trellis capture rules");
        if !args.remove {
            installed.push(family);
        }
    }
    Ok(())
}

/// Removes the rules of one family after a later family failed; a failure
/// here is logged (the first error is the one to report).
fn undo(variant: apply::Variant, family: Family) {
    let removal = apply::save(variant, family).map(|current| rules::removal(&current));
    let result = match removal {
        Ok(Some(script)) => apply::restore(variant, family, &script),
        Ok(None) => Ok(()),
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => tracing::info!(%family, "removed the rules installed before the failure"),
        Err(error) => {
            tracing::warn!(%family, %error, "could not remove the rules installed before the failure")
        }
    }
}

/// What differs between the rules `args` describe and those installed in
/// the current network namespace, family by family (the CNI plugin's
/// `CHECK`). Empty: every rule is in place, nothing else is in the Trellis
/// chains.
pub fn differences(args: &InitArgs) -> Result<Vec<String>, InitError> {
    let plan = Plan::from_args(args)?;
    let choice = apply::choose_variant(args.iptables_mode);
    let mut problems = Vec::new();
    for (family, required) in families(args) {
        let current = match apply::save(choice.variant, family) {
            Ok(text) => text,
            Err(_) if !required => continue,
            Err(error) => return Err(error),
        };
        problems.extend(
            rules::differences(&plan, family, &current)
                .into_iter()
                .map(|p| format!("{family}: {p}")),
        );
    }
    Ok(problems)
}

/// The address families to handle, each with whether failing to read its
/// rules is an error. `--remove` in `auto` also tries IPv6 when the namespace
/// no longer shows IPv6, in case rules were installed while it did.
fn families(args: &InitArgs) -> Vec<(Family, bool)> {
    let v6 = match args.ipv6 {
        Ipv6Mode::On => Some(true),
        Ipv6Mode::Off => None,
        Ipv6Mode::Auto if apply::ipv6_enabled() => Some(true),
        Ipv6Mode::Auto if args.remove => Some(false),
        Ipv6Mode::Auto => None,
    };
    let mut families = vec![(Family::V4, true)];
    families.extend(v6.map(|required| (Family::V6, required)));
    families
}

/// What `iptables-save -t nat` said, or why it could not be asked.
enum Current {
    Read(String),
    Unreadable(String),
}

impl Current {
    fn text(&self) -> &str {
        match self {
            Current::Read(text) => text,
            Current::Unreadable(_) => "",
        }
    }
}

/// `--dry-run` output for one family: `#` comment lines (which
/// `iptables-restore` ignores) then the script.
fn print_script(
    out: &mut impl Write,
    family: Family,
    choice: &apply::Choice,
    current: &Current,
    script: Option<&str>,
) -> io::Result<()> {
    let tool = match family {
        Family::V4 => "iptables-restore",
        Family::V6 => "ip6tables-restore",
    };
    let restore = choice.variant.tool(family, "restore");
    writeln!(
        out,
        "# {tool} ({family}): {restore} {} ({}: {})",
        apply::RESTORE_FLAGS.join(" "),
        choice.variant,
        choice.reason
    )?;
    if let Current::Unreadable(why) = current {
        writeln!(
            out,
            "# could not read the current rules, so assuming none: {why}"
        )?;
    }
    match script {
        Some(script) => out.write_all(script.as_bytes()),
        None => writeln!(out, "# nothing to remove"),
    }
}
