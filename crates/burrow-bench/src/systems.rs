//! The systems compared, each started with two services behind it (a bulk-transfer server and an
//! echo server) and giving back the two ports a client uses on loopback.

use std::process::Command;

use anyhow::{Context, bail};

use crate::env::{Env, Proc, free_port, wait_port};

/// The services behind every tunnel.
#[derive(Clone, Copy)]
pub struct Backends {
    pub bulk: u16,
    pub echo: u16,
}

/// One way to reach the services.
pub struct Path {
    pub system: String,
    pub bulk: u16,
    pub echo: u16,
    /// Keeps the tunnel alive while the path is in use.
    pub _procs: Vec<Proc>,
}

/// The cipher burrow's agent and relay agree on by default, used for OpenSSH too.
pub const SAME_CIPHER: &str = "aes256-gcm@openssh.com";

/// Options every stock ssh client in the bench takes: the operator key (every test sshd takes
/// it too), no host key prompts.
pub fn ssh_options(env: &Env, cmd: &mut Command) {
    cmd.args(["-F", "/dev/null", "-i"])
        .arg(&env.op_key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ]);
}

/// The stock ssh client with [`ssh_options`], to `port` on loopback.
pub fn ssh_base(env: &Env, port: u16) -> Command {
    let mut c = Command::new("ssh");
    ssh_options(env, &mut c);
    c.args(["-p", &port.to_string()]);
    c
}

pub fn direct(b: Backends) -> Path {
    Path {
        system: "direct TCP".into(),
        bulk: b.bulk,
        echo: b.echo,
        _procs: Vec::new(),
    }
}

/// A host key and an `sshd_config` for a test sshd on `listen:port` with `extra` lines.
pub fn sshd_config(
    env: &Env,
    name: &str,
    listen: &str,
    port: u16,
    extra: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let dir = env.path(name);
    std::fs::create_dir_all(&dir)?;
    let host_key = dir.join("host_key");
    if !host_key.exists() {
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .status()?;
        if !ok.success() {
            bail!("ssh-keygen failed");
        }
    }
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress {listen}\nHostKey {}\nAuthorizedKeysFile {} {}\nPidFile {}\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             AllowTcpForwarding yes\nMaxStartups 2000:30:4000\nMaxSessions 100\nLogLevel ERROR\n{extra}\n",
            host_key.display(),
            env.public_key().display(),
            env.op_public_key().display(),
            dir.join("sshd.pid").display(),
        ),
    )?;
    Ok(config)
}

/// A test sshd on loopback with `extra` config lines; returns it and its port.
pub async fn sshd(env: &Env, name: &str, extra: &str) -> anyhow::Result<(Proc, u16)> {
    let port = free_port();
    let config = sshd_config(env, name, "127.0.0.1", port, extra)?;
    let proc = Proc::spawn(Command::new(&env.sshd).arg("-D").arg("-f").arg(&config))?;
    wait_port(port, "sshd").await?;
    Ok((proc, port))
}

/// `-c CIPHER` when a cipher is chosen, and how a system's name says which.
fn cipher_args(cipher: Option<&str>) -> (Vec<String>, String) {
    match cipher {
        Some(c) => (
            vec!["-c".into(), c.into()],
            c.trim_end_matches("@openssh.com").to_string(),
        ),
        None => (Vec::new(), "default cipher".into()),
    }
}

/// The seed's exposure path: `ssh -R` from the device to a stock sshd, clients connect to the
/// ports sshd opens. With `cipher`, that cipher; otherwise OpenSSH's own choice.
pub async fn openssh(env: &Env, b: Backends, cipher: Option<&str>) -> anyhow::Result<Path> {
    Ok(openssh_with_sshd(env, b, cipher).await?.0)
}

/// [`openssh`], and the port of its sshd.
async fn openssh_with_sshd(
    env: &Env,
    b: Backends,
    cipher: Option<&str>,
) -> anyhow::Result<(Path, u16)> {
    // A directory of its own per sshd: the traffic paths all run at once.
    static SSHDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SSHDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (sshd, port) = sshd(env, &format!("sshd-traffic-{n}"), "").await?;
    let (ri, re) = (free_port(), free_port());
    let (c, label) = cipher_args(cipher);
    let client = Proc::spawn(
        ssh_base(env, port)
            .args(["-N", "-o", "ExitOnForwardFailure=yes"])
            .args(&c)
            .args([
                "-R",
                &format!("{ri}:127.0.0.1:{}", b.bulk),
                "-R",
                &format!("{re}:127.0.0.1:{}", b.echo),
            ])
            .arg(format!("{}@127.0.0.1", env.user)),
    )?;
    wait_port(re, "ssh -R").await?;
    crate::traffic::wait_echo(re).await?;
    let path = Path {
        system: format!("OpenSSH ssh -R ({label})"),
        bulk: ri,
        echo: re,
        _procs: vec![sshd, client],
    };
    Ok((path, port))
}

/// The seed's operator path: the device's `ssh -R` to a stock sshd, and the operator's
/// `ssh -L` to those ports through the same sshd: two encrypted hops, as burrow's operator
/// path has (device to relay, relay to operator).
pub async fn openssh_operator(
    env: &Env,
    b: Backends,
    cipher: Option<&str>,
) -> anyhow::Result<Path> {
    let (mut exposure, sshd_port) = openssh_with_sshd(env, b, cipher).await?;
    let (li, le) = (free_port(), free_port());
    let (c, label) = cipher_args(cipher);
    let operator = Proc::spawn(
        ssh_base(env, sshd_port)
            .args(["-N", "-o", "ExitOnForwardFailure=yes"])
            .args(&c)
            .args([
                "-L",
                &format!("{li}:127.0.0.1:{}", exposure.bulk),
                "-L",
                &format!("{le}:127.0.0.1:{}", exposure.echo),
            ])
            .arg(format!("{}@127.0.0.1", env.user)),
    )?;
    wait_port(le, "ssh -L").await?;
    crate::traffic::wait_echo(le).await?;
    exposure._procs.push(operator);
    Ok(Path {
        system: format!("OpenSSH operator path, ssh -L to ssh -R ({label})"),
        bulk: li,
        echo: le,
        _procs: exposure._procs,
    })
}

/// Private and public key from `rathole --genkey`.
fn rathole_keys(bin: &std::path::Path) -> anyhow::Result<(String, String)> {
    let out = Command::new(bin).arg("--genkey").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut private = None;
    let mut public = None;
    while let Some(l) = lines.next() {
        if l.starts_with("Private Key") {
            private = lines.next().map(str::to_string);
        } else if l.starts_with("Public Key") {
            public = lines.next().map(str::to_string);
        }
    }
    Ok((
        private.context("rathole --genkey: no private key")?,
        public.context("rathole --genkey: no public key")?,
    ))
}

pub async fn rathole(env: &Env, b: Backends, noise: bool) -> anyhow::Result<Option<Path>> {
    let Some(bin) = &env.rathole else {
        return Ok(None);
    };
    let control = free_port();
    let (ri, re) = (free_port(), free_port());
    let (transport_server, transport_client) = if noise {
        let (private, public) = rathole_keys(bin)?;
        (
            format!(
                "[server.transport]\ntype = \"noise\"\n[server.transport.noise]\nlocal_private_key = \"{private}\"\n"
            ),
            format!(
                "[client.transport]\ntype = \"noise\"\n[client.transport.noise]\nremote_public_key = \"{public}\"\n"
            ),
        )
    } else {
        (
            "[server.transport]\ntype = \"tcp\"\n".to_string(),
            "[client.transport]\ntype = \"tcp\"\n".to_string(),
        )
    };
    let kind = if noise { "noise" } else { "plain" };
    let server = env.path(&format!("rathole-server-{kind}.toml"));
    let client = env.path(&format!("rathole-client-{kind}.toml"));
    std::fs::write(
        &server,
        format!(
            "[server]\nbind_addr = \"127.0.0.1:{control}\"\n{transport_server}\
             [server.services.bulk]\ntoken = \"bench\"\nbind_addr = \"127.0.0.1:{ri}\"\n\
             [server.services.echo]\ntoken = \"bench\"\nbind_addr = \"127.0.0.1:{re}\"\n"
        ),
    )?;
    std::fs::write(
        &client,
        format!(
            "[client]\nremote_addr = \"127.0.0.1:{control}\"\n{transport_client}\
             [client.services.bulk]\ntoken = \"bench\"\nlocal_addr = \"127.0.0.1:{}\"\n\
             [client.services.echo]\ntoken = \"bench\"\nlocal_addr = \"127.0.0.1:{}\"\n",
            b.bulk, b.echo
        ),
    )?;
    let s = Proc::spawn(Command::new(bin).arg("--server").arg(&server))?;
    wait_port(control, "rathole server").await?;
    let c = Proc::spawn(Command::new(bin).arg("--client").arg(&client))?;
    wait_port(re, "rathole service").await?;
    // The service port listens before the client's data channel is ready: wait for an echo.
    crate::traffic::wait_echo(re).await?;
    Ok(Some(Path {
        system: format!("rathole ({kind})"),
        bulk: ri,
        echo: re,
        _procs: vec![s, c],
    }))
}

/// A burrow relay with device `bench-dev` (agent running) and operator `bench-op`.
pub struct BurrowSite {
    pub _relay: Proc,
    pub relay_port: u16,
    pub data_dir: std::path::PathBuf,
    pub _agent: Proc,
    /// Endpoint ports on the device, also real listeners on the relay (`allow-listen`).
    pub bulk: u16,
    pub echo: u16,
}

/// Starts `burrow relay` with its default flags on `port` with a data dir under the bench dir.
pub async fn start_relay(env: &Env, data_dir: &std::path::Path, port: u16) -> anyhow::Result<Proc> {
    start_relay_with(env, data_dir, port, &[]).await
}

/// [`start_relay`] with `flags` added.
pub async fn start_relay_with(
    env: &Env,
    data_dir: &std::path::Path,
    port: u16,
    flags: &[&str],
) -> anyhow::Result<Proc> {
    let relay = Proc::spawn(
        Command::new(&env.burrow)
            .args(["relay", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(flags)
            .env("BURROW_LOG", "error"),
    )?;
    wait_port(port, "burrow relay").await?;
    Ok(relay)
}

/// Two free ports that `bench-dev` may listen on (`allow-listen`): bulk and echo endpoints.
pub fn allow_listen_pair(env: &Env, dir: &std::path::Path) -> anyhow::Result<(u16, u16)> {
    let d = dir.to_str().context("path")?;
    let (bulk, echo) = (free_port(), free_port());
    for p in [bulk, echo] {
        env.burrow_cli(&[
            "relay",
            "--data-dir",
            d,
            "device",
            "allow-listen",
            "bench-dev",
            &p.to_string(),
        ])?;
    }
    Ok((bulk, echo))
}

/// A relay data directory with device `bench-dev` registered; returns its host key fingerprint.
pub fn relay_data(env: &Env, dir: &std::path::Path) -> anyhow::Result<String> {
    let d = dir.to_str().context("path")?;
    let pubkey = env.public_key();
    let pubkey = pubkey.to_str().context("path")?;
    env.burrow_cli(&["relay", "--data-dir", d, "init"])?;
    env.burrow_cli(&[
        "relay",
        "--data-dir",
        d,
        "device",
        "add",
        "bench-dev",
        "--pubkey",
        pubkey,
    ])?;
    Ok(env
        .burrow_cli(&["relay", "--data-dir", d, "fingerprint"])?
        .trim()
        .to_string())
}

pub async fn burrow_site(env: &Env, name: &str, b: Backends) -> anyhow::Result<BurrowSite> {
    let data_dir = env.path(name);
    let fingerprint = relay_data(env, &data_dir)?;
    let d = data_dir.to_str().context("path")?;
    let pubkey = env.op_public_key();
    let pubkey = pubkey.to_str().context("path")?;
    env.burrow_cli(&[
        "relay",
        "--data-dir",
        d,
        "operator",
        "add",
        "bench-op",
        "--pubkey",
        pubkey,
    ])?;
    let (bulk, echo) = allow_listen_pair(env, &data_dir)?;
    let relay_port = free_port();
    let relay = start_relay(env, &data_dir, relay_port).await?;
    let status_file = env.path(&format!("{name}-agent.json"));
    let exposes = [
        format!("{bulk}=127.0.0.1:{}", b.bulk),
        format!("{echo}=127.0.0.1:{}", b.echo),
    ];
    let agent = env.agent(
        relay_port,
        "bench-dev",
        &fingerprint,
        &["--expose", &exposes[0], "--expose", &exposes[1]],
        &status_file,
    )?;
    wait_port(echo, "burrow relay listener").await?;
    crate::traffic::wait_echo(echo).await?;
    Ok(BurrowSite {
        _relay: relay,
        relay_port,
        data_dir,
        _agent: agent,
        bulk,
        echo,
    })
}

/// The exposure path: clients connect to the relay's real listener (`allow-listen`).
pub fn burrow_exposure(site: &BurrowSite) -> Path {
    Path {
        system: "burrow exposure (allow-listen)".into(),
        bulk: site.bulk,
        echo: site.echo,
        _procs: Vec::new(),
    }
}

/// The operator path: stock `ssh -L` through the relay to the device's endpoints (direct-tcpip,
/// as `ssh -W` and `ssh -J` use), with `cipher` on the operator's hop or OpenSSH's own choice.
pub async fn burrow_operator(
    env: &Env,
    site: &BurrowSite,
    cipher: Option<&str>,
) -> anyhow::Result<Path> {
    let (li, le) = (free_port(), free_port());
    let (c, label) = cipher_args(cipher);
    let ssh = Proc::spawn(
        ssh_base(env, site.relay_port)
            .args(["-N", "-o", "ExitOnForwardFailure=yes"])
            .args(&c)
            .args([
                "-L",
                &format!("{li}:bench-dev:{}", site.bulk),
                "-L",
                &format!("{le}:bench-dev:{}", site.echo),
            ])
            .arg("bench-op@127.0.0.1"),
    )?;
    wait_port(le, "ssh -L").await?;
    crate::traffic::wait_echo(le).await?;
    Ok(Path {
        system: format!("burrow operator, ssh -L via relay ({label})"),
        bulk: li,
        echo: le,
        _procs: vec![ssh],
    })
}
