//! A cluster under faults: a peer link held by a partition fails opens at once and comes
//! back by itself; a database outage still routes streams to the device's last known holder.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A TCP proxy in front of a relay's peer port that can hold every connection through it
/// (a partition: the sockets stay open, no byte moves either way).
struct HoldingProxy {
    addr: std::net::SocketAddr,
    held: Arc<AtomicBool>,
}

impl HoldingProxy {
    async fn start(upstream: std::net::SocketAddr) -> HoldingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(AtomicBool::new(false));
        let h = held.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, h.clone()));
                tokio::spawn(pump(sr, cw, h.clone()));
            }
        });
        HoldingProxy { addr, held }
    }

    fn hold(&self, held: bool) {
        self.held.store(held, Ordering::Relaxed);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    held: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while held.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A relay of a cluster on `pg` whose peer port other relays reach through a holding proxy.
async fn relay_behind_proxy(
    dir: &std::path::Path,
    pg: &TestPostgres,
    id: &str,
) -> (TestRelay, HoldingProxy) {
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = HoldingProxy::start(peer.local_addr().unwrap()).await;
    let url = pg.url.clone();
    let advertise = proxy.addr.to_string();
    let relay = TestRelay::start_with(&dir.join(id), "127.0.0.1:0", |c| {
        c.database = Some(url);
        c.relay_id = id.to_string();
        c.peer_advertise = Some(advertise);
    })
    .await;
    tokio::spawn(
        relay
            .relay
            .clone()
            .serve_peers(peer, relay.shutdown.clone()),
    );
    (relay, proxy)
}

/// Device `pi` (key `dev`) and operator `op` (key `op`) registered through `relay`.
async fn register(
    relay: &TestRelay,
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dev_key = keypair(dir, "dev");
    let op_key = keypair(dir, "op");
    let db = relay.relay.db();
    db.add_device("pi", &[public_key(&dev_key)]).await.unwrap();
    db.add_operator(
        "op",
        &[public_key(&op_key)],
        None,
        &["*".to_string()],
        false,
    )
    .await
    .unwrap();
    (dev_key, op_key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_peer_link_fails_opens_at_once_and_comes_back() {
    let dir = tempdir();
    let pg = TestPostgres::start().await;
    let (r1, proxy) = relay_behind_proxy(dir.path(), &pg, "r1").await;
    let r2 = cluster_relay(dir.path(), &pg, "r2").await;
    let (dev_key, op_key) = register(&r1, dir.path()).await;
    let echo = echo_server().await;
    let _device = stock_device(
        &ssh_config(&dir.path().join("r1"), &r1, "pi", &dev_key),
        &["-R", &format!("7:localhost:{}", echo.port())],
    );
    r1.wait_endpoint("pi", 7).await;
    let op = ssh_config(&dir.path().join("r2"), &r2, "op", &op_key);
    let (ok, out, err) = ssh_output(&op, &["-W", "pi:7", "relay"], b"through r1").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"through r1");
    // A stream running through the link when the partition comes.
    let mut running = tokio::process::Command::from(ssh(&op, &["-W", "pi:7", "relay"]))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = running.stdin.take().unwrap();
    let mut stdout = running.stdout.take().unwrap();
    stdin.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stdout.read_exact(&mut buf).await.unwrap();

    proxy.hold(true);
    // The stream cut by the partition does not end like a complete one.
    let status = tokio::time::timeout(WAIT, running.wait())
        .await
        .expect("the stream across the partition ended")
        .unwrap();
    let mut said = String::new();
    running
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(255), "{said}");
    assert!(said.contains("link to relay r1"), "{said}");
    // Opens across the partition fail with the reason, long before any open timeout (15 s):
    // the first once the link is known down, the next at once.
    for _ in 0..2 {
        let (ok, _, err) =
            ssh_output_within(&op, &["-W", "pi:7", "relay"], b"", Duration::from_secs(6)).await;
        assert!(!ok);
        assert!(
            err.contains("link to relay r1") && err.contains("retried in the background"),
            "{err}"
        );
    }
    // The partition heals: the link comes back by itself and streams go through again.
    proxy.hold(false);
    eventually_async("streams through r1 again", || {
        let op = op.clone();
        async move {
            let (ok, out, _) = ssh_output(&op, &["-W", "pi:7", "relay"], b"healed").await;
            (ok && out == b"healed").then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_database_outage_streams_go_to_the_last_known_holder() {
    let dir = tempdir();
    let mut pg = TestPostgres::start().await;
    let r1 = cluster_relay(dir.path(), &pg, "r1").await;
    let r2 = cluster_relay(dir.path(), &pg, "r2").await;
    let (dev_key, op_key) = register(&r1, dir.path()).await;
    let echo = echo_server().await;
    let _device = stock_device(
        &ssh_config(&dir.path().join("r1"), &r1, "pi", &dev_key),
        &["-R", &format!("7:localhost:{}", echo.port())],
    );
    r1.wait_endpoint("pi", 7).await;
    // Each relay's copy of the registry as its minutely refresh would take it now.
    for r in [&r1, &r2] {
        r.relay.db().refresh_snapshot().await.unwrap();
    }
    pg.stop();
    let op = ssh_config(&dir.path().join("r2"), &r2, "op", &op_key);
    let (ok, out, err) = ssh_output(&op, &["-W", "pi:7", "relay"], b"during the outage").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"during the outage");
    // A listing says its holders are the copy's, not the truth of now.
    eventually_async("ls to say it lists from the copy", || {
        let op = op.clone();
        async move {
            let (ok, out, err) = ssh_output(&op, &["relay", "ls"], b"").await;
            (ok && String::from_utf8_lossy(&out).contains("r1")
                && err.contains("copy of the registry"))
            .then_some(())
        }
    })
    .await;
    pg.resume().await;
    // The audit (queued on r2's disk during the outage) says how the stream was routed.
    let db = burrow_relay::store::Db::postgres(&pg.url, "check")
        .await
        .unwrap();
    eventually_async("r2's stream row in PostgreSQL", || {
        let db = db.clone();
        async move {
            let rows = db.audit_tail(200).await.ok()?;
            rows.into_iter().find(|r| {
                r.event == "stream"
                    && r.outcome == "ok"
                    && r.detail.contains("via relay r1")
                    && r.detail.contains("routed from the registry copy")
            })
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_lost_behind_another_relay_ends_the_download_with_the_reason() {
    let dir = tempdir();
    let pg = TestPostgres::start().await;
    let r1 = cluster_relay(dir.path(), &pg, "r1").await;
    let r2 = cluster_relay(dir.path(), &pg, "r2").await;
    let (dev_key, op_key) = register(&r1, dir.path()).await;
    let source = firehose(1 << 40).await;
    let agent = agent_process(dir.path(), &r1, "pi", &dev_key, &[(80, source)]);
    r1.wait_endpoint("pi", 80).await;
    let op = ssh_config(&dir.path().join("r2"), &r2, "op", &op_key);
    let mut download = tokio::process::Command::from(ssh(&op, &["-W", "pi:80", "relay"]))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = download.stdout.take().unwrap();
    let mut buf = vec![0u8; 4 << 20];
    out.read_exact(&mut buf).await.unwrap();
    drop(agent); // SIGKILL, behind r1
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink).await;
    });
    let status = tokio::time::timeout(WAIT, download.wait())
        .await
        .expect("the download ended")
        .unwrap();
    let mut said = String::new();
    download
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .await
        .unwrap();
    assert_eq!(
        status.code(),
        Some(255),
        "a cut download looked complete: {said}"
    );
    assert!(
        said.contains("at relay r1: the device's connection was lost"),
        "{said}"
    );
}
