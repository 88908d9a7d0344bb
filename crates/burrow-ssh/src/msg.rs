//! Message numbers (RFC 4250 §4.1, RFC 8308, RFC 4256).

/// `SSH_MSG_DISCONNECT`.
pub const DISCONNECT: u8 = 1;
/// `SSH_MSG_IGNORE`.
pub const IGNORE: u8 = 2;
/// `SSH_MSG_UNIMPLEMENTED`.
pub const UNIMPLEMENTED: u8 = 3;
/// `SSH_MSG_DEBUG`.
pub const DEBUG: u8 = 4;
/// `SSH_MSG_SERVICE_REQUEST`.
pub const SERVICE_REQUEST: u8 = 5;
/// `SSH_MSG_SERVICE_ACCEPT`.
pub const SERVICE_ACCEPT: u8 = 6;
/// `SSH_MSG_EXT_INFO` (RFC 8308).
pub const EXT_INFO: u8 = 7;
/// `SSH_MSG_KEXINIT`.
pub const KEXINIT: u8 = 20;
/// `SSH_MSG_NEWKEYS`.
pub const NEWKEYS: u8 = 21;
/// `SSH_MSG_KEX_ECDH_INIT` (RFC 5656; curve25519-sha256 uses the same numbers).
pub const KEX_ECDH_INIT: u8 = 30;
/// `SSH_MSG_KEX_ECDH_REPLY`.
pub const KEX_ECDH_REPLY: u8 = 31;
/// `SSH_MSG_USERAUTH_REQUEST`.
pub const USERAUTH_REQUEST: u8 = 50;
/// `SSH_MSG_USERAUTH_FAILURE`.
pub const USERAUTH_FAILURE: u8 = 51;
/// `SSH_MSG_USERAUTH_SUCCESS`.
pub const USERAUTH_SUCCESS: u8 = 52;
/// `SSH_MSG_USERAUTH_BANNER`.
pub const USERAUTH_BANNER: u8 = 53;
/// `SSH_MSG_USERAUTH_PK_OK` (shares its number with the keyboard-interactive info request).
pub const USERAUTH_PK_OK: u8 = 60;
/// `SSH_MSG_USERAUTH_INFO_REQUEST` (RFC 4256).
pub const USERAUTH_INFO_REQUEST: u8 = 60;
/// `SSH_MSG_USERAUTH_INFO_RESPONSE` (RFC 4256).
pub const USERAUTH_INFO_RESPONSE: u8 = 61;
/// `SSH_MSG_GLOBAL_REQUEST`.
pub const GLOBAL_REQUEST: u8 = 80;
/// `SSH_MSG_REQUEST_SUCCESS`.
pub const REQUEST_SUCCESS: u8 = 81;
/// `SSH_MSG_REQUEST_FAILURE`.
pub const REQUEST_FAILURE: u8 = 82;
/// `SSH_MSG_CHANNEL_OPEN`.
pub const CHANNEL_OPEN: u8 = 90;
/// `SSH_MSG_CHANNEL_OPEN_CONFIRMATION`.
pub const CHANNEL_OPEN_CONFIRMATION: u8 = 91;
/// `SSH_MSG_CHANNEL_OPEN_FAILURE`.
pub const CHANNEL_OPEN_FAILURE: u8 = 92;
/// `SSH_MSG_CHANNEL_WINDOW_ADJUST`.
pub const CHANNEL_WINDOW_ADJUST: u8 = 93;
/// `SSH_MSG_CHANNEL_DATA`.
pub const CHANNEL_DATA: u8 = 94;
/// `SSH_MSG_CHANNEL_EXTENDED_DATA`.
pub const CHANNEL_EXTENDED_DATA: u8 = 95;
/// `SSH_MSG_CHANNEL_EOF`.
pub const CHANNEL_EOF: u8 = 96;
/// `SSH_MSG_CHANNEL_CLOSE`.
pub const CHANNEL_CLOSE: u8 = 97;
/// `SSH_MSG_CHANNEL_REQUEST`.
pub const CHANNEL_REQUEST: u8 = 98;
/// `SSH_MSG_CHANNEL_SUCCESS`.
pub const CHANNEL_SUCCESS: u8 = 99;
/// `SSH_MSG_CHANNEL_FAILURE`.
pub const CHANNEL_FAILURE: u8 = 100;

/// Whether a message may arrive during a key exchange besides the exchange's own: RFC 4253
/// §7.1 allows transport messages (1-19, except service requests) and key exchange messages.
/// Under strict key exchange (OpenSSH's Terrapin countermeasure) none of the transport
/// messages are allowed during the first exchange; the caller applies that rule.
pub fn allowed_during_kex(msg: u8) -> bool {
    matches!(msg, DISCONNECT | IGNORE | UNIMPLEMENTED | DEBUG) || (20..=49).contains(&msg)
}

/// Whether some layer of this implementation understands message `msg` (whether or not it is
/// in place where it arrives). Anything else is answered with `SSH_MSG_UNIMPLEMENTED`, as RFC
/// 4253 §11.4 requires, instead of ending the connection.
pub fn understood(msg: u8) -> bool {
    matches!(msg, DISCONNECT..=EXT_INFO)
        || (20..=49).contains(&msg)
        || matches!(msg, USERAUTH_REQUEST..=USERAUTH_BANNER)
        || matches!(msg, USERAUTH_PK_OK | USERAUTH_INFO_RESPONSE)
        || (GLOBAL_REQUEST..=CHANNEL_FAILURE).contains(&msg)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kex_allows_transport_and_kex_messages_only() {
        assert!(super::allowed_during_kex(super::IGNORE));
        assert!(super::allowed_during_kex(super::KEX_ECDH_REPLY));
        assert!(!super::allowed_during_kex(super::SERVICE_REQUEST));
        assert!(!super::allowed_during_kex(super::CHANNEL_DATA));
        assert!(!super::allowed_during_kex(super::USERAUTH_REQUEST));
    }

    #[test]
    fn unknown_numbers_are_the_unassigned_and_the_private_ones() {
        for known in [1, 5, 7, 20, 31, 50, 53, 60, 61, 80, 94, 100] {
            assert!(super::understood(known), "{known}");
        }
        for unknown in [0, 8, 19, 54, 62, 79, 101, 128, 192, 255] {
            assert!(!super::understood(unknown), "{unknown}");
        }
    }
}
