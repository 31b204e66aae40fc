//! Starting a [`Launch`] without unsafe code: `ip netns exec` (a network
//! namespace and a private mount namespace), a fixed shell script (the bind
//! mounts and the working directory, as root), `setpriv` (user, groups,
//! capabilities, no_new_privs) and `env -i` (the environment, set only once
//! privileges are dropped).
//!
//! The command line:
//!
//! ```text
//! ip netns exec NETNS sh -ec SCRIPT trellis-launch WORKDIR [SOURCE TARGET ro|rw]... -- \
//!     setpriv FLAGS... -- env -i -- NAME=VALUE... PROGRAM ARGS...
//! ```
//!
//! Everything up to `env` runs as root, so it runs with a fixed environment
//! (`PATH` of root-owned directories, nothing else): a container's own
//! variables (`LD_PRELOAD`, `PATH`) must not reach a root process. No user
//! data is interpolated into the script: it arrives as positional
//! parameters.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::security::ALL_CAPABILITIES;
use super::Launch;

/// The `PATH` of the root part of the command: `ip`, `sh`, `mount`,
/// `setpriv`, `env`.
const TOOLS_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// `$0` of the script, as `ps` shows it.
const SCRIPT_NAME: &str = "trellis-launch";

/// Bind-mounts each `SOURCE TARGET ro|rw` (remounting it read-only for
/// `ro`), enters `WORKDIR` unless empty, then executes the rest.
pub(super) const SCRIPT: &str = r#"workdir=$1; shift
while [ "$1" != -- ]; do
  mount --rbind -- "$1" "$2"
  if [ "$3" = ro ]; then mount -o remount,bind,ro -- "$2"; fi
  shift 3
done
shift
if [ -n "$workdir" ]; then cd -- "$workdir"; fi
exec "$@"
"#;

impl Launch {
    /// The command that runs this process in the network namespace `netns`
    /// (a name under `/run/netns`), with stdin from `/dev/null`.
    pub fn command(&self, netns: &str) -> Command {
        let mut command = Command::new("ip");
        command
            .env_clear()
            .env("PATH", TOOLS_PATH)
            .stdin(Stdio::null());
        command.args(["netns", "exec", netns, "sh", "-ec", SCRIPT, SCRIPT_NAME]);
        command.arg(self.working_dir.as_deref().unwrap_or(Path::new("")));
        for mount in &self.mounts {
            let mode = if mount.read_only { "ro" } else { "rw" };
            command.arg(&mount.source).arg(&mount.target).arg(mode);
        }
        command
            .arg("--")
            .arg("setpriv")
            .args(self.setpriv_flags())
            .arg("--");
        command.args(["env", "-i", "--"]);
        command.args(
            self.env
                .iter()
                .map(|(name, value)| format!("{name}={value}")),
        );
        // `env` would look a relative program up on PATH. (`launch` refuses
        // a program whose path has a `=`, which `env` would read as a
        // variable.)
        let program = std::path::absolute(&self.program).unwrap_or_else(|_| self.program.clone());
        command.arg(program).args(&self.args);
        command
    }

    /// `setpriv`'s flags. The bounding set is the capabilities (left whole
    /// for root with every one). Root's execve grants its bounding set, so
    /// inheritable is cleared; another user gets its capabilities as
    /// inheritable and ambient ones, which execve keeps.
    pub(super) fn setpriv_flags(&self) -> Vec<String> {
        let mut flags = vec![
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
        ];
        flags.push(match self.groups.as_slice() {
            [] => "--clear-groups".to_owned(),
            groups => format!("--groups={}", join(groups.iter())),
        });
        let every = ALL_CAPABILITIES
            .iter()
            .all(|c| self.capabilities.contains(*c));
        let list = || {
            let mut list = "-all".to_owned();
            for cap in &self.capabilities {
                list.push_str(",+");
                list.push_str(cap);
            }
            list
        };
        match (self.uid == 0, every) {
            (true, true) => {}
            (true, false) => {
                flags.push(format!("--bounding-set={}", list()));
                flags.push("--inh-caps=-all".to_owned());
            }
            (false, true) => {
                flags.push("--inh-caps=+all".to_owned());
                flags.push("--ambient-caps=+all".to_owned());
            }
            (false, false) => {
                flags.push(format!("--bounding-set={}", list()));
                flags.push(format!("--inh-caps={}", list()));
                if !self.capabilities.is_empty() {
                    flags.push(format!("--ambient-caps={}", list()));
                }
            }
        }
        if self.no_new_privs {
            flags.push("--no-new-privs".to_owned());
        }
        flags
    }

    /// What must exist before [`Launch::command`] runs, and whether each is
    /// a directory: a missing mount source (a `subPath` kubelet would
    /// create), each mount target (a file when its source is one), and the
    /// working directory. A path under an earlier mount's target is given
    /// inside that mount's source, where the process will see it.
    pub fn mount_targets(&self) -> Vec<(PathBuf, bool)> {
        let mut out = Vec::new();
        for (i, mount) in self.mounts.iter().enumerate() {
            if !mount.source.exists() {
                out.push((mount.source.clone(), true));
            }
            out.push((
                self.on_node(&self.mounts[..i], &mount.target),
                !mount.source.is_file(),
            ));
        }
        if let Some(dir) = &self.working_dir {
            out.push((self.on_node(&self.mounts, dir), true));
        }
        out
    }

    /// Writes each mount target and the working directory as the node's
    /// filesystem resolves it (`/var/run/x` is `/run/x` where `/var/run`
    /// links to `/run`), so that a target under an earlier mount (an
    /// `emptyDir` on `/run`) is found under it: `mount` resolves links the
    /// same way when it runs.
    pub fn resolve_node_links(&mut self) {
        for m in &mut self.mounts {
            m.target = resolve_links(&m.target);
        }
        if let Some(dir) = &mut self.working_dir {
            *dir = resolve_links(dir);
        }
    }

    /// Where a path the process sees is on the node, given the mounts
    /// made before it (the deepest, latest one covering it wins).
    fn on_node(&self, before: &[super::Mount], path: &Path) -> PathBuf {
        before
            .iter()
            .rev()
            .find_map(|m| {
                let rest = path.strip_prefix(&m.target).ok()?;
                Some(match rest.as_os_str().is_empty() {
                    true => m.source.clone(),
                    false => m.source.join(rest),
                })
            })
            .unwrap_or_else(|| path.to_owned())
    }
}

/// `path` with its deepest existing ancestor canonicalised.
fn resolve_links(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return path.to_owned(),
        }
    }
}

fn join<T: ToString>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}
