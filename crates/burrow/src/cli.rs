//! Command-line definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Remote access to devices behind NAT through a relay, with stock SSH clients.
#[derive(Parser, Debug)]
#[command(name = "burrow", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the relay, or manage its registry (devices, operators).
    Relay(RelayArgs),
    /// Run the device agent, or show its status.
    Agent(AgentArgs),
    /// Start a relay, a demo device and an operator on loopback and print ssh commands to try.
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
pub struct RelayArgs {
    #[command(subcommand)]
    pub command: Option<RelayCommand>,
    /// Address to listen on (devices and operators share it).
    #[arg(long, env = "BURROW_LISTEN", default_value = burrow_relay::config::DEFAULT_LISTEN)]
    pub listen: String,
    /// Data directory: host key, database [default: /var/lib/burrow for root, else ~/.local/state/burrow]
    #[arg(long, env = "BURROW_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The registry of a relay cluster: a PostgreSQL URL (`postgresql://USER@HOST/DB`);
    /// without it, the SQLite file in the data directory.
    #[arg(long, env = "BURROW_DATABASE_URL", global = true, value_name = "URL")]
    pub database: Option<String>,
    /// Stock SSH clients: seconds of silence before a TCP keepalive probe (burrow agents declare
    /// their own keepalive schedule and get none).
    #[arg(long, default_value_t = 15)]
    pub keepalive_interval: u64,
    /// Stock SSH clients: unanswered TCP keepalive probes before a session is dropped.
    #[arg(long, default_value_t = 3)]
    pub keepalive_max: usize,
    /// Unauthenticated connections accepted at once.
    #[arg(long, default_value_t = burrow_relay::config::DEFAULT_MAX_UNAUTHENTICATED)]
    pub max_unauthenticated: usize,
    /// Console escape prefix: a control key and a character.
    #[arg(long, default_value = "^Ec", value_name = "^Xc")]
    pub console_escape: String,
    /// Unauthenticated connections accepted at once from one IP address.
    #[arg(long, default_value_t = burrow_relay::config::DEFAULT_MAX_UNAUTHENTICATED_PER_IP)]
    pub max_unauthenticated_per_ip: usize,
    /// New connections per second accepted from one address (0: no limit).
    #[arg(long, default_value_t = burrow_relay::config::DEFAULT_HANDSHAKES_PER_IP_PER_SEC, value_name = "N")]
    pub handshakes_per_ip: f64,
    /// Burst of new connections accepted from one address.
    #[arg(long, default_value_t = burrow_relay::config::DEFAULT_HANDSHAKE_BURST_PER_IP, value_name = "N")]
    pub handshake_burst: f64,
    /// No longer used: each stream has its own SSH window, so a stalled receiver holds back
    /// only its own stream. Accepted (with a warning) so that older unit files keep working.
    #[arg(long, hide = true, value_name = "SECS")]
    pub stalled_stream_timeout: Option<u64>,
    /// Largest single console recording, in MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub recording_max_mib: u64,
    /// Largest total of all console recordings, in MiB.
    #[arg(long, default_value_t = 4096, value_name = "MIB")]
    pub recordings_max_mib: u64,
    /// Refuse consoles that cannot be recorded (and close those whose recording stops).
    #[arg(long)]
    pub require_recordings: bool,
    /// Offer only the post-quantum key exchanges (mlkem768x25519-sha256,
    /// sntrup761x25519-sha512): clients and agents without them cannot connect.
    #[arg(long)]
    pub post_quantum_only: bool,
    /// Delete audit entries older than this many days (applied hourly while running).
    #[arg(long, default_value_t = 365, value_name = "DAYS")]
    pub audit_keep_days: u64,
    /// Keep at most this many audit entries (the oldest go first).
    #[arg(long, default_value_t = burrow_relay::config::DEFAULT_AUDIT_MAX_ROWS, value_name = "N")]
    pub audit_max_rows: u64,
    /// Connections one allow-listen listener carries at once.
    #[arg(long, default_value_t = burrow_relay::config::DEFAULT_MAX_LISTENER_CONNECTIONS)]
    pub max_listener_connections: usize,
    /// This relay's name in a cluster [default: the host name].
    #[arg(long, env = "BURROW_RELAY_ID", global = true, value_name = "NAME")]
    pub relay_id: Option<String>,
    /// Address the relay-to-relay port listens on (a cluster on --database needs it).
    #[arg(long, env = "BURROW_PEER_LISTEN", value_name = "ADDR")]
    pub peer_listen: Option<String>,
    /// Address other relays dial to reach this one's peer port [default: --peer-listen].
    #[arg(long, env = "BURROW_PEER_ADVERTISE", value_name = "HOST:PORT")]
    pub peer_advertise: Option<String>,
    /// Serve Prometheus metrics over HTTP on this address (off by default).
    #[arg(long, env = "BURROW_METRICS", value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Renew each connection's SSH keys after this much data either way (like OpenSSH's
    /// RekeyLimit; also after 2^31 packets).
    #[arg(long, default_value = "1G", value_name = "SIZE")]
    pub rekey_limit: String,
    /// The most data queued toward one peer (replies, messages held during a key exchange,
    /// packets not yet written) before the relay stops reading from it; 64K before it logs in.
    #[arg(long, default_value = "4M", value_name = "SIZE")]
    pub max_queued: String,
}

#[derive(Subcommand, Debug)]
pub enum RelayCommand {
    /// Create the data directory (host key and database) without starting the relay.
    Init,
    /// Print the relay's host key fingerprint (SHA256:...).
    Fingerprint {
        /// Print a known_hosts line for HOST[:PORT] instead.
        #[arg(long, value_name = "HOST[:PORT]")]
        known_hosts: Option<String>,
    },
    /// Manage devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Manage operators.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Console recordings (asciicast v2; play them with `asciinema play FILE`).
    #[command(subcommand)]
    Recordings(RecordingsCommand),
    /// Copy this relay's SQLite registry and audit into the cluster's PostgreSQL database.
    Migrate {
        /// The PostgreSQL database to copy into (`postgresql://USER@HOST/DB`).
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Show the most recent audit entries.
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// JSON output for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// Register a device with its public key.
    Add {
        name: String,
        /// Public key file (authorized_keys format); `-` reads stdin.
        #[arg(long, value_name = "FILE")]
        pubkey: PathBuf,
    },
    /// Add another public key to a device.
    AddKey {
        name: String,
        /// Public key file (authorized_keys format); `-` reads stdin.
        #[arg(long, value_name = "FILE")]
        pubkey: PathBuf,
    },
    /// List devices: keys, online state, last seen, endpoints.
    Ls {
        /// JSON output for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Remove a device (an online session of it is closed).
    Rm { name: String },
    /// Let a device open HOST:PORT on the relay side (like permitopen).
    AllowConnect {
        name: String,
        #[arg(value_name = "HOST:PORT")]
        target: String,
    },
    /// Give a device a real TCP listener on the relay (like permitlisten); ADDR defaults to 127.0.0.1.
    AllowListen {
        name: String,
        #[arg(value_name = "[ADDR:]PORT")]
        listen: String,
    },
    /// Remove one key of a device (a session that logged in with it is closed).
    RmKey {
        name: String,
        #[arg(value_name = "SHA256:...")]
        fingerprint: String,
    },
    /// Remove an allow-connect rule (new streams are refused at once).
    DisallowConnect {
        name: String,
        #[arg(value_name = "HOST:PORT")]
        target: String,
    },
    /// Remove an allow-listen rule (its listener on the relay is closed within 2 s).
    DisallowListen {
        name: String,
        #[arg(value_name = "[ADDR:]PORT")]
        listen: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum RecordingsCommand {
    /// List recordings, of one device or all.
    Ls {
        device: Option<String>,
        /// JSON output for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Register an operator with a public key and/or a password.
    Add {
        name: String,
        /// Public key file (authorized_keys format); `-` reads stdin.
        #[arg(long, value_name = "FILE")]
        pubkey: Option<PathBuf>,
        /// Read a password from stdin (first line).
        #[arg(long)]
        password_stdin: bool,
        /// Device name pattern this operator may reach (repeatable; `*` and `?` globs).
        #[arg(long, value_name = "GLOB", default_values_t = vec!["*".to_string()])]
        allow: Vec<String>,
        /// Consoles only: no forwarding to device endpoints.
        #[arg(long)]
        console_only: bool,
    },
    /// List operators.
    Ls {
        /// JSON output for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Remove an operator (its open connections are closed within 2 s).
    Rm { name: String },
    /// Change an operator's policy; streams and consoles it no longer allows are closed.
    Set {
        name: String,
        /// Device name patterns it may reach (replaces the current ones; repeatable).
        #[arg(long, value_name = "GLOB")]
        allow: Vec<String>,
        /// Consoles only: no -J/-W/-L to device ports.
        #[arg(long, conflicts_with = "full")]
        console_only: bool,
        /// Ports and consoles (lifts --console-only).
        #[arg(long)]
        full: bool,
    },
    /// Set (from stdin) or clear an operator's password.
    Password {
        name: String,
        /// Read the new password from stdin (a prompt without echo on a terminal).
        #[arg(long, conflicts_with = "clear", required_unless_present = "clear")]
        password_stdin: bool,
        /// Remove the password (key logins only).
        #[arg(long)]
        clear: bool,
    },
    /// Lift the lock that repeated wrong passwords put on an operator's password login.
    Unlock { name: String },
    /// Add a key to an operator.
    AddKey {
        name: String,
        #[arg(long, value_name = "FILE")]
        pubkey: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    /// TOML configuration file; flags below override its values (`status` reads its
    /// `status_file`).
    #[arg(long, short, env = "BURROW_AGENT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Relay address HOST:PORT (repeatable: the relays of a cluster, tried in turn).
    #[arg(long)]
    pub relay: Vec<String>,
    /// Sessions held at once, each to a different --relay (default 1).
    #[arg(long, value_name = "N")]
    pub connections: Option<u32>,
    /// This device's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Private key file (mode 0600).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Expose PORT or PORT=[HOST:]PORT (repeatable).
    #[arg(long, value_name = "PORT[=[HOST:]PORT]")]
    pub expose: Vec<String>,
    /// Serve a serial console [NAME=]DEVICE[@BAUD], e.g. /dev/ttyUSB0@9600 (repeatable).
    #[arg(long, value_name = "[NAME=]DEVICE[@BAUD]")]
    pub console: Vec<String>,
    /// Local forward LISTEN=HOST:PORT to a relay-side target (repeatable).
    #[arg(long, value_name = "[ADDR:]PORT=HOST:PORT")]
    pub connect: Vec<String>,
    /// Pinned relay host key fingerprint (SHA256:...; repeatable for relays with keys of
    /// their own).
    #[arg(long, value_name = "SHA256:...")]
    pub host_key: Vec<String>,
    /// known_hosts file with the relay's host key.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Accept and record an unknown relay key in --known-hosts on first connection.
    #[arg(long)]
    pub trust_on_first_use: bool,
    /// Status file [default: $STATE_DIRECTORY/status.json, /var/lib/burrow-agent/status.json for root]
    #[arg(long, global = true, env = "BURROW_AGENT_STATUS")]
    pub status_file: Option<PathBuf>,
    /// Command run with `sh -c` on up/down transitions (BURROW_STATE=up|down).
    #[arg(long, value_name = "CMD")]
    pub on_state_change: Option<String>,
    /// Seconds without proof of the path before an end-to-end probe runs (0 disables).
    #[arg(long, value_name = "SECS")]
    pub probe_interval: Option<f64>,
    /// First reconnect delay in seconds.
    #[arg(long, value_name = "SECS")]
    pub backoff_min: Option<f64>,
    /// Longest reconnect delay in seconds.
    #[arg(long, value_name = "SECS")]
    pub backoff_max: Option<f64>,
    /// Timing defaults: standard, metered (least idle data) or responsive (fixed lines).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<burrow_proto::agent_config::Profile>,
    /// Seconds without sending anything after which a keepalive goes out.
    #[arg(long, value_name = "SECS")]
    pub keepalive_interval: Option<f64>,
    /// Seconds a keepalive may go unanswered before the session counts as dead.
    #[arg(long, value_name = "SECS")]
    pub keepalive_timeout: Option<f64>,
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Show the running agent's state, endpoints, last probe and last error. Exits 0 when the
    /// agent runs with its tunnel up (or none wanted), 1 when it runs without it, 3 when it is
    /// not running.
    Status {
        /// JSON output for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Exit after the self-check instead of running until Ctrl-C.
    #[arg(long)]
    pub check: bool,
}
