//! The `Certify` handler. One request reads top-down as phases:
//!
//! 1. **authenticate** — verify the ServiceAccount token ([`TokenVerifier`]);
//! 2. **derive** — the SPIFFE ID `spiffe://<td>/ns/<ns>/sa/<sa>` from the
//!    verified token (never from the CSR);
//! 3. **check** — the CSR against that ID ([`crate::csr::check`]);
//! 4. **sign** — a leaf for the CSR's key ([`crate::sign::sign_leaf`]);
//! 5. **record** — one log event and the metrics, issued or refused.
//!
//! Every refusal is a [`Refusal`], and [`Refusal::classify`] is the one
//! place that maps it to a gRPC status code, a metric reason and a log
//! level.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Code, Request, Response, Status};
use trellis_api::{CertifyRequest, CertifyResponse, Identity};
use trellis_core::spiffe::{SpiffeId, SpiffeIdError};

use crate::ca::CaStore;
use crate::csr::{self, CsrError};
use crate::metrics::Metrics;
use crate::server::PeerAddr;
use crate::sign::{sign_leaf, SignError, SignPolicy};
use crate::token::{TokenError, TokenVerifier};

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Token(#[from] TokenError),
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
    metrics: Arc<Metrics>,
}

impl<V: TokenVerifier> Certifier<V> {
    pub fn new(
        verifier: Arc<V>,
        ca: Arc<CaStore>,
        trust_domain: &str,
        policy: SignPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            verifier,
            ca,
            trust_domain: trust_domain.to_string(),
            policy,
            metrics,
        }
    }

    /// Phases 1–4, as of `now`: the response, and the leaf's serial (hex)
    /// for the audit log.
    pub async fn decide(
        &self,
        req: &CertifyRequest,
        now: SystemTime,
    ) -> Result<(CertifyResponse, String), Refusal> {
        let sa = self.verifier.verify(&req.token).await?;
        let id = SpiffeId::new(&self.trust_domain, &sa.namespace, &sa.name)?;
        let key = csr::check(&req.csr_der, &id)?;
        let issuer = self.ca.current();
        let leaf = sign_leaf(&issuer, &key, &id, &self.policy, now)?;
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
        let client = request.extensions().get::<PeerAddr>().map(|p| p.0);
        let client = client.map(|a| a.to_string()).unwrap_or_default();
        let req = request.into_inner();
        match self.decide(&req, SystemTime::now()).await {
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
                self.metrics.refused(reason);
                match level {
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
