//! Consoles for network engineers, part three: the console path is binary-clean end to end.
//! A file goes with lrzsz's `sz --xmodem` / `sz --ymodem` through
//! `ssh OPERATOR:DEVICE/console@relay binary` to `rz` on the router's end of a serial cable
//! made by socat (as ROMMON recovery does), and arrives with the same checksum; sz hears rz's
//! last ACK (it exits 0).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use burrow_proto::agent_config::Console;
use common::*;

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Sends a file with `sz PROTOCOL` through a binary console login to `rz PROTOCOL` at the far
/// end of the device's serial port, and checks what arrived and that both ends exit 0.
async fn transfer(protocol: &'static str) {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    let alice_key = keypair(dir.path(), "alice");
    relay.add_device("pi", &dev_key);
    relay.add_operator("alice", &alice_key, &["*"]);
    let port = dir.path().join("ttyUSB0");
    // The serial port is a pty made by socat, whose other side is two pipes: rz is started on
    // them later, as the router's end of the cable. Pipes, not a terminal: at its exit lrzsz
    // restores its terminal and flushes it both ways (TCIOFLUSH), and on a pty that throws
    // away what the other side has not read yet, its own last ACK. (A real UART has sent it.)
    let (from_rz, rz_out) = std::io::pipe().unwrap();
    let (rz_in, to_rz) = std::io::pipe().unwrap();
    let mut socat = Command::new("socat")
        .arg(format!("pty,link={},raw,echo=0", port.display()))
        .arg("STDIO")
        .stdin(Stdio::from(from_rz))
        .stdout(Stdio::from(to_rz))
        .stderr(Stdio::null())
        .spawn()
        .expect("socat is installed (test.sh installs it)");
    eventually("socat's pty", || port.exists().then_some(())).await;
    let mut config = agent_config(
        &relay.addr.to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    config
        .console
        .push(Console::new("console", port.clone(), 115_200));
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    let alice = ssh_config(dir.path(), &relay, "alice", &alice_key);

    // Every byte value, many times over, in an order that is not a pattern.
    let mut data = Vec::with_capacity(48 * 1024);
    let mut x: u32 = 0x1234_5678;
    while data.len() < 48 * 1024 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.push((x >> 11) as u8);
    }
    // XON/XOFF, CR, Ctrl-E c: bytes a careless path would eat.
    data.extend_from_slice(b"\x11\x13\r\n\x05c.\x05c?\xff\x00");
    let send_dir = dir.path().join("send");
    let recv_dir = dir.path().join("recv");
    std::fs::create_dir_all(&send_dir).unwrap();
    std::fs::create_dir_all(&recv_dir).unwrap();
    let file = send_dir.join("c2900-universalk9.bin");
    std::fs::write(&file, &data).unwrap();

    // The operator's side: ssh's stdout feeds sz, sz's stdout feeds ssh.
    let mut ssh = ssh(
        &alice,
        &["-T", "-e", "none", "-l", "alice:pi", "relay", "binary"],
    );
    ssh.stderr(Stdio::null());
    let mut ssh = ssh.spawn().unwrap();
    let to_ssh = ssh.stdin.take().unwrap();
    let from_ssh = ssh.stdout.take().unwrap();
    let sz_err = dir.path().join("sz.err");
    let rz_err = dir.path().join("rz.err");
    let mut sz = Command::new("sz")
        .arg(protocol)
        .arg("-vv")
        .arg(&file)
        .current_dir(&send_dir)
        .stdin(Stdio::from(from_ssh))
        .stdout(Stdio::from(to_ssh))
        .stderr(std::fs::File::create(&sz_err).unwrap())
        .spawn()
        .unwrap();
    // Attached before the receiver starts, so its first request is not lost.
    eventually_async("the binary console session", || async {
        relay
            .audit_now(50)
            .await
            .into_iter()
            .find(|r| r.event == "console-attach" && r.who == "alice")
    })
    .await;
    // The router's side: rz on the cable's pipes.
    let mut rz = Command::new("rz");
    rz.arg(protocol).arg("-vv");
    if protocol == "--xmodem" {
        // XMODEM carries no name.
        rz.arg("c2900-universalk9.bin");
    }
    let mut rz = rz
        .current_dir(&recv_dir)
        .stdin(Stdio::from(rz_in))
        .stdout(Stdio::from(rz_out))
        .stderr(std::fs::File::create(&rz_err).unwrap())
        .spawn()
        .unwrap();
    let (sz_status, rz_status) = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let a = sz.try_wait().unwrap();
            let b = rz.try_wait().unwrap();
            if let (Some(a), Some(b)) = (a, b) {
                return (a, b);
            }
            if std::time::Instant::now() > deadline {
                let _ = sz.kill();
                let _ = rz.kill();
                panic!(
                    "sz/rz {protocol} did not finish (sz {a:?}, rz {b:?}); sz said:\n{}\nrz said:\n{}",
                    std::fs::read_to_string(&sz_err).unwrap_or_default(),
                    std::fs::read_to_string(&rz_err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(sz_status.success(), "sz {protocol}: {sz_status}");
    assert!(rz_status.success(), "rz {protocol}: {rz_status}");
    let got = recv_dir.join("c2900-universalk9.bin");
    let mut received = std::fs::read(&got).unwrap();
    // XMODEM pads the last block with SUB (0x1a) up to 128/1024 bytes.
    if protocol == "--xmodem" {
        while received.len() > data.len() && received.last() == Some(&0x1a) {
            received.pop();
        }
        std::fs::write(&got, &received).unwrap();
    }
    assert_eq!(received.len(), data.len(), "{protocol}");
    assert_eq!(sha256(&got), sha256(&file), "{protocol}");
    let _ = ssh.kill();
    let _ = ssh.wait();
    let _ = socat.kill();
    let _ = socat.wait();
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmodem_through_the_console_arrives_whole() {
    transfer("--xmodem").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ymodem_through_the_console_arrives_whole() {
    transfer("--ymodem").await;
}
