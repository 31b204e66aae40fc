//! The cluster's certificates and keys, made once by `mesh up --kubernetes`:
//! a CA, the API server's serving certificate, the admin's client
//! certificate (`system:masters`, for the user's kubectl, the controller
//! manager and the node agent), and the ServiceAccount token signing key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use trellis_mesh::sys;

/// The files, in the cluster's `pki/` directory.
#[derive(Clone, Debug)]
pub struct Pki {
    pub ca: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub sa_private: PathBuf,
    pub sa_public: PathBuf,
}

impl Pki {
    pub fn at(dir: &Path) -> Pki {
        Pki {
            ca: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            sa_private: dir.join("sa.key"),
            sa_public: dir.join("sa.pub"),
        }
    }

    /// Makes every file in `dir` (mode 0700); keys are 0600. The serving
    /// certificate is valid for `addresses` and the `kubernetes` Service's
    /// names in `cluster_domain`.
    pub fn make(dir: &Path, addresses: &[IpAddr], cluster_domain: &str) -> anyhow::Result<Pki> {
        sys::create_dir_mode(dir, 0o700)?;
        let pki = Pki::at(dir);
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name = name("trellis-local-kubernetes-ca", None);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        write(&pki.ca, &ca_cert.pem(), 0o644)?;
        let issuer = Issuer::new(ca, ca_key);

        let mut sans: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
        sans.extend([
            "localhost".to_string(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            format!("kubernetes.default.svc.{cluster_domain}"),
        ]);
        let (cert, key) = leaf(&issuer, "kube-apiserver", None, sans, true)?;
        write(&pki.serving_cert, &cert, 0o644)?;
        write(&pki.serving_key, &key, 0o600)?;
        let (cert, key) = leaf(
            &issuer,
            "trellis-admin",
            Some("system:masters"),
            vec![],
            false,
        )?;
        write(&pki.admin_cert, &cert, 0o644)?;
        write(&pki.admin_key, &key, 0o600)?;

        let sa = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        write(&pki.sa_private, &sa.serialize_pem(), 0o600)?;
        write(&pki.sa_public, &sa.public_key_pem(), 0o644)?;
        Ok(pki)
    }

    /// A kubeconfig for the admin, against `server`, with the files inlined
    /// (so it can be copied anywhere).
    pub fn admin_kubeconfig(&self, server: &str, cluster: &str) -> anyhow::Result<String> {
        use base64::Engine as _;
        let b64 = |p: &Path| -> anyhow::Result<String> {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
        };
        Ok(format!(
            "apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {cluster}-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {cluster}
  context:
    cluster: {cluster}
    user: {cluster}-admin
current-context: {cluster}
",
            ca = b64(&self.ca)?,
            cert = b64(&self.admin_cert)?,
            key = b64(&self.admin_key)?,
        ))
    }
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    org: Option<&str>,
    sans: Vec<String>,
    server: bool,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::new(sans)?;
    p.distinguished_name = name(cn, org);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let cert = p.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn name(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    sys::write_file_atomic(path, text.as_bytes(), mode, None)?;
    Ok(())
}
