//! The burrow agent against a burrow relay and against a stock OpenSSH sshd.

mod common;

use burrow_proto::agent_config::{Connect, Expose, Seconds};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_exposes_and_connects_through_burrow_relay() {
    let (dir, relay, dev_key, op_key) = relay_with("pi", "op").await;
    let service = reply_after_eof_server(uppercase).await;
    // The relay-side targets: one allowed (the seeds' MQTT broker), one not.
    let broker = echo_server().await;
    let forbidden = echo_server().await;
    relay
        .relay
        .store()
        .allow_connect("pi", "127.0.0.1", broker.port())
        .unwrap();

    let mut config = agent_config(
        &relay.addr.to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    expose(&mut config, 80, service);
    let allowed_port = free_port();
    let denied_port = free_port();
    config.connect.push(Connect {
        listen: format!("127.0.0.1:{allowed_port}"),
        to: broker.to_string(),
    });
    config.connect.push(Connect {
        listen: format!("127.0.0.1:{denied_port}"),
        to: forbidden.to_string(),
    });
    let agent = TestAgent::start(dir.path(), config);
    let status = agent.wait_up().await;
    assert!(status.endpoints.iter().all(|e| e.up), "{status:?}");

    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let (ok, out, err) = ssh_output(&op_cfg, &["-W", "pi:80", "relay"], b"through the agent").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"THROUGH THE AGENT");

    let out = roundtrip(&format!("127.0.0.1:{allowed_port}"), b"mqtt hello")
        .await
        .unwrap();
    assert_eq!(out, b"mqtt hello");

    // The refused target: the connection is closed without a byte.
    let out = roundtrip(&format!("127.0.0.1:{denied_port}"), b"sneak")
        .await
        .unwrap_or_default();
    assert!(out.is_empty());
    let audit = relay.audit_now(100).await;
    assert!(
        audit.iter().any(|r| r.event == "device-connect"
            && r.outcome == "denied"
            && r.target == forbidden.to_string()
            && r.detail.contains("allow-connect")),
        "{audit:#?}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_probe_proves_the_tunnel() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    relay.add_device("pi", &dev_key);
    let mut config = agent_config(
        &relay.addr.to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    config.probe_interval = Some(Seconds::Fraction(0.2));
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    let probe = eventually("a probe result", || {
        agent.status().and_then(|s| s.last_probe)
    })
    .await;
    assert!(probe.ok, "{probe:?}");
    assert!(probe.rtt_ms.is_some());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_endpoint_is_internal_and_probes_are_not_audited() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    let op_key = keypair(dir.path(), "op");
    relay.add_device("pi", &dev_key);
    relay.add_operator("alice", &op_key, &["*"]);
    let service = echo_server().await;
    let mut config = agent_config(
        &relay.addr.to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    expose(&mut config, 22, service);
    config.probe_interval = Some(Seconds::Fraction(0.1));
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    // Several probes, each a stream through the relay back to the agent.
    eventually("an ok probe", || {
        agent
            .status()
            .and_then(|s| s.last_probe.filter(|p| p.ok).map(|_| ()))
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(relay.relay.online_endpoints("pi"), Some(vec![22]));
    let alice = ssh_config(dir.path(), &relay, "alice", &op_key);
    let (ok, out, _) = ssh_output(&alice, &["relay", "ls", "--json"], b"").await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v[0]["endpoints"], serde_json::json!([22]), "{v}");
    // The probe takes the first dynamic port; operators cannot reach it, and are not told of it.
    let (ok, _, err) = ssh_output(&alice, &["-W", "pi:49152", "relay"], b"hello").await;
    assert!(!ok);
    assert!(
        err.contains("does not expose port 49152 (it exposes: 22)"),
        "{err}"
    );
    let audit = relay.audit_now(200).await;
    assert!(
        !audit.iter().any(|r| r.event == "device-connect"),
        "probes in the audit: {audit:#?}"
    );
    let devices = relay.relay.store().devices().unwrap();
    assert_eq!(devices[0].endpoints, vec![22]);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_against_stock_sshd_forwards_and_retries_occupied_port() {
    let dir = tempdir();
    let dev_key = keypair(dir.path(), "dev");
    let sshd = TestSshd::start(dir.path(), &[&dev_key], "GatewayPorts no").await;

    let service = reply_after_eof_server(uppercase).await;
    let target = echo_server().await;
    // Someone already holds the remote port: the forward must show as down and be retried.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let remote_port = squatter.local_addr().unwrap().port();

    let mut config = sshd.agent_config(dir.path(), &dev_key);
    config.expose.push(Expose {
        port: 22,
        to: Some(service.to_string()),
        remote_port: Some(remote_port),
        bind: None,
    });
    let local_port = free_port();
    config.connect.push(Connect {
        listen: format!("127.0.0.1:{local_port}"),
        to: target.to_string(),
    });
    config.probe_interval = Some(Seconds::Fraction(0.3));
    let agent = TestAgent::start(dir.path(), config);

    let down = eventually("the occupied port to be reported", || {
        agent
            .status()
            .filter(|s| s.endpoints.iter().any(|e| e.error.is_some()))
    })
    .await;
    let error = down.endpoints[0].error.clone().unwrap();
    assert!(
        error.contains(&remote_port.to_string()) && error.contains("refused"),
        "{error}"
    );
    assert_ne!(down.state, burrow_agent::status::State::Up);

    drop(squatter);
    agent.wait_up().await;
    let out = roundtrip(&format!("127.0.0.1:{remote_port}"), b"via sshd")
        .await
        .unwrap();
    assert_eq!(out, b"VIA SSHD");
    let out = roundtrip(&format!("127.0.0.1:{local_port}"), b"local forward")
        .await
        .unwrap();
    assert_eq!(out, b"local forward");
    let probe = eventually("a probe through sshd", || {
        agent.status().and_then(|s| s.last_probe)
    })
    .await;
    assert!(probe.ok, "{probe:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_after_relay_restart() {
    let dir = tempdir();
    let data = dir.path().join("relay");
    let relay = TestRelay::start(&data).await;
    let addr = relay.addr;
    let dev_key = keypair(dir.path(), "dev");
    let op_key = keypair(dir.path(), "op");
    relay.add_device("pi", &dev_key);
    relay.add_operator("op", &op_key, &["*"]);
    let service = reply_after_eof_server(uppercase).await;
    let mut config = agent_config(
        &addr.to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    expose(&mut config, 80, service);
    let agent = TestAgent::start(dir.path(), config);
    relay.wait_endpoint("pi", 80).await;
    relay.stop().await;

    let relay = TestRelay::start_on(&data, &addr.to_string()).await;
    relay.wait_endpoint("pi", 80).await;
    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let (ok, out, err) = ssh_output(&op_cfg, &["-W", "pi:80", "relay"], b"again").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"AGAIN");
    let status = agent.wait_up().await;
    assert!(status.reconnects >= 1, "{status:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_changed_relay_host_key() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    relay.add_device("pi", &dev_key);
    let stale = burrow_io::keys::fingerprint(burrow_io::keys::generate_ed25519().public_key());
    let config = agent_config(&relay.addr.to_string(), "pi", &dev_key, &stale);
    let agent = TestAgent::start(dir.path(), config);
    let error = eventually("the host key error", || {
        agent.status().and_then(|s| s.last_error)
    })
    .await;
    assert!(error.contains(&stale), "{error}");
    assert!(error.contains(&relay.relay.fingerprint()), "{error}");
    // The fix names both places a pin comes from.
    assert!(
        error.contains("host_key in the config, or --host-key"),
        "{error}"
    );
    // A burrow relay answered: no hint about stock servers.
    assert!(!error.contains("not a burrow relay"), "{error}");
    // The agent gave up during key exchange: it never authenticated to the unpinned relay.
    assert!(relay.relay.online_endpoints("pi").is_none());
    let audit = relay.audit_now(100).await;
    assert!(
        !audit.iter().any(|r| r.event == "auth" && r.who == "pi"),
        "{audit:#?}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_change_hook_and_status_command() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    relay.add_device("pi", &dev_key);
    let service = echo_server().await;
    let log = dir.path().join("states.log");
    let mut config = agent_config(
        &relay.addr.to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    config.on_state_change = Some(format!("echo \"$BURROW_STATE\" >> {}", log.display()));
    expose(&mut config, 22, service);
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    eventually("the up hook", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.lines().any(|l| l == "up"))
    })
    .await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["agent", "status", "--status-file"])
        .arg(&agent.status_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("state      up since"), "{text}");
    assert!(text.contains(&format!("pi:22 -> {service}  up")), "{text}");
    assert!(text.contains(&relay.addr.to_string()), "{text}");

    relay.stop().await;
    eventually("the down hook", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.lines().any(|l| l == "down"))
    })
    .await;
    let status = agent.status().unwrap();
    assert_ne!(status.state, burrow_agent::status::State::Up);
    assert!(status.last_error.is_some());
    agent.stop().await;
}

/// A service that reads nothing until `go` fires, then counts everything to EOF and answers.
async fn late_counter(go: std::sync::Arc<tokio::sync::Notify>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        go.notified().await;
        let mut total = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        let _ = tcp.write_all(total.to_string().as_bytes()).await;
        let _ = tcp.shutdown().await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_on_agent_stream_is_slowed_not_dropped() {
    const TOTAL: usize = 24 << 20;
    let (dir, relay, dev_key, op_key) = relay_with("pi", "op").await;
    let hose = firehose(TOTAL).await;
    let go = std::sync::Arc::new(tokio::sync::Notify::new());
    let counter = late_counter(go.clone()).await;
    let service = reply_after_eof_server(uppercase).await;
    let mut config = agent_config(
        &relay.addr.to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    for (port, to) in [(80, hose), (81, service), (82, counter)] {
        expose(&mut config, port, to);
    }
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);

    // Download: an operator that does not read yet, while the device has 24 MiB to send.
    let mut downloader = tokio::process::Command::from(ssh(&op_cfg, &["-W", "pi:80", "relay"]));
    let mut downloader = downloader.kill_on_drop(true).spawn().unwrap();
    // Upload: 24 MiB to a device service that does not read yet.
    let mut uploader = tokio::process::Command::from(ssh(&op_cfg, &["-W", "pi:82", "relay"]));
    let mut uploader = uploader.kill_on_drop(true).spawn().unwrap();
    let mut up_stdin = uploader.stdin.take().unwrap();
    let upload = tokio::spawn(async move {
        let chunk = vec![b'u'; 64 * 1024];
        for _ in 0..TOTAL / chunk.len() {
            up_stdin.write_all(&chunk).await.unwrap();
        }
    });

    // Meanwhile other streams of the same device session keep moving.
    for _ in 0..3 {
        let (ok, out, err) = ssh_output(&op_cfg, &["-W", "pi:81", "relay"], &[b'q'; 1 << 20]).await;
        assert!(ok, "{err}");
        assert_eq!(out.len(), 1 << 20);
    }

    // Now both slow sides start reading: every byte arrives, nothing was dropped on the way.
    let mut got = Vec::with_capacity(TOTAL);
    let mut stdout = downloader.stdout.take().unwrap();
    tokio::time::timeout(WAIT, stdout.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), TOTAL);
    go.notify_one();
    tokio::time::timeout(WAIT, upload).await.unwrap().unwrap();
    let out = tokio::time::timeout(WAIT, uploader.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), TOTAL.to_string());

    let audit = relay.audit_now(100).await;
    assert!(
        !audit.iter().any(|r| r.detail.contains("did not read")),
        "{audit:#?}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_probe_forces_a_reconnect() {
    let dir = tempdir();
    let dev_key = keypair(dir.path(), "dev");
    // This sshd accepts remote forwards but opens nothing for the client: the probe cannot loop back.
    let sshd = TestSshd::start(dir.path(), &[&dev_key], "PermitOpen none").await;
    let service = echo_server().await;
    let mut config = sshd.agent_config(dir.path(), &dev_key);
    config.expose.push(Expose {
        port: 22,
        to: Some(service.to_string()),
        remote_port: Some(free_port()),
        bind: None,
    });
    config.probe_interval = Some(Seconds::Fraction(0.2));
    let agent = TestAgent::start(dir.path(), config);
    let status = eventually("a failed probe and a reconnect", || {
        agent
            .status()
            .filter(|s| s.reconnects >= 1 && s.last_probe.as_ref().is_some_and(|p| !p.ok))
    })
    .await;
    let probe = status.last_probe.unwrap();
    assert!(probe.error.unwrap().contains("refused the probe channel"));
    agent.stop().await;
}

/// More than four credit windows (2 MiB each): what flows after a half-close must not stall.
const AFTER_EOF: usize = 10 << 20;

/// A service that reads until EOF, then answers `AFTER_EOF` bytes (a download after the
/// operator half-closed).
async fn big_answer_after_eof() -> std::net::SocketAddr {
    serve(|mut tcp| async move {
        let mut request = Vec::new();
        if tcp.read_to_end(&mut request).await.is_err() {
            return;
        }
        let body: Vec<u8> = (0..AFTER_EOF).map(|i| (i % 251) as u8).collect();
        let _ = tcp.write_all(&body).await;
        let _ = tcp.shutdown().await;
    })
    .await
}

/// A service that half-closes at once, then counts what it receives until EOF and reports it
/// (an upload after the device side half-closed).
async fn count_after_own_eof() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<usize>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = serve(move |tcp| {
        let tx = tx.clone();
        async move {
            let (mut r, mut w) = tcp.into_split();
            let _ = w.shutdown().await;
            let mut got = Vec::new();
            let _ = r.read_to_end(&mut got).await;
            let _ = tx.send(got.len());
        }
    })
    .await;
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_stream_keeps_flowing_after_half_close_both_ways() {
    let (dir, relay, dev_key, op_key) = relay_with("pi", "op").await;
    let answer = big_answer_after_eof().await;
    let (counter, mut counts) = count_after_own_eof().await;
    let mut config = agent_config(
        &relay.addr.to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    expose(&mut config, 80, answer);
    expose(&mut config, 81, counter);
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let expected: Vec<u8> = (0..AFTER_EOF).map(|i| (i % 251) as u8).collect();

    // ssh -W: request, EOF, then the big answer.
    let (ok, out, err) = ssh_output(&op_cfg, &["-W", "pi:80", "relay"], b"GET big").await;
    assert!(ok, "{err}");
    assert_eq!(out.len(), AFTER_EOF);
    assert!(out == expected, "download after EOF arrived altered");
    // The upload after the device side half-closed goes through ssh -L: OpenSSH's `-W` ends
    // its own input when the remote sends EOF (stdio forwarding drains both ways), by design.
    // ssh -L: both directions through a local port.
    let (local, local2) = (free_port(), free_port());
    let forward = format!("127.0.0.1:{local}:pi:80");
    let forward2 = format!("127.0.0.1:{local2}:pi:81");
    let mut tunnel = tokio::process::Command::from(ssh(
        &op_cfg,
        &["-N", "-L", &forward, "-L", &forward2, "relay"],
    ));
    let _tunnel = tunnel.kill_on_drop(true).spawn().unwrap();
    let out = eventually_async_roundtrip(&format!("127.0.0.1:{local}"), b"GET big").await;
    assert!(out == expected, "download through -L: {} bytes", out.len());
    let out = roundtrip(&format!("127.0.0.1:{local2}"), &expected)
        .await
        .unwrap();
    assert!(out.is_empty());
    let got = tokio::time::timeout(WAIT, counts.recv()).await.unwrap();
    assert_eq!(got, Some(AFTER_EOF));
    agent.stop().await;
}

/// `roundtrip`, retried until the `ssh -L` listener is up.
async fn eventually_async_roundtrip(addr: &str, payload: &[u8]) -> Vec<u8> {
    for _ in 0..200 {
        if let Ok(out) = tokio::time::timeout(WAIT, roundtrip(addr, payload))
            .await
            .unwrap()
        {
            return out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_with_one_name_do_not_fight_and_the_displaced_one_knows_why() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    // Two keys of one device (the same key in two places is quarantined instead: see
    // tests/fleet.rs).
    let dev_key = keypair(dir.path(), "dev");
    let spare_key = keypair(dir.path(), "spare");
    relay.add_device("pi", &dev_key);
    relay
        .relay
        .store()
        .add_device_keys("pi", &[public_key(&spare_key)])
        .unwrap();
    let keys = std::cell::Cell::new(0);
    let config = || {
        let key = if keys.replace(1) == 0 {
            &dev_key
        } else {
            &spare_key
        };
        let mut c = agent_config(
            &relay.addr.to_string(),
            "pi",
            key,
            &relay.relay.fingerprint(),
        );
        // Without the relay's word, a displaced agent would be back within half a second.
        c.backoff_max = Some(Seconds::Whole(60));
        c
    };
    let first = TestAgent::start(dir.path(), config());
    first.wait_up().await;
    let second = TestAgent::start(dir.path(), config());
    second.wait_up().await;
    let status = eventually("the first agent to learn it was replaced", || {
        first.status().filter(|s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("replaced"))
        })
    })
    .await;
    let why = status.last_error.unwrap();
    assert!(why.contains("another agent may be using"), "{why}");
    assert!(
        why.contains("127.0.0.1"),
        "the new session's address: {why}"
    );
    assert!(why.contains("Waiting 60 s"), "{why}");
    // It waits instead of taking the name back: one takeover, not a fight.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let audit = relay.audit_now(100).await;
    let takeovers: Vec<_> = audit.iter().filter(|r| r.event == "takeover").collect();
    assert_eq!(takeovers.len(), 1, "{takeovers:#?}");
    assert!(
        takeovers[0]
            .detail
            .contains("two devices using the name or key"),
        "{takeovers:#?}"
    );
    assert_eq!(
        second.status().unwrap().state,
        burrow_agent::status::State::Up
    );
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pointed_at_a_plain_sshd_says_what_it_found() {
    let dir = tempdir();
    let dev_key = keypair(dir.path(), "dev");
    let sshd = TestSshd::start(dir.path(), &[&dev_key], "").await;
    // Pinned to a burrow relay's key, but the address is a stock sshd's port.
    let relay_pin = burrow_io::keys::fingerprint(burrow_io::keys::generate_ed25519().public_key());
    let config = agent_config(
        &format!("127.0.0.1:{}", sshd.port),
        "pi",
        &dev_key,
        &relay_pin,
    );
    let agent = TestAgent::start(dir.path(), config);
    let error = eventually("the handshake error", || {
        agent.status().and_then(|s| s.last_error)
    })
    .await;
    assert!(error.contains("not a burrow relay"), "{error}");
    assert!(error.contains("OpenSSH"), "{error}");
    assert!(error.contains("remote_port"), "{error}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_device_key_suggests_add_key() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let registered = keypair(dir.path(), "dev");
    let other = keypair(dir.path(), "other");
    relay.add_device("pi", &registered);
    let config = agent_config(
        &relay.addr.to_string(),
        "pi",
        &other,
        &relay.relay.fingerprint(),
    );
    let agent = TestAgent::start(dir.path(), config);
    let error = eventually("the refused key", || {
        agent.status().and_then(|s| s.last_error)
    })
    .await;
    assert!(error.contains("refused key"), "{error}");
    assert!(
        error.contains("burrow relay device add-key pi --pubkey FILE"),
        "{error}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_name_is_a_typo_is_told_whose_key_it_holds() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let key = keypair(dir.path(), "dev");
    relay.add_device("garage-pi", &key);
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"));
    agent
        .args([
            "agent",
            "--relay",
            &relay.addr.to_string(),
            "--name",
            "garage-py",
        ])
        .arg("--key")
        .arg(&key)
        .args(["--host-key", &relay.relay.fingerprint()])
        .arg("--status-file")
        .arg(dir.path().join("status.json"))
        .stderr(std::process::Stdio::null());
    let _agent = KillOnDrop(agent.spawn().unwrap());
    let error = eventually("the refused key", || {
        burrow_agent::status::read(&dir.path().join("status.json"))
            .ok()
            .and_then(|s| s.last_error)
    })
    .await;
    assert!(
        error.contains("this key is device garage-pi's, not garage-py's")
            && error.contains("name = \"garage-pi\""),
        "{error}"
    );
    // Not the advice that would register the key a second time.
    assert!(!error.contains("device add garage-py"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connect_names_the_missing_allow_connect_rule() {
    use std::io::{BufRead, BufReader};
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    relay.add_device("pi", &dev_key);
    let target = echo_server().await;
    let local = free_port();
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args([
            "agent",
            "--relay",
            &relay.addr.to_string(),
            "--name",
            "pi",
            "--key",
        ])
        .arg(&dev_key)
        .args(["--host-key", &relay.relay.fingerprint()])
        .args(["--connect", &format!("127.0.0.1:{local}={target}")])
        .arg("--status-file")
        .arg(dir.path().join("status.json"))
        .env("BURROW_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = agent.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    relay.wait_online("pi").await;
    // Until the agent's session is fully up, a connection is dropped for that reason instead.
    let deadline = std::time::Instant::now() + WAIT;
    let line = 'found: loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal in the agent's log"
        );
        let _ = roundtrip(&format!("127.0.0.1:{local}"), b"x").await;
        while let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            if line.contains("refused the connection") {
                break 'found line;
            }
        }
    };
    assert!(
        line.contains(&format!("burrow relay device allow-connect pi {target}")),
        "{line}"
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

/// Keys are renewed by volume on long transfers, in both roles: once with the limit set on
/// the relay (the server starts each exchange), once on the agent (the client does). Before,
/// the limit was only looked at when the weekly timer fired: 13.9 GiB went through one agent
/// session under one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_transfers_renew_keys_by_volume_in_both_roles() {
    const TOTAL: usize = 24 << 20;
    for limit_on_relay in [true, false] {
        let dir = tempdir();
        let relay = TestRelay::start_with(&dir.path().join("relay"), "127.0.0.1:0", |c| {
            if limit_on_relay {
                c.rekey_bytes = 1 << 20;
            }
        })
        .await;
        let dev_key = keypair(dir.path(), "dev");
        let op_key = keypair(dir.path(), "op");
        relay.add_device("pi", &dev_key);
        relay.add_operator("op", &op_key, &["*"]);
        let hose = firehose(TOTAL).await;
        let mut config = agent_config(
            &relay.addr.to_string(),
            "pi",
            &dev_key,
            &relay.relay.fingerprint(),
        );
        if !limit_on_relay {
            config.rekey_limit = Some("1M".into());
        }
        expose(&mut config, 80, hose);
        let agent = TestAgent::start(dir.path(), config);
        agent.wait_up().await;
        let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
        let (ok, out, err) = ssh_output(&op_cfg, &["-W", "pi:80", "relay"], b"").await;
        assert!(ok, "{err}");
        assert_eq!(out.len(), TOTAL, "every byte arrived across the rekeys");
        let exchanges = relay.relay.online_key_exchanges("pi").unwrap();
        let side = if limit_on_relay { "relay" } else { "agent" };
        assert!(
            exchanges >= 12,
            "{TOTAL} bytes with a 1 MiB limit on the {side}: only {exchanges} key exchanges"
        );
        agent.stop().await;
        relay.stop().await;
    }
}

/// `burrow agent ARGS...` run to its end: exit code and stdout.
fn agent_cli(args: &[&str], state_dir: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("agent")
        .args(args)
        // The default status file of this machine's other agent.
        .env("STATE_DIRECTORY", state_dir)
        .env_remove("BURROW_AGENT_STATUS")
        .env_remove("BURROW_AGENT_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_status_reads_its_configs_agent_and_fails_while_that_agent_is_down() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    relay.add_device("pi", &dev_key);
    let status_file = dir.path().join("pi-status.json");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "relay = \"{}\"\nname = \"pi\"\nkey = \"{}\"\nhost_key = \"{}\"\nstatus_file = \"{}\"\nbackoff_min = 0.1\nbackoff_max = 0.5\n",
            relay.addr,
            dev_key.display(),
            relay.relay.fingerprint(),
            status_file.display()
        ),
    )
    .unwrap();
    let mut agent = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
            .args(["agent", "--config"])
            .arg(&config)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let up = eventually("the agent to be up", || {
        burrow_agent::status::read(&status_file)
            .ok()
            .filter(|s| s.state == burrow_agent::status::State::Up)
    })
    .await;
    // Another agent on this machine, up, at the default place.
    let state_dir = dir.path().join("other-agent");
    std::fs::create_dir_all(&state_dir).unwrap();
    let mut other = up.clone();
    other.name = "other-device".into();
    other.pid = std::process::id();
    std::fs::write(
        state_dir.join("status.json"),
        serde_json::to_string(&other).unwrap(),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    for args in [
        ["status", "--config", config],
        ["--config", config, "status"],
    ] {
        let (code, out) = agent_cli(&args, &state_dir);
        assert_eq!(code, 0, "{args:?}: {out}");
        assert!(out.contains("device     pi\n"), "{args:?}: {out}");
        assert!(out.contains("state      up"), "{args:?}: {out}");
    }

    // The relay goes away: the agent runs, its tunnel does not.
    relay.stop().await;
    eventually("the agent to notice", || {
        burrow_agent::status::read(&status_file)
            .ok()
            .filter(|s| s.state != burrow_agent::status::State::Up)
    })
    .await;
    let (code, out) = agent_cli(&["status", "--config", config], &state_dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("device     pi\n"), "{out}");

    // The agent is killed: its last status says up or connecting, but nothing runs.
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    let (code, out) = agent_cli(&["--config", config, "status"], &state_dir);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("NOT RUNNING"), "{out}");
}
