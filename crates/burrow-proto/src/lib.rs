//! Pure logic of burrow, with no I/O: names, policy patterns, endpoints, configuration types.
//!
//! # Layout
//! - [`name`]: device and operator names, and the SSH login forms that carry them.
//! - [`pin_edit`]: a relay host-key pin added to an agent config file, nothing else changed.
//! - [`glob`]: the glob patterns of operator policy.
//! - [`addr`]: `HOST:PORT` targets, `[ADDR:]PORT` listen specs and `--expose` specs.
//! - [`time`]: UTC timestamps as people read them in messages, and as they give them (`2h`).
//! - [`backoff`]: jittered exponential reconnect backoff.
//! - [`liveness`]: when the agent sends a keepalive and when either end gives a session up.
//! - [`rfc2217`]: Telnet COM-PORT-OPTION framing of console endpoints.
//! - [`escape`]: the console escape parser (`Ctrl-E c` ...).
//! - [`asciicast`]: asciicast v2 recording lines and a UTF-8 stream decoder.
//! - [`agent_config`]: the agent's TOML configuration and its validation.
//! - [`console_config`]: one `[[console]]`: port, line settings, port log, alerts, power.
//! - [`serial`]: serial line settings (`8N1`, flow control, DTR/RTS, CR/LF mapping).
//! - [`portlog`]: port log records, their rendering as lines, the upload channel's frames.
//! - [`pattern_alert`]: pattern alerts on console output, with context and quiet times.
//! - [`secret`]: a string wrapper that never shows in `Debug` output.
//! - [`text`]: untrusted strings escaped and bounded before they are logged or stored.
//! - [`size`]: byte sizes written as `64M` or `1G`.
//! - [`labels`]: device labels and the label selectors of operator policy.
//! - [`join`]: join strings and the enrollment exchange.
//! - [`authorized_keys`]: OpenSSH `authorized_keys` lines translated to burrow policy.
//! - [`csv`]: a small CSV reader for device imports.
//! - [`health`]: the agent's health report (link, board), when it is worth sending, its summary.
//! - [`modem`]: ModemManager's `mmcli` answers read into the report.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Parsers of untrusted input must not panic; tests may.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)
)]

pub mod addr;
pub mod agent_config;
pub mod asciicast;
pub mod authorized_keys;
pub mod backoff;
pub mod console_config;
pub mod csv;
pub mod escape;
pub mod glob;
pub mod health;
pub mod join;
pub mod labels;
pub mod liveness;
pub mod metadata;
pub mod modem;
pub mod name;
pub mod pattern_alert;
pub mod pin_edit;
pub mod portlog;
pub mod rfc2217;
pub mod secret;
pub mod serial;
pub mod size;
pub mod text;
pub mod time;

/// A deterministic xorshift64 step for the hostile-input tests (no RNG dependency, same
/// sequence on every run).
#[cfg(test)]
pub(crate) fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Start of the SSH disconnect message with which a relay tells a device session that a newer
/// session of the same device replaced it; the agent recognises it and backs off.
pub const REPLACED_PREFIX: &str = "burrow: a new session";

/// Start of the SSH disconnect message with which a relay tells a device session that its
/// device waits for approval (`burrow relay device approve`); the agent waits and tries again.
pub const PENDING_PREFIX: &str = "burrow: device pending approval";

/// Start of the SSH disconnect message with which a relay refuses a session whose key is in
/// use by another session at the same time (a cloned SD card): the key is quarantined.
pub const QUARANTINED_PREFIX: &str = "burrow: key quarantined";

/// Bind address with which a burrow agent asks a burrow relay for its probe endpoint; the relay
/// keeps that endpoint internal (unlisted, closed to operators, its streams not audited).
pub const PROBE_BIND: &str = "burrow/probe";

/// Originator address of the agent's one-round-trip probe on a burrow relay: the relay opens a
/// stream to the agent's probe endpoint carrying it back, with the probe's nonce as originator
/// port, and the agent answers that stream with a refusal.
pub const PROBE_ORIGIN: &str = "burrow-probe";

/// The agent's answer to its own routed probe: the refusal that proves the stream arrived.
/// The relay reads it as a probe that succeeded.
pub const PROBE_ANSWERED: &str = "probe answered";
