//! The proxy's workload identity.
//!
//! At start the proxy makes an ECDSA P-256 key (it never leaves the
//! process) and a CSR naming its SPIFFE ID, then trades the CSR and its
//! ServiceAccount token (re-read from the projected file on every request,
//! since the kubelet rotates it) for a certificate from the identity
//! service. It renews at about 70 % of the certificate's lifetime, with
//! jitter so a fleet does not renew in step; a failed renewal keeps the
//! current certificate and retries with exponential backoff.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use trellis_api::CertifyRequest;
use trellis_core::shutdown::Shutdown;
use trellis_core::spiffe::SpiffeId;
use trellis_core::tls::{CertInfo, Credentials, TlsError};

use crate::config::IdentityConfig;
use crate::metrics::{Metrics, RenewalLabels};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("making the key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("reading the ServiceAccount token {path}: {source}")]
    Token {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Connect(#[from] trellis_api::client::ConnectError),
    #[error("the identity service refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error("the issued certificate is not usable: {0}")]
    Certificate(#[from] TlsError),
}

/// Shortest and longest wait between failed attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Obtains and renews this proxy's certificate until shutdown.
pub async fn run(
    config: IdentityConfig,
    creds: Arc<Credentials>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let key = match KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "cannot make a key; this proxy will never be ready");
            return;
        }
    };
    let csr = match csr(&key, &config.id) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot make a CSR; this proxy will never be ready");
            return;
        }
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let wait = match certify(&config, &creds, &key, &csr).await {
            Ok(info) => {
                metrics
                    .identity
                    .renewals
                    .get_or_create(&RenewalLabels { result: "ok" })
                    .inc();
                metrics.identity.expiry.set(unix_secs(info.not_after));
                tracing::info!(
                    identity = %config.id, serial = %info.serial,
                    not_after = unix_secs(info.not_after), "certificate issued"
                );
                backoff = BACKOFF_MIN;
                renew_after(&info, SystemTime::now(), jitter())
            }
            Err(e) => {
                metrics
                    .identity
                    .renewals
                    .get_or_create(&RenewalLabels { result: "error" })
                    .inc();
                tracing::warn!(
                    error = %e, retry_in = ?backoff, keeping_current = creds.is_ready(),
                    "certificate request failed"
                );
                let wait = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.signaled() => return,
        }
    }
}

fn csr(key: &KeyPair, id: &SpiffeId) -> Result<Vec<u8>, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    Ok(params.serialize_request(key)?.der().to_vec())
}

async fn certify(
    config: &IdentityConfig,
    creds: &Credentials,
    key: &KeyPair,
    csr: &[u8],
) -> Result<CertInfo, IdentityError> {
    let token = tokio::fs::read_to_string(&config.token_file)
        .await
        .map_err(|source| IdentityError::Token {
            path: config.token_file.display().to_string(),
            source,
        })?;
    let mut client =
        trellis_api::client::connect(&config.addr, creds.roots(), &config.server_id).await?;
    let rsp = client
        .certify(CertifyRequest {
            csr_der: csr.to_vec(),
            token: token.trim().to_string(),
        })
        .await?
        .into_inner();
    let mut chain = vec![CertificateDer::from(rsp.leaf_der)];
    chain.extend(rsp.intermediates_der.into_iter().map(CertificateDer::from));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(creds.set(key, chain)?)
}

/// When to renew: 70 % of the way through the certificate's life, moved by
/// `jitter` (−1.0 to 1.0) times 10 % of the lifetime; never sooner than
/// one second from `now`.
fn renew_after(info: &CertInfo, now: SystemTime, jitter: f64) -> Duration {
    let life = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default()
        .as_secs_f64();
    let at = life * (0.7 + 0.1 * jitter.clamp(-1.0, 1.0));
    let renew_at = info.not_before + Duration::from_secs_f64(at);
    renew_at
        .duration_since(now)
        .unwrap_or_default()
        .max(Duration::from_secs(1))
}

/// A random number in −1.0..1.0, different in every process.
fn jitter() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() as f64 / u64::MAX as f64) * 2.0 - 1.0
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(secs: u64) -> CertInfo {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        CertInfo {
            serial: "01".into(),
            not_before: start,
            not_after: start + Duration::from_secs(secs),
        }
    }

    #[test]
    fn renews_at_seventy_percent_within_jitter() {
        let i = info(1000);
        let now = i.not_before;
        assert_eq!(renew_after(&i, now, 0.0), Duration::from_secs(700));
        assert_eq!(renew_after(&i, now, 1.0), Duration::from_secs(800));
        assert_eq!(renew_after(&i, now, -1.0), Duration::from_secs(600));
        // Already past the renewal point: renew promptly.
        assert_eq!(
            renew_after(&i, now + Duration::from_secs(900), 0.0),
            Duration::from_secs(1)
        );
        for _ in 0..100 {
            let j = jitter();
            assert!((-1.0..=1.0).contains(&j));
        }
    }

    #[test]
    fn csr_names_the_spiffe_id() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let id: SpiffeId = "spiffe://cluster.local/ns/demo/sa/web".parse().unwrap();
        let der = csr(&key, &id).unwrap();
        let text = String::from_utf8_lossy(&der);
        assert!(text.contains("spiffe://cluster.local/ns/demo/sa/web"));
    }
}
