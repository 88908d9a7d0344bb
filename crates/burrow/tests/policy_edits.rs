//! Policy edits with the CLI while the relay runs: they reach sessions already open.

mod common;

use common::*;

/// Waits for `child` to end; fails the test if the relay left it running.
async fn ended(child: &mut tokio::process::Child, what: &str) {
    tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what}: the stream stayed open"))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_rm_and_policy_change_cut_open_streams() {
    let site = relay_with_echo_device("alice").await;
    let (relay, alice) = (&site.relay, &site.operator);

    // Patterns change so that pi is no longer allowed: the open stream is closed.
    let (mut stream, _stdin) = open_echo_stream(alice).await;
    let (ok, out, err) = relay.cli(&["operator", "set", "alice", "--allow", "site-*"]);
    assert!(ok, "{err}");
    assert!(out.contains("site-*"), "{out}");
    ended(&mut stream, "after --allow changed").await;
    let (ok, _, err) = ssh_output(alice, &["-W", "pi:22", "relay"], b"x").await;
    assert!(!ok);
    assert!(err.contains("may not reach device pi"), "{err}");

    // Console-only closes port streams too; --full and '*' give them back.
    let (ok, _, err) = relay.cli(&["operator", "set", "alice", "--allow", "*"]);
    assert!(ok, "{err}");
    let (mut stream, _stdin) = open_echo_stream(alice).await;
    let (ok, _, err) = relay.cli(&["operator", "set", "alice", "--console-only"]);
    assert!(ok, "{err}");
    ended(&mut stream, "after --console-only").await;
    let (ok, _, err) = relay.cli(&["operator", "set", "alice", "--full"]);
    assert!(ok, "{err}");

    // Removal cuts the whole connection, and ls does not answer from a stale record.
    let (mut stream, _stdin) = open_echo_stream(alice).await;
    let (ok, _, err) = relay.cli(&["operator", "rm", "alice"]);
    assert!(ok, "{err}");
    ended(&mut stream, "after operator rm").await;
    let audit = relay.audit_now(100).await;
    let revokes: Vec<_> = audit.iter().filter(|r| r.event == "revoke").collect();
    assert!(
        revokes
            .iter()
            .any(|r| r.detail.contains("no longer allows device pi")),
        "{revokes:#?}"
    );
    assert!(
        revokes
            .iter()
            .any(|r| r.detail.contains("operator was removed")),
        "{revokes:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_key_and_rules_can_be_removed_one_by_one() {
    let (dir, relay, dev_key, _op_key) = relay_with("pi", "alice").await;
    let spare = keypair(dir.path(), "spare");
    let spare_pub = format!("{}.pub", spare.display());
    let (ok, _, err) = relay.cli(&["device", "add-key", "pi", "--pubkey", &spare_pub]);
    assert!(ok, "{err}");
    let dev_fp = burrow_io::keys::fingerprint(&public_key(&dev_key));
    let spare_fp = burrow_io::keys::fingerprint(&public_key(&spare));

    // The device is online with its first key; removing that key cuts the session.
    let service = echo_server().await;
    let dev_cfg = ssh_config(dir.path(), &relay, "pi", &dev_key);
    let _device = stock_device(
        &dev_cfg,
        &["-R", &format!("22:localhost:{}", service.port())],
    );
    relay.wait_endpoint("pi", 22).await;
    let (ok, out, err) = relay.cli(&["device", "rm-key", "pi", &dev_fp]);
    assert!(ok, "{err}");
    assert!(out.contains(&dev_fp), "{out}");
    eventually("the session of the removed key to be cut", || {
        relay.relay.online_endpoints("pi").is_none().then_some(())
    })
    .await;
    // The last key stays: removing it would leave a device nobody can log in as.
    let (ok, _, err) = relay.cli(&["device", "rm-key", "pi", &spare_fp]);
    assert!(!ok);
    assert!(err.contains("only key"), "{err}");

    // Rules: add, remove, and removing one that is not there says so.
    let (ok, _, err) = relay.cli(&["device", "allow-connect", "pi", "localhost:1883"]);
    assert!(ok, "{err}");
    let (ok, _, err) = relay.cli(&["device", "disallow-connect", "pi", "localhost:1883"]);
    assert!(ok, "{err}");
    assert!(
        !relay
            .relay
            .store()
            .may_connect("pi", "localhost", 1883)
            .unwrap()
    );
    let (ok, _, err) = relay.cli(&["device", "disallow-connect", "pi", "localhost:1883"]);
    assert!(!ok);
    assert!(err.contains("no allow-connect rule"), "{err}");

    // A real listener granted by allow-listen closes when its rule is removed.
    let port = free_port();
    let (ok, _, err) = relay.cli(&["device", "allow-listen", "pi", &port.to_string()]);
    assert!(ok, "{err}");
    let spare_cfg = ssh_config(dir.path(), &relay, "pi", &spare);
    let _device2 = stock_device(
        &spare_cfg,
        &["-R", &format!("{port}:localhost:{}", service.port())],
    );
    relay.wait_endpoint("pi", port).await;
    assert_eq!(
        roundtrip(&format!("127.0.0.1:{port}"), b"hi")
            .await
            .unwrap(),
        b"hi"
    );
    let (ok, _, err) = relay.cli(&["device", "disallow-listen", "pi", &port.to_string()]);
    assert!(ok, "{err}");
    eventually("the listener to close", || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_err()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_password_set_and_clear() {
    let (dir, relay, _dev_key, _op_key) = relay_with("pi", "alice").await;
    // alice has a key: a password can be added and removed.
    let out = {
        use std::io::Write;
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
            .args([
                "relay",
                "operator",
                "password",
                "alice",
                "--password-stdin",
                "--data-dir",
            ])
            .arg(&relay.data_dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(b"new pass\n").unwrap();
        c.wait_with_output().unwrap()
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = password_login(
        &relay,
        dir.path(),
        &["new pass"],
        &["alice@127.0.0.1", "ls"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, _, err) = relay.cli(&["operator", "password", "alice", "--clear"]);
    assert!(ok, "{err}");
    let out = password_login(
        &relay,
        dir.path(),
        &["new pass"],
        &["alice@127.0.0.1", "ls"],
    )
    .await;
    assert!(!out.status.success());
    // A password-only operator cannot lose its last credential.
    let hash = burrow_relay::admin::hash_password("pw").unwrap();
    relay
        .relay
        .store()
        .add_operator("bob", &[], Some(&hash), &["*".to_string()], false)
        .unwrap();
    let (ok, _, err) = relay.cli(&["operator", "password", "bob", "--clear"]);
    assert!(!ok);
    assert!(err.contains("lock it out"), "{err}");
    // With a key added, bob may drop the password and log in by key.
    let bob_key = keypair(dir.path(), "bob");
    let bob_pub = format!("{}.pub", bob_key.display());
    let (ok, _, err) = relay.cli(&["operator", "add-key", "bob", "--pubkey", &bob_pub]);
    assert!(ok, "{err}");
    let (ok, _, err) = relay.cli(&["operator", "password", "bob", "--clear"]);
    assert!(ok, "{err}");
    let bob = ssh_config(dir.path(), &relay, "bob", &bob_key);
    let (ok, out, err) = ssh_output(&bob, &["relay", "ls"], b"").await;
    assert!(ok, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("DEVICE"));
}
