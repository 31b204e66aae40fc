//! Writing the node's files so that no reader ever sees half of one.
//!
//! The container runtime reads the configuration directory whenever a pod
//! starts, and the kubelet may start one at any moment; the primary plugin's
//! own installer writes there too. So every file is replaced, never edited:
//! the new content goes to a temporary file in the same directory (same
//! filesystem, so the rename cannot turn into a copy), which is flushed to
//! disk, given its mode, and renamed over the old name; then the directory
//! itself is flushed, so the rename survives a crash of the node. A reader
//! opens either the old file or the new one. A file that already holds the
//! content is not written at all: installing twice leaves it, and its
//! modification time, as they were.
//!
//! Temporary files are named `.trellis-cni-<pid>-<n>.tmp`: the runtime
//! reads only names ending in `.conf`, `.conflist` or `.json`, and
//! [`sweep`] can tell ours (left by a killed installer) from anyone else's.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::InstallError;

const TEMP_PREFIX: &str = ".trellis-cni-";
const TEMP_SUFFIX: &str = ".tmp";

/// Whether a replace wrote the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Written,
    Unchanged,
}

/// Replaces `path` with `bytes` (mode `mode`) unless it already holds them;
/// when it does, only a different mode is corrected.
pub(crate) fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<Outcome, InstallError> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        set_mode(path, mode)?;
        return Ok(Outcome::Unchanged);
    }
    let mut temp = Temp::create(path)?;
    temp.file
        .write_all(bytes)
        .map_err(|e| write_error(path, e))?;
    temp.persist(mode)?;
    Ok(Outcome::Written)
}

/// Copies the file `from` over `to` (mode `mode`) unless `to` already holds
/// the same bytes. Streams: a binary is not read whole into memory.
pub(crate) fn copy(from: &Path, to: &Path, mode: u32) -> Result<Outcome, InstallError> {
    let read_error = |source| InstallError::Read {
        path: from.to_path_buf(),
        source,
    };
    if same_content(from, to).map_err(read_error)? {
        set_mode(to, mode)?;
        return Ok(Outcome::Unchanged);
    }
    let mut source = File::open(from).map_err(read_error)?;
    let mut temp = Temp::create(to)?;
    io::copy(&mut source, &mut temp.file).map_err(|e| write_error(to, e))?;
    temp.persist(mode)?;
    Ok(Outcome::Written)
}

/// Reads `path`, refusing one longer than `max` bytes (a network
/// configuration is a few hundred bytes; this bounds each pass's work).
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, InstallError> {
    let read_error = |source| InstallError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() as u64 > max {
        return Err(InstallError::TooLarge {
            path: path.to_path_buf(),
            max,
        });
    }
    Ok(bytes)
}

/// Removes the file `path`; `false` when there was none.
pub(crate) fn remove(path: &Path) -> Result<bool, InstallError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(InstallError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Creates the directory `dir` (mode `mode`, parents must exist) unless it
/// exists, and gives it that mode.
pub(crate) fn create_dir(dir: &Path, mode: u32) -> Result<(), InstallError> {
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(write_error(dir, source)),
    }
    set_mode(dir, mode)
}

/// Removes the temporary files a killed installer left in `dir` (ours only:
/// named by [`Temp::create`]); returns how many.
pub(crate) fn sweep(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| is_temp(&e.file_name().to_string_lossy()))
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

fn is_temp(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)
}

/// Whether `a` and `b` hold the same bytes; `false` when `b` does not exist.
fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut a, mut b) = match (File::open(a), File::open(b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) => return Err(e),
        (Ok(_), Err(_)) => return Ok(false),
    };
    if a.metadata()?.len() != b.metadata()?.len() {
        return Ok(false);
    }
    // Errors reading `b` (a file being replaced under us) count as a
    // difference: the copy then rewrites it.
    let (mut buf_a, mut buf_b) = (vec![0; 64 * 1024], vec![0; 64 * 1024]);
    loop {
        let n = a.read(&mut buf_a)?;
        if n == 0 {
            return Ok(b.read(&mut buf_b[..1]).is_ok_and(|m| m == 0));
        }
        if b.read_exact(&mut buf_b[..n]).is_err() || buf_a[..n] != buf_b[..n] {
            return Ok(false);
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), InstallError> {
    let meta = fs::metadata(path).map_err(|e| write_error(path, e))?;
    if meta.permissions().mode() & 0o7777 == mode {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| write_error(path, e))
}

fn write_error(path: &Path, source: io::Error) -> InstallError {
    InstallError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// A temporary file beside its destination, removed on drop unless
/// [`persist`](Temp::persist)ed. Errors name the destination.
struct Temp {
    path: PathBuf,
    dest: PathBuf,
    file: File,
    persisted: bool,
}

impl Temp {
    fn create(dest: &Path) -> Result<Self, InstallError> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = parent(dest);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("{TEMP_PREFIX}{}-{n}{TEMP_SUFFIX}", std::process::id());
        let path = dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| write_error(dest, e))?;
        Ok(Self {
            path,
            dest: dest.to_path_buf(),
            file,
            persisted: false,
        })
    }

    /// Flushes, sets the mode, renames over the destination, flushes the
    /// directory.
    fn persist(mut self, mode: u32) -> Result<(), InstallError> {
        let dest = self.dest.clone();
        let dest_error = |e| write_error(&dest, e);
        self.file
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(dest_error)?;
        self.file.sync_all().map_err(dest_error)?;
        fs::rename(&self.path, &dest).map_err(dest_error)?;
        self.persisted = true;
        let dir = parent(&dest);
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| write_error(dir, e))
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The directory of `path` (`.` for a bare name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
