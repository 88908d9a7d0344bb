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
