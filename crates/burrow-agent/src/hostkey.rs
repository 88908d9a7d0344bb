//! Pinning the relay's host key: a `SHA256:` fingerprint, a known_hosts file, or trust on
//! first use (only when asked for, and then recorded in the known_hosts file).

use std::path::PathBuf;

use russh::keys::PublicKey;

use burrow_io::keys::fingerprint;

/// How the relay's host key is checked.
#[derive(Debug, Clone)]
pub enum HostKeyPolicy {
    /// The key must have this fingerprint.
    Fingerprint(String),
    /// The key must be in this known_hosts file under the relay's host and port.
    KnownHosts {
        /// The file.
        path: PathBuf,
        /// Accept and record a key when the file has none for this relay.
        trust_on_first_use: bool,
    },
}

/// Outcome of a successful check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The key matched the pin.
    Matched,
    /// The key was unknown and is now recorded (trust on first use).
    Learned(String),
}

impl HostKeyPolicy {
    /// Checks the relay's key; the error names both fingerprints and the fix.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Result<Verified, String> {
        let got = fingerprint(key);
        match self {
            HostKeyPolicy::Fingerprint(want) => {
                if *want == got {
                    Ok(Verified::Matched)
                } else {
                    Err(format!(
                        "relay host key changed or wrong: expected {want}, relay {host}:{port} presented {got}; \
                         if the relay really got a new key, update the pin (host_key in the config, or --host-key; see `burrow relay fingerprint`)"
                    ))
                }
            }
            HostKeyPolicy::KnownHosts {
                path,
                trust_on_first_use,
            } => {
                let known = if path.exists() {
                    russh::keys::known_hosts::known_host_keys_path(host, port, path)
                        .map_err(|e| format!("cannot read known_hosts {}: {e}", path.display()))?
                } else {
                    Vec::new()
                };
                if known.iter().any(|(_, k)| k == key) {
                    return Ok(Verified::Matched);
                }
                if let Some((line, k)) = known.first() {
                    return Err(format!(
                        "relay host key changed or wrong: {} line {line} expects {}, relay {host}:{port} presented {got}; \
                         if the relay really got a new key, remove that line",
                        path.display(),
                        fingerprint(k)
                    ));
                }
                if !trust_on_first_use {
                    return Err(format!(
                        "relay {host}:{port} is not in {} (its key is {got}); add it, set host_key = \"{got}\" after \
                         checking it with `burrow relay fingerprint`, or allow trust on first use",
                        path.display()
                    ));
                }
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                russh::keys::known_hosts::learn_known_hosts_path(host, port, key, path)
                    .map_err(|e| format!("cannot record relay key in {}: {e}", path.display()))?;
                Ok(Verified::Learned(got))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_pin() {
        let k = burrow_io::keys::generate_ed25519();
        let other = burrow_io::keys::generate_ed25519();
        let p = HostKeyPolicy::Fingerprint(fingerprint(k.public_key()));
        assert_eq!(p.check("r", 22, k.public_key()), Ok(Verified::Matched));
        let err = p.check("r", 22, other.public_key()).unwrap_err();
        assert!(err.contains(&fingerprint(k.public_key())), "{err}");
        assert!(err.contains(&fingerprint(other.public_key())), "{err}");
    }

    #[test]
    fn known_hosts_tofu_then_pinned() {
        let dir = tempdir();
        let path = dir.join("known_hosts");
        let k = burrow_io::keys::generate_ed25519();
        let other = burrow_io::keys::generate_ed25519();
        let strict = HostKeyPolicy::KnownHosts {
            path: path.clone(),
            trust_on_first_use: false,
        };
        assert!(strict.check("127.0.0.1", 2222, k.public_key()).is_err());
        let tofu = HostKeyPolicy::KnownHosts {
            path: path.clone(),
            trust_on_first_use: true,
        };
        assert!(matches!(
            tofu.check("127.0.0.1", 2222, k.public_key()),
            Ok(Verified::Learned(_))
        ));
        assert_eq!(
            strict.check("127.0.0.1", 2222, k.public_key()),
            Ok(Verified::Matched)
        );
        let err = tofu
            .check("127.0.0.1", 2222, other.public_key())
            .unwrap_err();
        assert!(err.contains(&fingerprint(k.public_key())), "{err}");
        assert!(err.contains(&fingerprint(other.public_key())), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "burrow-hostkey-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
