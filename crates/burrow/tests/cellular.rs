//! Liveness over a bad link: the agent reaches the relay through `burrow-linkemu` (a userspace
//! cellular link: delay, jitter, loss, rate, blackout). Intervals are scaled down so that a few
//! seconds of test cover many keepalive and probe periods; the link itself keeps real cellular
//! delays.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use burrow_linkemu::{Impairment, Link};
use burrow_proto::agent_config::{AgentConfig, Seconds};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Bytes moved each way by the saturating transfers: about 25 s each at 2 Mbit/s, which is
/// dozens of the scaled keepalive and probe intervals.
const TRANSFER: usize = 6 << 20;
/// Time allowed for one saturating transfer.
const TRANSFER_WAIT: Duration = Duration::from_secs(180);

/// A deterministic byte stream that shows any loss, duplication or reordering.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A link between the agent and the relay; the agent dials `link.addr()`.
async fn link_to(relay: SocketAddr, impairment: Impairment) -> (Link, CancellationToken) {
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let link = Link::start(listener, relay, impairment, shutdown.clone()).unwrap();
    (link, shutdown)
}

/// Device `pi` with an echo service on port 22, its agent behind a link without a rate limit,
/// keepalive timeout `timeout` and no probes (then `adjust`); up when this returns.
async fn device_behind_a_link(
    timeout: f64,
    adjust: impl FnOnce(&mut AgentConfig),
) -> (
    tempfile::TempDir,
    TestRelay,
    PathBuf,
    Link,
    CancellationToken,
    TestAgent,
) {
    let (dir, relay, dev_key, op_key) = relay_with("pi", "op").await;
    let mut impairment = Impairment::cellular();
    impairment.rate = None;
    let (link, stop) = link_to(relay.addr, impairment).await;
    let mut config = agent_config(
        &link.addr().to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    scaled(&mut config, timeout, 0.0);
    adjust(&mut config);
    expose(&mut config, 22, echo_server().await);
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    relay.wait_online("pi").await;
    (dir, relay, op_key, link, stop, agent)
}

/// Darkens the link and waits until the agent gives its session up for an unanswered keepalive.
async fn blackout_until_the_agent_gives_up(link: &Link, agent: &TestAgent) {
    link.set(|i| i.blackout = true);
    let status = eventually("the agent to give the session up", || {
        agent
            .status()
            .filter(|s| s.state != burrow_agent::status::State::Up)
    })
    .await;
    let why = status.last_error.unwrap_or_default();
    assert!(why.contains("keepalive unanswered"), "{why}");
}

/// Scaled timings: a keepalive after 1 s of quiet, answered within `timeout`.
fn scaled(config: &mut AgentConfig, timeout: f64, probe_interval: f64) {
    config.keepalive_interval = Some(Seconds::Fraction(1.0));
    config.busy_keepalive_interval = Some(Seconds::Fraction(0.5));
    config.keepalive_timeout = Some(Seconds::Fraction(timeout));
    config.probe_interval = Some(Seconds::Fraction(probe_interval));
    config.probe_timeout = Some(Seconds::Fraction(2.0));
}

/// A service that sends `data` and closes.
async fn source(data: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                let _ = tcp.write_all(&data).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// A service that reads to the end, then answers `OK` if it got exactly `expected`.
async fn checking_sink(expected: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let expected = expected.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = tcp.read_to_end(&mut got).await;
                let verdict = if got == expected {
                    "OK".to_string()
                } else {
                    format!("BAD {} bytes", got.len())
                };
                let _ = tcp.write_all(verdict.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// Session ends the relay recorded for `device`: takeovers and offline entries.
fn session_ends(relay: &TestRelay, device: &str) -> Vec<String> {
    let (ok, out, err) = relay.cli(&["audit", "--limit", "500"]);
    assert!(ok, "{err}");
    out.lines()
        .filter(|l| l.contains(device) && (l.contains("offline") || l.contains("takeover")))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturating_transfers_over_a_cellular_link_never_drop_the_session() {
    let (dir, relay, dev_key, op_key) = relay_with("pi", "op").await;
    let down = pattern(TRANSFER, 1);
    let up = pattern(TRANSFER, 2);
    let device_upload = pattern(TRANSFER, 3);
    let (link, _link_stop) = link_to(relay.addr, Impairment::cellular()).await;
    let mut config = agent_config(
        &link.addr().to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    // Keepalive and probe timeouts of 2 s, shorter than the seconds of data queued on the
    // link during the transfers.
    scaled(&mut config, 2.0, 1.0);
    expose(&mut config, 80, source(down.clone()).await);
    expose(&mut config, 81, checking_sink(up.clone()).await);
    // A stream the device opens itself ([[connect]]) proves nothing about the route back to
    // it: probes keep running behind its queue.
    let relay_side_sink = checking_sink(device_upload.clone()).await;
    let local = free_port();
    config.connect.push(burrow_proto::agent_config::Connect {
        listen: format!("127.0.0.1:{local}"),
        to: relay_side_sink.to_string(),
    });
    let (ok, _, err) = relay.cli(&[
        "device",
        "allow-connect",
        "pi",
        &relay_side_sink.to_string(),
    ]);
    assert!(ok, "{err}");
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    let op = ssh_config(dir.path(), &relay, "op", &op_key);

    // Operator streams both ways at once, saturating the link.
    let download = ssh_output_within(&op, &["-W", "pi:80", "relay"], b"", TRANSFER_WAIT);
    let upload = ssh_output_within(&op, &["-W", "pi:81", "relay"], &up, TRANSFER_WAIT);
    let ((ok_d, got, err_d), (ok_u, verdict, err_u)) = tokio::join!(download, upload);
    assert!(ok_d, "{err_d}");
    assert!(got == down, "download arrived altered: {} bytes", got.len());
    assert!(ok_u, "{err_u}");
    assert_eq!(String::from_utf8_lossy(&verdict), "OK");
    let probes_before = agent.status().unwrap().probes;

    // The device's own upload: probes run meanwhile, queued behind it.
    let mut tcp = TcpStream::connect(("127.0.0.1", local)).await.unwrap();
    let sent = tokio::time::timeout(TRANSFER_WAIT, async {
        tcp.write_all(&device_upload).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut verdict = String::new();
        tcp.read_to_string(&mut verdict).await.unwrap();
        verdict
    })
    .await
    .expect("the device's upload finished");
    assert_eq!(sent, "OK");

    let status = agent.status().unwrap();
    assert_eq!(status.reconnects, 0, "{status:?}");
    assert_eq!(status.state, burrow_agent::status::State::Up);
    assert!(
        status.probes > probes_before,
        "no probe ran during the device's upload: {status:?}"
    );
    assert!(
        status.last_probe.as_ref().is_some_and(|p| p.ok),
        "{status:?}"
    );
    assert!(session_ends(&relay, "pi").is_empty());
    let (up_bytes, down_bytes) = link.bytes();
    assert!(up_bytes as usize > 2 * TRANSFER && down_bytes as usize > TRANSFER);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackout_is_noticed_on_both_sides_and_the_device_returns_after_it() {
    let (_dir, relay, _op_key, link, _link_stop, agent) = device_behind_a_link(2.0, |_| {}).await;

    // The agent: its keepalive goes unanswered.
    blackout_until_the_agent_gives_up(&link, &agent).await;
    // The relay: the keepalive it was promised is overdue.
    eventually("the relay to give the session up", || {
        relay.relay.online_endpoints("pi").is_none().then_some(())
    })
    .await;
    let ends = session_ends(&relay, "pi");
    assert!(
        ends.iter()
            .any(|l| l.contains("nothing heard for") && l.contains("promised a keepalive")),
        "{ends:?}"
    );

    link.set(|i| i.blackout = false);
    let status = agent.wait_up().await;
    assert_eq!(status.reconnects, 1);
    relay.wait_online("pi").await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_a_busy_stream_notices_a_dead_link_long_before_its_idle_keepalive() {
    // Idle, a dead link would take a minute to show; with a stream moving bytes, the busy rule
    // applies.
    let (dir, relay, op_key, link, _link_stop, agent) = device_behind_a_link(2.0, |c| {
        c.keepalive_interval = Some(Seconds::Whole(60));
    })
    .await;
    let op = ssh_config(dir.path(), &relay, "op", &op_key);
    let (_stream, mut stdin) = open_echo_stream(&op).await;
    // The operator keeps typing, through the blackout too.
    let typing = tokio::spawn(async move {
        loop {
            if stdin.write_all(b"ping").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    blackout_until_the_agent_gives_up(&link, &agent).await;
    typing.abort();
    link.set(|i| i.blackout = false);
    agent.wait_up().await;
    agent.stop().await;
}

/// Bytes on the link, both ways, over `window`.
async fn link_bytes_over(link: &Link, window: Duration) -> u64 {
    let before = link.bytes();
    tokio::time::sleep(window).await;
    let after = link.bytes();
    (after.0 - before.0) + (after.1 - before.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_open_stream_costs_at_most_twice_an_idle_device() {
    // A keepalive after 1 s without sending; after stream bytes, one within 0.05 s of the
    // relay's last word. Were the busy check to run while a stream merely exists, the silent
    // stream below would cost a keepalive every round trip instead of one a second.
    let (dir, relay, op_key, link, _link_stop, agent) = device_behind_a_link(2.0, |c| {
        c.busy_keepalive_interval = Some(Seconds::Fraction(0.05));
    })
    .await;
    // A short round trip, so that a keepalive per round trip shows plainly.
    link.set(|i| {
        i.delay = Duration::from_millis(20);
        i.jitter = Duration::ZERO;
        i.loss = 0.0;
    });
    // Six idle intervals each: the counts differ by a keepalive or two at most.
    let window = Duration::from_secs(6);
    let idle = link_bytes_over(&link, window).await;
    let op = ssh_config(dir.path(), &relay, "op", &op_key);
    let (_stream, _stdin) = open_echo_stream(&op).await;
    let with_stream = link_bytes_over(&link, window).await;
    assert!(idle > 0, "no keepalive went out in {window:?}");
    assert!(
        with_stream <= 2 * idle,
        "an idle open stream cost {with_stream} bytes where an idle device cost {idle}"
    );
    let status = agent.status().unwrap();
    assert_eq!(status.reconnects, 0, "{status:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_the_relay_suspects_gets_operators_an_answer_at_once() {
    // Suspect after 1 + 10 s of silence, given up after 1 + 20 s.
    let (dir, relay, op_key, link, _link_stop, agent) = device_behind_a_link(20.0, |_| {}).await;
    let op = ssh_config(dir.path(), &relay, "op", &op_key);

    link.set(|i| i.blackout = true);
    // The operator listing shows the device silent once the relay suspects it (its keepalive is
    // overdue), well before the session is given up.
    eventually("the relay to list the device as silent", || {
        let out = ssh(&op, &["relay", "ls"])
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        let listing = String::from_utf8_lossy(&out.stdout).to_string();
        listing
            .lines()
            .any(|l| l.starts_with("pi") && l.contains("silent"))
            .then_some(())
    })
    .await;
    let mut ask = tokio::process::Command::from(ssh(&op, &["-W", "pi:22", "relay"]));
    ask.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, ask.output())
        .await
        .expect("the operator got an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(answer.contains("has not answered for"), "{answer}");
    // The answer came from the relay's suspicion, while the session was still held: not from a
    // wait on the device, and not from an offline device.
    assert!(!answer.contains("did not answer within"), "{answer}");
    assert!(relay.relay.online_endpoints("pi").is_some(), "{answer}");
    link.set(|i| i.blackout = false);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_probe_runs_while_an_operator_stream_proves_the_path() {
    let (dir, relay, dev_key, op_key) = relay_with("pi", "op").await;
    let mut config = agent_config(
        &relay.addr.to_string(),
        "pi",
        &dev_key,
        &relay.relay.fingerprint(),
    );
    scaled(&mut config, 2.0, 0.3);
    expose(&mut config, 22, echo_server().await);
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    eventually("an idle probe", || agent.status().filter(|s| s.probes >= 2)).await;
    let op = ssh_config(dir.path(), &relay, "op", &op_key);
    let mut child = tokio::process::Command::from(ssh(&op, &["-W", "pi:22", "relay"]))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut echo = async |rounds: usize| {
        for _ in 0..rounds {
            stdin.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            stdout.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // A probe that started before the stream may still finish.
    echo(10).await;
    let before = agent.status().unwrap().probes;
    // Ten probe intervals of traffic on the stream.
    echo(60).await;
    let during = agent.status().unwrap().probes;
    assert_eq!(
        before, during,
        "probes ran while the stream proved the path"
    );
    drop(stdin);
    let _ = child.kill().await;
    eventually("probes to resume once the stream ended", || {
        agent.status().filter(|s| s.probes > during)
    })
    .await;
    agent.stop().await;
}
