//! Hostile peers against a release relay with its default flags: how much its resident memory
//! grows under each attack of the hostile-peer suite (clients that never read, a stalled key
//! exchange, one-byte packets), and how much of it is still held once they are gone.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use burrow_ssh::auth::ClientKey;
use burrow_ssh::channel::{self, GlobalRequest};
use burrow_ssh::raw_peer::{RawPeer, keepalive_request};
use burrow_ssh::session::Event;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::Args;
use crate::env::{Env, Proc, free_port, memory_kib, wait_port};
use crate::report::Results;

const GROUP: &str = "relay memory under hostile peers (default flags)";
const WITHIN: Duration = Duration::from_secs(30);

/// A relay with its defaults, device `bench-dev` (an agent whose port 80 sends without end),
/// device `bench-silent` and operator `bench-attacker`, each with a key of its own.
struct Site {
    relay: Proc,
    addr: SocketAddr,
    _agent: Proc,
    attacker: std::path::PathBuf,
    silent: std::path::PathBuf,
}

fn keygen(env: &Env, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let key = env.path(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()?;
    anyhow::ensure!(status.success(), "ssh-keygen failed");
    Ok(key)
}

/// A TCP service that sends without end to whoever connects.
async fn endless_source() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![b'x'; 64 * 1024];
                while tcp.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    Ok(port)
}

async fn site(env: &Env) -> anyhow::Result<Site> {
    let data = env.path("relay-attacks");
    let d = data.to_str().context("path")?;
    env.burrow_cli(&["relay", "--data-dir", d, "init"])?;
    let attacker = keygen(env, "attacker_key")?;
    let silent = keygen(env, "silent_key")?;
    let device_pub = env.public_key();
    for (kind, name, key) in [
        ("device", "bench-dev", device_pub.clone()),
        ("device", "bench-silent", silent.with_extension("pub")),
        ("operator", "bench-attacker", attacker.with_extension("pub")),
    ] {
        let mut cli = vec![
            "relay",
            "--data-dir",
            d,
            kind,
            "add",
            name,
            "--pubkey",
            key.to_str().context("path")?,
        ];
        if kind == "operator" {
            cli.extend(["--allow", "*"]);
        }
        env.burrow_cli(&cli)?;
    }
    let fingerprint = env
        .burrow_cli(&["relay", "--data-dir", d, "fingerprint"])?
        .trim()
        .to_string();
    let port = free_port();
    let relay = Proc::spawn(
        Command::new(&env.burrow)
            .args(["relay", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data)
            .env("BURROW_LOG", "error"),
    )?;
    wait_port(port, "burrow relay").await?;
    let source = endless_source().await?;
    let status = env.path("agent-attacks.json");
    let agent = env.agent(
        port,
        "bench-dev",
        &fingerprint,
        &["--expose", &format!("80=127.0.0.1:{source}")],
        &status,
    )?;
    let site = Site {
        relay,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        _agent: agent,
        attacker,
        silent,
    };
    // The agent's endpoint is up once a stream to it opens.
    let deadline = Instant::now() + WITHIN;
    loop {
        let mut op = site.operator().await?;
        if op
            .open_stream("bench-dev", 80, Duration::from_secs(5))
            .await
            .is_ok()
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent's endpoint never came up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(site)
}

impl Site {
    fn rss_mib(&self) -> f64 {
        memory_kib(self.relay.pid()).0 as f64 / 1024.0
    }

    async fn operator(&self) -> anyhow::Result<RawPeer> {
        Ok(RawPeer::logged_in(
            self.addr,
            "bench-attacker",
            ClientKey::read(&self.attacker).map_err(anyhow::Error::msg)?,
            u32::MAX,
            WITHIN,
        )
        .await?)
    }

    /// Runs `attack` while sampling the relay's memory; the growth at its peak, in MiB.
    async fn growth<F: std::future::Future<Output = anyhow::Result<()>>>(
        &self,
        attack: F,
    ) -> anyhow::Result<f64> {
        let before = self.rss_mib();
        let pid = self.relay.pid();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let sampler = std::thread::spawn(move || {
            let mut peak = 0u64;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(memory_kib(pid).0);
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        let result = attack.await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak = sampler.join().unwrap_or(0) as f64 / 1024.0;
        result?;
        Ok((peak - before).max(0.0))
    }
}

pub async fn run_all(env: &Env, args: &Args, results: &mut Results) -> anyhow::Result<()> {
    let seconds = if args.smoke { 2 } else { 10 };
    let flood = Duration::from_secs(seconds);
    let site = site(env).await?;
    let rest = site.rss_mib();
    results.push(GROUP, "burrow relay: RSS at rest", rest, "MiB");

    // 1. Before authentication: 64 peers from one address (the per-address cap) that answer
    // nothing and send messages each answered (UNIMPLEMENTED), never reading.
    let peers = if args.smoke { 4 } else { 64 };
    let grown = site
        .growth(async {
            let mut floods = Vec::new();
            for _ in 0..peers {
                let mut peer = RawPeer::key_exchanged(site.addr, WITHIN).await?;
                floods.push(tokio::spawn(async move {
                    let _ = peer.flood(flood, |n| vec![200, n as u8]).await;
                    peer
                }));
            }
            for f in floods {
                drop(f.await?);
            }
            Ok(())
        })
        .await?;
    results.push(
        GROUP,
        &format!(
            "{peers} unauthenticated peers flooding answered messages, {seconds} s: RSS growth"
        ),
        grown,
        "MiB",
    );

    // 1. After authentication: keepalives wanting replies, never read.
    let grown = site
        .growth(async {
            let mut peer = site.operator().await?;
            let request = keepalive_request();
            peer.flood(flood, |_| request.clone()).await?;
            Ok(())
        })
        .await?;
    results.push(
        GROUP,
        &format!("a logged-in keepalive flood, {seconds} s: RSS growth"),
        grown,
        "MiB",
    );

    // 2. A stream from a device that sends without end, and a key exchange started and left.
    let grown = site
        .growth(async {
            let mut op = site.operator().await?;
            op.open_stream("bench-dev", 80, WITHIN).await?;
            op.session().transport().rekey();
            op.write_some()?;
            tokio::time::sleep(flood).await;
            Ok(())
        })
        .await?;
    results.push(
        GROUP,
        &format!("a stalled key exchange with a stream open, {seconds} s: RSS growth"),
        grown,
        "MiB",
    );

    // 3. One-byte packets toward a device that gives no window, one per read at the relay.
    let grown = site
        .growth(async {
            let mut device = RawPeer::logged_in(
                site.addr,
                "bench-silent",
                ClientKey::read(&site.silent).map_err(anyhow::Error::msg)?,
                0,
                WITHIN,
            )
            .await?;
            let forward = GlobalRequest::TcpipForward {
                address: "localhost".into(),
                port: 22,
            };
            device.session().connection().global_request(&forward, true);
            device
                .run_until(WITHIN, |_, ev| {
                    ev.iter()
                        .any(|e| matches!(e, Event::Connection(channel::Event::GlobalReply { .. })))
                })
                .await?;
            let accept = tokio::spawn(async move {
                let mut accepted = false;
                let r = device
                    .run_until(WITHIN, |s, ev| {
                        if accepted {
                            return true;
                        }
                        if let Some(id) = ev.iter().find_map(|e| match e {
                            Event::Connection(channel::Event::Open { channel, .. }) => {
                                Some(*channel)
                            }
                            _ => None,
                        }) {
                            accepted = s.connection().accept(id).is_ok();
                        }
                        false
                    })
                    .await;
                r.map(|_| device)
            });
            let mut op = site.operator().await?;
            let id = op.open_stream("bench-silent", 22, WITHIN).await?;
            let _device = accept.await??;
            for i in 0..20_000u32 {
                op.session()
                    .send_data(id, None, &[i as u8])
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                op.write_some()?;
                std::thread::sleep(Duration::from_micros(50));
            }
            while op.write_some()? > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(())
        })
        .await?;
    results.push(
        GROUP,
        "20,000 one-byte packets to a device with no window: RSS growth",
        grown,
        "MiB",
    );

    // What is still held once every hostile peer is gone (freed memory goes back within
    // seconds).
    tokio::time::sleep(Duration::from_secs(if args.smoke { 1 } else { 15 })).await;
    results.push(
        GROUP,
        "burrow relay: RSS after the attacks, above its RSS at rest",
        (site.rss_mib() - rest).max(0.0),
        "MiB",
    );
    Ok(())
}
