//! Interop with real OpenSSH: a stock `ssh -R` device and stock `ssh -W` / `-J` operators.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_ssh_r_device_and_ssh_w_operator_with_half_close() {
    let (dir, relay, dev_key, op_key) = relay_with("dev", "op").await;
    let service = reply_after_eof_server(uppercase).await;

    let dev_cfg = ssh_config(dir.path(), &relay, "dev", &dev_key);
    let _device = stock_device(
        &dev_cfg,
        &["-R", &format!("22:localhost:{}", service.port())],
    );
    relay.wait_endpoint("dev", 22).await;

    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let payload: Vec<u8> = (0..200_000u32)
        .map(|i| b"abcdefghij"[(i % 10) as usize])
        .collect();
    let (ok, out, err) = ssh_output(&op_cfg, &["-W", "dev:22", "relay"], &payload).await;
    // The service answers only after it saw EOF: the operator's EOF crossed the relay and the
    // device, and the answer still came back on the half-open stream.
    assert!(ok, "ssh -W failed: {err}");
    assert_eq!(out, payload.to_ascii_uppercase());

    let audit = relay.audit_now(50).await;
    let stream = audit
        .iter()
        .find(|r| r.event == "stream" && r.who == "op" && r.outcome == "ok")
        .expect("the stream is audited");
    assert!(
        stream.detail.contains("200000 bytes to device"),
        "{}",
        stream.detail
    );
    assert!(
        stream.detail.contains("200000 bytes from device"),
        "{}",
        stream.detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_ssh_j_reaches_real_sshd_behind_device() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    let op_key = keypair(dir.path(), "op");
    let login_key = keypair(dir.path(), "login");
    relay.add_device("garage-pi", &dev_key);
    relay.add_operator("alice", &op_key, &["garage-*"]);
    let sshd = TestSshd::start(dir.path(), &[&login_key], "").await;

    let dev_cfg = ssh_config(dir.path(), &relay, "garage-pi", &dev_key);
    let _device = stock_device(&dev_cfg, &["-R", &format!("22:localhost:{}", sshd.port)]);
    relay.wait_endpoint("garage-pi", 22).await;

    // The device's own host key, pinned for the end-to-end hop.
    let dev_kh = dir.path().join("device_known_hosts");
    std::fs::write(&dev_kh, format!("garage-pi {}", sshd.host_key_line)).unwrap();
    let op_cfg = ssh_config(dir.path(), &relay, "alice", &op_key);
    let user = current_user();
    let (ok, out, err) = ssh_output(
        &op_cfg,
        &[
            "-J",
            "relay",
            "-i",
            login_key.to_str().unwrap(),
            "-o",
            &format!("UserKnownHostsFile={}", dev_kh.display()),
            &format!("{user}@garage-pi"),
            "echo",
            "hello-from-$((6*7))",
        ],
        b"",
    )
    .await;
    assert!(ok, "ssh -J failed: {err}");
    assert_eq!(String::from_utf8_lossy(&out).trim(), "hello-from-42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_ls_and_offline_reason() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let op_key = keypair(dir.path(), "op");
    let dev_key = keypair(dir.path(), "dev");
    relay.add_device("garage-pi", &dev_key);
    relay.add_device("other", &keypair(dir.path(), "other"));
    relay.add_operator("alice", &op_key, &["garage-*"]);
    let op_cfg = ssh_config(dir.path(), &relay, "alice", &op_key);

    let (ok, out, err) = ssh_output(&op_cfg, &["relay", "ls"], b"").await;
    assert!(ok, "{err}");
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("garage-pi") && out.contains("offline"),
        "{out}"
    );
    assert!(
        !out.contains("other"),
        "ls shows only devices the operator may reach: {out}"
    );

    let (ok, out, err) = ssh_output(&op_cfg, &["relay", "ls", "--json"], b"").await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v[0]["name"], "garage-pi");
    assert_eq!(v[0]["online"], false);

    let (ok, _, err) = ssh_output(&op_cfg, &["-W", "garage-pi:22", "relay"], b"").await;
    assert!(!ok);
    assert!(
        err.contains("device garage-pi is offline (never seen)"),
        "{err}"
    );

    let (ok, _, err) = ssh_output(&op_cfg, &["-W", "other:22", "relay"], b"").await;
    assert!(!ok);
    assert!(
        err.contains("operator alice may not reach device other"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_password_login_and_wrong_password() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    relay.add_device("pi", &dev_key);
    let hash = burrow_relay::admin::hash_password("correct horse").unwrap();
    relay
        .relay
        .store()
        .add_operator("bob", &[], Some(&hash), &["*".to_string()], false)
        .unwrap();
    let service = reply_after_eof_server(uppercase).await;
    let dev_cfg = ssh_config(dir.path(), &relay, "pi", &dev_key);
    let _device = stock_device(
        &dev_cfg,
        &["-R", &format!("80:localhost:{}", service.port())],
    );
    relay.wait_endpoint("pi", 80).await;

    let login = |passwords: &[&str]| {
        password_ssh(
            &relay,
            dir.path(),
            passwords,
            &["-W", "pi:80", "bob@127.0.0.1"],
        )
    };
    let mut child = login(&["correct horse"]).spawn().unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"password ok").await.unwrap();
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"PASSWORD OK");

    let out = tokio::time::timeout(WAIT, login(&["wrong"]).output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    // After a failure the relay still offers password (and publickey), so clients may retry.
    assert!(err.contains("publickey,password"), "{err}");
    let audit = relay.audit_now(50).await;
    assert!(audit.iter().any(|r| r.event == "auth"
        && r.who == "bob"
        && r.outcome == "denied"
        && r.detail.starts_with("wrong password")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistyped_password_can_be_retried_on_the_same_connection() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let hash = burrow_relay::admin::hash_password("correct horse").unwrap();
    relay
        .relay
        .store()
        .add_operator("bob", &[], Some(&hash), &["*".to_string()], false)
        .unwrap();
    let out = password_login(
        &relay,
        dir.path(),
        &["correct hrose", "correct horse"],
        &["bob@127.0.0.1", "ls"],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DEVICE"),
        "{err}"
    );
    let audit = relay.audit_now(50).await;
    let auths: Vec<_> = audit.iter().filter(|r| r.event == "auth").collect();
    assert!(
        auths
            .iter()
            .any(|r| r.outcome == "denied" && r.detail.starts_with("wrong password")),
        "{auths:?}"
    );
    assert!(auths.iter().any(|r| r.outcome == "ok"), "{auths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_listen_opens_a_real_port_on_the_relay() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    relay.add_device("pi", &dev_key);
    let port = free_port();
    relay
        .relay
        .store()
        .allow_listen("pi", "127.0.0.1", port)
        .unwrap();
    let service = reply_after_eof_server(uppercase).await;
    let dev_cfg = ssh_config(dir.path(), &relay, "pi", &dev_key);
    let device = stock_device(
        &dev_cfg,
        &["-R", &format!("{port}:localhost:{}", service.port())],
    );
    relay.wait_endpoint("pi", port).await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tcp.write_all(b"public port").await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"PUBLIC PORT");
    }
    // When the device goes away, so does its listener.
    drop(device);
    eventually("the listener to close", || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_err()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_exec_is_audited_as_refused_and_help_lists_console_commands() {
    let (dir, relay, _dev_key, op_key) = relay_with("pi", "op").await;
    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let (ok, _, err) = ssh_output(&op_cfg, &["relay", "id"], b"").await;
    assert!(!ok);
    assert!(err.contains("unknown command"), "{err}");
    let (ok, out, err) = ssh_output(&op_cfg, &["relay", "help"], b"").await;
    assert!(ok, "{err}");
    let out = String::from_utf8_lossy(&out);
    for command in [
        "ls [--json]",
        "console break",
        "console baud",
        "console watch",
    ] {
        assert!(out.contains(command), "help lacks {command:?}: {out}");
    }
    let audit = relay.audit_now(50).await;
    let exec = |cmd: &str| {
        audit
            .iter()
            .find(|r| r.event == "exec" && r.target == cmd)
            .unwrap_or_else(|| panic!("no exec row for {cmd}: {audit:#?}"))
            .outcome
            .clone()
    };
    assert_eq!(exec("id"), "denied");
    assert_eq!(exec("help"), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_stream_is_closed_when_the_device_session_dies() {
    let site = relay_with_echo_device("op").await;
    let relay = &site.relay;
    // An operator with an open stream that keeps its stdin open.
    let (mut operator, stdin) = open_echo_stream(&site.operator).await;
    // The device dies (SIGKILL: no goodbye); the operator's ssh must end, not hang.
    drop(site.device);
    tokio::time::timeout(WAIT, operator.wait())
        .await
        .expect("the operator's stream was left hanging after the device session ended")
        .unwrap();
    drop(stdin);
    let row = relay.ended_stream_row().await;
    assert_eq!(row.outcome, "interrupted", "{row:?}");
    assert!(row.detail.contains("4 bytes to device"), "{row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_user_names_are_bounded_and_escaped_in_the_audit() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let key = keypair(dir.path(), "op");
    // OpenSSH refuses control characters in a user name itself; their escaping is unit-tested
    // in burrow_proto::text. The length is what a hostile client can push here.
    let long = format!("evil{}", "x".repeat(20_000));
    let config = ssh_config(dir.path(), &relay, "nobody", &key);
    let (ok, _, _) = ssh_output(&config, &["-l", &long, "relay", "ls"], b"").await;
    assert!(!ok);
    let audit = relay.audit_now(50).await;
    let row = audit
        .iter()
        .find(|r| r.event == "auth" && r.who.starts_with("evil"))
        .expect("the refused login is audited");
    assert!(row.who.len() < 300, "{} bytes stored", row.who.len());
    assert!(row.who.contains("more bytes"), "{:?}", row.who);
    assert!(row.detail.len() < 2000, "{} bytes stored", row.detail.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_listen_listener_caps_its_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempdir();
    let relay = TestRelay::start_with(&dir.path().join("relay"), "127.0.0.1:0", |c| {
        c.max_listener_connections = 3;
    })
    .await;
    let dev_key = keypair(dir.path(), "dev");
    relay.add_device("pi", &dev_key);
    let port = free_port();
    relay
        .relay
        .store()
        .allow_listen("pi", "127.0.0.1", port)
        .unwrap();
    let service = echo_server().await;
    let dev_cfg = ssh_config(dir.path(), &relay, "pi", &dev_key);
    let _device = stock_device(
        &dev_cfg,
        &["-R", &format!("{port}:localhost:{}", service.port())],
    );
    relay.wait_endpoint("pi", port).await;
    let connect = || async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tcp.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        let got = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .unwrap();
        (tcp, matches!(got, Ok(2)))
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        let (tcp, echoed) = connect().await;
        assert!(echoed);
        held.push(tcp);
    }
    // The fourth is closed at once; when one leaves, there is room again.
    let (_, echoed) = connect().await;
    assert!(
        !echoed,
        "a fourth connection got through a listener capped at 3"
    );
    drop(held.pop());
    let deadline = std::time::Instant::now() + WAIT;
    while !connect().await.1 {
        assert!(
            std::time::Instant::now() < deadline,
            "no room after a connection left"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_locks_the_operator_until_unlocked() {
    let dir = tempdir();
    let relay = TestRelay::start_with(&dir.path().join("relay"), "127.0.0.1:0", |c| {
        c.password_lock_after = 3;
    })
    .await;
    let hash = burrow_relay::admin::hash_password("correct horse").unwrap();
    relay
        .relay
        .store()
        .add_operator("bob", &[], Some(&hash), &["*".to_string()], false)
        .unwrap();
    let login = async |passwords: &'static [&'static str], from: &'static str| {
        password_login(
            &relay,
            dir.path(),
            passwords,
            &["-b", from, "bob@127.0.0.1", "ls"],
        )
        .await
    };
    // One address alone cannot lock bob (it counts for at most a quarter of the lock, rounded
    // up): guesses from three addresses do.
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let out = login(&["guess"], from).await;
        assert!(!out.status.success());
    }
    // Now even the right password is refused, and the audit and `operator ls` say why.
    let out = login(&["correct horse"], "127.0.0.5").await;
    assert!(!out.status.success(), "a locked operator got in");
    let audit = relay.audit_now(50).await;
    assert!(
        audit
            .iter()
            .any(|r| r.event == "lock" && r.who == "bob" && r.detail.contains("3 wrong passwords")),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|r| r.event == "auth" && r.detail.contains("password login locked until")),
        "{audit:#?}"
    );
    let (ok, out, _) = relay.cli(&["operator", "ls"]);
    assert!(ok);
    assert!(out.contains("locked 20"), "{out}");
    let (ok, out, _) = relay.cli(&["operator", "ls", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v[0]["locked_until"].as_str().unwrap().ends_with('Z'), "{v}");
    // An admin lifts it.
    let (ok, out, err) = relay.cli(&["operator", "unlock", "bob"]);
    assert!(ok, "{err}");
    assert!(out.contains("unlocked"), "{out}");
    let out = login(&["correct horse"], "127.0.0.5").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `2026-11-23T12:03:00Z`
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'Z'
        && s.chars().filter(char::is_ascii_digit).count() == 14
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_ls_and_operator_ls_agree_on_formats() {
    let (dir, relay, dev_key, op_key) = relay_with("pi", "op").await;
    let service = echo_server().await;
    let dev_cfg = ssh_config(dir.path(), &relay, "pi", &dev_key);
    let _device = stock_device(
        &dev_cfg,
        &[
            "-R",
            &format!("22:localhost:{}", service.port()),
            "-R",
            &format!("80:localhost:{}", service.port()),
        ],
    );
    relay.wait_endpoint("pi", 80).await;
    relay.wait_endpoint("pi", 22).await;
    let started = burrow_relay::store::now();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let (ok, admin_json, _) = relay.cli(&["device", "ls", "--json"]);
    assert!(ok);
    let admin: serde_json::Value = serde_json::from_str(&admin_json).unwrap();
    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let (ok, op_json, _) = ssh_output(&op_cfg, &["relay", "ls", "--json"], b"").await;
    assert!(ok);
    let op: serde_json::Value = serde_json::from_slice(&op_json).unwrap();
    for v in [&admin[0], &op[0]] {
        let seen = v["last_seen"].as_str().unwrap();
        assert!(is_rfc3339_utc(seen), "{v}");
        // Online: seen now, not at its session start.
        assert!(
            seen > burrow_proto::time::format_rfc3339(started).as_str(),
            "{v}"
        );
        assert_eq!(v["endpoints"], serde_json::json!([22, 80]), "{v}");
    }
    // The tables print the same time format and endpoint list.
    let (_, admin_table, _) = relay.cli(&["device", "ls"]);
    let (_, op_table, _) = ssh_output(&op_cfg, &["relay", "ls"], b"").await;
    let op_table = String::from_utf8_lossy(&op_table).to_string();
    for table in [&admin_table, &op_table] {
        let line = table.lines().find(|l| l.starts_with("pi ")).unwrap();
        assert!(line.contains(" 22,80"), "{table}");
        assert!(
            line.split_whitespace().any(is_rfc3339_utc),
            "no RFC 3339 time in {line:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_download_from_stock_ssh_r_device_arrives_whole() {
    const TOTAL: usize = 64 << 20;
    let pattern = |i: usize| (i % 253) as u8;
    let source = serve(move |mut tcp| async move {
        use tokio::io::AsyncWriteExt;
        let mut sent = 0;
        let mut chunk = vec![0u8; 256 * 1024];
        while sent < TOTAL {
            let n = chunk.len().min(TOTAL - sent);
            for (j, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(sent + j);
            }
            if tcp.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            sent += n;
        }
        let _ = tcp.shutdown().await;
    })
    .await;
    let (dir, relay, dev_key, op_key) = relay_with("pi", "op").await;
    let dev_cfg = ssh_config(dir.path(), &relay, "pi", &dev_key);
    let _device = stock_device(
        &dev_cfg,
        &["-R", &format!("80:localhost:{}", source.port())],
    );
    relay.wait_endpoint("pi", 80).await;
    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let (ok, out, err) = ssh_output(&op_cfg, &["-W", "pi:80", "relay"], b"").await;
    assert!(ok, "{err}");
    assert_eq!(out.len(), TOTAL, "download cut short: {err}");
    assert!(
        out.iter().enumerate().all(|(i, b)| *b == pattern(i)),
        "download altered"
    );
    let audit = relay.audit_now(50).await;
    assert!(
        audit.iter().any(|r| r.event == "stream"
            && r.outcome == "ok"
            && r.detail.contains(&format!("{TOTAL} bytes from device"))),
        "{audit:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x11_forwarding_is_refused_and_no_sha1_signatures_are_offered() {
    let (dir, relay, _dev_key, op_key) = relay_with("pi", "op").await;
    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let mut cmd = ssh(
        &op_cfg,
        &[
            "-vv",
            "-o",
            "ForwardX11=yes",
            "-o",
            "ForwardX11Trusted=yes",
            "relay",
            "ls",
        ],
    );
    cmd.env("DISPLAY", ":0");
    let out = tokio::time::timeout(WAIT, tokio::process::Command::from(cmd).output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("X11 forwarding request failed"),
        "the relay accepted X11 forwarding: {err}"
    );
    let algs = err
        .lines()
        .find_map(|l| l.split("server-sig-algs=<").nth(1))
        .expect("the relay sends server-sig-algs");
    let algs: Vec<&str> = algs.trim_end_matches('>').split(',').collect();
    assert!(algs.contains(&"ssh-ed25519"), "{algs:?}");
    assert!(algs.contains(&"rsa-sha2-256"), "{algs:?}");
    assert!(
        !algs.contains(&"ssh-rsa"),
        "SHA-1 ssh-rsa offered: {algs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_stream_is_closed_when_the_device_session_is_taken_over() {
    let site = relay_with_echo_device("op").await;
    let (mut operator, _stdin) = open_echo_stream(&site.operator).await;
    // The device reboots: its old session freezes, a new one takes over.
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &site.device.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let old_peer = site.relay.relay.online_peer("pi").unwrap();
    let dev_key = site.dir.path().join("dev");
    let dev_cfg = ssh_config(site.dir.path(), &site.relay, "pi", &dev_key);
    let service = echo_server().await;
    let _new = stock_device(
        &dev_cfg,
        &["-R", &format!("22:localhost:{}", service.port())],
    );
    eventually("the takeover", || {
        site.relay
            .relay
            .online_peer("pi")
            .filter(|p| *p != old_peer)
            .map(|_| ())
    })
    .await;
    tokio::time::timeout(WAIT, operator.wait())
        .await
        .expect("the stream on the replaced session was left hanging")
        .unwrap();
    let row = site.relay.ended_stream_row().await;
    assert_eq!(row.outcome, "interrupted", "{row:?}");
}
