//! Relay behaviour that users rely on: takeover, slow readers, security boundaries.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use burrow_ssh::channel::GlobalRequest;
use burrow_ssh::driver::Handle;
use common::*;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_after_stalled_session() {
    let (dir, relay, dev_key, op_key) = relay_with("pi", "op").await;
    let old_service = fixed_reply_server(b"old session").await;
    let new_service = fixed_reply_server(b"new session").await;
    let dev_cfg = ssh_config(dir.path(), &relay, "pi", &dev_key);

    let old = stock_device(
        &dev_cfg,
        &["-R", &format!("22:localhost:{}", old_service.port())],
    );
    relay.wait_endpoint("pi", 22).await;
    let old_peer = relay.relay.online_peer("pi").unwrap();
    // The device "reboots": its old ssh freezes with the TCP connection open and silent.
    assert!(
        Command::new("kill")
            .args(["-STOP", &old.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );

    let _new = stock_device(
        &dev_cfg,
        &["-R", &format!("22:localhost:{}", new_service.port())],
    );
    eventually("the new session to expose pi:22", || {
        (relay.relay.online_peer("pi").is_some_and(|p| p != old_peer)
            && relay
                .relay
                .online_endpoints("pi")
                .is_some_and(|e| e.contains(&22)))
        .then_some(())
    })
    .await;

    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let (ok, out, err) = ssh_output(&op_cfg, &["-W", "pi:22", "relay"], b"").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"new session");
    // The old session is cut once it failed to answer (it may be a copy of the device that is
    // still up elsewhere, see tests/fleet.rs): then the takeover is audited.
    let takeover = eventually("the takeover to be audited", || {
        relay
            .relay
            .store()
            .audit_tail(100)
            .unwrap()
            .into_iter()
            .find(|r| r.event == "takeover")
    })
    .await;
    assert!(
        takeover.detail.contains(&old_peer.to_string()),
        "{}",
        takeover.detail
    );
    drop(old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_then_slow_reader_holds_back_only_its_own_stream_and_loses_nothing() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    let op_key = keypair(dir.path(), "op");
    relay.add_device("pi", &dev_key);
    relay.add_operator("op", &op_key, &["*"]);
    const TOTAL: usize = 64 << 20;
    let hose = patterned_firehose(TOTAL).await;
    let service = reply_after_eof_server(uppercase).await;
    let dev_cfg = ssh_config(dir.path(), &relay, "pi", &dev_key);
    // One stock ssh device session carries both endpoints (multiplexed channels).
    let _device = stock_device(
        &dev_cfg,
        &[
            "-R",
            &format!("80:localhost:{}", hose.port()),
            "-R",
            &format!("81:localhost:{}", service.port()),
        ],
    );
    relay.wait_endpoint("pi", 80).await;
    relay.wait_endpoint("pi", 81).await;

    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    // This operator reads nothing for a while: its ssh's stdout pipe fills, then its window,
    // then the relay's window towards the device.
    let mut stalled = tokio::process::Command::from(ssh(&op_cfg, &["-W", "pi:80", "relay"]));
    let mut stalled = stalled.kill_on_drop(true).spawn().unwrap();
    let _stalled_stdin = stalled.stdin.take();
    let mut out = stalled.stdout.take().unwrap();
    eventually("the firehose stream to be open", || {
        relay
            .relay
            .store()
            .audit_tail(20)
            .ok()?
            .iter()
            .any(|r| r.event == "stream" && r.target == "pi:80")
            .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    // Meanwhile another channel of the same device session keeps moving data, several times.
    let payload = vec![b'q'; 1 << 20];
    for _ in 0..3 {
        let (ok, out, err) = ssh_output(&op_cfg, &["-W", "pi:81", "relay"], &payload).await;
        assert!(ok, "{err}");
        assert_eq!(out.len(), payload.len());
        assert!(out.iter().all(|b| *b == b'Q'));
    }
    // The stopped stream was held back, not cut: read slowly now (a small read, then a
    // pause, far below what the device sends), every byte arrives in order.
    use tokio::io::AsyncReadExt;
    let mut got = Vec::with_capacity(TOTAL);
    let slow_read = async {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = out.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT * 6, slow_read)
        .await
        .expect("the held stream delivers the rest");
    assert_eq!(got.len(), TOTAL);
    // What the relay held for the stream never passed the window it advertised to the
    // device (burrow-ssh's default, as OpenSSH's: 2 MiB).
    let peak = relay.relay.online_peak_buffered("pi").unwrap();
    let window = burrow_ssh::channel::Limits::default().window as usize;
    assert!(
        peak > 0 && peak <= window,
        "{peak} bytes held for one stream, window {window}"
    );
    assert!(
        got == pattern(TOTAL),
        "the bytes arrived altered or out of order"
    );
    let status = tokio::time::timeout(WAIT, stalled.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    assert!(
        relay.relay.online_endpoints("pi").is_some(),
        "the device session survived"
    );
    let audit = relay.audit_now(50).await;
    let row = audit
        .iter()
        .find(|r| r.event == "stream" && r.target == "pi:80" && r.outcome != "open")
        .expect("the stream is audited");
    assert_eq!(row.outcome, "ok", "{row:?}");
    assert!(
        row.detail.contains(&format!("{TOTAL} bytes from device")),
        "{row:?}"
    );
}

/// Like iperf3 through one `ssh -L` connection: a control stream and data streams share the
/// operator's connection. One stream is never read; the others keep moving both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_through_one_ssh_l_keep_moving_beside_one_never_read() {
    use tokio::io::AsyncReadExt;
    let (dir, relay, dev_key, op_key) = relay_with("pi", "op").await;
    let hose = firehose(256 << 20).await;
    let echo = echo_server().await;
    let dev_cfg = ssh_config(dir.path(), &relay, "pi", &dev_key);
    let _device = stock_device(
        &dev_cfg,
        &[
            "-R",
            &format!("80:localhost:{}", hose.port()),
            "-R",
            &format!("81:localhost:{}", echo.port()),
        ],
    );
    relay.wait_endpoint("pi", 80).await;
    relay.wait_endpoint("pi", 81).await;
    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let (idle_port, busy_port) = (free_port(), free_port());
    let _operator = KillOnDrop(
        ssh(
            &op_cfg,
            &[
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                &format!("{idle_port}:pi:80"),
                "-L",
                &format!("{busy_port}:pi:81"),
                "relay",
            ],
        )
        .spawn()
        .unwrap(),
    );
    let never_read = eventually("ssh -L to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", idle_port)).ok()
    })
    .await;
    // Let the unread stream fill every buffer on its way: the local socket, ssh's channel
    // buffer, the relay's window towards the device.
    eventually("the unread stream to be open at the relay", || {
        relay
            .relay
            .store()
            .audit_tail(20)
            .ok()?
            .iter()
            .any(|r| r.event == "stream" && r.target == "pi:80")
            .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;

    // Four streams at once, each 4 MiB each way, all through the same operator connection.
    let mut streams = Vec::new();
    for n in 0..4u8 {
        streams.push(tokio::spawn(async move {
            let payload: Vec<u8> = (0..4usize << 20).map(|i| (i as u8) ^ n).collect();
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", busy_port))
                .await
                .unwrap();
            let (mut r, mut w) = tcp.into_split();
            let sent = payload.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&sent).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.unwrap();
            writer.await.unwrap();
            back == payload
        }));
    }
    for s in streams {
        let same = tokio::time::timeout(WAIT * 3, s)
            .await
            .expect("a stream beside the unread one finished")
            .unwrap();
        assert!(same, "a stream's bytes came back altered");
    }
    // The unread stream is still there, held back rather than cut, and the device too.
    assert!(relay.relay.online_endpoints("pi").is_some());
    never_read.set_nonblocking(true).unwrap();
    let mut peek = [0u8; 1];
    assert_eq!(never_read.peek(&mut peek).unwrap(), 1);
}

/// The bytes [`patterned_firehose`] sends: position-dependent, so that a lost, repeated or
/// reordered chunk shows.
fn pattern(total: usize) -> Vec<u8> {
    (0..total).map(|i| (i ^ (i >> 13)) as u8).collect()
}

/// A service that writes [`pattern`] to whoever connects, then closes.
async fn patterned_firehose(total: usize) -> std::net::SocketAddr {
    serve(move |mut tcp| async move {
        let bytes = pattern(total);
        let _ = tcp.write_all(&bytes).await;
        let _ = tcp.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_cannot_claim_another_name_or_get_a_shell() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let pi_key = keypair(dir.path(), "pi");
    let cam_key = keypair(dir.path(), "cam");
    let stranger_key = keypair(dir.path(), "stranger");
    relay.add_device("pi", &pi_key);
    relay.add_device("cam", &cam_key);
    let target = echo_server().await;
    let pi_cfg = ssh_config(dir.path(), &relay, "pi", &pi_key);

    // pi's key does not log in as cam.
    let (ok, _, err) = ssh_output(&pi_cfg, &["-N", "-l", "cam", "relay"], b"").await;
    assert!(!ok && err.contains("Permission denied"), "{err}");
    // An unknown key does not log in at all.
    let stranger_cfg = ssh_config(dir.path(), &relay, "pi", &stranger_key);
    let stranger_cfg = {
        let renamed = dir.path().join("ssh_config_stranger");
        std::fs::rename(&stranger_cfg, &renamed).unwrap();
        renamed
    };
    let pi_cfg = ssh_config(dir.path(), &relay, "pi", &pi_key);
    let (ok, _, err) = ssh_output(&stranger_cfg, &["-N", "relay"], b"").await;
    assert!(!ok && err.contains("Permission denied"), "{err}");
    // No shell, no exec.
    let (ok, out, err) = ssh_output(&pi_cfg, &["relay", "id"], b"").await;
    assert!(!ok && out.is_empty(), "{err}");
    let (ok, out, _) = ssh_output(&pi_cfg, &["-tt", "relay"], b"id\n").await;
    assert!(!ok && !String::from_utf8_lossy(&out).contains("uid="));
    // An endpoint under another device's name is refused.
    let (ok, _, err) = ssh_output(
        &pi_cfg,
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("cam:22:localhost:{}", target.port()),
            "relay",
        ],
        b"",
    )
    .await;
    assert!(!ok && err.contains("forwarding failed"), "{err}");
    // A relay-side target that is not allowed is refused.
    let (ok, _, err) = ssh_output(&pi_cfg, &["-W", &target.to_string(), "relay"], b"hi").await;
    assert!(!ok && err.contains("may not open"), "{err}");

    let audit = relay.audit_now(100).await;
    for event in ["auth", "session", "endpoint-add", "device-connect"] {
        assert!(
            audit
                .iter()
                .any(|r| r.event == event && r.outcome == "denied"),
            "no denied {event} in {audit:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_device_is_cut_off_while_online() {
    let site = relay_with_echo_device("op").await;
    let relay = &site.relay;
    // The CLI runs in another process against the same database.
    let (ok, _, err) = relay.cli(&["device", "rm", "pi"]);
    assert!(ok, "{err}");
    eventually("the removed device to go offline", || {
        relay.relay.online_endpoints("pi").is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_garbage_connections_are_closed_and_relay_keeps_serving() {
    use tokio::io::AsyncReadExt;
    let dir = tempdir();
    let relay = TestRelay::start_with(&dir.path().join("relay"), "127.0.0.1:0", |c| {
        c.pre_auth_timeout = std::time::Duration::from_millis(300);
        c.max_unauthenticated_per_ip = 4;
    })
    .await;
    let op_key = keypair(dir.path(), "op");
    relay.add_operator("op", &op_key, &["*"]);

    // A client that connects and never speaks is closed at the pre-auth deadline.
    let mut silent = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, silent.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a silent client must be dropped");
    assert!(
        buf.starts_with(b"SSH-2.0-burrow"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );

    // Garbage instead of an SSH banner: closed, nothing else affected.
    let mut garbage = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    garbage.write_all(&[0xff; 4096]).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, garbage.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a garbage client must be dropped");

    // More idle unauthenticated connections from one address than its cap: the extra ones are
    // refused (room is made only for other addresses).
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(relay.addr).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, extra.read_to_end(&mut buf))
        .await
        .unwrap()
        .ok();
    assert!(
        buf.is_empty(),
        "over the cap, the relay closes before its banner"
    );
    drop(idle);

    // Once the relay has seen the idle ones go (their places are given back as each close is
    // read), the operator gets in.
    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (ok, _, err) = ssh_output(&op_cfg, &["relay", "ls"], b"").await;
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{err}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn forward(handle: &Handle, address: &str, port: u32) -> Result<u32, String> {
    use burrow_ssh::driver::GlobalAnswer;
    match handle
        .global_request(GlobalRequest::TcpipForward {
            address: address.into(),
            port,
        })
        .await
    {
        Ok(GlobalAnswer::Success(bound)) => Ok(bound.unwrap_or(port)),
        Ok(GlobalAnswer::Failure) => Err("refused".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_tcpip_forward_removes_the_endpoint() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    relay.add_device("pi", &dev_key);
    let handle = burrow_ssh_client(relay.addr, "pi", &dev_key).await;
    forward(&handle, "", 22).await.unwrap();
    forward(&handle, "pi", 80).await.unwrap();
    let dynamic = forward(&handle, "localhost", 0).await.unwrap();
    assert!(dynamic >= 49152, "{dynamic}");
    assert!(forward(&handle, "other-device", 81).await.is_err());
    let mut ports = relay.relay.online_endpoints("pi").unwrap();
    ports.sort();
    assert_eq!(ports, vec![22, 80, dynamic as u16]);
    let cancelled = handle
        .global_request(GlobalRequest::CancelTcpipForward {
            address: "".into(),
            port: 80,
        })
        .await
        .unwrap();
    assert_eq!(cancelled, burrow_ssh::driver::GlobalAnswer::Success(None));
    assert_eq!(
        relay.relay.online_endpoints("pi").unwrap(),
        vec![22, dynamic as u16]
    );
    let audit = relay.audit_now(20).await;
    assert!(
        audit
            .iter()
            .any(|r| r.event == "endpoint-remove" && r.target == "pi:80")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_retention_is_applied_while_the_relay_runs() {
    let dir = tempdir();
    let relay = TestRelay::start_with(&dir.path().join("relay"), "127.0.0.1:0", |c| {
        c.audit_max_rows = 5;
        c.audit_prune_interval = std::time::Duration::from_millis(100);
    })
    .await;
    for i in 0..50 {
        relay
            .relay
            .store()
            .audit(&burrow_relay::store::AuditRecord {
                at: burrow_relay::store::now(),
                event: "auth".into(),
                who: format!("guess-{i}"),
                target: "127.0.0.1".into(),
                outcome: "denied".into(),
                detail: "wrong password".into(),
                device: None,
                operator: None,
            })
            .unwrap();
    }
    // 50 written, at most 5 kept: only the retention task can get it there.
    eventually("the audit table to be pruned to 5 entries", || {
        (relay.relay.store().audit_len().unwrap() <= 5).then_some(())
    })
    .await;
}

/// Reads what the relay sends a silent client until it closes; panics if it never does.
async fn read_until_closed(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .expect("the relay kept a silent connection open")
        .ok();
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_many_addresses_do_not_lock_everyone_out() {
    let dir = tempdir();
    let relay = TestRelay::start_with(&dir.path().join("relay"), "127.0.0.1:0", |c| {
        c.max_unauthenticated = 12;
        c.max_unauthenticated_per_ip = 4;
        // Only making room may close them within the test.
        c.banner_timeout = std::time::Duration::from_secs(60);
        c.pre_auth_timeout = std::time::Duration::from_secs(60);
    })
    .await;
    let op_key = keypair(dir.path(), "op");
    relay.add_operator("op", &op_key, &["*"]);
    // Three other addresses hold four silent connections each: the global cap is full.
    let mut silent = Vec::new();
    for host in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        for _ in 0..4 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{host}:0").parse().unwrap()).unwrap();
            silent.push(socket.connect(relay.addr).await.unwrap());
        }
    }
    // Each has been admitted once the relay's banner arrived.
    for tcp in &mut silent {
        let mut b = [0u8; 8];
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(WAIT, tcp.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
    }
    // A real operator still gets in: the oldest silent connection makes room.
    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let (ok, _, err) = ssh_output(&op_cfg, &["relay", "ls"], b"").await;
    assert!(ok, "locked out by silent connections: {err}");
    // The oldest silent connection was cut to make room.
    read_until_closed(&mut silent[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_at_the_banner_deadline() {
    let dir = tempdir();
    let relay = TestRelay::start_with(&dir.path().join("relay"), "127.0.0.1:0", |c| {
        c.banner_timeout = std::time::Duration::from_millis(200);
        // The authentication deadline alone would keep it for a minute.
        c.pre_auth_timeout = std::time::Duration::from_secs(60);
    })
    .await;
    let mut silent = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let got = read_until_closed(&mut silent).await;
    assert!(got.starts_with(b"SSH-2.0-burrow"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_flood_from_one_address_is_limited_and_others_get_in() {
    let dir = tempdir();
    let relay = TestRelay::start_with(&dir.path().join("relay"), "127.0.0.1:0", |c| {
        c.handshakes_per_ip_per_sec = 1.0;
        c.handshake_burst_per_ip = 5.0;
    })
    .await;
    let op_key = keypair(dir.path(), "op");
    relay.add_operator("op", &op_key, &["*"]);
    // A flood from 127.0.0.5: past the burst, connections are closed before any SSH work.
    let mut refused = 0;
    for _ in 0..15 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.5:0".parse().unwrap()).unwrap();
        let mut tcp = socket.connect(relay.addr).await.unwrap();
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 4];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut b))
            .await
            .unwrap()
            .unwrap_or(0);
        if n == 0 {
            refused += 1;
        }
    }
    assert!(
        refused >= 9,
        "only {refused} of 15 flood connections refused"
    );
    // Another address is not slowed at all.
    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let (ok, _, err) = ssh_output(&op_cfg, &["relay", "ls"], b"").await;
    assert!(ok, "{err}");
}

struct Device;

impl burrow_ssh::driver::Handler for Device {}

/// Logs in as device `name` with `key` on a connection of its own, then closes it.
async fn device_login(port: u16, name: &str, key: &std::path::Path) -> Result<(), String> {
    let key = burrow_ssh::auth::ClientKey::read(key).map_err(|e| e.to_string())?;
    let config = burrow_ssh::transport::Config {
        role: burrow_ssh::transport::Role::Client,
        software: "test_device".into(),
        comment: None,
        ciphers: vec!["chacha20-poly1305@openssh.com".into()],
        host_key: None,
        host_key_check: Some(Box::new(|_| true)),
        rekey_bytes: 1 << 30,
        rekey_time: std::time::Duration::from_secs(3600),
        ext_info: None,
        ..Default::default()
    };
    let session = burrow_ssh::session::Session::new(
        config,
        burrow_ssh::session::Side::Client {
            user: name.into(),
            credentials: vec![burrow_ssh::auth::Credential::Key(Box::new(key))],
        },
        burrow_ssh::channel::Limits::default(),
        std::time::Instant::now(),
    );
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (handle, task) = burrow_ssh::driver::connect(tcp, session, Device)
        .await
        .map_err(|e| e.to_string())?;
    drop(handle);
    task.abort();
    Ok(())
}

async fn scrape(port: u16) -> String {
    use tokio::io::AsyncReadExt;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    response
}

/// Devices behind one carrier NAT address coming back (after a relay restart, say) log in
/// without spending the budget that holds a handshake flood from that address; the flood from
/// there is still held, and the relay's log and metrics say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_behind_one_address_do_not_spend_the_flood_budget() {
    let dir = tempdir();
    let data = dir.path().join("relay");
    // A key of its own for each device: the relay refuses one key for two.
    let keys: Vec<_> = (0..12)
        .map(|i| keypair(dir.path(), &format!("dev-{i}")))
        .collect();
    let metrics = free_port();
    let (_relay, port, log) = relay_process(
        &data,
        &[
            "--handshakes-per-ip",
            "0.05",
            "--handshake-burst",
            "3",
            "--metrics",
            &format!("127.0.0.1:{metrics}"),
        ],
    );
    let store =
        burrow_relay::store::Store::open(&data.join(burrow_relay::datadir::DATABASE_FILE)).unwrap();
    for (i, key) in keys.iter().enumerate() {
        store
            .add_device(&format!("dev-{i}"), &[public_key(key)])
            .unwrap();
    }
    // Twelve devices from one address, one after another: four times the burst, at a rate
    // that would refill one token in twenty seconds.
    for (i, key) in keys.iter().enumerate() {
        let name = format!("dev-{i}");
        if let Err(e) = device_login(port, &name, key).await {
            panic!(
                "{name} (login {} from this address) was refused: {e}",
                i + 1
            );
        }
    }
    // Connections that never log in still spend it: past the burst they are closed at once.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut b = [0u8; 4];
        use tokio::io::AsyncReadExt;
        let n = tokio::time::timeout(WAIT, tcp.read(&mut b))
            .await
            .unwrap()
            .unwrap_or(0);
        if n == 0 {
            refused += 1;
        }
        held.push(tcp);
    }
    assert_eq!(refused, 3, "the flood past the burst");
    let page = scrape(metrics).await;
    assert!(
        page.contains("burrow_connections_refused_total{reason=\"rate\"} 3"),
        "{page}"
    );
    eventually("the relay to log the refusals", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| {
                l.contains(" WARN ")
                    && l.contains("refused 1 connections")
                    && l.contains("--handshakes-per-ip")
            })
            .then_some(())
    })
    .await;
    // One report for the three refusals: the next is due ten seconds later at the earliest.
    let reports = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("--handshakes-per-ip"))
        .count();
    assert_eq!(reports, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_just_after_a_device_connects_waits_for_its_endpoints() {
    let (dir, relay, dev_key, op_key) = relay_with("pi", "op").await;
    let service = echo_server().await;
    let dev_cfg = ssh_config(dir.path(), &relay, "pi", &dev_key);
    // The device logs in with no forwards yet (as in the moment after a reconnect, before its
    // `tcpip-forward` requests arrive); a control socket adds them later.
    let control = dir.path().join("device.sock");
    let control = control.to_str().unwrap();
    let _device = KillOnDrop(
        ssh(&dev_cfg, &["-M", "-S", control, "-N", "relay"])
            .spawn()
            .unwrap(),
    );
    relay.wait_online("pi").await;

    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let mut op = tokio::process::Command::from(ssh(&op_cfg, &["-v", "-W", "pi:22", "relay"]));
    op.kill_on_drop(true);
    let mut op = op.spawn().unwrap();
    let mut stdin = op.stdin.take().unwrap();
    let mut stdout = op.stdout.take().unwrap();
    let stderr = op.stderr.take().unwrap();
    let said = Arc::new(std::sync::Mutex::new(String::new()));
    let sink = said.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    // ssh sent its open; a refusal would come back within a round trip on loopback. Give it
    // that long to show (it must not), then let the device ask for its endpoint.
    eventually("ssh to ask for pi:22", || {
        said.lock()
            .unwrap()
            .contains("channel_connect_stdio_fwd")
            .then_some(())
    })
    .await;
    let refused = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            if said.lock().unwrap().contains("open failed") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        refused.is_err(),
        "the open was refused before the endpoints arrived: {}",
        said.lock().unwrap()
    );
    let added = Command::new("ssh")
        .arg("-F")
        .arg(&dev_cfg)
        .args(["-S", control, "-O", "forward", "-R"])
        .arg(format!("22:localhost:{}", service.port()))
        .arg("relay")
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );

    stdin.write_all(b"held, then through").await.unwrap();
    let mut got = [0u8; 18];
    tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_exact(&mut stdout, &mut got),
    )
    .await
    .expect("the held stream went through")
    .unwrap();
    assert_eq!(&got, b"held, then through");
    drop(stdin);
}
