//! Device-side measurements: idle sessions held by one relay (memory per device), reconnect
//! after a device reboot, a reconnect storm after a relay restart, and the agent's footprint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use burrow_io::keys::PrivateKey;

use crate::Args;
use crate::env::{Env, Proc, anon_kib, free_port, memory_kib, process_tree};
use crate::fleet::{Fleet, register_devices};
use crate::report::Results;
use crate::systems::{BurrowSite, ssh_base, start_relay};

async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Idle devices per relay, then a reconnect storm after a relay restart, for each size.
async fn burrow_idle_and_storm(
    env: &Env,
    n: usize,
    per_address: usize,
    key: Arc<PrivateKey>,
    results: &mut Results,
) -> anyhow::Result<()> {
    let data_dir = env.path(&format!("relay-idle-{n}"));
    register_devices(&data_dir, n, &key)?;
    let port = free_port();
    let relay = start_relay(env, &data_dir, port).await?;
    settle().await;
    let (rss0, pss0) = memory_kib(relay.pid());
    let fleet = Fleet::start(port, n, per_address, key.clone());
    let first = fleet.wait_all(n, Duration::from_secs(600)).await?;
    eprintln!(
        "    {n} devices connected from scratch in {:.1} s",
        first.as_secs_f64()
    );
    settle().await;
    let (rss1, pss1) = memory_kib(relay.pid());
    let group = format!("idle devices held by one relay ({n})");
    results.push(
        &group,
        "burrow relay: RSS per device",
        kib_per(rss1, rss0, n),
        "KiB",
    );
    results.push(
        &group,
        "burrow relay: PSS per device",
        kib_per(pss1, pss0, n),
        "KiB",
    );
    results.push(
        &group,
        "burrow relay: total RSS",
        rss1 as f64 / 1024.0,
        "MiB",
    );

    // Reconnect storm: the relay dies and comes back; every device must be back. The clock
    // starts once the fleet has seen the relay go (every session down), at the restart.
    relay.signal(rustix::process::Signal::KILL);
    drop(relay);
    fleet.wait_down(Duration::from_secs(120)).await?;
    let restarted = Instant::now();
    let relay = start_relay(env, &data_dir, port).await?;
    eprintln!(
        "    relay listening again {:.2} s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    // Devices notice the loss (keepalive or reset) and come back with jittered backoff.
    fleet.wait_all(n, Duration::from_secs(600)).await?;
    results.push_note(
        &format!("reconnect storm after a relay restart ({n} devices)"),
        "burrow: all endpoints back",
        restarted.elapsed().as_secs_f64(),
        "s",
        &format!("key exchange {}", crate::kex::default_method()),
    );
    drop(fleet);
    drop(relay);
    Ok(())
}

fn kib_per(after: u64, before: u64, n: usize) -> f64 {
    after.saturating_sub(before) as f64 / n.max(1) as f64
}

/// sshd with N `ssh -N -R` clients: memory of the sshd process tree per device.
async fn sshd_idle(env: &Env, n: usize, results: &mut Results) -> anyhow::Result<()> {
    let (sshd, port) = crate::systems::sshd(env, "sshd-idle", "").await?;
    settle().await;
    let before: (u64, u64) = tree_memory(sshd.pid());
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(Proc::spawn(
            ssh_base(env, port)
                .args([
                    "-N",
                    "-c",
                    crate::systems::SAME_CIPHER,
                    "-R",
                    "0:127.0.0.1:22",
                ])
                .arg(format!("{}@127.0.0.1", env.user)),
        )?);
    }
    // Each client has one privileged and one unprivileged sshd child once authenticated.
    let deadline = Instant::now() + Duration::from_secs(120);
    while process_tree(sshd.pid()).len() < 1 + 2 * n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settle().await;
    let after = tree_memory(sshd.pid());
    let group = format!("idle devices held by OpenSSH sshd ({n})");
    results.push(
        &group,
        "sshd: RSS per device (sum over its processes)",
        kib_per(after.0, before.0, n),
        "KiB",
    );
    results.push(
        &group,
        "sshd: PSS per device",
        kib_per(after.1, before.1, n),
        "KiB",
    );
    drop(clients);
    drop(sshd);
    Ok(())
}

fn tree_memory(pid: u32) -> (u64, u64) {
    process_tree(pid)
        .into_iter()
        .map(memory_kib)
        .fold((0, 0), |(r, p), (r2, p2)| (r + r2, p + p2))
}

/// Time until an endpoint answers again after the device's old session froze and a new one
/// started: burrow (takeover) against sshd with default settings and with ClientAlive 15x3.
async fn reconnect_after_reboot(
    env: &Env,
    args: &Args,
    site: &BurrowSite,
    results: &mut Results,
) -> anyhow::Result<()> {
    let group = "reconnect after a device reboot (old session frozen)";
    let echo = crate::traffic::echo_server().await?;

    // burrow: a second agent process for the same device takes over from the frozen one.
    let fingerprint = env
        .burrow_cli(&[
            "relay",
            "--data-dir",
            site.data_dir.to_str().context("path")?,
            "fingerprint",
        ])?
        .trim()
        .to_string();
    let pubkey = env.key_for("bench-reboot")?.with_extension("pub");
    let d = site.data_dir.to_str().context("path")?;
    let listen = free_port();
    env.burrow_cli(&[
        "relay",
        "--data-dir",
        d,
        "device",
        "add",
        "bench-reboot",
        "--pubkey",
        pubkey.to_str().context("path")?,
    ])?;
    env.burrow_cli(&[
        "relay",
        "--data-dir",
        d,
        "device",
        "allow-listen",
        "bench-reboot",
        &listen.to_string(),
    ])?;
    let expose = format!("{listen}=127.0.0.1:{echo}");
    let agent = |n: u32| {
        let status = env.path(&format!("agent-reboot-{n}.json"));
        env.agent(
            site.relay_port,
            "bench-reboot",
            &fingerprint,
            &["--expose", &expose],
            &status,
        )
    };
    let old = agent(1)?;
    crate::traffic::wait_echo(listen).await?;
    old.signal(rustix::process::Signal::STOP);
    let started = Instant::now();
    let new = agent(2)?;
    answers_within(listen, Duration::from_secs(args.reconnect_cap)).await?;
    results.push(
        group,
        "burrow (takeover)",
        started.elapsed().as_secs_f64(),
        "s",
    );
    drop(new);
    drop(old);

    for (label, extra) in [
        ("OpenSSH sshd, default settings", ""),
        (
            "OpenSSH sshd, ClientAliveInterval 15, CountMax 3",
            "ClientAliveInterval 15\nClientAliveCountMax 3",
        ),
    ] {
        let (sshd, port) =
            crate::systems::sshd(env, &format!("sshd-reboot-{}", extra.len()), extra).await?;
        let remote = free_port();
        let forward = format!("{remote}:127.0.0.1:{echo}");
        let device = || {
            Proc::spawn(
                ssh_base(env, port)
                    .args(["-N", "-o", "ExitOnForwardFailure=yes", "-R", &forward])
                    .arg(format!("{}@127.0.0.1", env.user)),
            )
        };
        let old = device()?;
        crate::traffic::wait_echo(remote).await?;
        old.signal(rustix::process::Signal::STOP);
        let started = Instant::now();
        let cap = Duration::from_secs(args.reconnect_cap);
        // As autossh would: start ssh again each second until its forward binds.
        let mut current = device()?;
        let mut answered = false;
        while started.elapsed() < cap {
            if answers_within(remote, Duration::from_millis(200))
                .await
                .is_ok()
            {
                answered = true;
                break;
            }
            if let Ok(Some(_)) = current.0.try_wait() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                current = device()?;
            }
        }
        if answered {
            results.push(group, label, started.elapsed().as_secs_f64(), "s");
        } else {
            results.push_note(
                group,
                label,
                cap.as_secs_f64(),
                "s",
                "not back within the cap (lower bound)",
            );
        }
        drop(current);
        drop(old);
        drop(sshd);
    }
    Ok(())
}

async fn answers_within(port: u16, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let probe = async {
            let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            tcp.write_all(b"?").await?;
            let mut b = [0u8; 1];
            tcp.read_exact(&mut b).await?;
            Ok::<(), std::io::Error>(())
        };
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(500), probe).await {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("port {port} did not answer within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// RSS of an idle agent with one endpoint and one console, and the binary's size.
pub async fn agent_footprint(
    env: &Env,
    site: &BurrowSite,
    results: &mut Results,
) -> anyhow::Result<()> {
    let d = site.data_dir.to_str().context("path")?;
    let pubkey = env.key_for("bench-idle")?.with_extension("pub");
    env.burrow_cli(&[
        "relay",
        "--data-dir",
        d,
        "device",
        "add",
        "bench-idle",
        "--pubkey",
        pubkey.to_str().context("path")?,
    ])?;
    let fingerprint = env
        .burrow_cli(&["relay", "--data-dir", d, "fingerprint"])?
        .trim()
        .to_string();
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let tty = ptsname(&master, Vec::new())?.to_string_lossy().into_owned();
    let status = env.path("agent-idle.json");
    let console = format!("{tty}@9600");
    let agent = env.agent(
        site.relay_port,
        "bench-idle",
        &fingerprint,
        &["--expose", "22", "--console", &console],
        &status,
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&status)
        .unwrap_or_default()
        .contains("\"up\"")
    {
        if Instant::now() > deadline {
            bail!("footprint agent did not come up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    settle().await;
    let (rss, _) = memory_kib(agent.pid());
    results.push(
        "agent footprint",
        "idle agent RSS (one endpoint, one console)",
        rss as f64 / 1024.0,
        "MiB",
    );
    // What of it is the agent's own: most of the RSS is pages of the binary, shared with
    // every other burrow process and given back by the kernel under pressure.
    if let Some(anon) = anon_kib(agent.pid()) {
        results.push(
            "agent footprint",
            "idle agent anonymous memory (heap and stacks, of that RSS)",
            anon as f64 / 1024.0,
            "MiB",
        );
    }
    let size = std::fs::metadata(&env.burrow)?.len();
    results.push(
        "agent footprint",
        "burrow binary size (release profile strips symbols)",
        size as f64 / (1024.0 * 1024.0),
        "MiB",
    );
    drop(agent);
    drop(master);
    Ok(())
}

pub async fn run_all(env: &Env, args: &Args, results: &mut Results) -> anyhow::Result<()> {
    let key = Arc::new(burrow_io::keys::load_private_key(&env.key)?);
    for &n in &args.devices {
        eprintln!("  {n} idle burrow devices, then a relay restart");
        burrow_idle_and_storm(env, n, args.devices_per_address, key.clone(), results).await?;
    }
    eprintln!("  {} idle sshd devices", args.sshd_devices);
    sshd_idle(env, args.sshd_devices, results).await?;
    eprintln!("  reconnect after a device reboot");
    let echo = crate::traffic::echo_server().await?;
    let site = crate::systems::burrow_site(
        env,
        "relay-reboot",
        crate::systems::Backends { bulk: echo, echo },
    )
    .await?;
    reconnect_after_reboot(env, args, &site, results).await?;
    Ok(())
}
