//! The agent config written for an enrolled device, in the format of
//! `burrow_proto::agent_config`, whole or not at all.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use burrow_proto::agent_config::Expose;
use burrow_proto::join::EnrollReply;

use super::{EnrollError, EnrollOptions};

/// A TOML string.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| quoted(s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The agent config for an enrolled device (the format of `burrow_proto::agent_config`).
pub fn config_text(
    reply: &EnrollReply,
    key: &Path,
    expose: &[Expose],
    token: &str,
    join_relays: &[String],
    join_pins: &[String],
) -> String {
    // The relay's own list is the newest; the string's is what we have when it sent none.
    let relays = if reply.relays.is_empty() {
        join_relays
    } else {
        &reply.relays
    };
    let mut pins = join_pins.to_vec();
    for p in &reply.host_keys {
        if !pins.contains(p) {
            pins.push(p.clone());
        }
    }
    let mut out = format!(
        "# Written by `burrow agent enroll` at {} (join token {token}).\n# See `burrow agent --help` and the README's agent config reference.\n",
        crate::status::now_rfc3339()
    );
    out.push_str(&format!("relay = {}\n", list(relays)));
    out.push_str(&format!("name = {}\n", quoted(&reply.device)));
    out.push_str(&format!("key = {}\n", quoted(&key.display().to_string())));
    out.push_str(&format!("host_key = {}\n", list(&pins)));
    for e in expose {
        out.push_str(&format!("\n[[expose]]\nport = {}\n", e.port));
        if let Some(to) = &e.to {
            out.push_str(&format!("to = {}\n", quoted(to)));
        }
    }
    out
}

/// Writes the config whole or not at all (a temporary file renamed over it).
pub(super) fn write_config(
    options: &EnrollOptions,
    reply: &EnrollReply,
) -> Result<(), EnrollError> {
    let path = &options.config;
    let text = config_text(
        reply,
        &options.key,
        &options.expose,
        &options.join.id,
        &options.join.relays,
        &options.join.pins,
    );
    // What is written must be what the agent reads back.
    burrow_proto::agent_config::AgentConfig::from_toml(&text).map_err(|e| {
        EnrollError::Local(format!(
            "the config made for {} does not read back: {e}",
            path.display()
        ))
    })?;
    let io = |e: std::io::Error| {
        EnrollError::Local(format!(
            "the device is enrolled, but its config cannot be written to {}: {e}",
            path.display()
        ))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_written_reads_back() {
        let reply = EnrollReply {
            device: "garage-pi".into(),
            pending: false,
            relays: vec!["r1.example.com:443".into(), "[2001:db8::1]:443".into()],
            host_keys: vec![format!("SHA256:{}", "a".repeat(43))],
            labels: Default::default(),
            replaced_keys: Vec::new(),
        };
        let expose = [Expose {
            port: 22,
            to: None,
            remote_port: None,
            bind: None,
        }];
        let text = config_text(
            &reply,
            Path::new("/var/lib/burrow-agent/id \"x\""),
            &expose,
            "t1",
            &[],
            &[format!("SHA256:{}", "d".repeat(43))],
        );
        let c = burrow_proto::agent_config::AgentConfig::from_toml(&text).unwrap();
        assert_eq!(c.name, "garage-pi");
        assert_eq!(c.relay_targets().unwrap().len(), 2);
        let pins = format!("SHA256:{},SHA256:{}", "d".repeat(43), "a".repeat(43));
        assert_eq!(c.host_key.as_deref(), Some(pins.as_str()));
        assert_eq!(c.key, Path::new("/var/lib/burrow-agent/id \"x\""));
        assert_eq!(c.expose.len(), 1);
    }
}
