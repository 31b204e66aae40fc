//! The local mesh's stand-in for the API server's token issuer: an ES256
//! key that signs projected-ServiceAccount-style tokens, and its JWKS.

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use sha2::{Digest, Sha256};

use super::{Audiences, KeyError, KubernetesClaims, NamedRef, ProjectedClaims};
use crate::clock::{fill_random, hex, unix_secs};

/// Signs ServiceAccount tokens like the API server does.
pub struct LocalIssuer {
    issuer: String,
    key_pem: String,
    encoding: EncodingKey,
    kid: String,
    x: String,
    y: String,
}

impl std::fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl LocalIssuer {
    /// A new issuer named `issuer` (the tokens' `iss`) with a fresh key.
    pub fn generate(issuer: &str) -> Result<Self, KeyError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| KeyError::Key(e.to_string()))?;
        Self::from_key(issuer, &key)
    }

    /// An issuer from a PKCS#8 ECDSA P-256 key (as [`Self::key_pem`] wrote).
    pub fn from_pem(issuer: &str, key_pem: &str) -> Result<Self, KeyError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| KeyError::Key(e.to_string()))?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(KeyError::Key("not an ECDSA P-256 key".into()));
        }
        Self::from_key(issuer, &key)
    }

    fn from_key(issuer: &str, key: &KeyPair) -> Result<Self, KeyError> {
        let key_pem = key.serialize_pem();
        let encoding = EncodingKey::from_ec_pem(key_pem.as_bytes())
            .map_err(|e| KeyError::Key(e.to_string()))?;
        let point = key.public_key_raw();
        let (x, y) = match point {
            [0x04, xy @ ..] if xy.len() == 64 => xy.split_at(32),
            _ => return Err(KeyError::Key("unexpected public key encoding".into())),
        };
        Ok(Self {
            issuer: issuer.to_string(),
            key_pem,
            encoding,
            kid: URL_SAFE_NO_PAD.encode(&Sha256::digest(point)[..16]),
            x: URL_SAFE_NO_PAD.encode(x),
            y: URL_SAFE_NO_PAD.encode(y),
        })
    }

    /// The tokens' `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The private key, PKCS#8 PEM. Secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The standard claims of a projected token for a pod's ServiceAccount,
    /// valid from now for `lifetime`.
    pub fn claims(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &str,
        audience: &str,
        lifetime: Duration,
    ) -> ProjectedClaims {
        let now = unix_secs(SystemTime::now());
        let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        ProjectedClaims {
            iss: Some(self.issuer.clone()),
            sub: Some(format!(
                "system:serviceaccount:{namespace}:{service_account}"
            )),
            aud: Some(Audiences::Many(vec![audience.to_string()])),
            exp: Some(now.saturating_add(lifetime)),
            nbf: Some(now),
            iat: Some(now),
            jti: Some(random_uid()),
            kubernetes: Some(KubernetesClaims {
                namespace: Some(namespace.to_string()),
                serviceaccount: Some(NamedRef {
                    name: service_account.to_string(),
                    uid: Some(random_uid()),
                }),
                pod: Some(NamedRef {
                    name: pod.to_string(),
                    uid: Some(random_uid()),
                }),
                node: None,
            }),
        }
    }

    /// A signed token for `namespace`/`service_account` in `pod`.
    pub fn sign(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &str,
        audience: &str,
        lifetime: Duration,
    ) -> Result<String, KeyError> {
        self.sign_claims(&self.claims(namespace, service_account, pod, audience, lifetime))
    }

    /// Signs arbitrary claims (tests make expired or inconsistent tokens).
    pub fn sign_claims(&self, claims: &ProjectedClaims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> String {
        serde_json::json!({
            "keys": [{
                "kty": "EC",
                "crv": "P-256",
                "alg": "ES256",
                "use": "sig",
                "kid": self.kid,
                "x": self.x,
                "y": self.y,
            }]
        })
        .to_string()
    }
}

/// Makes a token-signing key for `issuer` and writes `token.key` (0600)
/// and `jwks.json` (0644) into `dir`. Existing files are refused unless
/// `overwrite`.
pub fn write_token_key(dir: &Path, issuer: &str, overwrite: bool) -> Result<LocalIssuer, KeyError> {
    let li = LocalIssuer::generate(issuer)?;
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let files = [
        ("token.key", li.key_pem().to_string(), 0o600),
        ("jwks.json", li.jwks(), 0o644),
    ];
    if let Some((name, ..)) = files
        .iter()
        .find(|(name, ..)| !overwrite && dir.join(name).exists())
    {
        return Err(KeyError::Key(format!(
            "{} exists (use --force to replace)",
            dir.join(name).display()
        )));
    }
    for (name, text, mode) in files {
        let path = dir.join(name);
        crate::ca::write_file(&path, text.as_bytes(), mode)
            .map_err(|source| KeyError::Write { path, source })?;
    }
    Ok(li)
}

/// A random UUID-shaped identifier (version 4 layout).
fn random_uid() -> String {
    let mut b = [0u8; 16];
    // Identifiers in test tokens only; an all-zero one if the RNG fails.
    let _ = fill_random(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}
