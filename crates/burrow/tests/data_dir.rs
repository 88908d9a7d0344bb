//! One relay per data directory, and commands on a cluster relay's directory.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn burrow(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_burrow"));
    c.arg("relay").args(args).arg("--data-dir").arg(data);
    c.env("BURROW_LOG", "info")
        .env_remove("BURROW_DATABASE_URL");
    c
}

fn run(mut c: Command) -> (bool, String, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn audit(data: &Path) -> Vec<serde_json::Value> {
    let (ok, out, err) = run(burrow(data, &["audit", "--limit", "200", "--json"]));
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_on_a_data_directory_in_use_exits_before_touching_it() {
    let dir = tempdir();
    let data = dir.path().join("relay");
    assert!(run(burrow(&data, &["init"])).0);
    let dev_key = keypair(dir.path(), "dev");
    let op_key = keypair(dir.path(), "op");
    for (kind, name, key) in [("device", "pi", &dev_key), ("operator", "alice", &op_key)] {
        let pubkey = format!("{}.pub", key.display());
        let (ok, _, err) = run(burrow(&data, &[kind, "add", name, "--pubkey", &pubkey]));
        assert!(ok, "{err}");
    }
    let (first, port, _) = relay_process(&data, &[]);
    // A device online and an operator's stream open on the running relay.
    let kh = dir.path().join("known_hosts");
    let (ok, line, err) = run(burrow(
        &data,
        &["fingerprint", "--known-hosts", &format!("127.0.0.1:{port}")],
    ));
    assert!(ok, "{err}");
    std::fs::write(&kh, line).unwrap();
    let config = |user: &str, key: &Path| {
        let path = dir.path().join(format!("ssh_config_{user}"));
        std::fs::write(
            &path,
            format!(
                "Host relay\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {}\n  \
                 UserKnownHostsFile {}\n  IdentitiesOnly yes\n  BatchMode yes\n",
                key.display(),
                kh.display()
            ),
        )
        .unwrap();
        path
    };
    let service = echo_server().await;
    let _device = stock_device(
        &config("pi", &dev_key),
        &["-R", &format!("22:localhost:{}", service.port())],
    );
    eventually("the device's endpoint", || {
        let (_, out, _) = run(burrow(&data, &["device", "ls", "--json"]));
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (v[0]["endpoints"] == serde_json::json!([22])).then_some(())
    })
    .await;
    let (_operator, _stdin) = open_echo_stream(&config("alice", &op_key)).await;
    let before = audit(&data);

    // Started again by mistake: beside it on another port, and on the same port.
    for listen in ["127.0.0.1:0".to_string(), format!("127.0.0.1:{port}")] {
        let mut second = tokio::process::Command::from(burrow(&data, &["--listen", &listen]));
        second.kill_on_drop(true);
        let out = tokio::time::timeout(WAIT, second.output())
            .await
            .unwrap_or_else(|_| panic!("a second relay runs on {}", data.display()))
            .unwrap();
        let (ok, err) = (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        assert!(!ok, "a second relay ran on {}", data.display());
        assert!(err.contains(&data.display().to_string()), "{err}");
        assert!(
            err.contains(&format!("PID {}", first.0.id())),
            "the PID holding it is not named: {err}"
        );
        assert!(!err.contains("Address already in use"), "{err}");
    }
    // Nothing of the running relay's state was touched.
    let after = audit(&data);
    assert_eq!(before, after, "the second start wrote to the audit");
    assert!(
        after
            .iter()
            .any(|r| r["event"] == "stream" && r["outcome"] == "open"),
        "{after:#?}"
    );
    let (_, out, _) = run(burrow(&data, &["device", "ls", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["online"], true, "{v}");
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_on_a_cluster_relays_directory_work_or_say_to_pass_the_database() {
    let pg = TestPostgres::start().await;
    // The test server trusts everyone; the password is there to be kept out of files and
    // messages.
    let url = pg.url.replace("burrow@", "burrow:s3cret@");
    let dir = tempdir();
    let data = dir.path().join("r1");
    let (ok, out, err) = run(burrow(
        &data,
        &["init", "--database", &url, "--relay-id", "r1"],
    ));
    assert!(ok, "{err}");
    assert!(out.contains("PostgreSQL"), "{out}");
    assert!(
        !data.join("burrow.db").exists(),
        "init --database made an SQLite registry nobody uses"
    );
    let mark = std::fs::read_to_string(data.join("cluster")).unwrap();
    assert!(!mark.contains("s3cret"), "{mark}");
    // What needs no registry works on the directory as it is.
    let (ok, out, err) = run(burrow(&data, &["fingerprint"]));
    assert!(ok && out.starts_with("SHA256:"), "{out}{err}");
    let (ok, _, err) = run(burrow(&data, &["recordings", "ls"]));
    assert!(ok, "{err}");
    // The registry commands say at once where the registry is.
    for args in [
        &["device", "ls"][..],
        &["operator", "ls"],
        &["audit"],
        &["migrate", "--to", &url],
    ] {
        let (ok, _, err) = run(burrow(&data, args));
        assert!(!ok, "{args:?} ran on a cluster relay's directory");
        assert!(
            err.contains("belongs to relay r1 of a cluster") && err.contains("--database"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("s3cret"), "the password-free URL only: {err}");
    }
    let (ok, out, err) = run(burrow(&data, &["--database", &url, "device", "ls"]));
    assert!(ok, "{err}");
    assert!(out.contains("DEVICE"), "{out}");
    // A relay started on it without the database would serve an empty registry of its own.
    let (ok, _, err) = run(burrow(&data, &["--listen", "127.0.0.1:0"]));
    assert!(!ok);
    assert!(err.contains("--database"), "{err}");
    assert!(!data.join("burrow.db").exists());
}
