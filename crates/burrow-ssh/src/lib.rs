//! burrow's own SSH protocol layer, written as a deterministic state machine with no I/O (the
//! way quinn-proto does QUIC): the caller feeds bytes and the time in and takes events and bytes
//! out. Both roles: the relay is a server, the agent a client. A thin tokio driver runs a
//! session on a socket.
//!
//! # Layout
//! - [`wire`]: RFC 4251 §5 data types, read with every length bounded before allocation.
//! - [`msg`]: message numbers.
//! - [`messages`]: DISCONNECT, EXT_INFO (`server-sig-algs`) and the authentication requests.
//! - [`version`]: the identification lines of RFC 4253 §4.2.
//! - [`packet`]: the binary packet protocol of RFC 4253 §6 (lengths and padding).
//! - [`crypto`]: packet protection after NEWKEYS: ChaCha20-Poly1305 and AES-GCM on ring,
//!   AES-CTR with an encrypt-then-MAC HMAC for older peers.
//! - [`kex`]: the key exchange methods (the post-quantum hybrids `mlkem768x25519-sha256` and
//!   `sntrup761x25519-sha512`, then `curve25519-sha256`), the exchange hash, key derivation,
//!   `ssh-ed25519` signatures.
//! - [`kexinit`]: `SSH_MSG_KEXINIT`, algorithm negotiation (RFC 4253 §7.1) and the markers of
//!   strict key exchange and `ext-info`.
//! - [`transport`]: the transport state machine: key exchange, rekeying, strict kex, packet order.
//! - [`auth`]: user authentication, both ends (RFC 4252, 4256): publickey with its query step,
//!   password, keyboard-interactive, partial success, the attempt limit.
//! - [`channel`]: the connection protocol (RFC 4254, 4335): channels whose windows are given
//!   back as the application consumes, forwarding, session requests, break, half-close.
//! - [`hostkeys`]: OpenSSH's host key rotation: the server announces its keys, proves them.
//! - [`session`]: transport, authentication and connection tied into one sans-I/O session.
//! - [`queue`]: message queues that count their bytes, for the connection's memory cap.
//! - `driver` (feature `tokio`): one task per connection, channels as async streams.
//! - `raw_peer` (feature `tokio`): a client that stops reading on purpose, for hostile-peer
//!   tests and the bench.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Everything here parses what a hostile peer sends: no panics, no unchecked arithmetic.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic,
        clippy::arithmetic_side_effects
    )
)]

pub mod auth;
pub mod channel;
pub mod crypto;
#[cfg(feature = "tokio")]
pub mod driver;
pub mod hostkeys;
pub mod kex;
pub mod kexinit;
pub mod messages;
pub mod msg;
pub mod packet;
pub mod queue;
#[cfg(feature = "tokio")]
pub mod raw_peer;
pub mod session;
pub mod transport;
pub mod version;
pub mod wire;

/// The key types in this crate's interface (`PublicKey` in questions, `PrivateKey` for
/// clients) come from `ssh-key`.
pub use ssh_key;

/// A deterministic xorshift64 step for the hostile-input tests.
#[cfg(test)]
pub(crate) fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}
