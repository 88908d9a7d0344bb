//! Consoles for network engineers, part two: power control through a fake power command that
//! records its calls (escape with confirmation, exec command, audited, marked in the
//! recording), every serial setting kept across attaches and agent reconnects (status line,
//! recording marks, the pty's termios), and session control (who, watcher notice, idle
//! timeout).

mod common;

use std::path::{Path, PathBuf};

use burrow_proto::agent_config::{AgentConfig, Console, PowerOutlet, Seconds};
use common::*;

struct Site {
    dir: tempfile::TempDir,
    relay: TestRelay,
    router: FakeRouter,
    agent: TestAgent,
    alice: PathBuf,
    bob: PathBuf,
}

/// Relay, device `pi` whose console `console` is a fake router (configured by `adjust`),
/// operators alice and bob.
async fn site(adjust: impl FnOnce(&mut Console, &mut AgentConfig, &Path)) -> Site {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
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
    let mut console = Console::new("console", router.path.clone(), 9600);
    adjust(&mut console, &mut config, dir.path());
    config.console.push(console);
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    let alice = ssh_config(dir.path(), &relay, "alice", &alice_key);
    let bob = ssh_config(dir.path(), &relay, "bob", &bob_key);
    Site {
        dir,
        relay,
        router,
        agent,
        alice,
        bob,
    }
}

fn calls(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("power-calls")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_from_the_escape_menu_with_confirmation_and_from_the_exec_command() {
    let s = site(|c, _, dir| {
        c.power.push(recording_outlet(
            Some("hub-port-2"),
            &dir.join("power-calls"),
        ))
    })
    .await;
    let dir = s.dir.path().to_path_buf();
    let mut t = Terminal::spawn(&s.alice, &["-l", "alice:pi", "relay"]);
    t.expect("read-write").await;
    // The status line names the outlet.
    t.send(b"\x05ci").await;
    t.expect("power: hub-port-2").await;
    // Anything but y cancels.
    t.send(b"\x05cp").await;
    t.expect("c cycle").await;
    t.send(b"c").await;
    t.expect("power-cycle pi/console? y to confirm").await;
    t.send(b"n").await;
    t.expect("power: nothing done").await;
    assert_eq!(calls(&dir), "");
    // Confirmed: off, a pause, on.
    t.send(b"\x05cpcy").await;
    t.expect("power cycle: done").await;
    assert_eq!(calls(&dir), "off\non\n");
    t.send(b"\x05c.").await;
    assert!(t.wait().await);

    // The exec command, for scripts.
    let (ok, out, err) =
        ssh_output(&s.alice, &["relay", "console", "power", "pi", "off"], b"").await;
    assert!(ok, "{err}");
    assert!(
        String::from_utf8_lossy(&out).contains("power off: done"),
        "{out:?}"
    );
    assert_eq!(calls(&dir), "off\non\noff\n");
    let (ok, _, err) = ssh_output(
        &s.alice,
        &["relay", "console", "power", "pi", "sideways"],
        b"",
    )
    .await;
    assert!(!ok);
    assert!(err.contains("on, off, cycle"), "{err}");

    // Audited and marked in the recording.
    let audit = s.relay.audit_now(200).await;
    let power: Vec<_> = audit
        .iter()
        .filter(|r| r.event == "console-power")
        .collect();
    assert_eq!(power.len(), 2, "{power:?}");
    assert!(
        power
            .iter()
            .all(|r| r.who == "alice" && r.target == "pi/console")
    );
    let markers = recording_markers(&s.relay);
    assert!(
        markers.iter().any(|m| m == "power cycle by alice"),
        "{markers:?}"
    );
    assert!(
        markers.iter().any(|m| m.contains("power cycle: done")),
        "{markers:?}"
    );
    // And in the port log on the device.
    s.agent.stop().await;
}

/// `burrow relay ARGS --data-dir DIR`, off the test's runtime (the relay runs on it).
async fn relay_cli(data_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_burrow"));
    cmd.arg("relay").args(args).arg("--data-dir").arg(data_dir);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("burrow relay console power finished")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `burrow relay console power` on the relay's machine: the running relay has the agent
/// switch, audited as relay-cli; what the relay says (no power control) reaches the command
/// line; another key as the command line's login name, or no running relay, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_from_the_relay_command_line() {
    let s = site(|c, _, dir| {
        c.power.push(recording_outlet(
            Some("hub-port-2"),
            &dir.join("power-calls"),
        ))
    })
    .await;
    let dir = s.dir.path().to_path_buf();
    let data_dir = s.relay.data_dir.clone();
    let (code, out, err) = relay_cli(&data_dir, &["console", "power", "pi", "off"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("power off: done"), "{out}");
    assert_eq!(calls(&dir), "off\n");
    let audit = s.relay.audit_now(200).await;
    assert!(
        audit.iter().any(|r| r.event == "console-power"
            && r.who == "relay-cli"
            && r.target == "pi/console"
            && r.detail == "off"),
        "{audit:?}"
    );
    // The relay's refusal (stderr on its side) is printed, with its exit status.
    let (code, out, _) = relay_cli(&data_dir, &["console", "power", "pi/aux", "on"]).await;
    assert_ne!(code, 0);
    assert!(out.contains("aux"), "{out}");
    // A usage error (EX_USAGE), refused before anything is asked.
    let (code, _, err) = relay_cli(&data_dir, &["console", "power", "pi", "sideways"]).await;
    assert_eq!(code, 64, "{err}");
    assert_eq!(calls(&dir), "off\n");

    // An operator's key is not the control key, whatever the login name.
    let (ok, _, err) = ssh_output(
        &s.alice,
        &["-l", "+relay-cli", "relay", "console", "power", "pi", "on"],
        b"",
    )
    .await;
    assert!(!ok, "{err}");
    assert_eq!(calls(&dir), "off\n");
    assert!(
        s.relay
            .audit_now(200)
            .await
            .iter()
            .any(|r| r.event == "auth"
                && r.who == "+relay-cli"
                && r.detail.contains("not this relay's control key")),
        "the refusal is audited"
    );
    // No relay on a directory: said so, and how.
    let empty = dir.join("no-relay");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, err) = relay_cli(&empty, &["console", "power", "pi", "on"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("is a relay running"), "{err}");
    s.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_without_power_says_how_to_get_it_and_a_failing_command_is_reported() {
    let s = site(|c, _, _| {
        c.power.push(PowerOutlet {
            name: None,
            on: Some("echo 'hub not found' >&2; exit 3".into()),
            off: None,
            cycle: None,
            cycle_delay: None,
            timeout: None,
        })
    })
    .await;
    let (ok, out, _) = ssh_output(&s.alice, &["relay", "console", "power", "pi", "on"], b"").await;
    let out = String::from_utf8_lossy(&out);
    assert!(!ok);
    assert!(
        out.contains("power on failed") && out.contains("hub not found"),
        "{out}"
    );
    let (ok, out, _) = ssh_output(&s.alice, &["relay", "console", "power", "pi", "off"], b"").await;
    assert!(!ok);
    assert!(String::from_utf8_lossy(&out).contains("no `off` command"));
    s.agent.stop().await;

    let s = site(|_, _, _| {}).await;
    let mut t = Terminal::spawn(&s.alice, &["-l", "alice:pi", "relay"]);
    t.expect("read-write").await;
    t.send(b"\x05cp").await;
    t.expect("[[console.power]]").await;
    t.send(b"\x05c.").await;
    assert!(t.wait().await);
    s.agent.stop().await;
}

/// Settings set from the escape and `console set` reach the line, stay across attaches and
/// across an agent reconnect, show in the status line and are marked in the recording.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_serial_setting_stays_across_attaches_and_reconnects() {
    use rustix::termios::{ControlModes, InputModes};
    let s = site(|c, _, _| {
        c.imap = burrow_proto::serial::Mapping::parse("crlf").unwrap();
    })
    .await;
    let mut t = Terminal::spawn(&s.alice, &["-l", "alice:pi", "relay"]);
    t.expect("read-write").await;
    t.expect("9600 8N1").await;
    t.send(b"\x05c=7E2 flow=xon-xoff 19200\r").await;
    t.expect("19200 7E2, flow xon-xoff").await;
    // A pty keeps 8 data bits and no parity whatever it is told (the agent's unit tests check
    // those in the termios it builds); stop bits, flow control and speed it keeps.
    let tio = s.router.termios();
    assert!(tio.control_modes.contains(ControlModes::CSTOPB));
    assert!(
        tio.input_modes
            .contains(InputModes::IXON | InputModes::IXOFF)
    );
    assert_eq!(tio.output_speed(), 19200);
    // A bad one is refused by name, with what is accepted; nothing changes.
    t.send(b"\x05c=parity=sideways\r").await;
    t.expect("parity").await;
    t.expect("parity \"sideways\": use none, even, odd, mark or space")
        .await;
    // Input mapping: the router's CR becomes LF for the operator.
    s.router.print(b"one\rtwo\r\n");
    t.expect("one\ntwo").await;
    t.send(b"\x05c.").await;
    assert!(t.wait().await);

    // The next attach finds them, and `console set` changes one more.
    let (ok, _, err) = ssh_output(
        &s.bob,
        &["relay", "console", "set", "pi", "parity=odd"],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    let mut t = Terminal::spawn(&s.alice, &["-l", "alice:pi", "relay"]);
    t.expect("19200 7O2, flow xon-xoff").await;
    t.send(b"\x05c.").await;
    assert!(t.wait().await);

    // The relay restarts: after the agent's reconnect the line is as it was.
    let Site {
        dir: _dir,
        relay,
        router,
        agent,
        alice,
        ..
    } = s;
    let (data, addr) = (relay.data_dir.clone(), relay.addr.to_string());
    relay.stop().await;
    eventually("the agent to notice", || {
        agent
            .status()
            .filter(|st| st.state != burrow_agent::status::State::Up)
    })
    .await;
    let relay = TestRelay::start_on(&data, &addr).await;
    agent.wait_up().await;
    let s = (relay, router, agent, alice);
    let (relay, router, alice) = (&s.0, &s.1, &s.3);
    let mut t = Terminal::spawn(alice, &["-l", "alice:pi", "relay"]);
    t.expect("19200 7O2, flow xon-xoff").await;
    t.send(b"\x05c.").await;
    assert!(t.wait().await);
    assert_eq!(router.termios().output_speed(), 19200);

    let markers = recording_markers(relay);
    assert!(
        markers.iter().any(|m| m.contains(
            "settings data_bits=7 parity=even stop_bits=2 flow=xon-xoff baud=19200 by alice"
        )),
        "{markers:?}"
    );
    let audit = relay.audit_now(200).await;
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.event == "console-settings")
            .count(),
        2
    );
    let (_, _, agent, _) = s;
    agent.stop().await;
}

/// `^Ec w` lists who is attached and how; the writer is told when someone starts watching;
/// an idle writer is closed after the console's idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_watcher_notice_and_idle_timeout() {
    let s = site(|c, _, _| c.idle_timeout = Some(Seconds::Whole(3))).await;
    let a = Terminal::spawn(&s.alice, &["-l", "alice:pi", "relay"]);
    a.expect("read-write").await;
    let mut b = Terminal::spawn(&s.bob, &["-l", "bob:pi", "relay"]);
    b.expect("read-only").await;
    a.expect("bob attached (read-only)").await;
    b.send(b"\x05cw").await;
    b.expect("alice").await;
    b.expect("read-write").await;
    b.expect("bob").await;
    // Alice types nothing: her session is closed; bob's read-only one is not.
    a.expect("idle").await;
    assert!(a.wait().await);
    b.send(b"\x05c.").await;
    assert!(b.wait().await);
    let _ = &s.router;
    s.agent.stop().await;
}
