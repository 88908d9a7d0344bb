//! Relay settings and their defaults.

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use burrow_ssh::auth::method;
use burrow_ssh::kex::HostKey;

/// Start of the SSH identification string of burrow's relay and agent (`SSH-2.0-burrow_0.1.0`).
pub const BURROW_SSH_ID_PREFIX: &str = "SSH-2.0-burrow_";

/// Default listening address: one port for devices and operators.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:2222";
/// Seconds of silence before the relay's TCP keepalive probes a stock SSH client (burrow agents
/// declare their own schedule and get none).
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Unanswered TCP keepalive probes after which a stock client's session is dropped.
pub const DEFAULT_KEEPALIVE_MAX: usize = 3;
/// Time a connection may take to authenticate.
pub const DEFAULT_PRE_AUTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Unauthenticated connections accepted at once.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 512;
/// Unauthenticated connections accepted at once from one IP address.
pub const DEFAULT_MAX_UNAUTHENTICATED_PER_IP: usize = 64;
/// Connections one `allow-listen` listener carries at once; more are closed at accept.
pub const DEFAULT_MAX_LISTENER_CONNECTIONS: usize = 256;
/// Audit entries older than this are deleted while the relay runs.
pub const DEFAULT_AUDIT_KEEP: Duration = Duration::from_secs(365 * 86_400);
/// At most this many audit entries are kept (the oldest go first).
pub const DEFAULT_AUDIT_MAX_ROWS: u64 = 1_000_000;
/// How often the audit retention is applied.
pub const DEFAULT_AUDIT_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Key exchanges renewed by time at most this often (and after every GiB either way, as
/// OpenSSH does): AES-GCM and ChaCha20-Poly1305 need no hourly rekey, OpenSSH rekeys by volume only,
/// and on an idle cellular session each one costs a few kilobytes.
pub const REKEY_TIME_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Time a new connection has to send its SSH identification line.
pub const DEFAULT_BANNER_TIMEOUT: Duration = Duration::from_secs(10);
/// New connections per second accepted from one address (0: no limit).
pub const DEFAULT_HANDSHAKES_PER_IP_PER_SEC: f64 = 20.0;
/// Burst of new connections accepted from one address.
pub const DEFAULT_HANDSHAKE_BURST_PER_IP: f64 = 60.0;
/// Largest single console recording.
pub const DEFAULT_RECORDING_MAX_BYTES: u64 = 64 << 20;
/// Largest total of all console recordings.
pub const DEFAULT_RECORDINGS_MAX_TOTAL: u64 = 4 << 30;
/// Wrong passwords in a row, from several addresses (one counts for at most a quarter), after
/// which an operator's password login is locked.
pub const DEFAULT_PASSWORD_LOCK_AFTER: u32 = 10;
/// Wait before a password from an address past its first 3 failures is checked; it doubles
/// with each further failure.
pub const DEFAULT_PASSWORD_DELAY_FIRST: Duration = Duration::from_secs(1);
/// Longest such wait: well inside the authentication deadline, so that every password is
/// checked in the end (a guessing address is slowed, never shut out, and nor is anyone else).
pub const DEFAULT_PASSWORD_DELAY_MAX: Duration = Duration::from_secs(16);
/// How long such a lock lasts.
pub const DEFAULT_PASSWORD_LOCK_FOR: Duration = Duration::from_secs(15 * 60);
/// Delay before a failed authentication is answered.
pub const DEFAULT_AUTH_REJECTION_TIME: Duration = Duration::from_secs(1);
/// Time to wait for sessions to end at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The window budget of a link between relays: 32 streams at the full window.
pub const PEER_WINDOW_BUDGET: u64 = 64 << 20;

/// Key exchanges renewed after this many bytes either way.
pub const REKEY_BYTES: u64 = 1 << 30;
/// Failed authentication attempts before a connection is cut.
pub const MAX_AUTH_ATTEMPTS: u32 = 6;

/// The authentication methods the relay offers, and keeps offering after a failure: a key, or
/// an operator's password typed at `password` or at keyboard-interactive's prompt (PuTTY and
/// TeraTerm ask that way).
pub(crate) fn auth_methods() -> Vec<&'static str> {
    vec![
        method::PUBLICKEY,
        method::PASSWORD,
        method::KEYBOARD_INTERACTIVE,
    ]
}

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Data directory (host key, database).
    pub data_dir: PathBuf,
    /// Stock SSH clients: seconds of silence before a TCP keepalive probe.
    pub keepalive_interval: Duration,
    /// Stock SSH clients: unanswered TCP keepalive probes before a session is dropped.
    pub keepalive_max: usize,
    /// Time a connection may take to authenticate.
    pub pre_auth_timeout: Duration,
    /// Time a new connection has to send its SSH identification line.
    pub banner_timeout: Duration,
    /// New connections per second from one address (0: no limit).
    pub handshakes_per_ip_per_sec: f64,
    /// Burst of new connections from one address.
    pub handshake_burst_per_ip: f64,
    /// Unauthenticated connections at once.
    pub max_unauthenticated: usize,
    /// Unauthenticated connections at once from one IP.
    pub max_unauthenticated_per_ip: usize,
    /// Delay before a failed authentication is answered.
    pub auth_rejection_time: Duration,
    /// Console escape prefix (default Ctrl-E c).
    pub console_escape: [u8; 2],
    /// Connections one `allow-listen` listener carries at once.
    pub max_listener_connections: usize,
    /// Largest single console recording, in bytes.
    pub recording_max_bytes: u64,
    /// Largest total of all console recordings, in bytes.
    pub recordings_max_total: u64,
    /// Retention of console port logs (per console).
    pub console_logs: crate::console::portlog::Retention,
    /// Refuse consoles that cannot be recorded (and close those whose recording stops).
    pub require_recordings: bool,
    /// Offer only the post-quantum hybrid key exchanges, not curve25519.
    pub post_quantum_only: bool,
    /// Wrong passwords in a row that lock an operator's password login.
    pub password_lock_after: u32,
    /// How long that lock lasts.
    pub password_lock_for: Duration,
    /// Wait before a password from an address past its free failures is checked (doubling).
    pub password_delay_first: Duration,
    /// Longest such wait (at most half the authentication deadline).
    pub password_delay_max: Duration,
    /// Audit entries older than this are deleted.
    pub audit_keep: Duration,
    /// At most this many audit entries are kept.
    pub audit_max_rows: u64,
    /// How often retention is applied (and once at start).
    pub audit_prune_interval: Duration,
    /// The registry: `None` for the SQLite file in the data directory, or a PostgreSQL URL
    /// shared by the relays of a cluster.
    pub database: Option<String>,
    /// This relay's name in a cluster (the host name by default).
    pub relay_id: String,
    /// Where other relays of the cluster reach this one's peer port (`HOST:PORT`).
    pub peer_advertise: Option<String>,
    /// Where devices reach this relay (`HOST:PORT`), as join strings carry it; by default the
    /// listening address, or this host's name with the listening port when that is every
    /// address.
    pub advertise: Option<String>,
    /// How long this relay's presence lasts unless renewed (it is renewed every third of it).
    pub lease: Duration,
    /// Longest the relay admits devices and operators from its last copy of the registry
    /// while the database cannot be reached.
    pub snapshot_max_age: Duration,
    /// Renew a connection's keys after this many bytes either way.
    pub rekey_bytes: u64,
    /// The most bytes queued toward one authenticated peer before the relay stops reading
    /// from it (see `burrow_ssh::driver`); before authentication the cap is 64 KiB.
    pub max_queued: usize,
    /// Alerts: when they are raised and where they go.
    pub alerts: crate::alerts::AlertsConfig,
}

/// Default presence lease in a cluster: a relay killed with SIGKILL stops being routed to
/// within this long.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(6);
/// Default bound on the age of the registry copy used while PostgreSQL is unreachable.
pub const DEFAULT_SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// This machine's host name, the default relay id.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "relay".into())
}

impl RelayConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        RelayConfig {
            data_dir,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_max: DEFAULT_KEEPALIVE_MAX,
            pre_auth_timeout: DEFAULT_PRE_AUTH_TIMEOUT,
            banner_timeout: DEFAULT_BANNER_TIMEOUT,
            handshakes_per_ip_per_sec: DEFAULT_HANDSHAKES_PER_IP_PER_SEC,
            handshake_burst_per_ip: DEFAULT_HANDSHAKE_BURST_PER_IP,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            max_unauthenticated_per_ip: DEFAULT_MAX_UNAUTHENTICATED_PER_IP,
            auth_rejection_time: DEFAULT_AUTH_REJECTION_TIME,
            console_escape: burrow_proto::escape::DEFAULT_PREFIX,
            max_listener_connections: DEFAULT_MAX_LISTENER_CONNECTIONS,
            recording_max_bytes: DEFAULT_RECORDING_MAX_BYTES,
            recordings_max_total: DEFAULT_RECORDINGS_MAX_TOTAL,
            console_logs: crate::console::portlog::Retention::default(),
            require_recordings: false,
            post_quantum_only: false,
            password_lock_after: DEFAULT_PASSWORD_LOCK_AFTER,
            password_lock_for: DEFAULT_PASSWORD_LOCK_FOR,
            password_delay_first: DEFAULT_PASSWORD_DELAY_FIRST,
            password_delay_max: DEFAULT_PASSWORD_DELAY_MAX,
            audit_keep: DEFAULT_AUDIT_KEEP,
            database: None,
            relay_id: host_name(),
            peer_advertise: None,
            advertise: None,
            lease: DEFAULT_LEASE,
            snapshot_max_age: DEFAULT_SNAPSHOT_MAX_AGE,
            audit_max_rows: DEFAULT_AUDIT_MAX_ROWS,
            audit_prune_interval: DEFAULT_AUDIT_PRUNE_INTERVAL,
            rekey_bytes: REKEY_BYTES,
            max_queued: burrow_ssh::channel::DEFAULT_MAX_QUEUED,
            alerts: crate::alerts::AlertsConfig::default(),
        }
    }

    /// What one connection may hold: channel windows, and the cap on what is queued for it.
    pub(crate) fn limits(&self) -> burrow_ssh::channel::Limits {
        burrow_ssh::channel::Limits {
            max_queued: self.max_queued,
            ..burrow_ssh::channel::Limits::default()
        }
    }

    /// A link between relays carries every stream routed between them: a larger window
    /// budget (both ends are relays of one cluster, authenticated by their host keys).
    pub(crate) fn peer_limits(&self) -> burrow_ssh::channel::Limits {
        burrow_ssh::channel::Limits {
            window_budget: PEER_WINDOW_BUDGET,
            ..self.limits()
        }
    }

    /// The SSH transport settings of one connection.
    pub(crate) fn transport(&self, host_key: Arc<HostKey>) -> burrow_ssh::transport::Config {
        burrow_ssh::transport::Config {
            role: burrow_ssh::transport::Role::Server,
            software: format!("burrow_{}", env!("CARGO_PKG_VERSION")),
            comment: None,
            // Post-quantum hybrids first; curve25519 after them for clients without one (older
            // OpenSSH, paramiko, dropbear, and agents from before the hybrids), unless refused.
            kex: burrow_ssh::kex::methods()
                .into_iter()
                .filter(|m| {
                    !self.post_quantum_only
                        || burrow_ssh::kex::Method::from_name(m)
                            .is_some_and(burrow_ssh::kex::Method::post_quantum)
                })
                .collect(),
            ciphers: burrow_ssh::crypto::CIPHERS
                .iter()
                .map(|c| c.to_string())
                .collect(),
            host_key: Some(host_key),
            host_key_check: None,
            rekey_bytes: self.rekey_bytes,
            rekey_time: REKEY_TIME_LIMIT,
            // `server-sig-algs`: no SHA-1 `ssh-rsa`; RSA keys sign with rsa-sha2-256/512.
            ext_info: None,
            ..Default::default()
        }
    }
}
