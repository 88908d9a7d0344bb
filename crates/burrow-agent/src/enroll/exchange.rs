//! One relay: the SSH login as `+enroll` with the token (the relay's host key checked against
//! the string's pins first), the request signed by the new key over the session identifier, and
//! the answer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow_proto::join::{ENROLL_USER, EnrollReply, EnrollRequest, JoinToken};
use burrow_ssh::auth::{ClientKey, Credential};
use burrow_ssh::channel::{Limits, OpenKind, Request};
use burrow_ssh::driver::{ChannelMsg, Handler};
use burrow_ssh::session::{Session, Side};
use tokio::net::TcpStream;

use super::EnrollError;

/// Time allowed for one relay: TCP, SSH handshake, login and the answer together.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for the TCP connection alone.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest answer read from the relay.
const MAX_ANSWER: usize = 64 * 1024;

/// The enrolling connection's handler: it serves nothing.
struct Quiet;
impl Handler for Quiet {}

/// One relay: connect, log in with the token, send the request, read the answer.
pub(super) async fn attempt(
    relay: &str,
    join: &JoinToken,
    name: &str,
    key: &ClientKey,
) -> Result<EnrollReply, EnrollError> {
    match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt_unbounded(relay, join, name, key)).await {
        Ok(r) => r,
        Err(_) => Err(EnrollError::Unreachable(format!(
            "relay {relay} did not answer within {ATTEMPT_TIMEOUT:?}"
        ))),
    }
}

async fn attempt_unbounded(
    relay: &str,
    join: &JoinToken,
    name: &str,
    key: &ClientKey,
) -> Result<EnrollReply, EnrollError> {
    let unreachable = |m: String| EnrollError::Unreachable(m);
    let target: burrow_proto::addr::Target = relay.parse().map_err(|e| {
        EnrollError::Refused(format!("relay address {relay:?} in the join string: {e}"))
    })?;
    let tcp = tokio::time::timeout(
        TCP_CONNECT_TIMEOUT,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| unreachable(format!("relay {relay} did not answer the TCP connection")))?
    .map_err(|e| unreachable(format!("cannot reach relay {relay}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let seen = Arc::new(Mutex::new(None));
    let check = {
        let pins = join.pins.clone();
        let seen = seen.clone();
        move |blob: &[u8]| match burrow_io::keys::PublicKey::from_bytes(blob) {
            Ok(k) => {
                let fp = burrow_io::keys::fingerprint(&k);
                let ok = pins.contains(&fp);
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(fp);
                ok
            }
            Err(_) => false,
        }
    };
    let transport = burrow_ssh::transport::Config {
        role: burrow_ssh::transport::Role::Client,
        software: format!("burrow_{}", env!("CARGO_PKG_VERSION")),
        comment: None,
        kex: burrow_ssh::kex::methods(),
        ciphers: crate::session::preferred_ciphers()
            .iter()
            .map(|c| c.to_string())
            .collect(),
        host_key: None,
        host_key_check: Some(Box::new(check)),
        ..Default::default()
    };
    let ssh = Session::new(
        transport,
        Side::Client {
            user: ENROLL_USER.to_string(),
            credentials: vec![Credential::Password(zeroize::Zeroizing::new(
                join.password(),
            ))],
        },
        Limits::default(),
        Instant::now(),
    );
    let (handle, driver) = burrow_ssh::driver::start(tcp, ssh, Quiet, None);
    let driver = tokio::spawn(driver);
    let _stop = AbortOnDrop(driver);
    if let Err(e) = handle.authenticated().await {
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        return Err(match seen {
            Some(fp) if !join.pins.contains(&fp) => EnrollError::Refused(format!(
                "relay {relay} presented host key {fp}, which the join string does not pin ({}): not the relay that made the token, or someone in between. Nothing was sent",
                join.pins.join(", ")
            )),
            _ if e.0.contains("refused every credential") => EnrollError::Refused(format!(
                "relay {relay} refused join token {}: it does not know it, or the string was changed. Ask for a new one (`burrow relay token create`)",
                join.id
            )),
            _ => unreachable(format!("SSH handshake with relay {relay} failed: {e}")),
        });
    }
    let session_id = handle
        .session_id()
        .ok_or_else(|| unreachable(format!("relay {relay}: no session identifier")))?;
    let blob = key
        .blob()
        .map_err(|e| EnrollError::Local(format!("the new key: {e}")))?;
    let signature = key
        .sign(&burrow_proto::join::proof_data(&session_id, name, &blob))
        .map_err(|e| EnrollError::Local(format!("signing with the new key: {e}")))?;
    let request = EnrollRequest {
        name: name.to_string(),
        algorithm: key.algorithm().to_string(),
        key: blob,
        signature,
    };
    let channel = handle
        .open(OpenKind::Session)
        .await
        .map_err(|e| unreachable(format!("relay {relay}: {e}")))?;
    let accepted = channel
        .request(Request::Exec(request.to_command()), true)
        .await
        .map_err(|e| unreachable(format!("relay {relay}: {e}")))?;
    if !accepted {
        return Err(EnrollError::Refused(format!(
            "relay {relay} does not take enrollments (is it a burrow relay of this version?)"
        )));
    }
    let (mut out, mut status) = (Vec::new(), None);
    while let Some(msg) = channel.next().await {
        match msg {
            ChannelMsg::Data(d) => {
                if out.len() + d.len() > MAX_ANSWER {
                    return Err(EnrollError::Refused(format!(
                        "relay {relay} answered more than {MAX_ANSWER} bytes"
                    )));
                }
                out.extend_from_slice(&d);
            }
            ChannelMsg::Request {
                request: Request::ExitStatus(code),
                ..
            } => status = Some(code),
            ChannelMsg::Request { .. } => {}
            ChannelMsg::Eof => {}
        }
    }
    let text = String::from_utf8_lossy(&out);
    let text = text.trim();
    match status {
        Some(0) => serde_json::from_str(text).map_err(|e| {
            EnrollError::Refused(format!("relay {relay} answered something unreadable ({e})"))
        }),
        Some(_) => Err(EnrollError::Refused(format!(
            "relay {relay} refused: {}",
            burrow_proto::text::clean(text, burrow_proto::text::MAX_TEXT_CHARS)
        ))),
        None => Err(unreachable(format!(
            "relay {relay} closed the enrollment without an answer"
        ))),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<(), burrow_ssh::driver::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
