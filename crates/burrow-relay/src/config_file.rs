//! The relay's config file (`burrow relay --config FILE`): TOML, unknown keys are errors that
//! name their line. It holds what flags say badly (a list of webhooks with their options);
//! flags given on the command line override what it sets.
//!
//! ```toml
//! [alerts]
//! offline_grace = 300
//!
//! [[alert]]
//! url = "https://hooks.example.com/services/T000/B000/XXXX"
//!
//! [[alert]]
//! url = "http://alertmanager:9093/api/v2/alerts"
//! format = "alertmanager"
//! events = ["device-offline", "device-online", "flapping"]
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::alerts::AlertsConfig;
use crate::alerts::config::{AlertSettings, WebhookEntry};

/// The file's contents.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[alerts]`: when alerts are raised and retried.
    #[serde(default)]
    pub alerts: AlertSettings,
    /// `[[alert]]`: the webhooks.
    #[serde(default)]
    pub alert: Vec<WebhookEntry>,
}

impl ConfigFile {
    /// Parses a TOML document; the error has the line of what is wrong.
    pub fn from_toml(text: &str) -> Result<ConfigFile, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads and parses `path`; the error names the file.
    pub fn load(path: &Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
        ConfigFile::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Applies the file to `alerts`; the error names the entry that is wrong.
    pub fn apply(&self, alerts: &mut AlertsConfig) -> Result<(), String> {
        self.alerts.apply(alerts)?;
        alerts.webhooks = self
            .alert
            .iter()
            .map(WebhookEntry::webhook)
            .collect::<Result<_, _>>()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_is_read_and_with_its_comments_removed_too() {
        let example = include_str!("../../../dist/examples/relay.toml");
        let file = ConfigFile::from_toml(example).unwrap();
        file.apply(&mut AlertsConfig::default()).unwrap();
        // Every commented setting is one a user can uncomment.
        let uncommented: String = example
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| {
                        !r.starts_with(char::is_uppercase)
                            && (r.contains(" = ") || r.starts_with('['))
                    })
                    .unwrap_or(l)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let file =
            ConfigFile::from_toml(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let mut alerts = AlertsConfig::default();
        file.apply(&mut alerts).unwrap();
        assert_eq!(alerts.webhooks.len(), 2);
    }

    #[test]
    fn webhooks_and_settings_are_read_and_mistakes_named() {
        let file = ConfigFile::from_toml(
            r#"
[alerts]
offline_grace = 60
retry_first = 0.5

[[alert]]
url = "http://127.0.0.1:9000/hook"

[[alert]]
url = "https://am.example.com/api/v2/alerts"
format = "alertmanager"
events = ["device-offline", "device-online"]
"#,
        )
        .unwrap();
        let mut alerts = AlertsConfig::default();
        file.apply(&mut alerts).unwrap();
        assert_eq!(alerts.offline_grace.as_secs(), 60);
        assert_eq!(alerts.retry_first.as_millis(), 500);
        assert_eq!(alerts.webhooks.len(), 2);
        assert_eq!(
            alerts.webhooks[1].format,
            crate::alerts::Format::Alertmanager
        );
        assert!(!alerts.webhooks[1].takes(crate::alerts::Kind::TokenUsed));

        let e = ConfigFile::from_toml("[[alert]]\nurl = \"http://x/\"\nformt = \"json\"\n")
            .unwrap_err();
        assert!(e.contains("formt") && e.contains("line 3"), "{e}");
        let e = ConfigFile::from_toml("[alerts]\noffline_grace = -1\n")
            .unwrap()
            .apply(&mut AlertsConfig::default())
            .unwrap_err();
        assert!(e.contains("offline_grace"), "{e}");
    }
}
