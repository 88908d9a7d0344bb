//! Relays on PostgreSQL: listing latency at 10k and 100k devices on both backends, a
//! reconnect storm across three relays, and failover after a relay is killed.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Args;
use crate::env::{Env, Proc, free_port, wait_port};
use crate::report::Results;

/// The unprivileged account PostgreSQL runs as (`initdb` refuses root).
const ACCOUNT: &str = "burrow-test";

/// A throwaway PostgreSQL server in a temporary directory.
pub(crate) struct Postgres {
    pub(crate) url: String,
    _dir: tempfile::TempDir,
    _server: Proc,
}

fn postgres_bin() -> anyhow::Result<std::path::PathBuf> {
    let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (apt-get install postgresql)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no initdb under /usr/lib/postgresql")
}

/// Whether a PostgreSQL server can be started here (installed, and we may run it as another
/// account).
pub(crate) fn available() -> bool {
    postgres_bin().is_ok() && rustix::process::geteuid().is_root()
}

impl Postgres {
    pub(crate) async fn start() -> anyhow::Result<Postgres> {
        use std::os::unix::fs::PermissionsExt;
        let exists = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
        if !exists(
            Command::new("id")
                .arg(ACCOUNT)
                .stdout(std::process::Stdio::null()),
        ) {
            let _ = Command::new("useradd")
                .args([
                    "--system",
                    "--create-home",
                    "--shell",
                    "/bin/sh",
                    "--home-dir",
                ])
                .arg(format!("/var/lib/{ACCOUNT}"))
                .arg(ACCOUNT)
                .status();
        }
        let dir = tempfile::Builder::new()
            .prefix("burrow-bench-pg-")
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        let chowned = Command::new("chown")
            .arg(format!("{ACCOUNT}:"))
            .arg(&data)
            .status()?;
        if !chowned.success() {
            bail!("cannot give {} to {ACCOUNT}", data.display());
        }
        let bin = postgres_bin()?;
        let out = Command::new("runuser")
            .args(["-u", ACCOUNT, "--"])
            .arg(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "burrow", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()?;
        if !out.status.success() {
            bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port();
        let server = Proc::spawn(
            Command::new("setpriv")
                .args([
                    &format!("--reuid={ACCOUNT}"),
                    &format!("--regid={ACCOUNT}"),
                    "--init-groups",
                ])
                .arg(bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(&data)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=300",
                    "-c",
                    "shared_buffers=256MB",
                ]),
        )?;
        wait_port(port, "postgres").await?;
        let url = format!("postgresql://burrow@127.0.0.1:{port}/postgres");
        // Listening comes a moment before accepting.
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("PostgreSQL did not accept connections within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Postgres {
            url,
            _dir: dir,
            _server: server,
        })
    }
}

/// Registers `load-0` ... `load-{n-1}` with the bench key in the PostgreSQL registry at `url`,
/// in one statement per table.
async fn register_postgres(url: &str, n: usize, key_line: &str, fp: &str) -> anyhow::Result<()> {
    let _ = burrow_relay::store::Db::postgres(url, "").await?;
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let n = i64::try_from(n)?;
    client
        .execute(
            "INSERT INTO devices (name, created) SELECT 'load-' || g, 0 FROM generate_series(0, $1::BIGINT - 1) g ON CONFLICT DO NOTHING",
            &[&n],
        )
        .await?;
    client
        .execute(
            "INSERT INTO device_keys (device, fingerprint, key) SELECT 'load-' || g, $2, $3 FROM generate_series(0, $1::BIGINT - 1) g ON CONFLICT DO NOTHING",
            &[&n, &fp, &key_line],
        )
        .await?;
    Ok(())
}

/// The listing with a health record for every device, on SQLite.
pub(crate) const HEALTH_SQLITE: &str = "burrow on SQLite, every device with health";
/// The same on PostgreSQL.
pub(crate) const HEALTH_POSTGRES: &str = "burrow on PostgreSQL, every device with health";

/// `ls` latency: the median time of one full device listing (what `ls`, `device ls` and the
/// menu read), in milliseconds.
async fn listing_ms(db: &burrow_relay::store::Db) -> anyhow::Result<f64> {
    let mut runs = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let devices = db.devices().await?;
        runs.push(started.elapsed().as_secs_f64() * 1e3);
        if devices.is_empty() {
            bail!("the listing is empty");
        }
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs.get(runs.len() / 2).copied().unwrap_or(f64::NAN))
}

/// Gives every device `load-0` ... `load-{n-1}` a health record the way relays write them:
/// a session that came up, a report, a probe, the session's end, and for half of them an
/// earlier session and a reconnect (so that `device ls` has every column to fill).
async fn fill_health(db: &burrow_relay::store::Db, n: usize) -> anyhow::Result<()> {
    use burrow_proto::health::{Modem, ModemManager, Report};
    use burrow_relay::store::Write;
    let report = Report {
        modem: Modem {
            mm: ModemManager::Present,
            state: Some("connected".into()),
            operator: Some("NTT DOCOMO".into()),
            tech: Some("lte".into()),
            quality: Some(67),
            rssi: Some(-65.0),
            rsrp: Some(-97.0),
            rsrq: Some(-10.0),
            snr: Some(12.2),
            rx: Some(123_456_789),
            tx: Some(2_345_678),
            ..Modem::default()
        },
        throttled: Some(0x50000),
        temp_c: Some(48.3),
        disk_free: Some(12_000_000_000),
        disk_total: Some(31_000_000_000),
        uptime_s: Some(86_400),
    };
    let json = serde_json::to_string(&report)?;
    for i in 0..n {
        let device = format!("load-{i}");
        let online = |session: u64| Write::Online {
            device: device.clone(),
            peer: "10.0.0.1:40000".into(),
            session,
            instance: String::new(),
            key: String::new(),
            agent: "burrow_0.1.0".into(),
        };
        db.submit(online(1));
        if i % 2 == 0 {
            db.submit(Write::Offline {
                device: device.clone(),
                session: 1,
                reason: "reset".into(),
                detail: "the connection broke without a goodbye".into(),
            });
            db.submit(online(2));
        }
        db.submit(Write::Health {
            device: device.clone(),
            report: json.clone(),
            link: report.summary(),
            signal_dbm: Some(-97),
            temp_c: Some(48),
            throttled: report.throttled,
        });
        db.submit(Write::Probe {
            device: device.clone(),
            ok: true,
            rtt_ms: 420,
            error: String::new(),
        });
        // The session ends: the listing compared is the one without sessions up (as the
        // listing without health was measured), so that the difference is the health alone.
        db.submit(Write::Offline {
            device,
            session: if i % 2 == 0 { 2 } else { 1 },
            reason: "keepalive-timeout".into(),
            detail: "nothing heard for 170 s".into(),
        });
    }
    db.flush().await;
    Ok(())
}

async fn ls_latency(env: &Env, args: &Args, results: &mut Results) -> anyhow::Result<()> {
    let key = burrow_io::keys::load_private_key(&env.key)?;
    let public = key.public_key().clone();
    let line = burrow_io::keys::public_key_line(&public);
    let fp = burrow_io::keys::fingerprint(&public);
    for &n in &args.ls_devices {
        let dir = env.path(&format!("ls-sqlite-{n}"));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(burrow_relay::datadir::DATABASE_FILE);
        let names: Vec<String> = (0..n).map(|i| format!("load-{i}")).collect();
        burrow_relay::store::Store::open(&path)?
            .add_devices_bulk(&names, std::slice::from_ref(&public))?;
        let db = burrow_relay::store::Db::sqlite(&path)?;
        let ms = listing_ms(&db).await?;
        eprintln!("    ls of {n} devices on SQLite: {ms:.1} ms");
        results.push(
            &format!("ls latency ({n} devices)"),
            "burrow on SQLite",
            ms,
            "ms",
        );
        fill_health(&db, n).await?;
        let ms = listing_ms(&db).await?;
        eprintln!("    ls of {n} devices with health on SQLite: {ms:.1} ms");
        results.push(
            &format!("ls latency ({n} devices)"),
            HEALTH_SQLITE,
            ms,
            "ms",
        );

        let pg = Postgres::start().await?;
        register_postgres(&pg.url, n, &line, &fp).await?;
        let db = burrow_relay::store::Db::postgres(&pg.url, "").await?;
        let ms = listing_ms(&db).await?;
        eprintln!("    ls of {n} devices on PostgreSQL: {ms:.1} ms");
        results.push(
            &format!("ls latency ({n} devices)"),
            "burrow on PostgreSQL",
            ms,
            "ms",
        );
        fill_health(&db, n).await?;
        // What autovacuum does to the rows the writes above replaced, as it would have by the
        // time a fleet had reported: the listing reads live rows, not dead versions.
        let (client, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.batch_execute("VACUUM ANALYZE").await?;
        let ms = listing_ms(&db).await?;
        eprintln!("    ls of {n} devices with health on PostgreSQL: {ms:.1} ms");
        results.push(
            &format!("ls latency ({n} devices)"),
            HEALTH_POSTGRES,
            ms,
            "ms",
        );
    }
    Ok(())
}

/// `burrow relay` processes of a cluster on `url`, on fixed ports so that they can be started
/// again after a kill.
struct Relays {
    ports: Vec<u16>,
    peer_ports: Vec<u16>,
    dirs: Vec<std::path::PathBuf>,
    procs: Vec<Option<Proc>>,
    fingerprints: Vec<String>,
}

impl Relays {
    async fn start(env: &Env, url: &str, name: &str, n: usize) -> anyhow::Result<Relays> {
        let mut r = Relays {
            ports: (0..n).map(|_| free_port()).collect(),
            peer_ports: (0..n).map(|_| free_port()).collect(),
            dirs: (0..n).map(|i| env.path(&format!("{name}-r{i}"))).collect(),
            procs: (0..n).map(|_| None).collect(),
            fingerprints: Vec::new(),
        };
        for dir in &r.dirs {
            let d = dir.to_str().context("path")?;
            env.burrow_cli(&["relay", "--data-dir", d, "init"])?;
            r.fingerprints.push(
                env.burrow_cli(&["relay", "--data-dir", d, "fingerprint"])?
                    .trim()
                    .to_string(),
            );
        }
        for i in 0..n {
            r.start_one(env, url, i).await?;
        }
        Ok(r)
    }

    async fn start_one(&mut self, env: &Env, url: &str, i: usize) -> anyhow::Result<()> {
        let (port, peer) = (self.ports[i], self.peer_ports[i]);
        let proc = Proc::spawn(
            Command::new(&env.burrow)
                .args(["relay", "--listen", &format!("127.0.0.1:{port}")])
                .arg("--data-dir")
                .arg(&self.dirs[i])
                .args(["--database", url, "--relay-id", &format!("r{i}")])
                .args(["--peer-listen", &format!("127.0.0.1:{peer}")])
                .env("BURROW_LOG", "error"),
        )?;
        self.procs[i] = Some(proc);
        wait_port(port, "burrow relay").await
    }

    fn kill(&mut self, i: usize) {
        if let Some(p) = self.procs[i].take() {
            p.signal(rustix::process::Signal::KILL);
        }
    }
}

async fn storm(env: &Env, args: &Args, results: &mut Results) -> anyhow::Result<()> {
    let n = args.cluster_devices;
    let pg = Postgres::start().await?;
    let key = Arc::new(burrow_io::keys::load_private_key(&env.key)?);
    let public = key.public_key().clone();
    register_postgres(
        &pg.url,
        n,
        &burrow_io::keys::public_key_line(&public),
        &burrow_io::keys::fingerprint(&public),
    )
    .await?;
    let mut relays = Relays::start(env, &pg.url, "storm", 3).await?;
    let fleet =
        crate::fleet::Fleet::start_on(relays.ports.clone(), n, args.devices_per_address, key);
    let first = fleet.wait_all(n, Duration::from_secs(600)).await?;
    eprintln!(
        "    {n} devices on three relays from scratch in {:.1} s",
        first.as_secs_f64()
    );
    for i in 0..3 {
        relays.kill(i);
    }
    fleet.wait_down(Duration::from_secs(120)).await?;
    let restarted = Instant::now();
    for i in 0..3 {
        relays.start_one(env, &pg.url, i).await?;
    }
    fleet.wait_all(n, Duration::from_secs(600)).await?;
    results.push_note(
        &format!("reconnect storm across three relays on PostgreSQL ({n} devices)"),
        "burrow: all endpoints back",
        restarted.elapsed().as_secs_f64(),
        "s",
        &format!("key exchange {}", crate::kex::default_method()),
    );
    drop(fleet);
    Ok(())
}

/// Whether `device`'s endpoint 7 answers through the relay at `port` (stock `ssh -W`).
fn reachable(env: &Env, port: u16, device: &str, known_hosts: &std::path::Path) -> bool {
    let out = crate::systems::ssh_base(env, port)
        .args([
            "-o",
            &format!("UserKnownHostsFile={}", known_hosts.display()),
        ])
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-W",
            &format!("{device}:7"),
        ])
        .arg("bench-op@127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            if let Some(mut i) = c.stdin.take() {
                let _ = i.write_all(b"!");
            }
            c.wait_with_output()
        });
    out.is_ok_and(|o| o.stdout == b"!")
}

async fn failover(env: &Env, args: &Args, results: &mut Results) -> anyhow::Result<()> {
    let pg = Postgres::start().await?;
    let db = burrow_relay::store::Db::postgres(&pg.url, "").await?;
    let agents = args.failover_devices.max(1);
    for i in 0..agents {
        let name = format!("fo-{i}");
        let key = burrow_io::keys::load_private_key(&env.key_for(&name)?)?;
        db.add_device(&name, std::slice::from_ref(key.public_key()))
            .await?;
    }
    let operator = burrow_io::keys::load_private_key(&env.op_key)?;
    db.add_operator(
        "bench-op",
        std::slice::from_ref(operator.public_key()),
        None,
        &["*".into()],
        false,
    )
    .await?;
    let echo = crate::traffic::echo_server().await?;
    let mut relays = Relays::start(env, &pg.url, "failover", 2).await?;
    let known_hosts = env.path("failover_known_hosts");
    let mut lines = String::new();
    for (i, dir) in relays.dirs.iter().enumerate() {
        lines.push_str(&env.burrow_cli(&[
            "relay",
            "--data-dir",
            dir.to_str().context("path")?,
            "fingerprint",
            "--known-hosts",
            &format!("127.0.0.1:{}", relays.ports[i]),
        ])?);
    }
    std::fs::write(&known_hosts, lines)?;
    let (relay_ports, relay_pins) = (relays.ports.clone(), relays.fingerprints.clone());
    let agent = |name: &str, connections: u32| -> anyhow::Result<Proc> {
        let mut c = Command::new(&env.burrow);
        c.args(["agent", "--name", name, "--key"])
            .arg(env.key_for(name)?)
            .args(["--expose", &format!("7=127.0.0.1:{echo}")])
            .args(["--connections", &connections.to_string()])
            .args(["--backoff-min", "0.2", "--backoff-max", "2"])
            .arg("--status-file")
            .arg(env.path(&format!("{name}.json")))
            .env("BURROW_LOG", "error");
        for (port, fp) in relay_ports.iter().zip(&relay_pins) {
            c.args(["--relay", &format!("127.0.0.1:{port}"), "--host-key", fp]);
        }
        Proc::spawn(&mut c)
    };

    // One agent with both relays configured, one session: time until it answers through r1
    // (the relay that survives) after r0 is killed.
    let single = agent("fo-0", 1)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reachable(env, relays.ports[0], "fo-0", &known_hosts) {
        if Instant::now() > deadline {
            bail!("the failover agent did not come up");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relays.kill(0);
    let killed = Instant::now();
    while !reachable(env, relays.ports[1], "fo-0", &known_hosts) {
        if killed.elapsed() > Duration::from_secs(60) {
            bail!("the device was not back through the surviving relay within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = killed.elapsed().as_secs_f64();
    eprintln!("    back through the other relay {back:.2} s after the kill");
    results.push(
        "failover after SIGKILL of a relay",
        "burrow, two relays configured: device back after",
        back,
        "s",
    );
    drop(single);
    relays.start_one(env, &pg.url, 0).await?;

    // Agents holding two sessions: how many are unreachable right after a relay dies.
    let procs: Vec<Proc> = (0..agents)
        .map(|i| agent(&format!("fo-{i}"), 2))
        .collect::<Result<_, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for relay in 0..2 {
        for i in 0..agents {
            while !reachable(env, relays.ports[relay], &format!("fo-{i}"), &known_hosts) {
                if Instant::now() > deadline {
                    bail!("fo-{i} did not come up on relay {relay}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Both sessions of every device are up (each relay answers for it by itself).
    tokio::time::sleep(Duration::from_secs(1)).await;
    relays.kill(0);
    let mut interrupted = 0;
    for i in 0..agents {
        if !reachable(env, relays.ports[1], &format!("fo-{i}"), &known_hosts) {
            interrupted += 1;
        }
    }
    eprintln!("    connections = 2: {interrupted} of {agents} devices unreachable after the kill");
    results.push(
        "failover after SIGKILL of a relay",
        &format!("burrow, connections = 2: idle devices interrupted (of {agents})"),
        f64::from(interrupted),
        "devices",
    );
    drop(procs);
    Ok(())
}

pub async fn run_all(env: &Env, args: &Args, results: &mut Results) -> anyhow::Result<()> {
    if !available() {
        eprintln!("  PostgreSQL is not available here (install postgresql, run as root): skipped");
        return Ok(());
    }
    eprintln!("  ls latency on SQLite and PostgreSQL");
    ls_latency(env, args, results).await?;
    eprintln!("  reconnect storm across three relays on PostgreSQL");
    storm(env, args, results).await?;
    eprintln!("  failover after a relay is killed");
    failover(env, args, results).await?;
    Ok(())
}
