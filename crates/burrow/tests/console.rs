//! Serial consoles end to end: a pty stands in for the router, the agent serves it, operators
//! use stock ssh through the relay.

mod common;

use std::path::Path;
use std::sync::Arc;

use burrow_proto::agent_config::Console;
use common::*;

struct Site {
    _dir: tempfile::TempDir,
    relay: TestRelay,
    router: FakeRouter,
    agent: TestAgent,
    alice: std::path::PathBuf,
    bob: std::path::PathBuf,
}

async fn site() -> Site {
    site_with(|_| {}, |_| {}).await
}

/// A site whose relay is configured by `adjust`, after `prepare` saw its data directory.
async fn site_with(
    adjust: impl FnOnce(&mut burrow_relay::RelayConfig),
    prepare: impl FnOnce(&Path),
) -> Site {
    let dir = tempdir();
    prepare(&dir.path().join("relay"));
    let relay = TestRelay::start_with(&dir.path().join("relay"), "127.0.0.1:0", adjust).await;
    let dev_key = keypair(dir.path(), "dev");
    let alice_key = keypair(dir.path(), "alice");
    let bob_key = keypair(dir.path(), "bob");
    relay.add_device("pi", &dev_key);
    relay.add_operator("alice", &alice_key, &["*"]);
    relay.add_operator("bob", &bob_key, &["*"]);
    let router = FakeRouter::start(&dir.path().join("ttyUSB0"));
    let mut config = agent_config(
        &relay.addr.to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    config
        .console
        .push(Console::new("console", router.path.clone(), 9600));
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    let alice = ssh_config(dir.path(), &relay, "alice", &alice_key);
    let bob = ssh_config(dir.path(), &relay, "bob", &bob_key);
    Site {
        _dir: dir,
        relay,
        router,
        agent,
        alice,
        bob,
    }
}

fn console_login(config: &Path, user: &str) -> Terminal {
    Terminal::spawn(config, &["-l", user, "relay"])
}

/// [`console_login`], once the relay has said the operator holds write.
async fn console_writer(config: &Path, user: &str) -> Terminal {
    let t = console_login(config, user);
    t.expect("read-write").await;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_types_and_router_answers() {
    let s = site().await;
    let mut t = console_login(&s.alice, "alice:pi");
    t.expect("connected to pi/console, read-write").await;
    t.send(b"show version\r").await;
    t.expect("Router# got show version").await;
    // Bytes reach the port unchanged, IAC (0xFF) and control characters included.
    t.send(&[0x01, 0xff, 0x1b, b'x', b'\r']).await;
    eventually("raw bytes at the port", || {
        let got = s.router.received();
        got.windows(5)
            .any(|w| w == [0x01, 0xff, 0x1b, b'x', b'\r'])
            .then_some(())
    })
    .await;
    assert!(s.router.received().starts_with(b"show version\r"));
    t.send(b"\x05c.").await;
    t.expect("disconnected").await;
    assert!(t.wait().await);
    let audit = s.relay.audit_now(50).await;
    assert!(audit.iter().any(|r| r.event == "console-attach"
        && r.who == "alice"
        && r.outcome == "ok"
        && r.detail.starts_with("read-write; attached")));
    assert!(
        audit
            .iter()
            .any(|r| r.event == "console-detach" && r.who == "alice")
    );
    s.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_operator_watches_then_forces_write() {
    let s = site().await;
    let mut alice = console_writer(&s.alice, "alice:pi/console").await;
    s.router.print(b"Router> boot banner\r\n");
    alice.expect("boot banner").await;

    let mut bob = console_login(&s.bob, "bob:pi");
    // A late joiner sees recent output and who writes.
    bob.expect("read-only; alice holds write").await;
    bob.expect("boot banner").await;
    alice.send(b"alice-line\r").await;
    bob.expect("Router# got alice-line").await;

    bob.send(b"bob-line\r").await;
    bob.expect("read-only: alice holds write").await;
    s.router.print(b"sync-marker\r\n");
    bob.expect("sync-marker").await;
    assert!(!String::from_utf8_lossy(&s.router.received()).contains("bob-line"));

    bob.send(b"\x05cf").await;
    bob.expect("read-write (took over from alice)").await;
    alice.expect("bob took write; you are read-only now").await;
    bob.send(b"bob-now\r").await;
    alice.expect("Router# got bob-now").await;
    alice.send(b"alice-again\r").await;
    alice.expect("read-only: bob holds write").await;
    s.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baud_change_reaches_the_port() {
    let s = site().await;
    let mut t = console_writer(&s.alice, "alice:pi").await;
    eventually("the agent to open the port at 9600", || {
        (s.router.speed() == 9600).then_some(())
    })
    .await;
    t.send(b"\x05cb115200\r").await;
    t.expect("line speed is 115200 baud").await;
    assert_eq!(s.router.speed(), 115_200);

    // The exec form, for scripts.
    let (ok, out, err) =
        ssh_output(&s.bob, &["relay", "console", "baud", "pi", "19200"], b"").await;
    assert!(!ok, "alice holds write, so bob's change is refused: {err}");
    assert!(
        String::from_utf8_lossy(&out).is_empty() && err.contains("alice holds write"),
        "{err}"
    );
    t.send(b"\x05c.").await;
    assert!(t.wait().await);
    let (ok, out, err) =
        ssh_output(&s.bob, &["relay", "console", "baud", "pi", "19200"], b"").await;
    assert!(ok, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("line speed is 19200 baud"));
    assert_eq!(s.router.speed(), 19_200);
    let audit = s.relay.audit_now(50).await;
    assert!(
        audit
            .iter()
            .any(|r| r.event == "console-baud" && r.who == "bob" && r.detail == "19200 baud")
    );
    s.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baud_rate_set_by_an_operator_survives_the_next_attach() {
    let s = site().await;
    // Attaches (a new channel to the agent each time), proves the port is open by a round trip
    // through the router, and gives the speed the port has then.
    let attach_and_read_speed = async |tag: &str| {
        let mut t = console_writer(&s.alice, "alice:pi").await;
        t.send(format!("{tag}\r").as_bytes()).await;
        t.expect(&format!("Router# got {tag}")).await;
        let speed = s.router.speed();
        t.send(b"\x05c.").await;
        assert!(t.wait().await);
        speed
    };
    assert_eq!(attach_and_read_speed("first").await, 9600);

    let mut t = console_writer(&s.alice, "alice:pi").await;
    t.send(b"\x05cb115200\r").await;
    t.expect("line speed is 115200 baud").await;
    t.send(b"\x05c.").await;
    assert!(t.wait().await);
    assert_eq!(attach_and_read_speed("after-escape").await, 115_200);

    let (ok, _, err) = ssh_output(&s.bob, &["relay", "console", "baud", "pi", "19200"], b"").await;
    assert!(ok, "{err}");
    assert_eq!(attach_and_read_speed("after-exec").await, 19_200);
    s.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_unplugged_and_back() {
    let s = site().await;
    let mut t = console_writer(&s.alice, "alice:pi").await;
    t.send(b"before\r").await;
    t.expect("Router# got before").await;
    let path = s.router.path.clone();
    s.router.unplug();
    t.expect(&format!("offline: {} is gone", path.display()))
        .await;

    let router = FakeRouter::start(&path);
    t.expect(&format!("online: {} is back", path.display()))
        .await;
    t.send(b"after\r").await;
    t.expect("Router# got after").await;
    assert_eq!(router.received(), b"after\r");
    s.agent.stop().await;
}

/// `burrow agent` as device `pi` of `relay` with `--console` for each of `consoles`, as its
/// own process with the log a user gets; its log lines as they come.
fn agent_process(
    relay: &TestRelay,
    key: &Path,
    consoles: &[&str],
    status: &Path,
) -> (KillOnDrop, Arc<std::sync::Mutex<String>>) {
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"));
    agent
        .args(["agent", "--relay", &relay.addr.to_string(), "--name", "pi"])
        .arg("--key")
        .arg(key)
        .args(["--host-key", &relay.relay.fingerprint()])
        .arg("--status-file")
        .arg(status)
        .env_remove("BURROW_LOG")
        .stderr(std::process::Stdio::piped());
    for c in consoles {
        agent.args(["--console", c]);
    }
    let mut agent = KillOnDrop(agent.spawn().unwrap());
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    let stderr = agent.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    (agent, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_console_device_is_reported_at_start_and_agent_status_lists_consoles() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    relay.add_device("pi", &dev_key);
    let tty = dir.path().join("ttyUSB0");
    let _router = FakeRouter::start(&tty);
    // A typo: ttyUSB9 for ttyUSB1.
    let missing = dir.path().join("ttyUSB9");
    let status = dir.path().join("status.json");
    let (_agent, log) = agent_process(
        &relay,
        &dev_key,
        &[
            &format!("console={}@9600", tty.display()),
            &format!("aux={}@115200", missing.display()),
        ],
        &status,
    );
    eventually("the agent to report the missing device", || {
        log.lock()
            .unwrap()
            .contains(&format!(
                "console aux: {} does not exist",
                missing.display()
            ))
            .then_some(())
    })
    .await;
    relay.wait_online("pi").await;
    eventually("the agent to be up", || {
        burrow_agent::status::read(&status)
            .ok()
            .filter(|s| s.state == burrow_agent::status::State::Up)
    })
    .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["agent", "status", "--status-file"])
        .arg(&status)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("consoles\n"), "{text}");
    assert!(
        text.contains(&format!(
            "pi/console -> {} @ 9600 8N1, flow none, DTR on, RTS on (endpoint 2217)  present",
            tty.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "pi/aux -> {} @ 115200 8N1, flow none, DTR on, RTS on (endpoint 2218)  MISSING",
            missing.display()
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_typed_while_the_port_is_gone_are_answered_and_the_agent_logs_its_return() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    let alice_key = keypair(dir.path(), "alice");
    relay.add_device("pi", &dev_key);
    relay.add_operator("alice", &alice_key, &["*"]);
    let tty = dir.path().join("ttyUSB0");
    let router = FakeRouter::start(&tty);
    // The agent as a user runs it, its log read as it comes.
    let (agent, log) = agent_process(
        &relay,
        &dev_key,
        &[&format!("console={}@9600", tty.display())],
        &dir.path().join("status.json"),
    );
    let logged = |needle: &str| log.lock().unwrap().contains(needle).then_some(());
    relay.wait_online("pi").await;
    let alice = ssh_config(dir.path(), &relay, "alice", &alice_key);
    let mut t = console_writer(&alice, "alice:pi").await;
    t.send(b"before\r").await;
    t.expect("Router# got before").await;

    router.unplug();
    let gone = format!("{} is gone", tty.display());
    t.expect(&format!("offline: {gone}")).await;
    eventually("the agent to log the port gone", || logged(&gone)).await;
    // Keys typed now go nowhere: the operator is told, once.
    t.send(b"lost\r").await;
    t.expect(&format!(
        "input dropped: {gone}; type again once it is back"
    ))
    .await;
    t.send(b"lost again\r").await;

    let router = FakeRouter::start(&tty);
    let back = format!("{} is back", tty.display());
    t.expect(&format!("online: {back}")).await;
    eventually("the agent to log the port back", || logged(&back)).await;
    t.send(b"after\r").await;
    t.expect("Router# got after").await;
    assert_eq!(router.received(), b"after\r");
    assert_eq!(t.text().matches("input dropped").count(), 1, "{}", t.text());
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_is_valid_asciicast_with_markers() {
    let s = site().await;
    let mut t = console_writer(&s.alice, "alice:pi").await;
    t.send(b"hello\r").await;
    t.expect("Router# got hello").await;
    // Invalid UTF-8, and a multi-byte character split across two writes.
    s.router.print(b"bad \xff\xfe bytes\r\n");
    s.router.print("split \u{30eb}".as_bytes().split_at(9).0);
    s.router.print(&"split \u{30eb}".as_bytes()[9..]);
    s.router.print(b" done\r\n");
    t.expect(" done").await;
    t.send(b"\x05cb38400\r").await;
    t.expect("line speed is 38400").await;
    t.send(b"\x05c.").await;
    assert!(t.wait().await);

    let files = burrow_relay::console::recording::list(&s.relay.data_dir, Some("pi")).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    // The recording's writer thread may still be putting the last events on disk when ssh
    // exits: wait for the detach marker, then read the whole file.
    let text = eventually("the recording to end with the detach", || {
        let text = std::fs::read_to_string(&files[0].path).ok()?;
        text.contains("\"detach alice\"").then_some(text)
    })
    .await;
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    let mut output = String::new();
    let mut markers = Vec::new();
    for line in lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(event[0].is_f64());
        match event[1].as_str().unwrap() {
            "o" => output.push_str(event[2].as_str().unwrap()),
            "m" => markers.push(event[2].as_str().unwrap().to_string()),
            other => panic!("unexpected event code {other}"),
        }
    }
    assert!(output.contains("Router# got hello"), "{output}");
    assert!(output.contains("bad \u{FFFD}\u{FFFD} bytes"), "{output}");
    assert!(output.contains("split \u{30eb} done"), "{output}");
    for m in [
        "attach alice (read-write)",
        "baud change to 38400 by alice",
        "detach alice",
    ] {
        assert!(markers.iter().any(|x| x == m), "{m} not in {markers:?}");
    }

    let (ok, out, err) = s.relay.cli(&["recordings", "ls", "pi"]);
    assert!(ok, "{err}");
    assert!(out.contains(files[0].path.file_name().unwrap().to_str().unwrap()));
    s.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_only_operator_and_policy() {
    let dir = tempdir();
    let s = site().await;
    let carol_key = keypair(dir.path(), "carol");
    s.relay
        .relay
        .store()
        .add_operator(
            "carol",
            &[public_key(&carol_key)],
            None,
            &["*".to_string()],
            true,
        )
        .unwrap();
    let carol = ssh_config(dir.path(), &s.relay, "carol", &carol_key);
    let mut t = console_writer(&carol, "carol:pi").await;
    t.send(b"\x05c.").await;
    assert!(t.wait().await);
    let (ok, _, err) = ssh_output(&carol, &["-W", "pi:2217", "relay"], b"").await;
    assert!(!ok && err.contains("consoles only"), "{err}");

    let dave_key = keypair(dir.path(), "dave");
    s.relay.add_operator("dave", &dave_key, &["other-*"]);
    let dave = ssh_config(dir.path(), &s.relay, "dave", &dave_key);
    let t = console_login(&dave, "dave:pi");
    t.expect("operator dave may not reach device pi").await;
    assert!(!t.wait().await);
    let mut t = console_login(&s.alice, "alice:pi/aux");
    t.expect("device pi has no console aux (it has: console)")
        .await;
    t.send(b"").await;
    s.agent.stop().await;
}

/// A serial backend that records what reaches the port layer (a pty silently drops breaks).
struct RecordingPort {
    breaks: std::sync::Arc<std::sync::Mutex<Vec<(bool, std::time::Instant)>>>,
    fail: bool,
}

struct RecordingControl {
    breaks: std::sync::Arc<std::sync::Mutex<Vec<(bool, std::time::Instant)>>>,
    fail: bool,
}

impl burrow_agent::console::port::SerialControl for RecordingControl {
    fn set_baud(&mut self, _baud: u32) -> std::io::Result<()> {
        Ok(())
    }

    fn set_break(&mut self, on: bool) -> std::io::Result<()> {
        if self.fail {
            return Err(std::io::Error::from_raw_os_error(25)); // ENOTTY, as some adapters answer
        }
        self.breaks
            .lock()
            .unwrap()
            .push((on, std::time::Instant::now()));
        Ok(())
    }
}

impl burrow_agent::console::port::PortOpener for RecordingPort {
    fn open(
        &self,
        _path: &Path,
        _settings: &burrow_proto::serial::LineSettings,
    ) -> std::io::Result<burrow_agent::console::port::OpenPort> {
        let (ours, _theirs) = tokio::io::duplex(1024);
        let (reader, writer) = tokio::io::split(ours);
        // Keep the other end alive for the life of the port.
        std::mem::forget(_theirs);
        Ok(burrow_agent::console::port::OpenPort {
            reader: Box::new(reader),
            writer: Box::new(writer),
            control: Box::new(RecordingControl {
                breaks: self.breaks.clone(),
                fail: self.fail,
            }),
        })
    }
}

type BackendSite = (
    tempfile::TempDir,
    TestRelay,
    TestAgent,
    std::path::PathBuf,
    RecordingPortLog,
);

async fn site_with_backend(fail: bool) -> BackendSite {
    site_with_backend_and(fail, |_, _| {}).await
}

/// [`site_with_backend`] with the console adjusted (given the test's directory).
async fn site_with_backend_and(
    fail: bool,
    adjust: impl FnOnce(&mut Console, &Path),
) -> BackendSite {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    let op_key = keypair(dir.path(), "alice");
    relay.add_device("pi", &dev_key);
    relay.add_operator("alice", &op_key, &["*"]);
    let mut config = agent_config(
        &relay.addr.to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    let mut console = Console::new("console", "/dev/ttyFAKE0", 9600);
    adjust(&mut console, dir.path());
    config.console.push(console);
    let breaks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let status_file = dir.path().join("status.json");
    let mut options = burrow_agent::AgentOptions::new(status_file.clone());
    options.port_opener = std::sync::Arc::new(RecordingPort {
        breaks: breaks.clone(),
        fail,
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(burrow_agent::run(config, options, shutdown.clone()));
    let agent = TestAgent {
        status_file,
        shutdown,
        task,
    };
    agent.wait_up().await;
    let cfg = ssh_config(dir.path(), &relay, "alice", &op_key);
    (dir, relay, agent, cfg, breaks)
}

type RecordingPortLog = std::sync::Arc<std::sync::Mutex<Vec<(bool, std::time::Instant)>>>;

/// Waits for the `n`th break (from 1) to end at the port layer; returns how long it was held.
async fn nth_break_held(breaks: &RecordingPortLog, n: usize) -> std::time::Duration {
    eventually("the break to end at the port", || {
        (breaks.lock().unwrap().len() == 2 * n).then_some(())
    })
    .await;
    let log = breaks.lock().unwrap().clone();
    let (on, off) = (&log[2 * n - 2], &log[2 * n - 1]);
    assert!(on.0 && !off.0, "the line set, then cleared: {log:?}");
    off.1 - on.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_reaches_the_port_layer_with_its_duration() {
    let (_dir, relay, agent, cfg, breaks) = site_with_backend(false).await;
    let mut t = console_writer(&cfg, "alice:pi").await;
    t.send(b"\x05cl1").await;
    t.expect("break ended").await;
    let log = breaks.lock().unwrap().clone();
    assert_eq!(
        log.iter().map(|(on, _)| *on).collect::<Vec<_>>(),
        [true, false]
    );
    // The relay holds the break for 500 ms; the line saw it held at least most of that.
    let held = log[1].1 - log[0].1;
    assert!(held >= std::time::Duration::from_millis(400), "{held:?}");
    t.send(b"\x05c.").await;
    assert!(t.wait().await);

    let (ok, out, err) = ssh_output(&cfg, &["relay", "console", "break", "pi/console"], b"").await;
    assert!(ok, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("break ended"));
    assert_eq!(breaks.lock().unwrap().len(), 4);
    let audit = relay.audit_now(50).await;
    assert_eq!(
        audit.iter().filter(|r| r.event == "console-break").count(),
        2
    );
    agent.stop().await;
}

/// The ROMMON macro: power-cycle, then hold BREAK while the router boots. The fake power
/// command records its calls; the port layer records the BREAK and how long it was held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cycle_then_hold_break_for_rommon() {
    let (dir, relay, agent, cfg, breaks) = site_with_backend_and(false, |c, dir| {
        c.power
            .push(recording_outlet(None, &dir.join("power-calls")));
        c.break_hold = Some(burrow_proto::agent_config::Seconds::Whole(1));
    })
    .await;
    let calls = || std::fs::read_to_string(dir.path().join("power-calls")).unwrap_or_default();
    // From the escape menu, confirmed, with the console's break_hold.
    let mut t = console_writer(&cfg, "alice:pi").await;
    t.send(b"\x05cpb").await;
    t.expect("power-cycle and hold BREAK pi/console? y to confirm")
        .await;
    t.send(b"y").await;
    t.expect("holding BREAK for 1 s").await;
    t.expect("power cycle, then BREAK for 1 s: done").await;
    assert_eq!(calls(), "off\non\n");
    let held = nth_break_held(&breaks, 1).await;
    assert!(held >= std::time::Duration::from_millis(900), "{held:?}");
    t.send(b"\x05c.").await;
    assert!(t.wait().await);
    // From the exec command, with its own length.
    let (ok, out, err) = ssh_output(
        &cfg,
        &["relay", "console", "power", "pi", "cycle-break", "2"],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("BREAK for 2 s: done"));
    assert_eq!(calls(), "off\non\noff\non\n");
    let held = nth_break_held(&breaks, 2).await;
    assert!(held >= std::time::Duration::from_millis(1900), "{held:?}");
    let markers = recording_markers(&relay);
    assert!(
        markers
            .iter()
            .any(|m| m.contains("power cycle-break") || m.contains("power cycle, then BREAK")),
        "{markers:?}"
    );
    agent.stop().await;
}

/// A terminal's own break: OpenSSH's `~B` (a 1000 ms RFC 4335 request), and the request
/// PuTTY's and TeraTerm's Send Break make (length 0: the serial layer's default). Both reach
/// the port layer held for their length, and both are audited and marked in the recording.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_break_requests_reach_the_port_with_their_length() {
    let (dir, relay, agent, cfg, breaks) = site_with_backend(false).await;
    // The escape character back on (the helper turns it off).
    let mut t = Terminal::spawn(&cfg, &["-e", "~", "-l", "alice:pi", "relay"]);
    t.expect("read-write").await;
    t.send(b"\r~B").await;
    t.expect("break (1000 ms) sent by alice").await;
    let held = nth_break_held(&breaks, 1).await;
    assert!(held >= std::time::Duration::from_millis(900), "{held:?}");
    t.send(b"\r~.").await;
    t.wait().await;

    // PuTTY's Send Break, as it puts it on the wire (plink has no way to send one).
    use burrow_ssh::channel::{OpenKind, Request, TermSize};
    let handle = burrow_ssh_client(relay.addr, "alice:pi", &dir.path().join("alice")).await;
    let channel = handle.open(OpenKind::Session).await.unwrap();
    let size = TermSize {
        cols: 80,
        rows: 24,
        width_px: 0,
        height_px: 0,
    };
    let pty = Request::PtyReq {
        term: "xterm".into(),
        size,
        modes: vec![0],
    };
    assert!(channel.request(pty, true).await.unwrap());
    assert!(channel.request(Request::Shell, true).await.unwrap());
    assert!(
        channel
            .request(Request::Break { ms: 0 }, true)
            .await
            .unwrap(),
        "the break request is accepted"
    );
    let held = nth_break_held(&breaks, 2).await;
    assert!(held >= std::time::Duration::from_millis(400), "{held:?}");
    channel.close();
    drop(channel);
    handle.disconnect("done");

    let audit = relay.audit_now(50).await;
    let lengths: Vec<_> = audit
        .iter()
        .filter(|r| r.event == "console-break")
        .map(|r| (r.who.as_str(), r.detail.as_str()))
        .collect();
    assert!(lengths.contains(&("alice", "1000 ms")), "{lengths:?}");
    assert!(lengths.contains(&("alice", "500 ms")), "{lengths:?}");
    let markers = eventually("both breaks in the recordings", || {
        let m = recording_markers(&relay);
        (m.iter().filter(|m| m.starts_with("break (")).count() == 2).then_some(m)
    })
    .await;
    assert!(
        markers.iter().any(|m| m == "break (1000 ms) sent by alice"),
        "{markers:?}"
    );
    assert!(
        markers.iter().any(|m| m == "break (500 ms) sent by alice"),
        "{markers:?}"
    );
    agent.stop().await;
}

/// asyncssh, an SSH implementation burrow did not write, sending RFC 4335 `break` with a
/// length (its `send_break`): the break reaches the port layer held that long, and is audited
/// and marked in the recording.
const ASYNCSSH_BREAK: &str = r#"
import asyncio, sys
import asyncssh

async def main():
    port, key, host_line = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    known = asyncssh.import_known_hosts(f"[127.0.0.1]:{port} {host_line}\n")
    async with asyncssh.connect("127.0.0.1", port=port, username="alice:pi",
                                client_keys=[key], known_hosts=known) as conn:
        process = await conn.create_process(term_type="xterm", term_size=(80, 24))
        seen = ""
        async def until(text):
            nonlocal seen
            while text not in seen:
                chunk = await asyncio.wait_for(process.stdout.read(4096), 20)
                if not chunk:
                    raise SystemExit(f"the console ended before {text!r}: {seen!r}")
                seen += chunk
        await until("read-write")
        process.channel.send_break(700)
        await until("break (700 ms) sent by alice")
        process.stdin.write("\x05c.")
        await asyncio.wait_for(process.wait_closed(), 20)
    print("BREAK-OK")

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncssh_send_break_reaches_the_port_with_its_length() {
    let (dir, relay, agent, _cfg, breaks) = site_with_backend(false).await;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(ASYNCSSH_BREAK)
        .arg(relay.addr.port().to_string())
        .arg(dir.path().join("alice"))
        .arg(relay.relay.host_public_key())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "BREAK-OK",
        "asyncssh (pip install asyncssh; ./test.sh does): {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held = nth_break_held(&breaks, 1).await;
    assert!(held >= std::time::Duration::from_millis(600), "{held:?}");
    let audit = relay.audit_now(50).await;
    assert!(
        audit
            .iter()
            .any(|r| r.event == "console-break" && r.who == "alice" && r.detail == "700 ms"),
        "{audit:#?}"
    );
    let markers = eventually("the break in the recording", || {
        let m = recording_markers(&relay);
        m.iter()
            .any(|m| m == "break (700 ms) sent by alice")
            .then_some(m)
    })
    .await;
    assert!(!markers.is_empty());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_failure_is_reported_to_the_operator() {
    let (_dir, _relay, agent, cfg, _) = site_with_backend(true).await;
    let mut t = console_writer(&cfg, "alice:pi").await;
    t.send(b"\x05cl1").await;
    t.expect("break failed on /dev/ttyFAKE0: Inappropriate ioctl for device")
        .await;
    t.send(b"\x05c.").await;
    assert!(t.wait().await);
    let (ok, out, _) = ssh_output(&cfg, &["relay", "console", "break", "pi"], b"").await;
    assert!(!ok, "a failed break fails the exec form");
    assert!(String::from_utf8_lossy(&out).contains("break failed"));
    agent.stop().await;
}

const PYSERIAL_CLIENT: &str = r#"
import sys, time, serial
port = serial.serial_for_url("rfc2217://127.0.0.1:%s" % sys.argv[1], baudrate=9600, timeout=1)
port.write(b"show clock\r")
data = b""
deadline = time.time() + 15
while b"Router# got show clock" not in data and time.time() < deadline:
    data += port.read(64)
sys.stdout.write(data.decode("utf-8", "replace"))
port.send_break(0.25)
port.baudrate = 57600
port.close()
print("\nCLIENT-OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyserial_rfc2217_client_through_ssh_l() {
    let s = site().await;
    let local = free_port();
    let _tunnel = KillOnDrop(
        ssh(
            &s.alice,
            &["-N", "-L", &format!("{local}:pi:2217"), "relay"],
        )
        .spawn()
        .unwrap(),
    );
    eventually("ssh -L to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", local)).ok()
    })
    .await;
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("python3")
            .args(["-c", PYSERIAL_CLIENT, &local.to_string()])
            .output(),
    )
    .await
    .unwrap()
    .expect("python3 with pyserial (./test.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Router# got show clock"), "{stdout}");
    assert!(stdout.contains("CLIENT-OK"), "{stdout}");
    assert!(s.router.received().starts_with(b"show clock\r"));
    eventually("pyserial's baud change at the port", || {
        (s.router.speed() == 57_600).then_some(())
    })
    .await;
    s.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn menu_lists_consoles_and_attaches() {
    let s = site().await;
    let mut t = Terminal::spawn(&s.alice, &["relay"]);
    t.expect("pi/console").await;
    t.expect("online").await;
    t.send(b"1\r").await;
    t.expect("connected to pi/console, read-write").await;
    t.send(b"from menu\r").await;
    t.expect("Router# got from menu").await;
    t.send(b"\x05c.").await;
    t.expect("disconnected").await;
    t.expect_times("burrow: consoles for alice", 2).await;
    t.send(b"q\r").await;
    assert!(t.wait().await);
    s.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_viewer_skips_output_and_is_told() {
    use tokio::io::AsyncReadExt;
    let s = site().await;
    let alice = console_writer(&s.alice, "alice:pi").await;
    // Bob attaches but does not read what his ssh receives.
    let mut bob =
        tokio::process::Command::from(ssh(&s.bob, &["-tt", "-e", "none", "-l", "bob:pi", "relay"]));
    let mut bob = bob.kill_on_drop(true).spawn().unwrap();
    alice.expect("bob attached (read-only)").await;

    // 16 MiB of console output: far more than bob's queue and windows hold.
    let router = s.router;
    let flood = tokio::task::spawn_blocking(move || {
        let line = [b'z'; 1023];
        for _ in 0..16 * 1024 {
            router.print_all(&line);
            router.print_all(b"\n");
        }
        router
    });
    let router = flood.await.unwrap();
    // The writer and the console are not held back by the stalled viewer. (Alice may skip part of
    // the flood herself when the machine is busy, so the marker repeats until she sees it.)
    let seen_marker = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let marker = {
        let seen = seen_marker.clone();
        tokio::task::spawn_blocking(move || {
            while !seen.load(std::sync::atomic::Ordering::Relaxed) {
                router.print_all(b"END-OF-FLOOD\r\n");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            router
        })
    };
    alice.expect("END-OF-FLOOD").await;
    seen_marker.store(true, std::sync::atomic::Ordering::Relaxed);
    let _router = marker.await.unwrap();

    // When bob reads again, he learns that he missed output.
    let mut out = bob.stdout.take().unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(&seen).contains("skipped") {
        let mut buf = vec![0u8; 1 << 16];
        let n = tokio::time::timeout(WAIT, out.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0 && std::time::Instant::now() < deadline,
            "bob was never told he skipped output"
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&seen).contains("bytes of output: your connection is too slow")
    );
    s.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_login_without_pty_and_watch() {
    let s = site().await;
    let hash = burrow_relay::admin::hash_password("putty pass").unwrap();
    s.relay
        .relay
        .store()
        .add_operator("erin", &[], Some(&hash), &["pi".to_string()], true)
        .unwrap();
    // What PuTTY or TeraTerm does: user name carries the target, password typed, here without a pty.
    let dir = tempdir();
    let mut child = password_ssh(
        &s.relay,
        dir.path(),
        &["putty pass"],
        &["-T", "erin:pi@127.0.0.1"],
    )
    .spawn()
    .unwrap();

    // Meanwhile a script watches the console read-only.
    let mut watch =
        tokio::process::Command::from(ssh(&s.alice, &["relay", "console", "watch", "pi"]));
    let mut watch = watch.kill_on_drop(true).spawn().unwrap();
    let mut watch_out = watch.stdout.take().unwrap();

    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stdin.write_all(b"no pty here\r").await.unwrap();
    // The router's answer reaches the writer before it detaches (detaching right after the
    // line reached the router raced the answer).
    let mut text = Vec::new();
    while !String::from_utf8_lossy(&text).contains("Router# got no pty here") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stdout.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "plink ended early: {}",
            String::from_utf8_lossy(&text)
        );
        text.extend_from_slice(&buf[..n]);
    }
    stdin.write_all(b"\x05c.").await.unwrap();
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&text),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("Router# got no pty here") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, watch_out.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "watch ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("read-only"));
    s.agent.stop().await;
}

/// The console's audit entries about its recording.
async fn recording_audit(relay: &TestRelay) -> Vec<burrow_relay::store::AuditRecord> {
    relay
        .audit_now(200)
        .await
        .into_iter()
        .filter(|r| r.event == "console-recording")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_cap_stops_the_recording_and_the_console_goes_on() {
    let s = site_with(|c| c.recording_max_bytes = 4096, |_| {}).await;
    let mut t = console_writer(&s.alice, "alice:pi").await;
    s.router.print_all(&[b'x'; 16 * 1024]);
    t.expect("recording stopped").await;
    t.expect("--recording-max-bytes").await;
    t.expect("the console goes on unrecorded").await;
    t.send(b"still here\r").await;
    t.expect("Router# got still here").await;
    let audit = recording_audit(&s.relay).await;
    assert!(
        audit
            .iter()
            .any(|r| r.outcome == "failed" && r.detail.contains("cap of 4096 bytes")),
        "{audit:#?}"
    );
    let files = burrow_relay::console::recording::list(&s.relay.data_dir, Some("pi")).unwrap();
    assert!(files[0].bytes < 4096 + 512, "{files:?}");
    // A late joiner is told the console is not recorded.
    let late = console_login(&s.bob, "bob:pi");
    late.expect("not recorded").await;
    s.agent.stop().await;
}

/// A tmpfs mounted for the length of a test; unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "this test needs root to mount a small tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(path.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_stops_the_recording_and_the_console_goes_on() {
    let disk = std::sync::Mutex::new(None);
    let s = site_with(
        |_| {},
        |data| *disk.lock().unwrap() = Some(SmallDisk::mount(&data.join("recordings"), "64k")),
    )
    .await;
    let _disk = disk.lock().unwrap().take();
    let mut t = console_writer(&s.alice, "alice:pi").await;
    s.router.print_all(&[b'y'; 256 * 1024]);
    t.expect("recording stopped").await;
    t.expect("No space left on device").await;
    t.send(b"disk full\r").await;
    t.expect("Router# got disk full").await;
    let audit = recording_audit(&s.relay).await;
    assert!(
        audit
            .iter()
            .any(|r| r.detail.contains("No space left on device")),
        "{audit:#?}"
    );
    t.send(b"\x05c.").await;
    assert!(t.wait().await);
    s.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_recordings_refuse_or_close_an_unrecorded_console() {
    // Nothing can be recorded: the console is refused, with the reason.
    let s = site_with(
        |c| {
            c.require_recordings = true;
            c.recordings_max_total = 0;
        },
        |_| {},
    )
    .await;
    let t = console_login(&s.alice, "alice:pi");
    t.expect("requires recordings").await;
    assert!(!t.wait().await);
    assert!(s.router.received().is_empty());
    s.agent.stop().await;

    // The recording stops mid-session: the console closes, and says why.
    let s = site_with(
        |c| {
            c.require_recordings = true;
            c.recording_max_bytes = 4096;
        },
        |_| {},
    )
    .await;
    let t = console_writer(&s.alice, "alice:pi").await;
    s.router.print_all(&[b'z'; 16 * 1024]);
    t.expect("the console is closed").await;
    t.wait().await;
    s.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_has_the_operator_terminal_size_and_its_changes() {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use rustix::termios::{Winsize, tcsetwinsize};
    let s = site().await;
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let slave_path = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(slave_path.to_str().unwrap())
        .unwrap();
    let size = |cols, rows| Winsize {
        ws_col: cols,
        ws_row: rows,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    tcsetwinsize(&slave, size(132, 43)).unwrap();
    let mut ssh = std::process::Command::new("ssh")
        .arg("-F")
        .arg(&s.alice)
        .args(["-t", "-e", "none", "-l", "alice:pi", "relay"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap())
        .spawn()
        .unwrap();
    let master = std::sync::Arc::new(master);
    let screen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let (m, screen) = (master.clone(), screen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = rustix::io::read(&*m, &mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
    }
    eventually("read-write on the terminal", || {
        String::from_utf8_lossy(&screen.lock().unwrap())
            .contains("read-write")
            .then_some(())
    })
    .await;
    tcsetwinsize(&slave, size(100, 30)).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(ssh.id() as i32).unwrap(),
        rustix::process::Signal::WINCH,
    )
    .unwrap();
    // The resize is in the recording once the relay saw it; then leave.
    let files = burrow_relay::console::recording::list(&s.relay.data_dir, Some("pi")).unwrap();
    let path = files[0].path.clone();
    eventually("the resize event", || {
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("\"r\",\"100x30\"")
            .then_some(())
    })
    .await;
    rustix::io::write(&*master, b"\x05c.").unwrap();
    let _ = ssh.wait();
    let text = std::fs::read_to_string(&path).unwrap();
    let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(132), Some(43))
    );
    s.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_losing_a_device_is_detached_from_its_console_and_write_is_freed() {
    let s = site().await;
    let alice = console_writer(&s.alice, "alice:pi").await;
    let (ok, _, err) = s
        .relay
        .cli(&["operator", "set", "alice", "--allow", "other-*"]);
    assert!(ok, "{err}");
    alice.expect("may no longer use device pi").await;
    // Alice's place is given up: bob attaches read-write, not behind a writer who is gone.
    let _bob = console_writer(&s.bob, "bob:pi").await;
    let audit = s.relay.audit_now(50).await;
    assert!(
        audit
            .iter()
            .any(|r| r.event == "console-detach" && r.who == "alice"),
        "{audit:#?}"
    );
    s.agent.stop().await;
}

/// PuTTY's plink at a console the way PuTTY users log in: the user name carries the target,
/// the password goes in at keyboard-interactive's prompt, a pty is asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plink_console_login_with_a_password() {
    let s = site().await;
    let hash = burrow_relay::admin::hash_password("putty pass").unwrap();
    s.relay
        .relay
        .store()
        .add_operator("erin", &[], Some(&hash), &["pi".to_string()], true)
        .unwrap();
    let mut plink = tokio::process::Command::new("plink");
    plink
        .args([
            "-ssh",
            "-batch",
            "-t",
            "-P",
            &s.relay.addr.port().to_string(),
        ])
        .args([
            "-hostkey",
            &s.relay.relay.fingerprint(),
            "-pw",
            "putty pass",
        ])
        .arg("erin:pi@127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = plink
        .spawn()
        .expect("plink is installed (putty-tools; ./test.sh installs it)");
    let mut stdin = child.stdin.take().unwrap();
    use tokio::io::AsyncWriteExt;
    eventually("erin to hold write", || {
        s.relay
            .relay
            .store()
            .audit_tail(20)
            .ok()?
            .iter()
            .any(|r| r.event == "console-attach" && r.who == "erin")
            .then_some(())
    })
    .await;
    stdin.write_all(b"show clock\r").await.unwrap();
    eventually("the line at the router", || {
        String::from_utf8_lossy(&s.router.received())
            .contains("show clock\r")
            .then_some(())
    })
    .await;
    stdin.write_all(b"\x05c.").await.unwrap();
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Router# got show clock"), "{text}");
    let audit = s.relay.audit_now(50).await;
    assert!(
        audit.iter().any(|r| r.event == "auth"
            && r.who.starts_with("erin:pi")
            && r.detail.contains("keyboard-interactive")),
        "{audit:#?}"
    );
    s.agent.stop().await;
}
