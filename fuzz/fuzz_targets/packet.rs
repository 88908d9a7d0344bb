//! The transport as a server, fed arbitrary bytes after a valid identification line: packet
//! framing, lengths, padding, KEXINIT parsing and the key exchange's message order.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_ssh::kex::HostKey;
use burrow_ssh::transport::{Config, Role, Transport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let host = Arc::new(HostKey::from_seed(&[1; 32]).expect("seed"));
    let mut t = Transport::new(
        Config {
            role: Role::Server,
            software: "fuzz".into(),
            comment: None,
            kex: burrow_ssh::kex::methods(),
            ciphers: burrow_ssh::crypto::CIPHERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            host_key: Some(host),
            host_key_check: None,
            rekey_bytes: 1 << 20,
            rekey_time: Duration::from_secs(3600),
            ..Config::default()
        },
        Instant::now(),
    );
    if t.receive(b"SSH-2.0-fuzz\r\n").is_err() {
        return;
    }
    // In pieces, as a socket would deliver them.
    for piece in data.chunks(97) {
        if t.receive(piece).is_err() {
            break;
        }
        while t.poll_transmit().is_some() {}
        while t.poll_event().is_some() {}
    }
});
