//! The webhook's serving certificate, from files (a mounted
//! `kubernetes.io/tls` Secret: `tls.crt`, `tls.key`), and the TLS 1.3-only
//! rustls configuration (ring) that presents it.
//!
//! The pair is read again at every reload interval, by path: a Secret
//! volume is updated by swapping a symlink, so watching the files' inodes
//! would miss it. When the bytes differ from the last look (a SHA-256 of
//! both files), the new pair is checked — PEM, a certificate chain, a key
//! that is the leaf's, a leaf not yet expired — and served from the next
//! handshake on; a pair that fails is refused with an error log and the
//! current one stays. Established connections are never touched.
//!
//! Why not `trellis_core::tls`: that module serves mesh mTLS, with SPIFFE
//! identities and a client certificate; the API server presents none and
//! verifies the webhook against the `caBundle` of its configuration.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::metrics::Metrics;

/// ALPN: h2 and HTTP/1.1 (the API server's client speaks both).
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{path}: unusable key: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the key in {key} is not the key of the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: the certificate cannot be read: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("{path}: the certificate expired (not after {not_after} Unix time)")]
    Expired { path: PathBuf, not_after: i64 },
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// One checked certificate and key.
struct Pair {
    key: Arc<CertifiedKey>,
    /// Of the bytes of both files, to notice a change.
    hash: [u8; 32],
    /// The leaf's notAfter, Unix seconds.
    not_after: i64,
}

/// The serving certificate in use, swapped atomically on reload.
pub struct ServingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<Pair>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("not_after", &self.not_after())
            .finish()
    }
}

impl ServingCert {
    /// Reads and checks the pair; start-up fails on an error.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let cert = read(cert_path)?;
        let key = read(key_path)?;
        let pair = Pair::parse(cert_path, &cert, key_path, &key, SystemTime::now())?;
        Ok(Self {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: ArcSwap::from_pointee(pair),
        })
    }

    /// The leaf's notAfter (Unix seconds) of the pair in use.
    pub fn not_after(&self) -> i64 {
        self.current.load().not_after
    }

    /// The leaf (DER) of the pair in use.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current.load().key.cert.first().cloned()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

impl Pair {
    fn parse(
        cert_path: &Path,
        cert_pem: &[u8],
        key_path: &Path,
        key_pem: &[u8],
        now: SystemTime,
    ) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                path: cert_path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::NoCertificate {
                path: cert_path.to_path_buf(),
            });
        };
        let not_after = not_after(leaf).map_err(|reason| TlsError::Certificate {
            path: cert_path.to_path_buf(),
            reason,
        })?;
        let now_unix = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if not_after <= now_unix {
            return Err(TlsError::Expired {
                path: cert_path.to_path_buf(),
                not_after,
            });
        }
        let key_error = |reason: String| TlsError::Key {
            path: key_path.to_path_buf(),
            reason,
        };
        let key_der =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| key_error(e.to_string()))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
            .map_err(|e| key_error(e.to_string()))?;
        let key = CertifiedKey::new(chain, signer);
        match key.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::KeyMismatch {
                    cert: cert_path.to_path_buf(),
                    key: key_path.to_path_buf(),
                })
            }
            Err(e) => {
                return Err(key_error(format!(
                    "cannot compare it with the certificate: {e}"
                )))
            }
        }
        Ok(Self {
            key: Arc::new(key),
            hash: hash(cert_pem, key_pem),
            not_after,
        })
    }
}

fn not_after(leaf: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    Ok(cert.validity().not_after.timestamp())
}

fn hash(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_be_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// TLS 1.3 only, ring, presenting whatever `cert` holds at each handshake;
/// no client certificate asked for.
pub fn server_config(cert: Arc<ServingCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Polls the files every `interval` and swaps in a changed, valid pair;
/// returns when `stop` resolves.
pub async fn watch(
    cert: Arc<ServingCert>,
    metrics: Arc<Metrics>,
    interval: Duration,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = Watch::new(cert.current.load().hash);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return,
            _ = ticks.tick() => {}
        }
        let cert_bytes = tokio::fs::read(&cert.cert_path).await;
        let key_bytes = tokio::fs::read(&cert.key_path).await;
        watch.poll(&cert, &metrics, cert_bytes, key_bytes, SystemTime::now());
    }
}

/// What the watcher remembers between polls.
struct Watch {
    /// Hash of the bytes examined last, taken or refused.
    last: [u8; 32],
    /// The last poll could not read a file (logged and counted once).
    unreadable: bool,
}

impl Watch {
    fn new(last: [u8; 32]) -> Self {
        Self {
            last,
            unreadable: false,
        }
    }

    fn poll(
        &mut self,
        cert: &ServingCert,
        metrics: &Metrics,
        cert_bytes: std::io::Result<Vec<u8>>,
        key_bytes: std::io::Result<Vec<u8>>,
        now: SystemTime,
    ) {
        let (cert_bytes, key_bytes) = match (cert_bytes, key_bytes) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(error), _) | (_, Err(error)) => {
                if !self.unreadable {
                    metrics.tls_reload(false);
                    tracing::error!(cert = %cert.cert_path.display(), key = %cert.key_path.display(), %error, "cannot read the serving certificate; keeping the current one");
                }
                self.unreadable = true;
                return;
            }
        };
        self.unreadable = false;
        let hash = hash(&cert_bytes, &key_bytes);
        if hash == self.last {
            return;
        }
        self.last = hash;
        match Pair::parse(
            &cert.cert_path,
            &cert_bytes,
            &cert.key_path,
            &key_bytes,
            now,
        ) {
            Ok(pair) => {
                let not_after = pair.not_after;
                cert.current.store(Arc::new(pair));
                metrics.tls_reload(true);
                metrics.set_cert_expiry(not_after);
                tracing::info!(cert = %cert.cert_path.display(), not_after, "serving certificate reloaded");
            }
            Err(error) => {
                metrics.tls_reload(false);
                tracing::error!(%error, "refusing the new serving certificate; keeping the current one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails

    use super::*;
    use rcgen::{date_time_ymd, CertificateParams, KeyPair};

    /// A self-signed pair valid until 2100, or one that expired in 2021.
    fn pair(expired: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["trellis-injector.trellis.svc".into()]).unwrap();
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(if expired { 2021 } else { 2100 }, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn serving(cert: &str, key: &str) -> ServingCert {
        ServingCert {
            cert_path: "tls.crt".into(),
            key_path: "tls.key".into(),
            current: ArcSwap::from_pointee(
                Pair::parse(
                    Path::new("tls.crt"),
                    cert.as_bytes(),
                    Path::new("tls.key"),
                    key.as_bytes(),
                    SystemTime::now(),
                )
                .unwrap(),
            ),
        }
    }

    #[test]
    fn a_pair_is_checked() {
        let (cert, key) = pair(false);
        let (_, other_key) = pair(false);
        let now = SystemTime::now();
        let parse = |c: &str, k: &str| {
            Pair::parse(
                Path::new("c"),
                c.as_bytes(),
                Path::new("k"),
                k.as_bytes(),
                now,
            )
        };
        assert!(parse(&cert, &key).is_ok());
        assert!(matches!(
            parse(&cert, &other_key),
            Err(TlsError::KeyMismatch { .. })
        ));
        assert!(matches!(
            parse("", &key),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(matches!(parse(&cert, "junk"), Err(TlsError::Key { .. })));
        let (old, old_key) = pair(true);
        assert!(matches!(
            parse(&old, &old_key),
            Err(TlsError::Expired { .. })
        ));
    }

    #[test]
    fn reload_takes_a_good_pair_and_refuses_a_bad_one() {
        let (cert1, key1) = pair(false);
        let (cert2, key2) = pair(false);
        let serving = serving(&cert1, &key1);
        let metrics = Metrics::new();
        let first = serving.leaf().unwrap();
        let mut watch = Watch::new(serving.current.load().hash);
        let now = SystemTime::now();
        let bytes = |s: &str| Ok(s.as_bytes().to_vec());

        // Unchanged: nothing happens.
        watch.poll(&serving, &metrics, bytes(&cert1), bytes(&key1), now);
        assert_eq!(
            metrics.tls_reloads("success") + metrics.tls_reloads("failure"),
            0
        );

        // A mismatched pair (certificate swapped, key not yet): refused.
        watch.poll(&serving, &metrics, bytes(&cert2), bytes(&key1), now);
        assert_eq!(metrics.tls_reloads("failure"), 1);
        assert_eq!(serving.leaf().unwrap(), first);
        // Looked at once only.
        watch.poll(&serving, &metrics, bytes(&cert2), bytes(&key1), now);
        assert_eq!(metrics.tls_reloads("failure"), 1);

        // Unreadable: counted and logged once, the pair kept.
        let gone = || Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        watch.poll(&serving, &metrics, gone(), bytes(&key1), now);
        watch.poll(&serving, &metrics, gone(), bytes(&key1), now);
        assert_eq!(metrics.tls_reloads("failure"), 2);
        assert_eq!(serving.leaf().unwrap(), first);

        // The complete new pair: taken.
        watch.poll(&serving, &metrics, bytes(&cert2), bytes(&key2), now);
        assert_eq!(metrics.tls_reloads("success"), 1);
        assert_ne!(serving.leaf().unwrap(), first);
    }
}
