//! A client and a server session driven against each other in memory: no sockets, no clock.
//! Key exchange, authentication, channels with their windows, rekeying under load, half-close,
//! break, and what a broken or hostile peer gets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_ssh::auth::{ClientKey, Credential, Decision, Question, method};
use burrow_ssh::channel::{self, ChannelId, Limits, OpenKind, Request};
use burrow_ssh::kex::HostKey;
use burrow_ssh::session::{Event, Session, SessionError, Side};
use burrow_ssh::transport::{Config, Role};
use zeroize::Zeroizing;

fn config(role: Role, host: &Arc<HostKey>) -> Config {
    let pinned = host.blob();
    Config {
        role,
        software: "burrow_sim".into(),
        comment: None,
        kex: burrow_ssh::kex::methods(),
        ciphers: burrow_ssh::crypto::CIPHERS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        host_key: (role == Role::Server).then(|| host.clone()),
        host_key_check: Some(Box::new(move |k| k == pinned.as_slice())),
        rekey_bytes: 1 << 30,
        rekey_time: Duration::from_secs(3600),
        ext_info: None,
        ..Default::default()
    }
}

fn ed25519() -> ClientKey {
    let key =
        ssh_key::PrivateKey::random(&mut rand::rng(), ssh_key::Algorithm::Ed25519).expect("keygen");
    ClientKey::new(key)
}

struct Sim {
    c: Session,
    s: Session,
    /// Events the pump saw, per side, that the test has not taken.
    ce: Vec<Event>,
    se: Vec<Event>,
    /// Bytes each way, for the window checks.
    chunk: usize,
}

type Decide<'a> = dyn FnMut(&Question) -> Decision + 'a;

impl Sim {
    fn new(credentials: Vec<Credential>, methods: Vec<&'static str>, limits: Limits) -> Sim {
        let host = Arc::new(HostKey::from_seed(&[9; 32]).expect("host key"));
        let now = Instant::now();
        let c = Session::new(
            config(Role::Client, &host),
            Side::Client {
                user: "op".into(),
                credentials,
            },
            limits,
            now,
        );
        let s = Session::new(
            config(Role::Server, &host),
            Side::Server {
                methods,
                max_attempts: 6,
            },
            limits,
            now,
        );
        Sim {
            c,
            s,
            ce: Vec::new(),
            se: Vec::new(),
            chunk: 1 << 20,
        }
    }

    /// A logged-in pair with the key accepted.
    fn logged_in(limits: Limits) -> Sim {
        let mut sim = Sim::new(
            vec![Credential::Key(Box::new(ed25519()))],
            vec![method::PUBLICKEY],
            limits,
        );
        sim.run(&mut |_| Decision::Accept).expect("login");
        assert!(sim.c.authenticated() && sim.s.authenticated());
        sim.ce.clear();
        sim.se.clear();
        sim
    }

    /// Moves bytes both ways until neither side has any; `decide` answers the server's
    /// questions. Errors name the side that failed.
    fn run(&mut self, decide: &mut Decide<'_>) -> Result<(), (&'static str, SessionError)> {
        loop {
            let mut moved = false;
            while let Some(bytes) = self.c.poll_transmit() {
                moved = true;
                for piece in bytes.chunks(self.chunk) {
                    self.s.receive(piece).map_err(|e| ("server", e))?;
                }
            }
            while let Some(e) = self.s.poll_event() {
                match &e {
                    Event::Auth(q) => {
                        let d = decide(q);
                        self.s.decide(d).map_err(|e| ("server", e))?;
                    }
                    // A refusal of the protocol layer waits for the application's answer.
                    Event::AuthRefused { .. } => {
                        self.s.decide(Decision::Reject).map_err(|e| ("server", e))?;
                    }
                    _ => {}
                }
                self.se.push(e);
            }
            while let Some(bytes) = self.s.poll_transmit() {
                moved = true;
                for piece in bytes.chunks(self.chunk) {
                    self.c.receive(piece).map_err(|e| ("client", e))?;
                }
            }
            while let Some(e) = self.c.poll_event() {
                self.ce.push(e);
            }
            if !moved {
                return Ok(());
            }
        }
    }

    fn pump(&mut self) {
        self.run(&mut |_| Decision::Reject).expect("pump");
    }

    /// The client opens a direct-tcpip channel and the server accepts it.
    fn open(&mut self) -> (ChannelId, ChannelId) {
        let kind = OpenKind::DirectTcpip {
            host: "garage-pi".into(),
            port: 22,
            originator: "127.0.0.1".into(),
            originator_port: 40000,
        };
        let ours = self.c.connection().open(&kind).expect("open");
        self.pump();
        let theirs = take(&mut self.se, |e| match e {
            Event::Connection(channel::Event::Open { channel, kind: k }) if *k == kind => {
                Some(*channel)
            }
            _ => None,
        })
        .expect("server saw the open");
        self.s.connection().accept(theirs).expect("accept");
        self.pump();
        take(&mut self.ce, |e| match e {
            Event::Connection(channel::Event::Opened(c)) if *c == ours => Some(()),
            _ => None,
        })
        .expect("opened");
        (ours, theirs)
    }
}

/// Removes and returns the first event `pick` takes.
fn take<T>(events: &mut Vec<Event>, mut pick: impl FnMut(&Event) -> Option<T>) -> Option<T> {
    let at = events.iter().position(|e| pick(e).is_some())?;
    let e = events.remove(at);
    pick(&e)
}

/// Data that arrived on `channel`, taken out of `events`.
fn data(events: &mut Vec<Event>, channel: ChannelId) -> Vec<u8> {
    let mut out = Vec::new();
    events.retain(|e| match e {
        Event::Connection(channel::Event::Data { channel: c, data }) if *c == channel => {
            out.extend_from_slice(data);
            false
        }
        _ => true,
    });
    out
}

#[test]
fn key_password_and_keyboard_interactive_logins_reach_the_connection_protocol() {
    // A key that is refused, then a wrong password, then the right one.
    let mut sim = Sim::new(
        vec![
            Credential::Key(Box::new(ed25519())),
            Credential::Password(Zeroizing::new("typo".into())),
            Credential::Password(Zeroizing::new("secret".into())),
        ],
        vec![method::PUBLICKEY, method::PASSWORD],
        Limits::default(),
    );
    sim.chunk = 3; // every packet split in pieces
    let mut asked = Vec::new();
    sim.run(&mut |q| {
        asked.push(format!("{q:?}").split(' ').next().unwrap_or("").to_string());
        match q {
            Question::Password { password, .. } if password.as_str() == "secret" => {
                Decision::Accept
            }
            _ => Decision::Reject,
        }
    })
    .expect("login");
    // The client signs at once (no query step), as burrow's agent does.
    assert_eq!(asked, ["Key", "Password", "Password"]);
    assert!(sim.c.authenticated() && sim.s.authenticated());
    assert!(
        sim.se
            .iter()
            .any(|e| matches!(e, Event::Authenticated { user } if user == "op"))
    );
    let (ours, theirs) = sim.open();
    sim.c.connection().send(ours, b"ping").expect("send");
    sim.pump();
    assert_eq!(data(&mut sim.se, theirs), b"ping");

    // Keyboard-interactive only, as PuTTY users meet it.
    let mut sim = Sim::new(
        vec![Credential::Password(Zeroizing::new("secret".into()))],
        vec![method::KEYBOARD_INTERACTIVE],
        Limits::default(),
    );
    sim.run(&mut |q| match q {
        Question::Password {
            password, method, ..
        } if password.as_str() == "secret" && *method == method::KEYBOARD_INTERACTIVE => {
            Decision::Accept
        }
        _ => Decision::Reject,
    })
    .expect("login");
    assert!(sim.c.authenticated());
}

#[test]
fn every_credential_refused_ends_with_a_disconnect_the_client_reports() {
    let mut sim = Sim::new(
        vec![Credential::Password(Zeroizing::new("a".into()))],
        vec![method::PASSWORD],
        Limits::default(),
    );
    let err = sim.run(&mut |_| Decision::Reject).expect_err("refused");
    assert_eq!(err.0, "client");
    assert!(err.1.0.contains("refused every credential"), "{}", err.1);
    // The client said why before it went.
    while let Some(bytes) = sim.c.poll_transmit() {
        let _ = sim.s.receive(&bytes);
    }
    assert!(
        std::iter::from_fn(|| sim.s.poll_event())
            .any(|e| matches!(e, Event::Disconnected(d) if d.description.contains("refused"))),
    );
}

#[test]
fn a_full_window_holds_only_its_own_channel_and_reopens_as_the_reader_takes() {
    let limits = Limits {
        window: 64 * 1024,
        max_packet: 16 * 1024,
        ..Limits::default()
    };
    let mut sim = Sim::logged_in(limits);
    let (slow_c, slow_s) = sim.open();
    let (fast_c, fast_s) = sim.open();
    let blob: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    // The client writes as much as the slow channel takes: exactly one window.
    let mut sent = sim.c.connection().send(slow_c, &blob).expect("send");
    assert_eq!(sent, limits.window as usize);
    assert_eq!(
        sim.c
            .connection()
            .send(slow_c, &blob[sent..])
            .expect("full"),
        0
    );
    sim.pump();
    // The server holds it all, unconsumed: its window is shut...
    let mut got = data(&mut sim.se, slow_s);
    assert_eq!(got.len(), limits.window as usize);
    assert_eq!(sim.s.connection().receive_window(slow_s), Some(0));
    // ...and the other channel is not held back by it.
    let moved = sim
        .c
        .connection()
        .send(fast_c, b"still moving")
        .expect("send");
    assert_eq!(moved, 12);
    sim.pump();
    assert_eq!(data(&mut sim.se, fast_s), b"still moving");
    // The reader takes in small bites; each half window taken reopens the sender.
    while sent < blob.len() {
        let had = got.len();
        sim.s
            .connection()
            .consume(slow_s, 4096.min(had))
            .expect("consume");
        sim.pump();
        let writable = sim
            .ce
            .iter()
            .any(|e| matches!(e, Event::Connection(channel::Event::Writable(c)) if *c == slow_c));
        sim.ce.clear();
        if writable {
            sent += sim
                .c
                .connection()
                .send(slow_c, &blob[sent..])
                .expect("send");
            sim.pump();
        }
        got.extend(data(&mut sim.se, slow_s));
        // Never more outstanding than one window.
        let window = sim.s.connection().receive_window(slow_s).expect("open") as usize;
        assert!(window <= limits.window as usize);
    }
    assert_eq!(got, blob);
}

#[test]
fn rekeying_mid_stream_loses_and_reorders_nothing() {
    let mut sim = Sim::logged_in(Limits::default());
    let (c_ch, s_ch) = sim.open();
    let blob: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
    let mut sent = 0;
    let mut rekeys = 0;
    while sent < blob.len() {
        let n = sim
            .c
            .connection()
            .send(c_ch, &blob[sent..(sent + 10_000).min(blob.len())])
            .expect("send");
        sent += n;
        if sent % 100_000 < 10_000 {
            // Each side in turn starts one, with data in flight behind it.
            if rekeys % 2 == 0 {
                sim.c.transport().rekey();
            } else {
                sim.s.transport().rekey();
            }
            rekeys += 1;
        }
        sim.chunk = 1 + sent % 4096;
        sim.pump();
        let len = data(&mut sim.se, s_ch).len();
        let _ = len;
    }
    assert!(rekeys >= 5);
    // Consume everything, then check what arrived in order end to end.
    let mut sim2 = Sim::logged_in(Limits::default());
    let (a, b) = sim2.open();
    let mut got = Vec::new();
    let mut at = 0;
    while at < blob.len() {
        at += sim2.c.connection().send(a, &blob[at..]).expect("send");
        if at % 3 == 0 {
            sim2.s.transport().rekey();
        } else {
            sim2.c.transport().rekey();
        }
        sim2.pump();
        let piece = data(&mut sim2.se, b);
        sim2.s
            .connection()
            .consume(b, piece.len())
            .expect("consume");
        got.extend(piece);
        sim2.pump();
    }
    assert_eq!(got, blob);
    assert!(sim2.ce.iter().all(|e| !matches!(e, Event::Disconnected(_))));
}

#[test]
fn half_close_each_way_and_break_with_its_length() {
    let mut sim = Sim::logged_in(Limits::default());
    // Server to client half-close: the client's direction keeps going afterwards.
    let (c_ch, s_ch) = sim.open();
    sim.s.connection().send(s_ch, b"banner\n").expect("send");
    sim.s.connection().eof(s_ch).expect("eof");
    sim.pump();
    assert_eq!(data(&mut sim.ce, c_ch), b"banner\n");
    assert!(
        take(&mut sim.ce, |e| {
            matches!(e, Event::Connection(channel::Event::Eof(c)) if *c == c_ch).then_some(())
        })
        .is_some()
    );
    sim.c
        .connection()
        .send(c_ch, b"after their eof")
        .expect("send");
    sim.c.connection().eof(c_ch).expect("eof");
    sim.pump();
    assert_eq!(data(&mut sim.se, s_ch), b"after their eof");
    assert!(
        take(&mut sim.se, |e| {
            matches!(e, Event::Connection(channel::Event::Eof(c)) if *c == s_ch).then_some(())
        })
        .is_some()
    );
    sim.c.connection().close(c_ch).expect("close");
    sim.pump();
    assert!(
        sim.se
            .iter()
            .any(|e| matches!(e, Event::Connection(channel::Event::Closed(c)) if *c == s_ch))
    );
    assert!(
        sim.ce
            .iter()
            .any(|e| matches!(e, Event::Connection(channel::Event::Closed(c)) if *c == c_ch))
    );

    // A console session: pty, shell, then BREAK of 1500 ms, answered.
    let s = sim
        .c
        .connection()
        .open(&OpenKind::Session)
        .expect("session");
    sim.pump();
    let ss = take(&mut sim.se, |e| match e {
        Event::Connection(channel::Event::Open {
            channel,
            kind: OpenKind::Session,
        }) => Some(*channel),
        _ => None,
    })
    .expect("offered");
    sim.s.connection().accept(ss).expect("accept");
    sim.pump();
    sim.c
        .connection()
        .request(s, &Request::Shell, true)
        .expect("shell");
    sim.c
        .connection()
        .request(s, &Request::Break { ms: 1500 }, true)
        .expect("break");
    sim.pump();
    let requests: Vec<Request> = sim
        .se
        .drain(..)
        .filter_map(|e| match e {
            Event::Connection(channel::Event::Request { request, .. }) => Some(request),
            _ => None,
        })
        .collect();
    assert_eq!(requests, [Request::Shell, Request::Break { ms: 1500 }]);
    sim.s.connection().reply(ss, true).expect("shell ok");
    sim.s.connection().reply(ss, true).expect("break ok");
    sim.pump();
    let replies = sim
        .ce
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Connection(channel::Event::RequestReply { success: true, .. })
            )
        })
        .count();
    assert_eq!(replies, 2);
}

#[test]
fn data_for_a_channel_that_is_not_open_ends_the_session_with_a_reason() {
    let mut sim = Sim::logged_in(Limits::default());
    // Data for a channel that was never opened.
    let (c_ch, _) = sim.open();
    sim.c.connection().close(c_ch).expect("close");
    sim.pump();
    let mut forged = vec![burrow_ssh::msg::CHANNEL_DATA];
    forged.extend_from_slice(&77u32.to_be_bytes());
    forged.extend_from_slice(&3u32.to_be_bytes());
    forged.extend_from_slice(b"abc");
    sim.c.transport().send(forged).expect("send");
    let err = sim.run(&mut |_| Decision::Reject).expect_err("refused");
    assert_eq!(err.0, "server");
    assert!(err.1.0.contains("channel 77 is not open"), "{}", err.1);
    // The server said so in a DISCONNECT the client sees.
    while let Some(bytes) = sim.s.poll_transmit() {
        let _ = sim.c.receive(&bytes);
    }
    let said = std::iter::from_fn(|| sim.c.poll_event())
        .any(|e| matches!(e, Event::Disconnected(d) if d.description.contains("channel 77")));
    assert!(said);
}

#[test]
fn a_server_refuses_channel_messages_before_authentication() {
    let host = Arc::new(HostKey::from_seed(&[9; 32]).expect("host key"));
    let now = Instant::now();
    // A raw transport as the client: it completes the key exchange, then sends an open.
    let mut client = burrow_ssh::transport::Transport::new(config(Role::Client, &host), now);
    let mut server = Session::new(
        config(Role::Server, &host),
        Side::Server {
            methods: vec![method::PUBLICKEY],
            max_attempts: 6,
        },
        Limits::default(),
        now,
    );
    let mut open = burrow_ssh::wire::Writer::message(burrow_ssh::msg::CHANNEL_OPEN);
    open.string(b"session").u32(0).u32(1024).u32(1024);
    client.send(open.into_bytes()).expect("queued until keys");
    let mut failure = None;
    for _ in 0..20 {
        while let Some(b) = client.poll_transmit() {
            if let Err(e) = server.receive(&b) {
                failure = Some(e);
            }
        }
        while let Some(b) = server.poll_transmit() {
            let _ = client.receive(&b);
        }
    }
    let failure = failure.expect("refused");
    assert!(failure.0.contains("before authentication"), "{failure}");
}
