//! The `Certify` handler. One request reads top-down as phases:
//!
//! 0. **admit** — the caller's rate, remembered refusals, a free
//!    verification slot ([`crate::admission`]); nothing is verified for a
//!    request that is not admitted;
//! 1. **authenticate** — verify the ServiceAccount token ([`TokenVerifier`]);
//! 2. **derive** — the SPIFFE ID `spiffe://<td>/ns/<ns>/sa/<sa>` from the
//!    verified token (never from the CSR);
//! 3. **check** — the CSR against that ID ([`crate::csr::check`]);
//! 4. **sign** — a leaf for the CSR's key ([`crate::sign::sign_leaf`]),
//!    living no longer than the token ([`crate::sign::leaf_lifetime`]);
//! 5. **record** — one log event and the metrics, issued or refused.
//!
//! Every refusal is a [`Refusal`], and [`Refusal::classify`] is the one
//! place that maps it to a gRPC status code, a metric reason and a log
//! level.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Code, Request, Response, Status};
use trellis_api::{CertifyRequest, CertifyResponse, Identity};
use trellis_core::spiffe::{SpiffeId, SpiffeIdError};

use crate::admission::{Admission, ClientKey, Limited, RefusalCache};
use crate::ca::CaStore;
use crate::csr::{self, CsrError};
use crate::metrics::Metrics;
use crate::server::PeerAddr;
use crate::sign::{leaf_lifetime, sign_leaf, SignError, SignPolicy, TokenExpiresSoon};
use crate::token::{TokenError, TokenVerifier, UnverifiedClaims};

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Limited(#[from] Limited),
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A refusal of this very token remembered from an earlier request.
    #[error("{0} (refused before)")]
    Cached(TokenError),
    #[error(transparent)]
    ExpiresSoon(#[from] TokenExpiresSoon),
    #[error("the token's ServiceAccount is not a valid SPIFFE ID: {0}")]
    Identity(#[from] SpiffeIdError),
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// How loudly a refusal is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The caller's fault, repeated or in bulk (limited, refused before):
    /// a flood of them must not flood the log.
    Debug,
    /// The caller's fault.
    Info,
    /// Ours, and probably passing (a reviewer or the issuer is unavailable).
    Warn,
    /// Ours, and a bug or a broken CA.
    Error,
}

impl Refusal {
    /// The gRPC code, the metric reason and the log level.
    pub fn classify(&self) -> (Code, &'static str, Level) {
        match self {
            Self::Limited(l) => (Code::ResourceExhausted, l.code(), Level::Debug),
            Self::Cached(e) => (Code::Unauthenticated, e.reason(), Level::Debug),
            Self::ExpiresSoon(_) => (Code::Unauthenticated, "token_expires_soon", Level::Info),
            Self::Token(e) if e.is_unavailable() => (Code::Unavailable, e.reason(), Level::Warn),
            Self::Token(e) => (Code::Unauthenticated, e.reason(), Level::Info),
            Self::Identity(_) => (Code::PermissionDenied, "invalid_identity", Level::Info),
            Self::Csr(e) => (Code::InvalidArgument, e.reason(), Level::Info),
            Self::Sign(SignError::IssuerExpired(_)) => {
                (Code::Unavailable, "issuer_expired", Level::Error)
            }
            Self::Sign(_) => (Code::Internal, "internal", Level::Error),
        }
    }
}

/// The `Identity` service.
pub struct Certifier<V> {
    verifier: Arc<V>,
    ca: Arc<CaStore>,
    trust_domain: String,
    policy: SignPolicy,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
}

impl<V: TokenVerifier> Certifier<V> {
    pub fn new(
        verifier: Arc<V>,
        ca: Arc<CaStore>,
        trust_domain: &str,
        policy: SignPolicy,
        admission: Arc<Admission>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            verifier,
            ca,
            trust_domain: trust_domain.to_string(),
            policy,
            admission,
            metrics,
        }
    }

    /// Phase 0, then 1–4 in a verification slot; a refusal of the token
    /// for the caller's fault is remembered.
    pub async fn admit_and_decide(
        &self,
        client: IpAddr,
        req: &CertifyRequest,
    ) -> Result<(CertifyResponse, String), Refusal> {
        let claimed = UnverifiedClaims::peek(&req.token);
        let now = tokio::time::Instant::now();
        self.admission
            .rate
            .check(ClientKey::new(client, claimed.sub.as_deref()), now)?;
        let key = RefusalCache::key(&req.token);
        if let Some(refused) = self.admission.refusals.get(&key, now) {
            return Err(Refusal::Cached(refused));
        }
        let _slot = self.admission.slots.try_acquire()?;
        let decided = self.decide(req, SystemTime::now()).await;
        if let Err(Refusal::Token(e)) = &decided {
            self.admission
                .refusals
                .insert(key, e, tokio::time::Instant::now());
        }
        decided
    }

    /// Phases 1–4, as of `now`: the response, and the leaf's serial (hex)
    /// for the audit log.
    pub async fn decide(
        &self,
        req: &CertifyRequest,
        now: SystemTime,
    ) -> Result<(CertifyResponse, String), Refusal> {
        let sa = self.verifier.verify(&req.token).await?;
        // The token is verified; its exp only shortens the certificate. A
        // TokenReview answer states no exp, so it is read from the token's
        // payload (unverified, which cannot lengthen anything; for a JWKS
        // verifier the same bytes were verified).
        let token_exp = UnverifiedClaims::peek(&req.token).exp;
        let id = SpiffeId::new(&self.trust_domain, &sa.namespace, &sa.name)?;
        let key = csr::check(&req.csr_der, &id)?;
        let policy = SignPolicy {
            lifetime: leaf_lifetime(&self.policy, token_exp, now)?,
            ..self.policy
        };
        let issuer = self.ca.current();
        let leaf = sign_leaf(&issuer, &key, &id, &policy, now)?;
        let response = CertifyResponse {
            not_after_unix: leaf.not_after_unix(),
            leaf_der: leaf.leaf_der.to_vec(),
            intermediates_der: leaf.chain.iter().map(|c| c.to_vec()).collect(),
            identity: id.to_string(),
        };
        Ok((response, leaf.serial))
    }
}

#[tonic::async_trait]
impl<V: TokenVerifier> Identity for Certifier<V> {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
        let client = peer.map(|a| a.to_string()).unwrap_or_default();
        // Without a peer address (not over the server's listener) every
        // caller is one address.
        let ip = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let req = request.into_inner();
        match self.admit_and_decide(ip, &req).await {
            Ok((resp, serial)) => {
                self.metrics.issued();
                tracing::info!(
                    client.addr = %client,
                    peer.identity = %resp.identity,
                    serial = %serial,
                    not_after = resp.not_after_unix,
                    "certificate issued"
                );
                Ok(Response::new(resp))
            }
            Err(refusal) => {
                let (code, reason, level) = refusal.classify();
                match &refusal {
                    Refusal::Limited(l) => self.metrics.limited(l.reason()),
                    Refusal::Cached(_) => {
                        self.metrics.refused(reason);
                        self.metrics.refusal_cached();
                    }
                    _ => self.metrics.refused(reason),
                }
                match level {
                    Level::Debug => {
                        tracing::debug!(client.addr = %client, reason, error = %refusal, "refused")
                    }
                    Level::Info => {
                        tracing::info!(client.addr = %client, reason, error = %refusal, "refused")
                    }
                    Level::Warn => {
                        tracing::warn!(client.addr = %client, reason, error = %refusal, "refused")
                    }
                    Level::Error => {
                        tracing::error!(client.addr = %client, reason, error = %refusal, "refused")
                    }
                }
                Err(Status::new(code, format!("{reason}: {refusal}")))
            }
        }
    }
}

#[cfg(test)]
mod tests;
