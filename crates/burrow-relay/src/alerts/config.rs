//! How alerts are raised and where they go: `[alerts]` and `[[alert]]` in the relay's config
//! file (`--config FILE`), `--alert-webhook URL` and friends on the command line.

use std::path::PathBuf;
use std::time::Duration;

use burrow_proto::agent_config::Seconds;
use burrow_proto::metadata::HttpUrl;
use serde::Deserialize;

use super::Kind;

/// Default time a device may be offline before it is alerted.
pub const DEFAULT_OFFLINE_GRACE: Duration = Duration::from_secs(300);
/// Default reconnects within [`DEFAULT_FLAPPING_WINDOW`] that make a device flapping.
pub const DEFAULT_FLAPPING_RECONNECTS: u32 = 5;
/// Default window in which reconnects are counted for flapping.
pub const DEFAULT_FLAPPING_WINDOW: Duration = Duration::from_secs(600);
/// Default time a flapping device's offline alerts wait (and its next flapping alert).
pub const DEFAULT_FLAPPING_DAMPING: Duration = Duration::from_secs(3600);
/// Default first pause after a failed post; it doubles with each failure.
pub const DEFAULT_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Default longest pause between posts to a webhook that fails.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(300);
/// Default age after which an undelivered alert is given up (and says so).
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(7 * 86_400);

/// The payload a webhook gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// burrow's own JSON (`{"source":"burrow","alerts":[...]}`).
    #[default]
    Json,
    /// Alertmanager's `POST /api/v2/alerts` body: an array of alerts with labels,
    /// annotations, `startsAt` and `endsAt`; a device back online resolves its offline alert.
    Alertmanager,
}

/// One webhook.
#[derive(Clone)]
pub struct Webhook {
    /// Where alerts are posted.
    pub url: HttpUrl,
    /// The payload.
    pub format: Format,
    /// The kinds it takes (all when empty).
    pub events: Vec<Kind>,
    /// How it is named in the registry, logs and `relay alerts`: scheme, host and a hash of
    /// the whole URL (paths often carry a secret token, as Slack's do).
    pub target: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Webhook({}, {:?})", self.target, self.format)
    }
}

impl Webhook {
    /// A webhook for `url`; the error names the URL's problem.
    pub fn new(url: &str, format: Format, events: Vec<Kind>) -> Result<Webhook, String> {
        let parsed: HttpUrl = url.parse()?;
        let digest = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
        let hash: String = digest
            .as_ref()
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        let scheme = if parsed.tls { "https" } else { "http" };
        let target = format!("{scheme}://{}/… #{hash}", parsed.host_header());
        Ok(Webhook {
            url: parsed,
            format,
            events,
            target,
        })
    }

    /// Whether it takes alerts of `kind`.
    pub fn takes(&self, kind: Kind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }
}

/// Everything about alerts.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// Where alerts go (none: they are only kept).
    pub webhooks: Vec<Webhook>,
    /// Time a device may be offline before it is alerted.
    pub offline_grace: Duration,
    /// Reconnects within `flapping_window` that make a device flapping.
    pub flapping_reconnects: u32,
    /// The window reconnects are counted in.
    pub flapping_window: Duration,
    /// How long a flapping device's offline alerts wait, and its next flapping alert.
    pub flapping_damping: Duration,
    /// First pause after a failed post; doubles with each failure.
    pub retry_first: Duration,
    /// Longest pause.
    pub retry_max: Duration,
    /// Undelivered alerts older than this are given up.
    pub give_up_after: Duration,
    /// Extra certificate authorities for `https` webhooks.
    pub ca_file: Option<PathBuf>,
    /// How often the audit trail and timers are looked at.
    pub poll: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhooks: Vec::new(),
            offline_grace: DEFAULT_OFFLINE_GRACE,
            flapping_reconnects: DEFAULT_FLAPPING_RECONNECTS,
            flapping_window: DEFAULT_FLAPPING_WINDOW,
            flapping_damping: DEFAULT_FLAPPING_DAMPING,
            retry_first: DEFAULT_RETRY_FIRST,
            retry_max: DEFAULT_RETRY_MAX,
            give_up_after: DEFAULT_GIVE_UP_AFTER,
            ca_file: None,
            poll: Duration::from_secs(1),
        }
    }
}

impl AlertsConfig {
    /// TLS for `https` webhooks, when any is; a failure to load roots is logged, and those
    /// webhooks then fail with that reason.
    pub(crate) fn tls(&self) -> Option<burrow_io::tls::Tls> {
        if !self.webhooks.iter().any(|w| w.url.tls) {
            return None;
        }
        match burrow_io::tls::Tls::new(self.ca_file.as_deref(), "[alerts] ca_file") {
            Ok(tls) => Some(tls),
            Err(e) => {
                tracing::error!("https webhooks cannot be reached: {e}");
                None
            }
        }
    }

    /// The pause after `failures` failed posts in a row: doubling from `retry_first`, at most
    /// `retry_max`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.retry_first
            .saturating_mul(1u32 << doublings)
            .min(self.retry_max)
    }
}

/// `[alerts]` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// Seconds a device may be offline before it is alerted (default 300).
    pub offline_grace: Option<Seconds>,
    /// Reconnects within `flapping_window` that make a device flapping (default 5).
    pub flapping_reconnects: Option<u32>,
    /// Seconds in which reconnects are counted (default 600).
    pub flapping_window: Option<Seconds>,
    /// Seconds a flapping device's offline alerts wait (default 3600).
    pub flapping_damping: Option<Seconds>,
    /// Seconds before the first retry of a failed post; doubles each time (default 1).
    pub retry_first: Option<Seconds>,
    /// Longest pause between retries, seconds (default 300).
    pub retry_max: Option<Seconds>,
    /// Seconds after which an undelivered alert is given up (default 604800: a week).
    pub give_up_after: Option<Seconds>,
    /// PEM file of extra certificate authorities for `https` webhooks.
    pub ca_file: Option<PathBuf>,
}

/// One `[[alert]]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEntry {
    /// `http://` or `https://` URL to post to.
    pub url: String,
    /// `json` (default) or `alertmanager`.
    #[serde(default)]
    pub format: Format,
    /// The kinds it takes (default all): device-offline, device-online, flapping, quarantine,
    /// token-used, token-refused, operator-locked, console-pattern.
    #[serde(default)]
    pub events: Vec<String>,
}

impl WebhookEntry {
    /// The webhook, or what is wrong with the entry.
    pub fn webhook(&self) -> Result<Webhook, String> {
        let mut events = Vec::new();
        for name in &self.events {
            let kind = Kind::parse(name).ok_or_else(|| {
                format!(
                    "[[alert]] events: unknown kind {name:?}; use {}",
                    Kind::ALL.map(Kind::as_str).join(", ")
                )
            })?;
            events.push(kind);
        }
        Webhook::new(&self.url, self.format, events)
            .map_err(|e| format!("[[alert]] url {:?}: {e}", self.url))
    }
}

impl AlertSettings {
    /// Applies the settings given to `config`; the error names a value out of range.
    pub fn apply(&self, config: &mut AlertsConfig) -> Result<(), String> {
        let secs = |key: &str, v: Option<Seconds>, min: f64, max: f64| -> Result<_, String> {
            match v {
                Some(s) => {
                    s.check_range(&format!("[alerts] {key}"), min, max, false)?;
                    Ok(Some(s.duration()))
                }
                None => Ok(None),
            }
        };
        if let Some(d) = secs("offline_grace", self.offline_grace, 0.05, 7.0 * 86_400.0)? {
            config.offline_grace = d;
        }
        if let Some(d) = secs("flapping_window", self.flapping_window, 1.0, 86_400.0)? {
            config.flapping_window = d;
        }
        if let Some(d) = secs(
            "flapping_damping",
            self.flapping_damping,
            1.0,
            7.0 * 86_400.0,
        )? {
            config.flapping_damping = d;
        }
        if let Some(d) = secs("retry_first", self.retry_first, 0.01, 3600.0)? {
            config.retry_first = d;
        }
        if let Some(d) = secs("retry_max", self.retry_max, 0.01, 86_400.0)? {
            config.retry_max = d;
        }
        if let Some(d) = secs("give_up_after", self.give_up_after, 1.0, 365.0 * 86_400.0)? {
            config.give_up_after = d;
        }
        if let Some(n) = self.flapping_reconnects {
            if !(2..=1000).contains(&n) {
                return Err(format!(
                    "[alerts] flapping_reconnects = {n} is out of range: use 2 to 1000"
                ));
            }
            config.flapping_reconnects = n;
        }
        if config.retry_max < config.retry_first {
            return Err("[alerts] retry_max must not be smaller than retry_first".into());
        }
        config.ca_file.clone_from(&self.ca_file);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_is_named_without_its_secret_path() {
        let w = Webhook::new(
            "https://hooks.example.com/services/T000/B000/SECRET",
            Format::Json,
            vec![],
        )
        .unwrap();
        assert!(
            w.target.starts_with("https://hooks.example.com/… #"),
            "{}",
            w.target
        );
        assert!(!w.target.contains("SECRET"));
        assert!(!format!("{w:?}").contains("SECRET"));
        assert!(Webhook::new("ftp://x", Format::Json, vec![]).is_err());
    }

    #[test]
    fn retries_double_up_to_the_cap() {
        let c = AlertsConfig {
            retry_first: Duration::from_secs(1),
            retry_max: Duration::from_secs(10),
            ..AlertsConfig::default()
        };
        let pauses: Vec<u64> = (1..=6).map(|f| c.backoff(f).as_secs()).collect();
        assert_eq!(pauses, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(c.backoff(1000), Duration::from_secs(10));
    }

    #[test]
    fn events_are_checked_against_the_known_kinds() {
        let entry = WebhookEntry {
            url: "http://127.0.0.1:9/".into(),
            format: Format::Alertmanager,
            events: vec!["device-offline".into(), "device-0ffline".into()],
        };
        let e = entry.webhook().unwrap_err();
        assert!(
            e.contains("device-0ffline") && e.contains("device-online"),
            "{e}"
        );
    }
}
