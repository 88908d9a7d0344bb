//! The demo's emulated router console: a pty whose far end answers like a small Cisco-ish CLI,
//! so `burrow demo` can show the console path without hardware.

use std::path::PathBuf;
use std::time::Duration;

use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

/// Opens a pty, starts the router on its master side and returns the path of the slave side.
pub fn start() -> std::io::Result<PathBuf> {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let slave = ptsname(&master, Vec::new())?;
    let path = PathBuf::from(slave.to_string_lossy().into_owned());
    std::thread::Builder::new()
        .name("demo-router".into())
        .spawn(move || serve(master))?;
    Ok(path)
}

fn serve(master: std::os::fd::OwnedFd) {
    let mut enabled = false;
    let mut line = Vec::new();
    let mut buf = [0u8; 256];
    let say = |text: &str| {
        let _ = rustix::io::write(&master, text.as_bytes());
    };
    loop {
        let n = match rustix::io::read(&master, &mut buf) {
            Ok(0) | Err(_) => {
                // Nobody has the console open yet (EIO): wait for the agent.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Ok(n) => n,
        };
        for &b in buf.get(..n).unwrap_or_default() {
            match b {
                b'\r' | b'\n' => {
                    let cmd = String::from_utf8_lossy(&line).trim().to_string();
                    line.clear();
                    say("\r\n");
                    match cmd.as_str() {
                        "" => {}
                        "enable" | "en" => enabled = true,
                        "disable" | "exit" => enabled = false,
                        "show version" | "sh ver" => say(
                            "burrow demo router, IOS-like emulation 1.0\r\nuptime is 4 days, 2 hours\r\n",
                        ),
                        "show clock" | "sh clock" => say("*12:00:00.000 UTC Mon Nov 23 2026\r\n"),
                        "?" | "help" => say("  enable  show version  show clock  exit\r\n"),
                        other => say(&format!("% Unknown command: {other}\r\n")),
                    }
                    say(if enabled {
                        "demo-router#"
                    } else {
                        "demo-router>"
                    });
                }
                0x7f | 0x08 if line.pop().is_some() => say("\x08 \x08"),
                b if b.is_ascii_graphic() || b == b' ' => {
                    line.push(b);
                    let _ = rustix::io::write(&master, &[b]);
                }
                _ => {}
            }
        }
    }
}
