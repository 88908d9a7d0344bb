//! A console keystroke's echo through the web console against the same through SSH: a relay
//! with `--web`, an agent serving a pty whose far end echoes every byte, then one byte at a
//! time typed and waited for, over an SSH console session and over the console's WebSocket
//! (what xterm.js in a browser sends and receives), and the fleet page of the fleet's devices.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use burrow_ssh::channel::{OpenKind, Request, TermSize};
use burrow_ssh::driver::{ChannelMsg, Handle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Args;
use crate::env::{Env, Proc, free_port, wait_port};
use crate::report::Results;

/// The report's group.
pub const GROUP: &str = "console keystroke echo p50";

/// A pty whose far side echoes every byte back (a router with echo on), at `path`.
fn echo_pty(path: &Path) -> anyhow::Result<()> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let slave = ptsname(&master, Vec::new())?;
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink(slave.to_str().context("pty name")?, path)?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match rustix::io::read(&master, &mut buf) {
                Ok(n) if n > 0 => {
                    let _ = rustix::io::write(&master, &buf[..n]);
                }
                // EIO until the agent opens the other side.
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Ok(())
}

struct Operator;
impl burrow_ssh::driver::Handler for Operator {}

async fn ssh_operator(port: u16, user: &str, key: &Path) -> anyhow::Result<Handle> {
    let key = burrow_ssh::auth::ClientKey::read(key).map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = burrow_ssh::transport::Config {
        role: burrow_ssh::transport::Role::Client,
        software: "burrow_bench".into(),
        host_key_check: Some(Box::new(|_| true)),
        ..Default::default()
    };
    let session = burrow_ssh::session::Session::new(
        config,
        burrow_ssh::session::Side::Client {
            user: user.into(),
            credentials: vec![burrow_ssh::auth::Credential::Key(Box::new(key))],
        },
        burrow_ssh::channel::Limits::default(),
        Instant::now(),
    );
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let (handle, _task) = burrow_ssh::driver::connect(tcp, session, Operator)
        .await
        .map_err(|e| anyhow::anyhow!("{user}: {e}"))?;
    Ok(handle)
}

/// Reads `channel` until `needle` has been seen.
async fn ssh_until(channel: &burrow_ssh::driver::Channel, needle: &[u8]) -> anyhow::Result<()> {
    let mut seen = Vec::new();
    let wait = tokio::time::timeout(Duration::from_secs(20), async {
        while !seen.windows(needle.len()).any(|w| w == needle) {
            match channel.next().await {
                Some(ChannelMsg::Data(d)) => seen.extend_from_slice(&d),
                Some(_) => {}
                None => bail!("the console closed: {}", String::from_utf8_lossy(&seen)),
            }
        }
        Ok(())
    });
    wait.await.context("waiting for the console")?
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Bytes typed and waited for, one at a time, on each path.
fn keystrokes(args: &Args) -> usize {
    if args.smoke { 20 } else { 500 }
}

/// One WebSocket frame from the client (masked, as browsers send).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask: [u8; 4] = rand::random();
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads server frames (unmasked) until a binary one holds `needle`.
async fn ws_until(tcp: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> anyhow::Result<()> {
    loop {
        // Whole frames in `buf`?
        while buf.len() >= 2 {
            let (len, head) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[2..10]);
                    (u64::from_be_bytes(b) as usize, 10)
                }
                126 | 127 => break,
                n => (usize::from(n), 2),
            };
            if buf.len() < head + len {
                break;
            }
            let opcode = buf[0] & 0x0f;
            let found = opcode == 2
                && buf[head..head + len]
                    .windows(needle.len())
                    .any(|w| w == needle);
            buf.drain(..head + len);
            if found {
                return Ok(());
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            bail!("the console's WebSocket closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One request on its own connection; returns the response head and body.
async fn http(port: u16, request: &str) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(request.as_bytes()).await?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).await?;
    Ok(out)
}

pub async fn run(env: &Env, args: &Args, results: &mut Results) -> anyhow::Result<()> {
    let data_dir = env.path("webconsole");
    let fingerprint = crate::systems::relay_data(env, &data_dir)?;
    let d = data_dir.to_str().context("path")?;
    let op_key = env.op_public_key();
    env.burrow_cli(&[
        "relay",
        "--data-dir",
        d,
        "operator",
        "add",
        "bench-op",
        "--pubkey",
        op_key.to_str().context("path")?,
    ])?;
    let tty = env.path("webconsole-tty");
    echo_pty(&tty)?;
    let (relay_port, web_port) = (free_port(), free_port());
    let _relay = crate::systems::start_relay_with(
        env,
        &data_dir,
        relay_port,
        &["--web", &format!("127.0.0.1:{web_port}")],
    )
    .await?;
    wait_port(web_port, "burrow relay --web").await?;
    let _agent: Proc = env.agent(
        relay_port,
        "bench-dev",
        &fingerprint,
        &["--console", &format!("console={}@115200", tty.display())],
        &env.path("webconsole-agent.json"),
    )?;
    let op_private = env.op_key.clone();
    let n = keystrokes(args);

    // SSH: `ssh -t bench-op:bench-dev@relay`, as PuTTY users do.
    let mut ssh_times = Vec::with_capacity(n);
    let started = Instant::now();
    let channel = loop {
        let handle = ssh_operator(relay_port, "bench-op:bench-dev", &op_private).await?;
        let channel = handle.open(OpenKind::Session).await?;
        let size = TermSize {
            cols: 80,
            rows: 24,
            width_px: 0,
            height_px: 0,
        };
        channel
            .request(
                Request::PtyReq {
                    term: "xterm".into(),
                    size,
                    modes: vec![0],
                },
                true,
            )
            .await?;
        channel.request(Request::Shell, true).await?;
        match ssh_until(&channel, b"read-write").await {
            Ok(()) => break channel,
            // The agent may not have announced its console yet.
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    };
    for i in 0..n {
        let b = b'a' + (i % 26) as u8;
        let t = Instant::now();
        channel.data(&[b]).await?;
        ssh_until(&channel, &[b]).await?;
        ssh_times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    channel.close();
    drop(channel);

    // The browser's path: a one-time link, the session cookie, the console's WebSocket.
    let handle = ssh_operator(relay_port, "bench-op", &op_private).await?;
    let exec = handle.open(OpenKind::Session).await?;
    exec.request(Request::Exec("web".into()), true).await?;
    let mut out = Vec::new();
    while let Some(msg) = exec.next().await {
        match msg {
            ChannelMsg::Data(d) => out.extend_from_slice(&d),
            ChannelMsg::Eof => break,
            _ => {}
        }
    }
    let out = String::from_utf8_lossy(&out).to_string();
    let token = out
        .split_once('#')
        .and_then(|(_, t)| t.split_whitespace().next())
        .with_context(|| format!("no link in {out:?}"))?
        .to_string();
    let origin = format!("http://127.0.0.1:{web_port}");
    let body = format!("token={token}");
    let answer = http(
        web_port,
        &format!(
            "POST /login/link HTTP/1.1\r\nHost: 127.0.0.1:{web_port}\r\nOrigin: {origin}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await?;
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .with_context(|| format!("no session: {answer}"))?
        .to_string();
    let mut ws_times = Vec::with_capacity(n);
    let mut tcp = TcpStream::connect(("127.0.0.1", web_port)).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(
        format!(
            "GET /console/bench-dev/console/ws HTTP/1.1\r\nHost: 127.0.0.1:{web_port}\r\nOrigin: {origin}\r\nCookie: {cookie}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let got = tcp.read(&mut chunk).await?;
        if got == 0 {
            bail!(
                "the WebSocket was refused: {}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    if !buf.starts_with(b"HTTP/1.1 101") {
        bail!(
            "the WebSocket was refused: {}",
            String::from_utf8_lossy(&buf)
        );
    }
    buf.drain(..head_end);
    // The banner, then the notice every operator gets when one attaches (its own too): after
    // it, every byte that comes back is the console's.
    tokio::time::timeout(
        Duration::from_secs(20),
        ws_until(&mut tcp, &mut buf, b"bench-op attached ("),
    )
    .await
    .context("waiting for the web console's attach notice")??;
    for i in 0..n {
        let b = b'a' + (i % 26) as u8;
        let msg = format!("{{\"t\":\"in\",\"d\":\"{}\"}}", char::from(b));
        let t = Instant::now();
        tcp.write_all(&client_frame(1, msg.as_bytes())).await?;
        tokio::time::timeout(Duration::from_secs(20), ws_until(&mut tcp, &mut buf, &[b]))
            .await
            .context("waiting for the echo over the WebSocket")??;
        ws_times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (ssh, web) = (median(ssh_times), median(ws_times));
    eprintln!("    console echo p50: SSH {ssh:.0} µs, web console {web:.0} µs");
    results.push(GROUP, "SSH console session", ssh, "µs");
    results.push(GROUP, "web console (WebSocket)", web, "µs");

    // The fleet page of a large fleet: registered straight into the running relay's database.
    let fleet = if args.smoke { 200 } else { 10_000 };
    let key = burrow_io::keys::load_private_key(&env.key)?;
    let names: Vec<String> = (0..fleet).map(|i| format!("fleet-{i}")).collect();
    burrow_relay::store::Store::open(&data_dir.join(burrow_relay::datadir::DATABASE_FILE))?
        .add_devices_bulk(&names, std::slice::from_ref(key.public_key()))?;
    let mut page_ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let page = http(
            web_port,
            &format!(
                "GET / HTTP/1.1\r\nHost: 127.0.0.1:{web_port}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await?;
        page_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if !page.contains("data-device=\"fleet-") {
            bail!(
                "the fleet page shows no fleet: {}",
                page.get(..300).unwrap_or(&page)
            );
        }
    }
    let ms = median(page_ms);
    eprintln!("    fleet page of {} devices: {ms:.0} ms", fleet + 1);
    results.push(
        FLEET_GROUP,
        &format!("{} devices, first page", fleet + 1),
        ms,
        "ms",
    );
    Ok(())
}

/// The report's group for the fleet page.
pub const FLEET_GROUP: &str = "web console fleet page";
