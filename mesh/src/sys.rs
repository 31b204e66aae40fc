//! The system calls and commands the local mesh runs: `ip`, `iptables-restore`,
//! sockets made inside a network namespace, and process bookkeeping through
//! `/proc`. Everything here acts; deciding what to do is in `plan`.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Where `ip netns` keeps its namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// Where `ip netns exec` finds per-namespace `/etc` files.
pub const ETC_NETNS_DIR: &str = "/etc/netns";
/// Left in `/etc/netns` when `mesh up` had to create it.
pub const ETC_NETNS_MARKER: &str = ".made-by-trellis";

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        /// The signal that killed it, if one did.
        signal: Option<Signal>,
        stderr: String,
    },
    #[error("cannot run `{command}`")]
    Spawn { command: String, source: io::Error },
}

fn show(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// How often [`run`] starts a command that a terminal's signal killed
/// before it could run.
const SPAWN_ATTEMPTS: usize = 3;

/// Runs a short command to completion, with `stdin` fed to it if given.
///
/// The command gets a process group of its own, so a Ctrl-C at the
/// terminal is for us to handle between steps, not for a half-done `ip`
/// command. The child only leaves our group just before `exec`, though: a
/// SIGINT or SIGTERM sent to the group in that instant kills it before the
/// program ran. Such a command is started again (it did nothing), so
/// `down` finishes and `up` cleans up even when Ctrl-C lands mid-spawn.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, SysError> {
    let mut attempt = 1;
    loop {
        match run_once(program, args, stdin) {
            Err(SysError::Command {
                signal: Some(Signal::SIGINT | Signal::SIGTERM),
                ..
            }) if attempt < SPAWN_ATTEMPTS => attempt += 1,
            other => return other,
        }
    }
}

fn run_once(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, SysError> {
    let command = show(program, args);
    let spawn_err = |source| SysError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .process_group(0)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(SysError::Command {
            command,
            status: out.status.to_string(),
            signal: out.status.signal().and_then(|s| Signal::try_from(s).ok()),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `ip ARGS…`.
pub fn ip(args: &[&str]) -> Result<String, SysError> {
    run("ip", args, None)
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Network namespaces (`ip netns list`) whose names start with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(NETNS_RUN_DIR)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Runs `f` on a thread that has first entered network namespace `netns`;
/// sockets it makes stay in that namespace wherever they are used later.
pub fn in_netns<T, F>(netns: &str, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = File::open(netns_path(netns))
        .map_err(|e| io::Error::new(e.kind(), format!("network namespace {netns}: {e}")))?;
    std::thread::spawn(move || -> io::Result<T> {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("thread in network namespace panicked"))?
}

/// A TCP connection made from inside `netns`.
pub fn connect_in_netns(netns: &str, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    in_netns(netns, move || TcpStream::connect_timeout(&addr, timeout))?
}

/// TCP ports in LISTEN state inside `netns` (IPv4 and IPv6), from the
/// namespace's own `/proc/net/tcp*` — independent of any capture rules.
pub fn listening_ports(netns: &str) -> io::Result<BTreeSet<u16>> {
    in_netns(netns, || -> io::Result<BTreeSet<u16>> {
        let mut ports = BTreeSet::new();
        for table in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
            match fs::read_to_string(table) {
                Ok(text) => ports.extend(parse_listening(&text)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ports)
    })?
}

/// Local ports of the LISTEN (`0A`) sockets in a `/proc/net/tcp` table.
pub fn parse_listening(table: &str) -> BTreeSet<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let state = cols.nth(1)?;
            if state != "0A" {
                return None;
            }
            let port = local.rsplit_once(':')?.1;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// A process's state letter and start time (clock ticks since boot), from
/// `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    // `pid (comm) S ppid …`: comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

pub fn start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, t)| t)
}

/// Is `pid` running (not a zombie), and still the process we started?
pub fn is_alive(pid: u32, start_time: Option<u64>) -> bool {
    match proc_stat(pid) {
        None => false,
        Some(('Z' | 'X', _)) => false,
        Some((_, t)) => start_time.is_none_or(|s| s == t),
    }
}

fn to_pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .map(Pid::from_raw)
}

/// Signals a process; errors (it is gone already) are of no interest.
pub fn signal(pid: u32, sig: Signal) {
    if let Some(p) = to_pid(pid) {
        let _ = nix::sys::signal::kill(p, sig);
    }
}

/// Signals the process group led by `pid` (every process we start leads its
/// own group), then `pid` itself in case it left the group.
pub fn signal_group(pid: u32, sig: Signal) {
    if let Some(p) = to_pid(pid) {
        let _ = nix::sys::signal::killpg(p, sig);
        let _ = nix::sys::signal::kill(p, sig);
    }
}

/// Pids of the processes whose network namespace is `netns` (what
/// `ip netns pids` prints).
pub fn pids_in_netns(netns: &str) -> Vec<u32> {
    let Ok(ns) = fs::metadata(netns_path(netns)) else {
        return Vec::new();
    };
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| m.ino() == ns.ino() && m.dev() == ns.dev())
                .unwrap_or(false)
        })
        .collect()
}

/// The last `lines` lines of a log file (at most 64 KiB of it).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let shown = all[all.len().saturating_sub(lines)..].join("\n");
    if shown.trim().is_empty() {
        format!("(log {} is empty)", path.display())
    } else {
        shown
    }
}

/// Polls `check` every `every` until it returns `Some` or `deadline` passes.
pub fn poll_until<T>(
    deadline: Instant,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// Which iptables backend `iptables-restore` on `PATH` uses: `nft` or
/// `legacy`. `trellis-proxy init` is told the same, so the capture rules and
/// the service rules share one set of tables and their order is defined.
pub fn iptables_mode() -> Result<&'static str, SysError> {
    let version = run("iptables-restore", &["--version"], None)?;
    Ok(if version.contains("nf_tables") {
        "nft"
    } else {
        "legacy"
    })
}

/// Writes `bytes` to `path` atomically (a temporary file beside it, then a
/// rename, so a reader — a proxy polling the file — never sees half of it),
/// with `mode`, and owned by `uid` when given.
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32, uid: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The umask may have narrowed `mode`.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(uid) = uid {
            std::os::unix::fs::fchown(&f, Some(uid), Some(uid))?;
        }
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

/// Creates `dir` (and missing parents) and gives it `mode`.
pub fn create_dir_mode(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(mode)))
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))
}

/// Is this process root? Namespaces and iptables need it.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Finds a program on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Can a user who is neither owner nor in the group (the proxy's uid) execute
/// `path`? Returns the first path component that stops it.
pub fn world_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut components = Vec::new();
    let mut p = Some(path);
    while let Some(c) = p {
        components.push(c);
        p = c.parent();
    }
    for c in components.iter().rev() {
        let mode = fs::metadata(c)
            .map_err(|e| format!("{}: {e}", c.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "{} has mode {:o}, without execute/search permission for others",
                c.display(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_sockets() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 0100007F:1B6C 00000000:0000 0A 00000000:00000000 00:00000000 00000000  7102        0 2 1 0 100 0 0 10 0\n   2: 0200A8C0:1F90 0300A8C0:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n";
        assert_eq!(parse_listening(table), BTreeSet::from([8080, 7020]));
        let v6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000000000000:0019 00000000000000000000000000000000:0000 0A 0\n";
        assert_eq!(parse_listening(v6), BTreeSet::from([25]));
    }

    #[test]
    fn reads_proc_stat() {
        let stat = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
        let me = std::process::id();
        assert!(is_alive(me, start_time(me)));
        assert!(!is_alive(me, start_time(me).map(|t| t + 1)));
    }

    #[test]
    fn tails_logs() {
        let path = std::env::temp_dir().join(format!("trellis-tail-{}", std::process::id()));
        fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&path, 2), "c\nd");
        fs::write(&path, "").unwrap();
        assert!(tail(&path, 2).contains("is empty"));
        fs::remove_file(&path).unwrap();
        assert!(tail(&path, 2).contains("no log"));
    }

    #[test]
    fn writes_files_atomically_with_mode_and_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("trellis-atomic-{}", std::process::id()));
        create_dir_mode(&dir.join("sub"), 0o755).unwrap();
        let path = dir.join("sub").join("token");
        let me = nix::unistd::getuid().as_raw();
        write_file_atomic(&path, b"one", 0o400, Some(me)).unwrap();
        write_file_atomic(&path, b"two", 0o400, Some(me)).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o400);
        assert_eq!(meta.uid(), me);
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let left: Vec<_> = fs::read_dir(dir.join("sub")).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
        let err = write_file_atomic(&dir.join("missing").join("x"), b"", 0o644, None).unwrap_err();
        assert!(err.to_string().contains("missing/x"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_command_killed_by_sigint_or_sigterm_is_started_again() {
        let dir = std::env::temp_dir().join(format!("trellis-respawn-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let count = dir.join("count");
        // Killed by SIGINT the first time only, as a command the
        // terminal's signal reaches while it is being started.
        let once = format!(
            "echo run >> {c}; [ $(wc -l < {c}) -ge 2 ] && echo done && exit 0; kill -INT $$",
            c = count.display()
        );
        assert_eq!(run("sh", &["-c", &once], None).unwrap().trim(), "done");
        assert_eq!(fs::read_to_string(&count).unwrap().lines().count(), 2);

        // Killed every time: given up after SPAWN_ATTEMPTS, naming the signal.
        fs::remove_file(&count).unwrap();
        let always = format!("echo run >> {}; kill -TERM $$", count.display());
        let err = run("sh", &["-c", &always], None).unwrap_err();
        assert!(
            matches!(
                err,
                SysError::Command {
                    signal: Some(Signal::SIGTERM),
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(&count).unwrap().lines().count(),
            SPAWN_ATTEMPTS
        );

        // Other failures are not retried.
        fs::remove_file(&count).unwrap();
        let fails = format!("echo run >> {}; exit 3", count.display());
        assert!(run("sh", &["-c", &fails], None).is_err());
        assert_eq!(fs::read_to_string(&count).unwrap().lines().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn polls_with_a_deadline() {
        let mut n = 0;
        let got = poll_until(
            Instant::now() + Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                (n == 3).then_some(n)
            },
        );
        assert_eq!(got, Some(3));
        let never: Option<()> = poll_until(
            Instant::now() + Duration::from_millis(20),
            Duration::from_millis(5),
            || None,
        );
        assert_eq!(never, None);
    }
}
