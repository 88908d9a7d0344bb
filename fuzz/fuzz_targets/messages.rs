//! Every message parser, and the authentication and connection state machines, on arbitrary
//! payloads: the first byte picks which.
#![no_main]

use burrow_ssh::auth::{ClientAuth, ServerAuth, method};
use burrow_ssh::channel::{Connection, Limits};
use burrow_ssh::kexinit::KexInit;
use burrow_ssh::messages::{AuthRequest, Disconnect, ExtInfo, decode_info_response};
use burrow_ssh::version::VersionReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 8 {
        0 => {
            let _ = KexInit::decode(rest);
        }
        1 => {
            let _ = AuthRequest::decode(rest);
            let _ = decode_info_response(rest);
        }
        2 => {
            let _ = Disconnect::decode(rest);
            let _ = ExtInfo::decode(rest).map(|e| e.sig_algs());
        }
        3 => {
            let mut v = VersionReader::new(pick & 0x80 != 0);
            for piece in rest.chunks(5) {
                if !matches!(v.feed(piece), Ok(None)) {
                    break;
                }
            }
        }
        4 => {
            let mut auth = ServerAuth::new(
                vec![
                    method::PUBLICKEY,
                    method::PASSWORD,
                    method::KEYBOARD_INTERACTIVE,
                ],
                6,
            );
            let _ = auth.receive(rest.to_vec(), b"session");
        }
        5 => {
            let mut auth = ClientAuth::new("fuzz", Vec::new());
            let _ = auth.receive(rest, b"session");
        }
        _ => {
            // A connection with one channel open both ways, then arbitrary messages, each
            // prefixed by its length byte.
            let mut a = Connection::new(Limits {
                window: 4096,
                max_packet: 1024,
                ..Limits::default()
            });
            let mut b = Connection::new(Limits {
                window: 4096,
                max_packet: 1024,
                ..Limits::default()
            });
            let Ok(id) = a.open(&burrow_ssh::channel::OpenKind::Session) else {
                return;
            };
            while let Some(m) = a.poll_transmit() {
                let _ = b.receive(m);
            }
            if let Some(burrow_ssh::channel::Event::Open { channel, .. }) = b.poll_event() {
                let _ = b.accept(channel);
            }
            while let Some(m) = b.poll_transmit() {
                let _ = a.receive(m);
            }
            let _ = a.send(id, b"hello");
            let mut rest = rest;
            while let Some((&len, tail)) = rest.split_first() {
                let n = usize::from(len).min(tail.len());
                let (msg, tail) = tail.split_at(n);
                if b.receive(msg.to_vec()).is_err() {
                    break;
                }
                while let Some(e) = b.poll_event() {
                    if let burrow_ssh::channel::Event::Data { channel, data } = e {
                        let _ = b.consume(channel, data.len());
                    }
                }
                while b.poll_transmit().is_some() {}
                rest = tail;
            }
        }
    }
});
