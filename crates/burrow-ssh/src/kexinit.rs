//! `SSH_MSG_KEXINIT` (RFC 4253 §7.1) and the negotiation of algorithms from two of them: for
//! each kind, the first of the client's names that the server also lists. Names that are not
//! algorithms but markers (`ext-info-c`, RFC 8308; `kex-strict-*-v00@openssh.com`, OpenSSH's
//! strict key exchange against Terrapin) are kept out of the key exchange choice and reported
//! on their own.

use crate::msg;
use crate::wire::{Reader, WireError, Writer};

/// The client's marker for `ext-info` (RFC 8308 §2.1).
pub const EXT_INFO_C: &str = "ext-info-c";
/// The server's marker for `ext-info`.
pub const EXT_INFO_S: &str = "ext-info-s";
/// The client's marker for strict key exchange.
pub const STRICT_C: &str = "kex-strict-c-v00@openssh.com";
/// The server's marker for strict key exchange.
pub const STRICT_S: &str = "kex-strict-s-v00@openssh.com";

fn is_marker(name: &str) -> bool {
    matches!(name, EXT_INFO_C | EXT_INFO_S | STRICT_C | STRICT_S)
}

/// Ciphers whose authentication is built in: the MAC negotiated beside them is not used.
pub fn is_aead(cipher: &str) -> bool {
    matches!(
        cipher,
        "chacha20-poly1305@openssh.com" | "aes128-gcm@openssh.com" | "aes256-gcm@openssh.com"
    )
}

/// One side's offer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KexInit {
    /// 16 random bytes.
    pub cookie: [u8; 16],
    /// Key exchange methods, markers included.
    pub kex: Vec<String>,
    /// Host key algorithms.
    pub host_key: Vec<String>,
    /// Ciphers client to server, then server to client.
    pub cipher_c2s: Vec<String>,
    /// Ciphers server to client.
    pub cipher_s2c: Vec<String>,
    /// MACs client to server.
    pub mac_c2s: Vec<String>,
    /// MACs server to client.
    pub mac_s2c: Vec<String>,
    /// Compression client to server.
    pub compression_c2s: Vec<String>,
    /// Compression server to client.
    pub compression_s2c: Vec<String>,
    /// Languages client to server (empty in practice).
    pub language_c2s: Vec<String>,
    /// Languages server to client.
    pub language_s2c: Vec<String>,
    /// Whether a guessed key exchange packet follows.
    pub first_kex_follows: bool,
}

impl KexInit {
    /// The message, as it is sent and as it enters the exchange hash.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::message(msg::KEXINIT);
        w.raw(&self.cookie);
        for list in [
            &self.kex,
            &self.host_key,
            &self.cipher_c2s,
            &self.cipher_s2c,
            &self.mac_c2s,
            &self.mac_s2c,
            &self.compression_c2s,
            &self.compression_s2c,
            &self.language_c2s,
            &self.language_s2c,
        ] {
            w.name_list(list);
        }
        w.bool(self.first_kex_follows).u32(0);
        w.into_bytes()
    }

    /// Reads a KEXINIT payload (message number included).
    pub fn decode(payload: &[u8]) -> Result<KexInit, WireError> {
        let mut r = Reader::new(payload);
        if r.u8("message number")? != msg::KEXINIT {
            return Err(WireError::Invalid {
                field: "message number",
                why: "not KEXINIT",
            });
        }
        let cookie: [u8; 16] = r
            .bytes(16, "cookie")?
            .try_into()
            .map_err(|_| WireError::Truncated { field: "cookie" })?;
        let mut list = |field| -> Result<Vec<String>, WireError> {
            Ok(r.name_list(field)?
                .into_iter()
                .map(str::to_string)
                .collect())
        };
        let kex = list("kex_algorithms")?;
        let host_key = list("server_host_key_algorithms")?;
        let cipher_c2s = list("encryption_algorithms_client_to_server")?;
        let cipher_s2c = list("encryption_algorithms_server_to_client")?;
        let mac_c2s = list("mac_algorithms_client_to_server")?;
        let mac_s2c = list("mac_algorithms_server_to_client")?;
        let compression_c2s = list("compression_algorithms_client_to_server")?;
        let compression_s2c = list("compression_algorithms_server_to_client")?;
        let language_c2s = list("languages_client_to_server")?;
        let language_s2c = list("languages_server_to_client")?;
        let first_kex_follows = r.bool("first_kex_packet_follows")?;
        let _reserved = r.u32("reserved")?;
        r.finish()?;
        Ok(KexInit {
            cookie,
            kex,
            host_key,
            cipher_c2s,
            cipher_s2c,
            mac_c2s,
            mac_s2c,
            compression_c2s,
            compression_s2c,
            language_c2s,
            language_s2c,
            first_kex_follows,
        })
    }
}

/// What two offers agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Key exchange method.
    pub kex: String,
    /// Host key algorithm.
    pub host_key: String,
    /// Cipher client to server.
    pub cipher_c2s: String,
    /// Cipher server to client.
    pub cipher_s2c: String,
    /// MAC client to server; `None` with an AEAD cipher.
    pub mac_c2s: Option<String>,
    /// MAC server to client; `None` with an AEAD cipher.
    pub mac_s2c: Option<String>,
    /// Compression client to server.
    pub compression_c2s: String,
    /// Compression server to client.
    pub compression_s2c: String,
    /// Both sides asked for strict key exchange.
    pub strict: bool,
    /// The client accepts `SSH_MSG_EXT_INFO` from the server.
    pub ext_info_to_client: bool,
    /// The server accepts `SSH_MSG_EXT_INFO` from the client.
    pub ext_info_to_server: bool,
    /// A guessed key exchange packet follows that guessed wrong and must be ignored.
    pub ignore_guess: bool,
}

/// No algorithm in common for one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCommonAlgorithm {
    /// Which kind.
    pub kind: &'static str,
    /// What the client offered.
    pub client: Vec<String>,
    /// What the server offered.
    pub server: Vec<String>,
}

impl std::fmt::Display for NoCommonAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no {} in common: the client offers {}, the server {}",
            self.kind,
            self.client.join(","),
            self.server.join(",")
        )
    }
}

impl std::error::Error for NoCommonAlgorithm {}

fn choose(
    kind: &'static str,
    client: &[String],
    server: &[String],
) -> Result<String, NoCommonAlgorithm> {
    client
        .iter()
        .filter(|c| !is_marker(c))
        .find(|c| server.contains(c))
        .cloned()
        .ok_or_else(|| NoCommonAlgorithm {
            kind,
            client: client.to_vec(),
            server: server.to_vec(),
        })
}

/// Negotiates from the client's and the server's offers (RFC 4253 §7.1).
pub fn negotiate(client: &KexInit, server: &KexInit) -> Result<Negotiated, NoCommonAlgorithm> {
    let kex = choose("key exchange method", &client.kex, &server.kex)?;
    let host_key = choose("host key algorithm", &client.host_key, &server.host_key)?;
    let cipher_c2s = choose(
        "cipher (client to server)",
        &client.cipher_c2s,
        &server.cipher_c2s,
    )?;
    let cipher_s2c = choose(
        "cipher (server to client)",
        &client.cipher_s2c,
        &server.cipher_s2c,
    )?;
    let mac_c2s = if is_aead(&cipher_c2s) {
        None
    } else {
        Some(choose(
            "MAC (client to server)",
            &client.mac_c2s,
            &server.mac_c2s,
        )?)
    };
    let mac_s2c = if is_aead(&cipher_s2c) {
        None
    } else {
        Some(choose(
            "MAC (server to client)",
            &client.mac_s2c,
            &server.mac_s2c,
        )?)
    };
    let compression_c2s = choose(
        "compression (client to server)",
        &client.compression_c2s,
        &server.compression_c2s,
    )?;
    let compression_s2c = choose(
        "compression (server to client)",
        &client.compression_s2c,
        &server.compression_s2c,
    )?;
    let first = |list: &[String]| list.iter().find(|n| !is_marker(n)).cloned();
    // RFC 4253 §7: a guess is right only if both sides' preferred kex and host key agree.
    let guessed_wrong = |follows: bool| {
        follows
            && (first(&client.kex) != first(&server.kex)
                || client.host_key.first() != server.host_key.first())
    };
    Ok(Negotiated {
        kex,
        host_key,
        cipher_c2s,
        cipher_s2c,
        mac_c2s,
        mac_s2c,
        compression_c2s,
        compression_s2c,
        strict: client.kex.iter().any(|n| n == STRICT_C)
            && server.kex.iter().any(|n| n == STRICT_S),
        ext_info_to_client: client.kex.iter().any(|n| n == EXT_INFO_C),
        ext_info_to_server: server.kex.iter().any(|n| n == EXT_INFO_S),
        ignore_guess: guessed_wrong(client.first_kex_follows)
            || guessed_wrong(server.first_kex_follows),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &str) -> Vec<String> {
        list.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn offer(kex: &str, ciphers: &str, macs: &str) -> KexInit {
        KexInit {
            cookie: [7; 16],
            kex: names(kex),
            host_key: names("ssh-ed25519,rsa-sha2-512"),
            cipher_c2s: names(ciphers),
            cipher_s2c: names(ciphers),
            mac_c2s: names(macs),
            mac_s2c: names(macs),
            compression_c2s: names("none"),
            compression_s2c: names("none"),
            ..KexInit::default()
        }
    }

    #[test]
    fn encodes_and_decodes_an_openssh_like_offer() {
        let o = offer(
            "sntrup761x25519-sha512,curve25519-sha256,ext-info-c,kex-strict-c-v00@openssh.com",
            "chacha20-poly1305@openssh.com,aes128-ctr",
            "hmac-sha2-256-etm@openssh.com",
        );
        let bytes = o.encode();
        assert_eq!(bytes.first(), Some(&msg::KEXINIT));
        assert_eq!(KexInit::decode(&bytes), Ok(o));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(KexInit::decode(&trailing).is_err());
        assert!(KexInit::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn the_clients_order_wins_and_markers_are_not_methods() {
        let client = offer(
            "ext-info-c,sntrup761x25519-sha512,curve25519-sha256,kex-strict-c-v00@openssh.com",
            "aes128-ctr,chacha20-poly1305@openssh.com",
            "hmac-sha2-256-etm@openssh.com",
        );
        let server = offer(
            "curve25519-sha256,kex-strict-s-v00@openssh.com,ext-info-c",
            "chacha20-poly1305@openssh.com,aes128-ctr",
            "hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com",
        );
        let n = negotiate(&client, &server).expect("common ground");
        assert_eq!(n.kex, "curve25519-sha256");
        assert_eq!(n.cipher_c2s, "aes128-ctr");
        assert_eq!(n.mac_c2s.as_deref(), Some("hmac-sha2-256-etm@openssh.com"));
        assert!(n.strict && n.ext_info_to_client && !n.ext_info_to_server);
        // A marker alone is not a method.
        let lonely = offer("ext-info-c", "aes128-ctr", "hmac-sha2-256");
        let err = negotiate(&lonely, &lonely).expect_err("no method");
        assert_eq!(err.kind, "key exchange method");
        assert!(err.to_string().contains("ext-info-c"));
    }

    #[test]
    fn aead_ciphers_need_no_mac_and_strictness_needs_both_sides() {
        let client = offer(
            "curve25519-sha256,kex-strict-c-v00@openssh.com",
            "aes256-gcm@openssh.com",
            "",
        );
        let server = offer(
            "curve25519-sha256",
            "aes256-gcm@openssh.com",
            "hmac-sha2-256",
        );
        let n = negotiate(&client, &server).expect("aead");
        assert_eq!((n.mac_c2s, n.mac_s2c), (None, None));
        assert!(!n.strict);
        // A CTR cipher with no common MAC fails, naming the MAC.
        let client = offer(
            "curve25519-sha256",
            "aes128-ctr",
            "hmac-sha2-512-etm@openssh.com",
        );
        let server = offer(
            "curve25519-sha256",
            "aes128-ctr",
            "hmac-sha2-256-etm@openssh.com",
        );
        let err = negotiate(&client, &server).expect_err("no mac");
        assert!(err.kind.starts_with("MAC"));
    }

    #[test]
    fn a_wrong_guess_is_to_be_ignored() {
        let mut client = offer(
            "curve25519-sha256,mlkem768x25519-sha256",
            "aes128-ctr",
            "hmac-sha2-256",
        );
        client.first_kex_follows = true;
        let server = offer(
            "mlkem768x25519-sha256,curve25519-sha256",
            "aes128-ctr",
            "hmac-sha2-256",
        );
        let n = negotiate(&client, &server).expect("negotiates");
        assert_eq!(n.kex, "curve25519-sha256");
        assert!(n.ignore_guess);
        let same = offer("curve25519-sha256", "aes128-ctr", "hmac-sha2-256");
        let mut guessing = same.clone();
        guessing.first_kex_follows = true;
        assert!(
            !negotiate(&guessing, &same)
                .expect("negotiates")
                .ignore_guess
        );
    }

    #[test]
    fn hostile_kexinit_bytes_never_panic() {
        let base = offer("curve25519-sha256", "aes128-ctr", "hmac-sha2-256").encode();
        let mut seed = 3u64;
        for _ in 0..20_000 {
            let mut bytes = base.clone();
            let flips = crate::xorshift(&mut seed) % 4 + 1;
            for _ in 0..flips {
                let at = (crate::xorshift(&mut seed) as usize) % bytes.len();
                bytes[at] = crate::xorshift(&mut seed) as u8;
            }
            let cut = (crate::xorshift(&mut seed) as usize) % (bytes.len() + 1);
            if let Ok(k) = KexInit::decode(&bytes[..cut]) {
                let _ = negotiate(&k, &k);
            }
        }
    }
}
