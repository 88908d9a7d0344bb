//! The server session after a real key exchange and login: arbitrary messages, each sealed
//! under the negotiated keys by a real client transport, so they reach the authentication and
//! connection layers instead of dying at the MAC. The application answers yes to everything,
//! to go as deep as possible.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_ssh::auth::{Decision, method};
use burrow_ssh::channel::{self, Limits};
use burrow_ssh::kex::HostKey;
use burrow_ssh::session::{Event, Session, Side};
use burrow_ssh::transport::{Config, Role, Transport};
use libfuzzer_sys::fuzz_target;

fn config(role: Role, host: &Arc<HostKey>) -> Config {
    Config {
        role,
        software: "fuzz".into(),
        comment: None,
        // curve25519 keeps each run short: the layers above the key exchange are the target
        // (the exchanges themselves are fuzzed through `packet`).
        kex: vec![burrow_ssh::kex::CURVE25519_SHA256.into()],
        ciphers: vec!["aes128-gcm@openssh.com".into()],
        host_key: (role == Role::Server).then(|| host.clone()),
        host_key_check: Some(Box::new(|_| true)),
        rekey_time: Duration::from_secs(3600),
        ..Config::default()
    }
}

fn answer(server: &mut Session) {
    while let Some(e) = server.poll_event() {
        match e {
            Event::Auth(_) => {
                let _ = server.decide(Decision::Accept);
            }
            Event::AuthRefused { .. } => {
                let _ = server.decide(Decision::Reject);
            }
            Event::Connection(channel::Event::Open { channel, .. }) => {
                let _ = server.connection().accept(channel);
            }
            Event::Connection(channel::Event::Request {
                channel,
                want_reply: true,
                ..
            }) => {
                let _ = server.connection().reply(channel, true);
            }
            Event::Connection(channel::Event::Global {
                want_reply: true, ..
            }) => {
                let _ = server.connection().global_reply(true, Some(1));
            }
            Event::Connection(channel::Event::Data { channel, data }) => {
                let _ = server.connection().consume(channel, data.len());
            }
            _ => {}
        }
    }
}

fn pump(client: &mut Transport, server: &mut Session) -> bool {
    for _ in 0..8 {
        while let Some(b) = client.poll_transmit() {
            if server.receive(&b).is_err() {
                return false;
            }
        }
        answer(server);
        while let Some(b) = server.poll_transmit() {
            if client.receive(&b).is_err() {
                return false;
            }
        }
        while client.poll_event().is_some() {}
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let host = Arc::new(HostKey::from_seed(&[2; 32]).expect("seed"));
    let now = Instant::now();
    let mut client = Transport::new(config(Role::Client, &host), now);
    let mut server = Session::new(
        config(Role::Server, &host),
        Side::Server {
            methods: vec![method::PASSWORD],
            max_attempts: 6,
        },
        Limits {
            window: 8192,
            max_packet: 2048,
            ..Limits::default()
        },
        now,
    );
    // Log in by password the way a client would, through the real transport.
    let mut service = vec![5u8, 0, 0, 0, 12];
    service.extend_from_slice(b"ssh-userauth");
    let _ = client.send(service);
    let login = burrow_ssh::messages::AuthRequest {
        user: "fuzz".into(),
        service: "ssh-connection".into(),
        method: burrow_ssh::messages::Method::Password {
            password: "pw".into(),
            change: false,
        },
    };
    let _ = client.send(login.encode());
    if !pump(&mut client, &mut server) || !server.authenticated() {
        return;
    }
    // Then the fuzzer's messages: a length byte (pairs) and the payload.
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (payload, tail) = tail.split_at(n);
        if !payload.is_empty() && client.send(payload.to_vec()).is_err() {
            return;
        }
        if !pump(&mut client, &mut server) {
            return;
        }
        rest = tail;
    }
});
