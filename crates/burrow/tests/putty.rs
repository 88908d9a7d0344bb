//! PuTTY's plink against the relay: password login (at keyboard-interactive's prompt, as
//! PuTTY prefers) and the session requests PuTTY sends.

mod common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plink_password_login_and_putty_requests_are_not_warnings() {
    let dir = tempdir();
    let data = dir.path().join("relay");
    let burrow = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_burrow"))
            .arg("relay")
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .output()
            .unwrap()
    };
    assert!(burrow(&["init"]).status.success());
    let hash_input = {
        use std::io::Write;
        let mut c = Command::new(env!("CARGO_BIN_EXE_burrow"))
            .args(["relay", "--data-dir"])
            .arg(&data)
            .args(["operator", "add", "erin", "--password-stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(b"putty pass\n").unwrap();
        c.wait_with_output().unwrap()
    };
    assert!(hash_input.status.success());
    let fingerprint = String::from_utf8(burrow(&["fingerprint"]).stdout).unwrap();
    let (_relay, port, log) = relay_process(&data, &[]);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("plink")
            .args(["-ssh", "-batch", "-P", &port.to_string()])
            .args(["-hostkey", fingerprint.trim(), "-pw", "putty pass"])
            .args(["erin@127.0.0.1", "ls"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("plink is installed (putty-tools; ./test.sh installs it)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("DEVICE"));
    // PuTTY asks `simple@putty.projects.tartarus.org` on every session: expected, refused
    // quietly, never a warning in the relay's log.
    eventually("the relay to log the command", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("event=exec"))
            .then_some(())
    })
    .await;
    let log = log.lock().unwrap().join("\n");
    // PuTTY types the password at keyboard-interactive's prompt when the server offers it.
    assert!(
        log.contains("operator authenticated by keyboard-interactive"),
        "{log}"
    );
    assert!(!log.contains("unknown channel request"), "{log}");
    assert!(!log.contains(" WARN "), "{log}");
}
