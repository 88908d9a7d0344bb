//! `burrow relay console power NAME on|off|cycle|cycle-break [SECONDS]`: asks the relay
//! running on this data directory (logged in with its control key, see
//! `burrow_relay::control`), which has the console's agent run its power command.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use burrow_relay::control;
use burrow_ssh::auth::{ClientKey, Credential};
use burrow_ssh::channel::{Limits, OpenKind, Request};
use burrow_ssh::driver::ChannelMsg;
use burrow_ssh::session::{Session, Side};

use crate::exit::{self, Failure, Result};

struct Quiet;
impl burrow_ssh::driver::Handler for Quiet {}

/// Runs `console WORDS...` on the running relay; its output goes to stdout, and its exit
/// status becomes ours.
pub async fn console(data_dir: &Path, words: &[String]) -> Result {
    let (key, addr) = control::credentials(data_dir).map_err(|e| Failure::new(exit::NOINPUT, e))?;
    // The relay is the one whose host keys are in this directory (the one in use, or the
    // next one during a rotation).
    let pins: Vec<String> = burrow_relay::host_keys::load(data_dir)
        .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?
        .all()
        .map(|k| burrow_io::keys::fingerprint(k.public_key()))
        .collect();
    let check = move |blob: &[u8]| {
        burrow_io::keys::PublicKey::from_bytes(blob)
            .is_ok_and(|k| pins.contains(&burrow_io::keys::fingerprint(&k)))
    };
    let transport = burrow_ssh::transport::Config {
        role: burrow_ssh::transport::Role::Client,
        software: format!("burrow_{}", env!("CARGO_PKG_VERSION")),
        host_key_check: Some(Box::new(check)),
        ..Default::default()
    };
    let ssh = Session::new(
        transport,
        Side::Client {
            user: control::USER.to_string(),
            credentials: vec![Credential::Key(Box::new(ClientKey::new(key)))],
        },
        Limits::default(),
        Instant::now(),
    );
    let unreachable = |e: &dyn std::fmt::Display| {
        Failure::new(
            exit::TEMPFAIL,
            format!(
                "cannot reach the relay of {} at {addr}: {e} (is it running?)",
                data_dir.display()
            ),
        )
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| unreachable(&e))?;
    let (handle, driver) = burrow_ssh::driver::start(tcp, ssh, Quiet, None);
    let _stop = AbortOnDrop(tokio::spawn(driver));
    handle.authenticated().await.map_err(|e| {
        unreachable(&format!(
            "{e}; its control key is made anew at each start: run this as a user who can read {}",
            data_dir.join(control::KEY_FILE).display()
        ))
    })?;
    let channel = handle
        .open(OpenKind::Session)
        .await
        .map_err(|e| unreachable(&e))?;
    channel.merge_stderr();
    let command = format!("console {}", words.join(" "));
    if !channel
        .request(Request::Exec(command), true)
        .await
        .map_err(|e| unreachable(&e))?
    {
        return Err(Failure::new(
            exit::SOFTWARE,
            "the relay refused the command (is it a relay of this version?)",
        ));
    }
    let mut status = None;
    let mut stdout = std::io::stdout();
    while let Some(msg) = channel.next().await {
        match msg {
            ChannelMsg::Data(d) => {
                let _ = stdout.write_all(&d);
                let _ = stdout.flush();
            }
            ChannelMsg::Request {
                request: Request::ExitStatus(code),
                ..
            } => status = Some(code),
            ChannelMsg::Request { .. } | ChannelMsg::Eof => {}
        }
    }
    match status {
        Some(0) => Ok(()),
        Some(code) => Err(Failure::new(
            i32::try_from(code).unwrap_or(1),
            format!("console {} failed (see above)", words.join(" ")),
        )),
        None => Err(Failure::new(
            exit::TEMPFAIL,
            "the relay closed the command without an answer",
        )),
    }
}

/// Stops the connection's task when the command is done.
struct AbortOnDrop(tokio::task::JoinHandle<std::result::Result<(), burrow_ssh::driver::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
