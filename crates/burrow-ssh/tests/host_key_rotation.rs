//! Host key rotation between two sessions in memory: a server holding a new key beside the
//! one it exchanges keys with announces both after authentication; a client that pins only
//! the old one asks proof of the new one and learns it only once the proof checks out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use burrow_ssh::auth::{ClientKey, Credential, Decision, method};
use burrow_ssh::channel::Limits;
use burrow_ssh::kex::HostKey;
use burrow_ssh::session::{Event, Session, Side};
use burrow_ssh::transport::{Config, Role};

fn host(seed: u8) -> Arc<HostKey> {
    Arc::new(HostKey::from_seed(&[seed; 32]).expect("host key"))
}

/// A logged-in pair: the server exchanges keys with `kex` and also holds `extra` and
/// announces `peers`; the client trusts `pinned` and learns.
fn pair(
    kex: &Arc<HostKey>,
    extra: &[Arc<HostKey>],
    peers: &[Vec<u8>],
    pinned: Vec<Vec<u8>>,
    announce: bool,
) -> Vec<Event> {
    let now = Instant::now();
    let server = Config {
        role: Role::Server,
        host_key: Some(kex.clone()),
        announce_host_keys: announce,
        extra_host_keys: extra.to_vec(),
        peer_host_keys: peers.to_vec(),
        ..Default::default()
    };
    let client = Config {
        role: Role::Client,
        host_key_check: Some(Box::new(move |k| pinned.iter().any(|p| p == k))),
        learn_host_keys: true,
        ..Default::default()
    };
    let key =
        ssh_key::PrivateKey::random(&mut rand::rng(), ssh_key::Algorithm::Ed25519).expect("keygen");
    let mut c = Session::new(
        client,
        Side::Client {
            user: "pi".into(),
            credentials: vec![Credential::Key(Box::new(ClientKey::new(key)))],
        },
        Limits::default(),
        now,
    );
    let mut s = Session::new(
        server,
        Side::Server {
            methods: vec![method::PUBLICKEY],
            max_attempts: 6,
        },
        Limits::default(),
        now,
    );
    let mut events = VecDeque::new();
    loop {
        let mut moved = false;
        while let Some(b) = c.poll_transmit() {
            moved = true;
            s.receive(&b).expect("server takes");
        }
        while let Some(e) = s.poll_event() {
            if matches!(e, Event::Auth(_)) {
                s.decide(Decision::Accept).expect("decide");
            }
        }
        while let Some(b) = s.poll_transmit() {
            moved = true;
            c.receive(&b).expect("client takes");
        }
        while let Some(e) = c.poll_event() {
            events.push_back(e);
        }
        if !moved {
            break;
        }
    }
    assert!(c.authenticated(), "logged in");
    events.into()
}

fn learned(events: &[Event]) -> Vec<Result<Vec<Vec<u8>>, String>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::HostKeys(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_client_learns_the_new_key_the_server_proves() {
    let (old, new) = (host(1), host(2));
    let events = pair(
        &old,
        std::slice::from_ref(&new),
        &[],
        vec![old.blob()],
        true,
    );
    assert_eq!(learned(&events), vec![Ok(vec![new.blob()])]);
    // A client that knows both asks nothing; a server that does not announce tells nothing.
    let events = pair(
        &old,
        std::slice::from_ref(&new),
        &[],
        vec![old.blob(), new.blob()],
        true,
    );
    assert_eq!(learned(&events), vec![]);
    let events = pair(
        &old,
        std::slice::from_ref(&new),
        &[],
        vec![old.blob()],
        false,
    );
    assert_eq!(learned(&events), vec![]);
}

#[test]
fn a_key_the_server_does_not_hold_is_not_learned_and_spoils_nothing_else() {
    let (old, new, other_relay) = (host(1), host(2), host(3));
    let events = pair(
        &old,
        std::slice::from_ref(&new),
        &[other_relay.blob()],
        vec![old.blob()],
        true,
    );
    let got = learned(&events);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.contains(&Ok(vec![new.blob()])), "{got:?}");
    assert!(got.iter().any(|r| r.is_err()), "{got:?}");
}
