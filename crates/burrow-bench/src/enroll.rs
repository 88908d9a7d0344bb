//! Enrolling a fleet: N devices run `burrow agent enroll` with one reusable join token, all at
//! once as a batch of new devices would at first boot, then start their agents from the
//! configs it wrote; the time until every agent is up.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Args;
use crate::env::{Env, Proc, free_port};
use crate::report::Results;

/// The report's group for this measurement.
pub const GROUP: &str = "enrolling agents from one reusable token";
/// The system it is measured for.
pub const SYSTEM: &str = "burrow: enrolled and every agent up";

/// The join string of a reusable token (the relay records its address as it starts: asked
/// again until it has).
async fn join_string(env: &Env, data_dir: &Path) -> anyhow::Result<String> {
    let d = data_dir.to_str().context("path")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match env.burrow_cli(&[
            "relay",
            "--data-dir",
            d,
            "token",
            "create",
            "--reusable",
            "--name-pattern",
            "bench-enroll-*",
            "--label",
            "batch=bench",
        ]) {
            Ok(out) => return Ok(out.trim().to_string()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A device's files: config, key, status.
fn files(env: &Env, i: usize) -> anyhow::Result<[std::path::PathBuf; 3]> {
    let dir = env.path(&format!("enroll-{i}"));
    std::fs::create_dir_all(&dir)?;
    Ok([
        dir.join("agent.toml"),
        dir.join("id_ed25519"),
        dir.join("status.json"),
    ])
}

pub async fn run(env: &Env, args: &Args, results: &mut Results) -> anyhow::Result<()> {
    let n = args.enroll_agents;
    let data_dir = env.path("relay-enroll");
    let port = free_port();
    let relay = crate::systems::start_relay(env, &data_dir, port).await?;
    let join = join_string(env, &data_dir).await?;
    let started = Instant::now();
    // Every device enrolls at once, as a batch booting together does.
    let mut enrolling = Vec::with_capacity(n);
    for i in 0..n {
        let [config, key, _] = files(env, i)?;
        let child = tokio::process::Command::new(&env.burrow)
            .args([
                "agent",
                "enroll",
                &join,
                "--name",
                &format!("bench-enroll-{i}"),
            ])
            .arg("--config")
            .arg(&config)
            .arg("--key")
            .arg(&key)
            .args(["--expose", "22"])
            .env("BURROW_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        enrolling.push(child);
    }
    // Each starts its agent from the config it wrote as soon as it is enrolled.
    let mut agents = Vec::with_capacity(n);
    for (i, child) in enrolling.into_iter().enumerate() {
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            bail!(
                "enroll of device {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let [config, _, status] = files(env, i)?;
        let agent = Proc::spawn(
            std::process::Command::new(&env.burrow)
                .arg("agent")
                .arg("--config")
                .arg(&config)
                .arg("--status-file")
                .arg(&status)
                .env("BURROW_LOG", "error"),
        )?;
        agents.push((agent, status));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    for (_, status) in &agents {
        while !std::fs::read_to_string(status)
            .unwrap_or_default()
            .contains("\"up\"")
        {
            if Instant::now() > deadline {
                bail!("an enrolled agent did not come up within 300 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let took = started.elapsed().as_secs_f64();
    eprintln!("    {n} devices enrolled and up in {took:.1} s");
    results.push_note(
        &format!("{GROUP} ({n})"),
        SYSTEM,
        took,
        "s",
        "each device makes its key, enrolls over SSH and starts its agent from the config it wrote; all at once from one address",
    );
    drop(agents);
    drop(relay);
    Ok(())
}
