//! `burrow relay ...`: run the relay, or change its registry (works while it runs).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use burrow_proto::addr::{ListenSpec, Target};
use burrow_proto::name::check_name;
use burrow_relay::store::{Db, Store};
use burrow_relay::{Relay, RelayConfig, datadir};
use tokio_util::sync::CancellationToken;

use crate::cli::{
    ConsoleCommand, DeviceCommand, OperatorCommand, RecordingsCommand, RelayArgs, RelayCommand,
    TotpCommand,
};
use crate::exit::{self, Failure, Result};

pub async fn run(mut args: RelayArgs, shutdown: CancellationToken) -> Result {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(datadir::default_data_dir);
    match args.command.take() {
        None => serve(&args, data_dir, shutdown).await,
        Some(RelayCommand::Init) => init(&args, &data_dir).await,
        Some(RelayCommand::Fingerprint { known_hosts }) => fingerprint(&data_dir, known_hosts),
        Some(RelayCommand::Hostkey(cmd)) => hostkey(&data_dir, cmd),
        Some(RelayCommand::Device(cmd)) => device(&open_db(&args, &data_dir).await?, cmd).await,
        Some(RelayCommand::Operator(cmd)) => operator(&open_db(&args, &data_dir).await?, cmd).await,
        Some(RelayCommand::Token(cmd)) => {
            crate::fleet_cmd::token(&open_db(&args, &data_dir).await?, &data_dir, cmd).await
        }
        Some(RelayCommand::Migrate { to }) => migrate(&data_dir, &to).await,
        Some(RelayCommand::Alerts {
            limit,
            device,
            json,
        }) => {
            alerts(
                &open_db(&args, &data_dir).await?,
                limit,
                device.as_deref(),
                json,
            )
            .await
        }
        Some(RelayCommand::Backup { file }) => backup(&args, &data_dir, &file),
        Some(RelayCommand::Restore { file }) => restore(&args, &data_dir, &file),
        Some(RelayCommand::Audit(a)) => {
            crate::audit_cmd::run(&open_db(&args, &data_dir).await?, a, shutdown).await
        }
        Some(RelayCommand::Recordings(RecordingsCommand::Ls { device, json })) => {
            recordings(&data_dir, device.as_deref(), json)
        }
        Some(RelayCommand::Console(ConsoleCommand::Power {
            name,
            action,
            seconds,
        })) => {
            if seconds.is_some() && action != "cycle-break" {
                return Err(Failure::new(
                    exit::USAGE,
                    "SECONDS goes with cycle-break only (how long to hold BREAK)",
                ));
            }
            let mut words = vec!["power".to_string(), name, action];
            words.extend(seconds.map(|s| s.to_string()));
            crate::control_cmd::console(&data_dir, &words).await
        }
        Some(RelayCommand::Console(ConsoleCommand::Log {
            name,
            since,
            follow,
            no_timestamps,
            json,
        })) => {
            console_log(
                &data_dir,
                &name,
                since.as_deref(),
                follow,
                !no_timestamps,
                json,
                shutdown,
            )
            .await
        }
    }
}

/// `burrow relay console log NAME [--since T] [--follow]`: read from the data directory (the
/// relay that received the uploads).
async fn console_log(
    data_dir: &Path,
    name: &str,
    since: Option<&str>,
    follow: bool,
    timestamps: bool,
    json: bool,
    shutdown: CancellationToken,
) -> Result {
    use burrow_relay::console::portlog;
    datadir::require_relay(data_dir).map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    let (device, console) = name
        .split_once('/')
        .unwrap_or((name, burrow_proto::name::DEFAULT_CONSOLE));
    for (what, n) in [("device", device), ("console", console)] {
        burrow_proto::name::check_name(what, n)
            .map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    }
    let now_ms = burrow_relay::store::now() * 1000;
    let since = match since {
        Some(s) => burrow_proto::time::parse_since(s, now_ms)
            .map_err(|e| Failure::new(exit::USAGE, e))?
            .max(0) as u64,
        None => 0,
    };
    let mut follower = portlog::Follower::new(data_dir, device, console, since);
    let print = |lines: &[burrow_proto::portlog::LogLine]| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for l in lines {
            let text = if json {
                serde_json::to_string(l).unwrap_or_default()
            } else {
                portlog::format_line(l, timestamps)
            };
            if writeln!(out, "{text}").is_err() {
                return false;
            }
        }
        out.flush().is_ok()
    };
    loop {
        let lines = follower.poll(10_000).map_err(|e| {
            Failure::new(
                exit::NOINPUT,
                format!(
                    "cannot read the port log of {device}/{console} in {}: {e}",
                    data_dir.display()
                ),
            )
        })?;
        if !print(&lines) {
            return Ok(());
        }
        if !follow {
            let mut rest = Vec::new();
            follower.finish(&mut rest);
            print(&rest);
            return Ok(());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn serve(args: &RelayArgs, data_dir: PathBuf, shutdown: CancellationToken) -> Result {
    // A relay already on this directory is named before any port is bound (a second start on
    // the same ports would otherwise only say "Address already in use"); the relay takes the
    // lock for good when it opens the directory.
    datadir::ensure(&data_dir)
        .and_then(|()| datadir::lock(&data_dir))
        .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    let mut config = RelayConfig::new(data_dir);
    config.keepalive_interval = Duration::from_secs(args.keepalive_interval.max(1));
    config.keepalive_max = args.keepalive_max.max(1);
    config.max_unauthenticated = args.max_unauthenticated.max(1);
    config.max_unauthenticated_per_ip = args.max_unauthenticated_per_ip.max(1);
    config.max_listener_connections = args.max_listener_connections.max(1);
    config.rekey_bytes = burrow_proto::size::parse(&args.rekey_limit)
        .ok()
        .filter(|n| *n >= 16 * 1024)
        .ok_or_else(|| {
            Failure::new(
                exit::USAGE,
                format!(
                    "--rekey-limit {}: give a size of at least 16K (e.g. 1G)",
                    args.rekey_limit
                ),
            )
        })?;
    config.max_queued = burrow_proto::size::parse(&args.max_queued)
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n >= 1 << 20)
        .ok_or_else(|| {
            Failure::new(
                exit::USAGE,
                format!(
                    "--max-queued {}: give a size of at least 1M (e.g. 4M); data writers already wait at 512K",
                    args.max_queued
                ),
            )
        })?;
    for (flag, v) in [
        ("--handshakes-per-ip", args.handshakes_per_ip),
        ("--handshake-burst", args.handshake_burst),
    ] {
        if !v.is_finite() || !(0.0..=1e6).contains(&v) {
            return Err(Failure::new(
                exit::USAGE,
                format!("{flag} {v}: give a number from 0 to 1000000"),
            ));
        }
    }
    if args.stalled_stream_timeout.is_some() {
        tracing::warn!(
            "--stalled-stream-timeout has no effect any more: every stream has its own SSH window, so a receiver that stops holds back only its own stream; remove the flag"
        );
    }
    config.recording_max_bytes = args.recording_max_mib.saturating_mul(1 << 20);
    config.recordings_max_total = args.recordings_max_mib.saturating_mul(1 << 20);
    config.console_logs = burrow_relay::console::portlog::Retention {
        max_bytes: args.console_log_max_mib.max(1).saturating_mul(1 << 20),
        keep: Duration::from_secs(args.console_log_keep_days.max(1).saturating_mul(86_400)),
    };
    config.require_recordings = args.require_recordings;
    config.post_quantum_only = args.post_quantum_only;
    config.handshakes_per_ip_per_sec = args.handshakes_per_ip;
    config.handshake_burst_per_ip = args.handshake_burst;
    if args.audit_keep_days == 0 || args.audit_keep_days > 36_500 || args.audit_max_rows == 0 {
        return Err(Failure::new(
            exit::USAGE,
            "--audit-keep-days must be 1 to 36500 and --audit-max-rows at least 1",
        ));
    }
    config.audit_keep = Duration::from_secs(args.audit_keep_days * 86_400);
    config.audit_max_rows = args.audit_max_rows;
    config.console_escape = burrow_proto::escape::parse_prefix(&args.console_escape)
        .map_err(|e| Failure::new(exit::USAGE, format!("--console-escape: {e}")))?;
    alert_settings(args, &mut config.alerts)?;
    if let Some(id) = &args.relay_id {
        config.relay_id = id.clone();
    }
    if let Some(a) = &args.advertise {
        a.parse::<Target>()
            .map_err(|e| Failure::new(exit::USAGE, format!("--advertise {a}: {e}")))?;
        config.advertise = Some(a.clone());
    }
    let id_ok = |id: &str| {
        !id.is_empty()
            && id.len() <= 63
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if !id_ok(&config.relay_id) {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "relay id {:?}: use 1 to 63 letters, digits, dots, dashes or underscores (--relay-id)",
                config.relay_id
            ),
        ));
    }
    let peer_listener = match (&args.database, &args.peer_listen) {
        (Some(url), Some(addr)) => {
            config.database = Some(url.clone());
            let listener = bind(addr, "--peer-listen").await?;
            let bound = listener
                .local_addr()
                .map_err(|e| Failure::new(exit::OSERR, e.to_string()))?;
            config.peer_advertise = Some(match &args.peer_advertise {
                Some(a) => a.clone(),
                None if bound.ip().is_unspecified() => {
                    return Err(Failure::new(
                        exit::USAGE,
                        format!(
                            "--peer-listen {addr} listens on every address: say which one other relays dial with --peer-advertise HOST:PORT"
                        ),
                    ));
                }
                None => bound.to_string(),
            });
            Some(listener)
        }
        (Some(_), None) => {
            return Err(Failure::new(
                exit::USAGE,
                "a relay on --database is part of a cluster: give it --peer-listen ADDR (the port other relays reach it on)",
            ));
        }
        (None, Some(_)) => {
            return Err(Failure::new(
                exit::USAGE,
                "--peer-listen needs --database postgresql://... (a cluster shares one registry)",
            ));
        }
        (None, None) => None,
    };
    let metrics_listener = match &args.metrics {
        Some(addr) => Some(bind(addr, "--metrics").await?),
        None => None,
    };
    let web = match &args.web {
        Some(addr) => {
            let config = web_config(args)?;
            // Refused before anything listens, when the address says enough.
            if let Ok(listen) = addr.parse() {
                burrow_relay::web::check(listen, &config)
                    .map_err(|e| Failure::new(exit::USAGE, e))?;
            }
            let listener = bind(addr, "--web").await?;
            Some(
                burrow_relay::web::prepare(listener, config)
                    .map_err(|e| Failure::new(exit::USAGE, e))?,
            )
        }
        None if args.web_cert.is_some()
            || args.web_insecure
            || !args.web_trusted_proxy.is_empty()
            || args.web_url.is_some()
            || args.web_device_domain.is_some() =>
        {
            return Err(Failure::new(
                exit::USAGE,
                "--web-cert, --web-insecure, --web-trusted-proxy and --web-url set up the web console: give --web ADDR too",
            ));
        }
        None => None,
    };
    let relay = Relay::open(config)
        .await
        .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    if let Some(listener) = peer_listener {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("relay-to-relay port listening on {addr}");
        }
        tokio::spawn(relay.clone().serve_peers(listener, shutdown.clone()));
    }
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("metrics on http://{addr}/metrics");
        }
        tokio::spawn(relay.clone().serve_metrics(listener, shutdown.clone()));
    }
    if let Some(web) = web {
        tokio::spawn(relay.clone().serve_web(web, shutdown.clone()));
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| {
            Failure::new(
                exit::OSERR,
                format!(
                    "cannot listen on {}: {e} (choose another with --listen)",
                    args.listen
                ),
            )
        })?;
    relay
        .run(listener, shutdown)
        .await
        .map_err(|e| Failure::new(exit::SOFTWARE, e.to_string()))
}

/// Alerts from the config file, then the flags over it.
fn alert_settings(args: &RelayArgs, alerts: &mut burrow_relay::alerts::AlertsConfig) -> Result {
    use burrow_relay::alerts::{Format, Webhook};
    if let Some(path) = &args.config {
        burrow_relay::config_file::ConfigFile::load(path)
            .and_then(|file| file.apply(alerts))
            .map_err(|e| Failure::new(exit::CONFIG, e))?;
    }
    let flagged: Vec<(&String, Format, &str)> = args
        .alert_webhook
        .iter()
        .map(|u| (u, Format::Json, "--alert-webhook"))
        .chain(
            args.alert_alertmanager
                .iter()
                .map(|u| (u, Format::Alertmanager, "--alert-alertmanager")),
        )
        .collect();
    if !flagged.is_empty() {
        alerts.webhooks = flagged
            .into_iter()
            .map(|(url, format, flag)| {
                Webhook::new(url, format, Vec::new())
                    .map_err(|e| Failure::new(exit::USAGE, format!("{flag} {url:?}: {e}")))
            })
            .collect::<Result<_>>()?;
    }
    if let Some(secs) = args.alert_offline_grace {
        if !secs.is_finite() || !(0.05..=7.0 * 86_400.0).contains(&secs) {
            return Err(Failure::new(
                exit::USAGE,
                format!("--alert-offline-grace {secs}: give 0.05 to 604800 seconds"),
            ));
        }
        alerts.offline_grace = Duration::from_secs_f64(secs);
    }
    for hook in &alerts.webhooks {
        tracing::info!("alerts go to {} ({:?})", hook.target, hook.format);
    }
    Ok(())
}

/// The web console's settings from the relay's flags.
fn web_config(args: &RelayArgs) -> Result<burrow_relay::web::WebConfig> {
    let mut proxies = Vec::new();
    for p in &args.web_trusted_proxy {
        proxies.push(
            p.parse()
                .map_err(|e| Failure::new(exit::USAGE, format!("--web-trusted-proxy: {e}")))?,
        );
    }
    Ok(burrow_relay::web::WebConfig {
        tls: args.web_cert.clone().zip(args.web_key.clone()),
        insecure: args.web_insecure,
        trusted_proxies: proxies,
        public_url: args.web_url.clone(),
        session_lifetime: None,
        device_domain: args.web_device_domain.clone(),
    })
}

async fn bind(addr: &str, flag: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Failure::new(
            exit::OSERR,
            format!("cannot listen on {addr} ({flag}): {e}"),
        )
    })
}

/// Opens the registry: the cluster's PostgreSQL database with `--database`, else the SQLite
/// file of an existing relay (admin commands never create one).
async fn open_db(args: &RelayArgs, data_dir: &Path) -> Result<Db> {
    if let Some(url) = &args.database {
        return Db::postgres(url, "")
            .await
            .map_err(|e| Failure::new(exit::CONFIG, e.to_string()));
    }
    datadir::require_existing(data_dir).map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    Db::sqlite(&data_dir.join(datadir::DATABASE_FILE))
        .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))
}

/// `relay migrate --to URL`: this relay's SQLite registry and audit into PostgreSQL.
async fn migrate(data_dir: &Path, to: &str) -> Result {
    datadir::require_existing(data_dir).map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    if !burrow_relay::store::db::is_postgres_url(to) {
        return Err(Failure::new(
            exit::USAGE,
            format!("--to {to:?} is not a postgresql:// URL"),
        ));
    }
    let report = burrow_relay::store::migrate::sqlite_to_postgres(
        &data_dir.join(datadir::DATABASE_FILE),
        to,
    )
    .await
    .map_err(store_err)?;
    for (table, had, copied) in &report.tables {
        println!("{table:<22} {had:>8} rows in SQLite, {copied:>8} in PostgreSQL");
    }
    println!(
        "migrated {} into PostgreSQL; start the relays with --database and --peer-listen",
        data_dir.display()
    );
    Ok(())
}

/// `relay backup FILE`: a consistent copy of the SQLite registry, taken while the relay runs.
fn backup(args: &RelayArgs, data_dir: &Path, file: &Path) -> Result {
    if let Some(url) = &args.database {
        let url = datadir::without_password(url);
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "the registry on --database is PostgreSQL: back it up with PostgreSQL's own tool, \
                 `pg_dump --format=custom --file {} '{url}'` (relays may keep running), and \
                 restore it into an empty database with `pg_restore --dbname URL FILE`",
                file.display()
            ),
        ));
    }
    datadir::require_existing(data_dir).map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    let report = burrow_relay::store::sqlite::backup(&data_dir.join(datadir::DATABASE_FILE), file)
        .map_err(store_err)?;
    println!(
        "backed up {} to {} ({} bytes, schema version {}): {} devices, {} operators, {} audit entries",
        data_dir.join(datadir::DATABASE_FILE).display(),
        report.path.display(),
        report.bytes,
        report.schema_version,
        report.devices,
        report.operators,
        report.audit_entries
    );
    println!(
        "to restore it: stop the relay, run `burrow relay restore {}` with the same --data-dir, start the relay",
        report.path.display()
    );
    Ok(())
}

/// `relay restore FILE`: a backup put in place of the SQLite registry of a stopped relay.
fn restore(args: &RelayArgs, data_dir: &Path, file: &Path) -> Result {
    if args.database.is_some() {
        return Err(Failure::new(
            exit::USAGE,
            "the registry on --database is PostgreSQL: restore a pg_dump backup with `pg_restore --dbname URL FILE` into an empty database",
        ));
    }
    datadir::require_existing(data_dir).map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    // Not under a running relay: it would go on writing to the file it has open.
    let _lock = datadir::lock(data_dir).map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    let db = data_dir.join(datadir::DATABASE_FILE);
    let (report, kept) = burrow_relay::store::sqlite::restore(file, &db).map_err(store_err)?;
    println!(
        "restored {} to {} (schema version {}): {} devices, {} operators, {} audit entries",
        file.display(),
        db.display(),
        report.schema_version,
        report.devices,
        report.operators,
        report.audit_entries
    );
    if let Some(kept) = kept {
        println!("the registry it replaced is kept as {}", kept.display());
    }
    Ok(())
}

/// `relay init`: creates the data directory, host key and database without serving. With
/// `--database`, the registry is the cluster's: the directory gets the host key and the mark
/// of a cluster relay, the database its schema, and no SQLite file is made.
async fn init(args: &RelayArgs, data_dir: &Path) -> Result {
    let config = |e: burrow_relay::RelayError| Failure::new(exit::CONFIG, e.to_string());
    datadir::ensure(data_dir).map_err(config)?;
    let _lock = datadir::lock(data_dir).map_err(config)?;
    if args.database.is_none() {
        datadir::refuse_cluster_dir_for_sqlite(data_dir).map_err(config)?;
    }
    let (key, created) = datadir::load_or_create_host_key(data_dir).map_err(config)?;
    let registry = match &args.database {
        Some(url) => {
            Db::postgres(url, "").await.map_err(store_err)?;
            let relay_id = args
                .relay_id
                .clone()
                .unwrap_or_else(|| RelayConfig::new(data_dir.to_path_buf()).relay_id);
            datadir::mark_cluster(data_dir, url, &relay_id).map_err(|e| {
                Failure::new(
                    exit::OSERR,
                    format!(
                        "cannot write {}: {e}",
                        data_dir.join(datadir::CLUSTER_FILE).display()
                    ),
                )
            })?;
            format!(
                "registry in PostgreSQL {} (relay {relay_id})",
                datadir::without_password(url)
            )
        }
        None => {
            Store::open(&data_dir.join(datadir::DATABASE_FILE))
                .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
            "registry in SQLite".to_string()
        }
    };
    let fp = burrow_io::keys::fingerprint(key.public_key());
    let state = if created { "created" } else { "already exists" };
    println!(
        "relay data directory {} {state}; host key {fp}; {registry}",
        data_dir.display()
    );
    Ok(())
}

fn fingerprint(data_dir: &Path, known_hosts: Option<String>) -> Result {
    let key =
        datadir::load_host_key(data_dir).map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    match known_hosts {
        None => println!("{}", burrow_io::keys::fingerprint(key.public_key())),
        Some(host) => {
            let host = match host.parse::<Target>() {
                Ok(t) if t.port != 22 => format!("[{}]:{}", t.host, t.port),
                Ok(t) => t.host,
                Err(_) => host,
            };
            println!(
                "{host} {}",
                burrow_io::keys::public_key_line(key.public_key())
            );
        }
    }
    Ok(())
}

/// `relay hostkey add|ls|retire`: the files of the data directory; a running relay uses them
/// from its next connection on.
fn hostkey(data_dir: &Path, cmd: crate::cli::HostkeyCommand) -> Result {
    use crate::cli::HostkeyCommand;
    use burrow_relay::host_keys;
    let config_err = |e: burrow_relay::RelayError| Failure::new(exit::CONFIG, e.to_string());
    let fp = |k: &burrow_io::keys::PrivateKey| burrow_io::keys::fingerprint(k.public_key());
    let running = datadir::lock(data_dir).is_err();
    match cmd {
        HostkeyCommand::Add => {
            let key = host_keys::add(data_dir).map_err(config_err)?;
            println!("new host key {} held beside the one in use", fp(&key));
            if running {
                println!(
                    "the relay running on this data directory announces both from its next connection on: \
                     burrow agents logged in learn the new key then, other clients at their next login"
                );
            }
            println!(
                "OpenSSH clients with UpdateHostKeys and burrow agents add it to their pins; once every device \
                 has connected since (`burrow relay device ls`), run `burrow relay hostkey retire`"
            );
        }
        HostkeyCommand::Ls { json } => {
            let keys = host_keys::load(data_dir).map_err(config_err)?;
            let rows: Vec<(&str, String, String)> = keys
                .all()
                .zip(["in use", "new"])
                .map(|(k, state)| {
                    (
                        state,
                        fp(k),
                        burrow_io::keys::public_key_line(k.public_key()),
                    )
                })
                .collect();
            if json {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(state, fp, key)| {
                        serde_json::json!({"state": state, "fingerprint": fp, "public_key": key})
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                for (state, fp, _) in rows {
                    println!("{state:<7} {fp}");
                }
            }
        }
        HostkeyCommand::Retire => {
            let (old, new) = host_keys::retire(data_dir).map_err(config_err)?;
            println!(
                "host key {} is now in use{}; {} is retired and deleted",
                fp(&new),
                if running {
                    " (by the running relay from its next connection on)"
                } else {
                    ""
                },
                fp(&old)
            );
        }
    }
    Ok(())
}

fn read_keys(path: &Path) -> Result<Vec<burrow_io::keys::PublicKey>> {
    let (text, what) = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| {
            Failure::new(
                exit::NOINPUT,
                format!("cannot read public key from stdin: {e}"),
            )
        })?;
        (s, "stdin".to_string())
    } else {
        let s = std::fs::read_to_string(path).map_err(|e| {
            Failure::new(
                exit::NOINPUT,
                format!("cannot read public key {}: {e}", path.display()),
            )
        })?;
        (s, path.display().to_string())
    };
    burrow_io::keys::parse_public_keys(&text, &what)
        .map_err(|e| Failure::new(exit::DATAERR, e.to_string()))
}

pub fn store_err(e: burrow_relay::store::StoreError) -> Failure {
    use burrow_relay::store::StoreError::*;
    let code = match e {
        NoDevice(_) | NoOperator(_) | NoToken(_) | Conflict(_) => exit::DATAERR,
        Sqlite { .. } | Schema(_) => exit::SOFTWARE,
        // The database cannot be reached: a temporary failure, worth trying again.
        Postgres { .. } => exit::TEMPFAIL,
    };
    Failure::new(code, e.to_string())
}

fn valid(kind: &'static str, name: &str) -> Result {
    check_name(kind, name).map_err(|e| Failure::new(exit::USAGE, e.to_string()))
}

fn check_patterns(patterns: &[String]) -> Result {
    for p in patterns {
        burrow_proto::labels::check_allow(p)
            .map_err(|e| Failure::new(exit::USAGE, format!("--allow: {e}")))?;
    }
    Ok(())
}

async fn device(store: &Db, cmd: DeviceCommand) -> Result {
    match cmd {
        DeviceCommand::Add { name, pubkey } => {
            valid("device", &name)?;
            let keys = read_keys(&pubkey)?;
            store.add_device(&name, &keys).await.map_err(store_err)?;
            println!("device {name} added with key {}", fingerprints(&keys));
        }
        DeviceCommand::AddKey { name, pubkey } => {
            let keys = read_keys(&pubkey)?;
            store
                .add_device_keys(&name, &keys)
                .await
                .map_err(store_err)?;
            println!("device {name}: added key {}", fingerprints(&keys));
        }
        DeviceCommand::Ls { json, label } => {
            let filter = label
                .iter()
                .map(|l| burrow_proto::labels::Selector::parse(l))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Failure::new(exit::USAGE, format!("--label: {e}")))?;
            let mut devices = store.devices().await.map_err(store_err)?;
            devices.retain(|d| filter.iter().all(|s| s.matches(&d.labels)));
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&devices).unwrap_or_default()
                );
            } else {
                let cluster = store.postgres_url().is_some();
                print!("{}", burrow_relay::admin::render_devices(&devices, cluster));
            }
        }
        DeviceCommand::Show { name, json } => {
            let detail = store.device_detail(&name).await.map_err(store_err)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&detail).unwrap_or_default()
                );
            } else {
                print!("{}", burrow_relay::show::render_detail(&detail));
            }
        }
        DeviceCommand::Rm { name } => {
            store.remove_device(&name).await.map_err(store_err)?;
            println!("device {name} removed");
        }
        DeviceCommand::AllowConnect { name, target } => {
            let t: Target = target
                .parse()
                .map_err(|e| Failure::new(exit::USAGE, format!("{e}")))?;
            store
                .allow_connect(&name, &t.host, t.port)
                .await
                .map_err(store_err)?;
            println!("device {name} may now open {t}");
        }
        DeviceCommand::RmKey { name, fingerprint } => {
            store
                .remove_device_key(&name, &fingerprint)
                .await
                .map_err(store_err)?;
            println!("device {name}: removed key {fingerprint}");
        }
        DeviceCommand::DisallowConnect { name, target } => {
            let t: Target = target
                .parse()
                .map_err(|e| Failure::new(exit::USAGE, format!("{e}")))?;
            if !store
                .disallow_connect(&name, &t.host, t.port)
                .await
                .map_err(store_err)?
            {
                return Err(Failure::new(
                    exit::DATAERR,
                    format!(
                        "device {name} has no allow-connect rule for {t} (see `burrow relay device ls`)"
                    ),
                ));
            }
            println!("device {name} may no longer open {t}");
        }
        DeviceCommand::DisallowListen { name, listen } => {
            let l: ListenSpec = listen
                .parse()
                .map_err(|e| Failure::new(exit::USAGE, format!("{e}")))?;
            if !store
                .disallow_listen(&name, &l.addr, l.port)
                .await
                .map_err(store_err)?
            {
                return Err(Failure::new(
                    exit::DATAERR,
                    format!(
                        "device {name} has no allow-listen rule for {l} (see `burrow relay device ls`)"
                    ),
                ));
            }
            println!("device {name} may no longer listen on {l}");
        }
        DeviceCommand::Import {
            csv,
            authorized_keys,
            name_from,
            label,
            dry_run,
        } => {
            crate::import_cmd::run(
                store,
                crate::import_cmd::ImportArgs {
                    csv: csv.as_deref(),
                    authorized_keys: authorized_keys.as_deref(),
                    name_from: &name_from,
                    labels: &label,
                    dry_run,
                },
            )
            .await?;
        }
        cmd @ (DeviceCommand::Approve { .. }
        | DeviceCommand::Reject { .. }
        | DeviceCommand::Label { .. }
        | DeviceCommand::Unquarantine { .. }) => crate::fleet_cmd::device(store, cmd).await?,
        DeviceCommand::AllowListen { name, listen } => {
            let l: ListenSpec = listen
                .parse()
                .map_err(|e| Failure::new(exit::USAGE, format!("{e}")))?;
            store
                .allow_listen(&name, &l.addr, l.port)
                .await
                .map_err(store_err)?;
            println!(
                "device {name} may now listen on {l} (when it forwards port {})",
                l.port
            );
        }
    }
    Ok(())
}

fn fingerprints(keys: &[burrow_io::keys::PublicKey]) -> String {
    keys.iter()
        .map(burrow_io::keys::fingerprint)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn operator(store: &Db, cmd: OperatorCommand) -> Result {
    match cmd {
        OperatorCommand::Add {
            name,
            pubkey,
            password_stdin,
            allow,
            console_only,
        } => {
            valid("operator", &name)?;
            check_patterns(&allow)?;
            if pubkey.is_none() && !password_stdin {
                return Err(Failure::new(
                    exit::USAGE,
                    "give the operator a --pubkey FILE, --password-stdin, or both",
                ));
            }
            let keys = match &pubkey {
                Some(p) => read_keys(p)?,
                None => Vec::new(),
            };
            let hash = if password_stdin {
                let password = crate::password::read_new(&name)?;
                Some(
                    burrow_relay::admin::hash_password(&password)
                        .map_err(|e| Failure::new(exit::SOFTWARE, e))?,
                )
            } else {
                None
            };
            store
                .add_operator(&name, &keys, hash.as_deref(), &allow, console_only)
                .await
                .map_err(store_err)?;
            println!("operator {name} added (may reach: {})", allow.join(", "));
        }
        OperatorCommand::Ls { json } => {
            let ops = store.operators().await.map_err(store_err)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ops).unwrap_or_default());
            } else {
                print!("{}", burrow_relay::admin::render_operators(&ops));
            }
        }
        OperatorCommand::Rm { name } => {
            store.remove_operator(&name).await.map_err(store_err)?;
            println!("operator {name} removed");
        }
        OperatorCommand::Set {
            name,
            allow,
            console_only,
            full,
            role,
        } => {
            check_patterns(&allow)?;
            let access = match (console_only, full) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            if allow.is_empty() && access.is_none() && role.is_none() {
                return Err(Failure::new(
                    exit::USAGE,
                    "nothing to change: give --allow GLOB (repeatable), --console-only, --full or --role ROLE",
                ));
            }
            let patterns = (!allow.is_empty()).then_some(allow.as_slice());
            if patterns.is_some() || access.is_some() {
                store
                    .set_operator_policy(&name, patterns, access)
                    .await
                    .map_err(store_err)?;
            }
            if role.is_some() {
                store
                    .set_operator_web(&name, role, None)
                    .await
                    .map_err(store_err)?;
            }
            let now = store
                .operator(&name)
                .await
                .map_err(store_err)?
                .ok_or_else(|| {
                    store_err(burrow_relay::store::StoreError::NoOperator(name.clone()))
                })?;
            println!(
                "operator {name}: may reach {}{}, role {}",
                now.allow.join(", "),
                if now.console_only {
                    " (consoles only)"
                } else {
                    ""
                },
                now.role.as_str()
            );
        }
        OperatorCommand::Totp(TotpCommand::Enroll { name }) => {
            let secret = burrow_relay::totp::new_secret();
            store
                .set_operator_web(&name, None, Some(Some(&secret)))
                .await
                .map_err(store_err)?;
            let uri = burrow_relay::totp::uri("burrow", &name, &secret);
            let qr = burrow_relay::totp::qr_terminal(&uri)
                .map_err(|e| Failure::new(exit::SOFTWARE, e))?;
            println!("{qr}");
            println!("Scan this with an authenticator app, or type the secret: {secret}");
            println!(
                "From now on operator {name}'s password logins (SSH and web) also ask a 6-digit code."
            );
        }
        OperatorCommand::Totp(TotpCommand::Remove { name }) => {
            store
                .set_operator_web(&name, None, Some(None))
                .await
                .map_err(store_err)?;
            println!("operator {name}: TOTP removed; password logins ask no code");
        }
        OperatorCommand::Password {
            name,
            password_stdin,
            clear,
        } => {
            let hash = if clear {
                None
            } else if password_stdin {
                let password = crate::password::read_new(&name)?;
                Some(
                    burrow_relay::admin::hash_password(&password)
                        .map_err(|e| Failure::new(exit::SOFTWARE, e))?,
                )
            } else {
                return Err(Failure::new(
                    exit::USAGE,
                    "give --password-stdin or --clear",
                ));
            };
            store
                .set_operator_password(&name, hash.as_deref())
                .await
                .map_err(store_err)?;
            if clear {
                println!("operator {name}: password removed");
            } else {
                println!("operator {name}: password set");
            }
        }
        OperatorCommand::Unlock { name } => {
            if store.unlock_operator(&name).await.map_err(store_err)? {
                println!("operator {name}: password login unlocked");
            } else {
                println!("operator {name} was not locked");
            }
        }
        OperatorCommand::AddKey { name, pubkey } => {
            let keys = read_keys(&pubkey)?;
            store
                .add_operator_keys(&name, &keys)
                .await
                .map_err(store_err)?;
            println!("operator {name}: added key {}", fingerprints(&keys));
        }
    }
    Ok(())
}

fn recordings(data_dir: &Path, device: Option<&str>, json: bool) -> Result {
    datadir::require_relay(data_dir).map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    let files = burrow_relay::console::recording::list(data_dir, device).map_err(|e| {
        Failure::new(
            exit::NOINPUT,
            format!("cannot list recordings in {}: {e}", data_dir.display()),
        )
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&files).unwrap_or_default()
        );
        return Ok(());
    }
    for f in files {
        println!("{:<20} {:>10}  {}", f.device, f.bytes, f.path.display());
    }
    Ok(())
}

async fn alerts(store: &Db, limit: usize, device: Option<&str>, json: bool) -> Result {
    let alerts = store.alerts(limit, device).await.map_err(store_err)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&alerts).unwrap_or_default()
        );
    } else {
        print!("{}", burrow_relay::show::render_alerts(&alerts));
    }
    Ok(())
}
