//! A full disk degrades the relay, it does not stop it: on a small tmpfs of its own, filled.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burrow_proto::agent_config::Console;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tmpfs of `size` mounted on a directory of its own (the tests run as root), unmounted
/// when dropped.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempdir();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot mount a tmpfs: run the tests as root (./test.sh does)"
        );
        SmallDisk { path, _dir: dir }
    }

    /// Writes a file until the disk is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path.join("fill")).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        while f.write_all(&chunk).is_ok() {}
        // The last few bytes too.
        while f.write_all(&[0u8; 64]).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.path.join("fill")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn burrow(data: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("relay")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn audit(data: &Path) -> Vec<serde_json::Value> {
    let (ok, out, err) = burrow(data, &["audit", "--limit", "500", "--json"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

async fn metrics(port: u16) -> String {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    tcp.read_to_string(&mut page).await.unwrap();
    page
}

fn says(log: &std::sync::Mutex<Vec<String>>, needle: &str) -> bool {
    log.lock().unwrap().iter().any(|l| l.contains(needle))
}

/// Every recording is whole: none empty, every line JSON.
fn recordings_are_whole(data: &Path) -> usize {
    let mut n = 0;
    let root = data.join("recordings");
    for dev in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(dev.path()).unwrap().flatten() {
            let text = std::fs::read_to_string(file.path()).unwrap();
            assert!(
                !text.is_empty(),
                "an empty recording was left: {}",
                file.path().display()
            );
            for line in text.lines() {
                assert!(
                    serde_json::from_str::<serde_json::Value>(line).is_ok(),
                    "a cut line in {}: {line:?}",
                    file.path().display()
                );
            }
            assert!(
                text.ends_with('\n'),
                "a cut last line in {}",
                file.path().display()
            );
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_degrades_the_relay_and_loses_nothing_it_could_keep() {
    let disk = SmallDisk::mount("3m");
    let dir = tempdir();
    let data = disk.path.join("relay");
    assert!(burrow(&data, &["init"]).0);
    let dev_key = keypair(dir.path(), "dev");
    let op_key = keypair(dir.path(), "op");
    for (kind, name, key) in [("device", "pi", &dev_key), ("operator", "alice", &op_key)] {
        let pubkey = format!("{}.pub", key.display());
        let (ok, _, err) = burrow(&data, &[kind, "add", name, "--pubkey", &pubkey]);
        assert!(ok, "{err}");
    }
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let (relay, port, log) = relay_process(&data, &["--metrics", &metrics_addr]);
    let (_, fingerprint, _) = burrow(&data, &["fingerprint"]);
    let router = FakeRouter::start(&dir.path().join("ttyUSB0"));
    let echo = echo_server().await;
    let mut config = agent_config(
        &format!("127.0.0.1:{port}"),
        "pi",
        &dev_key,
        fingerprint.trim(),
    );
    expose(&mut config, 7, echo);
    config
        .console
        .push(Console::new("console", router.path.clone(), 9600));
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    let op_cfg = {
        let kh = dir.path().join("known_hosts");
        let (_, line, _) = burrow(
            &data,
            &["fingerprint", "--known-hosts", &format!("127.0.0.1:{port}")],
        );
        std::fs::write(&kh, line).unwrap();
        let path = dir.path().join("ssh_config");
        std::fs::write(
            &path,
            format!(
                "Host relay\n  HostName 127.0.0.1\n  Port {port}\n  User alice\n  IdentityFile {}\n  \
                 UserKnownHostsFile {}\n  IdentitiesOnly yes\n  BatchMode yes\n",
                op_key.display(),
                kh.display()
            ),
        )
        .unwrap();
        path
    };
    // A console recorded from before the disk fills.
    let mut console = Terminal::spawn(&op_cfg, &["-l", "alice:pi", "relay"]);
    console.expect("read-write").await;

    disk.fill();
    // The recording meets the full disk mid-way.
    router.print_all(&vec![b'x'; 256 * 1024]);
    console.send(b"\x05c.").await;
    console.expect("disconnected").await;
    // The relay serves on: a stream works and is audited in memory.
    let (ok, out, err) = ssh_output(&op_cfg, &["-W", "pi:7", "relay"], b"while full").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"while full");
    // A console opened now cannot be recorded: no empty recording is left behind.
    let mut console = Terminal::spawn(&op_cfg, &["-l", "alice:pi", "relay"]);
    console.expect("read-write").await;
    console.send(b"\x05c.").await;
    console.expect("disconnected").await;
    eventually("the log to say the relay runs degraded and why", || {
        (says(&log, "running degraded") && says(&log, "disk is full")).then_some(())
    })
    .await;
    let page = metrics(metrics_port).await;
    assert!(page.contains("\nburrow_degraded 1\n"), "{page}");
    assert!(page.contains("\nburrow_disk_full 1\n"), "{page}");
    recordings_are_whole(&data);

    // Space returns: what was held is written, in order.
    disk.free();
    let rows = eventually_async("the held rows in the audit", || {
        let data = data.clone();
        async move {
            let rows = audit(&data);
            rows.iter()
                .any(|r| {
                    r["event"] == "stream"
                        && r["who"] == "alice"
                        && r["outcome"] == "ok"
                        && r["detail"]
                            .as_str()
                            .is_some_and(|d| d.contains("10 bytes to device"))
                })
                .then_some(rows)
        }
    })
    .await;
    let at: Vec<i64> = rows.iter().map(|r| r["at"].as_i64().unwrap()).collect();
    assert!(
        at.windows(2).all(|w| w[0] <= w[1]),
        "written out of order: {rows:#?}"
    );
    assert!(
        rows.iter()
            .any(|r| r["event"] == "console-recording" && r["outcome"] == "failed"),
        "{rows:#?}"
    );
    eventually("the log to say the disk takes writes again", || {
        says(&log, "takes writes again").then_some(())
    })
    .await;
    let page = metrics(metrics_port).await;
    assert!(page.contains("\nburrow_degraded 0\n"), "{page}");
    let recorded = recordings_are_whole(&data);
    assert!(recorded >= 1, "the first console was not recorded");

    // Full again, the relay stopped cleanly and started again while full: it serves.
    disk.fill();
    let relay = restart(relay, &data, port, &metrics_addr).await;
    let (relay, log) = relay;
    serves(&agent, &op_cfg, b"after a restart on a full disk", 1).await;
    assert!(says(&log, "running degraded"));
    disk.free();
    audited(&data, "30 bytes to device").await;
    // Stopped while there is room (its database closed and tidied), the disk filled while it
    // was down (a reboot): it starts and serves too.
    let (relay, _) = stop(relay);
    // The last connection to close tidies the database (its -wal and -shm files go), which a
    // relay process that exits may leave to the next one: one opened and closed here.
    drop(burrow_relay::store::Store::open(&data.join("burrow.db")).unwrap());
    assert!(!data.join("burrow.db-shm").exists());
    disk.fill();
    let (_relay, log) = start(&data, port, &metrics_addr);
    assert!(says(&log, "released"), "{:?}", log.lock().unwrap());
    serves(&agent, &op_cfg, b"after a start on a full disk", 2).await;
    disk.free();
    audited(&data, "28 bytes to device").await;
    let _ = relay;
    recordings_are_whole(&data);
    agent.stop().await;
}

type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// SIGTERM, and waits for the relay to exit.
fn stop(mut relay: KillOnDrop) -> (KillOnDrop, ()) {
    let pid = relay.0.id();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let _ = relay.0.wait();
    (relay, ())
}

fn start(data: &Path, port: u16, metrics: &str) -> (KillOnDrop, Log) {
    let (relay, bound, log) = relay_process(
        data,
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics",
            metrics,
        ],
    );
    assert_eq!(bound, port);
    (relay, log)
}

async fn restart(relay: KillOnDrop, data: &Path, port: u16, metrics: &str) -> (KillOnDrop, Log) {
    let (_old, ()) = stop(relay);
    start(data, port, metrics)
}

/// The agent is back (its `reconnects`-th reconnect) and a stream through it works.
async fn serves(agent: &TestAgent, op_cfg: &Path, payload: &[u8], reconnects: u64) {
    eventually("the agent back on the restarted relay", || {
        agent
            .status()
            .filter(|s| s.reconnects >= reconnects && s.state == burrow_agent::status::State::Up)
    })
    .await;
    let (ok, out, err) = ssh_output(op_cfg, &["-W", "pi:7", "relay"], payload).await;
    assert!(ok, "the relay does not serve: {err}");
    assert_eq!(out, payload);
}

/// Waits for a stream row whose detail says `what`.
async fn audited(data: &Path, what: &str) {
    let what = what.to_string();
    eventually_async(&format!("a stream row with {what:?} in the audit"), || {
        let data = data.to_path_buf();
        let what = what.clone();
        async move {
            audit(&data)
                .iter()
                .any(|r| {
                    r["event"] == "stream"
                        && r["detail"].as_str().is_some_and(|d| d.contains(&what))
                })
                .then_some(())
        }
    })
    .await;
}
