//! How streams end, as the audit and the operator's client see it: an ordinary end is `ok`, a
//! side that closes early is named, and a stream cut by a fault never looks complete.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A relay with device `pi` (a `burrow agent` process exposing `exposes`) and operator
/// `alice`; the agent process (SIGKILL it by dropping) and alice's ssh_config.
async fn site(
    exposes: &[(u16, std::net::SocketAddr)],
) -> (tempfile::TempDir, TestRelay, KillOnDrop, PathBuf) {
    let (dir, relay, _, op_key) = relay_with("pi", "alice").await;
    let agent = start_agent(&dir, &relay, exposes).await;
    let op = ssh_config(dir.path(), &relay, "alice", &op_key);
    (dir, relay, agent, op)
}

/// (Re)starts device `pi`'s agent (key `dev` in `dir`) and waits for its endpoints.
async fn start_agent(
    dir: &tempfile::TempDir,
    relay: &TestRelay,
    exposes: &[(u16, std::net::SocketAddr)],
) -> KillOnDrop {
    let agent = agent_process(dir.path(), relay, "pi", &dir.path().join("dev"), exposes);
    for (port, _) in exposes {
        relay.wait_endpoint("pi", *port).await;
    }
    agent
}

/// The stream rows once none is open any more.
async fn ended_streams(relay: &TestRelay, n: usize) -> Vec<burrow_relay::store::AuditRecord> {
    eventually(&format!("{n} stream rows to be completed"), || {
        let rows: Vec<_> = relay
            .relay
            .store()
            .audit_tail(500)
            .unwrap()
            .into_iter()
            .filter(|r| r.event == "stream")
            .collect();
        (rows.len() >= n && rows.iter().all(|r| r.outcome != "open")).then_some(rows)
    })
    .await
}

/// `ssh -N -L PORT:pi:DEVICE_PORT relay` until dropped, once its port listens.
async fn local_forward(op: &std::path::Path, device_port: u16) -> (KillOnDrop, u16) {
    let port = free_port();
    let child = ssh(
        op,
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            &format!("{port}:pi:{device_port}"),
            "relay",
        ],
    )
    .stdin(Stdio::null())
    .spawn()
    .unwrap();
    let child = KillOnDrop(child);
    // Not by connecting: that would be a stream of its own.
    eventually("the -L port to listen", || listening(port).then_some(())).await;
    (child, port)
}

/// Whether a TCP socket listens on loopback `port` (from /proc/net/tcp, state 0A).
fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[3] == "0A" && f[1].ends_with(&format!(":{port:04X}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jump_logins_that_end_normally_are_audited_ok() {
    let dir = tempdir();
    let login_key = keypair(dir.path(), "login");
    let sshd = TestSshd::start(dir.path(), &[&login_key], "").await;
    let sshd_addr: std::net::SocketAddr = format!("127.0.0.1:{}", sshd.port).parse().unwrap();
    let (sdir, relay, _agent, op) = site(&[(22, sshd_addr)]).await;
    let dev_kh = sdir.path().join("device_known_hosts");
    std::fs::write(&dev_kh, format!("pi {}", sshd.host_key_line)).unwrap();
    const LOGINS: usize = 5;
    for _ in 0..LOGINS {
        let (ok, _, err) = ssh_output(
            &op,
            &[
                "-J",
                "relay",
                "-i",
                login_key.to_str().unwrap(),
                "-o",
                &format!("UserKnownHostsFile={}", dev_kh.display()),
                &format!("{}@pi", current_user()),
                "true",
            ],
            b"",
        )
        .await;
        assert!(ok, "ssh -J failed: {err}");
    }
    let rows = ended_streams(&relay, LOGINS).await;
    for r in &rows {
        assert_eq!(r.outcome, "ok", "an ordinary login is not ok: {r:#?}");
    }
    // The same word in `audit --json` and in the metrics.
    let (ok, out, err) = relay.cli(&["audit", "--json"]);
    assert!(ok, "{err}");
    let json: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(
        json.iter()
            .filter(|r| r["event"] == "stream")
            .all(|r| r["outcome"] == "ok"),
        "{out}"
    );
    let metrics = relay.relay.metrics_page().await;
    assert!(
        metrics.contains(&format!(
            "burrow_streams_ended_total{{outcome=\"ok\"}} {LOGINS}"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_closes_while_the_device_sends_closed_the_stream_itself() {
    let source = firehose(1 << 30).await;
    let (_dir, relay, _agent, op) = site(&[(80, source)]).await;
    let (_forward, port) = local_forward(&op, 80).await;
    // An iperf3-like data stream: read a while, then close while the device still sends.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    tcp.read_exact(&mut buf).await.unwrap();
    drop(tcp);
    let rows = ended_streams(&relay, 1).await;
    assert_eq!(rows[0].outcome, "closed-by-operator", "{rows:#?}");
    assert!(rows[0].detail.contains("closed early"), "{rows:#?}");
    let metrics = relay.relay.metrics_page().await;
    assert!(
        metrics.contains("burrow_streams_ended_total{outcome=\"closed_by_operator\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_service_that_closes_while_the_operator_sends_closed_the_stream_itself() {
    // Takes a little, then hangs up on an upload that goes on.
    let service = serve(|mut tcp| async move {
        let mut buf = vec![0u8; 1024];
        let _ = tcp.read_exact(&mut buf).await;
    })
    .await;
    let (_dir, relay, _agent, op) = site(&[(81, service)]).await;
    let (_forward, port) = local_forward(&op, 81).await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let chunk = vec![b'u'; 64 * 1024];
    // Until the device's close comes back as a failed write or the end of the stream.
    let upload = async {
        loop {
            if tcp.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(WAIT, upload).await;
    let rows = ended_streams(&relay, 1).await;
    assert_eq!(rows[0].outcome, "closed-by-device", "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_download_ends_ssh_w_with_the_reason_not_with_success() {
    let source = firehose(1 << 30).await;
    let (_dir, relay, agent, op) = site(&[(80, source)]).await;
    let mut download = tokio::process::Command::from(ssh(&op, &["-W", "pi:80", "relay"]));
    let mut child = download.kill_on_drop(true).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 4 << 20];
    out.read_exact(&mut buf).await.unwrap();
    drop(agent); // SIGKILL, mid-download
    let rest = tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink).await;
    });
    let mut stderr = child.stderr.take().unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("ssh -W ended")
        .unwrap();
    let _ = rest.await;
    let mut err = String::new();
    stderr.read_to_string(&mut err).await.unwrap();
    assert_eq!(
        status.code(),
        Some(255),
        "a cut download looked complete: {err}"
    );
    assert!(err.contains("was cut"), "{err}");
    assert!(err.contains("connection was lost"), "{err}");
    let rows = ended_streams(&relay, 1).await;
    assert_eq!(rows[0].outcome, "interrupted", "{rows:#?}");
    assert!(
        rows[0]
            .detail
            .contains("cut by a fault: the device's connection was lost"),
        "{rows:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_download_through_ssh_l_closes_that_stream_and_keeps_the_forwarding() {
    let source = firehose(1 << 30).await;
    let (dir, relay, agent, op) = site(&[(80, source)]).await;
    let (_forward, port) = local_forward(&op, 80).await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4 << 20];
    tcp.read_exact(&mut buf).await.unwrap();
    drop(agent); // SIGKILL, mid-download
    // The local connection ends (OpenSSH gives it no way to tell a cut from an end)...
    let ended = tokio::time::timeout(WAIT, async {
        let mut sink = vec![0u8; 1 << 20];
        loop {
            match tcp.read(&mut sink).await {
                Ok(0) => return "eof".to_string(),
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
    })
    .await
    .expect("the local connection ended");
    assert_eq!(ended, "eof");
    // ...but the relay says what happened, and the forwarding goes on for other streams.
    let rows = ended_streams(&relay, 1).await;
    assert_eq!(rows[0].outcome, "interrupted", "{rows:#?}");
    assert!(
        rows[0]
            .detail
            .contains("cut by a fault: the device's connection was lost"),
        "{rows:#?}"
    );
    let _agent = start_agent(&dir, &relay, &[(80, source)]).await;
    let mut again = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, again.read_exact(&mut buf))
        .await
        .expect("ssh -L still forwards")
        .expect("ssh -L was disconnected for one cut stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_whose_output_closes_early_still_gets_the_end_of_the_stream() {
    // A finite file, as a web server on the device would serve it.
    const FILE: usize = 50 << 20;
    let (source, left_device) = counted_firehose(FILE).await;
    let (_dir, relay, _agent, op) = site(&[(80, source)]).await;
    // No keepalive from the client: its own timer must not be what moves the stream.
    let quiet = std::fs::read_to_string(&op)
        .unwrap()
        .replace("ServerAliveInterval 5", "ServerAliveInterval 0");
    std::fs::write(&op, quiet).unwrap();
    // OpenSSH throws away what its output buffer holds when the write fails, without giving
    // that window back: when that was the whole window (the relay had filled it in one burst),
    // the client has nothing left to give and only its stdin closing ends it, through a stock
    // sshd as through the relay (README). That is the client's doing and it happens now and
    // then, so one run of the lot may stop. Without the relay's nudge nothing turns the
    // client's loop once a burst spent its window: in these debug builds 6 of 48 runs then
    // stopped, and one of two tries of this test failed (0 of 80 runs stopped with the nudge).
    const RUNS: usize = 16;
    /// How long a stream that still runs may go without a byte leaving the device.
    const STOPPED: Duration = Duration::from_secs(5);
    let mut ended = 0;
    for run in 0..RUNS {
        // `ssh -W pi:80 relay < <(sleep 40) | head -c 1M`: stdin stays open, stdout is read
        // for 1 MiB and then closed.
        let mut cmd = tokio::process::Command::from(ssh(&op, &["-W", "pi:80", "relay"]));
        let mut child = cmd.kill_on_drop(true).spawn().unwrap();
        let _stdin = child.stdin.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let start = left_device.load(Relaxed);
        out.read_exact(&mut buf).await.unwrap();
        drop(out);
        // A run is given up only when its stream stopped: nothing more left the device for a
        // while (or, once the whole file has left it, for the longest wait). A slow machine
        // only makes a run take longer.
        loop {
            let before = left_device.load(Relaxed);
            let wait = if before - start < FILE { STOPPED } else { WAIT };
            match tokio::time::timeout(wait, child.wait()).await {
                Ok(status) => {
                    status.unwrap();
                    ended += 1;
                    break;
                }
                Err(_) if left_device.load(Relaxed) == before => {
                    eprintln!("run {run}: ssh -W threw its whole window away; killed");
                    let _ = child.kill().await;
                    break;
                }
                Err(_) => continue,
            }
        }
    }
    assert!(
        ended >= RUNS - 1,
        "only {ended} of {RUNS} runs of ssh -W ended after their output closed"
    );
    // Each stream that ended ran to its end: the device's whole file left the device.
    let rows = ended_streams(&relay, RUNS).await;
    let whole = rows
        .iter()
        .filter(|r| r.detail.contains(&format!("{FILE} bytes from device")))
        .count();
    assert_eq!(whole, ended, "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_through_ssh_j_cut_by_a_fault_ends_with_the_reason() {
    let dir = tempdir();
    let login_key = keypair(dir.path(), "login");
    let sshd = TestSshd::start(dir.path(), &[&login_key], "").await;
    let sshd_addr: std::net::SocketAddr = format!("127.0.0.1:{}", sshd.port).parse().unwrap();
    let (sdir, _relay, agent, op) = site(&[(22, sshd_addr)]).await;
    let dev_kh = sdir.path().join("device_known_hosts");
    std::fs::write(&dev_kh, format!("pi {}", sshd.host_key_line)).unwrap();
    let known = format!("UserKnownHostsFile={}", dev_kh.display());
    let target = format!("{}@pi", current_user());
    let login = [
        "-J",
        "relay",
        "-i",
        login_key.to_str().unwrap(),
        "-o",
        &known,
        &target,
        "echo started; sleep 30",
    ];
    let mut login = tokio::process::Command::from(ssh(&op, &login))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = login.stdout.take().unwrap();
    let mut buf = [0u8; 8];
    out.read_exact(&mut buf).await.unwrap();
    drop(agent); // SIGKILL, mid-session
    let ended = tokio::time::timeout(WAIT, login.wait_with_output())
        .await
        .expect("the login ended")
        .unwrap();
    let said = String::from_utf8_lossy(&ended.stderr);
    // The jump's ssh prints the relay's reason; the login's ssh ends with an error.
    assert_eq!(ended.status.code(), Some(255), "{said}");
    assert!(said.contains("was cut and is incomplete"), "{said}");
}
