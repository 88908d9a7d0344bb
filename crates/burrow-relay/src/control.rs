//! The relay's own command line reaching the running relay, for what only the running relay
//! can do: `burrow relay console power NAME on|off|cycle` on the relay's machine.
//!
//! At every start the relay makes a fresh key in its data directory ([`KEY_FILE`], mode 0600:
//! whoever may read it may read the host key and the database anyway) and, once it listens,
//! notes where ([`ADDR_FILE`]). The command line logs in with that key as [`USER`], from
//! loopback only, and runs one console command; it is audited as [`OPERATOR`], and may reach
//! every device (it is the relay's administrator). A key of an earlier start no longer works.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use burrow_io::keys::{PrivateKey, PublicKey};
use burrow_ssh::driver::Channel;

use crate::Relay;

/// The control key's file in the data directory.
pub const KEY_FILE: &str = "control.key";
/// Where the running relay listens, for the command line (`127.0.0.1:2222`).
pub const ADDR_FILE: &str = "control.addr";
/// The login name the command line uses (`+` is in no device or operator name).
pub const USER: &str = "+relay-cli";
/// The name the command line's actions carry in the audit and in console notices.
pub const OPERATOR: &str = "relay-cli";

/// Makes this start's control key (replacing an earlier start's); `None` when the directory
/// refuses it (a full disk): the relay serves without it.
pub(crate) fn make_key(dir: &Path) -> Option<String> {
    let key = burrow_io::keys::generate_ed25519();
    let path = dir.join(KEY_FILE);
    let _ = std::fs::remove_file(&path);
    match burrow_io::keys::write_private_key(&path, &key) {
        Ok(()) => Some(burrow_io::keys::fingerprint(key.public_key())),
        Err(e) => {
            tracing::warn!(
                "cannot write {}: {e}; `burrow relay console power` cannot reach this relay",
                path.display()
            );
            None
        }
    }
}

/// Notes where the relay listens: an unspecified address (`0.0.0.0`, `::`) as loopback.
pub(crate) fn note_address(dir: &Path, listening: SocketAddr) {
    let mut addr = listening;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let (path, tmp) = (dir.join(ADDR_FILE), dir.join(format!("{ADDR_FILE}.tmp")));
    let written =
        std::fs::write(&tmp, format!("{addr}\n")).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}

/// Whether a login as [`USER`] with `key` from `peer` is the command line of this start.
pub(crate) fn admits(relay: &Relay, key: &PublicKey, peer: SocketAddr) -> Result<(), String> {
    if !peer.ip().is_loopback() && !peer.ip().to_canonical().is_loopback() {
        return Err(format!(
            "{USER} logs in from the relay's own machine only (not from {})",
            peer.ip()
        ));
    }
    match &relay.control_key {
        Some(fp) if *fp == burrow_io::keys::fingerprint(key) => Ok(()),
        _ => Err(format!(
            "not this relay's control key (it is made anew at each start, in {KEY_FILE})"
        )),
    }
}

/// What the command line may run: the console commands that need the running relay.
fn allowed(words: &[&str]) -> bool {
    matches!(words, ["console", "power", ..])
}

/// Serves the command line's session channel: one exec, its output and exit status.
pub(crate) fn session_opened(relay: Arc<Relay>, channel: Channel) {
    let relay2 = relay.clone();
    relay.tracker.spawn(async move {
        let relay = relay2;
        let Some(command) = crate::conn::next_exec(&channel).await else {
            return;
        };
        let words: Vec<&str> = command.split_whitespace().collect();
        let status = if allowed(&words) {
            crate::console::console_exec(&relay, OPERATOR, &|_| true, &words[1..], &channel).await
        } else {
            let _ = channel
                .stderr(
                    format!("the relay's command line runs console power only, not {command:?}\n")
                        .as_bytes(),
                )
                .await;
            2
        };
        channel.exit_status(status);
        channel.eof();
        channel.close();
    });
}

/// The command line's side: this start's key and address, read from the data directory.
pub fn credentials(dir: &Path) -> Result<(PrivateKey, SocketAddr), String> {
    let not_running = |what: &str, e: &dyn std::fmt::Display| {
        format!(
            "cannot read {what} in {} ({e}): is a relay running on this data directory? (`burrow relay --data-dir {}`)",
            dir.display(),
            dir.display()
        )
    };
    let addr =
        std::fs::read_to_string(dir.join(ADDR_FILE)).map_err(|e| not_running(ADDR_FILE, &e))?;
    let addr: SocketAddr = addr
        .trim()
        .parse()
        .map_err(|e| not_running(ADDR_FILE, &e))?;
    let key = burrow_io::keys::load_private_key(&dir.join(KEY_FILE))
        .map_err(|e| not_running(KEY_FILE, &e))?;
    Ok((key, addr))
}
