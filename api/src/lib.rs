//! Trellis's gRPC API, generated at build time from `proto/` (see `build.rs`).
//!
//! - [`identity::v1`]: the mesh CA's `Identity` service (`Certify`): a
//!   workload trades a ServiceAccount token and a CSR for a certificate.
//!   [`identity::v1::identity_client::IdentityClient`] and
//!   [`identity::v1::identity_server::IdentityServer`] are the client and the
//!   server wrapper; `trellis-identity` implements the server.
//! - [`discovery::v1`]: the controller's `Discovery` service: streams of
//!   snapshots resolving a destination (endpoints, identities, routes,
//!   timeouts, retries) and a pod's inbound policy. `trellis-controller`
//!   implements the server; the proxy is the client.
//! - [`client::connect`]: a channel to the identity service over TLS 1.3
//!   that accepts the server only by its SPIFFE ID (used by the proxy).

pub mod client;

pub mod identity {
    pub mod v1 {
        // Generated code: its style is prost's and tonic's, not ours.
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("trellis.identity.v1");
    }
}

pub mod discovery {
    pub mod v1 {
        // Generated code: its style is prost's and tonic's, not ours.
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("trellis.discovery.v1");
    }
}

pub use identity::v1::identity_client::IdentityClient;
pub use identity::v1::identity_server::{Identity, IdentityServer};
pub use identity::v1::{CertifyRequest, CertifyResponse};
