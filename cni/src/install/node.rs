//! The installer's work on one node's directories: the binary, the
//! plugin's credentials, the entry in the network configuration, and the
//! undoing of all three. It decides with `conflist` (pure) and writes with
//! `files` (atomic).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::conflist::{self, ConfError, Doc, Kind, PluginConf, PLUGIN_TYPE};
use super::files::{self, Outcome};
use super::{InstallArgs, InstallError};

/// Our directory in the configuration directory: the plugin's kubeconfig,
/// token and CA bundle, and the originals of converted configurations. The
/// runtime reads no directories there.
pub(crate) const STATE_DIR: &str = "trellis-cni.d";
const TOKEN: &str = "token";
const CA: &str = "ca.crt";
const KUBECONFIG: &str = "kubeconfig";
/// Under [`STATE_DIR`]: a single plugin's configuration file as it was
/// before we converted it to a list, under its own name, so that uninstall
/// can put it back.
const CONVERTED: &str = "converted";

/// The largest network configuration file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The node's directories as the installer's pod sees them, and as the node
/// (so the plugin) sees the configuration directory.
#[derive(Debug, Clone)]
pub(crate) struct Dirs {
    bin: PathBuf,
    conf: PathBuf,
    host_conf: PathBuf,
}

/// Where our entry is, after a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chained {
    /// The configuration file that holds it.
    pub path: PathBuf,
    /// Whether this pass wrote that file.
    pub outcome: Outcome,
}

/// A network configuration file, read and parsed.
struct ConfigFile {
    path: PathBuf,
    bytes: Vec<u8>,
    doc: Doc,
    kind: Kind,
    mode: u32,
}

impl Dirs {
    pub(crate) fn new(args: &InstallArgs) -> Self {
        Self {
            bin: args.bin_dir.clone(),
            conf: args.conf_dir.clone(),
            host_conf: args.host_conf_dir.clone(),
        }
    }

    /// `<bin_dir>/trellis-cni`.
    pub(crate) fn binary(&self) -> PathBuf {
        self.bin.join(PLUGIN_TYPE)
    }

    /// `<conf_dir>/trellis-cni.d`.
    pub(crate) fn state(&self) -> PathBuf {
        self.conf.join(STATE_DIR)
    }

    /// `<host_conf_dir>/trellis-cni.d/<name>`: a path written for the node.
    fn host_state(&self, name: &str) -> PathBuf {
        self.host_conf.join(STATE_DIR).join(name)
    }

    fn converted(&self) -> PathBuf {
        self.state().join(CONVERTED)
    }

    /// Takes our entry out of every network configuration that holds it
    /// (putting back a single plugin's file we converted), then removes the
    /// binary and our directory. The binary goes last: the runtime must
    /// never find the entry without it. A step that fails stops the rest.
    pub(crate) fn uninstall(&self) -> Result<(), InstallError> {
        self.sweep();
        let unchained = self.unchain_all()?;
        if files::remove(&self.binary())? {
            tracing::info!(path = %self.binary().display(), "removed the plugin binary");
        }
        self.remove_state()?;
        tracing::info!(files = unchained, "uninstalled");
        Ok(())
    }

    /// Removes the temporary files a killed installer left.
    fn sweep(&self) {
        let swept: usize = [&self.bin, &self.conf, &self.state()]
            .into_iter()
            .map(|dir| files::sweep(dir))
            .sum();
        if swept > 0 {
            tracing::info!(
                files = swept,
                "removed temporary files left by an earlier installer"
            );
        }
    }

    /// The names of the configuration files the runtime would read: not
    /// directories (ours among them), extension `conf`, `conflist`, `json`.
    fn candidates(&self) -> Result<Vec<String>, InstallError> {
        let list_error = |source| InstallError::List {
            dir: self.conf.clone(),
            source,
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.conf).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            let is_dir = entry.file_type().map_err(list_error)?.is_dir();
            match entry.file_name().into_string() {
                Ok(name) if !is_dir && conflist::is_candidate(&name) => names.push(name),
                _ => {}
            }
        }
        names.sort();
        Ok(names)
    }

    /// The primary network configuration: the file the runtime uses.
    fn primary(&self) -> Result<PathBuf, InstallError> {
        let names = self.candidates()?;
        conflist::primary(names.iter().map(String::as_str))
            .map(|name| self.conf.join(name))
            .ok_or_else(|| InstallError::NoNetworkConfig {
                dir: self.conf.clone(),
            })
    }

    /// Unchains every file holding our entry; how many. A file that is not
    /// a configuration we can read is not ours: skipped, with a warning.
    fn unchain_all(&self) -> Result<usize, InstallError> {
        let mut unchained = 0;
        for name in self.candidates()? {
            match self.unchain(&self.conf.join(&name)) {
                Ok(true) => unchained += 1,
                Ok(false) => {}
                Err(e) if e.is_about_the_file() => {
                    tracing::warn!(error = %e, "skipped: not a configuration trellis-cni wrote");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(unchained)
    }

    /// Takes our entry out of the list at `path`; whether it held one.
    fn unchain(&self, path: &Path) -> Result<bool, InstallError> {
        let file = read_config(path)?;
        if file.kind != Kind::List {
            return Ok(false);
        }
        let Some(list) = conflist::unchained(&file.doc).map_err(|e| malformed(path, e))? else {
            return Ok(false);
        };
        match self.original_of(path, &list)? {
            Some((original, bytes)) => {
                // Written first, it sorts first: the runtime is never
                // without a configuration.
                files::replace(&original, &bytes, file.mode)?;
                files::remove(path)?;
                tracing::info!(path = %original.display(), "restored the original configuration");
            }
            None => {
                let bytes = conflist::render(&list).map_err(|e| malformed(path, e))?;
                files::replace(path, &bytes, file.mode)?;
                tracing::info!(path = %path.display(), "removed trellis-cni from the list");
            }
        }
        Ok(true)
    }

    /// The single plugin's configuration we converted into the list at
    /// `path` (its path and bytes), when `list` (without our entry) is still
    /// exactly that conversion and the original's name is free again.
    /// Otherwise the primary plugin has rewritten things since, and the list
    /// stays: it works as well as the original did.
    fn original_of(
        &self,
        path: &Path,
        list: &Doc,
    ) -> Result<Option<(PathBuf, Vec<u8>)>, InstallError> {
        let list_name = file_name(path);
        for record in self.records()? {
            let name = file_name(&record);
            if conflist::list_name(&name) != list_name {
                continue;
            }
            let original = self.conf.join(&name);
            let bytes = files::read_bounded(&record, MAX_CONFIG_BYTES)?;
            let restores = match conflist::parse(&bytes) {
                Ok((doc, Kind::Single)) => conflist::converted(&doc).is_ok_and(|d| d == *list),
                _ => false,
            };
            if restores && !original.exists() {
                return Ok(Some((original, bytes)));
            }
        }
        Ok(None)
    }

    /// The files under `converted/` (none when it does not exist).
    fn records(&self) -> Result<Vec<PathBuf>, InstallError> {
        let dir = self.converted();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(InstallError::List { dir, source }),
        };
        let list_error = |source| InstallError::List {
            dir: dir.clone(),
            source,
        };
        entries
            .map(|e| e.map(|e| e.path()).map_err(list_error))
            .collect()
    }

    /// Removes the files we wrote under our directory, then the directory
    /// (left, with a warning, when it holds files we did not write).
    fn remove_state(&self) -> Result<(), InstallError> {
        for record in self.records()? {
            files::remove(&record)?;
        }
        let state = self.state();
        for name in [TOKEN, CA, KUBECONFIG] {
            files::remove(&state.join(name))?;
        }
        for dir in [self.converted(), state] {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "left in place"),
            }
        }
        Ok(())
    }
}

/// Installs: what `install` writes, decided once from the flags.
#[derive(Debug, Clone)]
pub(crate) struct Installer {
    pub dirs: Dirs,
    /// The binary copied to `<bin_dir>/trellis-cni`: the running one.
    exe: PathBuf,
    token_file: PathBuf,
    ca_file: PathBuf,
    kubeconfig: String,
    entry: Doc,
}

/// How a pass checks the copied binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Byte by byte (the first pass).
    Content,
    /// By size (every later pass): cheap, and catches a removed binary.
    Size,
}

impl Installer {
    /// `exe` is the binary to copy; `server` the API server's URL.
    pub(crate) fn new(
        args: &InstallArgs,
        exe: PathBuf,
        server: &str,
    ) -> Result<Self, InstallError> {
        let dirs = Dirs::new(args);
        let kubeconfig =
            super::kubeconfig::render(server, &dirs.host_state(CA), &dirs.host_state(TOKEN))?;
        let entry = conflist::entry(&PluginConf {
            kubeconfig: dirs.host_state(KUBECONFIG).display().to_string(),
            log_level: args.log_level.clone(),
        });
        Ok(Self {
            dirs,
            exe,
            token_file: args.token_file.clone(),
            ca_file: args.ca_file.clone(),
            kubeconfig,
            entry,
        })
    }

    /// The binary and the credentials: what the plugin needs before it is
    /// chained. The binary first, so the runtime never finds the entry
    /// without it.
    pub(crate) fn prepare(&self, check: Check) -> Result<(), InstallError> {
        if check == Check::Content {
            self.dirs.sweep();
        }
        self.copy_binary(check)?;
        self.write_credentials()
    }

    /// Chains our entry into the primary network configuration (converting
    /// a single plugin's configuration to a list).
    pub(crate) fn chain(&self) -> Result<Chained, InstallError> {
        let file = read_config(&self.dirs.primary()?)?;
        match file.kind {
            Kind::List => self.chain_list(&file),
            Kind::Single => self.convert(&file),
        }
    }

    fn chain_list(&self, file: &ConfigFile) -> Result<Chained, InstallError> {
        let path = &file.path;
        let edited = conflist::chained(&file.doc, &self.entry).map_err(|e| malformed(path, e))?;
        let outcome = match edited {
            None => Outcome::Unchanged,
            Some(list) => {
                let bytes = conflist::render(&list).map_err(|e| malformed(path, e))?;
                files::replace(path, &bytes, file.mode)?
            }
        };
        Ok(Chained {
            path: path.clone(),
            outcome,
        })
    }

    /// Writes `<name>.conflist` (the plugin, then ours), keeping the original
    /// under `converted/`, then removes the original. Until it is gone the
    /// original sorts first and stays in use: never a moment without one.
    fn convert(&self, file: &ConfigFile) -> Result<Chained, InstallError> {
        let name = file_name(&file.path);
        let target = self.dirs.conf.join(conflist::list_name(&name));
        let record = self.dirs.converted().join(&name);
        if target.exists() && !record.exists() {
            return Err(InstallError::ConversionBlocked {
                conf: file.path.clone(),
                conflist: target,
            });
        }
        let list = conflist::converted(&file.doc).map_err(|e| malformed(&file.path, e))?;
        let list = conflist::chained(&list, &self.entry)
            .map_err(|e| malformed(&file.path, e))?
            .unwrap_or(list);
        let bytes = conflist::render(&list).map_err(|e| malformed(&file.path, e))?;
        files::create_dir(&self.dirs.converted(), 0o700)?;
        files::replace(&record, &file.bytes, 0o600)?;
        files::replace(&target, &bytes, file.mode)?;
        files::remove(&file.path)?;
        tracing::info!(from = %file.path.display(), to = %target.display(), "converted to a list");
        Ok(Chained {
            path: target,
            outcome: Outcome::Written,
        })
    }

    fn copy_binary(&self, check: Check) -> Result<(), InstallError> {
        let dest = self.dirs.binary();
        if check == Check::Size && same_size(&self.exe, &dest) {
            return Ok(());
        }
        if files::copy(&self.exe, &dest, 0o755)? == Outcome::Written {
            tracing::info!(path = %dest.display(), "copied the plugin binary");
        }
        Ok(())
    }

    /// The token and CA bundle (copied when they changed: the kubelet
    /// rotates the token) and the kubeconfig naming them.
    fn write_credentials(&self) -> Result<(), InstallError> {
        let state = self.dirs.state();
        files::create_dir(&state, 0o700)?;
        for (from, name, mode) in [(&self.token_file, TOKEN, 0o600), (&self.ca_file, CA, 0o644)] {
            if files::copy(from, &state.join(name), mode)? == Outcome::Written {
                tracing::info!(from = %from.display(), "copied {name}");
            }
        }
        files::replace(&state.join(KUBECONFIG), self.kubeconfig.as_bytes(), 0o600)?;
        Ok(())
    }
}

/// Reads and parses a network configuration file; a symbolic link is
/// refused (replacing it would replace the link, not its target).
fn read_config(path: &Path) -> Result<ConfigFile, InstallError> {
    let meta = fs::symlink_metadata(path).map_err(|source| InstallError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return Err(InstallError::Symlink {
            path: path.to_path_buf(),
        });
    }
    let bytes = files::read_bounded(path, MAX_CONFIG_BYTES)?;
    let (doc, kind) = conflist::parse(&bytes).map_err(|e| malformed(path, e))?;
    Ok(ConfigFile {
        path: path.to_path_buf(),
        bytes,
        doc,
        kind,
        mode: meta.permissions().mode() & 0o7777,
    })
}

fn malformed(path: &Path, source: ConfError) -> InstallError {
    InstallError::Malformed {
        path: path.to_path_buf(),
        source,
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn same_size(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => b.is_file() && a.len() == b.len(),
        _ => false,
    }
}
