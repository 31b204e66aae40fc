//! The mesh's trust roots: a PEM bundle, swapped atomically, reloaded from
//! its file when it changes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use sha2::{Digest, Sha256};

use super::TlsError;

/// Trust roots from a PEM bundle, swappable atomically.
///
/// Verifiers read the current set at each handshake, so a replacement
/// applies to the next handshake; established connections are unaffected.
pub struct TrustRoots {
    current: ArcSwap<RootSet>,
}

/// One parsed bundle.
pub(crate) struct RootSet {
    pub(crate) anchors: Vec<TrustAnchor<'static>>,
    fingerprint: String,
}

impl TrustRoots {
    /// Parses a PEM bundle of one or more CA certificates (other PEM
    /// sections are ignored). Refuses a bundle without certificates, with
    /// invalid PEM, or with a certificate that is not a CA.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TlsError> {
        Ok(Self {
            current: ArcSwap::from_pointee(RootSet::parse(pem)?),
        })
    }

    /// Reads and parses the bundle at `path`.
    pub fn load(path: &Path) -> Result<Self, TlsError> {
        Self::from_pem(&read(path)?)
    }

    /// Replaces the roots with those of a new bundle, atomically. On error
    /// the current roots stay.
    pub fn replace_from_pem(&self, pem: &[u8]) -> Result<(), TlsError> {
        self.current.store(Arc::new(RootSet::parse(pem)?));
        Ok(())
    }

    /// `sha256:<hex>` over the DER of the current roots, in order: the same
    /// for the same certificates whatever the PEM text around them.
    pub fn fingerprint(&self) -> String {
        self.current.load().fingerprint.clone()
    }

    /// How many roots the current bundle has.
    pub fn root_count(&self) -> usize {
        self.current.load().anchors.len()
    }

    pub(crate) fn current(&self) -> arc_swap::Guard<Arc<RootSet>> {
        self.current.load()
    }
}

impl std::fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.current.load();
        f.debug_struct("TrustRoots")
            .field("roots", &set.anchors.len())
            .field("fingerprint", &set.fingerprint)
            .finish()
    }
}

impl RootSet {
    fn parse(pem: &[u8]) -> Result<Self, TlsError> {
        let mut anchors = Vec::new();
        let mut hash = Sha256::new();
        for (index, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let cert = cert.map_err(|e| TlsError::Pem(e.to_string()))?;
            check_is_ca(index, &cert)?;
            let anchor =
                webpki::anchor_from_trusted_cert(&cert).map_err(|e| TlsError::BadRoot {
                    index,
                    reason: format!("{e:?}"),
                })?;
            hash.update(cert.as_ref());
            anchors.push(anchor.to_owned());
        }
        if anchors.is_empty() {
            return Err(TlsError::NoRoots);
        }
        Ok(Self {
            anchors,
            fingerprint: format!("sha256:{}", hex(&hash.finalize())),
        })
    }
}

/// A root must be a CA certificate; an expired one is kept (a rotation may
/// briefly carry one) but logged.
fn check_is_ca(index: usize, der: &CertificateDer<'_>) -> Result<(), TlsError> {
    let bad = |reason: String| TlsError::BadRoot { index, reason };
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the certificate".into()));
    }
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| bad(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(bad(format!("{} is not a CA certificate", cert.subject())));
    }
    if !cert.validity().is_valid() {
        tracing::warn!(root = %cert.subject(), "trust root #{index} is expired or not yet valid");
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Polls the bundle at `path` every `interval` and replaces `roots` when its
/// certificates change; returns when `stop` resolves.
///
/// Each poll reads the file (a bundle is a few kB) and compares a hash of its
/// bytes with the last poll's, so it follows a Kubernetes ConfigMap update
/// (an atomic swap of the `..data` symlink) as well as a rewrite in place,
/// whatever the file's timestamps. A file that cannot be read or parsed is
/// logged once (until it changes again) and the current roots are kept.
pub async fn watch_roots(
    roots: Arc<TrustRoots>,
    path: PathBuf,
    interval: Duration,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = Watch::default();
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return,
            _ = ticks.tick() => {}
        }
        let bytes = tokio::fs::read(&path).await;
        watch.poll(&roots, &path, bytes);
    }
}

/// What the watcher remembers between polls.
#[derive(Default)]
pub(super) struct Watch {
    /// Hash of the bytes examined last, valid or not.
    last: Option<[u8; 32]>,
    /// The last poll failed to read the file (logged once).
    unreadable: bool,
}

impl Watch {
    pub(super) fn poll(
        &mut self,
        roots: &TrustRoots,
        path: &Path,
        bytes: std::io::Result<Vec<u8>>,
    ) {
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(error) => {
                if !self.unreadable {
                    tracing::warn!(path = %path.display(), %error, "cannot read the trust roots; keeping the current ones");
                }
                self.unreadable = true;
                return;
            }
        };
        self.unreadable = false;
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        if self.last == Some(hash) {
            return;
        }
        self.last = Some(hash);
        let new = match RootSet::parse(&bytes) {
            Ok(new) => new,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "invalid trust roots file; keeping the current roots");
                return;
            }
        };
        let old = roots.fingerprint();
        if new.fingerprint == old {
            return;
        }
        let (count, fingerprint) = (new.anchors.len(), new.fingerprint.clone());
        roots.current.store(Arc::new(new));
        tracing::info!(path = %path.display(), roots = count, %fingerprint, previous = %old, "trust roots reloaded");
    }
}
