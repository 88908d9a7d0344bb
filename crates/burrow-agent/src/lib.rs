//! The burrow agent: dials out to the relay, holds the device's endpoints and local forwards,
//! proves the tunnel end to end, and reconnects forever.
//!
//! # Layout
//! - [`hostkey`]: pinning the relay's host key (fingerprint, known_hosts, trust on first use).
//! - [`status`]: the status file, `burrow agent status`, and the state-change hook.
//! - `handler`: the SSH client handler: forwarded channels, probe echo.
//! - `session`: one connection from dial to end: auth, forwards, keepalive, probes.
//! - `liveness`: open streams, proof of the path, and TCP's progress, for keepalives and probes.
//! - [`console`]: serial ports served as RFC 2217 console endpoints.
//! - `connect`: local `[[connect]]` listeners that reach relay-side targets.
//! - `run`: the reconnect loop with jittered backoff.
//! - `health`: the health report (link from ModemManager, the Pi's power flags, disk),
//!   read now and then and sent with traffic the session sends anyway.
//! - [`metadata`]: on-demand access: the tunnel follows a metadata service (SORACOM, any URL).
//! - [`enroll`]: `burrow agent enroll`: a new key registered with a join token, the config
//!   written; and the join file of a first boot.
// Denied, not forbidden: `console::tty` needs two ioctls (break on/off) and `liveness` one
// getsockopt (TCP_INFO) that have no safe wrapper.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod connect;
pub mod console;
pub mod enroll;
mod handler;
mod health;
pub mod hostkey;
mod liveness;
pub mod metadata;
mod run;
mod session;
pub mod status;

use std::path::PathBuf;

pub use run::run;

/// Why the agent cannot run at all (as opposed to a connection failing, which is retried).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration or a file it names is unusable.
    #[error("{0}")]
    Config(String),
    /// A local listener could not be opened.
    #[error("{0}")]
    Listen(String),
}

/// Options that are not part of the device's config file.
#[derive(Clone)]
pub struct AgentOptions {
    /// Where the status file is written.
    pub status_file: PathBuf,
    /// How console ports are opened (real terminals unless a test stands in another backend).
    pub port_opener: std::sync::Arc<dyn console::port::PortOpener>,
    /// Where sysfs and device nodes are, for consoles named by USB identity.
    pub roots: console::locate::Roots,
    /// Where the port logs and undelivered alerts are kept (default: beside the status file).
    pub state_dir: PathBuf,
    /// This agent process, as it tells relays (random per start): its sessions on several
    /// relays belong together, and the next start (a reboot) takes them all over.
    pub instance: String,
    /// The config file whose `host_key` pins the relay: a key a relay proves it holds (a host
    /// key rotation) is added there, so that later starts trust it too. None when the pins
    /// come from the command line or metadata (then it is trusted until the agent stops).
    pub config_file: Option<PathBuf>,
}

impl AgentOptions {
    /// Defaults with the given status file.
    pub fn new(status_file: PathBuf) -> Self {
        let state_dir = status_file
            .parent()
            .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf);
        AgentOptions {
            status_file,
            state_dir,
            roots: console::locate::Roots::default(),
            port_opener: std::sync::Arc::new(console::TtyOpener),
            instance: format!("{:016x}", rand::random::<u64>()),
            config_file: None,
        }
    }
}

/// Start of the SSH identification string of burrow's relay and agent.
pub const BURROW_SSH_ID_PREFIX: &str = "SSH-2.0-burrow_";

/// The status file used when the config names none: `$STATE_DIRECTORY/status.json` under
/// systemd, else `/var/lib/burrow-agent/status.json` for root, else `~/.local/state/burrow-agent`.
pub fn default_status_file() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        return PathBuf::from(dir).join("status.json");
    }
    let is_root = std::env::var("HOME").is_ok_and(|h| h == "/root");
    match std::env::var_os("HOME") {
        Some(home) if !is_root => PathBuf::from(home).join(".local/state/burrow-agent/status.json"),
        _ => PathBuf::from("/var/lib/burrow-agent/status.json"),
    }
}
