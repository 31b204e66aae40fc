//! `trellis-identity`: the mesh CA.
//!
//! A proxy sends a CSR for a key it made and its projected ServiceAccount
//! token; the service verifies the token, derives the SPIFFE ID
//! `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` from it (never from the CSR),
//! checks the CSR and returns a short-lived leaf and its chain.
//!
//! Modules, in the order a request meets them:
//! - [`server`]: binding, the TLS accept loop, reloads, renewal ([`Server`]);
//! - [`service`]: the `Certify` handler and the refusal → status mapping;
//! - [`admission`]: what a request passes before its token is verified
//!   (per-client rate, remembered refusals, concurrent verifications);
//! - [`token`]: ServiceAccount token verification (JWKS or TokenReview),
//!   and [`token::LocalIssuer`], the local mesh's token signer;
//! - [`csr`]: the pure CSR checks (fuzzed);
//! - [`sign`]: the pure leaf signer;
//! - [`ca`]: the issuer and trust roots from files, validated and
//!   reloaded; [`ca::bootstrap()`] for a fresh CA;
//! - [`tls`]: the service's own serving certificate and TLS config;
//! - [`connect`] (re-exported from `trellis-api`): a verifying client;
//! - [`config`], [`metrics`], the admin server, and [`cli`] (the
//!   binary's subcommands).

// `println!`/`eprintln!` panic on a closed pipe: print through
// trellis_core::{out, outln, errln}.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod admin;
pub mod admission;
pub mod ca;
pub mod cli;
mod clock;
pub mod config;
pub mod csr;
pub mod metrics;
pub mod server;
pub mod service;
pub mod sign;
pub mod tls;
pub mod token;

#[cfg(test)]
pub(crate) mod testutil;

pub use ca::{bootstrap, Bundle};
pub use config::Config;
pub use server::{ServeError, Server, StartError};
pub use token::{LocalIssuer, TokenVerifier};
/// The verifying client, from `trellis-api` (proxies use it from there).
pub use trellis_api::client::{self, connect};

use config::VerifierKind;
use token::{AnyVerifier, JwksVerifier, TokenReviewVerifier};
use trellis_core::shutdown::Shutdown;

/// Either failure of [`run`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Makes the configured token verifier, loads the CA, binds, and serves
/// until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let verifier = verifier_from_config(&config).await?;
    let server = Server::bind(config, verifier).await?;
    server.run(shutdown).await?;
    Ok(())
}

/// The token verifier the configuration asks for: a JWKS file, or
/// TokenReview through the in-cluster (or kubeconfig) API client.
pub async fn verifier_from_config(config: &Config) -> Result<AnyVerifier, StartError> {
    match config.token_verifier {
        VerifierKind::Jwks => {
            let path = config
                .jwks_file
                .as_ref()
                .ok_or_else(|| StartError::Verifier("no JWKS file configured".into()))?;
            let v = JwksVerifier::from_file(path, &config.token_issuer, &config.audience)
                .map_err(|e| StartError::Verifier(e.to_string()))?;
            tracing::info!(
                jwks = %path.display(),
                "verifying tokens locally against the JWKS: the token of a deleted pod or \
                 ServiceAccount keeps getting certificates until it expires \
                 (TRELLIS_IDENTITY_TOKEN_VERIFIER=kubernetes refuses it)"
            );
            Ok(AnyVerifier::Jwks(v))
        }
        VerifierKind::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| StartError::Verifier(format!("Kubernetes client: {e}")))?;
            Ok(AnyVerifier::Kubernetes(TokenReviewVerifier::new(
                client,
                &config.audience,
            )))
        }
    }
}
