//! The cellular link. Two measurements:
//! - **idle cost**: what an idle device's tunnel puts on the wire in a month. Each system runs
//!   in a pair of network namespaces made for it (relay side, device side) joined by a veth
//!   pair, and the device's veth counters are read before and after a quiet window.
//! - **behaviour through an emulated cellular link** (`burrow-linkemu` on loopback: delay,
//!   jitter, loss, rate, blackout): how soon each end notices a blackout, how soon the endpoint
//!   is back once the link returns, throughput and 64-byte latency.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use burrow_linkemu::{Impairment, Link};
use tokio_util::sync::CancellationToken;

use crate::Args;
use crate::env::{Env, Proc, free_port, wait_port};
use crate::systems::Backends;

/// Seconds in the month the idle costs are scaled to.
const MONTH: f64 = 30.0 * 86_400.0;
/// Ethernet header counted by a veth but not billed by a cellular carrier.
const ETHERNET_HEADER: u64 = 14;
/// Endpoint port every idle system forwards (to nothing: idle means idle).
const IDLE_PORT: u16 = 2200;

/// One measurement, as `report::Results::push_note` takes it.
pub struct Row {
    pub group: String,
    pub system: String,
    pub value: f64,
    pub unit: &'static str,
    pub note: Option<String>,
}

fn row(group: &str, system: &str, value: f64, unit: &'static str, note: Option<String>) -> Row {
    Row {
        group: group.into(),
        system: system.into(),
        value,
        unit,
        note,
    }
}

/// Group of the idle-cost rows.
pub const IDLE_GROUP: &str = "idle cost per device per month (IP bytes on the device's link)";
/// The idle-cost row of the default device with an operator's session open and silent.
pub const IDLE_SESSION: &str = "burrow, an idle ssh -J session open (profile standard)";
/// Index of the probe-only system in the idle-cost table.
const PROBE_ONLY: usize = 4;

/// Two network namespaces (relay side, device side) joined by a veth pair.
struct NetPair {
    n: u32,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The hardware address of `dev` in `ns`.
fn mac(ns: &str, dev: &str) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", dev])
        .output()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    json[0]["address"]
        .as_str()
        .map(str::to_string)
        .context("no hardware address")
}

impl NetPair {
    fn create(n: u32) -> anyhow::Result<NetPair> {
        let pair = NetPair { n };
        remove_orphans();
        pair.remove();
        let (r, d) = (pair.relay_ns(), pair.device_ns());
        let (rif, dif) = (format!("bbv{n}r"), pair.device_if());
        for ns in [&r, &d] {
            ip(&["netns", "add", ns])?;
            // Only the tunnel may show in the counters: no IPv6 autoconfiguration chatter.
            let ok = Command::new("ip")
                .args(["netns", "exec", ns, "sysctl", "-qw"])
                .args([
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ])
                .status()?;
            if !ok.success() {
                bail!("cannot turn IPv6 off in {ns}");
            }
        }
        ip(&[
            "-n", &r, "link", "add", &rif, "type", "veth", "peer", "name", &dif, "netns", &d,
        ])?;
        ip(&[
            "-n",
            &r,
            "addr",
            "add",
            &format!("{}/30", pair.relay_ip()),
            "dev",
            &rif,
        ])?;
        ip(&[
            "-n",
            &d,
            "addr",
            "add",
            &format!("10.77.{n}.2/30"),
            "dev",
            &dif,
        ])?;
        for (ns, dev) in [
            (&r, &rif),
            (&d, &dif),
            (&r, &"lo".to_string()),
            (&d, &"lo".to_string()),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // Nor ARP, which a point-to-point cellular link does not have: fixed neighbours.
        let (rmac, dmac) = (mac(&r, &rif)?, mac(&d, &dif)?);
        let dip = format!("10.77.{n}.2");
        let rip = pair.relay_ip();
        for (ns, peer, lladdr, dev) in [(&r, &dip, &dmac, &rif), (&d, &rip, &rmac, &dif)] {
            ip(&[
                "-n",
                ns,
                "neigh",
                "replace",
                peer,
                "lladdr",
                lladdr,
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        Ok(pair)
    }

    /// Named after this process too: two benches (or a bench and the test suite's smoke run)
    /// on one host each get their own namespaces and never remove the other's.
    fn relay_ns(&self) -> String {
        format!("bbr{}-{}", std::process::id(), self.n)
    }

    fn device_ns(&self) -> String {
        format!("bbd{}-{}", std::process::id(), self.n)
    }

    fn device_if(&self) -> String {
        format!("bbv{}d", self.n)
    }

    fn relay_ip(&self) -> String {
        format!("10.77.{}.1", self.n)
    }

    /// `program` run inside namespace `ns`.
    fn exec(ns: &str, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Bytes (IP, without the Ethernet header) and packets through the device's link, both ways.
    fn counters(&self) -> anyhow::Result<(u64, u64)> {
        let out = Command::new("ip")
            .args(["-n", &self.device_ns(), "-s", "-j", "link", "show"])
            .arg(self.device_if())
            .output()?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let stats = &json[0]["stats64"];
        let get = |dir: &str, what: &str| stats[dir][what].as_u64().unwrap_or(0);
        let packets = get("rx", "packets") + get("tx", "packets");
        let bytes = get("rx", "bytes") + get("tx", "bytes");
        Ok((bytes.saturating_sub(ETHERNET_HEADER * packets), packets))
    }

    /// Whether the device side holds an established TCP connection to its local `port`.
    fn device_serves(&self, port: u16) -> bool {
        Command::new("ss")
            .args(["-N", &self.device_ns(), "-tnH", "state", "established"])
            .arg(format!("( sport = :{port} )"))
            .output()
            .map(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
            .unwrap_or(false)
    }

    /// Whether something listens on `port` on the relay side.
    fn relay_listens(&self, port: u16) -> bool {
        Command::new("ss")
            .args(["-N", &self.relay_ns(), "-ltnH"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(":{port} ")))
            .unwrap_or(false)
    }

    /// Waits until `what` listens on `port` on the relay side.
    async fn wait_listening(&self, port: u16, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.relay_listens(port) {
            if Instant::now() > deadline {
                bail!(
                    "{what} in {} did not listen on port {port}",
                    self.relay_ns()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn remove(&self) {
        for ns in [self.relay_ns(), self.device_ns()] {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Removes the namespaces of benches that died without removing their own (SIGKILL).
fn remove_orphans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let owner = name
            .strip_prefix("bbr")
            .or_else(|| name.strip_prefix("bbd"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Whether network namespaces can be made here (root, `ip` present).
pub fn netns_available() -> bool {
    match NetPair::create(0) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("burrow-bench: no network namespaces ({e}); idle costs are not measured");
            false
        }
    }
}

fn agent_status(path: &std::path::Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn agent_up(path: &std::path::Path) -> bool {
    agent_status(path).is_some_and(|s| s["state"] == "up")
}

/// One idle system in its namespaces.
struct IdleSystem {
    name: String,
    pair: NetPair,
    _procs: Vec<Proc>,
    status: Option<std::path::PathBuf>,
    /// An operator's session through the tunnel is up once the device's local service on this
    /// port holds a connection.
    session_port: Option<u16>,
    /// Probes per month this system's settings run (burrow), and how often it rekeys by time.
    probes_per_month: f64,
    rekeys_per_month: f64,
    /// Health reports a month with nothing notable changing (burrow: one every 6 h).
    reports_per_month: f64,
    note: String,
}

/// Health reports a month when nothing notable changes: the refresh every 6 hours.
const REPORTS_PER_MONTH: f64 = MONTH / (6.0 * 3600.0);
/// Health reports a month at most: a notable change every 30 minutes (six readings of 5 min).
const REPORTS_PER_MONTH_MAX: f64 = MONTH / 1800.0;

/// A stand-in `mmcli` answering as ModemManager with one LTE modem, so that the bench's health
/// reports are as large as a cellular device's (with no modem they are smaller).
fn fake_mmcli(env: &Env) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let bin = env.path("fake-mmcli");
    std::fs::create_dir_all(&bin)?;
    let modem = "/org/freedesktop/ModemManager1/Modem/0";
    let bearer = "/org/freedesktop/ModemManager1/Bearer/0";
    let script = format!(
        r#"#!/bin/sh
case "$*" in
  "-L --output-keyvalue") echo "modem-list.length : 1"; echo "modem-list.value[1] : {modem}" ;;
  "-m {modem} --output-keyvalue") printf 'modem.generic.state : connected\nmodem.generic.access-technologies.length : 1\nmodem.generic.access-technologies.value[1] : lte\nmodem.generic.signal-quality.value : 67\nmodem.generic.bearers.length : 1\nmodem.generic.bearers.value[1] : {bearer}\nmodem.3gpp.operator-name : NTT DOCOMO\n' ;;
  "-m {modem} --signal-get --output-keyvalue") printf 'modem.signal.refresh.rate : 300\nmodem.signal.lte.rssi : -65.00\nmodem.signal.lte.rsrq : -10.00\nmodem.signal.lte.rsrp : -97.00\nmodem.signal.lte.snr : 12.20\n' ;;
  "-b {bearer} --output-keyvalue") printf 'bearer.stats.total-bytes-rx : 1234567890\nbearer.stats.total-bytes-tx : 234567890\n' ;;
  *) exit 1 ;;
esac
"#
    );
    let path = bin.join("mmcli");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(bin)
}

fn health_reports(s: &IdleSystem) -> u64 {
    s.status
        .as_deref()
        .and_then(agent_status)
        .and_then(|v| v["health_reports"].as_u64())
        .unwrap_or(0)
}

async fn burrow_idle(
    env: &Env,
    n: u32,
    name: &str,
    extra: &[&str],
    probes_per_month: f64,
    note: &str,
) -> anyhow::Result<IdleSystem> {
    let mmcli = fake_mmcli(env)?;
    let path = format!(
        "{}:{}",
        mmcli.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let pair = NetPair::create(n)?;
    let data = env.path(&format!("idle-relay-{n}"));
    let fingerprint = crate::systems::relay_data(env, &data)?;
    let listen = format!("{}:2222", pair.relay_ip());
    let relay = Proc::spawn(
        NetPair::exec(&pair.relay_ns(), &env.burrow)
            .args(["relay", "--listen", &listen, "--data-dir"])
            .arg(&data)
            .env("BURROW_LOG", "error"),
    )?;
    pair.wait_listening(2222, "burrow relay").await?;
    let status = env.path(&format!("idle-agent-{n}.json"));
    let agent = Proc::spawn(
        NetPair::exec(&pair.device_ns(), &env.burrow)
            .args(env.agent_args(&listen, &fingerprint, &status))
            .args(["--expose", &format!("{IDLE_PORT}=127.0.0.1:{IDLE_PORT}")])
            .args(extra)
            .env("PATH", &path)
            .env("BURROW_LOG", "error"),
    )?;
    Ok(IdleSystem {
        name: name.into(),
        pair,
        _procs: vec![relay, agent],
        status: Some(status),
        session_port: None,
        probes_per_month,
        // One key exchange a week, by time.
        rekeys_per_month: 30.0 / 7.0,
        reports_per_month: REPORTS_PER_MONTH,
        note: note.into(),
    })
}

/// What the names of the console systems have in common.
const CONSOLE_SYSTEM: &str = "console with";

/// The default burrow system serving a console: a pty made by socat whose far end is a router
/// printing a syslog line (about 110 bytes, numbers changing as a real one's do) every `every`
/// seconds, or nothing. The agent logs the port and uploads the log (compressed, with the
/// keepalive's timing by default); the difference to the default system is the upload's cost.
async fn console_idle(
    env: &Env,
    n: u32,
    name: &str,
    every: Option<u64>,
) -> anyhow::Result<IdleSystem> {
    let tty = env.path(&format!("idle-console-{n}"));
    let _ = std::fs::remove_file(&tty);
    let script = match every {
        Some(secs) => format!(
            "i=0; while :; do i=$((i+1)); printf '*%s: %%SEC-6-IPACCESSLOGP: list 101 denied tcp 203.0.113.%d(%d) -> 198.51.100.1(23), %d packet\\r\\n' \"$(date -u '+%b %e %T.%N' | cut -c1-19)\" $((i % 250)) $((40000 + i * 7 % 20000)) $i; sleep {secs}; done"
        ),
        None => "exec sleep 100000000".to_string(),
    };
    // In a file: socat's address syntax would take the line's commas for its own.
    let script_file = env.path(&format!("idle-console-{n}.sh"));
    std::fs::write(&script_file, script)?;
    let router = Proc::spawn(
        Command::new("socat")
            .arg(format!("pty,link={},raw,echo=0", tty.display()))
            .arg(format!("EXEC:sh {}", script_file.display())),
    )
    .context("socat makes the console's pty (apt-get install socat)")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !tty.exists() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "socat made no pty at {}",
            tty.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let console = format!("{}@9600", tty.display());
    let mut system = burrow_idle(
        env,
        n,
        name,
        &["--console", &console],
        MONTH / (6.0 * 3600.0),
        "a port log on the device, uploaded compressed when the link is up",
    )
    .await?;
    system._procs.push(router);
    Ok(system)
}

/// The default burrow system with an operator's `ssh -J` session to the device's own sshd open
/// through it and silent (`ssh -N`): what a shell left open overnight costs.
async fn burrow_idle_session(env: &Env, n: u32, name: &str) -> anyhow::Result<IdleSystem> {
    let mut system = burrow_idle(
        env,
        n,
        name,
        &["--expose", "22=127.0.0.1:22"],
        MONTH / (6.0 * 3600.0),
        "",
    )
    .await?;
    let data = env.path(&format!("idle-relay-{n}"));
    let op_pub = env.op_public_key();
    env.burrow_cli(&[
        "relay",
        "--data-dir",
        data.to_str().context("path")?,
        "operator",
        "add",
        "bench-op",
        "--pubkey",
        op_pub.to_str().context("path")?,
    ])?;
    // The device's own sshd, reached only through the tunnel.
    let config =
        crate::systems::sshd_config(env, &format!("idle-device-sshd-{n}"), "127.0.0.1", 22, "")?;
    let sshd = Proc::spawn(
        NetPair::exec(&system.pair.device_ns(), &env.sshd)
            .arg("-D")
            .arg("-f")
            .arg(&config),
    )?;
    // `ssh -J` spelled as its ProxyCommand, so that the hop to the relay takes the operator's
    // key and the hop to the device the key its sshd knows.
    let jump = format!(
        "ssh -F /dev/null -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
         -o LogLevel=ERROR -o BatchMode=yes -o IdentitiesOnly=yes -p 2222 -W %h:%p bench-op@{}",
        env.op_key.display(),
        system.pair.relay_ip()
    );
    let mut ssh = NetPair::exec(&system.pair.relay_ns(), std::path::Path::new("ssh"));
    ssh.args(["-F", "/dev/null", "-i"])
        .arg(&env.key)
        .args(["-o", "StrictHostKeyChecking=no", "-o"])
        .args(["UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .args(["-o", &format!("ProxyCommand={jump}"), "-N"])
        .arg(format!("{}@bench-dev", env.user));
    let operator = Proc::spawn(&mut ssh)?;
    system._procs.extend([sshd, operator]);
    system.session_port = Some(22);
    system.note = "the default agent with an operator's `ssh -J` session (`-N`) open and silent: keepalives as when idle, the busy check only after stream bytes".into();
    Ok(system)
}

async fn openssh_idle(
    env: &Env,
    n: u32,
    name: &str,
    autossh_monitor: Option<u16>,
    client_options: &[&str],
) -> anyhow::Result<IdleSystem> {
    let pair = NetPair::create(n)?;
    let config =
        crate::systems::sshd_config(env, &format!("idle-sshd-{n}"), &pair.relay_ip(), 22, "")?;
    let sshd = Proc::spawn(
        NetPair::exec(&pair.relay_ns(), &env.sshd)
            .arg("-D")
            .arg("-f")
            .arg(&config),
    )?;
    pair.wait_listening(22, "sshd").await?;
    let program = match autossh_monitor {
        Some(_) => std::path::PathBuf::from("autossh"),
        None => std::path::PathBuf::from("ssh"),
    };
    let mut cmd = NetPair::exec(&pair.device_ns(), &program);
    if let Some(port) = autossh_monitor {
        cmd.args(["-M", &port.to_string()])
            .env("AUTOSSH_GATETIME", "0");
    }
    crate::systems::ssh_options(env, &mut cmd);
    cmd.args([
        "-o",
        "ExitOnForwardFailure=yes",
        "-N",
        "-R",
        &format!("{IDLE_PORT}:127.0.0.1:{IDLE_PORT}"),
    ])
    .args(client_options)
    .arg(format!("{}@{}", env.user, pair.relay_ip()));
    let client = Proc::spawn(&mut cmd)?;
    Ok(IdleSystem {
        name: name.into(),
        pair,
        _procs: vec![sshd, client],
        status: None,
        session_port: None,
        probes_per_month: 0.0,
        // OpenSSH rekeys by data only unless RekeyLimit names a time.
        rekeys_per_month: 0.0,
        reports_per_month: 0.0,
        note: String::new(),
    })
}

/// Waits until the system's tunnel is up: the agent says so, or the relay side listens; and
/// its operator session, if any, reached the device.
async fn wait_idle_up(s: &IdleSystem) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = match &s.status {
            Some(status) => agent_up(status),
            None => s.pair.relay_listens(IDLE_PORT),
        } && s.session_port.is_none_or(|p| s.pair.device_serves(p));
        if up {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} did not come up within 60 s", s.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn probes_run(s: &IdleSystem) -> u64 {
    s.status
        .as_deref()
        .and_then(agent_status)
        .and_then(|v| v["probes"].as_u64())
        .unwrap_or(0)
}

/// The idle-cost table: every system at once, one quiet window.
async fn idle_cost(env: &Env, args: &Args) -> anyhow::Result<Vec<Row>> {
    if !netns_available() {
        return Ok(Vec::new());
    }
    let window = if args.smoke {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(args.idle_seconds)
    };
    let mut systems =
        vec![
        burrow_idle(
            env,
            1,
            "burrow, profile standard (the default)",
            &[],
            MONTH / (6.0 * 3600.0),
            "a keepalive after 150 s without sending; a probe when nothing proved the path for 6 h",
        )
        .await?,
        burrow_idle_session(env, 7, IDLE_SESSION).await?,
        burrow_idle(
            env,
            2,
            "burrow, profile metered",
            &["--profile", "metered"],
            MONTH / (24.0 * 3600.0),
            "a keepalive after 600 s; a probe after a day without proof",
        )
        .await?,
        burrow_idle(
            env,
            3,
            "burrow, profile responsive",
            &["--profile", "responsive"],
            MONTH / 300.0,
            "a keepalive after 25 s; a probe after 5 min without proof",
        )
        .await?,
        // What one probe costs: keepalives out of the way, a probe every 20 s.
        burrow_idle(
            env,
            4,
            "burrow probes alone",
            &["--keepalive-interval", "3600", "--probe-interval", "20"],
            0.0,
            "",
        )
        .await?,
        openssh_idle(
            env,
            5,
            "OpenSSH ssh -R, ServerAliveInterval 30 (autossh -M 0, the seed's setting)",
            None,
            &["-o", "ServerAliveInterval=30", "-o", "ServerAliveCountMax=3"],
        )
        .await?,
    ];
    if which_autossh(args)? {
        systems.push(
            openssh_idle(
                env,
                6,
                "autossh -M 20000, ServerAliveInterval 60",
                Some(20000),
                &[
                    "-o",
                    "ServerAliveInterval=60",
                    "-o",
                    "ServerAliveCountMax=3",
                ],
            )
            .await?,
        );
    }
    // The port log's upload: the default device with a console whose router says nothing, and
    // one whose router logs a syslog line a minute (every second of the smoke run's window).
    let line_every = if args.smoke { 1 } else { 60 };
    for (i, (name, every)) in [
        (
            format!("burrow, profile standard, {CONSOLE_SYSTEM} a silent router"),
            None,
        ),
        (
            format!(
                "burrow, profile standard, {CONSOLE_SYSTEM} a chatty router (a syslog line a minute)"
            ),
            Some(line_every),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        systems.push(console_idle(env, 10 + i as u32, &name, every).await?);
    }
    // What one health report costs: keepalives every 20 s, alone and each carrying a report
    // (with a stand-in ModemManager, so a report is as large as a cellular device's).
    let carrying = systems.len();
    for (i, (name, health)) in [
        (
            "burrow health reports alone",
            ["--health-interval", "1", "--health-refresh", "0.05"],
        ),
        (
            "burrow keepalives alone",
            ["--health-interval", "0", "--health-refresh", "60"],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut flags = vec!["--keepalive-interval", "20", "--probe-interval", "0"];
        flags.extend(health);
        // Pairs 1 to 7 are taken above (7: the idle session), 10 and 11 by the consoles; each
        // pair and relay directory must be its own, or creating it tears down the one already
        // measured.
        systems.push(burrow_idle(env, 8 + i as u32, name, &flags, 0.0, "").await?);
    }
    let mut connect = Vec::new();
    for s in &systems {
        wait_idle_up(s).await?;
        connect.push(s.pair.counters()?);
    }
    // Let every handshake's last packets pass before the window opens.
    tokio::time::sleep(Duration::from_secs(if args.smoke { 1 } else { 10 })).await;
    let start: Vec<_> = systems
        .iter()
        .map(|s| (s.pair.counters(), probes_run(s), health_reports(s)))
        .collect();
    eprintln!(
        "  idle window of {} s for {} systems",
        window.as_secs(),
        systems.len()
    );
    tokio::time::sleep(window).await;
    let mut measured = Vec::new();
    let mut reports = Vec::new();
    for (s, (before, probes_before, reports_before)) in systems.iter().zip(start) {
        let before = before?;
        let after = s.pair.counters()?;
        let probes = probes_run(s).saturating_sub(probes_before);
        measured.push((after.0 - before.0, after.1 - before.1, probes));
        reports.push(health_reports(s).saturating_sub(reports_before));
    }
    // The health systems give the cost of one report: what a keepalive carrying one costs
    // more than a keepalive alone.
    let per_report = match (
        measured.get(carrying),
        measured.get(carrying + 1),
        reports.get(carrying),
    ) {
        (Some(with), Some(without), Some(&n)) if n > 0 => (
            (with.0 as f64 - without.0 as f64).max(0.0) / n as f64,
            (with.1 as f64 - without.1 as f64).max(0.0) / n as f64,
        ),
        _ => (0.0, 0.0),
    };
    systems.truncate(carrying);
    measured.truncate(carrying);
    // The probe-only system gives the cost of one probe.
    let per_probe = match measured.get(PROBE_ONLY) {
        Some((bytes, packets, probes)) if *probes > 0 => (
            *bytes as f64 / *probes as f64,
            *packets as f64 / *probes as f64,
        ),
        _ => (0.0, 0.0),
    };
    let scale = MONTH / window.as_secs_f64();
    let mut rows = Vec::new();
    let mut idle_device = None;
    let mut connection = None;
    for (i, (s, (bytes, packets, probes))) in systems.iter().zip(measured).enumerate() {
        if i == PROBE_ONLY {
            rows.push(row(
                IDLE_GROUP,
                "burrow: one probe",
                per_probe.0,
                "B",
                Some(format!("{:.1} packets", per_probe.1)),
            ));
            continue;
        }
        // An operator session's own handshake is no part of the device's rekey: such a system
        // counts its device's connection (the first system's, the same agent and relay).
        let own = if s.session_port.is_some() { 0 } else { i };
        let (connect_bytes, connect_packets) = connect.get(own).copied().unwrap_or_default();
        // The window's own probes are counted once, in the probe term.
        // The window's own probes and health reports (a session's first report rides its
        // first keepalive, which may fall in the window) are counted once, in their terms.
        let sent = reports.get(i).copied().unwrap_or(0) as f64;
        let steady_bytes =
            (bytes as f64 - probes as f64 * per_probe.0 - sent * per_report.0).max(0.0);
        let steady_packets =
            (packets as f64 - probes as f64 * per_probe.1 - sent * per_report.1).max(0.0);
        let month_bytes = steady_bytes * scale
            + per_probe.0 * s.probes_per_month
            + per_report.0 * s.reports_per_month
            + connect_bytes as f64 * s.rekeys_per_month;
        let month_packets = steady_packets * scale
            + per_probe.1 * s.probes_per_month
            + per_report.1 * s.reports_per_month
            + connect_packets as f64 * s.rekeys_per_month;
        let mut note = format!("{:.0} packets a month", month_packets);
        if let (Some(device), true) = (idle_device, s.session_port.is_some()) {
            note.push_str(&format!(
                "; {:.2}x the idle device",
                month_bytes / f64::max(device, f64::MIN_POSITIVE)
            ));
        }
        if let (Some(device), Some(_)) = (idle_device, s.name.find(CONSOLE_SYSTEM)) {
            // The same device without the console: the difference is the port log's upload.
            note.push_str(&format!(
                "; the port log's upload: {:+.3} MB a month",
                (month_bytes - device) / 1e6
            ));
        }
        if !s.note.is_empty() {
            note.push_str("; ");
            note.push_str(&s.note);
        }
        rows.push(row(
            IDLE_GROUP,
            &s.name,
            month_bytes / 1e6,
            "MB",
            Some(note),
        ));
        if i == 0 {
            idle_device = Some(month_bytes);
            connection = Some(row(
                IDLE_GROUP,
                "burrow: one health report (riding a keepalive)",
                per_report.0,
                "B",
                Some(format!(
                    "{:.1} packets more; counted every 6 h ({REPORTS_PER_MONTH:.0} a month) in each burrow profile: with a modem, as reported through a stand-in mmcli",
                    per_report.1
                )),
            ));
            let worst = month_bytes + per_report.0 * (REPORTS_PER_MONTH_MAX - s.reports_per_month);
            rows.push(row(
                IDLE_GROUP,
                "burrow, profile standard, a notable change every 30 min (the most reports go)",
                worst / 1e6,
                "MB",
                Some(format!(
                    "{REPORTS_PER_MONTH_MAX:.0} health reports a month instead of {REPORTS_PER_MONTH:.0}"
                )),
            ));
            rows.push(row(
                IDLE_GROUP,
                "burrow: one connection (TCP, key exchange, authentication, forwards)",
                connect_bytes as f64,
                "B",
                Some(format!(
                    "{connect_packets} packets, key exchange {}; counted once a week for the rekey",
                    crate::kex::default_method()
                )),
            ));
        }
    }
    // The idle device and the same device with a session open side by side, then what one of
    // its connections costs.
    if let Some(c) = connection {
        rows.insert(rows.len().min(2), c);
    }
    Ok(rows)
}

/// Whether autossh is here (installed when missing, outside smoke runs).
fn which_autossh(args: &Args) -> anyhow::Result<bool> {
    // autossh prints its version and exits; that it runs at all is what counts.
    let present = || Command::new("autossh").arg("-V").output().is_ok();
    if present() {
        return Ok(true);
    }
    if args.smoke {
        return Ok(false);
    }
    if let Err(e) = crate::env::apt_install(&["autossh"]) {
        eprintln!("burrow-bench: autossh unavailable ({e}); its row is left out");
    }
    Ok(present())
}

/// A tunnel through an emulated link, with what it takes to watch both ends.
struct LinkedSystem {
    link: Link,
    /// The relay-side port that reaches the device's echo and bulk services.
    echo: u16,
    bulk: u16,
    _procs: Vec<Proc>,
    _restarter: Option<tokio::task::JoinHandle<()>>,
}

async fn burrow_linked(
    env: &Env,
    args: &Args,
    b: Backends,
    impairment: Impairment,
    stop: &CancellationToken,
) -> anyhow::Result<(LinkedSystem, std::path::PathBuf, std::path::PathBuf)> {
    let data = env.path("cellular-relay");
    let fingerprint = crate::systems::relay_data(env, &data)?;
    let (bulk, echo) = crate::systems::allow_listen_pair(env, &data)?;
    let relay_port = free_port();
    let relay = crate::systems::start_relay(env, &data, relay_port).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let link = Link::start(
        listener,
        ([127, 0, 0, 1], relay_port).into(),
        impairment,
        stop.clone(),
    )?;
    let status = env.path("cellular-agent.json");
    let mut cmd = Command::new(&env.burrow);
    cmd.args(env.agent_args(&link.addr().to_string(), &fingerprint, &status))
        .args(["--expose", &format!("{bulk}=127.0.0.1:{}", b.bulk)])
        .args(["--expose", &format!("{echo}=127.0.0.1:{}", b.echo)])
        .env("BURROW_LOG", "error");
    if args.smoke {
        cmd.args(["--keepalive-interval", "1", "--keepalive-timeout", "2"]);
    }
    let agent = Proc::spawn(&mut cmd)?;
    wait_port(echo, "burrow relay listener").await?;
    crate::traffic::wait_echo(echo).await?;
    Ok((
        LinkedSystem {
            link,
            echo,
            bulk,
            _procs: vec![relay, agent],
            _restarter: None,
        },
        status,
        data,
    ))
}

/// OpenSSH `ssh -R` with the seed's autossh settings through the link, restarted a second
/// after it exits, as autossh does.
async fn openssh_linked(
    env: &Env,
    args: &Args,
    b: Backends,
    impairment: Impairment,
    stop: &CancellationToken,
) -> anyhow::Result<(LinkedSystem, std::sync::Arc<std::sync::atomic::AtomicU64>)> {
    let (sshd, port) = crate::systems::sshd(env, "sshd-cellular", "").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let link = Link::start(
        listener,
        ([127, 0, 0, 1], port).into(),
        impairment,
        stop.clone(),
    )?;
    let (ri, re) = (free_port(), free_port());
    let alive = if args.smoke { "1" } else { "30" };
    let mut cmd = crate::systems::ssh_base(env, link.addr().port());
    cmd.args(["-N", "-o", "ExitOnForwardFailure=yes"])
        .args(["-o", &format!("ServerAliveInterval={alive}")])
        .args(["-o", "ServerAliveCountMax=3"])
        .args(["-R", &format!("{ri}:127.0.0.1:{}", b.bulk)])
        .args(["-R", &format!("{re}:127.0.0.1:{}", b.echo)])
        .arg(format!("{}@127.0.0.1", env.user));
    let exits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let exits2 = exits.clone();
    let stop2 = stop.clone();
    let restarter = tokio::spawn(async move {
        while !stop2.is_cancelled() {
            let Ok(mut child) = tokio::process::Command::from(clone_command(&cmd))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
            else {
                return;
            };
            tokio::select! {
                _ = child.wait() => {
                    exits2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ = stop2.cancelled() => return,
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    wait_port(re, "ssh -R").await?;
    crate::traffic::wait_echo(re).await?;
    Ok((
        LinkedSystem {
            link,
            echo: re,
            bulk: ri,
            _procs: vec![sshd],
            _restarter: Some(restarter),
        },
        exits,
    ))
}

fn clone_command(cmd: &Command) -> Command {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    c
}

/// Whether a 64-byte echo through `port` comes back within a second.
async fn echo_works(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.write_all(&[7u8; 64]).await?;
        let mut back = [0u8; 64];
        tcp.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), attempt).await,
        Ok(Ok(()))
    )
}

fn burrow_relay_says_online(env: &Env, data: &std::path::Path) -> bool {
    let Some(d) = data.to_str() else {
        return false;
    };
    env.burrow_cli(&["relay", "--data-dir", d, "device", "ls", "--json"])
        .ok()
        .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
        .and_then(|v| v.as_array().cloned())
        .is_some_and(|devices| devices.iter().any(|d| d["online"] == true))
}

/// The cellular table: both systems through their own emulated link, side by side.
async fn cellular(env: &Env, args: &Args) -> anyhow::Result<Vec<Row>> {
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let b = Backends {
        bulk: crate::traffic::bulk_server().await?,
        echo: crate::traffic::echo_server().await?,
    };
    let impairment = Impairment::cellular();
    let (burrow, status, data) = burrow_linked(env, args, b, impairment.clone(), &stop).await?;
    let (openssh, ssh_exits) = openssh_linked(env, args, b, impairment, &stop).await?;
    let mut rows = Vec::new();
    let group_t = "cellular link: throughput device→operator (2 Mbit/s, 300 ± 100 ms, 3 % loss)";
    let group_l = "cellular link: latency p50 (64 B round trip)";
    let seconds = if args.smoke { 1 } else { 10 };
    let samples = if args.smoke { 5 } else { 30 };
    for (name, sys) in [("burrow", &burrow), ("OpenSSH ssh -R", &openssh)] {
        let mbps = crate::traffic::throughput(sys.bulk, seconds, 1, true).await? * 1000.0;
        rows.push(row(group_t, name, mbps, "Mbit/s", None));
        let (p50, _) = crate::traffic::latency(sys.echo, samples).await?;
        rows.push(row(group_l, name, p50 / 1000.0, "ms", None));
        eprintln!(
            "    {name}: {mbps:.2} Mbit/s, 64 B round trip {:.0} ms",
            p50 / 1000.0
        );
    }

    // Blackout of an idle device: both links go dark at once.
    let cap = Duration::from_secs(if args.smoke { 20 } else { 240 });
    let exits_before = ssh_exits.load(std::sync::atomic::Ordering::Relaxed);
    burrow.link.set(|i| i.blackout = true);
    openssh.link.set(|i| i.blackout = true);
    let dark = Instant::now();
    let (mut agent_saw, mut relay_saw, mut client_saw, mut sshd_saw) = (None, None, None, None);
    while dark.elapsed() < cap
        && (agent_saw.is_none()
            || relay_saw.is_none()
            || client_saw.is_none()
            || sshd_saw.is_none())
    {
        let t = dark.elapsed().as_secs_f64();
        if agent_saw.is_none() && !agent_up(&status) {
            agent_saw = Some(t);
        }
        if relay_saw.is_none() && !burrow_relay_says_online(env, &data) {
            relay_saw = Some(t);
        }
        if client_saw.is_none()
            && ssh_exits.load(std::sync::atomic::Ordering::Relaxed) > exits_before
        {
            client_saw = Some(t);
        }
        if sshd_saw.is_none()
            && tokio::net::TcpStream::connect(("127.0.0.1", openssh.echo))
                .await
                .is_err()
        {
            sshd_saw = Some(t);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    burrow.link.set(|i| i.blackout = false);
    openssh.link.set(|i| i.blackout = false);
    let light = Instant::now();
    let (mut burrow_back, mut openssh_back) = (None, None);
    while light.elapsed() < cap && (burrow_back.is_none() || openssh_back.is_none()) {
        if burrow_back.is_none() && echo_works(burrow.echo).await {
            burrow_back = Some(light.elapsed().as_secs_f64());
        }
        if openssh_back.is_none() && echo_works(openssh.echo).await {
            openssh_back = Some(light.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let group_n = "cellular link: time to notice a blackout (idle device)";
    let not_within = format!("not within {} s", cap.as_secs());
    let push = |rows: &mut Vec<Row>, group: &str, name: &str, t: Option<f64>| match t {
        Some(t) => rows.push(row(group, name, t, "s", None)),
        None => rows.push(row(
            group,
            name,
            cap.as_secs_f64(),
            "s",
            Some(not_within.clone()),
        )),
    };
    push(
        &mut rows,
        group_n,
        "burrow agent (status leaves up)",
        agent_saw,
    );
    push(
        &mut rows,
        group_n,
        "burrow relay (device offline)",
        relay_saw,
    );
    push(
        &mut rows,
        group_n,
        "OpenSSH client (ssh exits, ServerAliveInterval 30 × 3)",
        client_saw,
    );
    push(
        &mut rows,
        group_n,
        "OpenSSH sshd (forwarded port closed)",
        sshd_saw,
    );
    let group_b = "cellular link: endpoint back after the link returns";
    push(&mut rows, group_b, "burrow", burrow_back);
    push(
        &mut rows,
        group_b,
        "OpenSSH ssh -R, restarted like autossh",
        openssh_back,
    );
    Ok(rows)
}

/// Both cellular measurements; the idle window runs while the link emulator tests go on.
pub async fn run_all(env: &Env, args: &Args) -> anyhow::Result<Vec<Row>> {
    let (idle, linked) = tokio::join!(idle_cost(env, args), cellular(env, args));
    let mut rows = linked?;
    rows.extend(idle?);
    Ok(rows)
}
