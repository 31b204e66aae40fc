//! Local verification of projected ServiceAccount JWTs against the issuer's
//! JWKS: signature (ES256 or RS256, chosen by the key, never by the token
//! alone), then the claims (see [`super::check_claims`]).
//!
//! The JWKS comes from a file (the API server's
//! `/openid/v1/jwks`, or the local mesh's [`super::LocalIssuer`]) and is
//! re-read by [`JwksVerifier::reload`]; a bad new file keeps the old keys.
//!
//! What it cannot see: whether the pod and ServiceAccount the token is
//! bound to (`kubernetes.io.pod`, `.serviceaccount`, with their uids) still
//! exist. The API server checks that on every TokenReview; here the token
//! of a deleted pod keeps getting certificates until its `exp` (an hour
//! for the injector's tokens). Checking would need `get` on pods and
//! ServiceAccounts (or a watch of every pod in the cluster) and would
//! bring back the API server this mode exists to do without; that is the
//! TokenReview verifier's job, and why it is the default.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};

use super::cache::TokenCache;
use super::{
    check_claims, check_size, Expectations, KeyError, ProjectedClaims, ServiceAccount, TokenError,
    TokenVerifier,
};
use crate::clock::unix_secs;

/// Verified tokens remembered, at most.
const CACHE_CAPACITY: usize = 10_000;

struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens against a JWKS.
pub struct JwksVerifier {
    path: Option<PathBuf>,
    keys: ArcSwap<Vec<VerifyKey>>,
    seen: Mutex<[u8; 32]>,
    expect: Expectations,
    cache: TokenCache,
}

impl JwksVerifier {
    /// Reads the JWKS from `path`; [`Self::reload`] re-reads it.
    pub fn from_file(
        path: impl Into<PathBuf>,
        issuer: &str,
        audience: &str,
    ) -> Result<Self, KeyError> {
        let path = path.into();
        let text = std::fs::read(&path).map_err(|source| KeyError::Read {
            path: path.clone(),
            source,
        })?;
        let mut v = Self::from_jwks_bytes(&text, issuer, audience)?;
        v.path = Some(path);
        Ok(v)
    }

    /// A verifier with a fixed JWKS (JSON text).
    pub fn from_jwks(jwks: &str, issuer: &str, audience: &str) -> Result<Self, KeyError> {
        Self::from_jwks_bytes(jwks.as_bytes(), issuer, audience)
    }

    fn from_jwks_bytes(jwks: &[u8], issuer: &str, audience: &str) -> Result<Self, KeyError> {
        Ok(Self {
            path: None,
            keys: ArcSwap::from_pointee(parse_jwks(jwks)?),
            seen: Mutex::new(Sha256::digest(jwks).into()),
            expect: Expectations {
                issuer: issuer.to_string(),
                audience: audience.to_string(),
            },
            cache: TokenCache::new(CACHE_CAPACITY),
        })
    }

    /// Re-reads the JWKS file if there is one. New valid content replaces
    /// the keys and empties the cache (a removed key must stop working);
    /// bad content is refused once and the old keys kept.
    pub fn reload(&self) -> Result<bool, KeyError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let text = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.clone(),
            source,
        })?;
        let fingerprint: [u8; 32] = Sha256::digest(&text).into();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == fingerprint {
                return Ok(false);
            }
            *seen = fingerprint;
        }
        let keys = parse_jwks(&text)?;
        self.keys.store(Arc::new(keys));
        self.cache.clear();
        Ok(true)
    }

    /// Verifies `token` at `now` (unix seconds).
    pub fn verify_at(&self, token: &str, now: i64) -> Result<ServiceAccount, TokenError> {
        check_size(token)?;
        let cache_key = TokenCache::key(token);
        if let Some(sa) = self.cache.get(&cache_key, now) {
            return Ok(sa);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if !matches!(header.alg, Algorithm::ES256 | Algorithm::RS256) {
            return Err(TokenError::Malformed(format!(
                "algorithm {:?} is not accepted (ES256, RS256)",
                header.alg
            )));
        }
        let keys = self.keys.load();
        let candidates: Vec<&VerifyKey> = keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey(
                header.kid.unwrap_or_else(|| format!("{:?}", header.alg)),
            ));
        }
        let mut validation = Validation::new(header.alg);
        // Time, issuer and audience are checked by `check_claims`, with an
        // explicit clock and distinct refusals.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut verified = None;
        for k in candidates {
            match jsonwebtoken::decode::<ProjectedClaims>(token, &k.key, &validation) {
                Ok(data) => {
                    verified = Some(data.claims);
                    break;
                }
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(map_jwt_error(e.kind())),
            }
        }
        let claims = verified.ok_or(TokenError::BadSignature)?;
        let sa = check_claims(&claims, &self.expect, now)?;
        // `check_claims` requires exp.
        if let Some(exp) = claims.exp {
            self.cache.insert(cache_key, sa.clone(), exp, now);
        }
        Ok(sa)
    }

    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.cache.len()
    }
}

impl TokenVerifier for JwksVerifier {
    async fn verify(&self, token: &str) -> Result<ServiceAccount, TokenError> {
        self.verify_at(token, unix_secs(SystemTime::now()))
    }

    fn refresh(&self) -> Result<bool, KeyError> {
        self.reload()
    }
}

fn map_jwt_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
            TokenError::BadSignature
        }
        other => TokenError::Malformed(format!("{other:?}")),
    }
}

/// The usable signing keys of a JWKS: EC P-256 (ES256) and RSA (RS256) keys
/// whose `use`, if given, is `sig`. Others are skipped; none usable is an
/// error.
fn parse_jwks(text: &[u8]) -> Result<Vec<VerifyKey>, KeyError> {
    let doc: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| KeyError::Json(e.to_string()))?;
    let entries = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| KeyError::Json("no \"keys\" array".into()))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match usable_key(entry) {
            Ok(k) => keys.push(k),
            Err(why) => skipped.push(format!("key #{i}: {why}")),
        }
    }
    if keys.is_empty() {
        let why = if skipped.is_empty() {
            "the list is empty".to_string()
        } else {
            skipped.join("; ")
        };
        return Err(KeyError::NoKeys(why));
    }
    Ok(keys)
}

fn usable_key(entry: &serde_json::Value) -> Result<VerifyKey, String> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| e.to_string())?;
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return Err("not a signing key (use)".into());
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            let coordinate_ok = |c: &str| URL_SAFE_NO_PAD.decode(c).is_ok_and(|b| b.len() == 32);
            if !coordinate_ok(&p.x) || !coordinate_ok(&p.y) {
                return Err("EC coordinates are not 32-byte base64url".into());
            }
            Algorithm::ES256
        }
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        _ => return Err("not an EC P-256 or RSA key".into()),
    };
    let declared_ok = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(_) => false,
    };
    if !declared_ok {
        return Err("declared algorithm is not ES256/RS256 or does not fit the key".into());
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    Ok(VerifyKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}
