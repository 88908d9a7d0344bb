//! Host key rotation as OpenSSH does it (its PROTOCOL file, section 2.5): after
//! authentication a server announces every host key it holds (`hostkeys-00@openssh.com`, one
//! string per key blob, no reply wanted); a client that wants to learn the ones it does not
//! know yet asks the server to prove it holds them (`hostkeys-prove-00@openssh.com`, the same
//! list), and the server answers REQUEST_SUCCESS with one signature per key, in order, each
//! over `string "hostkeys-prove-00@openssh.com" || string session_id || string key blob`.
//! Binding the signatures to the session id means they cannot be replayed into another
//! connection. Only then does the client trust a new key.

use std::sync::Arc;

use crate::kex::HostKey;
use crate::msg;
use crate::wire::{Reader, WireError, Writer};

/// The announcement's request name.
pub const ANNOUNCE: &str = "hostkeys-00@openssh.com";
/// The proof request's name, also the first field of what each proof signs.
pub const PROVE: &str = "hostkeys-prove-00@openssh.com";
/// Keys taken from one message: a relay holds two during a rotation, a cluster a few more.
const MAX_KEYS: usize = 32;
/// Longest key blob taken (an RSA-8192 blob is about 1 KiB).
const MAX_BLOB: usize = 4096;
/// Longest signature blob taken.
const MAX_SIGNATURE: usize = 4096;

/// The keys of an announcement or a proof request: key blobs until the message ends.
pub(crate) fn parse_keys(r: &mut Reader<'_>) -> Result<Vec<Vec<u8>>, WireError> {
    let mut keys = Vec::new();
    while r.remaining() > 0 {
        if keys.len() >= MAX_KEYS {
            return Err(WireError::Invalid {
                field: "host keys",
                why: "more keys than any server holds",
            });
        }
        keys.push(r.string(MAX_BLOB, "host key")?.to_vec());
    }
    Ok(keys)
}

/// A GLOBAL_REQUEST named `name` carrying `keys`.
pub(crate) fn request(name: &str, want_reply: bool, keys: &[Vec<u8>]) -> Vec<u8> {
    let mut w = Writer::message(msg::GLOBAL_REQUEST);
    w.string(name.as_bytes()).bool(want_reply);
    for k in keys {
        w.string(k);
    }
    w.into_bytes()
}

/// What a proof of `key` signs in the session `session_id`.
fn signed_data(session_id: &[u8], key: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.string(PROVE.as_bytes()).string(session_id).string(key);
    w.into_bytes()
}

/// The answer to a proof request for `asked`: REQUEST_SUCCESS with a signature by each, or
/// REQUEST_FAILURE when one of them is not a key this server holds (a signature cannot be
/// left out: the client reads them by position).
pub(crate) fn answer(held: &[Arc<HostKey>], session_id: &[u8], asked: &[Vec<u8>]) -> Vec<u8> {
    let mut w = Writer::message(msg::REQUEST_SUCCESS);
    for blob in asked {
        let Some(key) = held.iter().find(|k| k.blob() == *blob) else {
            return vec![msg::REQUEST_FAILURE];
        };
        w.string(&key.sign(&signed_data(session_id, blob)));
    }
    w.into_bytes()
}

/// Checks the server's answer (after its message number) to our proof request for `asked`:
/// one valid signature by each key, in order, and nothing after.
pub(crate) fn check_answer(
    session_id: &[u8],
    asked: &[Vec<u8>],
    answer: &[u8],
) -> Result<(), String> {
    let mut r = Reader::new(answer);
    for (i, key) in asked.iter().enumerate() {
        let signature = r
            .string(MAX_SIGNATURE, "host key proof")
            .map_err(|e| format!("the proof of host key {}: {e}", i.saturating_add(1)))?;
        crate::kex::verify_host_signature(key, signature, &signed_data(session_id, key))
            .map_err(|e| format!("the proof of host key {}: {e}", i.saturating_add(1)))?;
    }
    r.finish().map_err(|e| format!("the host key proofs: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> Arc<HostKey> {
        Arc::new(HostKey::from_seed(&[seed; 32]).expect("seed"))
    }

    #[test]
    fn a_proof_checks_only_for_its_session_and_keys() {
        let (old, new) = (key(1), key(2));
        let held = [old.clone(), new.clone()];
        let asked = vec![new.blob()];
        let reply = answer(&held, b"session-a", &asked);
        assert_eq!(reply.first(), Some(&msg::REQUEST_SUCCESS));
        let body = reply.get(1..).unwrap_or_default();
        assert_eq!(check_answer(b"session-a", &asked, body), Ok(()));
        // Replayed into another session, or offered for another key: refused.
        assert!(check_answer(b"session-b", &asked, body).is_err());
        assert!(check_answer(b"session-a", &[old.blob()], body).is_err());
        // A key the server does not hold cannot be proved: the whole request fails.
        let reply = answer(&held, b"session-a", &[new.blob(), key(3).blob()]);
        assert_eq!(reply, vec![msg::REQUEST_FAILURE]);
        // Two keys, in order; one signature short, or one too many, is refused.
        let both = vec![old.blob(), new.blob()];
        let reply = answer(&held, b"s", &both);
        let body = reply.get(1..).unwrap_or_default();
        assert_eq!(check_answer(b"s", &both, body), Ok(()));
        assert!(check_answer(b"s", &[old.blob()], body).is_err());
        assert!(check_answer(b"s", &[new.blob(), old.blob()], body).is_err());
    }

    #[test]
    fn hostile_key_lists_are_errors_not_panics() {
        let mut seed = 7u64;
        for _ in 0..2000 {
            let len = (crate::xorshift(&mut seed) % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| crate::xorshift(&mut seed) as u8 % 8)
                .collect();
            let _ = parse_keys(&mut Reader::new(&bytes));
            let _ = check_answer(b"s", &[key(1).blob()], &bytes);
        }
        let many = request(ANNOUNCE, false, &vec![vec![1u8]; MAX_KEYS + 1]);
        let mut r = Reader::new(&many);
        let _ = r.u8("n");
        let _ = r.utf8(64, "name");
        let _ = r.bool("want reply");
        assert!(parse_keys(&mut r).is_err());
    }
}
