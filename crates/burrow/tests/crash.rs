//! The relay killed with SIGKILL: what was running is in the audit, and says it was interrupted.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn burrow(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_burrow"));
    c.arg("relay").arg("--data-dir").arg(data).args(args);
    c.env("BURROW_LOG", "info");
    c
}

fn audit(data: &Path) -> Vec<serde_json::Value> {
    let out = burrow(data, &["audit", "--limit", "200", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

fn ssh_config_for(
    dir: &Path,
    data: &Path,
    port: u16,
    user: &str,
    key: &Path,
) -> std::path::PathBuf {
    let kh = dir.join(format!("known_hosts_{port}"));
    let out = burrow(
        data,
        &["fingerprint", "--known-hosts", &format!("127.0.0.1:{port}")],
    )
    .output()
    .unwrap();
    std::fs::write(&kh, &out.stdout).unwrap();
    let path = dir.join(format!("ssh_config_{user}_{port}"));
    std::fs::write(
        &path,
        format!(
            "Host relay\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {}\n  \
             UserKnownHostsFile {}\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n",
            key.display(),
            kh.display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_stream_leaves_an_audit_that_says_interrupted() {
    let dir = tempdir();
    let data = dir.path().join("relay");
    assert!(burrow(&data, &["init"]).output().unwrap().status.success());
    let dev_key = keypair(dir.path(), "dev");
    let op_key = keypair(dir.path(), "op");
    for (kind, name, key) in [("device", "pi", &dev_key), ("operator", "alice", &op_key)] {
        let pubkey = format!("{}.pub", key.display());
        let out = burrow(&data, &[kind, "add", name, "--pubkey", &pubkey])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (relay, port, _) = relay_process(&data, &[]);
    let service = echo_server().await;
    let dev_cfg = ssh_config_for(dir.path(), &data, port, "pi", &dev_key);
    let _device = stock_device(
        &dev_cfg,
        &["-R", &format!("22:localhost:{}", service.port())],
    );
    eventually("the device's endpoint", || {
        let out = burrow(&data, &["device", "ls", "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v[0]["endpoints"] == serde_json::json!([22])).then_some(())
    })
    .await;
    let op_cfg = ssh_config_for(dir.path(), &data, port, "alice", &op_key);
    let (mut operator, _stdin) = open_echo_stream(&op_cfg).await;

    // The stream is in the audit while it runs.
    let rows = audit(&data);
    assert!(
        rows.iter()
            .any(|r| r["event"] == "stream" && r["outcome"] == "open" && r["who"] == "alice"),
        "{rows:#?}"
    );
    drop(relay); // SIGKILL
    let _ = tokio::time::timeout(WAIT, operator.wait()).await;

    // The next start marks what the crash left open as interrupted: never "ok".
    let _relay = relay_process(&data, &[]);
    let rows = audit(&data);
    let stream = rows
        .iter()
        .find(|r| r["event"] == "stream" && r["who"] == "alice")
        .expect("the stream's row");
    assert_eq!(stream["outcome"], "interrupted", "{stream:#?}");
    assert!(
        stream["detail"].as_str().unwrap().contains("relay stopped"),
        "{stream:#?}"
    );
    assert!(
        rows.iter()
            .any(|r| r["event"] == "offline" && r["who"] == "pi" && r["outcome"] == "interrupted"),
        "{rows:#?}"
    );
    let out = burrow(&data, &["device", "ls", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["online"], false, "{v}");
}

/// The relay killed with SIGKILL in the middle of a download and of a console session: the
/// next start ends every open row with what the last checkpoint knew (bytes, duration, last
/// activity), gives the console attach its end row, and puts the device's offline row at the
/// last time the relay was known alive, not at its last audit entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_download_and_mid_console_loses_at_most_a_checkpoint() {
    use tokio::io::AsyncReadExt;
    let dir = tempdir();
    let data = dir.path().join("relay");
    assert!(burrow(&data, &["init"]).output().unwrap().status.success());
    let dev_key = keypair(dir.path(), "dev");
    let op_key = keypair(dir.path(), "op");
    for (kind, name, key) in [("device", "pi", &dev_key), ("operator", "alice", &op_key)] {
        let pubkey = format!("{}.pub", key.display());
        let out = burrow(&data, &[kind, "add", name, "--pubkey", &pubkey])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let (relay, port, _) = relay_process(&data, &[]);
    let fingerprint = String::from_utf8(burrow(&data, &["fingerprint"]).output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let router = FakeRouter::start(&dir.path().join("ttyUSB0"));
    let source = firehose(1 << 40).await;
    let mut config = agent_config(&format!("127.0.0.1:{port}"), "pi", &dev_key, &fingerprint);
    expose(&mut config, 80, source);
    config
        .console
        .push(burrow_proto::agent_config::Console::new(
            "console",
            router.path.clone(),
            9600,
        ));
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    let op_cfg = ssh_config_for(dir.path(), &data, port, "alice", &op_key);
    // A download that keeps going, and a console session.
    let mut download = tokio::process::Command::from({
        let mut c = std::process::Command::new("ssh");
        c.arg("-F").arg(&op_cfg).args(["-W", "pi:80", "relay"]);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        c
    });
    let mut download = download.kill_on_drop(true).spawn().unwrap();
    let mut out = download.stdout.take().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n) = out.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let console = Terminal::spawn(&op_cfg, &["-l", "alice:pi", "relay"]);
    console.expect("read-write").await;
    // Until the download's row has been checkpointed a few seconds after everything else
    // happened: the relay's last audit entry is then well before its last sign of life.
    let seconds_so_far = |rows: &[serde_json::Value]| {
        rows.iter()
            .find(|r| r["event"] == "stream" && r["outcome"] == "open")
            .and_then(|r| {
                let d = r["detail"].as_str()?;
                d.split(" s so far")
                    .next()?
                    .rsplit(", ")
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
    };
    eventually_async("the download's row to be checkpointed for 6 s", || {
        let data = data.clone();
        async move {
            seconds_so_far(&audit(&data))
                .filter(|s| *s >= 6.0)
                .map(|_| ())
        }
    })
    .await;
    let killed_at = burrow_relay::store::now();
    drop(relay); // SIGKILL
    let _ = download.kill().await;
    drop(console);

    let _relay = relay_process(&data, &[]);
    let rows = audit(&data);
    let stream = rows
        .iter()
        .find(|r| r["event"] == "stream" && r["who"] == "alice")
        .expect("the stream's row");
    assert_eq!(stream["outcome"], "interrupted", "{stream:#?}");
    let detail = stream["detail"].as_str().unwrap();
    let from_device: u64 = detail
        .split(" bytes from device")
        .next()
        .and_then(|d| d.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count: {detail}"));
    assert!(from_device > 1 << 20, "{detail}");
    for needed in [
        "s so far",
        "last activity",
        "relay stopped",
        "last known alive",
    ] {
        assert!(detail.contains(needed), "{needed:?} missing: {detail}");
    }
    let attach = rows
        .iter()
        .find(|r| r["event"] == "console-attach" && r["who"] == "alice")
        .expect("the console attach row");
    assert_eq!(attach["outcome"], "interrupted", "{attach:#?}");
    assert!(
        rows.iter().any(|r| r["event"] == "console-detach"
            && r["who"] == "alice"
            && r["outcome"] == "interrupted"),
        "the console attach has no end row: {rows:#?}"
    );
    let offline = rows
        .iter()
        .find(|r| r["event"] == "offline" && r["who"] == "pi" && r["outcome"] == "interrupted")
        .expect("the device's offline row");
    let at = offline["at"].as_i64().unwrap();
    assert!(
        at >= killed_at - 3 && at <= killed_at,
        "the offline row at {at} is not bounded by the last checkpoint before {killed_at}: {offline:#?}"
    );
    agent.stop().await;
}
