//! Every key exchange method, burrow against burrow in memory: each one agrees on keys, carries
//! messages and rekeys; the order of preference puts the post-quantum hybrids first; and a
//! `Q_C` or `Q_S` of the wrong size is refused where it is read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_ssh::kex::{HostKey, METHODS, Method};
use burrow_ssh::msg;
use burrow_ssh::packet::Framing;
use burrow_ssh::transport::{Config, Event, Role, Transport, TransportError};
use burrow_ssh::wire::Writer;

fn config(role: Role, host: &Arc<HostKey>, kex: &[&str]) -> Config {
    let pinned = host.blob();
    Config {
        role,
        software: "burrow_kex".into(),
        comment: None,
        kex: kex.iter().map(|m| m.to_string()).collect(),
        ciphers: vec!["chacha20-poly1305@openssh.com".into()],
        host_key: (role == Role::Server).then(|| host.clone()),
        host_key_check: Some(Box::new(move |k| k == pinned.as_slice())),
        rekey_bytes: 1 << 30,
        rekey_time: Duration::from_secs(3600),
        ext_info: None,
        ..Default::default()
    }
}

/// A client offering `client` and a server offering `server`.
fn pair(client: &[&str], server: &[&str]) -> (Transport, Transport) {
    let host = Arc::new(HostKey::from_seed(&[3; 32]).expect("host key"));
    let now = Instant::now();
    (
        Transport::new(config(Role::Client, &host, client), now),
        Transport::new(config(Role::Server, &host, server), now),
    )
}

/// Moves bytes both ways until neither side has any.
fn pump(c: &mut Transport, s: &mut Transport) -> Result<(), TransportError> {
    loop {
        let mut moved = false;
        while let Some(bytes) = c.poll_transmit() {
            moved = true;
            s.receive(&bytes)?;
        }
        while let Some(bytes) = s.poll_transmit() {
            moved = true;
            c.receive(&bytes)?;
        }
        if !moved {
            return Ok(());
        }
    }
}

fn events(t: &mut Transport) -> Vec<Event> {
    std::iter::from_fn(|| t.poll_event()).collect()
}

fn keys_ready(t: &mut Transport) -> bool {
    events(t)
        .iter()
        .any(|e| matches!(e, Event::KeysReady { .. }))
}

#[test]
fn every_method_agrees_carries_messages_and_rekeys() {
    for name in METHODS {
        // The client offers only this method; the server offers everything.
        let (mut c, mut s) = pair(&[name], &METHODS);
        pump(&mut c, &mut s).expect(name);
        assert!(keys_ready(&mut c) && keys_ready(&mut s), "{name}");
        assert_eq!(c.session_id(), s.session_id(), "{name}");
        // sntrup761x25519-sha512 hashes with SHA-512, the others with SHA-256.
        let hash_len = if name.starts_with("sntrup761") {
            64
        } else {
            32
        };
        assert_eq!(c.session_id().map(<[u8]>::len), Some(hash_len), "{name}");
        c.send(b"\x05one".to_vec()).expect("send");
        pump(&mut c, &mut s).expect(name);
        assert!(events(&mut s).contains(&Event::Message(b"\x05one"[..].into())));
        // A rekey by the server, under the same method, keeps the session identifier.
        let id = c.session_id().map(<[u8]>::to_vec);
        s.rekey();
        pump(&mut c, &mut s).expect(name);
        assert!(keys_ready(&mut c) && keys_ready(&mut s), "{name} rekey");
        assert_eq!(c.session_id().map(<[u8]>::to_vec), id, "{name}");
        s.send(b"\x05two".to_vec()).expect("send");
        pump(&mut c, &mut s).expect(name);
        assert!(events(&mut c).contains(&Event::Message(b"\x05two"[..].into())));
    }
}

/// Both ends offering everything settle on ML-KEM, the first choice; a peer without it gets
/// sntrup761, and one with neither curve25519. The session identifier's length shows which
/// hash ran (SHA-512 only for sntrup761).
#[test]
fn the_post_quantum_hybrids_come_first() {
    assert_eq!(
        METHODS.map(|m| Method::from_name(m).map(Method::post_quantum)),
        [Some(true), Some(true), Some(true), Some(false), Some(false)]
    );
    assert_eq!(METHODS[0], "mlkem768x25519-sha256");
    for (server, hash_len) in [
        (&METHODS[..], 32),
        (&METHODS[1..], 64),
        (
            &["sntrup761x25519-sha512@openssh.com", "curve25519-sha256"][..],
            64,
        ),
        (&METHODS[3..], 32),
    ] {
        let (mut c, mut s) = pair(&METHODS, server);
        pump(&mut c, &mut s).expect("kex");
        assert_eq!(
            s.session_id().map(<[u8]>::len),
            Some(hash_len),
            "{server:?}"
        );
    }
}

/// The bytes one key exchange puts on the wire each way with `method`, KEXINIT included: what
/// the weekly rekey of an idle device costs.
fn kex_bytes(method: &str) -> (usize, usize) {
    let (mut c, mut s) = pair(&[method], &METHODS);
    pump(&mut c, &mut s).expect("first exchange");
    let _ = (events(&mut c), events(&mut s));
    c.rekey();
    let (mut up, mut down) = (0, 0);
    loop {
        let mut moved = false;
        while let Some(bytes) = c.poll_transmit() {
            moved = true;
            up += bytes.len();
            s.receive(&bytes).expect("server");
        }
        while let Some(bytes) = s.poll_transmit() {
            moved = true;
            down += bytes.len();
            c.receive(&bytes).expect("client");
        }
        if !moved {
            return (up, down);
        }
    }
}

/// The hybrids' values are bigger than curve25519's by the KEM's key and ciphertext, and no
/// more: a rekey with ML-KEM costs about 2.3 KB more than with curve25519.
#[test]
fn a_rekey_costs_the_kem_sizes_more_and_no_more() {
    let (c_up, c_down) = kex_bytes("curve25519-sha256");
    let (m_up, m_down) = kex_bytes("mlkem768x25519-sha256");
    let (s_up, s_down) = kex_bytes("sntrup761x25519-sha512");
    // The method's name is in the client's KEXINIT; padding and MACs vary by a block or so.
    let near = |got: usize, want: usize| got.abs_diff(want) <= 64;
    assert!(near(m_up - c_up, 1184), "{m_up} vs {c_up}");
    assert!(near(m_down - c_down, 1088), "{m_down} vs {c_down}");
    assert!(near(s_up - c_up, 1158), "{s_up} vs {c_up}");
    assert!(near(s_down - c_down, 1039), "{s_down} vs {c_down}");
}

/// A client's KEX_ECDH_INIT with a `Q_C` one byte past the method's size is refused where it
/// is read, before the KEM sees it; so is a reply whose `Q_S` is too long.
#[test]
fn a_share_of_the_wrong_size_is_refused_where_it_is_read() {
    for name in METHODS {
        let len = Method::from_name(name).expect("known").client_share_len();
        let (mut c, mut s) = pair(&[name], &METHODS);
        // The client's identification and KEXINIT reach the server; its own KEX_ECDH_INIT is
        // never made (the server's KEXINIT does not reach it).
        while let Some(bytes) = c.poll_transmit() {
            s.receive(&bytes).expect("version and KEXINIT");
        }
        let mut init = Writer::message(msg::KEX_ECDH_INIT);
        init.string(&vec![9u8; len + 1]);
        let packet = Framing::CLEAR.frame(&init.into_bytes(), |p| p.fill(0));
        let err = s.receive(&packet).expect_err("too long");
        assert!(
            err.message.contains(&format!(
                "Q_C of {} bytes is longer than the {len}",
                len + 1
            )),
            "{name}: {err}"
        );
        // One byte short: the method's own check.
        let (mut c, mut s) = pair(&[name], &METHODS);
        while let Some(bytes) = c.poll_transmit() {
            s.receive(&bytes).expect("version and KEXINIT");
        }
        let mut init = Writer::message(msg::KEX_ECDH_INIT);
        init.string(&vec![9u8; len - 1]);
        let packet = Framing::CLEAR.frame(&init.into_bytes(), |p| p.fill(0));
        let err = s.receive(&packet).expect_err("too short");
        assert!(err.message.contains("KEX_ECDH_INIT"), "{name}: {err}");
    }
}
