//! One connection to the relay, from dial to end: host key, auth, forwards, keepalive, probes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow_io::activity::Activity;
use burrow_proto::addr::Target;
use burrow_proto::agent_config::AgentConfig;
use burrow_proto::liveness::{Link, Liveness, Step};
use burrow_ssh::auth::{ClientKey, Credential};
use burrow_ssh::channel::{GlobalRequest, Limits, OpenKind};
use burrow_ssh::driver::{GlobalAnswer, Handle};
use burrow_ssh::session::{Session, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::handler::{AgentHandler, PROBE_NONCE_LEN, PendingProbe, Shared};
use crate::liveness::{AckWatch, Streams};
use crate::status::{ProbeStatus, State, StatusBoard, now_rfc3339};

/// Time allowed for TCP connect, SSH handshake and authentication together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for the TCP connection alone: a fresh attempt sends a fresh SYN, where the
/// kernel's retransmissions of the first would wait longer and longer through an outage.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bind address sent with every `tcpip-forward`: loopback on a stock sshd relay, and on a
/// burrow relay simply "this device's own name".
const FORWARD_BIND: &str = "127.0.0.1";

/// How often a busy session (streams sending, so no keepalives) checks whether a health report
/// is due, to send it with the streams' traffic.
const HEALTH_CHECK_BUSY: Duration = Duration::from_secs(60);
/// Consecutive failed probes after which the session is given up: one is not a verdict.
const PROBE_FAILURES_FATAL: u32 = 2;
/// Key exchanges renewed after this many bytes either way.
const REKEY_BYTES: u64 = 1 << 30;
/// Key exchanges renewed by time at most this often (and after every GiB either way, as
/// OpenSSH does): AES-GCM and ChaCha20-Poly1305 need no hourly rekey, OpenSSH rekeys by volume only,
/// and on an idle cellular session each one costs a few kilobytes.
pub(crate) const REKEY_TIME_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The connections up (one per relay held), for the `[[connect]]` listeners, by slot.
pub(crate) type Current = Arc<Mutex<std::collections::BTreeMap<usize, Live>>>;

/// What the `[[connect]]` listeners need of the session that is up.
#[derive(Clone)]
pub(crate) struct Live {
    pub(crate) handle: Handle,
    /// The relay is burrow's (its rules decide which targets a device may open).
    pub(crate) burrow_relay: bool,
    pub(crate) streams: Arc<Streams>,
}

type ProbeRun = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// How a session ended.
pub(crate) struct Ended {
    /// How long it was up.
    pub(crate) up_for: Duration,
    /// Why it ended; `None` on shutdown.
    pub(crate) error: Option<String>,
    /// The relay's word that a newer session of this device replaced this one.
    pub(crate) replaced: Option<String>,
    /// The relay's word that the device waits for approval.
    pub(crate) pending: Option<String>,
    /// The relay's word that this device's key is in use elsewhere (quarantined).
    pub(crate) quarantined: Option<String>,
    /// Whether it ended waiting for an answer that never came (a dark link): such an attempt
    /// paced itself, and backing off further would only delay the return.
    pub(crate) unanswered: bool,
}

pub(crate) struct Ctx {
    pub(crate) config: AgentConfig,
    pub(crate) shared: Arc<Shared>,
    pub(crate) status: StatusBoard,
    pub(crate) current: Current,
    /// The connection slots (`connections`) that had a session up so far: a slot's first
    /// session is a connect, each later one a reconnect.
    pub(crate) slots_up: Mutex<std::collections::HashSet<usize>>,
    /// The health report, when reports are on.
    pub(crate) health: Option<Arc<crate::health::Health>>,
}

/// The ciphers the agent offers, best first. With AES and carry-less multiply instructions
/// (x86-64 AES-NI + PCLMULQDQ, ARMv8 AES + PMULL) ring's AES-GCM outruns ChaCha20-Poly1305;
/// without them (the Raspberry Pi 4 and older have none) ChaCha20 is several times faster.
pub(crate) fn preferred_ciphers() -> &'static [&'static str] {
    const AES_FIRST: &[&str] = &[AES_256_GCM, CHACHA20_POLY1305];
    const CHACHA_FIRST: &[&str] = &[CHACHA20_POLY1305, AES_256_GCM];
    if aes_instructions() {
        AES_FIRST
    } else {
        CHACHA_FIRST
    }
}

const AES_256_GCM: &str = "aes256-gcm@openssh.com";
const CHACHA20_POLY1305: &str = "chacha20-poly1305@openssh.com";

fn aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// A failed handshake says what answered when it was not a burrow relay: a stock sshd at the
/// relay address otherwise reads like a relay whose host key changed.
fn with_server_hint(
    why: String,
    relay: &str,
    server: Option<String>,
    config: &AgentConfig,
) -> String {
    let Some(server) = server else {
        return why;
    };
    if server.starts_with(crate::BURROW_SSH_ID_PREFIX) {
        return why;
    }
    let server = burrow_proto::text::clean(&server, 80);
    if config.expose.iter().any(|e| e.remote_port.is_some()) {
        return format!("{why} (the server at {relay} is {server:?}, a stock SSH server)");
    }
    format!(
        "{why}. The server at {relay} is {server:?}, not a burrow relay: check the relay address and port, or, to use a stock sshd as relay, set remote_port on each [[expose]] and pin that sshd's host key"
    )
}

/// Runs one session until it fails or `shutdown` is cancelled.
pub(crate) async fn run(
    ctx: &Ctx,
    slot: usize,
    target: &Target,
    shutdown: &CancellationToken,
) -> Ended {
    // Not a child of `shutdown`: a stopping agent says goodbye (DISCONNECT) before its
    // connection is dropped, so that the relay records a clean end rather than a broken link.
    // Every way out of this function cancels it.
    let cut = CancellationToken::new();
    let probe_port = Arc::new(Mutex::new(None));
    let mut up_since = None;
    let replaced = Arc::new(Mutex::new(None));
    let unanswered = AtomicBool::new(false);
    let result = session(
        ctx,
        slot,
        target,
        shutdown,
        &cut,
        &probe_port,
        &replaced,
        &mut up_since,
        &unanswered,
    )
    .await;
    let others_up = {
        let mut current = ctx.current.lock().unwrap_or_else(|e| e.into_inner());
        current.remove(&slot);
        !current.is_empty()
    };
    cut.cancel();
    if !others_up {
        ctx.status.update(|s| {
            for e in &mut s.endpoints {
                e.up = false;
            }
            s.relay_silent_since = None;
        });
    }
    let said = replaced.lock().unwrap_or_else(|e| e.into_inner()).take();
    let (mut replaced, mut pending, mut quarantined) = (None, None, None);
    match said {
        Some(w) if w.starts_with(burrow_proto::PENDING_PREFIX) => pending = Some(w),
        Some(w) if w.starts_with(burrow_proto::QUARANTINED_PREFIX) => quarantined = Some(w),
        other => replaced = other,
    }
    Ended {
        up_for: up_since.map(|t: Instant| t.elapsed()).unwrap_or_default(),
        error: result.err(),
        replaced,
        pending,
        quarantined,
        unanswered: unanswered.load(Ordering::Relaxed),
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    ctx: &Ctx,
    slot: usize,
    target: &Target,
    shutdown: &CancellationToken,
    cut: &CancellationToken,
    probe_port: &Arc<Mutex<Option<u16>>>,
    replaced: &Arc<Mutex<Option<String>>>,
    up_since: &mut Option<Instant>,
    unanswered: &AtomicBool,
) -> Result<(), String> {
    let config = &ctx.config;
    let key = burrow_io::keys::load_private_key(&config.key).map_err(|e| e.to_string())?;
    let host_key_error = Arc::new(Mutex::new(None));
    let banner = Arc::new(Mutex::new(None));
    let streams = Arc::new(Streams::default());
    let pending_probe: PendingProbe = Arc::default();
    let activity = Activity::new();
    let schedule = config.schedule();
    let handler = AgentHandler {
        streams: streams.clone(),
        pending_probe: pending_probe.clone(),
        shared: ctx.shared.clone(),
        probe_port: probe_port.clone(),
        banner: banner.clone(),
        target: target.clone(),
    };
    let relay = target.to_string();
    let check = {
        let shared = ctx.shared.clone();
        let error = host_key_error.clone();
        let target = target.clone();
        move |blob: &[u8]| host_key_trusted(&shared, &target, blob, &error)
    };
    let transport = burrow_ssh::transport::Config {
        role: burrow_ssh::transport::Role::Client,
        software: format!("burrow_{}", env!("CARGO_PKG_VERSION")),
        // The comment declares the keepalive schedule (a burrow relay then sends none of its
        // own and drops the session once a keepalive is overdue) and this agent process (its
        // sessions on several relays coexist; a new process takes over the old one's).
        comment: Some(format!(
            "{} {}",
            schedule.comment(),
            burrow_proto::liveness::instance_word(&ctx.shared.instance)
        )),
        kex: burrow_ssh::kex::methods(),
        ciphers: preferred_ciphers().iter().map(|c| c.to_string()).collect(),
        host_key: None,
        host_key_check: Some(Box::new(check)),
        rekey_bytes: config.rekey_bytes().unwrap_or(REKEY_BYTES),
        rekey_time: REKEY_TIME_LIMIT,
        ext_info: None,
        // A relay rotating its host key announces the new one; proved, it is pinned.
        learn_host_keys: true,
        ..Default::default()
    };
    let ssh = Session::new(
        transport,
        Side::Client {
            user: config.name.clone(),
            credentials: vec![Credential::Key(Box::new(ClientKey::new(key.clone())))],
        },
        Limits::default(),
        Instant::now(),
    );
    let mut socket = None;
    let connect = async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port));
        let tcp = match tokio::time::timeout(TCP_CONNECT_TIMEOUT, tcp).await {
            Ok(tcp) => tcp.map_err(|e| format!("cannot reach relay {relay}: {e}"))?,
            Err(_) => {
                unanswered.store(true, Ordering::Relaxed);
                return Err(format!(
                    "relay {relay} did not answer the TCP connection within {TCP_CONNECT_TIMEOUT:?}"
                ));
            }
        };
        let _ = tcp.set_nodelay(true);
        socket = std::os::fd::AsFd::as_fd(&tcp).try_clone_to_owned().ok();
        let (handle, driver) = burrow_ssh::driver::start(tcp, ssh, handler, Some(activity.clone()));
        // The connection runs on its own task; cancelling `cut` drops it, closing the socket.
        let cut = cut.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = driver => {}
                () = cut.cancelled() => {}
            }
        });
        if let Err(e) = handle.authenticated().await {
            if let Some(why) = relay_word(&handle) {
                *replaced.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                return Err(why);
            }
            let server = handle.peer_id().map(|id| id.line);
            let why = match host_key_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                Some(why) => why,
                // A burrow relay says whose the key is when it is someone else's.
                None if e.0.contains("refused every credential")
                    && let Some(said) = banner.lock().unwrap_or_else(|e| e.into_inner()).take() =>
                {
                    format!(
                        "relay {relay} refused key {} for device {}: {}",
                        burrow_io::keys::fingerprint(key.public_key()),
                        config.name,
                        said.trim().trim_start_matches("burrow: ")
                    )
                }
                None if e.0.contains("refused every credential") => {
                    let name = &config.name;
                    format!(
                        "relay {relay} refused key {} for device {name}; register it there with `burrow relay device add {name} --pubkey FILE`, or, if device {name} exists with another key, `burrow relay device add-key {name} --pubkey FILE`",
                        burrow_io::keys::fingerprint(key.public_key()),
                    )
                }
                None => format!("SSH handshake with relay {relay} failed: {e}"),
            };
            return Err(with_server_hint(why, &relay, server, config));
        }
        Ok(handle)
    };
    let handle = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = tokio::time::timeout(CONNECT_TIMEOUT, connect) => match r {
            Ok(r) => r?,
            Err(_) => {
                unanswered.store(true, Ordering::Relaxed);
                return Err(format!("relay {relay} did not complete the handshake within {CONNECT_TIMEOUT:?}"));
            }
        },
    };
    let result = serve(
        ctx,
        slot,
        shutdown,
        &handle,
        &relay,
        probe_port,
        &pending_probe,
        &streams,
        &activity,
        socket,
        up_since,
        unanswered,
    )
    .await;
    // The relay's word that a newer session of this device replaced this one, that the device
    // waits for approval, or that its key is in use elsewhere.
    if let Some(why) = relay_word(&handle) {
        *replaced.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }
    result
}

/// What the relay said when it ended the session, if it is one of the words an agent acts on.
fn relay_word(handle: &Handle) -> Option<String> {
    handle
        .peer_disconnect()
        .filter(|d| {
            [
                burrow_proto::REPLACED_PREFIX,
                burrow_proto::PENDING_PREFIX,
                burrow_proto::QUARANTINED_PREFIX,
            ]
            .iter()
            .any(|p| d.starts_with(p))
        })
        .map(|d| burrow_proto::text::clean(&d, burrow_proto::text::MAX_TEXT_CHARS))
}

/// Checks the relay's host key blob against the pin; the refusal's reason is kept for the
/// error message.
fn host_key_trusted(
    shared: &Shared,
    target: &Target,
    blob: &[u8],
    error: &Mutex<Option<String>>,
) -> bool {
    let refuse = |why: String| {
        *error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        false
    };
    let key = match burrow_io::keys::PublicKey::from_bytes(blob) {
        Ok(k) => k,
        Err(e) => return refuse(format!("the relay's host key does not parse: {e}")),
    };
    let policy = shared.host_key.lock().unwrap_or_else(|e| e.into_inner());
    match policy.check(&target.host, target.port, &key) {
        Ok(crate::hostkey::Verified::Matched) => true,
        Ok(crate::hostkey::Verified::Learned(fp)) => {
            tracing::warn!(
                "TRUSTED ON FIRST USE: recorded relay {target} host key {fp}; verify it with `burrow relay fingerprint` on the relay"
            );
            true
        }
        Err(e) => refuse(e),
    }
}

/// The authenticated session: forwards, then the watch loop until it ends.
#[allow(clippy::too_many_arguments)]
async fn serve(
    ctx: &Ctx,
    slot: usize,
    shutdown: &CancellationToken,
    handle: &Handle,
    relay: &str,
    probe_port: &Arc<Mutex<Option<u16>>>,
    pending_probe: &PendingProbe,
    streams: &Arc<Streams>,
    activity: &Arc<Activity>,
    socket: Option<std::os::fd::OwnedFd>,
    up_since: &mut Option<Instant>,
    unanswered: &AtomicBool,
) -> Result<(), String> {
    let config = &ctx.config;
    let schedule = config.schedule();
    let burrow_relay = handle
        .peer_id()
        .is_some_and(|id| id.line.starts_with(crate::BURROW_SSH_ID_PREFIX));
    // Only a burrow relay reads health reports. The first one leaves with the forwards below.
    let health = ctx.health.as_deref().filter(|_| burrow_relay);
    let mut outbox = crate::health::Outbox::default();
    if let Some(h) = health {
        outbox.offer(h, handle, &ctx.status);
    }
    // Every forward must bind, or the session counts as down (ExitOnForwardFailure).
    for expose in &config.expose {
        let requested = expose.requested_port();
        let bind = expose.bind.as_deref().unwrap_or(FORWARD_BIND);
        let result = forward(handle, bind, requested).await;
        let error = result.err().map(|e| match e {
            None => format!(
                "relay refused to listen on port {requested} (in use, or not allowed for {})",
                config.name
            ),
            Some(e) => format!("forward of port {requested} failed: {e}"),
        });
        ctx.status.update(|s| {
            if let Some(ep) = s.endpoints.iter_mut().find(|ep| ep.port == expose.port) {
                ep.up = error.is_none();
                ep.error = error.clone();
            }
        });
        if let Some(e) = error {
            return Err(e);
        }
    }
    // Consoles are endpoints too; on a burrow relay their bind address names them, so the relay
    // can offer `OPERATOR:DEVICE/NAME` logins.
    for (console, port) in config.consoles() {
        let bind = if burrow_relay {
            format!("console/{}", console.name)
        } else {
            FORWARD_BIND.to_string()
        };
        if let Err(e) = forward(handle, &bind, port).await {
            let e = e.unwrap_or_else(|| "refused".into());
            return Err(format!(
                "relay refused console {} on port {port}: {e}",
                console.name
            ));
        }
    }
    let probe_interval = config.probe_interval();
    if !probe_interval.is_zero() {
        // A burrow relay keeps the probe endpoint internal (unlisted, closed to operators).
        let bind = if burrow_relay {
            burrow_proto::PROBE_BIND
        } else {
            FORWARD_BIND
        };
        match forward(handle, bind, 0).await {
            Ok(port) if port > 0 => {
                *probe_port.lock().unwrap_or_else(|e| e.into_inner()) = Some(port);
            }
            other => tracing::warn!(
                "relay gave no probe endpoint ({other:?}); end-to-end probes are off"
            ),
        }
    }

    ctx.current
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            slot,
            Live {
                handle: handle.clone(),
                burrow_relay,
                streams: streams.clone(),
            },
        );
    *up_since = Some(Instant::now());
    tracing::info!("connected to relay {relay} as {}", config.name);
    let first_of_slot = ctx
        .slots_up
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(slot);
    if !first_of_slot {
        ctx.status.update(|s| s.reconnects += 1);
    }
    ctx.status.set_state(State::Up, None);

    let probe_port = *probe_port.lock().unwrap_or_else(|e| e.into_inner());
    let probes = match probe_port {
        Some(port) if !probe_interval.is_zero() => Some(Probes {
            port,
            interval: probe_interval,
            timeout: config.probe_timeout(),
            burrow_relay,
            pending: pending_probe.clone(),
        }),
        _ => None,
    };
    let watch = Watch {
        relay,
        handle,
        activity,
        streams,
        acks: AckWatch::new(socket),
        liveness: Liveness::new(schedule),
        status: &ctx.status,
        unanswered,
        health: health.map(|h| (h, outbox)),
    };
    watch.run(probes, shutdown).await
}

/// `tcpip-forward`: the port bound (the one asked for, or the relay's choice for 0); `None` as
/// the error when the relay said no, `Some` when the connection failed.
async fn forward(handle: &Handle, bind: &str, port: u16) -> Result<u16, Option<String>> {
    let answer = handle
        .global_request(GlobalRequest::TcpipForward {
            address: bind.to_string(),
            port: u32::from(port),
        })
        .await
        .map_err(|e| Some(e.to_string()))?;
    match answer {
        GlobalAnswer::Success(Some(bound)) if port == 0 => {
            u16::try_from(bound).map_err(|_| Some(format!("the relay bound port {bound}")))
        }
        GlobalAnswer::Success(_) => Ok(port),
        GlobalAnswer::Failure => Err(None),
    }
}

/// The end-to-end probe's settings for one session.
struct Probes {
    port: u16,
    /// Time without proof of the path after which a probe runs.
    interval: Duration,
    timeout: Duration,
    /// A burrow relay routes the one-round-trip probe; a stock sshd needs the echo.
    burrow_relay: bool,
    pending: PendingProbe,
}

impl Probes {
    fn start(&self, handle: &Handle) -> ProbeRun {
        let handle = handle.clone();
        if self.burrow_relay {
            Box::pin(routed_probe(handle, self.port, self.pending.clone()))
        } else {
            Box::pin(echo_probe(handle, self.port))
        }
    }
}

/// The session loop: keepalives when the line is quiet, probes when nothing proved the path.
struct Watch<'a> {
    relay: &'a str,
    handle: &'a Handle,
    activity: &'a Activity,
    streams: &'a Arc<Streams>,
    acks: AckWatch,
    liveness: Liveness,
    status: &'a StatusBoard,
    unanswered: &'a AtomicBool,
    /// The health report and what this session sent of it.
    health: Option<(&'a crate::health::Health, crate::health::Outbox)>,
}

impl Watch<'_> {
    async fn run(
        mut self,
        probes: Option<Probes>,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let relay = self.relay;
        let up_at = Instant::now();
        let mut probing: Option<(Instant, ProbeRun)> = None;
        let mut failures = 0u32;
        let mut last_attempt = up_at;
        let mut silent_shown = false;
        // While streams keep the line busy no keepalive goes out: a due report then leaves
        // with their traffic, checked for this often.
        let mut next_offer = up_at + HEALTH_CHECK_BUSY;
        loop {
            let now = Instant::now();
            let moved = self.acks.poll(now);
            let link = Link {
                last_rx: self.activity.last_rx(),
                last_tx: self.activity.last_tx(),
                streams_moved_at: self.streams.moved_at(),
                queue_moving_at: moved,
            };
            let schedule = self.liveness.schedule();
            let mut wake = match self.liveness.step(now, link) {
                Step::SendKeepalive => {
                    if let Some(why) = self.handle.ended() {
                        return Err(format!("connection to relay {relay} lost: {why}"));
                    }
                    // A report that is due goes in the keepalive's write.
                    self.offer_health();
                    self.handle.send_keepalive();
                    continue;
                }
                Step::Dead(why) => {
                    self.unanswered.store(true, Ordering::Relaxed);
                    return Err(format!("connection to relay {relay} lost: {why}"));
                }
                Step::Wait(t) => t,
            };
            // Waiting for an answer: watch TCP's progress, and say so once it takes long.
            if let Some(sent) = self.liveness.waiting_since() {
                wake = wake.min(now + poll_step(schedule.timeout));
                let silent = now.saturating_duration_since(sent) >= schedule.timeout / 4;
                if silent && !silent_shown {
                    let since = now_rfc3339_minus(now.saturating_duration_since(link.last_rx));
                    self.status.update(|s| s.relay_silent_since = Some(since));
                    silent_shown = true;
                }
            } else if silent_shown {
                self.status.update(|s| s.relay_silent_since = None);
                silent_shown = false;
            }
            // Streams that move bytes need the busy rule checked even when nothing wakes the loop.
            wake = wake.min(now + schedule.busy_interval);
            if now >= next_offer {
                next_offer = now + HEALTH_CHECK_BUSY;
                if now.saturating_duration_since(link.last_tx) < schedule.busy_interval {
                    self.offer_health();
                }
            }
            if let Some(probes) = &probes {
                match probing.as_ref().map(|(sent, _)| *sent) {
                    Some(sent) => {
                        let clock = moved.map_or(sent, |m| m.max(sent));
                        let deadline = clock + probes.timeout;
                        if now >= deadline {
                            probing = None;
                            let why = format!("no answer within {:?}", probes.timeout);
                            failures += 1;
                            self.record_probe(sent, Err(why.clone()));
                            if failures >= PROBE_FAILURES_FATAL {
                                return Err(format!(
                                    "tunnel probe through relay {relay} failed {failures} times in a row ({why}); reconnecting"
                                ));
                            }
                            continue;
                        }
                        wake = wake.min(deadline).min(now + poll_step(probes.timeout));
                    }
                    None => {
                        let due = if failures > 0 {
                            last_attempt + probes.timeout.min(probes.interval)
                        } else {
                            self.streams.proven().unwrap_or(up_at).max(up_at) + probes.interval
                        };
                        if now >= due {
                            let heard = now.saturating_duration_since(link.last_rx);
                            if self.streams.relay_open() > 0 && heard < schedule.busy_interval {
                                // An operator stream moving data proves the path already.
                                self.streams.proved(now);
                            } else {
                                last_attempt = now;
                                probing = Some((now, probes.start(self.handle)));
                            }
                            continue;
                        }
                        wake = wake.min(due);
                    }
                }
            }
            let probe = async {
                match probing.as_mut() {
                    Some((_, run)) => run.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.handle.disconnect("agent stopping");
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.handle.closed()).await;
                    return Ok(());
                }
                why = self.handle.closed() => {
                    return Err(format!("connection to relay {relay} lost: {why}"));
                }
                () = tokio::time::sleep_until(wake.into()) => {}
                result = probe => {
                    let Some((sent, _)) = probing.take() else { continue };
                    match &result {
                        Ok(()) => {
                            failures = 0;
                            self.streams.proved(Instant::now());
                        }
                        Err(_) => failures += 1,
                    }
                    self.record_probe(sent, result.clone());
                    if let Err(e) = result && failures >= PROBE_FAILURES_FATAL {
                        return Err(format!(
                            "tunnel probe through relay {relay} failed {failures} times in a row ({e}); reconnecting"
                        ));
                    }
                }
            }
        }
    }

    fn offer_health(&mut self) {
        if let Some((health, outbox)) = &mut self.health {
            outbox.offer(health, self.handle, self.status);
        }
    }

    fn record_probe(&self, sent: Instant, result: Result<(), String>) {
        let rtt = sent.elapsed();
        match &result {
            Ok(()) => tracing::debug!("probe ok in {rtt:?}"),
            Err(e) => tracing::warn!("tunnel probe failed: {e}"),
        }
        self.status.update(|s| {
            s.probes += 1;
            s.last_probe = Some(ProbeStatus {
                at: now_rfc3339(),
                ok: result.is_ok(),
                rtt_ms: result.is_ok().then_some(rtt.as_secs_f64() * 1000.0),
                error: result.err(),
            })
        });
    }
}

/// How often progress is checked while something waits for an answer.
fn poll_step(timeout: Duration) -> Duration {
    (timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// The wall-clock time `ago` before now, as RFC 3339.
fn now_rfc3339_minus(ago: Duration) -> String {
    let secs = std::time::SystemTime::now()
        .checked_sub(ago)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    burrow_proto::time::format_rfc3339(secs)
}

/// The probe through a burrow relay, one round trip: the agent asks the relay to open a stream
/// to this device's probe endpoint (the route every operator stream takes) and waits for that
/// stream to arrive here; the handler answers it with a refusal, which ends it.
async fn routed_probe(handle: Handle, port: u16, pending: PendingProbe) -> Result<(), String> {
    let nonce: u32 = rand::random();
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel();
    *pending.lock().unwrap_or_else(|e| e.into_inner()) = Some((nonce, arrived_tx));
    let open = handle.open(OpenKind::DirectTcpip {
        host: FORWARD_BIND.into(),
        port: u32::from(port),
        originator: burrow_proto::PROBE_ORIGIN.into(),
        originator_port: nonce,
    });
    tokio::pin!(open);
    tokio::select! {
        biased;
        arrived = arrived => arrived.map_err(|_| "the session ended".to_string()),
        opened = &mut open => match opened {
            // The relay answers after the stream arrived; give the handler its turn.
            Ok(_) => Err("the relay routed no stream back to this device".into()),
            Err(e) if e.reason != 0 => Err("the relay routed no stream back to this device".into()),
            Err(e) => Err(format!("relay refused the probe: {e}")),
        },
    }
}

/// The probe through a stock sshd relay: a real connection to the forwarded port on the relay,
/// whose far end echoes a random nonce.
async fn echo_probe(handle: Handle, port: u16) -> Result<(), String> {
    let mut stream = handle
        .open(OpenKind::DirectTcpip {
            host: FORWARD_BIND.into(),
            port: u32::from(port),
            originator: "127.0.0.1".into(),
            originator_port: 0,
        })
        .await
        .map_err(|e| format!("relay refused the probe channel: {e}"))?;
    let nonce: [u8; PROBE_NONCE_LEN] = rand::random();
    stream.write_all(&nonce).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut back = [0u8; PROBE_NONCE_LEN];
    stream
        .read_exact(&mut back)
        .await
        .map_err(|e| format!("echo did not come back: {e}"))?;
    let _ = stream.shutdown().await;
    if back == nonce {
        Ok(())
    } else {
        Err("echo came back altered".into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_aeads_offered_in_an_order_that_fits_this_cpu() {
        let offered = super::preferred_ciphers();
        assert_eq!(offered.len(), 2);
        assert!(offered.contains(&super::AES_256_GCM));
        assert!(offered.contains(&super::CHACHA20_POLY1305));
        assert_eq!(offered[0] == super::AES_256_GCM, super::aes_instructions());
    }
}
