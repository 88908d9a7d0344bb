//! Several relays on one PostgreSQL registry (a throwaway server per test, run as an
//! unprivileged account): routing across relays, takeover and revocation cluster-wide, the
//! migration from SQLite, and the metrics page.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Registers device `pi` (key `dev`) and operator `op` allowed everywhere (key `op`).
async fn register(relay: &TestRelay, dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let dev = keypair(dir, "dev");
    let op = keypair(dir, "op");
    let db = relay.relay.db();
    db.add_device("pi", &[public_key(&dev)]).await.unwrap();
    db.add_operator("op", &[public_key(&op)], None, &["*".into()], false)
        .await
        .unwrap();
    (dev, op)
}

/// Three relays on one database.
async fn three(dir: &Path, pg: &TestPostgres) -> [TestRelay; 3] {
    [
        cluster_relay(dir, pg, "r1").await,
        cluster_relay(dir, pg, "r2").await,
        cluster_relay(dir, pg, "r3").await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_one_relay_is_reached_through_the_others() {
    let dir = tempdir();
    let pg = TestPostgres::start().await;
    let [r1, r2, r3] = three(dir.path(), &pg).await;
    let (dev_key, op_key) = register(&r1, dir.path()).await;
    // PostgreSQL refuses one key for two principals as SQLite does, naming the holder.
    let refused = r2
        .relay
        .db()
        .add_operator("eve", &[public_key(&dev_key)], None, &["*".into()], false)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("device \"pi\""), "{refused}");
    let login_key = keypair(dir.path(), "login");
    let sshd = TestSshd::start(dir.path(), &[&login_key], "").await;
    let echo = echo_server().await;
    let dev_cfg = ssh_config(dir.path(), &r1, "pi", &dev_key);
    let _device = stock_device(
        &dev_cfg,
        &[
            "-R",
            &format!("22:localhost:{}", sshd.port),
            "-R",
            &format!("7:localhost:{}", echo.port()),
        ],
    );
    r1.wait_endpoint("pi", 22).await;
    r1.wait_endpoint("pi", 7).await;

    // ssh -W through r2: bytes both ways, half-close, byte for byte.
    let payload: Vec<u8> = (0..4usize << 20).map(|i| (i ^ (i >> 9)) as u8).collect();
    let op2 = ssh_config(&dir.path().join("r2"), &r2, "op", &op_key);
    let (ok, out, err) = ssh_output(&op2, &["-W", "pi:7", "relay"], &payload).await;
    assert!(ok, "{err}");
    assert!(out == payload, "{} bytes came back", out.len());
    let audit = r2.audit_now(50).await;
    let row = audit
        .iter()
        .find(|r| r.event == "stream" && r.target == "pi:7" && r.outcome != "open")
        .expect("the stream is audited by the operator's relay");
    assert_eq!(row.outcome, "ok", "{row:?}");
    assert!(row.detail.contains("via relay r1"), "{row:?}");

    // ssh -J through r3 to the sshd behind the device, end to end.
    let dev_kh = dir.path().join("device_known_hosts");
    std::fs::write(&dev_kh, format!("pi {}", sshd.host_key_line)).unwrap();
    let op3 = ssh_config(&dir.path().join("r3"), &r3, "op", &op_key);
    let (ok, out, err) = ssh_output(
        &op3,
        &[
            "-J",
            "relay",
            "-i",
            login_key.to_str().unwrap(),
            "-o",
            &format!("UserKnownHostsFile={}", dev_kh.display()),
            &format!("{}@pi", current_user()),
            "echo",
            "across-$((6*7))",
        ],
        b"",
    )
    .await;
    assert!(ok, "ssh -J through r3: {err}");
    assert_eq!(String::from_utf8_lossy(&out).trim(), "across-42");

    // Every relay lists the device with the relay holding it.
    let (ok, out, err) = ssh_output(&op3, &["relay", "ls", "--json"], b"").await;
    assert!(ok, "{err}");
    let listing: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(listing[0]["name"], "pi");
    assert_eq!(listing[0]["online"], true);
    assert_eq!(listing[0]["relay"], "r1");
    // So does the admin's `device ls`, in text too.
    let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["relay", "--database", &pg.url, "device", "ls"])
        // The log a user gets by default.
        .env_remove("BURROW_LOG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The schema exists already: PostgreSQL has nothing to say about it.
    assert!(!stderr.contains("NOTICE"), "{stderr}");
    let mut lines = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    let header = lines.next().unwrap();
    let pi = lines.find(|l| l.first() == Some(&"pi")).unwrap();
    let relay_col = header
        .iter()
        .position(|c| *c == "RELAY")
        .expect("a RELAY column");
    // LAST SEEN is two words in the header and one in a row.
    assert_eq!(pi.get(relay_col - 1), Some(&"r1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reconnecting_through_another_relay_takes_over_at_once() {
    let dir = tempdir();
    let pg = TestPostgres::start().await;
    let [r1, r2, r3] = three(dir.path(), &pg).await;
    let (dev_key, op_key) = register(&r1, dir.path()).await;
    let echo = echo_server().await;
    let forward = format!("7:localhost:{}", echo.port());
    let old = stock_device(
        &ssh_config(&dir.path().join("r1"), &r1, "pi", &dev_key),
        &["-R", &forward],
    );
    r1.wait_endpoint("pi", 7).await;
    // The old session freezes (TCP open, nothing answers), as after a dead link.
    let stopped = Command::new("kill")
        .args(["-STOP", &old.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let _new = stock_device(
        &ssh_config(&dir.path().join("r2"), &r2, "pi", &dev_key),
        &["-R", &forward],
    );
    r2.wait_endpoint("pi", 7).await;
    // The endpoint works at once, through a third relay.
    let op3 = ssh_config(&dir.path().join("r3"), &r3, "op", &op_key);
    let (ok, out, err) = ssh_output(&op3, &["-W", "pi:7", "relay"], b"right away").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"right away");
    // And r1 dropped the stale session.
    eventually("r1 to drop the stale session", || {
        r1.relay.online_endpoints("pi").is_none().then_some(())
    })
    .await;
    let audit = r1.audit_now(50).await;
    assert!(
        audit
            .iter()
            .any(|r| r.event == "takeover" && r.detail.contains("on relay r2")),
        "{audit:#?}"
    );
    drop(old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_on_one_relay_cut_sessions_held_on_another() {
    let dir = tempdir();
    let pg = TestPostgres::start().await;
    let [r1, r2, r3] = three(dir.path(), &pg).await;
    let (dev_key, op_key) = register(&r1, dir.path()).await;
    let echo = echo_server().await;
    let _device = stock_device(
        &ssh_config(&dir.path().join("r1"), &r1, "pi", &dev_key),
        &["-R", &format!("7:localhost:{}", echo.port())],
    );
    r1.wait_endpoint("pi", 7).await;
    // An operator stream held on r2 (to the device on r1).
    let op2 = ssh_config(&dir.path().join("r2"), &r2, "op", &op_key);
    let (mut stream, _stdin) = open_echo_stream_to(&op2, "pi:7").await;

    // `operator rm` given to r3's registry (the CLI, on the database) cuts it within 2 s.
    let burrow = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_burrow"))
            .arg("relay")
            .args(args)
            .args(["--database", &pg.url])
            .output()
            .unwrap()
    };
    let started = Instant::now();
    let out = burrow(&["operator", "rm", "op"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ended = tokio::time::timeout(WAIT, stream.wait())
        .await
        .expect("the operator's stream was cut");
    assert!(ended.is_ok());
    let operator_cut = started.elapsed();

    // `device rm` cuts the device's session on r1 the same way.
    let started = Instant::now();
    let out = burrow(&["device", "rm", "pi"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("r1 to cut the removed device", || {
        r1.relay.online_endpoints("pi").is_none().then_some(())
    })
    .await;
    let device_cut = started.elapsed();
    // Bounds, not timings: a poll every 2 s would pass these too; NOTIFY is faster.
    assert!(operator_cut < Duration::from_secs(3), "{operator_cut:?}");
    assert!(device_cut < Duration::from_secs(3), "{device_cut:?}");
    drop(r3);
}

/// An operator's `ssh -W TARGET` that has had a first message echoed and keeps its stdin open.
async fn open_echo_stream_to(
    config: &Path,
    target: &str,
) -> (tokio::process::Child, tokio::process::ChildStdin) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cmd = tokio::process::Command::from(ssh(config, &["-W", target, "relay"]));
    let mut child = cmd.kill_on_drop(true).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(WAIT, stdout.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
    (child, stdin)
}

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_every_row_of_a_single_relay() {
    let dir = tempdir();
    let single = TestRelay::start(&dir.path().join("single")).await;
    let store = single.relay.store();
    // A key belongs to one device or operator: two each for ten devices, then the operators'.
    let mut keys = Vec::new();
    for i in 0..24 {
        let k = keypair(dir.path(), &format!("k{i}"));
        keys.push(public_key(&k));
    }
    for i in 0..10 {
        store
            .add_device(&format!("dev-{i}"), &keys[2 * i..2 * i + 2])
            .unwrap();
        store
            .allow_connect(&format!("dev-{i}"), "localhost", 1000 + i as u16)
            .unwrap();
    }
    store.allow_listen("dev-3", "127.0.0.1", 8080).unwrap();
    // The fleet's rows: labels, a quarantined key, a join token, a device waiting for approval.
    store
        .set_labels(
            "dev-4",
            &burrow_proto::labels::parse_labels(&["site=osaka,role=cam"]).unwrap(),
            &[],
        )
        .unwrap();
    store
        .quarantine_key(&burrow_relay::store::fleet::Quarantine {
            device: "dev-5".into(),
            fingerprint: burrow_io::keys::fingerprint(&keys[10]),
            since: 7,
            detail: "seen twice".into(),
            kept_relay: "single".into(),
            kept_session: 3,
            kept_instance: "0123456789abcdef".into(),
        })
        .unwrap();
    let token = burrow_relay::store::fleet::TokenRecord {
        id: "abc123".into(),
        created: 1,
        created_by: "root".into(),
        expires: 99,
        max_uses: None,
        uses: 0,
        name_pattern: "dev-*".into(),
        labels: burrow_proto::labels::parse_labels(&["site=osaka"]).unwrap(),
        approve: true,
        replaces: None,
        last_used_by: None,
        last_used: None,
        revoked: None,
    };
    store
        .create_token(&burrow_relay::store::fleet::NewToken {
            record: token.clone(),
            secret_hash: "00ff".into(),
        })
        .unwrap();
    store
        .add_operator(
            "alice",
            &keys[20..22],
            Some("$argon2id$fake"),
            &["dev-*".into()],
            false,
        )
        .unwrap();
    store
        .add_operator(
            "carol",
            &keys[22..23],
            None,
            &["dev-1".into(), "dev-2".into()],
            true,
        )
        .unwrap();
    for i in 0..300 {
        single.relay.db().submit(burrow_relay::store::Write::Audit(
            burrow_relay::store::AuditRecord {
                at: 1_000 + i,
                event: "auth".into(),
                who: format!("dev-{}", i % 10),
                target: "127.0.0.1:1".into(),
                outcome: "ok".into(),
                detail: format!("row {i}"),
                device: None,
                operator: None,
            },
        ));
    }
    single.relay.db().flush().await;
    let before_devices = store.devices().unwrap();
    let before_operators = store.operators().unwrap();
    let before_audit = store.audit_tail(10_000).unwrap();
    let store_tokens = store.tokens().unwrap();
    assert_eq!(store_tokens, [token]);
    single.stop().await;

    let pg = TestPostgres::start().await;
    let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["relay", "migrate", "--to", &pg.url, "--data-dir"])
        .arg(dir.path().join("single"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("device_keys"), "{said}");

    // Everything arrived, read back through the cluster's own registry.
    let db = burrow_relay::store::Db::postgres(&pg.url, "check")
        .await
        .unwrap();
    let mut after_devices = db.devices().await.unwrap();
    for d in &mut after_devices {
        d.relay = None;
    }
    assert_eq!(after_devices, before_devices);
    assert_eq!(db.tokens().await.unwrap(), store_tokens);
    assert_eq!(db.operators().await.unwrap(), before_operators);
    let after_audit = db.audit_tail(10_000).await.unwrap();
    assert_eq!(after_audit, before_audit);
    // A second migration into the now populated database is refused, not doubled.
    let again = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["relay", "migrate", "--to", &pg.url, "--data-dir"])
        .arg(dir.path().join("single"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("empty database"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// Parses the metrics page with the Prometheus client's own text-format parser: each sample
/// as `name{labels} value` lines of JSON.
fn parse_metrics(page: &str) -> Vec<serde_json::Value> {
    const PARSER: &str = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        print(json.dumps({"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": s.value}))
"#;
    use std::io::Write;
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the page does not parse as Prometheus text (pip install prometheus-client; ./test.sh does): {}\n{page}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sample(samples: &[serde_json::Value], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .find(|s| {
            s["name"] == name && label.is_none_or(|(k, v)| s["labels"][k].as_str() == Some(v))
        })
        .and_then(|s| s["value"].as_f64())
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_as_streams_run() {
    let dir = tempdir();
    let pg = TestPostgres::start().await;
    let [r1, r2, _r3] = three(dir.path(), &pg).await;
    let (dev_key, op_key) = register(&r1, dir.path()).await;
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = metrics.local_addr().unwrap();
    tokio::spawn(r2.relay.clone().serve_metrics(metrics, r2.shutdown.clone()));

    let before = parse_metrics(&scrape(addr).await);
    let families: Vec<&str> = before.iter().filter_map(|s| s["family"].as_str()).collect();
    for f in [
        "burrow_devices_online",
        "burrow_devices_held",
        "burrow_operator_sessions",
        "burrow_streams_open",
        "burrow_streams",
        "burrow_stream_bytes",
        "burrow_auth_failures",
        "burrow_takeovers",
        "burrow_peer_streams",
        "burrow_db_operation_seconds",
        "burrow_db_errors",
        "burrow_audit_queue_length",
        "burrow_degraded",
    ] {
        assert!(families.contains(&f), "{f} missing: {families:?}");
    }
    assert_eq!(sample(&before, "burrow_streams_total", None), 0.0);
    assert_eq!(sample(&before, "burrow_degraded", None), 0.0);

    let echo = echo_server().await;
    let _device = stock_device(
        &ssh_config(&dir.path().join("r1"), &r1, "pi", &dev_key),
        &["-R", &format!("7:localhost:{}", echo.port())],
    );
    r1.wait_endpoint("pi", 7).await;
    let op2 = ssh_config(&dir.path().join("r2"), &r2, "op", &op_key);
    let payload = vec![b'm'; 100_000];
    let (ok, out, err) = ssh_output(&op2, &["-W", "pi:7", "relay"], &payload).await;
    assert!(ok && out == payload, "{err}");
    // A wrong key counts as a failure by reason.
    let stranger = keypair(dir.path(), "stranger");
    std::fs::create_dir_all(dir.path().join("stranger-home")).unwrap();
    let bad = ssh_config(&dir.path().join("stranger-home"), &r2, "op", &stranger);
    let (ok, _, _) = ssh_output(&bad, &["relay", "ls"], b"").await;
    assert!(!ok);

    let after = eventually_async("the counters to move", || async {
        let s = parse_metrics(&scrape(addr).await);
        (sample(&s, "burrow_streams_total", None) >= 1.0
            && sample(&s, "burrow_streams_open", None) == 0.0)
            .then_some(s)
    })
    .await;
    assert_eq!(sample(&after, "burrow_devices_online", None), 1.0);
    assert_eq!(sample(&after, "burrow_devices_held", None), 0.0);
    assert!(
        sample(
            &after,
            "burrow_stream_bytes_total",
            Some(("direction", "to_device"))
        ) >= 100_000.0
    );
    assert!(
        sample(
            &after,
            "burrow_stream_bytes_total",
            Some(("direction", "from_device"))
        ) >= 100_000.0
    );
    assert!(
        sample(
            &after,
            "burrow_auth_failures_total",
            Some(("reason", "unknown_key"))
        ) >= 1.0
    );
    assert!(sample(&after, "burrow_db_operation_seconds_count", None) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_held_on_one_relay_is_shared_across_the_others() {
    let dir = tempdir();
    let pg = TestPostgres::start().await;
    let [r1, r2, r3] = three(dir.path(), &pg).await;
    let dev = keypair(dir.path(), "dev");
    let alice = keypair(dir.path(), "alice");
    let bob = keypair(dir.path(), "bob");
    let db = r1.relay.db();
    db.add_device("pi", &[public_key(&dev)]).await.unwrap();
    for (name, key) in [("alice", &alice), ("bob", &bob)] {
        db.add_operator(name, &[public_key(key)], None, &["*".into()], false)
            .await
            .unwrap();
    }
    let router = FakeRouter::start(&dir.path().join("ttyUSB0"));
    let mut config = agent_config(&r1.addr.to_string(), "pi", &dev, &r1.relay.fingerprint());
    config
        .console
        .push(burrow_proto::agent_config::Console::new(
            "console",
            router.path.clone(),
            9600,
        ));
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;

    // alice writes through r2; bob watches through r3.
    let alice_cfg = ssh_config(&dir.path().join("r2"), &r2, "alice", &alice);
    let bob_cfg = ssh_config(&dir.path().join("r3"), &r3, "bob", &bob);
    let mut a = Terminal::spawn(&alice_cfg, &["-l", "alice:pi", "relay"]);
    a.expect("connected to pi/console, read-write").await;
    let b = Terminal::spawn(&bob_cfg, &["-l", "bob:pi", "relay"]);
    b.expect("read-only; alice holds write").await;
    a.send(b"show version\r").await;
    eventually("alice's line at the router", || {
        String::from_utf8_lossy(&router.received())
            .contains("show version\r")
            .then_some(())
    })
    .await;
    a.expect("Router# got show version").await;
    b.expect("Router# got show version").await;
    // A break from r2 reaches the hub on r1 (the relay holding the device).
    a.send(b"\x05cl1").await;
    a.expect("break (500 ms) sent by alice").await;
    b.expect("break (500 ms) sent by alice").await;
    a.send(b"\x05c.").await;
    assert!(a.wait().await);
    drop(b);

    let audit = r1.audit_now(100).await;
    assert!(
        audit
            .iter()
            .any(|r| r.event == "console-break" && r.who == "alice"),
        "{audit:#?}"
    );
    let markers = eventually("the recording on r1 to hold both operators", || {
        let files = burrow_relay::console::recording::list(&r1.data_dir, Some("pi")).ok()?;
        let text = std::fs::read_to_string(&files.first()?.path).ok()?;
        let markers: Vec<String> = text
            .lines()
            .skip(1)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e[1] == "m")
            .filter_map(|e| e[2].as_str().map(str::to_string))
            .collect();
        markers
            .iter()
            .any(|m| m.starts_with("detach alice"))
            .then_some(markers)
    })
    .await;
    for m in ["attach alice (read-write)", "attach bob (read-only)"] {
        assert!(markers.iter().any(|x| x == m), "{m} not in {markers:?}");
    }
    assert!(
        markers
            .iter()
            .any(|x| x.starts_with("break (500 ms) sent by alice")),
        "{markers:?}"
    );

    // bob's menu on r3 lists the console r1 holds and attaches to it there.
    let mut m = Terminal::spawn(&bob_cfg, &["relay"]);
    m.expect("pi/console").await;
    m.expect("online at relay r1").await;
    m.send(b"1\r").await;
    m.expect("connected to pi/console, read-write").await;
    m.send(b"from the menu\r").await;
    m.expect("Router# got from the menu").await;
    m.send(b"\x05c.").await;
    // Back at the menu (drawn a second time) before quitting it.
    m.expect_times("burrow: consoles for bob", 2).await;
    m.send(b"q\r").await;
    assert!(m.wait().await);
    agent.stop().await;
}

/// Writes `sent` into an open echo stream (an `ssh -W` child) and reads it back.
async fn echo_back(
    stdin: &mut tokio::process::ChildStdin,
    stdout: &mut tokio::process::ChildStdout,
    sent: &[u8],
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stdin.write_all(sent).await.unwrap();
    let mut buf = vec![0u8; sent.len()];
    tokio::time::timeout(WAIT, stdout.read_exact(&mut buf))
        .await
        .expect("the stream answered")
        .unwrap();
    assert_eq!(buf, sent);
}

/// Three relay processes on `pg`: (process, port, host key fingerprint) each.
fn relay_processes(dir: &Path, pg: &TestPostgres) -> Vec<(KillOnDrop, u16, String)> {
    ["r1", "r2", "r3"]
        .iter()
        .map(|id| {
            let data = dir.join(id);
            let init = Command::new(env!("CARGO_BIN_EXE_burrow"))
                .args(["relay", "init", "--data-dir"])
                .arg(&data)
                .output()
                .unwrap();
            assert!(init.status.success());
            let fp = Command::new(env!("CARGO_BIN_EXE_burrow"))
                .args(["relay", "fingerprint", "--data-dir"])
                .arg(&data)
                .output()
                .unwrap();
            let fp = String::from_utf8_lossy(&fp.stdout).trim().to_string();
            let (process, port, _log) = relay_process(
                &data,
                &[
                    "--database",
                    &pg.url,
                    "--relay-id",
                    id,
                    "--peer-listen",
                    "127.0.0.1:0",
                ],
            );
            (process, port, fp)
        })
        .collect()
}

/// An ssh_config for operator `op` on the relay process at `port`.
fn process_ssh_config(
    dir: &Path,
    name: &str,
    port: u16,
    data: &Path,
    key: &Path,
) -> std::path::PathBuf {
    let line = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args([
            "relay",
            "fingerprint",
            "--known-hosts",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data)
        .output()
        .unwrap();
    let kh = dir.join(format!("known_hosts_{name}"));
    std::fs::write(&kh, &line.stdout).unwrap();
    let path = dir.join(format!("ssh_config_{name}"));
    std::fs::write(
        &path,
        format!(
            "Host relay\n  HostName 127.0.0.1\n  Port {port}\n  User op\n  IdentityFile {}\n  UserKnownHostsFile {}\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n  ConnectTimeout 10\n",
            key.display(),
            kh.display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_loses_only_what_was_on_it() {
    let dir = tempdir();
    let pg = TestPostgres::start().await;
    let mut relays = relay_processes(dir.path(), &pg);
    let dev = keypair(dir.path(), "dev");
    let op = keypair(dir.path(), "op");
    let db = burrow_relay::store::Db::postgres(&pg.url, "")
        .await
        .unwrap();
    db.add_device("pi", &[public_key(&dev)]).await.unwrap();
    db.add_operator("op", &[public_key(&op)], None, &["*".into()], false)
        .await
        .unwrap();
    let echo = echo_server().await;
    // The agent knows all three relays and holds sessions to two of them at once.
    let mut config = agent_config(
        &relays
            .iter()
            .map(|(_, p, _)| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(","),
        "pi",
        &dev,
        &relays
            .iter()
            .map(|(_, _, fp)| fp.clone())
            .collect::<Vec<_>>()
            .join(","),
    );
    config.connections = Some(2);
    expose(&mut config, 7, echo);
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    let port = |i: usize| relays[i].1;
    let op_cfg = |i: usize| {
        process_ssh_config(
            dir.path(),
            &format!("r{}", i + 1),
            port(i),
            &dir.path().join(format!("r{}", i + 1)),
            &op,
        )
    };
    // The agent holds r1 and r2: each answers for the device by itself.
    let through_r2 = op_cfg(1);
    eventually_async("the device on r2 too", || {
        let cfg = through_r2.clone();
        async move {
            let (ok, out, _) = ssh_output(&cfg, &["-W", "pi:7", "relay"], b"r2").await;
            (ok && out == b"r2").then_some(())
        }
    })
    .await;
    let holders = |db: burrow_relay::store::Db| async move {
        let devices = db.devices().await.ok()?;
        let holders = devices.iter().find(|d| d.name == "pi")?.relay.clone()?;
        let mut holders: Vec<String> = holders.split(',').map(str::to_string).collect();
        holders.sort_unstable();
        Some(holders)
    };
    eventually_async("the agent's sessions on r1 and r2", || {
        let db = db.clone();
        async move { holders(db).await.filter(|h| h == &["r1", "r2"]) }
    })
    .await;
    // Two sessions came up at the start: neither is a reconnect.
    let status = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["agent", "status", "--status-file"])
        .arg(&agent.status_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("\nreconnects 0\n"), "{text}");
    // A stream through r2, open while r1 dies.
    let mut cmd = tokio::process::Command::from(ssh(&through_r2, &["-W", "pi:7", "relay"]));
    let mut stream = cmd.kill_on_drop(true).spawn().unwrap();
    let mut stdin = stream.stdin.take().unwrap();
    let mut stdout = stream.stdout.take().unwrap();
    echo_back(&mut stdin, &mut stdout, b"before").await;
    let killed = Command::new("kill")
        .args(["-KILL", &relays[0].0.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The stream on r2 goes on.
    echo_back(&mut stdin, &mut stdout, b"after the crash").await;
    // The device is reachable through r3 (the agent's first slot moved on from r1).
    let through_r3 = op_cfg(2);
    eventually_async("the device through r3", || {
        let cfg = through_r3.clone();
        async move {
            let (ok, out, _) = ssh_output(&cfg, &["-W", "pi:7", "relay"], b"r3").await;
            (ok && out == b"r3").then_some(())
        }
    })
    .await;
    // ... and holds its second session on r3 itself, not only through a peer link: the
    // registry lists r2 and r3 as its relays once r1's lease has run out.
    eventually_async("the agent's sessions on r2 and r3 only", || {
        let db = db.clone();
        async move { holders(db).await.filter(|h| h == &["r2", "r3"]) }
    })
    .await;
    echo_back(&mut stdin, &mut stdout, b"still").await;
    // The session r1's death cost, and only it, is a reconnect.
    assert_eq!(agent.status().unwrap().reconnects, 1);
    drop(stdin);
    let status = tokio::time::timeout(WAIT, stream.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    agent.stop().await;
    relays.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_rides_out_a_database_outage_and_loses_no_audit_entry() {
    let dir = tempdir();
    let mut pg = TestPostgres::start().await;
    let r1 = cluster_relay(dir.path(), &pg, "r1").await;
    let (dev_key, op_key) = register(&r1, dir.path()).await;
    // A second device, which reconnects during the outage.
    let cam_key = keypair(dir.path(), "cam");
    r1.relay
        .db()
        .add_device("cam", &[public_key(&cam_key)])
        .await
        .unwrap();
    let echo = echo_server().await;
    let forward = format!("7:localhost:{}", echo.port());
    let dev_cfg = ssh_config(&dir.path().join("r1"), &r1, "pi", &dev_key);
    let _pi = stock_device(&dev_cfg, &["-R", &forward]);
    r1.wait_endpoint("pi", 7).await;
    let cam_cfg = ssh_config(&dir.path().join("r1"), &r1, "cam", &cam_key);
    let first = stock_device(&cam_cfg, &["-R", &forward]);
    r1.wait_endpoint("cam", 7).await;
    let op_cfg = ssh_config(&dir.path().join("r1"), &r1, "op", &op_key);
    let mut cmd = tokio::process::Command::from(ssh(&op_cfg, &["-W", "pi:7", "relay"]));
    let mut open = cmd.kill_on_drop(true).spawn().unwrap();
    let mut stdin = open.stdin.take().unwrap();
    let mut stdout = open.stdout.take().unwrap();
    echo_back(&mut stdin, &mut stdout, b"before").await;

    // PostgreSQL goes away for 30 s.
    let outage = Instant::now();
    pg.stop();
    eventually("r1 to say it runs degraded", || {
        r1.relay.is_degraded().then_some(())
    })
    .await;
    // The open stream keeps flowing.
    echo_back(&mut stdin, &mut stdout, b"during the outage").await;
    // A known device reconnecting gets in, from the relay's copy of the registry, and an
    // operator reaches it.
    drop(first);
    eventually("the old session to end", || {
        r1.relay.online_endpoints("cam").is_none().then_some(())
    })
    .await;
    let _second = stock_device(&cam_cfg, &["-R", &forward]);
    r1.wait_endpoint("cam", 7).await;
    let (ok, out, err) = ssh_output(&op_cfg, &["-W", "cam:7", "relay"], b"new session").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"new session");
    let waiting = std::fs::read_to_string(dir.path().join("r1").join("write-queue.jsonl"))
        .expect("writes wait on disk during the outage");
    assert!(waiting.lines().count() >= 3, "{waiting}");

    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed())).await;
    pg.resume().await;
    eventually("r1 back to normal", || {
        (!r1.relay.is_degraded()).then_some(())
    })
    .await;
    echo_back(&mut stdin, &mut stdout, b"after").await;
    // What was written during the outage is in the database now.
    let db = burrow_relay::store::Db::postgres(&pg.url, "check")
        .await
        .unwrap();
    let rows = eventually_async("the queued rows in PostgreSQL", || async {
        let rows = db.audit_tail(200).await.ok()?;
        let online = rows
            .iter()
            .filter(|r| r.event == "online" && r.who == "cam")
            .count();
        let streams = rows
            .iter()
            .filter(|r| r.event == "stream" && r.outcome == "ok")
            .count();
        (online == 2 && streams >= 1).then_some(rows)
    })
    .await;
    assert!(
        rows.iter().any(|r| r.event == "auth" && r.who == "op"),
        "{rows:#?}"
    );
    assert!(
        !dir.path().join("r1").join("write-queue.jsonl").exists(),
        "the disk queue is emptied once replayed"
    );
    drop(stdin);
    let _ = open.wait().await;
}

/// A device's connect and disconnect set only its last-seen time: no registry change, so no
/// relay re-checks its sessions for it (a reconnect storm made every relay do so every few
/// seconds). Real changes still count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_coming_and_going_is_no_registry_change() {
    use burrow_relay::store::Write;
    let dir = tempdir();
    let pg = TestPostgres::start().await;
    let db = burrow_relay::store::Db::postgres(&pg.url, "r1")
        .await
        .unwrap();
    let dev = keypair(dir.path(), "dev");
    db.add_device("pi", &[public_key(&dev)]).await.unwrap();
    let before = db.registry_version().await.unwrap();
    db.submit(Write::Online {
        device: "pi".into(),
        peer: "127.0.0.1:40000".into(),
        session: 1,
        instance: "i".into(),
        key: String::new(),
        agent: String::new(),
    });
    db.submit(Write::Offline {
        device: "pi".into(),
        session: 1,
        reason: String::new(),
        detail: String::new(),
    });
    db.flush().await;
    let seen = db.devices().await.unwrap();
    assert!(seen[0].last_seen.is_some(), "the writes were not applied");
    assert_eq!(db.registry_version().await.unwrap(), before);
    let (client, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .execute("UPDATE devices SET pending = true WHERE name = 'pi'", &[])
        .await
        .unwrap();
    let pending = db.registry_version().await.unwrap();
    assert!(pending > before);
    assert!(db.approve_device("pi").await.unwrap());
    assert!(db.registry_version().await.unwrap() > pending);
}
