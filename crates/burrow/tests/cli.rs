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

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
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
            "relay = \"127.0.0.1:1\"\nname = \"pi\"\nkey = \"{}\"\nhost_key = \"SHA256:x\"\n\n[[expose]]\nport = 22\nremote_prot = 10022\n",
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
    let (code, _, err) = run(&mut burrow(&[
        "agent",
        "--relay",
        "127.0.0.1:1",
        "--name",
        "pi",
        "--key",
        key.to_str().unwrap(),
        "--host-key",
        "SHA256:x",
        "--status-file",
        dir.path().join("s.json").to_str().unwrap(),
    ]));
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
