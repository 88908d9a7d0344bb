//! `burrow agent enroll JOIN`: the device makes its own key, proves the join token to a relay
//! pinned from the string, registers the key's public half under its name, and writes the
//! agent config that later starts use. The private key never leaves the device.
//!
//! The new key is written beside the final path first (`KEY.new`) and put in place only once
//! the relay registered it: a refusal changes nothing on the device, and an attempt cut short
//! is finished by running the command again (the relay answers the same key again without
//! spending a use).

//! # Layout
//! - `exchange`: one relay: the SSH login with the token, the request, the answer.
//! - `config`: the agent config written for the enrolled device.
//! - `join_file`: the join file of a first boot.

mod config;
mod exchange;
mod join_file;

use std::path::{Path, PathBuf};
use std::time::Duration;

use burrow_proto::agent_config::Expose;
use burrow_proto::join::{EnrollReply, JoinToken};
use burrow_ssh::auth::ClientKey;

pub use config::config_text;
pub use join_file::{JoinFile, parse_join_file};

/// Where the device's name comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameFrom {
    /// Given (`--name`).
    Given(String),
    /// This machine's host name, made a valid device name.
    Hostname,
    /// The SIM's IMSI, from SORACOM's metadata service at this base URL.
    Imsi(String),
}

/// What `enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// The join string, read.
    pub join: JoinToken,
    /// Where the name comes from.
    pub name: NameFrom,
    /// Where the device's private key goes.
    pub key: PathBuf,
    /// Where the agent config goes.
    pub config: PathBuf,
    /// Endpoints written into the config.
    pub expose: Vec<Expose>,
    /// Replace an existing config.
    pub force: bool,
}

/// Why enrolling failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The relay said no, or the string cannot work (wrong pin): trying again will not help.
    #[error("{0}")]
    Refused(String),
    /// No relay could be reached: worth trying again.
    #[error("{0}")]
    Unreachable(String),
    /// Something on this device (a file, the name).
    #[error("{0}")]
    Local(String),
}

/// What an enrollment did.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The relay's answer.
    pub reply: EnrollReply,
    /// The relay that answered.
    pub relay: String,
    /// The key's fingerprint.
    pub fingerprint: String,
}

/// A device name made from a host name: lower case, other characters as `-`.
pub fn name_from_hostname(host: &str) -> Option<String> {
    let mut name: String = host
        .trim()
        .split('.')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(burrow_proto::name::MAX_NAME_LEN);
    let name = name.trim_matches('-').to_string();
    burrow_proto::name::is_valid_name(&name).then_some(name)
}

/// The device's name, from where `from` says.
pub async fn resolve_name(from: &NameFrom) -> Result<String, EnrollError> {
    let name = match from {
        NameFrom::Given(n) => n.clone(),
        NameFrom::Hostname => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .or_else(|_| std::fs::read_to_string("/etc/hostname"))
                .map_err(|e| {
                    EnrollError::Local(format!(
                        "cannot read this machine's host name ({e}); give --name NAME"
                    ))
                })?;
            return name_from_hostname(&host).ok_or_else(|| {
                EnrollError::Local(format!(
                    "the host name {:?} does not make a device name; give --name NAME",
                    host.trim()
                ))
            });
        }
        NameFrom::Imsi(url) => crate::metadata::imsi(url, Duration::from_secs(10))
            .await
            .map_err(|e| {
                EnrollError::Unreachable(format!(
                    "cannot read the SIM's IMSI for the device name: {e} (the SIM's group needs the metadata service on; or give --name NAME)"
                ))
            })?,
    };
    burrow_proto::name::check_name("device", &name)
        .map(|()| name.clone())
        .map_err(|e| EnrollError::Local(format!("--name: {e}")))
}

/// Enrolls this device: see the module documentation.
pub async fn enroll(options: &EnrollOptions) -> Result<Enrolled, EnrollError> {
    let local = |m: String| EnrollError::Local(m);
    if options.config.exists() && !options.force {
        return Err(local(format!(
            "{} exists: this device looks enrolled already (its agent starts from that file). To enroll again, move it away, give --config another path, or add --force",
            options.config.display()
        )));
    }
    let name = resolve_name(&options.name).await?;
    let key = new_key(&options.key)?;
    let client_key = ClientKey::new(key.clone());
    let fingerprint = burrow_io::keys::fingerprint(key.public_key());
    let mut last = None;
    for relay in &options.join.relays {
        match exchange::attempt(relay, &options.join, &name, &client_key).await {
            Ok(reply) => {
                install_key(&options.key)?;
                config::write_config(options, &reply)?;
                return Ok(Enrolled {
                    reply,
                    relay: relay.clone(),
                    fingerprint,
                });
            }
            Err(EnrollError::Unreachable(why)) => {
                tracing::warn!("{why}");
                last = Some(why);
            }
            Err(other) => return Err(other),
        }
    }
    Err(EnrollError::Unreachable(
        last.unwrap_or_else(|| "the join string names no relay".into()),
    ))
}

/// The key waiting beside `path` (`PATH.new`): made now, or left by an attempt cut short.
fn new_key(path: &Path) -> Result<burrow_io::keys::PrivateKey, EnrollError> {
    let pending = pending_key_path(path);
    if pending.exists() {
        return burrow_io::keys::load_private_key(&pending)
            .map_err(|e| EnrollError::Local(e.to_string()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| EnrollError::Local(format!("cannot create {}: {e}", dir.display())))?;
    }
    let key = burrow_io::keys::generate_ed25519();
    burrow_io::keys::write_private_key(&pending, &key)
        .map_err(|e| EnrollError::Local(e.to_string()))?;
    Ok(key)
}

fn pending_key_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".new");
    PathBuf::from(p)
}

/// Puts the registered key in place; a key that was there is kept as `PATH.old`.
fn install_key(path: &Path) -> Result<(), EnrollError> {
    let io = |what: &str, e: std::io::Error| {
        EnrollError::Local(format!("cannot {what} {}: {e}", path.display()))
    };
    if path.exists() {
        let mut old = path.as_os_str().to_owned();
        old.push(".old");
        std::fs::rename(path, &old).map_err(|e| io("move aside the old key", e))?;
    }
    std::fs::rename(pending_key_path(path), path).map_err(|e| io("put in place the key", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_become_device_names() {
        assert_eq!(
            name_from_hostname("raspberrypi\n").as_deref(),
            Some("raspberrypi")
        );
        assert_eq!(
            name_from_hostname("Garage_Pi.local").as_deref(),
            Some("garage-pi")
        );
        assert_eq!(name_from_hostname("--").as_deref(), None);
    }
}
