//! Consoles for network engineers, part one: the port log kept on the device while nobody is
//! attached, uploaded to the relay (across a blackout of the agent's link too), read back with
//! `console log`, the replay escapes and timestamps; pattern alerts fired on the device while
//! the relay was down, recorded as `console-alert` audit entries and posted by the relay's
//! alert path to a local webhook receiver.

mod common;
mod fleet_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use burrow_linkemu::{Impairment, Link};
use burrow_proto::agent_config::{AgentConfig, Console, Seconds};
use burrow_proto::console_config::AlertRule;
use common::*;
use fleet_common::Receiver;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

struct Site {
    dir: tempfile::TempDir,
    relay: TestRelay,
    router: FakeRouter,
    agent: TestAgent,
    alice: PathBuf,
}

/// Relay, device `pi` whose console `console` is a fake router (configured by `adjust`), and
/// operator alice; the agent dials `via` when given (a link in between), else the relay.
async fn site(adjust: impl FnOnce(&mut Console, &mut AgentConfig)) -> Site {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    let alice_key = keypair(dir.path(), "alice");
    relay.add_device("pi", &dev_key);
    relay.add_operator("alice", &alice_key, &["*"]);
    let router = FakeRouter::start(&dir.path().join("ttyUSB0"));
    let mut config = agent_config(
        &relay.addr.to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    let mut console = Console::new("console", router.path.clone(), 9600);
    // Uploads within a moment, not a keepalive interval.
    console.log_upload_delay = Some(Seconds::Fraction(0.2));
    adjust(&mut console, &mut config);
    config.console.push(console);
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    let alice = ssh_config(dir.path(), &relay, "alice", &alice_key);
    Site {
        dir,
        relay,
        router,
        agent,
        alice,
    }
}

/// `burrow relay console log ARGS` on the relay's data directory.
fn cli_log(data_dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["relay", "--data-dir"])
        .arg(data_dir)
        .args(["console", "log"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `console log pi` shows `needle`.
async fn wait_logged(data_dir: &Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = cli_log(data_dir, &["pi"]);
        if text.contains(needle) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the port log never showed {needle:?}; it has:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_router_says_while_nobody_is_attached_is_logged_uploaded_and_replayed() {
    let s = site(|_, _| {}).await;
    let data = s.relay.data_dir.clone();
    // Nobody attached: the router boots.
    s.router.boot();
    let text = wait_logged(&data, "Press RETURN to get started!").await;
    // A timestamp per line, lines in order.
    let lines: Vec<&str> = text.lines().collect();
    let restart = lines
        .iter()
        .position(|l| l.contains("%SYS-5-RESTART"))
        .unwrap();
    assert!(lines[restart].starts_with("20") && lines[restart].contains("Z  %SYS-5-RESTART"));
    assert!(lines[restart + 1].contains("%LINK-3-UPDOWN"), "{text}");
    // Kept on the device too.
    let ring = s.dir.path().join("console-log").join("console");
    assert!(
        ring.join("id").exists(),
        "no port log in {}",
        ring.display()
    );

    // --since leaves out what came before: from the next whole second on.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let since = now.as_secs() + 1;
    tokio::time::sleep(Duration::from_millis(1050 - u64::from(now.subsec_millis()))).await;
    s.router.print(b"later line\r\n");
    wait_logged(&data, "later line").await;
    let since = burrow_proto::time::format_rfc3339(since as i64);
    let recent = cli_log(&data, &["pi/console", "--since", &since, "--no-timestamps"]);
    assert!(recent.contains("later line"), "{recent}");
    assert!(!recent.contains("%SYS-5-RESTART"), "{recent}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["relay", "--data-dir"])
        .arg(&data)
        .args(["console", "log", "pi", "--since", "yesterday"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("10m"));

    // The exec form for operators, and the replay escapes.
    let (ok, out, err) = ssh_output(&s.alice, &["relay", "console", "log", "pi"], b"").await;
    assert!(ok, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("Z  %SYS-5-RESTART"));
    let mut t = Terminal::spawn(&s.alice, &["-l", "alice:pi", "relay"]);
    t.expect("read-write").await;
    t.send(b"\x05cr").await;
    t.expect("port log, last").await;
    t.expect("Self decompressing the image").await;
    t.send(b"\x05ct").await;
    t.expect("Z  Press RETURN to get started!").await;
    t.send(b"\x05c.").await;
    assert!(t.wait().await);
    s.agent.stop().await;
}

/// Passwords typed at a login prompt are operator input: out of the port log by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_input_stays_out_of_the_port_log_unless_asked_for() {
    let s = site(|_, _| {}).await;
    let data = s.relay.data_dir.clone();
    let mut t = Terminal::spawn(&s.alice, &["-l", "alice:pi", "relay"]);
    t.expect("read-write").await;
    t.send(b"s3cret-password\r").await;
    t.expect("Router# got s3cret-password").await;
    s.router.print(b"after the password\r\n");
    let text = wait_logged(&data, "after the password").await;
    // The router's own echo of it is what the port said; the keystrokes are not logged.
    assert!(!text.contains("> s3cret"), "{text}");
    t.send(b"\x05c.").await;
    assert!(t.wait().await);
    s.agent.stop().await;

    let s = site(|c, _| c.log_input = true).await;
    let data = s.relay.data_dir.clone();
    let mut t = Terminal::spawn(&s.alice, &["-l", "alice:pi", "relay"]);
    t.expect("read-write").await;
    t.send(b"enable\r").await;
    t.expect("Router# got enable").await;
    wait_logged(&data, "> enable").await;
    t.send(b"\x05c.").await;
    assert!(t.wait().await);
    s.agent.stop().await;
}

/// The agent reaches the relay through a link that goes dark: what the router says meanwhile
/// is kept on the device and arrives once the link is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_during_a_blackout_of_the_agents_link_arrives_after_it() {
    let stop = CancellationToken::new();
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    relay.add_device("pi", &dev_key);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut impairment = Impairment::cellular();
    impairment.rate = None;
    let link = Link::start(listener, relay.addr, impairment, stop.clone()).unwrap();
    let router = FakeRouter::start(&dir.path().join("ttyUSB0"));
    let mut config = agent_config(
        &link.addr().to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    config.keepalive_interval = Some(Seconds::Fraction(1.0));
    config.busy_keepalive_interval = Some(Seconds::Fraction(0.5));
    config.keepalive_timeout = Some(Seconds::Fraction(3.0));
    config.probe_interval = Some(Seconds::Whole(0));
    let mut console = Console::new("console", router.path.clone(), 9600);
    console.log_upload_delay = Some(Seconds::Fraction(0.2));
    config.console.push(console);
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    let data = relay.data_dir.clone();
    router.print(b"before the blackout\r\n");
    wait_logged(&data, "before the blackout").await;

    link.set(|i| i.blackout = true);
    router.print(b"%SYS-2-MALLOCFAIL: during the blackout\r\n");
    // The agent gives the dark session up; the line waits on the device.
    eventually("the agent to give the session up", || {
        agent
            .status()
            .filter(|s| s.state != burrow_agent::status::State::Up)
    })
    .await;
    assert!(!cli_log(&data, &["pi"]).contains("during the blackout"));
    router.print(b"still dark\r\n");

    link.set(|i| i.blackout = false);
    let text = wait_logged(&data, "still dark").await;
    let order: Vec<usize> = ["before the blackout", "during the blackout", "still dark"]
        .iter()
        .map(|n| {
            text.find(n)
                .unwrap_or_else(|| panic!("{n} missing:\n{text}"))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    agent.stop().await;
    stop.cancel();
}

/// A pattern alert fires on the device while the relay is down and is recorded once the relay
/// is back: the matching line, the lines around it, where it is in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_alert_fired_while_the_relay_was_down_is_delivered_when_it_returns() {
    let s = site(|c, _| {
        c.alert.push(AlertRule {
            name: Some("restart".into()),
            pattern: "%SYS-5-RESTART".into(),
            every: Some(Seconds::Whole(60)),
            before: Some(2),
            after: Some(2),
        });
        c.alert.push(AlertRule {
            name: None,
            pattern: "^rommon [0-9]+ >".into(),
            every: None,
            before: None,
            after: None,
        });
    })
    .await;
    let Site {
        dir,
        relay,
        router,
        agent,
        ..
    } = s;
    let data = relay.data_dir.clone();
    let addr = relay.addr;
    relay.stop().await;
    router.boot();
    // Rate-limited: a second restart within the rule's quiet time raises nothing more.
    router.print(b"%SYS-5-RESTART: System restarted again --\r\n");
    // A prompt without a line end fires too.
    router.print(b"rommon 1 >");
    // Queued on the device while the relay is away.
    let queued = dir.path().join("console-log").join("alerts.json");
    eventually("both alerts queued on the device", || {
        let text = std::fs::read_to_string(&queued).ok()?;
        (text.contains("restart") && text.contains("rommon 1 >")).then_some(())
    })
    .await;

    // The relay comes back with a webhook: the alerts reach it through the relay's alert path.
    let receiver = Receiver::start().await;
    let hook = receiver.url("/hook");
    let relay = TestRelay::start_with(&data, &addr.to_string(), |c| {
        c.alerts.webhooks = vec![
            burrow_relay::alerts::Webhook::new(&hook, burrow_relay::alerts::Format::Json, vec![])
                .unwrap(),
        ];
        c.alerts.poll = Duration::from_millis(100);
    })
    .await;
    let alert = eventually_async("the alerts recorded", || async {
        let audit = relay.audit_now(200).await;
        let alerts: Vec<_> = audit
            .into_iter()
            .filter(|r| r.event == "console-alert")
            .collect();
        (alerts.len() >= 2).then_some(alerts)
    })
    .await;
    let restart = alert
        .iter()
        .find(|r| r.detail.starts_with("\"restart\""))
        .unwrap();
    assert_eq!(
        (restart.who.as_str(), restart.target.as_str()),
        ("pi", "console")
    );
    let d = &restart.detail;
    assert!(
        d.contains("matched \"%SYS-5-RESTART: System restarted --\""),
        "{d}"
    );
    assert!(
        d.contains("before: Initializing memory... | Self decompressing"),
        "{d}"
    );
    assert!(d.contains("after: %LINK-3-UPDOWN"), "{d}");
    assert!(
        d.contains("port log offset") && d.contains("--since 20"),
        "{d}"
    );
    assert!(alert.iter().any(|r| r.detail.contains("rommon 1 >")));
    let posted = eventually("both alerts posted to the webhook", || {
        let alerts = receiver.alerts();
        (alerts.len() >= 2).then_some(alerts)
    })
    .await;
    assert!(
        posted
            .iter()
            .all(|a| a["kind"] == "console-pattern" && a["device"] == "pi"),
        "{posted:?}"
    );
    let summary = posted
        .iter()
        .map(|a| a["summary"].as_str().unwrap_or_default())
        .find(|s| s.contains("\"restart\""))
        .unwrap_or_else(|| panic!("no restart alert in {posted:?}"));
    assert!(
        summary.contains("%SYS-5-RESTART: System restarted --"),
        "{summary}"
    );
    assert!(summary.contains("before: Initializing memory"), "{summary}");
    // Delivered once, not again after the agent reconnects or restarts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let count = relay
        .audit_now(200)
        .await
        .iter()
        .filter(|r| r.event == "console-alert")
        .count();
    assert_eq!(count, 2);
    assert_eq!(receiver.alerts().len(), 2);
    agent.stop().await;
}

/// `log_upload = "on-attach"` keeps the log on the device until someone attaches (then the
/// backlog goes first); `"never"` keeps it there for good, while alerts still go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_upload_on_attach_and_never() {
    use burrow_proto::console_config::LogUpload;
    let s = site(|c, _| c.log_upload = LogUpload::OnAttach).await;
    let data = s.relay.data_dir.clone();
    s.router.print(b"while nobody watched\r\n");
    // On the device, not at the relay.
    let ring = s.dir.path().join("console-log").join("console");
    eventually("the line in the ring on the device", || {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(&ring).ok()? {
            all.extend(std::fs::read(entry.ok()?.path()).ok()?);
        }
        String::from_utf8_lossy(&all)
            .contains("while nobody watched")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!cli_log(&data, &["pi"]).contains("while nobody watched"));
    let mut t = Terminal::spawn(&s.alice, &["-l", "alice:pi", "relay"]);
    t.expect("read-write").await;
    wait_logged(&data, "while nobody watched").await;
    t.send(b"\x05c.").await;
    assert!(t.wait().await);
    s.agent.stop().await;

    let s = site(|c, _| {
        c.log_upload = LogUpload::Never;
        c.alert.push(AlertRule {
            name: Some("panic".into()),
            pattern: "Kernel panic".into(),
            every: None,
            before: None,
            after: None,
        });
    })
    .await;
    let data = s.relay.data_dir.clone();
    s.router.print(b"Kernel panic - not syncing: VFS\r\n");
    eventually_async("the alert recorded", || async {
        s.relay
            .audit_now(100)
            .await
            .into_iter()
            .find(|r| r.event == "console-alert" && r.detail.contains("Kernel panic"))
    })
    .await;
    let mut t = Terminal::spawn(&s.alice, &["-l", "alice:pi", "relay"]);
    t.expect("read-write").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!cli_log(&data, &["pi"]).contains("Kernel panic"));
    t.send(b"\x05c.").await;
    assert!(t.wait().await);
    s.agent.stop().await;
}
