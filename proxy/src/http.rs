//! What HTTP proxying needs in either direction; the per-request stages
//! themselves are in [`crate::inbound`] and [`crate::outbound`].
//!
//! - [`server`]: hyper's server on a client connection, handing each
//!   request to a direction's handler (or refusing them all);
//! - [`headers`]: pure transformations of requests and headers (hop-by-hop
//!   headers, h2c upgrade offers, the mesh's HTTP/1-in-HTTP/2 conversion,
//!   path normalisation);
//! - [`record`]: the golden metrics of one request, recorded when its
//!   response body ends ([`RecordBody`]), so gRPC trailers and streamed
//!   bodies are classified correctly;
//! - [`respond`]: the last stage of every request: the upstream's response
//!   made ready for the client, or an error response naming its reason;
//! - [`tunnel`]: `Upgrade` (WebSocket) and `CONNECT`, a dedicated upstream
//!   connection that becomes a byte tunnel once both sides agree.

pub mod headers;
pub mod record;
pub mod respond;
pub mod server;
pub mod tunnel;

use bytes::Bytes;
use http_body_util::{Either, Full};

pub use record::{RecordBody, Recorder};
pub use server::ServerLimits;

/// The body of every response the proxy sends: an upstream's, recorded as
/// it streams, or one the proxy wrote itself.
pub type ProxyBody = Either<RecordBody, Full<Bytes>>;
