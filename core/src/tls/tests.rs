//! Tests of mesh mTLS, all in-process (in-memory pipes, and TCP on
//! 127.0.0.1:0), with a test PKI made by rcgen.

mod credentials;
mod fixtures;
mod handshake;
mod rotation;
mod sniff;
