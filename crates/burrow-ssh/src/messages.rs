//! Transport and authentication messages as values, each with its encoder and a bounded
//! parser: `SSH_MSG_DISCONNECT` (RFC 4253 §11.1), `SSH_MSG_EXT_INFO` (RFC 8308) and
//! `SSH_MSG_USERAUTH_REQUEST` with its methods (RFC 4252, RFC 4256).

use crate::msg;
use crate::wire::{Reader, WireError, Writer};

/// Longest user name, service or method name taken from a peer.
const MAX_NAME: usize = 256;
/// Longest user name taken: long enough that a hostile one is refused and audited (cut short
/// by the application) rather than ending the connection unrecorded; the packet bounds it too.
const MAX_USER: usize = 32 * 1024;
/// Longest free text (descriptions, passwords, prompts).
const MAX_TEXT: usize = 4096;
/// Longest key or signature blob.
const MAX_BLOB: usize = 16 * 1024;
/// Most extensions in one EXT_INFO.
const MAX_EXTENSIONS: u32 = 32;
/// Most keyboard-interactive responses.
const MAX_RESPONSES: u32 = 16;

fn expect(r: &mut Reader<'_>, want: u8, name: &'static str) -> Result<(), WireError> {
    if r.u8("message number")? == want {
        Ok(())
    } else {
        Err(WireError::Invalid {
            field: "message number",
            why: name,
        })
    }
}

/// Disconnect reason codes (RFC 4253 §11.1) used by burrow.
pub mod reason {
    /// `SSH_DISCONNECT_PROTOCOL_ERROR`.
    pub const PROTOCOL_ERROR: u32 = 2;
    /// `SSH_DISCONNECT_KEY_EXCHANGE_FAILED`.
    pub const KEY_EXCHANGE_FAILED: u32 = 3;
    /// `SSH_DISCONNECT_MAC_ERROR`.
    pub const MAC_ERROR: u32 = 5;
    /// `SSH_DISCONNECT_SERVICE_NOT_AVAILABLE`.
    pub const SERVICE_NOT_AVAILABLE: u32 = 7;
    /// `SSH_DISCONNECT_PROTOCOL_VERSION_NOT_SUPPORTED`.
    pub const PROTOCOL_VERSION_NOT_SUPPORTED: u32 = 8;
    /// `SSH_DISCONNECT_HOST_KEY_NOT_VERIFIABLE`.
    pub const HOST_KEY_NOT_VERIFIABLE: u32 = 9;
    /// `SSH_DISCONNECT_CONNECTION_LOST`.
    pub const CONNECTION_LOST: u32 = 10;
    /// `SSH_DISCONNECT_BY_APPLICATION`.
    pub const BY_APPLICATION: u32 = 11;
    /// `SSH_DISCONNECT_TOO_MANY_CONNECTIONS`.
    pub const TOO_MANY_CONNECTIONS: u32 = 12;
    /// `SSH_DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE`.
    pub const NO_MORE_AUTH_METHODS_AVAILABLE: u32 = 14;
}

/// `SSH_MSG_DISCONNECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason code.
    pub reason: u32,
    /// Human-readable description (untrusted when received).
    pub description: String,
}

impl Disconnect {
    /// The message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::message(msg::DISCONNECT);
        w.u32(self.reason)
            .string(self.description.as_bytes())
            .string(b"");
        w.into_bytes()
    }

    /// Parses one; a description that is not UTF-8 is kept with replacement characters.
    pub fn decode(payload: &[u8]) -> Result<Disconnect, WireError> {
        let mut r = Reader::new(payload);
        expect(&mut r, msg::DISCONNECT, "not DISCONNECT")?;
        let reason = r.u32("reason code")?;
        let description = String::from_utf8_lossy(r.string(MAX_TEXT, "description")?).into_owned();
        let _language = r.string(MAX_NAME, "language tag")?;
        r.finish()?;
        Ok(Disconnect {
            reason,
            description,
        })
    }
}

/// `SSH_MSG_EXT_INFO`: extension names and values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExtInfo {
    /// (name, value) pairs in order.
    pub extensions: Vec<(String, Vec<u8>)>,
}

impl ExtInfo {
    /// The server's `server-sig-algs` extension (RFC 8308 §3.1) for `algorithms`.
    pub fn server_sig_algs(algorithms: &[&str]) -> ExtInfo {
        ExtInfo {
            extensions: vec![(
                "server-sig-algs".to_string(),
                algorithms.join(",").into_bytes(),
            )],
        }
    }

    /// The message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::message(msg::EXT_INFO);
        w.u32(u32::try_from(self.extensions.len()).unwrap_or(u32::MAX));
        for (name, value) in &self.extensions {
            w.string(name.as_bytes()).string(value);
        }
        w.into_bytes()
    }

    /// Parses one.
    pub fn decode(payload: &[u8]) -> Result<ExtInfo, WireError> {
        let mut r = Reader::new(payload);
        expect(&mut r, msg::EXT_INFO, "not EXT_INFO")?;
        let count = r.u32("nr-extensions")?;
        if count > MAX_EXTENSIONS {
            return Err(WireError::TooLong {
                field: "nr-extensions",
                len: usize::try_from(count).unwrap_or(usize::MAX),
                max: MAX_EXTENSIONS as usize,
            });
        }
        let mut extensions = Vec::new();
        for _ in 0..count {
            let name = r.utf8(MAX_NAME, "extension-name")?.to_string();
            let value = r.string(MAX_TEXT, "extension-value")?.to_vec();
            extensions.push((name, value));
        }
        r.finish()?;
        Ok(ExtInfo { extensions })
    }

    /// The names in `server-sig-algs`, if sent.
    pub fn sig_algs(&self) -> Option<Vec<String>> {
        let (_, value) = self
            .extensions
            .iter()
            .find(|(name, _)| name == "server-sig-algs")?;
        let mut w = Writer::new();
        w.string(value);
        let bytes = w.into_bytes();
        let names = Reader::new(&bytes).name_list("server-sig-algs").ok()?;
        Some(names.into_iter().map(str::to_string).collect())
    }
}

/// One authentication method's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `none`: asks which methods may continue.
    None,
    /// `publickey`: without a signature it only asks whether the key would do (RFC 4252 §7).
    PublicKey {
        /// Signature algorithm named by the client (`rsa-sha2-256`, `ssh-ed25519`...).
        algorithm: String,
        /// The public key blob.
        key: Vec<u8>,
        /// The signature blob, when this is the real attempt.
        signature: Option<Vec<u8>>,
    },
    /// `password` (a change request is refused by the caller).
    Password {
        /// The password; wiped by the caller after use.
        password: String,
        /// Whether the client asks to change it.
        change: bool,
    },
    /// `keyboard-interactive` (RFC 4256 §3.1).
    KeyboardInteractive {
        /// Submethods hint.
        submethods: String,
    },
    /// A method burrow does not offer.
    Other(String),
}

/// `SSH_MSG_USERAUTH_REQUEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// The login name.
    pub user: String,
    /// The service asked for (`ssh-connection`).
    pub service: String,
    /// The method and its fields.
    pub method: Method,
}

impl AuthRequest {
    /// Parses one.
    pub fn decode(payload: &[u8]) -> Result<AuthRequest, WireError> {
        let mut r = Reader::new(payload);
        expect(&mut r, msg::USERAUTH_REQUEST, "not USERAUTH_REQUEST")?;
        let user = r.utf8(MAX_USER, "user name")?.to_string();
        let service = r.utf8(MAX_NAME, "service name")?.to_string();
        let method_name = r.utf8(MAX_NAME, "method name")?;
        let method = match method_name {
            "none" => Method::None,
            "publickey" => {
                let signed = r.bool("has signature")?;
                let algorithm = r.utf8(MAX_NAME, "public key algorithm")?.to_string();
                let key = r.string(MAX_BLOB, "public key blob")?.to_vec();
                let signature = if signed {
                    Some(r.string(MAX_BLOB, "signature")?.to_vec())
                } else {
                    None
                };
                Method::PublicKey {
                    algorithm,
                    key,
                    signature,
                }
            }
            "password" => {
                let change = r.bool("change")?;
                let password = r.utf8(MAX_TEXT, "password")?.to_string();
                if change {
                    let _new = r.utf8(MAX_TEXT, "new password")?;
                }
                Method::Password { password, change }
            }
            "keyboard-interactive" => {
                let _language = r.string(MAX_NAME, "language tag")?;
                let submethods = r.utf8(MAX_TEXT, "submethods")?.to_string();
                Method::KeyboardInteractive { submethods }
            }
            other => {
                // Unknown methods carry fields we do not know: skip them.
                let _rest = r.bytes(r.remaining(), "method fields")?;
                Method::Other(other.to_string())
            }
        };
        r.finish()?;
        Ok(AuthRequest {
            user,
            service,
            method,
        })
    }

    /// The message (for the client side and for tests).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::message(msg::USERAUTH_REQUEST);
        w.string(self.user.as_bytes())
            .string(self.service.as_bytes());
        match &self.method {
            Method::None => {
                w.string(b"none");
            }
            Method::PublicKey {
                algorithm,
                key,
                signature,
            } => {
                w.string(b"publickey")
                    .bool(signature.is_some())
                    .string(algorithm.as_bytes())
                    .string(key);
                if let Some(sig) = signature {
                    w.string(sig);
                }
            }
            Method::Password { password, change } => {
                w.string(b"password")
                    .bool(*change)
                    .string(password.as_bytes());
            }
            Method::KeyboardInteractive { submethods } => {
                w.string(b"keyboard-interactive")
                    .string(b"")
                    .string(submethods.as_bytes());
            }
            Method::Other(name) => {
                w.string(name.as_bytes());
            }
        }
        w.into_bytes()
    }

    /// The bytes a `publickey` signature covers (RFC 4252 §7): the session identifier, then
    /// this request with the signature left out.
    pub fn signed_data(&self, session_id: &[u8]) -> Option<Vec<u8>> {
        let Method::PublicKey { algorithm, key, .. } = &self.method else {
            return None;
        };
        let mut w = Writer::new();
        w.string(session_id)
            .u8(msg::USERAUTH_REQUEST)
            .string(self.user.as_bytes())
            .string(self.service.as_bytes())
            .string(b"publickey")
            .bool(true)
            .string(algorithm.as_bytes())
            .string(key);
        Some(w.into_bytes())
    }
}

/// `SSH_MSG_USERAUTH_INFO_RESPONSE` (RFC 4256 §3.4): the answers to the prompts.
pub fn decode_info_response(payload: &[u8]) -> Result<Vec<String>, WireError> {
    let mut r = Reader::new(payload);
    expect(
        &mut r,
        msg::USERAUTH_INFO_RESPONSE,
        "not USERAUTH_INFO_RESPONSE",
    )?;
    let count = r.u32("num-responses")?;
    if count > MAX_RESPONSES {
        return Err(WireError::TooLong {
            field: "num-responses",
            len: usize::try_from(count).unwrap_or(usize::MAX),
            max: MAX_RESPONSES as usize,
        });
    }
    let mut answers = Vec::new();
    for _ in 0..count {
        answers.push(r.utf8(MAX_TEXT, "response")?.to_string());
    }
    r.finish()?;
    Ok(answers)
}

/// `SSH_MSG_USERAUTH_FAILURE`: the methods that may continue.
pub fn encode_auth_failure(methods: &[&str], partial_success: bool) -> Vec<u8> {
    let mut w = Writer::message(msg::USERAUTH_FAILURE);
    w.name_list(methods).bool(partial_success);
    w.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_and_ext_info_round_trip() {
        let d = Disconnect {
            reason: reason::BY_APPLICATION,
            description: "burrow: a new session of device pi replaced this one".into(),
        };
        assert_eq!(Disconnect::decode(&d.encode()), Ok(d));
        let e = ExtInfo::server_sig_algs(&["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]);
        let back = ExtInfo::decode(&e.encode()).expect("decodes");
        assert_eq!(
            back.sig_algs(),
            Some(vec![
                "ssh-ed25519".to_string(),
                "rsa-sha2-512".into(),
                "rsa-sha2-256".into()
            ])
        );
        let mut many = Writer::message(msg::EXT_INFO);
        many.u32(u32::MAX);
        assert!(ExtInfo::decode(&many.into_bytes()).is_err());
    }

    #[test]
    fn every_auth_method_round_trips_and_signed_data_leaves_the_signature_out() {
        let base = |method| AuthRequest {
            user: "op:garage-pi/console".into(),
            service: "ssh-connection".into(),
            method,
        };
        for method in [
            Method::None,
            Method::PublicKey {
                algorithm: "ssh-ed25519".into(),
                key: vec![1; 51],
                signature: None,
            },
            Method::PublicKey {
                algorithm: "rsa-sha2-256".into(),
                key: vec![2; 279],
                signature: Some(vec![3; 271]),
            },
            Method::Password {
                password: "correct horse".into(),
                change: false,
            },
            Method::KeyboardInteractive {
                submethods: String::new(),
            },
            Method::Other("hostbased".into()),
        ] {
            let req = base(method);
            assert_eq!(AuthRequest::decode(&req.encode()), Ok(req));
        }
        let signed = base(Method::PublicKey {
            algorithm: "ssh-ed25519".into(),
            key: vec![1; 51],
            signature: Some(vec![9; 83]),
        });
        let data = signed.signed_data(b"session").expect("publickey");
        let mut w = Writer::new();
        w.string(b"session");
        let mut expected = w.into_bytes();
        let encoded = signed.encode();
        // The request up to (not including) the signature string.
        expected.extend_from_slice(&encoded[..encoded.len() - 4 - 83]);
        assert_eq!(data, expected);
        assert_eq!(base(Method::None).signed_data(b"s"), None);
    }

    #[test]
    fn info_responses_are_bounded() {
        let mut w = Writer::message(msg::USERAUTH_INFO_RESPONSE);
        w.u32(1).string(b"secret");
        assert_eq!(
            decode_info_response(&w.into_bytes()),
            Ok(vec!["secret".into()])
        );
        let mut w = Writer::message(msg::USERAUTH_INFO_RESPONSE);
        w.u32(1_000_000);
        assert!(decode_info_response(&w.into_bytes()).is_err());
        let failure = encode_auth_failure(&["publickey", "password"], false);
        let mut r = Reader::new(&failure);
        assert_eq!(r.u8("m"), Ok(msg::USERAUTH_FAILURE));
        assert_eq!(r.name_list("methods"), Ok(vec!["publickey", "password"]));
    }

    #[test]
    fn hostile_messages_never_panic() {
        let samples = [
            Disconnect {
                reason: 2,
                description: "x".into(),
            }
            .encode(),
            ExtInfo::server_sig_algs(&["ssh-ed25519"]).encode(),
            AuthRequest {
                user: "u".into(),
                service: "ssh-connection".into(),
                method: Method::PublicKey {
                    algorithm: "ssh-ed25519".into(),
                    key: vec![1; 8],
                    signature: Some(vec![2; 8]),
                },
            }
            .encode(),
        ];
        let mut seed = 17u64;
        for _ in 0..20_000 {
            let pick = (crate::xorshift(&mut seed) % samples.len() as u64) as usize;
            let mut bytes = samples[pick].clone();
            for _ in 0..(crate::xorshift(&mut seed) % 3 + 1) {
                let at = (crate::xorshift(&mut seed) as usize) % bytes.len();
                bytes[at] = crate::xorshift(&mut seed) as u8;
            }
            let cut = (crate::xorshift(&mut seed) as usize) % (bytes.len() + 1);
            let bytes = &bytes[..cut];
            let _ = Disconnect::decode(bytes);
            let _ = ExtInfo::decode(bytes).map(|e| e.sig_algs());
            let _ = AuthRequest::decode(bytes);
            let _ = decode_info_response(bytes);
        }
    }
}
