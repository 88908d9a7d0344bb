//! Hostile peers against a relay process: clients that send and never read, stall a key
//! exchange, or split data into one-byte packets. What the relay may spend on each is bounded
//! by what it queues, measured as the growth of its resident memory (it grew by hundreds of
//! MB on each of these before the caps), and the real operator still gets in.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burrow_ssh::auth::ClientKey;
use burrow_ssh::channel::{self, ChannelId, GlobalRequest};
use burrow_ssh::messages;
use burrow_ssh::raw_peer::RawPeer;
use burrow_ssh::session::Event;
use common::*;

fn burrow(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_burrow"));
    c.arg("relay").arg("--data-dir").arg(data).args(args);
    c
}

/// The relay's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Whether the TCP connection from `local` is still established, from /proc/net/tcp (without
/// touching the socket).
fn established(local: SocketAddr) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let SocketAddr::V4(v4) = local else {
        return false;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&want.as_str()) && fields.get(3) == Some(&"01")
    })
}

/// Samples a process's resident memory until stopped; the highest value seen.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
}

impl PeakRss {
    fn watch(pid: u32) -> PeakRss {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let (s, p) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        PeakRss { stop, peak }
    }

    fn peak_kib(&self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.peak.load(Ordering::Relaxed)
    }
}

/// A relay process with device `pi` and operator `alice` registered.
struct Site {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    relay: KillOnDrop,
    addr: SocketAddr,
    dev_key: std::path::PathBuf,
    op_key: std::path::PathBuf,
}

impl Site {
    fn start(args: &[&str]) -> Site {
        let dir = tempdir();
        let data = dir.path().join("relay");
        assert!(burrow(&data, &["init"]).output().unwrap().status.success());
        let dev_key = keypair(dir.path(), "dev");
        let op_key = keypair(dir.path(), "op");
        for (kind, name, key, extra) in [
            ("device", "pi", &dev_key, None),
            ("operator", "alice", &op_key, Some("pi")),
        ] {
            let pubkey = format!("{}.pub", key.display());
            let mut args = vec![kind, "add", name, "--pubkey", &pubkey];
            if let Some(allow) = extra {
                args.extend(["--allow", allow]);
            }
            let out = burrow(&data, &args).output().unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        let (relay, port, _log) = relay_process(&data, args);
        Site {
            _dir: dir,
            data,
            relay,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dev_key,
            op_key,
        }
    }

    fn pid(&self) -> u32 {
        self.relay.0.id()
    }

    /// A raw peer that has finished the key exchange and sent nothing else of its own.
    async fn unauthenticated(&self) -> RawPeer {
        RawPeer::key_exchanged(self.addr, WAIT)
            .await
            .expect("key exchange")
    }

    /// A raw peer logged in as `user` with `key`, its channels advertising `window`.
    async fn logged_in(&self, user: &str, key: &Path, window: u32) -> RawPeer {
        RawPeer::logged_in(self.addr, user, ClientKey::read(key).unwrap(), window, WAIT)
            .await
            .expect("login")
    }

    /// The operator can still log in and list devices with stock OpenSSH.
    fn operator_gets_in(&self) -> bool {
        let dir = tempdir();
        let kh = dir.path().join("known_hosts");
        let out = burrow(
            &self.data,
            &[
                "fingerprint",
                "--known-hosts",
                &format!("127.0.0.1:{}", self.addr.port()),
            ],
        )
        .output()
        .unwrap();
        std::fs::write(&kh, &out.stdout).unwrap();
        let out = Command::new("ssh")
            .args(["-p", &self.addr.port().to_string(), "-i"])
            .arg(&self.op_key)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=20",
                "-o",
            ])
            .arg(format!("UserKnownHostsFile={}", kh.display()))
            .args(["alice@127.0.0.1", "ls"])
            .output()
            .unwrap();
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("pi")
    }
}

/// A raw device `pi` that exposes port 22, accepts the relay's first channel to it with no
/// window at all, and from then on reads nothing.
async fn silent_device(site: &Site) -> tokio::task::JoinHandle<RawPeer> {
    let mut device = site.logged_in("pi", &site.dev_key, 0).await;
    let forward = GlobalRequest::TcpipForward {
        address: "localhost".into(),
        port: 22,
    };
    device.session().connection().global_request(&forward, true);
    device
        .run_until(WAIT, |_, ev| {
            ev.iter().any(|e| {
                matches!(
                    e,
                    Event::Connection(channel::Event::GlobalReply { success: true, .. })
                )
            })
        })
        .await
        .expect("the endpoint is up");
    tokio::spawn(async move {
        let mut accepted = false;
        device
            .run_until(WAIT, |s, ev| {
                if accepted {
                    // The confirmation went out on the last turn: stop here, reading nothing.
                    return true;
                }
                let offered = ev.iter().find_map(|e| match e {
                    Event::Connection(channel::Event::Open { channel, .. }) => Some(*channel),
                    _ => None,
                });
                if let Some(id) = offered {
                    s.connection().accept(id).unwrap();
                    accepted = true;
                }
                false
            })
            .await
            .expect("the relay opens a channel to the device");
        device
    })
}

/// A raw operator with a direct-tcpip channel to `pi:22`, open.
async fn operator_with_stream(site: &Site) -> (RawPeer, ChannelId) {
    let mut op = site.logged_in("alice", &site.op_key, u32::MAX).await;
    let id = op
        .open_stream("pi", 22, WAIT)
        .await
        .expect("the stream opens");
    (op, id)
}

/// Growth of the relay's memory allowed under each attack: a handful of caps' worth, where the
/// unbounded relay grew by hundreds of MB.
const ALLOWED_GROWTH_KIB: u64 = 48 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_floods_of_answered_messages_cost_a_constant() {
    let site = Site::start(&[]);
    let before = rss_kib(site.pid());
    let peak = PeakRss::watch(site.pid());
    let mut floods = Vec::new();
    for i in 0..16 {
        let mut peer = site.unauthenticated().await;
        floods.push(tokio::spawn(async move {
            let sent = if i % 2 == 0 {
                // Unknown messages: each is answered with UNIMPLEMENTED.
                peer.flood(Duration::from_secs(8), |n| vec![200, n as u8])
                    .await
            } else {
                // Keyboard-interactive starts: each is answered with a prompt, and none
                // counts as a failed attempt.
                peer.flood(Duration::from_secs(8), |_| {
                    messages::AuthRequest {
                        user: "alice".into(),
                        service: "ssh-connection".into(),
                        method: messages::Method::KeyboardInteractive {
                            submethods: String::new(),
                        },
                    }
                    .encode()
                })
                .await
            };
            sent.unwrap()
        }));
    }
    let mut total = 0;
    for f in floods {
        total += f.await.unwrap();
    }
    let growth = peak.peak_kib().saturating_sub(before);
    assert!(
        growth < ALLOWED_GROWTH_KIB,
        "16 unauthenticated peers that never read grew the relay by {growth} KiB ({total} messages taken)"
    );
    assert!(site.operator_gets_in(), "the operator is shut out");
}

/// `none` asks which methods may continue; asked again and again it is a failed attempt, and
/// the attempt limit ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_none_authentication_ends_at_the_attempt_limit() {
    let site = Site::start(&[]);
    let mut peer = site.unauthenticated().await;
    let none = messages::AuthRequest {
        user: "alice".into(),
        service: "ssh-connection".into(),
        method: messages::Method::None,
    };
    for _ in 0..20 {
        peer.queue(none.encode()).unwrap();
    }
    peer.write_some().unwrap();
    assert!(
        peer.closed_by_server(WAIT).await,
        "the relay answered 20 'none' requests and kept the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_in_keepalive_flood_costs_a_constant_and_is_cut() {
    let site = Site::start(&[]);
    let before = rss_kib(site.pid());
    let peak = PeakRss::watch(site.pid());
    let mut peer = site.logged_in("alice", &site.op_key, u32::MAX).await;
    let keepalive = burrow_ssh::raw_peer::keepalive_request();
    let flooding = tokio::spawn(async move {
        let sent = peer
            .flood(Duration::from_secs(8), |_| keepalive.clone())
            .await
            .unwrap();
        (peer, sent)
    });
    // The real operator gets in while the flood runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(site.operator_gets_in(), "the operator is shut out");
    let (peer, sent) = flooding.await.unwrap();
    let growth = peak.peak_kib().saturating_sub(before);
    assert!(
        growth < ALLOWED_GROWTH_KIB,
        "a logged-in peer that never reads grew the relay by {growth} KiB ({sent} keepalives taken)"
    );
    // It took nothing for the stall timeout: cut. (Watched in the kernel's table: reading
    // the socket to see the end would make room and lift the stall.)
    let local = peer.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while established(local) {
        assert!(
            Instant::now() < deadline,
            "a peer that reads nothing is never cut"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An operator opens a stream from a device that sends without end, starts a key exchange
/// and then says nothing: what the relay holds for it during the exchange is bounded, and the
/// device's stream is held back instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_key_exchange_holds_back_the_stream_not_the_relay() {
    let site = Site::start(&[]);
    let source = firehose(usize::MAX).await;
    let dev_cfg = {
        let dir = site._dir.path();
        let kh = dir.join("known_hosts_dev");
        let out = burrow(
            &site.data,
            &[
                "fingerprint",
                "--known-hosts",
                &format!("127.0.0.1:{}", site.addr.port()),
            ],
        )
        .output()
        .unwrap();
        std::fs::write(&kh, &out.stdout).unwrap();
        let path = dir.join("ssh_config_dev");
        std::fs::write(
            &path,
            format!(
                "Host relay\n  HostName 127.0.0.1\n  Port {}\n  User pi\n  IdentityFile {}\n  \
                 UserKnownHostsFile {}\n  IdentitiesOnly yes\n  BatchMode yes\n",
                site.addr.port(),
                site.dev_key.display(),
                kh.display()
            ),
        )
        .unwrap();
        path
    };
    let _device = stock_device(
        &dev_cfg,
        &["-R", &format!("22:localhost:{}", source.port())],
    );
    eventually("the device's endpoint", || {
        let out = burrow(&site.data, &["device", "ls", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v[0]["endpoints"] == serde_json::json!([22])).then_some(())
    })
    .await;
    let (mut op, _id) = operator_with_stream(&site).await;
    let before = rss_kib(site.pid());
    let peak = PeakRss::watch(site.pid());
    op.session().transport().rekey();
    op.write_some().unwrap();
    // Nothing more from the operator: no KEX_ECDH_INIT, no reads.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let growth = peak.peak_kib().saturating_sub(before);
    assert!(
        growth < ALLOWED_GROWTH_KIB,
        "a stalled key exchange with a stream open grew the relay by {growth} KiB"
    );
    assert!(site.operator_gets_in(), "the operator is shut out");
    drop(op);
}

/// 20,000 one-byte CHANNEL_DATA packets toward a device that does not read: each must not
/// keep a 64 KiB read buffer alive while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_packets_do_not_pin_read_buffers() {
    let site = Site::start(&[]);
    let device = silent_device(&site).await;
    let (mut op, id) = operator_with_stream(&site).await;
    let before = rss_kib(site.pid());
    let peak = PeakRss::watch(site.pid());
    for i in 0..20_000u32 {
        let taken = op.session().send_data(id, None, &[i as u8]).unwrap();
        assert_eq!(taken, 1, "the window has room for every byte");
        op.write_some().unwrap();
        // One packet per segment and, with a pause, one per read at the relay: each read
        // touches a page of a fresh 64 KiB buffer, which a queued view would keep.
        std::thread::sleep(Duration::from_micros(50));
    }
    while op.write_some().unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let growth = peak.peak_kib().saturating_sub(before);
    eprintln!("one-byte growth {growth} KiB");
    assert!(
        growth < 16 * 1024,
        "20,000 one-byte packets grew the relay by {growth} KiB"
    );
    drop(device.await.unwrap());
}

/// RFC 4254 §4: a device's `tcpip-forward` and a keepalive in one write are answered in that
/// order (OpenSSH matches global replies to requests by order, so a reply overtaking another
/// reads as a failed forward under `ExitOnForwardFailure`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_replies_come_in_the_order_of_the_requests() {
    let site = Site::start(&[]);
    let mut device = site.logged_in("pi", &site.dev_key, u32::MAX).await;
    let forward = GlobalRequest::TcpipForward {
        address: "localhost".into(),
        port: 22,
    };
    device.session().connection().global_request(&forward, true);
    device.session().send_keepalive(true);
    device.write_some().unwrap();
    let events = device
        .run_until(WAIT, |s, _| !s.connection().keepalive_outstanding())
        .await
        .expect("both answered");
    let forward_answer = events
        .iter()
        .find_map(|e| match e {
            Event::Connection(channel::Event::GlobalReply { success, .. }) => Some(*success),
            _ => None,
        })
        .expect("the forward's answer");
    assert!(
        forward_answer,
        "the keepalive's failure was taken for the forward's answer"
    );
}

/// A connection that sends half an identification line and stops holds its place no longer
/// than one that sends nothing: the banner timeout (10 s), not the 30 s login deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_identification_line_gets_the_banner_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let site = Site::start(&[]);
    let mut tcp = tokio::net::TcpStream::connect(site.addr).await.unwrap();
    tcp.write_all(b"SSH-2.0-half").await.unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(25), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a half-sent line held its place past the banner timeout ({:?})",
        started.elapsed()
    );
}
