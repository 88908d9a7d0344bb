//! Shared I/O pieces of burrow: SSH key files and fingerprints, and splicing SSH channels to
//! sockets or to other channels.
//!
//! # Layout
//! - [`activity`]: when bytes last moved each way on a connection.
//! - [`deflate`]: a deflate stream in pieces decodable on arrival (the port log's upload).
//! - [`first_bytes`]: a stream wrapper that keeps what the peer sent first (its SSH banner).
//! - [`keys`]: loading, generating and fingerprinting SSH keys; key file permission checks.
//! - [`splice`]: copying both ways between channels and TCP streams, honouring half-close.
//! - [`http`]: a small HTTP/1.1 client (metadata documents, alert webhooks).
//! - [`tls`]: TLS for its `https` URLs (system roots plus an optional CA file).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod activity;
pub mod deflate;
pub mod first_bytes;
pub mod http;
pub mod keys;
pub mod splice;
pub mod tls;
