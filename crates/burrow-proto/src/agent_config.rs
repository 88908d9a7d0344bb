//! The agent's TOML configuration (`burrow agent --config FILE`) and its validation.
//!
//! Unknown keys are errors; the TOML parser's message carries the line and column.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::addr::{ListenSpec, Target};
use crate::metadata::MetadataConfig;
use crate::name::check_name;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML does not parse or has unknown keys (message has the line).
    #[error("{0}")]
    Toml(String),
    /// A value is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
}

/// A duration in seconds, written as an integer or a decimal (`15`, `0.5`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Seconds {
    /// Whole seconds.
    Whole(u64),
    /// Fractional seconds.
    Fraction(f64),
}

impl Seconds {
    /// As a `Duration`; negative or non-finite values become zero and are caught by validation.
    pub fn duration(self) -> Duration {
        match self {
            Seconds::Whole(s) => Duration::from_secs(s),
            Seconds::Fraction(f) if f.is_finite() && f > 0.0 => Duration::from_secs_f64(f),
            Seconds::Fraction(_) => Duration::ZERO,
        }
    }

    /// Checks that the value lies in `[min, max]` seconds (`0` also allowed when `zero_ok`);
    /// the message names `key` and the range.
    pub fn check_range(self, key: &str, min: f64, max: f64, zero_ok: bool) -> Result<(), String> {
        let v = match self {
            Seconds::Whole(s) => s as f64,
            Seconds::Fraction(f) => f,
        };
        if (zero_ok && v == 0.0) || (v.is_finite() && (min..=max).contains(&v)) {
            return Ok(());
        }
        let zero = if zero_ok {
            " (or 0 to turn it off)"
        } else {
            ""
        };
        Err(format!(
            "{key} = {v} is out of range: use {min} to {max} seconds{zero}"
        ))
    }
}

/// Accepted range of every agent duration, in seconds: (key, min, max, 0 turns it off).
pub const DURATION_RANGES: [(&str, f64, f64, bool); 9] = [
    ("keepalive_interval", 0.05, 3600.0, false),
    ("keepalive_timeout", 0.05, 3600.0, false),
    ("busy_keepalive_interval", 0.05, 3600.0, false),
    ("backoff_min", 0.01, 3600.0, false),
    ("backoff_max", 0.01, 86_400.0, false),
    ("probe_interval", 0.05, 86_400.0, true),
    ("probe_timeout", 0.05, 3600.0, false),
    ("health_interval", 0.05, 86_400.0, true),
    ("health_refresh", 0.05, 7.0 * 86_400.0, false),
];

impl From<Duration> for Seconds {
    fn from(d: Duration) -> Self {
        Seconds::Fraction(d.as_secs_f64())
    }
}

/// One `[[expose]]` entry: an endpoint `NAME:PORT` backed by a local service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expose {
    /// The endpoint port operators use.
    pub port: u16,
    /// The local service; default `127.0.0.1:PORT`.
    pub to: Option<String>,
    /// Against a stock OpenSSH sshd relay: the real port to listen on there.
    pub remote_port: Option<u16>,
    /// Against a stock OpenSSH sshd relay: the address to listen on there (default 127.0.0.1;
    /// the sshd's `GatewayPorts` decides whether it is honoured).
    pub bind: Option<String>,
}

/// One `[[connect]]` entry: a local listener whose connections go to a relay-side target.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connect {
    /// Local address to listen on, `[ADDR:]PORT` (default address 127.0.0.1).
    pub listen: String,
    /// Target as seen from the relay, `HOST:PORT`.
    pub to: String,
}

pub use crate::console_config::{
    Console, DEFAULT_BAUD, DEFAULT_CONSOLE_PORT, LogUpload, PowerOutlet, UsbId,
};
pub use crate::serial::{FlowControl, Parity};

/// A string, or a list of strings kept comma-separated.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => Ok(s),
        OneOrMany::Many(v) => {
            if v.iter().any(|s| s.contains(',') || s.trim().is_empty()) {
                return Err(serde::de::Error::custom(
                    "each entry of the list is one address or fingerprint, without commas",
                ));
            }
            Ok(v.join(","))
        }
    }
}

fn one_or_many_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    one_or_many(d).map(Some)
}

/// The agent configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Relay address, `HOST[:PORT]` (port 22 when omitted), or several as a list (`relay =
    /// ["r1:443", "r2:443"]`, kept here comma-separated): the agent fails over between them.
    /// Empty with `[metadata]`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub relay: String,
    /// This device's name (with `[metadata]`, the default for burrow entries without one).
    #[serde(default)]
    pub name: String,
    /// Path of the device's private key (mode 0600). Empty with `[metadata]`.
    #[serde(default)]
    pub key: PathBuf,
    /// Pinned relay host key fingerprint, `SHA256:...`, or several as a list (relays of one
    /// cluster with keys of their own; kept here comma-separated): any of them is trusted.
    #[serde(default, deserialize_with = "one_or_many_opt")]
    pub host_key: Option<String>,
    /// Sessions held at once, each to a different relay of `relay` (default 1): with 2, a
    /// relay crash interrupts only the streams that were on it.
    pub connections: Option<u32>,
    /// known_hosts file holding the relay's host key.
    pub known_hosts: Option<PathBuf>,
    /// Accept and record an unknown relay host key on first connection (into `known_hosts`).
    #[serde(default)]
    pub trust_on_first_use: bool,
    /// The defaults of the keepalive and probe timings: how much idle data a month buys how
    /// quick a verdict on a dead link.
    #[serde(default)]
    pub profile: Profile,
    /// Seconds without sending anything after which the agent sends a keepalive.
    pub keepalive_interval: Option<Seconds>,
    /// Seconds a keepalive may go unanswered before the session counts as dead.
    pub keepalive_timeout: Option<Seconds>,
    /// After a stream moved bytes (until a keepalive answered after them): seconds without
    /// hearing from the relay before a keepalive.
    pub busy_keepalive_interval: Option<Seconds>,
    /// No longer used (a keepalive is retried by TCP until `keepalive_timeout`); still accepted
    /// so that older configurations keep working.
    pub keepalive_count: Option<u32>,
    /// First reconnect delay in seconds (default 1).
    pub backoff_min: Option<Seconds>,
    /// Longest reconnect delay in seconds (default 30).
    pub backoff_max: Option<Seconds>,
    /// Seconds without proof of the path (an operator stream, or a probe) after which an
    /// end-to-end tunnel probe runs (0 disables probes).
    pub probe_interval: Option<Seconds>,
    /// Seconds a probe may take before it fails (default 10).
    pub probe_timeout: Option<Seconds>,
    /// Seconds between readings of the health report (ModemManager, the Pi's power flags,
    /// temperature, disk); a notable change is sent at most every six readings. 0 turns the
    /// reports off. Default 300.
    pub health_interval: Option<Seconds>,
    /// Seconds after which an unchanged health report is sent again (default 21600: 6 h).
    pub health_refresh: Option<Seconds>,
    /// Where the status file is written (default `<state dir>/status.json`).
    pub status_file: Option<PathBuf>,
    /// Command run through `sh -c` on up/down transitions, with `BURROW_STATE` set.
    pub on_state_change: Option<String>,
    /// Endpoints this device exposes.
    #[serde(default)]
    pub expose: Vec<Expose>,
    /// Local forwards to relay-side targets.
    #[serde(default)]
    pub connect: Vec<Connect>,
    /// Serial consoles served through the relay.
    #[serde(default)]
    pub console: Vec<Console>,
    /// On-demand access: relay, name, key and endpoints come from a metadata service.
    pub metadata: Option<MetadataConfig>,
    /// Renew the SSH session's keys after this much data either way (`512M`, `1G`; default
    /// 1G, as OpenSSH's `RekeyLimit`).
    pub rekey_limit: Option<String>,
}

/// Timing defaults, chosen by `profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// About 4.5 MB a month idle; a dead link is noticed within 3 minutes on both ends.
    #[default]
    Standard,
    /// About 1 MB a month idle; a dead link is noticed within 11 minutes. For carriers whose
    /// NAT keeps idle TCP mappings for more than 10 minutes.
    Metered,
    /// For fixed lines: a dead link is noticed within 35 seconds, for about 30 MB a month.
    Responsive,
}

/// The timings a profile sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfileTimings {
    /// `keepalive_interval`.
    pub keepalive_interval: Duration,
    /// `keepalive_timeout`.
    pub keepalive_timeout: Duration,
    /// `busy_keepalive_interval`.
    pub busy_keepalive_interval: Duration,
    /// `probe_interval`.
    pub probe_interval: Duration,
}

impl Profile {
    /// The timings this profile sets.
    pub fn timings(self) -> ProfileTimings {
        let s = Duration::from_secs;
        let (interval, timeout, busy, probe) = match self {
            Profile::Standard => (s(150), s(20), s(10), s(6 * 3600)),
            Profile::Metered => (s(600), s(30), s(20), s(24 * 3600)),
            Profile::Responsive => (s(25), s(10), s(5), s(300)),
        };
        ProfileTimings {
            keepalive_interval: interval,
            keepalive_timeout: timeout,
            busy_keepalive_interval: busy,
            probe_interval: probe,
        }
    }

    /// The profile's name as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Standard => "standard",
            Profile::Metered => "metered",
            Profile::Responsive => "responsive",
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Profile, String> {
        match s {
            "standard" => Ok(Profile::Standard),
            "metered" => Ok(Profile::Metered),
            "responsive" => Ok(Profile::Responsive),
            other => Err(format!(
                "unknown profile {other:?}: use standard, metered or responsive"
            )),
        }
    }
}

/// Default first reconnect delay.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Default longest reconnect delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Default time between readings of the health report.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(300);
/// Default time after which an unchanged health report is sent again.
pub const DEFAULT_HEALTH_REFRESH: Duration = Duration::from_secs(6 * 3600);
/// Default time a probe may take.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

impl AgentConfig {
    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<AgentConfig, ConfigError> {
        let config: AgentConfig =
            toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// A configuration with only the required fields set.
    pub fn new(relay: impl Into<String>, name: impl Into<String>, key: PathBuf) -> Self {
        AgentConfig {
            relay: relay.into(),
            name: name.into(),
            key,
            host_key: None,
            connections: None,
            known_hosts: None,
            trust_on_first_use: false,
            profile: Profile::Standard,
            keepalive_interval: None,
            keepalive_timeout: None,
            busy_keepalive_interval: None,
            keepalive_count: None,
            backoff_min: None,
            backoff_max: None,
            probe_interval: None,
            probe_timeout: None,
            health_interval: None,
            health_refresh: None,
            status_file: None,
            on_state_change: None,
            expose: Vec::new(),
            connect: Vec::new(),
            console: Vec::new(),
            metadata: None,
            rekey_limit: None,
        }
    }

    /// The rekey limit in bytes (validated by [`AgentConfig::validate`]).
    pub fn rekey_bytes(&self) -> Option<u64> {
        self.rekey_limit
            .as_deref()
            .and_then(|t| crate::size::parse(t).ok())
    }

    /// Checks values that TOML types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if let Some(limit) = &self.rekey_limit {
            match crate::size::parse(limit) {
                Ok(n) if n >= 16 * 1024 => {}
                Ok(_) => return invalid(format!("rekey_limit = {limit:?}: give at least 16K")),
                Err(e) => return invalid(format!("rekey_limit: {e}")),
            }
        }
        if let Some(metadata) = &self.metadata {
            metadata.validate().map_err(ConfigError::Invalid)?;
            for (key, set) in [
                ("relay", !self.relay.is_empty()),
                ("key", !self.key.as_os_str().is_empty()),
                ("host_key", self.host_key.is_some()),
                ("known_hosts", self.known_hosts.is_some()),
                ("trust_on_first_use", self.trust_on_first_use),
            ] {
                if set {
                    return invalid(format!(
                        "{key} is delivered by [metadata]: remove it from the config (or remove [metadata] to run one fixed tunnel)"
                    ));
                }
            }
            if !self.name.is_empty()
                && let Err(e) = check_name("device", &self.name)
            {
                return invalid(format!("name: {e}"));
            }
            return self.validate_services();
        }
        for (key, missing, example) in [
            (
                "relay",
                self.relay.is_empty(),
                "relay = \"relay.example.com:22\"",
            ),
            ("name", self.name.is_empty(), "name = \"garage-pi\""),
            (
                "key",
                self.key.as_os_str().is_empty(),
                "key = \"/etc/burrow/id_ed25519\"",
            ),
        ] {
            if missing {
                return invalid(format!(
                    "no {key}: set {example}, or add [metadata] to take the tunnel from a metadata service"
                ));
            }
        }
        if let Err(e) = self.relay_targets() {
            return invalid(format!("relay = {:?}: {e}", self.relay));
        }
        if let Some(n) = self.connections {
            let relays = self.relay.split(',').count();
            if n == 0 || n as usize > relays {
                return invalid(format!(
                    "connections = {n}: give 1 to {relays} (one session per relay in `relay`)"
                ));
            }
        }
        if let Err(e) = check_name("device", &self.name) {
            return invalid(format!("name: {e}"));
        }
        match (&self.host_key, &self.known_hosts, self.trust_on_first_use) {
            (Some(fp), _, _) if fp.split(',').any(|f| !f.trim().starts_with("SHA256:")) => {
                return invalid(format!(
                    "host_key = {fp:?}: write the relay's fingerprint as printed by `burrow relay fingerprint` (SHA256:...)"
                ));
            }
            (Some(fp), _, _) => {
                for f in fp.split(',') {
                    check_fingerprint(f.trim())
                        .map_err(|e| ConfigError::Invalid(format!("host_key = {fp:?}: {e}")))?;
                }
            }
            (None, None, _) => {
                return invalid(
                    "no relay host key pin: set host_key = \"SHA256:...\" (from `burrow relay fingerprint`) or known_hosts = FILE".into(),
                );
            }
            (None, Some(_), _) => {}
        }
        self.validate_services()
    }

    /// Checks timings, endpoints, consoles and local listeners.
    fn validate_services(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let values = [
            self.keepalive_interval,
            self.keepalive_timeout,
            self.busy_keepalive_interval,
            self.backoff_min,
            self.backoff_max,
            self.probe_interval,
            self.probe_timeout,
            self.health_interval,
            self.health_refresh,
        ];
        for ((key, min, max, zero_ok), value) in DURATION_RANGES.into_iter().zip(values) {
            if let Some(v) = value {
                let named = format!("{key} (flag --{})", key.replace('_', "-"));
                v.check_range(&named, min, max, zero_ok)
                    .map_err(ConfigError::Invalid)?;
            }
        }
        if let Some(count) = self.keepalive_count
            && !(1..=100).contains(&count)
        {
            return invalid(format!(
                "keepalive_count = {count} is out of range: use at least 1 and at most 100"
            ));
        }
        if self.backoff_max() < self.backoff_min() {
            return invalid("backoff_max must not be smaller than backoff_min".into());
        }
        let mut ports = std::collections::BTreeSet::new();
        for e in &self.expose {
            if e.port == 0 {
                return invalid("[[expose]] port must be from 1 to 65535".into());
            }
            if !ports.insert(e.port) {
                return invalid(format!("[[expose]] port {} is listed twice", e.port));
            }
            if let Err(err) = e.target() {
                return invalid(format!("[[expose]] port {}: to: {err}", e.port));
            }
            if e.bind.is_some() && e.remote_port.is_none() {
                return invalid(format!(
                    "[[expose]] port {}: bind applies to a stock sshd relay only: set remote_port too (a burrow relay binds endpoints by device name)",
                    e.port
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (console, port) in self.consoles() {
            if let Err(e) = check_name("console", &console.name) {
                return invalid(format!("[[console]] name: {e}"));
            }
            if !names.insert(console.name.clone()) {
                return invalid(format!(
                    "[[console]] name {:?} is listed twice",
                    console.name
                ));
            }
            if !ports.insert(port) {
                return invalid(format!(
                    "[[console]] {}: port {port} is already used by another endpoint; set port = ...",
                    console.name
                ));
            }
            console.validate().map_err(ConfigError::Invalid)?;
            for rule in &console.alert {
                if let Err(e) = regex_lite::Regex::new(&rule.pattern) {
                    return invalid(format!(
                        "[[console.alert]] of console {}: pattern {:?} is not a regular expression: {e}",
                        console.name, rule.pattern
                    ));
                }
            }
        }
        for c in &self.connect {
            if let Err(err) = c.listen.parse::<ListenSpec>() {
                return invalid(format!("[[connect]] listen: {err}"));
            }
            if let Err(err) = c.to.parse::<Target>() {
                return invalid(format!("[[connect]] to: {err}"));
            }
        }
        Ok(())
    }

    /// Consoles with their endpoint ports.
    pub fn consoles(&self) -> impl Iterator<Item = (&Console, u16)> {
        self.console.iter().enumerate().map(|(i, c)| {
            let port = c
                .port
                .unwrap_or_else(|| DEFAULT_CONSOLE_PORT.saturating_add(i as u16));
            (c, port)
        })
    }

    /// The (first) relay address; a bare host gets port 22.
    pub fn relay_target(&self) -> Result<Target, crate::addr::AddrError> {
        self.relay_targets()?
            .into_iter()
            .next()
            .ok_or_else(|| crate::addr::AddrError::BadHost(self.relay.clone()))
    }

    /// Every relay address, in the order given; a bare host gets port 22.
    pub fn relay_targets(&self) -> Result<Vec<Target>, crate::addr::AddrError> {
        if self.relay.trim().is_empty() {
            return Err(crate::addr::AddrError::BadHost(self.relay.clone()));
        }
        self.relay
            .split(',')
            .map(str::trim)
            .map(|r| {
                if r.contains(':') {
                    r.parse()
                } else if r.is_empty() {
                    Err(crate::addr::AddrError::BadHost(r.to_string()))
                } else {
                    Ok(Target::new(r.to_string(), 22))
                }
            })
            .collect()
    }

    /// Sessions to hold at once: `connections`, at most one per relay.
    pub fn connection_count(&self) -> usize {
        let relays = self
            .relay
            .split(',')
            .filter(|r| !r.trim().is_empty())
            .count();
        (self.connections.unwrap_or(1) as usize).clamp(1, relays.max(1))
    }

    /// Time without sending after which a keepalive goes out.
    pub fn keepalive_interval(&self) -> Duration {
        self.keepalive_interval
            .map_or(self.profile.timings().keepalive_interval, Seconds::duration)
    }

    /// Time a keepalive may go unanswered.
    pub fn keepalive_timeout(&self) -> Duration {
        self.keepalive_timeout
            .map_or(self.profile.timings().keepalive_timeout, Seconds::duration)
    }

    /// While streams are open: time without hearing from the relay before a keepalive.
    pub fn busy_keepalive_interval(&self) -> Duration {
        self.busy_keepalive_interval
            .map_or(
                self.profile.timings().busy_keepalive_interval,
                Seconds::duration,
            )
            .min(self.keepalive_interval())
    }

    /// The keepalive schedule, as the agent runs it and declares it to the relay.
    pub fn schedule(&self) -> crate::liveness::Schedule {
        crate::liveness::Schedule {
            interval: self.keepalive_interval(),
            busy_interval: self.busy_keepalive_interval(),
            timeout: self.keepalive_timeout(),
        }
    }

    /// First reconnect delay.
    pub fn backoff_min(&self) -> Duration {
        self.backoff_min
            .map_or(DEFAULT_BACKOFF_MIN, Seconds::duration)
    }

    /// Longest reconnect delay.
    pub fn backoff_max(&self) -> Duration {
        self.backoff_max
            .map_or(DEFAULT_BACKOFF_MAX, Seconds::duration)
    }

    /// Time between readings of the health report; zero when reports are off.
    pub fn health_interval(&self) -> Duration {
        self.health_interval
            .map_or(DEFAULT_HEALTH_INTERVAL, Seconds::duration)
    }

    /// Time after which an unchanged health report is sent again.
    pub fn health_refresh(&self) -> Duration {
        self.health_refresh
            .map_or(DEFAULT_HEALTH_REFRESH, Seconds::duration)
    }

    /// Time without proof of the path after which a probe runs; zero disables probes.
    pub fn probe_interval(&self) -> Duration {
        self.probe_interval
            .map_or(self.profile.timings().probe_interval, Seconds::duration)
    }

    /// Time a probe may take.
    pub fn probe_timeout(&self) -> Duration {
        self.probe_timeout
            .map_or(DEFAULT_PROBE_TIMEOUT, Seconds::duration)
    }
}

impl Expose {
    /// The local service behind this endpoint.
    pub fn target(&self) -> Result<Target, crate::addr::AddrError> {
        match &self.to {
            None => Ok(Target::new(crate::addr::DEFAULT_SERVICE_HOST, self.port)),
            Some(to) => format!("{}={to}", self.port)
                .parse::<crate::addr::ExposeSpec>()
                .map(|s| s.to),
        }
    }

    /// The port requested from the relay: `remote_port` on a stock sshd relay, else `port`.
    pub fn requested_port(&self) -> u16 {
        self.remote_port.unwrap_or(self.port)
    }
}

/// Base64 characters in a SHA256 fingerprint (32 bytes, unpadded), after `SHA256:`.
const FINGERPRINT_CHARS: usize = 43;

/// Checks a `SHA256:...` host key fingerprint whole: a pin cut short when it was copied would
/// match no key, and the agent would only say so at its first connection.
pub fn check_fingerprint(fp: &str) -> Result<(), String> {
    let Some(digest) = fp.strip_prefix("SHA256:") else {
        return Err(format!(
            "{fp:?} is not a SHA256 fingerprint: write it as `burrow relay fingerprint` prints it (SHA256:...)"
        ));
    };
    if let Some(bad) = digest
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '+' || *c == '/'))
    {
        return Err(format!(
            "{bad:?} is not a base64 character; copy the fingerprint whole from `burrow relay fingerprint`"
        ));
    }
    if digest.len() != FINGERPRINT_CHARS {
        return Err(format!(
            "a SHA256 fingerprint has {FINGERPRINT_CHARS} base64 characters after `SHA256:`, this one has {} (cut short when copied?); copy it whole from `burrow relay fingerprint`",
            digest.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_duration_has_a_range_and_extremes_are_refused() {
        for (key, min, max, zero_ok) in DURATION_RANGES {
            for (value, ok) in [
                (Seconds::Fraction(1e300), false),
                (Seconds::Whole(u64::MAX), false),
                (Seconds::Fraction(f64::NAN), false),
                (Seconds::Fraction(f64::INFINITY), false),
                (Seconds::Fraction(-1.0), false),
                (Seconds::Fraction(min / 2.0), false),
                (Seconds::Fraction(max * 2.0), false),
                (Seconds::Whole(0), zero_ok),
                (Seconds::Fraction(min), true),
                (Seconds::Fraction(max), true),
            ] {
                let mut c = AgentConfig::new("r:22", "pi", "/k".into());
                c.host_key = Some("SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU".into());
                let slot = match key {
                    "keepalive_interval" => &mut c.keepalive_interval,
                    "keepalive_timeout" => &mut c.keepalive_timeout,
                    "busy_keepalive_interval" => &mut c.busy_keepalive_interval,
                    "backoff_min" => &mut c.backoff_min,
                    "backoff_max" => &mut c.backoff_max,
                    "probe_interval" => &mut c.probe_interval,
                    "probe_timeout" => &mut c.probe_timeout,
                    "health_interval" => &mut c.health_interval,
                    "health_refresh" => &mut c.health_refresh,
                    other => panic!("{other} has no test"),
                };
                *slot = Some(value);
                if key == "backoff_min" {
                    c.backoff_max = Some(Seconds::Fraction(86_400.0));
                }
                if key == "backoff_max" {
                    c.backoff_min = Some(Seconds::Fraction(0.01));
                }
                let result = c.validate();
                assert_eq!(result.is_ok(), ok, "{key} = {value:?}: {result:?}");
                if let Err(e) = result {
                    let e = e.to_string();
                    assert!(e.contains(key) && e.contains("out of range"), "{e}");
                }
                // Whatever validation accepts, the accessors turn into durations without panic.
                if ok {
                    let _ = (
                        c.keepalive_interval(),
                        c.schedule(),
                        c.probe_interval(),
                        c.probe_timeout(),
                    );
                    let _ = (c.backoff_min(), c.backoff_max());
                }
            }
        }
    }

    const FULL: &str = r#"
relay = "relay.example.com:443"
name = "garage-pi"
key = "/etc/burrow/id_ed25519"
host_key = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
keepalive_interval = 15
keepalive_count = 3
backoff_min = 0.5
backoff_max = 30
probe_interval = 60

[[expose]]
port = 22

[[expose]]
port = 80
to = "127.0.0.1:8080"
remote_port = 10080

[[connect]]
listen = "127.0.0.1:1883"
to = "localhost:1883"
"#;

    #[test]
    fn full_config_parses() {
        let c = AgentConfig::from_toml(FULL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.name, "garage-pi");
        assert_eq!(c.backoff_min(), Duration::from_millis(500));
        assert_eq!(c.expose.len(), 2);
        assert_eq!(
            c.expose.get(1).map(|e| (e.requested_port(), e.target())),
            Some((10080, Ok(Target::new("127.0.0.1", 8080))))
        );
        assert_eq!(
            c.expose.first().map(|e| e.target()),
            Some(Ok(Target::new("127.0.0.1", 22)))
        );
        assert_eq!(c.relay_target(), Ok(Target::new("relay.example.com", 443)));
    }

    #[test]
    fn unknown_key_names_line() {
        let text = FULL.replace("keepalive_count = 3", "keepalive_cuont = 3");
        let err = AgentConfig::from_toml(&text).err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("line 7"), "{err}");
        assert!(err.contains("keepalive_cuont"), "{err}");
    }

    #[test]
    fn profiles_set_the_timings_and_explicit_keys_win() {
        let c = AgentConfig::from_toml(FULL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.profile, Profile::Standard);
        assert_eq!(c.keepalive_interval(), Duration::from_secs(15));
        assert_eq!(c.keepalive_timeout(), Duration::from_secs(20));
        assert_eq!(c.busy_keepalive_interval(), Duration::from_secs(10));
        let metered =
            format!("profile = \"metered\"\n{FULL}").replace("keepalive_interval = 15\n", "");
        let c = AgentConfig::from_toml(&metered).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.schedule().interval, Duration::from_secs(600));
        assert_eq!(c.probe_interval(), Duration::from_secs(60));
        let c = AgentConfig::from_toml(&metered.replace("probe_interval = 60\n", ""))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.probe_interval(), Duration::from_secs(24 * 3600));
        // The busy interval never exceeds the idle one.
        let fast = format!("profile = \"metered\"\n{FULL}");
        let c = AgentConfig::from_toml(&fast).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.busy_keepalive_interval(), Duration::from_secs(15));
        let err = AgentConfig::from_toml(&format!("profile = \"cheap\"\n{FULL}"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("cheap") && err.contains("metered"), "{err}");
        for p in [Profile::Standard, Profile::Metered, Profile::Responsive] {
            assert_eq!(p.name().parse::<Profile>(), Ok(p));
        }
    }

    #[test]
    fn metadata_section() {
        let text = "name = \"pi\"\nkeepalive_interval = 30\n\n[metadata]\nkind = \"soracom\"\ninterval = 60\n";
        let c = AgentConfig::from_toml(text).unwrap_or_else(|e| panic!("{e}"));
        let m = c.metadata.clone().unwrap_or_else(|| panic!("no metadata"));
        assert_eq!(m.interval(), Duration::from_secs(60));
        assert_eq!(c.relay, "");
        for (extra, want) in [
            ("relay = \"r:22\"\n", "relay is delivered by [metadata]"),
            ("key = \"/k\"\n", "key is delivered by [metadata]"),
            (
                "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\n",
                "host_key is delivered by [metadata]",
            ),
        ] {
            let err = AgentConfig::from_toml(&format!("{extra}{text}"))
                .err()
                .map(|e| e.to_string());
            assert!(err.clone().unwrap_or_default().contains(want), "{err:?}");
        }
        let err = AgentConfig::from_toml(&text.replace("soracom", "sorakom"))
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("line 5"));
        let err = AgentConfig::from_toml(&format!("{text}colour = 1\n"))
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("colour"));
        // bind is for stock sshd relays (with remote_port) only.
        let bound = FULL.replace("remote_port = 10080", "bind = \"0.0.0.0\"");
        let err = AgentConfig::from_toml(&bound).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("set remote_port too"));
        let bound = FULL.replace(
            "remote_port = 10080",
            "remote_port = 10080\nbind = \"0.0.0.0\"",
        );
        assert!(AgentConfig::from_toml(&bound).is_ok());
        // Without [metadata], a missing relay says how to fix it.
        let err = AgentConfig::from_toml("name = \"pi\"\nkey = \"/k\"\n")
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("no relay: set relay"));
    }

    #[test]
    fn unknown_key_in_table_names_line() {
        let text = FULL.replace("remote_port = 10080", "remote_prot = 10080");
        let err = AgentConfig::from_toml(&text).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("line 18"));
    }

    #[test]
    fn invalid_values() {
        let cases = [
            (
                "name = \"garage-pi\"",
                "name = \"Garage\"",
                "invalid device name",
            ),
            (
                "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"",
                "",
                "no relay host key pin",
            ),
            (
                "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"",
                "host_key = \"abc\"",
                "SHA256:",
            ),
            (
                "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"",
                "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJW\"",
                "has 35",
            ),
            (
                "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"",
                "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSu!U\"",
                "base64",
            ),
            ("backoff_min = 0.5", "backoff_min = 60", "backoff_max"),
            ("keepalive_count = 3", "keepalive_count = 0", "at least 1"),
            (
                "to = \"localhost:1883\"",
                "to = \"localhost\"",
                "has no port",
            ),
            ("port = 80", "port = 22", "listed twice"),
            (
                "relay = \"relay.example.com:443\"",
                "relay = \"relay:x\"",
                "not a port",
            ),
        ];
        for (from, to, want) in cases {
            let text = FULL.replace(from, to);
            let err = AgentConfig::from_toml(&text).err().map(|e| e.to_string());
            let err = err.unwrap_or_default();
            assert!(err.contains(want), "{to}: {err}");
        }
    }

    #[test]
    fn bare_relay_host_gets_port_22() {
        let mut c = AgentConfig::new("relay", "pi", PathBuf::from("k"));
        c.host_key = Some("SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU".into());
        assert_eq!(c.relay_target(), Ok(Target::new("relay", 22)));
        assert!(c.validate().is_ok());
    }
}

#[cfg(test)]
mod console_tests {
    use super::*;

    #[test]
    fn consoles_parse_with_defaults_and_ports() {
        let text = r#"
relay = "r:1"
name = "pi"
key = "k"
host_key = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
[[console]]
device = "/dev/ttyUSB0"
[[console]]
name = "aux"
device = "/dev/ttyUSB1"
baud = 115200
parity = "even"
flow_control = "hardware"
"#;
        let c = AgentConfig::from_toml(text).unwrap();
        let consoles: Vec<_> = c
            .consoles()
            .map(|(c, p)| (c.name.clone(), c.baud, p))
            .collect();
        assert_eq!(
            consoles,
            [
                ("console".into(), 9600, 2217),
                ("aux".into(), 115_200, 2218)
            ]
        );
        assert_eq!(c.console[1].parity, Parity::Even);
        let bad = text.replace("parity = \"even\"", "parity = \"evn\"");
        let err = AgentConfig::from_toml(&bad).unwrap_err().to_string();
        assert!(err.contains("line 12"), "{err}");
        let dup = text.replace("name = \"aux\"", "name = \"console\"");
        assert!(
            AgentConfig::from_toml(&dup)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn console_flag() {
        assert_eq!(
            Console::parse_flag("/dev/ttyUSB0@115200").unwrap(),
            Console::new("console", "/dev/ttyUSB0", 115_200)
        );
        assert_eq!(
            Console::parse_flag("aux=/dev/ttyS1").unwrap(),
            Console::new("aux", "/dev/ttyS1", 9600)
        );
        assert!(Console::parse_flag("/dev/ttyUSB0@fast").is_err());
        assert!(Console::parse_flag("@9600").is_err());
    }
}
