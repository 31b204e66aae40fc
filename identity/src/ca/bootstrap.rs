//! A fresh CA for a trust domain: an ECDSA P-256 root and an intermediate
//! (the issuer) signed by it. The local mesh uses it, and a chart falls
//! back to it when no CA is supplied.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use trellis_core::spiffe::SpiffeId;

use super::CaError;
use crate::clock::{fill_random, hex, random_serial, set_validity};

/// Back-dating of the root's and issuer's notBefore, for clock skew between
/// the machine that made them and the machines that check them.
const CA_SKEW: Duration = Duration::from_secs(5 * 60);

/// A CA as PEM text: what `trellis-identity bootstrap` writes.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The trust roots (here one self-signed root): `roots.pem`.
    pub roots_pem: String,
    /// The issuer (intermediate) certificate: `issuer.crt`.
    pub issuer_cert_pem: String,
    /// The issuer's PKCS#8 key: `issuer.key`. Secret.
    pub issuer_key_pem: String,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("roots_pem", &self.roots_pem)
            .field("issuer_cert_pem", &self.issuer_cert_pem)
            .field("issuer_key_pem", &"[secret]")
            .finish()
    }
}

/// Makes a new root (valid `root_lifetime`) and issuer (valid
/// `issuer_lifetime`) for `trust_domain`.
pub fn bootstrap(
    trust_domain: &str,
    root_lifetime: Duration,
    issuer_lifetime: Duration,
) -> Result<Bundle, CaError> {
    bootstrap_at(
        trust_domain,
        SystemTime::now(),
        root_lifetime,
        issuer_lifetime,
    )
}

/// [`bootstrap`] as of `now` (tests make expired issuers with it).
pub(crate) fn bootstrap_at(
    trust_domain: &str,
    now: SystemTime,
    root_lifetime: Duration,
    issuer_lifetime: Duration,
) -> Result<Bundle, CaError> {
    SpiffeId::new(trust_domain, "x", "x").map_err(|e| CaError::Invalid(e.to_string()))?;
    let generate = |e: rcgen::Error| CaError::Generate(e.to_string());
    let not_before = now.checked_sub(CA_SKEW).unwrap_or(now);
    let until = |lifetime: Duration| {
        now.checked_add(lifetime)
            .ok_or_else(|| CaError::Invalid(format!("lifetime {lifetime:?} is too long")))
    };

    // A short random tag tells apart the roots of successive bootstraps
    // (during a rotation, two roots of one trust domain coexist).
    let mut tag = [0u8; 3];
    fill_random(&mut tag).map_err(|e| CaError::Generate(e.to_string()))?;
    let tag = hex(&tag);
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let mut root = ca_params(&format!("Trellis root CA ({trust_domain}) {tag}"), 1)?;
    set_validity(&mut root, not_before, until(root_lifetime)?);
    let root_cert = root.self_signed(&root_key).map_err(generate)?;
    let root_issuer = rcgen::Issuer::new(root, root_key);

    let issuer_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let mut issuer = ca_params(&format!("Trellis issuer ({trust_domain}) {tag}"), 0)?;
    issuer.use_authority_key_identifier_extension = true;
    set_validity(&mut issuer, not_before, until(issuer_lifetime)?);
    let issuer_cert = issuer
        .signed_by(&issuer_key, &root_issuer)
        .map_err(generate)?;

    Ok(Bundle {
        roots_pem: root_cert.pem(),
        issuer_cert_pem: issuer_cert.pem(),
        issuer_key_pem: issuer_key.serialize_pem(),
    })
}

fn ca_params(common_name: &str, path_len: u8) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Trellis");
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(random_serial().map_err(|e| CaError::Generate(e.to_string()))?);
    Ok(p)
}

/// Writes `roots.pem`, `issuer.crt` (mode 0644) and `issuer.key` (0600)
/// into `dir`, creating it. Existing files are refused unless `overwrite`.
pub fn write_bundle(dir: &Path, bundle: &Bundle, overwrite: bool) -> Result<(), CaError> {
    std::fs::create_dir_all(dir).map_err(|source| CaError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let files = [
        ("roots.pem", &bundle.roots_pem, 0o644),
        ("issuer.crt", &bundle.issuer_cert_pem, 0o644),
        ("issuer.key", &bundle.issuer_key_pem, 0o600),
    ];
    if !overwrite {
        if let Some((name, ..)) = files.iter().find(|(name, ..)| dir.join(name).exists()) {
            return Err(CaError::Write {
                path: dir.join(name),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists (use --force to replace)",
                ),
            });
        }
    }
    for (name, text, mode) in files {
        let path = dir.join(name);
        write_file(&path, text.as_bytes(), mode)
            .map_err(|source| CaError::Write { path, source })?;
    }
    Ok(())
}

/// Writes a file with `mode`, replacing it atomically (write to a
/// temporary name, then rename), so a reader never sees half a key.
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}
