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

// Parsed once at start and moved straight into its command: the size of the largest variant
// costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the relay, or manage its registry (devices, operators).
    Relay(Box<RelayArgs>),
    /// Run the device agent, or show its status.
    Agent(Box<AgentArgs>),
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
    /// Largest total of one console's port log, in MiB (the oldest files go first).
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub console_log_max_mib: u64,
    /// Delete port log files older than this many days.
    #[arg(long, default_value_t = 90, value_name = "DAYS")]
    pub console_log_keep_days: u64,
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
    /// Where devices reach this relay, HOST:PORT, as join strings name it [default: the
    /// --listen address, or this host's name with its port when listening on every address].
    #[arg(long, env = "BURROW_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Address other relays dial to reach this one's peer port [default: --peer-listen].
    #[arg(long, env = "BURROW_PEER_ADVERTISE", value_name = "HOST:PORT")]
    pub peer_advertise: Option<String>,
    /// Serve Prometheus metrics over HTTP on this address (off by default).
    #[arg(long, env = "BURROW_METRICS", value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Serve the web console on this address (off by default). Off loopback it needs TLS
    /// (--web-cert/--web-key), a TLS proxy (--web-trusted-proxy), or --web-insecure.
    #[arg(long, env = "BURROW_WEB", value_name = "ADDR")]
    pub web: Option<String>,
    /// PEM certificate chain for the web console (leaf first).
    #[arg(
        long,
        env = "BURROW_WEB_CERT",
        value_name = "FILE",
        requires = "web_key"
    )]
    pub web_cert: Option<PathBuf>,
    /// PEM private key for --web-cert.
    #[arg(
        long,
        env = "BURROW_WEB_KEY",
        value_name = "FILE",
        requires = "web_cert"
    )]
    pub web_key: Option<PathBuf>,
    /// Reverse proxy whose X-Forwarded-For and X-Forwarded-Proto are believed (an address or
    /// ADDR/BITS range; repeatable).
    #[arg(long, value_name = "ADDR[/BITS]")]
    pub web_trusted_proxy: Vec<String>,
    /// The address people open, for the links `ssh OPERATOR@relay web` prints (e.g.
    /// https://relay.example:8443) [default: the --web address].
    #[arg(long, env = "BURROW_WEB_URL", value_name = "URL")]
    pub web_url: Option<String>,
    /// Serve a login form over plain HTTP on a non-loopback address (not recommended).
    #[arg(long)]
    pub web_insecure: bool,
    /// Host routing: PORT--NAME.DOMAIN opens device NAME's web UI on PORT (point a wildcard
    /// DNS name and certificate *.DOMAIN at the relay).
    #[arg(long, env = "BURROW_WEB_DEVICE_DOMAIN", value_name = "DOMAIN")]
    pub web_device_domain: Option<String>,
    /// Renew each connection's SSH keys after this much data either way (like OpenSSH's
    /// RekeyLimit; also after 2^31 packets).
    #[arg(long, default_value = "1G", value_name = "SIZE")]
    pub rekey_limit: String,
    /// The most data queued toward one peer (replies, messages held during a key exchange,
    /// packets not yet written) before the relay stops reading from it; 64K before it logs in.
    #[arg(long, default_value = "4M", value_name = "SIZE")]
    pub max_queued: String,
    /// The relay's config file (TOML): `[alerts]` settings and `[[alert]]` webhooks; flags
    /// override what it sets.
    #[arg(long, env = "BURROW_RELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Post alerts as JSON to this URL (repeatable; with --alert-alertmanager, replaces the
    /// config file's [[alert]] webhooks).
    #[arg(long, value_name = "URL")]
    pub alert_webhook: Vec<String>,
    /// Post alerts to Alertmanager's API at this URL (`http://HOST:9093/api/v2/alerts`;
    /// repeatable).
    #[arg(long, value_name = "URL")]
    pub alert_alertmanager: Vec<String>,
    /// Seconds a device may be offline before it is alerted [default: 300].
    #[arg(long, value_name = "SECS")]
    pub alert_offline_grace: Option<f64>,
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
    /// Rotate the relay's host key without breaking a device: add a new key beside the one in
    /// use (announced to clients, which learn it), then retire the old one.
    #[command(subcommand)]
    Hostkey(HostkeyCommand),
    /// Manage devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Manage operators.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Join tokens: one line that enrolls devices (`burrow agent enroll JOIN`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Console recordings (asciicast v2; play them with `asciinema play FILE`).
    #[command(subcommand)]
    Recordings(RecordingsCommand),
    /// Console port logs: what each console's port said, uploaded by its agent.
    #[command(subcommand)]
    Console(ConsoleCommand),
    /// Copy this relay's SQLite registry and audit into the cluster's PostgreSQL database.
    Migrate {
        /// The PostgreSQL database to copy into (`postgresql://USER@HOST/DB`).
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Show the most recent alerts and how their delivery went.
    Alerts {
        /// How many alerts.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only this device's.
        #[arg(long, value_name = "NAME")]
        device: Option<String>,
        /// JSON output for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Copy the SQLite registry to FILE while the relay runs (a consistent snapshot, checked).
    /// A cluster's PostgreSQL registry is backed up with pg_dump.
    Backup {
        /// Where to write the copy (must not exist yet).
        file: PathBuf,
    },
    /// Put a backup made by `relay backup` in place of the SQLite registry (the relay must be
    /// stopped; the registry it replaces is kept beside it).
    Restore {
        /// The backup file.
        file: PathBuf,
    },
    /// Show audit entries: the newest, or those of a device, an operator, an event or a time
    /// range (each filter is one indexed query); --follow prints new ones as they are written.
    Audit(AuditArgs),
}

#[derive(Subcommand, Debug)]
pub enum HostkeyCommand {
    /// Make a new host key beside the one in use. The relay announces both from its next
    /// connection on (no restart needed): burrow agents logged in learn the new one then,
    /// OpenSSH clients with UpdateHostKeys at their next login.
    Add,
    /// List the host keys held: the one in use and the new one.
    Ls {
        /// JSON output for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Put the new key in use and delete the old one (a running relay uses it from its next
    /// connection on). Devices that never connected since the new key was added no longer
    /// trust the relay.
    Retire,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Entries concerning this device (its logins, sessions, endpoints, and streams and
    /// consoles opened to it).
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
    /// Entries concerning this operator (its logins, refused passwords, streams, consoles).
    #[arg(long, value_name = "NAME")]
    pub operator: Option<String>,
    /// Entries of one event: auth, stream, offline, takeover, console-attach, revoke, …
    #[arg(long, value_name = "KIND")]
    pub event: Option<String>,
    /// Entries at or after T: RFC 3339 (2026-11-23T12:00:00Z), a date, or how long ago (90s,
    /// 15m, 1h, 2d, 1w).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Entries at or before T (same forms as --since).
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Show at most this many, the newest (printed oldest first).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub limit: usize,
    /// Keep printing matching entries as they are written (by any relay of a cluster) until
    /// interrupted.
    #[arg(long, conflicts_with = "until")]
    pub follow: bool,
    /// JSON output for scripts (one object per line with --follow).
    #[arg(long)]
    pub json: bool,
    /// Print the database's plan for the query instead of entries (each filter should name
    /// an index).
    #[arg(long, hide = true)]
    pub explain: bool,
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
    /// List devices: state (and how the last session ended), for how long, last seen,
    /// reconnects in 24 h, last probe, link, agent, endpoints, keys, labels.
    Ls {
        /// JSON output for scripts.
        #[arg(long)]
        json: bool,
        /// Only devices whose labels match KEY=VALUE (repeatable; all must match; `*` globs).
        #[arg(long, value_name = "KEY=VALUE")]
        label: Vec<String>,
    },
    /// Let a device that waits for approval connect (its agent connects within its backoff).
    Approve { name: String },
    /// Refuse a device that waits for approval (it is removed).
    Reject { name: String },
    /// Set labels on a device (KEY=VALUE ...), or remove them (--rm KEY).
    Label {
        name: String,
        #[arg(value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Remove this label (repeatable).
        #[arg(long, value_name = "KEY")]
        rm: Vec<String>,
    },
    /// Lift the quarantine of a device's keys (after its copy got a key of its own).
    Unquarantine { name: String },
    /// Register devices in bulk: a CSV (name,public_key,labels), or an OpenSSH authorized_keys
    /// file with its restrict/permitlisten/permitopen/command options turned into policy.
    Import {
        /// CSV with columns name, public key, labels (`site=osaka;role=router`); a header line
        /// starting with `name` is skipped.
        #[arg(value_name = "FILE.csv", required_unless_present = "authorized_keys")]
        csv: Option<PathBuf>,
        /// An authorized_keys file of a hand-built relay instead.
        #[arg(long, value_name = "FILE", conflicts_with = "csv")]
        authorized_keys: Option<PathBuf>,
        /// How each authorized_keys line is named: a template of {comment}, {user} and {host}
        /// (the comment around '@'), {port} (its first permitlisten port) and {line}.
        #[arg(long, value_name = "TEMPLATE", default_value = "{comment}")]
        name_from: String,
        /// Labels given to every imported device (repeatable).
        #[arg(long, value_name = "KEY=VALUE")]
        label: Vec<String>,
        /// Report what would be done, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show one device whole: health, the agent's last report, recent events and alerts.
    Show {
        name: String,
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
pub enum TokenCommand {
    /// Make a join token and print its join string (one line: relays, host-key pins, secret).
    Create {
        /// Devices it may enroll (default 1).
        #[arg(long, value_name = "N", conflicts_with = "reusable")]
        uses: Option<u32>,
        /// Enroll any number of devices until it expires.
        #[arg(long)]
        reusable: bool,
        /// How long it works: 30m, 24h, 7d (default 24h).
        #[arg(long, value_name = "DURATION", default_value = "24h")]
        ttl: String,
        /// Device names it may enroll (a glob: 'osaka-*').
        #[arg(long, value_name = "GLOB", default_value = "*")]
        name_pattern: String,
        /// A label every device it enrolls carries (repeatable).
        #[arg(long, value_name = "KEY=VALUE")]
        label: Vec<String>,
        /// Devices it enrolls wait for `burrow relay device approve`.
        #[arg(long)]
        approve: bool,
        /// Re-bind existing device NAME to the key of the device that enrolls with it: the
        /// old key is revoked, the device's name, rules, labels and history are kept.
        #[arg(long, value_name = "NAME")]
        replace: Option<String>,
        /// The relay address(es) to put in the join string, HOST:PORT (repeatable) [default:
        /// what each relay recorded at start, its --advertise].
        #[arg(long, value_name = "HOST:PORT")]
        address: Vec<String>,
    },
    /// List join tokens: state, uses left, expiry, who made each.
    Ls {
        /// JSON output for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a join token (devices it enrolled stay).
    Rm { id: String },
}

#[derive(Subcommand, Debug)]
pub enum ConsoleCommand {
    /// Print a console's port log, a timestamp per line.
    Log {
        /// DEVICE or DEVICE/CONSOLE.
        name: String,
        /// From this time on: 2026-11-23T12:03:00Z, or an age such as 10m, 2h, 3d.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Keep printing what arrives.
        #[arg(long, short)]
        follow: bool,
        /// Without timestamps.
        #[arg(long)]
        no_timestamps: bool,
        /// JSON lines (at_ms, kind, text) for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Switch a console's power through its agent's [[console.power]] commands (asks the
    /// relay running on this data directory; audited as relay-cli).
    Power {
        /// DEVICE or DEVICE/CONSOLE.
        name: String,
        /// on, off, cycle, or cycle-break (cycle, then hold BREAK while the device boots).
        #[arg(value_parser = ["on", "off", "cycle", "cycle-break"])]
        action: String,
        /// cycle-break only: seconds to hold BREAK (default: the console's break_hold).
        seconds: Option<f64>,
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
        /// Devices this operator may reach (repeatable): a name glob (`garage-*`) or a label
        /// selector (`site=osaka`, `site=osaka,role=router`).
        #[arg(long, value_name = "GLOB|KEY=VALUE", default_values_t = vec!["*".to_string()])]
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
        /// Devices it may reach: name globs or label selectors (replaces the current ones;
        /// repeatable).
        #[arg(long, value_name = "GLOB|KEY=VALUE")]
        allow: Vec<String>,
        /// Consoles only: no -J/-W/-L to device ports.
        #[arg(long, conflicts_with = "full")]
        console_only: bool,
        /// Ports and consoles (lifts --console-only).
        #[arg(long)]
        full: bool,
        /// viewer (read-only, no console write), operator, or admin (tokens, approvals,
        /// policy edits in the web console).
        #[arg(long, value_name = "ROLE")]
        role: Option<burrow_relay::store::Role>,
    },
    /// Time-based one-time codes, asked after the password on SSH and on the web console.
    #[command(subcommand)]
    Totp(TotpCommand),
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

#[derive(Subcommand, Debug)]
pub enum TotpCommand {
    /// Make a new secret and show it as a QR code for an authenticator app; from then on
    /// password logins of NAME also ask a code.
    Enroll { name: String },
    /// Stop asking NAME for codes.
    Remove { name: String },
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
    /// Seconds between readings of the health report (0 turns reports off).
    #[arg(long, value_name = "SECS")]
    pub health_interval: Option<f64>,
    /// Seconds after which an unchanged health report is sent again.
    #[arg(long, value_name = "SECS")]
    pub health_refresh: Option<f64>,
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
    /// Enroll this device with a join string (`burrow relay token create`): make its key here,
    /// register it with the relay, write the agent config.
    Enroll(Box<EnrollArgs>),
}

#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// The join string.
    #[arg(value_name = "JOIN")]
    pub join: Option<String>,
    /// Read the join string from this file instead (a boot partition's burrow-join.txt),
    /// which is deleted once the relay answered; repeatable: the first that exists is read.
    #[arg(long, value_name = "FILE", conflicts_with = "join")]
    pub join_file: Vec<PathBuf>,
    /// This device's name [default: from --name-from].
    #[arg(long, conflicts_with = "name_from")]
    pub name: Option<String>,
    /// Where the name comes from without --name: `hostname`, or `imsi` (the SIM's IMSI from
    /// the SORACOM metadata service).
    #[arg(long, value_name = "hostname|imsi")]
    pub name_from: Option<String>,
    /// The metadata service that knows the SIM's IMSI (--name-from imsi).
    #[arg(long, value_name = "URL", default_value = burrow_proto::metadata::SORACOM_BASE_URL)]
    pub metadata_url: String,
    /// Where the agent config is written.
    #[arg(
        long,
        short,
        value_name = "FILE",
        default_value = "/etc/burrow/agent.toml"
    )]
    pub config: PathBuf,
    /// Where the device's new private key is written [default: the agent's state directory,
    /// id_ed25519].
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Endpoints written into the config, PORT or PORT=[HOST:]PORT (repeatable) [default: 22].
    #[arg(long, value_name = "PORT[=[HOST:]PORT]")]
    pub expose: Vec<String>,
    /// Replace an existing config.
    #[arg(long)]
    pub force: bool,
    /// Keep trying while no relay can be reached (for a first boot before the network is up).
    #[arg(long)]
    pub wait: bool,
    /// Hand the new key to this user (when enrolling as root for the agent's own user).
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Exit after the self-check instead of running until Ctrl-C.
    #[arg(long)]
    pub check: bool,
}
