//! Adding a relay host-key pin to an agent config file's text, changing nothing else: the
//! value of the top-level `host_key` becomes a list with the new pin after the old ones, and
//! every comment, setting and table around it stays as the operator wrote it. The agent does
//! this when a relay proved it holds a new key (a host key rotation).

use serde::Deserialize;

use crate::agent_config::AgentConfig;

/// Why the text could not be changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinEditError {
    /// The config has no `host_key` to add to (it pins through a known_hosts file, or its
    /// pins come from the command line or metadata).
    #[error("the config has no host_key setting to add the pin to")]
    NoHostKey,
    /// The text does not parse, or would not after the change.
    #[error("{0}")]
    Invalid(String),
}

/// Where the top-level `host_key` value sits in the text.
#[derive(Deserialize)]
struct Located {
    host_key: Option<toml::Spanned<toml::Value>>,
}

/// `text` with `pin` (`SHA256:...`) added to its `host_key`; `None` when it is already there.
pub fn add_pin(text: &str, pin: &str) -> Result<Option<String>, PinEditError> {
    let before = AgentConfig::from_toml(text).map_err(|e| PinEditError::Invalid(e.to_string()))?;
    let mut pins: Vec<String> = match &before.host_key {
        Some(list) => list.split(',').map(|p| p.trim().to_string()).collect(),
        None => return Err(PinEditError::NoHostKey),
    };
    if pins.iter().any(|p| p == pin) {
        return Ok(None);
    }
    let located: Located =
        toml::from_str(text).map_err(|e| PinEditError::Invalid(e.to_string()))?;
    let span = located.host_key.ok_or(PinEditError::NoHostKey)?.span();
    let (Some(head), Some(tail)) = (text.get(..span.start), text.get(span.end..)) else {
        return Err(PinEditError::Invalid(
            "host_key is not where it was read".into(),
        ));
    };
    pins.push(pin.to_string());
    let list = pins
        .iter()
        .map(|p| toml::Value::String(p.clone()).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let edited = format!("{head}[{list}]{tail}");
    // What is written must read back as the same config with one more pin.
    let after = AgentConfig::from_toml(&edited).map_err(|e| {
        PinEditError::Invalid(format!(
            "the config with the new pin does not read back: {e}"
        ))
    })?;
    let expected = AgentConfig {
        host_key: Some(pins.join(",")),
        ..before
    };
    if after != expected {
        return Err(PinEditError::Invalid(
            "adding the pin would change other settings".into(),
        ));
    }
    Ok(Some(edited))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
    const NEW: &str = "SHA256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const OTHER: &str = "SHA256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn the_pin_is_added_and_nothing_else_changes() {
        let text = format!(
            "# Written by hand.\nrelay = \"relay.example:2222\" # the relay\nname = \"pi\"\nkey = \"/k\"\n\
             host_key = \"{OLD}\"   # pinned 2026-01-01\n\n# our web UI\n[[expose]]\nport = 80\n"
        );
        let edited = add_pin(&text, NEW).unwrap().unwrap();
        assert_eq!(
            edited,
            text.replace(&format!("\"{OLD}\""), &format!("[\"{OLD}\", \"{NEW}\"]"))
        );
        // Again: already there.
        assert_eq!(add_pin(&edited, NEW), Ok(None));
        // A list (a cluster's pins) over several lines grows by one.
        let text = format!(
            "relay = [\"a:1\", \"b:1\"]\nname = \"pi\"\nkey = \"/k\"\nhost_key = [\n  \"{OLD}\", # a\n  \"{OTHER}\", # b\n]\nprofile = \"metered\"\n"
        );
        let edited = add_pin(&text, NEW).unwrap().unwrap();
        assert!(edited.ends_with("\nprofile = \"metered\"\n"), "{edited}");
        let c = AgentConfig::from_toml(&edited).unwrap();
        assert_eq!(c.host_key, Some(format!("{OLD},{OTHER},{NEW}")));
    }

    #[test]
    fn a_config_without_host_key_is_left_alone() {
        let text = "relay = \"r:1\"\nname = \"pi\"\nkey = \"/k\"\nknown_hosts = \"/kh\"\n";
        assert_eq!(add_pin(text, NEW), Err(PinEditError::NoHostKey));
        assert!(matches!(
            add_pin("name = ", NEW),
            Err(PinEditError::Invalid(_))
        ));
    }
}
