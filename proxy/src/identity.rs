//! The proxy's workload identity.
//!
//! For every certificate request the proxy makes a fresh ECDSA P-256 key
//! (it never leaves the process) and a CSR naming its SPIFFE ID, then
//! trades the CSR and its ServiceAccount token (re-read from the projected
//! file on every request, since the kubelet rotates it) for a certificate
//! from the identity service. The new key and certificate replace the old
//! pair in one atomic swap ([`Credentials::set`]) only once the certificate
//! has arrived and checked out; until then, and whenever a request fails,
//! the old pair keeps serving. A key therefore lives no longer than its
//! certificate, and a key that leaked is useless after the next renewal. It renews at about 70 % of the certificate's lifetime, with
//! jitter so a fleet does not renew in step; a failed renewal keeps the
//! current certificate and retries with the workspace's backoff
//! ([`trellis_core::backoff`], full jitter), never waiting so long that the
//! certificate could expire between two attempts (the wait is capped at an
//! eighth of the time it has left). Each attempt
//! is bounded, so an identity service that accepts connections but never
//! answers cannot stall renewal.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use trellis_api::CertifyRequest;
use trellis_core::backoff::{Backoff, Exponential};
use trellis_core::shutdown::Shutdown;
use trellis_core::spiffe::SpiffeId;
use trellis_core::tls::{CertInfo, Credentials, TlsError};

use crate::config::IdentityConfig;
use crate::metrics::{Metrics, RenewalLabels};
use crate::startup::Awaited;

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
    #[error("no answer from the identity service within {0:?}")]
    Timeout(Duration),
    #[error("the identity service refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error("the issued certificate is not usable: {0}")]
    Certificate(#[from] TlsError),
}

/// The wait between failed attempts: at most 500 ms at first, doubling, at
/// most 60 s; lower still near the certificate's expiry ([`retry_cap`]).
const RETRY: Exponential = Exponential::new(Duration::from_millis(500), Duration::from_secs(60));
/// Longest wait between attempts while the proxy has no usable certificate
/// (it serves no meshed traffic until it gets one).
const RETRY_MAX_UNCERTIFIED: Duration = Duration::from_secs(10);
/// How long one attempt (connect, handshake, `Certify`) may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Obtains and renews this proxy's certificate until shutdown, telling
/// `certificate` when the first one has arrived and, until then, why each
/// attempt failed.
pub async fn run(
    config: IdentityConfig,
    creds: Arc<Credentials>,
    certificate: Arc<Awaited>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let mut backoff = Backoff::new(RETRY);
    loop {
        let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, certify(&config, &creds));
        let result = attempt
            .await
            .unwrap_or(Err(IdentityError::Timeout(ATTEMPT_TIMEOUT)));
        let wait = match result {
            Ok(info) => {
                metrics
                    .identity
                    .renewals
                    .get_or_create(&RenewalLabels { result: "ok" })
                    .inc();
                metrics.identity.expiry.set(unix_secs(info.not_after));
                tracing::info!(
                    identity = %config.id, serial = %info.serial,
                    not_after = unix_secs(info.not_after), key = %info.key_fingerprint,
                    "certificate issued"
                );
                certificate.arrived();
                backoff.reset();
                let now = SystemTime::now();
                renew_after(&info, now, now, jitter())
            }
            Err(e) => {
                metrics
                    .identity
                    .renewals
                    .get_or_create(&RenewalLabels { result: "error" })
                    .inc();
                tracing::warn!(
                    error = %e, keeping_current = creds.is_ready(),
                    "certificate request failed"
                );
                certificate.failed(&e);
                backoff.next_wait_at_most(retry_cap(creds.info().as_ref(), SystemTime::now()))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.signaled() => return,
        }
    }
}

/// A fresh key, and a CSR for it naming `id`.
fn new_key_and_csr(id: &SpiffeId) -> Result<(KeyPair, Vec<u8>), rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let csr = csr(&key, id)?;
    Ok((key, csr))
}

fn csr(key: &KeyPair, id: &SpiffeId) -> Result<Vec<u8>, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    Ok(params.serialize_request(key)?.der().to_vec())
}

/// One attempt: a new key and CSR, the token, `Certify`, then the swap.
async fn certify(config: &IdentityConfig, creds: &Credentials) -> Result<CertInfo, IdentityError> {
    let (key, csr) = new_key_and_csr(&config.id)?;
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
            csr_der: csr,
            token: token.trim().to_string(),
        })
        .await?
        .into_inner();
    let mut chain = vec![CertificateDer::from(rsp.leaf_der)];
    chain.extend(rsp.intermediates_der.into_iter().map(CertificateDer::from));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(creds.set(key, chain)?)
}

/// When to renew: 70 % of the way from `received` (when the certificate
/// arrived) to its expiry, moved by `jitter` (−1.0 to 1.0) times 10 % of
/// that time; never sooner than one second from `now`. The lifetime is
/// measured from arrival rather than from `notBefore` because the identity
/// service back-dates `notBefore` for clock skew: with short certificates
/// that would otherwise pull renewal far forward.
fn renew_after(info: &CertInfo, received: SystemTime, now: SystemTime, jitter: f64) -> Duration {
    let start = received.max(info.not_before);
    let life = info.not_after.duration_since(start).unwrap_or_default();
    let renew_at = start + life.mul_f64(0.7 + 0.1 * jitter.clamp(-1.0, 1.0));
    renew_at
        .duration_since(now)
        .unwrap_or_default()
        .max(Duration::from_secs(1))
}

/// This site's own cap on the wait after a failed attempt, on top of
/// [`RETRY`]'s: an eighth of what is left of the current certificate, so
/// that it gets several more attempts before it expires (never below
/// [`RETRY`]'s base, nor above its cap), and [`RETRY_MAX_UNCERTIFIED`]
/// while there is no valid certificate at all.
fn retry_cap(current: Option<&CertInfo>, now: SystemTime) -> Duration {
    match current.and_then(|c| c.not_after.duration_since(now).ok()) {
        Some(left) if !left.is_zero() => (left / 8).clamp(RETRY.base, RETRY.max),
        _ => RETRY_MAX_UNCERTIFIED,
    }
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
            issuer_fingerprint: String::new(),
            key_fingerprint: String::new(),
        }
    }

    #[test]
    fn renews_at_seventy_percent_within_jitter() {
        let i = info(1000);
        let now = i.not_before;
        assert_eq!(renew_after(&i, now, now, 0.0), Duration::from_secs(700));
        assert_eq!(renew_after(&i, now, now, 1.0), Duration::from_secs(800));
        assert_eq!(renew_after(&i, now, now, -1.0), Duration::from_secs(600));
        // Already past the renewal point: renew promptly.
        let late = now + Duration::from_secs(900);
        assert_eq!(renew_after(&i, now, late, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn back_dated_certificates_renew_at_seventy_percent_of_what_is_left() {
        // 30 s of life from arrival, back-dated by a minute for clock skew:
        // renewal 21 s after arrival, not 70 % of the 90 s the fields span.
        let received = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000);
        let i = CertInfo {
            serial: "02".into(),
            not_before: received - Duration::from_secs(60),
            not_after: received + Duration::from_secs(30),
            issuer_fingerprint: String::new(),
            key_fingerprint: String::new(),
        };
        assert_eq!(
            renew_after(&i, received, received, 0.0),
            Duration::from_secs(21)
        );
        // Asked again 10 s later (same certificate): 11 s to go.
        let later = received + Duration::from_secs(10);
        assert_eq!(
            renew_after(&i, received, later, 0.0),
            Duration::from_secs(11)
        );
        for _ in 0..100 {
            let j = jitter();
            assert!((-1.0..=1.0).contains(&j));
        }
    }

    #[test]
    fn the_retry_cap_is_an_eighth_of_the_certificates_life_left() {
        let i = info(30);
        let s = Duration::from_secs;
        let at = |secs| i.not_before + s(secs);
        // A fresh 30 s certificate: an eighth of what is left.
        assert_eq!(retry_cap(Some(&i), at(0)), s(30) / 8);
        // Late in its life (renewal failed at 70 %): still several tries left.
        assert_eq!(retry_cap(Some(&i), at(22)), s(1));
        // Almost expired: never below the first wait's ceiling.
        assert_eq!(retry_cap(Some(&i), at(29)), RETRY.base);
        // Long certificates: the ordinary cap.
        let day = info(86_400);
        assert_eq!(retry_cap(Some(&day), day.not_before), RETRY.max);
        // No certificate, or an expired one: at most ten seconds.
        assert_eq!(retry_cap(None, at(0)), RETRY_MAX_UNCERTIFIED);
        assert_eq!(retry_cap(Some(&i), at(31)), RETRY_MAX_UNCERTIFIED);
    }

    #[test]
    fn retry_waits_back_off_with_full_jitter_but_never_past_the_certificate() {
        // Full jitter since the one backoff of issue 13 (it was "equal
        // jitter", half to all of the backoff, at least 500 ms): each wait
        // is the draw times the ceiling, min(cap, 500 ms · 2ⁿ).
        let i = info(30);
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let draws = [1.0, 1.0, 1.0, 0.5, 1.0, 0.0];
        let mut next = draws.into_iter();
        let mut b = Backoff::with_random(RETRY, move || next.next().unwrap_or(1.0));
        let fresh = retry_cap(Some(&i), i.not_before);
        let waits: Vec<Duration> = (0..6).map(|_| b.next_wait_at_most(fresh)).collect();
        // Ceilings 0.5, 1, 2, 3.75 (30 s / 8), 3.75, 3.75 s.
        assert_eq!(waits, [ms(500), s(1), s(2), ms(1875), ms(3750), s(0)]);
        // A certificate almost expired: no wait past 500 ms, however many failures.
        let late = retry_cap(Some(&i), i.not_before + s(29));
        assert_eq!(b.next_wait_at_most(late), ms(500));
        // No certificate: ten seconds at most; a day's: the policy's 60 s.
        for _ in 0..10 {
            b.next_wait();
        }
        assert_eq!(b.next_wait_at_most(retry_cap(None, i.not_before)), s(10));
        let day = info(86_400);
        assert_eq!(
            b.next_wait_at_most(retry_cap(Some(&day), day.not_before)),
            s(60)
        );
        // A success starts over.
        b.reset();
        assert_eq!(b.next_wait_at_most(fresh), ms(500));
    }

    #[test]
    fn csr_names_the_spiffe_id() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let id: SpiffeId = "spiffe://cluster.local/ns/demo/sa/web".parse().unwrap();
        let der = csr(&key, &id).unwrap();
        let text = String::from_utf8_lossy(&der);
        assert!(text.contains("spiffe://cluster.local/ns/demo/sa/web"));
        // Each request brings its own key.
        let (k1, c1) = new_key_and_csr(&id).unwrap();
        let (k2, c2) = new_key_and_csr(&id).unwrap();
        assert_ne!(k1.public_key_raw(), k2.public_key_raw());
        assert_ne!(c1, c2);
    }
}
