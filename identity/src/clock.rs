//! Time and randomness helpers shared by the CA, the signer and the token
//! issuer: Unix seconds, certificate validity in rcgen's terms, random
//! serial numbers (from the one crypto provider, ring).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, SerialNumber};

/// The latest instant X.509 can express (9999-12-31T23:59:59Z), as seconds
/// since the epoch. Validity times are clamped to it, so adding a duration
/// to a date can never overflow.
const MAX_X509_SECS: u64 = 253_402_300_799;

/// Seconds since the Unix epoch (negative before it).
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The instant `secs` seconds after the epoch (the epoch itself if negative).
pub(crate) fn from_unix_secs(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Sets a certificate's validity window. Instants before the epoch become
/// the epoch and instants after 9999 become the end of 9999.
pub(crate) fn set_validity(
    params: &mut CertificateParams,
    not_before: SystemTime,
    not_after: SystemTime,
) {
    let since_epoch = |t: SystemTime| {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        d.min(Duration::from_secs(MAX_X509_SECS))
    };
    // rcgen takes `time::OffsetDateTime`; the epoch plus a clamped std
    // duration stays inside its range (years 1970..=9999).
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(not_before);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(not_after);
}

#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

/// Fills `buf` from the operating system's CSPRNG, through ring.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(buf)
        .map_err(|_| RandomError)
}

/// A random positive 128-bit serial number (RFC 5280: unique per issuer,
/// at most 20 octets, positive).
pub(crate) fn random_serial() -> Result<SerialNumber, RandomError> {
    let mut buf = [0u8; 16];
    fill_random(&mut buf)?;
    buf[0] &= 0x7f; // positive
    buf[0] |= 0x01; // non-zero, so the encoding keeps all 16 octets
    Ok(SerialNumber::from_slice(&buf))
}

/// Lower-case hex of some bytes (serial numbers in logs and metrics).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_round_trip_and_clamping() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(unix_secs(t), 1_700_000_000);
        assert_eq!(from_unix_secs(1_700_000_000), t);
        assert_eq!(from_unix_secs(-5), UNIX_EPOCH);
        let mut p = CertificateParams::default();
        // Far beyond 9999: clamped rather than panicking.
        set_validity(
            &mut p,
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::from_secs(u64::MAX / 4),
        );
        assert_eq!(p.not_after.year(), 9999);
    }

    #[test]
    fn serials_are_random_and_positive() {
        let a = random_serial().unwrap();
        let b = random_serial().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a.as_ref()[0] < 0x80 && a.as_ref()[0] > 0);
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }
}
