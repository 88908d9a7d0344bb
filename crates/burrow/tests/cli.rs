//! The `burrow` command line: bad input gets a clear message and the right exit code.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

use common::*;

fn burrow(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_burrow"));
    c.args(args).env("BURROW_LOG", "warn").stdin(Stdio::null());
    c
}

/// `burrow agent` with a relay nobody listens on, device pi, `key`, a pin, a status file in
/// `dir`, and `extra` arguments: for checks that fail before any connection.
fn agent_cmd(dir: &std::path::Path, key: &str, extra: &[&str]) -> Command {
    let status = dir.join("s.json");
    let mut args = vec![
        "agent",
        "--relay",
        "127.0.0.1:1",
        "--name",
        "pi",
        "--key",
        key,
        "--host-key",
        "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
        "--status-file",
        status.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    burrow(&args)
}

/// [`run`] for a command that must end by itself: one still running after [`WAIT`] (an agent
/// that accepted what it should have refused) is killed and fails the test.
fn run_bounded(cmd: &mut Command) -> (i32, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {WAIT:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    run_output(child.wait_with_output().unwrap())
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    run_output(cmd.output().unwrap())
}

fn run_output(out: Output) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = out;
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).to_string(),
        String::from_utf8_lossy(&stderr).to_string(),
    )
}

#[test]
fn unknown_config_key_reports_its_line() {
    let dir = tempdir();
    let key = keypair(dir.path(), "dev");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "relay = \"127.0.0.1:1\"\nname = \"pi\"\nkey = \"{}\"\nhost_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\n\n[[expose]]\nport = 22\nremote_prot = 10022\n",
            key.display()
        ),
    )
    .unwrap();
    let (code, _, err) = run(burrow(&["agent", "--config", config.to_str().unwrap()])
        .arg("--status-file")
        .arg(dir.path().join("s.json")));
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("line 8"), "{err}");
    assert!(err.contains("remote_prot"), "{err}");
}

#[test]
fn world_readable_key_is_refused() {
    let dir = tempdir();
    let key = keypair(dir.path(), "dev");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run(&mut agent_cmd(dir.path(), key.to_str().unwrap(), &[]));
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(err.contains("0644"), "{err}");
}

#[test]
fn missing_pin_and_bad_flags_are_usage_errors() {
    let dir = tempdir();
    let key = keypair(dir.path(), "dev");
    let (code, _, err) = run(&mut burrow(&[
        "agent",
        "--relay",
        "r:2222",
        "--name",
        "pi",
        "--key",
        key.to_str().unwrap(),
    ]));
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("burrow relay fingerprint"), "{err}");
    let (code, _, err) = run(&mut burrow(&["agent", "--relay", "r:2222"]));
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--name") && err.contains("--key"), "{err}");
    let (code, _, err) = run(&mut burrow(&["relay", "--bogus"]));
    assert_eq!(code, 64, "{err}");
}

#[test]
fn registry_commands_roundtrip() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let relay_cli = |args: &[&str]| {
        run(&mut burrow(
            &[&["relay", "--data-dir", data], args].concat(),
        ))
    };
    let key = keypair(dir.path(), "dev");
    let pubkey = format!("{}.pub", key.display());
    let (code, out, err) = relay_cli(&["init"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("created") && out.contains("SHA256:"), "{out}");
    let (code, out, err) = relay_cli(&["device", "add", "garage-pi", "--pubkey", &pubkey]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SHA256:"), "{out}");
    let (code, _, err) = relay_cli(&["device", "add", "Bad_Name", "--pubkey", &pubkey]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("invalid device name"), "{err}");
    let (code, _, err) = relay_cli(&["device", "add", "x", "--pubkey", "/nonexistent"]);
    assert_eq!(code, 66, "{err}");
    let garbage = dir.path().join("garbage.pub");
    std::fs::write(&garbage, "ssh-ed25519 not-base64!!\n").unwrap();
    let (code, _, err) = relay_cli(&["device", "add", "x", "--pubkey", garbage.to_str().unwrap()]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("line 1"), "{err}");
    let (code, _, _) = relay_cli(&["device", "allow-connect", "garage-pi", "localhost:1883"]);
    assert_eq!(code, 0);
    let (code, _, err) = relay_cli(&["device", "allow-connect", "garage-pi", "localhost"]);
    assert_eq!(code, 64, "{err}");
    let (code, _, _) = relay_cli(&["device", "allow-listen", "garage-pi", "8080"]);
    assert_eq!(code, 0);

    let mut add_op = burrow(&[
        "relay",
        "--data-dir",
        data,
        "operator",
        "add",
        "alice",
        "--password-stdin",
        "--allow",
        "garage-*",
    ]);
    add_op
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = add_op.spawn().unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    }
    assert!(child.wait().unwrap().success());

    let (code, out, _) = relay_cli(&["device", "ls", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["name"], "garage-pi");
    assert_eq!(v[0]["allow_connect"][0], "localhost:1883");
    assert_eq!(v[0]["allow_listen"][0], "127.0.0.1:8080");
    let (code, out, _) = relay_cli(&["operator", "ls"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("alice") && out.contains("garage-*") && out.contains("yes"),
        "{out}"
    );
    let (code, out, _) = relay_cli(&["fingerprint"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("SHA256:"), "{out}");
    let (code, _, err) = relay_cli(&["operator", "rm", "bob"]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("no operator named"), "{err}");
}

#[test]
fn allow_pattern_that_never_matches_is_refused() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let key = keypair(dir.path(), "op");
    let pubkey = format!("{}.pub", key.display());
    let (code, _, err) = run(&mut burrow(&["relay", "--data-dir", data, "init"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&mut burrow(&[
        "relay",
        "--data-dir",
        data,
        "operator",
        "add",
        "carol",
        "--pubkey",
        &pubkey,
        "--allow",
        "Garage-*",
    ]));
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("Garage-*") && err.contains("a-z, 0-9 and '-'"),
        "{err}"
    );
    let (_, out, _) = run(&mut burrow(&[
        "relay",
        "--data-dir",
        data,
        "operator",
        "ls",
    ]));
    assert!(!out.contains("carol"), "{out}");
}

#[test]
fn demo_check_fails_when_ssh_is_missing() {
    // `demo --check` is a check: without an ssh client it cannot prove anything, so it fails.
    let empty = tempdir();
    let (code, out, err) = run(burrow(&["demo", "--check"]).env("PATH", empty.path()));
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(err.contains("self-check failed"), "{err}");
    assert!(err.contains("cannot run ssh"), "{err}");
}

#[test]
fn mistyped_data_dir_creates_no_relay() {
    let dir = tempdir();
    let typo = dir.path().join("typo");
    let key = keypair(dir.path(), "dev");
    let pubkey = format!("{}.pub", key.display());
    let commands: [&[&str]; 6] = [
        &["device", "add", "pi", "--pubkey", &pubkey],
        &["device", "ls"],
        &["operator", "ls"],
        &["audit"],
        &["fingerprint"],
        &["recordings", "ls"],
    ];
    for args in commands {
        let (code, out, err) = run(&mut burrow(
            &[&["relay", "--data-dir", typo.to_str().unwrap()], args].concat(),
        ));
        assert_eq!(code, 78, "{args:?}: {out}{err}");
        assert!(err.contains("no relay data directory"), "{args:?}: {err}");
        assert!(err.contains("burrow relay init"), "{args:?}: {err}");
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    // An existing directory without a relay in it is refused too, and left as it was.
    std::fs::create_dir(&typo).unwrap();
    let (code, _, err) = run(&mut burrow(&[
        "relay",
        "--data-dir",
        typo.to_str().unwrap(),
        "device",
        "ls",
    ]));
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("has no burrow.db"), "{err}");
    assert_eq!(std::fs::read_dir(&typo).unwrap().count(), 0);
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let dir = tempdir();
    let key = keypair(dir.path(), "dev");
    // An agent that cannot reach its relay logs warnings at once; its stderr is a pipe here.
    let mut child = agent_cmd(dir.path(), key.to_str().unwrap(), &[])
        .env("BURROW_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    use std::io::Read;
    while !String::from_utf8_lossy(&seen).contains("WARN") {
        let n = stderr.read(&mut buf).unwrap();
        assert!(n > 0, "agent exited: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in piped log: {text:?}"
    );
}

/// Reads from a pty master until `needle` shows up; returns everything read.
fn read_until(master: &std::os::fd::OwnedFd, seen: &mut Vec<u8>, needle: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(seen).contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} on the terminal; got {:?}",
            String::from_utf8_lossy(seen)
        );
        match rustix::io::read(master, &mut buf) {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

#[test]
fn password_stdin_on_a_terminal_prompts_twice_without_echo() {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let dir = tempdir();
    let data = dir.path().join("data");
    let (code, _, err) = run(&mut burrow(&[
        "relay",
        "--data-dir",
        data.to_str().unwrap(),
        "init",
    ]));
    assert_eq!(code, 0, "{err}");
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    rustix::fs::fcntl_setfl(&master, rustix::fs::OFlags::NONBLOCK).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let slave_path = ptsname(&master, Vec::new()).unwrap();
    let slave = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(slave_path.to_str().unwrap())
            .unwrap()
    };
    let add = |name: &str, first: &[u8], second: &[u8]| {
        let mut child = burrow(&[
            "relay",
            "--data-dir",
            data.to_str().unwrap(),
            "operator",
            "add",
            name,
            "--password-stdin",
        ])
        .stdin(slave())
        .stderr(slave())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let mut seen = Vec::new();
        read_until(&master, &mut seen, "New password");
        rustix::io::write(&master, first).unwrap();
        read_until(&master, &mut seen, "Retype");
        rustix::io::write(&master, second).unwrap();
        let status = child.wait().unwrap();
        // Drain what is left (the error message, if any).
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut buf = [0u8; 1024];
        while let Ok(n) = rustix::io::read(&master, &mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        (status.success(), String::from_utf8_lossy(&seen).to_string())
    };
    let (ok, screen) = add("alice", b"hunter22\n", b"hunter22\n");
    assert!(ok, "{screen}");
    assert!(
        !screen.contains("hunter22"),
        "the password was echoed: {screen:?}"
    );
    let (ok, screen) = add("bob", b"hunter22\n", b"hunter23\n");
    assert!(!ok, "{screen}");
    assert!(screen.contains("differ"), "{screen}");
    let (_, out, _) = run(&mut burrow(&[
        "relay",
        "--data-dir",
        data.to_str().unwrap(),
        "operator",
        "ls",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(v[0]["has_password"], true);
}

#[test]
fn concurrent_admin_commands_do_not_fail_with_database_locked() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (code, _, err) = run(&mut burrow(&["relay", "--data-dir", data, "init"]));
    assert_eq!(code, 0, "{err}");
    const N: usize = 80;
    // A key of its own for each device: the relay refuses one key for two.
    let pubkeys: Vec<String> = (0..N)
        .map(|i| format!("{}.pub", keypair(dir.path(), &format!("dev-{i}")).display()))
        .collect();
    let children: Vec<_> = (0..N)
        .map(|i| {
            burrow(&[
                "relay",
                "--data-dir",
                data,
                "device",
                "add",
                &format!("dev-{i}"),
                "--pubkey",
                &pubkeys[i],
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every acknowledged add is there.
    let (_, out, _) = run(&mut burrow(&[
        "relay",
        "--data-dir",
        data,
        "device",
        "ls",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), N);
}

#[test]
fn extreme_agent_durations_are_refused_not_panicked_on() {
    let dir = tempdir();
    let key = keypair(dir.path(), "dev");
    for (flag, value) in [
        ("--keepalive-interval", "1e300"),
        ("--probe-interval", "1e30"),
        ("--backoff-max", "1e19"),
        ("--backoff-min", "0.000001"),
    ] {
        let (code, _, err) = run(&mut agent_cmd(
            dir.path(),
            key.to_str().unwrap(),
            &[flag, value],
        ));
        assert_eq!(code, 78, "{flag} {value}: {err}");
        assert!(err.contains(flag) && err.contains("out of range"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn public_key_given_as_agent_key_says_so() {
    let dir = tempdir();
    let key = keypair(dir.path(), "dev");
    let public = format!("{}.pub", key.display());
    let (code, _, err) = run(&mut agent_cmd(dir.path(), &public, &[]));
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("is a public key"), "{err}");
    assert!(err.contains(&key.display().to_string()), "{err}");
    assert!(!err.contains("chmod"), "{err}");
}

#[test]
fn readme_says_how_to_install_before_relay_setup_and_license_matches_cargo() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let install = readme.find("\n## Install").expect("an Install section");
    let relay = readme.find("\n## Relay setup").unwrap();
    assert!(install < relay, "Install must come before Relay setup");
    let section = &readme[install..relay];
    assert!(
        section.contains("cargo install --locked --path crates/burrow"),
        "{section}"
    );
    assert!(section.contains("build-deb.sh"), "{section}");
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(cargo.contains("license = \"Apache-2.0\""), "{cargo}");
    let license = std::fs::read_to_string(root.join("LICENSE")).expect("a LICENSE file");
    assert!(
        license.contains("Apache License") && license.contains("Version 2.0, January 2004"),
        "LICENSE does not match Cargo.toml's Apache-2.0"
    );
}

/// A `BURROW_LOG` filter that cannot be read is reported with what it should look like (it
/// used to be ignored without a word); the form the README gives is read without complaint.
#[test]
fn unreadable_log_filter_is_reported() {
    let dir = tempdir();
    let data = dir.path().join("relay");
    let (code, _, err) = run(
        burrow(&["relay", "init", "--data-dir", data.to_str().unwrap()])
            .env("BURROW_LOG", "info,=["),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("BURROW_LOG=\"info,=[\" is not a log filter"),
        "{err}"
    );
    assert!(err.contains("TARGET=LEVEL"), "{err}");
    let (code, _, err) =
        run(
            burrow(&["relay", "fingerprint", "--data-dir", data.to_str().unwrap()])
                .env("BURROW_LOG", "info,burrow_relay=debug"),
        );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("is not a log filter"), "{err}");
}

/// A database that cannot be reached, or a URL that cannot be read, is named in the error
/// (host, port, database, user; never the password) with what to check.
#[test]
fn unreachable_or_unreadable_database_is_named_without_its_password() {
    let (code, _, err) = run(&mut burrow(&[
        "relay",
        "--database",
        "postgresql://burrow:secretpw@127.0.0.1:1/fleet",
        "device",
        "ls",
    ]));
    assert_ne!(code, 0);
    assert!(
        err.contains("127.0.0.1:1, database fleet, as burrow"),
        "{err}"
    );
    assert!(err.contains("BURROW_DATABASE_URL"), "{err}");
    assert!(!err.contains("secretpw"), "{err}");
    let (code, _, err) = run(&mut burrow(&[
        "relay",
        "--database",
        "postgresql://burrow:secretpw@db:port/fleet",
        "device",
        "ls",
    ]));
    assert_ne!(code, 0);
    assert!(err.contains("the database URL cannot be read"), "{err}");
    assert!(!err.contains("secretpw"), "{err}");
}

#[test]
fn one_key_is_refused_for_a_second_device_or_an_operator_naming_its_holder() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let relay_cli = |args: &[&str]| {
        run(&mut burrow(
            &[&["relay", "--data-dir", data], args].concat(),
        ))
    };
    let dev = format!("{}.pub", keypair(dir.path(), "dev").display());
    let op = format!("{}.pub", keypair(dir.path(), "op").display());
    let (code, _, err) = relay_cli(&["init"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = relay_cli(&["device", "add", "garage-pi", "--pubkey", &dev]);
    assert_eq!(code, 0, "{err}");
    let fingerprint = out.split_whitespace().last().unwrap().to_string();
    assert!(fingerprint.starts_with("SHA256:"), "{out}");

    // The device's key as an operator's (who holds it could reach every device), and as a
    // second device's.
    for args in [
        ["operator", "add", "alice", "--pubkey", &dev],
        ["device", "add", "garage-cam", "--pubkey", &dev],
    ] {
        let (code, _, err) = relay_cli(&args);
        assert_eq!(code, 65, "{args:?}: {err}");
        assert!(
            err.contains(&fingerprint) && err.contains("device \"garage-pi\""),
            "{args:?}: {err}"
        );
        assert!(err.contains("ssh-keygen"), "{err}");
    }
    let (code, _, err) = relay_cli(&["operator", "add", "alice", "--pubkey", &op]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = relay_cli(&["device", "add-key", "garage-pi", "--pubkey", &op]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("operator \"alice\""), "{err}");
    // A device's own key given again changes nothing.
    let (code, _, err) = relay_cli(&["device", "add-key", "garage-pi", "--pubkey", &dev]);
    assert_eq!(code, 0, "{err}");

    // Nothing refused was kept.
    let (_, devices, _) = relay_cli(&["device", "ls", "--json"]);
    let devices: serde_json::Value = serde_json::from_str(&devices).unwrap();
    let names: Vec<_> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["garage-pi"]);
    assert_eq!(devices[0]["fingerprints"], serde_json::json!([fingerprint]));
    let (_, operators, _) = relay_cli(&["operator", "ls", "--json"]);
    let operators: serde_json::Value = serde_json::from_str(&operators).unwrap();
    assert_eq!(operators.as_array().unwrap().len(), 1);
    assert_ne!(
        operators[0]["fingerprints"][0],
        serde_json::json!(fingerprint)
    );
}

#[test]
fn a_truncated_host_key_pin_is_refused_at_start() {
    let dir = tempdir();
    let key = keypair(dir.path(), "dev");
    let status = dir.path().join("s.json");
    // `burrow relay fingerprint` printed 43 base64 characters; the copy lost the last eight.
    let truncated = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJW";
    let (code, _, err) = run_bounded(&mut burrow(&[
        "agent",
        "--relay",
        "127.0.0.1:1",
        "--name",
        "pi",
        "--key",
        key.to_str().unwrap(),
        "--host-key",
        truncated,
        "--status-file",
        status.to_str().unwrap(),
    ]));
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains(truncated) && err.contains("43 base64 characters") && err.contains("has 35"),
        "{err}"
    );
    // Refused before anything ran: no status was written.
    assert!(!status.exists());
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "relay = \"127.0.0.1:1\"\nname = \"pi\"\nkey = \"{}\"\nhost_key = \"{truncated}\"\n",
            key.display()
        ),
    )
    .unwrap();
    let (code, _, err) = run_bounded(
        burrow(&["agent", "--config", config.to_str().unwrap()])
            .arg("--status-file")
            .arg(&status),
    );
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("43 base64 characters"), "{err}");
}

#[test]
fn a_private_key_given_as_pubkey_says_so_and_names_the_pub_file() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let key = keypair(dir.path(), "garage-pi");
    let key = key.to_str().unwrap();
    let (code, _, err) = run(&mut burrow(&["relay", "--data-dir", data, "init"]));
    assert_eq!(code, 0, "{err}");
    for kind in ["device", "operator"] {
        let (code, _, err) = run(&mut burrow(&[
            "relay",
            "--data-dir",
            data,
            kind,
            "add",
            "garage-pi",
            "--pubkey",
            key,
        ]));
        assert_eq!(code, 65, "{err}");
        assert!(
            err.contains(&format!("{key} is a private key")) && err.contains(&format!("{key}.pub")),
            "{err}"
        );
        assert!(!err.contains("Base64"), "{err}");
    }
    let (_, out, _) = run(&mut burrow(&["relay", "--data-dir", data, "device", "ls"]));
    assert!(!out.contains("garage-pi"), "{out}");
}

/// The operator section's first `ssh -J` example failed with "Host key verification failed":
/// the known_hosts step was in another section. It comes first now, and the command it gives
/// makes a line a strict stock ssh accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_operator_section_trusts_the_relay_before_its_first_ssh() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme
        .find("\n## Operator access")
        .expect("an Operator access section");
    let section = &readme[start..];
    let section = &section[..section[1..].find("\n## ").map_or(section.len(), |e| e + 1)];
    let first_ssh = section
        .lines()
        .position(|l| l.trim_start().starts_with("ssh "))
        .expect("an ssh example");
    let lines: Vec<&str> = section.lines().collect();
    let step = lines[..first_ssh]
        .iter()
        .find(|l| l.contains("burrow relay fingerprint --known-hosts"))
        .unwrap_or_else(|| panic!("no known_hosts step before {:?}", lines[first_ssh]));
    assert!(
        lines[..first_ssh]
            .iter()
            .any(|l| l.contains(">> ~/.ssh/known_hosts")),
        "{section}"
    );

    // That command, on a real relay, for the address the operator uses.
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let op_key = keypair(dir.path(), "op");
    relay.add_operator("alice", &op_key, &["*"]);
    let command: Vec<&str> = step.split('#').next().unwrap().split_whitespace().collect();
    let address = format!("127.0.0.1:{}", relay.addr.port());
    let args: Vec<&str> = command[1..]
        .iter()
        .map(|a| if a.contains(':') { address.as_str() } else { a })
        .collect();
    let (code, line, err) = run(burrow(&args).arg("--data-dir").arg(&relay.data_dir));
    assert_eq!(code, 0, "{args:?}: {err}");
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, &line).unwrap();
    let out = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-p",
            &relay.addr.port().to_string(),
            "-i",
        ])
        .arg(&op_key)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
        .args(["-o", "IdentitiesOnly=yes", "alice@127.0.0.1", "ls"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `demo` removed everything on Ctrl-C without a word; it says so now, once it is true.
#[test]
fn demo_says_when_ctrl_c_has_cleaned_up() {
    use std::io::BufRead;
    let mut demo = burrow(&["demo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let next = || lines.recv_timeout(WAIT).expect("demo output");
    let mut files = None;
    loop {
        let line = next();
        if let Some(rest) = line.strip_prefix("Files are in ") {
            files = rest.split(". Try").next().map(std::path::PathBuf::from);
        }
        if line.contains("Press Ctrl-C to stop") {
            break;
        }
    }
    let files = files.expect("the demo names its directory");
    assert!(files.exists());
    // Ctrl-C.
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&demo),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let said = next();
    assert!(
        said.starts_with("demo stopped") && said.contains(&format!("{} removed", files.display())),
        "{said}"
    );
    assert!(!files.exists());
    let deadline = std::time::Instant::now() + WAIT;
    while demo.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "demo still running");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
