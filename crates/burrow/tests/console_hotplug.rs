//! Consoles for network engineers, part four: a USB adapter unplugged and plugged back in as
//! another pty, found again by its by-id name. socat makes the "adapter": two ptys joined,
//! `pty,link=` names for the agent's side (`serial/by-id/...`) and the router's; SIGTERM
//! removes both names (unplugged), a new socat makes them again on other pty numbers.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use std::time::Duration;

use burrow_proto::agent_config::{Console, Seconds};
use common::*;

/// The router's end: what it prints goes to the agent, what it reads is collected.
fn router_print(router_side: &Path, text: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(router_side)
        .unwrap();
    f.write_all(text).unwrap();
}

/// Reads what reached the router's end until it holds `needle`.
fn router_expect(router: &mut std::fs::File, seen: &mut Vec<u8>, needle: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(seen).contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "the router never got {needle:?}; it got {:?}",
            String::from_utf8_lossy(seen)
        );
        match router.read(&mut buf) {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn open_router(router_side: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_nonblock())
        .open(router_side)
        .unwrap()
}

fn libc_nonblock() -> i32 {
    rustix::fs::OFlags::NONBLOCK.bits() as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_unplugged_and_back_as_another_pty_is_found_by_its_by_id_name() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    let alice_key = keypair(dir.path(), "alice");
    relay.add_device("pi", &dev_key);
    relay.add_operator("alice", &alice_key, &["*"]);
    let by_id = dir.path().join("serial").join("by-id");
    std::fs::create_dir_all(&by_id).unwrap();
    let agent_side: PathBuf = by_id.join("usb-FTDI_FT232R_USB_UART_A10K3ZQ1-if00-port0");
    let router_side = dir.path().join("router");
    let adapter = Adapter::plug(&agent_side, &router_side);
    let first_pty = std::fs::read_link(&agent_side).unwrap();
    let mut config = agent_config(
        &relay.addr.to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    let mut console = Console::new("console", agent_side.clone(), 9600);
    console.gone_alert = Some(Seconds::Whole(1));
    config.console.push(console);
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    let alice = ssh_config(dir.path(), &relay, "alice", &alice_key);

    let mut router = open_router(&router_side);
    let mut seen = Vec::new();
    let mut t = Terminal::spawn(&alice, &["-l", "alice:pi", "relay"]);
    t.expect("read-write").await;
    // A setting to be reapplied after the replug.
    t.send(b"\x05c=19200 flow=xon-xoff\r").await;
    t.expect("line now 19200 8N1, flow xon-xoff").await;
    t.send(b"hello\r").await;
    router_expect(&mut router, &mut seen, "hello");
    router_print(&router_side, b"Router>\r\n");
    t.expect("Router>").await;

    // Unplugged: the session is told in-band, and so is a key typed meanwhile.
    drop(router);
    adapter.unplug(&agent_side);
    t.expect("is gone").await;
    t.send(b"x").await;
    t.expect("input dropped").await;
    // Gone past gone_alert: an alert.
    eventually_async("the gone alert", || async {
        relay
            .audit_now(100)
            .await
            .into_iter()
            .find(|r| r.event == "console-alert" && r.detail.contains("has been gone"))
    })
    .await;

    // Back, as other ptys behind the same names (the old numbers taken meanwhile, as a
    // ttyUSB0 that comes back as ttyUSB1).
    let squatters: Vec<_> = (0..2)
        .map(|_| {
            rustix::pty::openpt(rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY)
                .unwrap()
        })
        .collect();
    let adapter = Adapter::plug(&agent_side, &router_side);
    let second_pty = std::fs::read_link(&agent_side).unwrap();
    assert_ne!(first_pty, second_pty);
    t.expect("is back").await;
    let mut router = open_router(&router_side);
    let mut seen = Vec::new();
    // The router speaks first: socat names its ptys before it sets them raw (flushing what
    // they hold), so only once something crossed is the new adapter surely ready.
    router_print(&router_side, b"Router> still here\r\n");
    t.expect("Router> still here").await;
    t.send(b"again\r").await;
    router_expect(&mut router, &mut seen, "again");
    // Reapplied: the status line, and the new pty's own termios (which the agent set).
    t.send(b"\x05ci").await;
    t.expect_times("19200 8N1, flow xon-xoff", 3).await;
    let slave = rustix::fs::open(
        &second_pty,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::NONBLOCK,
        rustix::fs::Mode::empty(),
    );
    if let Ok(slave) = slave {
        // (Only when this test may open a port the agent holds exclusively: as root.)
        let tio = rustix::termios::tcgetattr(&slave).unwrap();
        assert_eq!(tio.output_speed(), 19200);
        assert!(tio.input_modes.contains(rustix::termios::InputModes::IXON));
    }
    t.send(b"\x05c.").await;
    assert!(t.wait().await);
    // The agent logged both; the port log has them too.
    let audit = relay.audit_now(100).await;
    assert!(audit.iter().any(|r| r.event == "console-alert"));
    let _ = (adapter, squatters);
    agent.stop().await;
}
