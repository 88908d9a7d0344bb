//! `burrow relay backup FILE` while a relay process writes (logins audited, devices added by
//! other processes), and `burrow relay restore FILE` bringing a stopped relay back to one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;

fn burrow(data: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("relay")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// An ssh_config for operator `user` of the relay process on `port`.
fn operator_config(dir: &Path, data: &Path, port: u16, user: &str, key: &Path) -> PathBuf {
    let (ok, line, err) = burrow(
        data,
        &["fingerprint", "--known-hosts", &format!("127.0.0.1:{port}")],
    );
    assert!(ok, "{err}");
    let kh = dir.join(format!("known_hosts_{port}"));
    std::fs::write(&kh, line).unwrap();
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

/// What a backup holds, read on its own: (devices, devices with no key, audit entries, highest
/// audit id, integrity).
fn contents(path: &Path) -> (i64, i64, i64, i64, String) {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let one = |q: &str| c.query_row(q, [], |r| r.get::<_, i64>(0)).unwrap();
    (
        one("SELECT COUNT(*) FROM devices"),
        one("SELECT COUNT(*) FROM devices WHERE name NOT IN (SELECT device FROM device_keys)"),
        one("SELECT COUNT(*) FROM audit"),
        one("SELECT COALESCE(MAX(id), 0) FROM audit"),
        c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_the_relay_writes_is_whole_and_restores() {
    let dir = tempdir();
    let data = dir.path().join("relay");
    let (ok, _, err) = burrow(&data, &["init"]);
    assert!(ok, "{err}");
    let alice = keypair(dir.path(), "alice");
    let (ok, _, err) = burrow(
        &data,
        &[
            "operator",
            "add",
            "alice",
            "--pubkey",
            &format!("{}.pub", alice.display()),
        ],
    );
    assert!(ok, "{err}");
    let (relay, port, _log) = relay_process(&data, &[]);
    let config = operator_config(dir.path(), &data, port, "alice", &alice);

    // Writers: logins (audited by the relay) and device registrations (each a device and its
    // key in one transaction, from another process), until the backups are taken.
    let stop = Arc::new(AtomicBool::new(false));
    let logins = Arc::new(AtomicUsize::new(0));
    let login_task = {
        let (stop, logins, config) = (stop.clone(), logins.clone(), config.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (ok, _, err) = ssh_output(&config, &["relay", "ls"], b"").await;
                assert!(ok, "{err}");
                logins.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let added = Arc::new(AtomicUsize::new(0));
    let add_thread = {
        let (stop, added, data, keys) = (
            stop.clone(),
            added.clone(),
            data.clone(),
            dir.path().join("keys"),
        );
        std::fs::create_dir(&keys).unwrap();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = keypair(&keys, &format!("dev-{i}"));
                let (ok, _, err) = burrow(
                    &data,
                    &[
                        "device",
                        "add",
                        &format!("dev-{i}"),
                        "--pubkey",
                        &format!("{}.pub", key.display()),
                    ],
                );
                assert!(ok, "{err}");
                added.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    eventually("writes to be under way", || {
        (logins.load(Ordering::Relaxed) >= 2 && added.load(Ordering::Relaxed) >= 2).then_some(())
    })
    .await;
    let mut backups = Vec::new();
    for n in 0..4 {
        let file = dir.path().join(format!("backup-{n}.db"));
        let committed = added.load(Ordering::Relaxed) as i64;
        let (ok, out, err) = burrow(&data, &["backup", file.to_str().unwrap()]);
        assert!(ok, "{err}");
        assert!(
            out.contains("backed up") && out.contains("burrow relay restore"),
            "{out}"
        );
        let (devices, keyless, audit, top, integrity) = contents(&file);
        assert_eq!(integrity, "ok");
        assert_eq!(keyless, 0, "a device without its key: half a transaction");
        assert!(
            devices >= committed,
            "{devices} devices in the backup, {committed} added before it: commits missing"
        );
        assert_eq!(
            audit, top,
            "audit entries missing below the last: not one commit's view"
        );
        assert!(out.contains(&format!("{devices} devices")), "{out}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a backup holds password hashes");
        backups.push((file, devices, audit));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    login_task.await.unwrap();
    add_thread.join().unwrap();
    let (last, devices, audit) = backups.last().cloned().unwrap();
    assert!(devices >= 2 && audit >= 2, "the backups saw the writes");
    assert!(
        backups.windows(2).all(|w| w[0].2 <= w[1].2),
        "later backups have more"
    );
    // No file left half-written, none written over.
    let (ok, _, err) = burrow(&data, &["backup", last.to_str().unwrap()]);
    assert!(!ok && err.contains("exists already"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Restoring needs the relay stopped.
    let (ok, _, err) = burrow(&data, &["restore", last.to_str().unwrap()]);
    assert!(!ok && err.contains("in use by the relay with PID"), "{err}");
    drop(relay);
    let (ok, out, err) = burrow(&data, &["restore", last.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("kept as"), "{out}");
    let (ok, out, err) = burrow(&data, &["device", "ls", "--json"]);
    assert!(ok, "{err}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.len() as i64, devices, "the registry is the backup's");
    // The restored relay serves: alice logs in, and the audit goes on from the backup's.
    let (_relay, port, _log) = relay_process(&data, &[]);
    let config = operator_config(dir.path(), &data, port, "alice", &alice);
    let (ok, _, err) = ssh_output(&config, &["relay", "ls"], b"").await;
    assert!(ok, "{err}");
    let (ok, out, err) = burrow(&data, &["audit", "--json", "--limit", "100000"]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(
        rows.len() as i64 > audit,
        "{} rows after {audit}",
        rows.len()
    );
}

#[test]
fn a_cluster_registry_is_backed_up_with_pg_dump() {
    let dir = tempdir();
    let (ok, _, err) = burrow(
        dir.path(),
        &[
            "--database",
            "postgresql://burrow:secret@db.example/burrow",
            "backup",
            "x.dump",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains(
            "pg_dump --format=custom --file x.dump 'postgresql://burrow@db.example/burrow'"
        ),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
}
