//! burrow-ssh (the SSH layer under construction) against a real OpenSSH sshd: identification,
//! packet framing, KEXINIT negotiation, curve25519-sha256 with the exchange hash checked by
//! sshd's own Ed25519 signature, strict key exchange, key derivation, and each cipher carrying a
//! service request that sshd answers. Anything we compute differently from OpenSSH fails here.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use burrow_ssh::crypto::{Opener, Sealer};
use burrow_ssh::kex::{Ephemeral, HashInput, derive, exchange_hash, verify_host_signature};
use burrow_ssh::kexinit::{KexInit, STRICT_C, negotiate};
use burrow_ssh::msg;
use burrow_ssh::packet::{ClearReader, Framing};
use burrow_ssh::version::{VersionReader, line};
use burrow_ssh::wire::{Reader, Writer};
use common::*;

struct Conn {
    tcp: TcpStream,
    clear: ClearReader,
}

impl Conn {
    fn send_clear(&mut self, payload: &[u8]) {
        let packet = Framing::CLEAR.frame(payload, |p| p.fill(0));
        self.tcp.write_all(&packet).unwrap();
    }

    fn read_clear(&mut self) -> Vec<u8> {
        loop {
            if let Some(p) = self.clear.next_payload().unwrap() {
                return p;
            }
            let mut buf = [0u8; 4096];
            let n = self.tcp.read(&mut buf).unwrap();
            assert!(n > 0, "sshd closed the connection");
            self.clear.feed(&buf[..n]);
        }
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// One key exchange with sshd offering only `cipher`, then `ssh-userauth` requested and
/// accepted under the new keys.
fn exchange_with_sshd(port: u16, cipher: &str) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let our_id = line("burrow_test", None);
    tcp.write_all(&our_id).unwrap();
    let mut version = VersionReader::new(true);
    let (server_id, rest) = loop {
        let mut buf = [0u8; 512];
        let n = tcp.read(&mut buf).unwrap();
        assert!(n > 0, "sshd closed before its identification");
        if let Some(done) = version.feed(&buf[..n]).unwrap() {
            break done;
        }
    };
    assert!(server_id.software.starts_with("OpenSSH_"), "{server_id:?}");
    let mut conn = Conn {
        tcp,
        clear: ClearReader::default(),
    };
    conn.clear.feed(&rest);
    let server_kexinit = conn.read_clear();
    let server_offer = KexInit::decode(&server_kexinit).expect("sshd's KEXINIT decodes");
    let ours = KexInit {
        cookie: [3; 16],
        kex: names(&["curve25519-sha256", STRICT_C]),
        host_key: names(&["ssh-ed25519"]),
        cipher_c2s: names(&[cipher]),
        cipher_s2c: names(&[cipher]),
        mac_c2s: names(&["hmac-sha2-256-etm@openssh.com"]),
        mac_s2c: names(&["hmac-sha2-256-etm@openssh.com"]),
        compression_c2s: names(&["none"]),
        compression_s2c: names(&["none"]),
        ..KexInit::default()
    };
    let client_kexinit = ours.encode();
    let agreed = negotiate(&ours, &server_offer).expect("common algorithms");
    assert_eq!(agreed.kex, "curve25519-sha256");
    assert!(agreed.strict, "sshd offers strict key exchange");
    conn.send_clear(&client_kexinit);

    let rng = ring::rand::SystemRandom::new();
    let ephemeral = Ephemeral::generate(&rng).unwrap();
    let q_c = ephemeral.public().to_vec();
    let mut init = Writer::message(msg::KEX_ECDH_INIT);
    init.string(&q_c);
    conn.send_clear(&init.into_bytes());
    let reply = conn.read_clear();
    let mut r = Reader::new(&reply);
    assert_eq!(r.u8("msg").unwrap(), msg::KEX_ECDH_REPLY);
    let host_key = r.string(4096, "K_S").unwrap().to_vec();
    let q_s = r.string(64, "Q_S").unwrap().to_vec();
    let signature = r.string(4096, "signature").unwrap().to_vec();
    r.finish().unwrap();
    let secret = ephemeral.agree(&q_s).unwrap();
    let hash = exchange_hash(
        &HashInput {
            client_id: our_id.strip_suffix(b"\r\n").unwrap(),
            server_id: server_id.line.as_bytes(),
            client_kexinit: &client_kexinit,
            server_kexinit: &server_kexinit,
            host_key: &host_key,
            client_public: &q_c,
            server_public: &q_s,
        },
        &secret,
    );
    // sshd signed the exchange hash it computed: ours must be the same.
    verify_host_signature(&host_key, &signature, &hash).expect("sshd's signature over our H");
    assert_eq!(conn.read_clear(), vec![msg::NEWKEYS]);
    conn.send_clear(&[msg::NEWKEYS]);

    let (key_len, iv_len) = burrow_ssh::crypto::key_material(cipher).unwrap();
    let key = |letter, len| derive(&secret, &hash, &hash, letter, len);
    let mut sealer = Sealer::new(cipher, &key(b'C', key_len), &key(b'A', iv_len), None).unwrap();
    let mut opener = Opener::new(cipher, &key(b'D', key_len), &key(b'B', iv_len), None).unwrap();
    // Strict key exchange: sequence numbers start again at zero after NEWKEYS.
    let mut request = Writer::message(msg::SERVICE_REQUEST);
    request.string(b"ssh-userauth");
    let packet = sealer.seal(0, &request.into_bytes(), |p| p.fill(7));
    conn.tcp.write_all(&packet).unwrap();

    let mut pending = conn.clear.take_rest();
    while pending.len() < 4 {
        let mut buf = [0u8; 4096];
        let n = conn.tcp.read(&mut buf).unwrap();
        assert!(n > 0, "sshd refused our first encrypted packet ({cipher})");
        pending.extend_from_slice(&buf[..n]);
    }
    let first: [u8; 4] = pending[..4].try_into().unwrap();
    let whole = opener.length(0, first).expect("a sane length");
    while pending.len() < whole {
        let mut buf = [0u8; 4096];
        let n = conn.tcp.read(&mut buf).unwrap();
        assert!(n > 0, "sshd closed mid-packet");
        pending.extend_from_slice(&buf[..n]);
    }
    let payload = opener
        .open(0, &mut pending[..whole])
        .expect("sshd's packet authenticates under our keys");
    let mut r = Reader::new(payload);
    assert_eq!(r.u8("msg").unwrap(), msg::SERVICE_ACCEPT, "{cipher}");
    assert_eq!(r.string(64, "service").unwrap(), b"ssh-userauth");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_exchange_and_every_cipher_agree_with_openssh_sshd() {
    let dir = tempdir();
    let sshd = TestSshd::start(dir.path(), &[], "").await;
    // The hand-made exchange covers the AEAD ciphers; the state machine below covers all.
    for cipher in burrow_ssh::crypto::CIPHERS
        .into_iter()
        .filter(|c| burrow_ssh::kexinit::is_aead(c))
    {
        let port = sshd.port;
        tokio::task::spawn_blocking(move || exchange_with_sshd(port, cipher))
            .await
            .unwrap();
    }
}

/// The transport state machine as a client of sshd: the first exchange, `ssh-userauth`
/// accepted, an authentication request answered, and a rekey attempted where sshd takes none.
fn transport_session_with_sshd(port: u16, cipher: &str) {
    use burrow_ssh::transport::{Config, Event, Role, Transport};
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut t = Transport::new(
        Config {
            role: Role::Client,
            software: "burrow_test".into(),
            comment: Some("keepalive=150/20".into()),
            kex: burrow_ssh::kex::methods(),
            ciphers: vec![cipher.to_string()],
            host_key: None,
            // The signature over the exchange hash is verified by the transport either way.
            host_key_check: Some(Box::new(|_| true)),
            rekey_bytes: 1 << 30,
            rekey_time: Duration::from_secs(3600),
            ext_info: None,
            ..Default::default()
        },
        std::time::Instant::now(),
    );
    // Runs the exchange until `want` says it saw what it waits for.
    let mut run = |t: &mut Transport, want: &mut dyn FnMut(&Event) -> bool| {
        loop {
            while let Some(bytes) = t.poll_transmit() {
                tcp.write_all(&bytes).unwrap();
            }
            let mut seen = false;
            while let Some(e) = t.poll_event() {
                if let Event::Disconnected(d) = &e {
                    panic!("sshd disconnected ({cipher}): {d:?}");
                }
                seen |= want(&e);
            }
            if seen {
                return;
            }
            let mut buf = [0u8; 8192];
            let n = tcp.read(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "waiting for sshd ({cipher}, in kex: {}, keyed before: {}): {e}",
                    t.in_kex(),
                    t.session_id().is_some()
                )
            });
            assert!(n > 0, "sshd closed the connection ({cipher})");
            t.receive(&buf[..n])
                .unwrap_or_else(|e| panic!("{cipher}: {e}"));
        }
    };
    run(&mut t, &mut |e| {
        matches!(e, Event::KeysReady { first: true })
    });
    let mut request = Writer::message(msg::SERVICE_REQUEST);
    request.string(b"ssh-userauth");
    t.send(request.into_bytes()).unwrap();
    run(
        &mut t,
        &mut |e| matches!(e, Event::Message(m) if m.first() == Some(&msg::SERVICE_ACCEPT)),
    );
    let mut none = Writer::message(msg::USERAUTH_REQUEST);
    none.string(b"nobody")
        .string(b"ssh-connection")
        .string(b"none");
    t.send(none.into_bytes()).unwrap();
    run(
        &mut t,
        &mut |e| matches!(e, Event::Message(m) if m.first() == Some(&msg::USERAUTH_FAILURE)),
    );
    // sshd takes no key re-exchange before authentication ends: it answers our KEXINIT with
    // UNIMPLEMENTED, and the transport says so instead of waiting for ever.
    t.rekey();
    while let Some(bytes) = t.poll_transmit() {
        tcp.write_all(&bytes).unwrap();
    }
    let mut buf = [0u8; 8192];
    let n = tcp.read(&mut buf).unwrap();
    let err = t.receive(&buf[..n]).expect_err("a refused rekey");
    assert!(err.message.contains("re-exchange"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transport_state_machine_keys_a_session_with_openssh_sshd() {
    let dir = tempdir();
    let sshd = TestSshd::start(dir.path(), &[], "").await;
    for cipher in burrow_ssh::crypto::CIPHERS {
        let port = sshd.port;
        tokio::task::spawn_blocking(move || transport_session_with_sshd(port, cipher))
            .await
            .unwrap();
    }
}
