//! The IO half of `init`: finding the iptables tools, picking the variant,
//! checking for IPv6, reading the current `nat` table and feeding scripts to
//! `*tables-restore`. The decisions themselves ([`pick_variant`],
//! [`ipv6_present`]) are pure and tested without root.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::rules::Family;
use super::{InitError, IptablesMode};

/// Flags of every restore: keep what the script does not mention, and wait
/// (bounded, in seconds) for the xtables lock that legacy iptables shares
/// host-wide, since pods on one node start concurrently.
pub(crate) const RESTORE_FLAGS: [&str; 2] = ["--noflush", "--wait=30"];

/// Where the tools are looked for after `PATH`: init containers and `sudo`
/// often run with a `PATH` that lacks the sbin directories.
const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// Which iptables binaries to run: both variants program the same kernel
/// hooks, but rules must go where the rest of the namespace's rules are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    /// `iptables-nft-*` (nf_tables backend).
    Nft,
    /// `iptables-legacy-*` (x_tables backend).
    Legacy,
    /// `iptables-*`, whichever the distribution installed.
    Plain,
}

impl Variant {
    /// The tool's name, e.g. `ip6tables-nft-restore`; `kind` is `save` or
    /// `restore`.
    pub(crate) fn tool(self, family: Family, kind: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        match self {
            Variant::Nft => format!("{base}-nft-{kind}"),
            Variant::Legacy => format!("{base}-legacy-{kind}"),
            Variant::Plain => format!("{base}-{kind}"),
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Variant::Nft => "nft",
            Variant::Legacy => "legacy",
            Variant::Plain => "plain",
        })
    }
}

/// The variant chosen, and why (for the log and `--dry-run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    pub(crate) variant: Variant,
    pub(crate) reason: String,
}

/// Picks the variant for `--iptables-mode`; in `auto`, asks both variants'
/// `save` how many rules they hold.
pub(crate) fn choose_variant(mode: IptablesMode) -> Choice {
    match mode {
        IptablesMode::Nft => Choice {
            variant: Variant::Nft,
            reason: "--iptables-mode nft".into(),
        },
        IptablesMode::Legacy => Choice {
            variant: Variant::Legacy,
            reason: "--iptables-mode legacy".into(),
        },
        IptablesMode::Auto => pick_variant(
            count_rules(Variant::Nft),
            count_rules(Variant::Legacy),
            find_tool(&Variant::Nft.tool(Family::V4, "restore")).is_some(),
            find_tool(&Variant::Legacy.tool(Family::V4, "restore")).is_some(),
        ),
    }
}

/// The `auto` decision. `nft_rules`/`legacy_rules`: how many `-A` lines that
/// variant's `save` printed (both families, all tables), `None` when it could
/// not run. The variant holding more rules wins; on a tie (usually a fresh
/// namespace: none) nft if installed, else legacy, else plain `iptables`.
pub(crate) fn pick_variant(
    nft_rules: Option<usize>,
    legacy_rules: Option<usize>,
    nft_installed: bool,
    legacy_installed: bool,
) -> Choice {
    let nft = nft_rules.unwrap_or(0);
    let legacy = legacy_rules.unwrap_or(0);
    let (variant, reason) = if nft > legacy {
        (
            Variant::Nft,
            format!("auto: nft holds {nft} rules, legacy {legacy}"),
        )
    } else if legacy > nft {
        (
            Variant::Legacy,
            format!("auto: legacy holds {legacy} rules, nft {nft}"),
        )
    } else if nft_installed {
        (
            Variant::Nft,
            format!("auto: {}, nft is installed", tie(nft)),
        )
    } else if legacy_installed {
        (
            Variant::Legacy,
            format!("auto: {}, only legacy is installed", tie(nft)),
        )
    } else {
        (
            Variant::Plain,
            "auto: neither iptables-nft nor iptables-legacy is installed".to_string(),
        )
    };
    Choice { variant, reason }
}

fn tie(rules: usize) -> String {
    match rules {
        0 => "neither variant holds rules".to_string(),
        n => format!("both variants hold {n} rules"),
    }
}

/// How many rules (`-A` lines) a variant's `save` shows across both
/// families and all tables; `None` when no `save` of that variant ran.
fn count_rules(variant: Variant) -> Option<usize> {
    let counts: Vec<usize> = [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|family| run_save(&variant.tool(family, "save"), &[]).ok())
        .map(|out| out.lines().filter(|l| l.starts_with("-A")).count())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// Whether this network namespace has IPv6: some address in
/// `/proc/thread-self/net/if_inet6` and `disable_ipv6` off. Both files are
/// those of the calling thread's namespace (the CNI plugin enters the pod's
/// with `setns`, which moves one thread).
pub(crate) fn ipv6_enabled() -> bool {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    ipv6_present(
        read("/proc/thread-self/net/if_inet6").as_deref(),
        read("/proc/sys/net/ipv6/conf/all/disable_ipv6").as_deref(),
    )
}

/// The pure half of [`ipv6_enabled`]: the two files' contents, `None` when
/// missing (a kernel without IPv6).
pub(crate) fn ipv6_present(if_inet6: Option<&str>, disable_ipv6: Option<&str>) -> bool {
    let has_address = if_inet6.is_some_and(|s| !s.trim().is_empty());
    let enabled = disable_ipv6.is_some_and(|s| s.trim() == "0");
    has_address && enabled
}

/// The current `nat` table of one family, as the variant's `save` prints it.
pub(crate) fn save(variant: Variant, family: Family) -> Result<String, InitError> {
    run_save(&variant.tool(family, "save"), &["-t", "nat"])
}

/// Feeds `script` to the variant's `restore` for `family`, atomically.
pub(crate) fn restore(variant: Variant, family: Family, script: &str) -> Result<(), InitError> {
    let tool = variant.tool(family, "restore");
    let path = find_tool(&tool).ok_or_else(|| InitError::ToolNotFound { tool: tool.clone() })?;
    let spawn_error = |source| InitError::Spawn {
        tool: tool.clone(),
        source,
    };
    let mut child = Command::new(&path)
        .args(RESTORE_FLAGS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    // The script is a few kilobytes, well under a pipe's buffer, and the tool
    // reads all of its input before writing anything: writing it whole before
    // reading the output cannot deadlock.
    // A write error (the tool died early) is reported after its exit status,
    // which says more.
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(script.as_bytes()),
        None => Ok(()),
    };
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        return written.map_err(spawn_error);
    }
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let failed_line = failed_line_number(&stderr)
        .and_then(|n| script.lines().nth(n.checked_sub(1)?))
        .map(str::to_string);
    Err(InitError::ToolFailed {
        tool,
        status: output.status,
        stderr,
        failed_line,
    })
}

/// Runs a `save` tool and returns its output.
fn run_save(tool: &str, args: &[&str]) -> Result<String, InitError> {
    let path = find_tool(tool).ok_or_else(|| InitError::ToolNotFound {
        tool: tool.to_string(),
    })?;
    let output = Command::new(&path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| InitError::Spawn {
            tool: tool.to_string(),
            source,
        })?;
    if !output.status.success() {
        return Err(InitError::ToolFailed {
            tool: tool.to_string(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            failed_line: None,
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `iptables-restore: line 7 failed` → 7.
pub(crate) fn failed_line_number(stderr: &str) -> Option<usize> {
    let (_, rest) = stderr.split_once("line ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The full path of an executable `name`, from `PATH` then [`SBIN_DIRS`].
fn find_tool(name: &str) -> Option<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
