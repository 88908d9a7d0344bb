//! Pinning the relay's host key: a `SHA256:` fingerprint, a known_hosts file, or trust on
//! first use (only when asked for, and then recorded in the known_hosts file).

use std::io::Write;
use std::path::{Path, PathBuf};

use burrow_io::keys::{PublicKey, fingerprint};
use burrow_proto::addr::Target;

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
                // Several pins (the relays of a cluster) are comma-separated.
                if want.split(',').any(|w| w.trim() == got) {
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
                    known_host_keys(host, port, path)
                        .map_err(|e| format!("cannot read known_hosts {}: {e}", path.display()))?
                } else {
                    Vec::new()
                };
                if known.iter().any(|(_, k)| k.key_data() == key.key_data()) {
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
                learn_host_key(host, port, key, path)
                    .map_err(|e| format!("cannot record relay key in {}: {e}", path.display()))?;
                Ok(Verified::Learned(got))
            }
        }
    }
}

/// Pins a key the relay at `target` proved it holds (a host key rotation): in memory at once,
/// and in the config file (or known_hosts file) the pins came from, without touching anything
/// else in it. A file that cannot be written is said in the log; the key stays trusted until
/// the agent stops.
pub(crate) fn learn(shared: &crate::handler::Shared, target: &Target, blob: &[u8]) {
    let Ok(key) = PublicKey::from_bytes(blob) else {
        return;
    };
    let fp = fingerprint(&key);
    let mut policy = shared.host_key.lock().unwrap_or_else(|e| e.into_inner());
    if let HostKeyPolicy::Fingerprint(pins) = &*policy
        && pins.split(',').any(|p| p.trim() == fp)
    {
        return; // Another session to it learned it first.
    }
    let saved = match &mut *policy {
        HostKeyPolicy::Fingerprint(pins) => {
            pins.push(',');
            pins.push_str(&fp);
            match &shared.pin_file {
                Some(path) => add_pin_to_file(path, &fp)
                    .map(|()| format!("added to host_key in {}", path.display()))
                    .map_err(|e| {
                        format!(
                            "cannot add it to {}: {e}; add \"{fp}\" to host_key there by hand",
                            path.display()
                        )
                    }),
                None => Err(format!(
                    "the pins were not read from a config file: add --host-key {fp} where they are given"
                )),
            }
        }
        HostKeyPolicy::KnownHosts { path, .. } => {
            match known_host_keys(&target.host, target.port, path) {
                Ok(known) if known.iter().any(|(_, k)| k.key_data() == key.key_data()) => return,
                _ => {}
            }
            learn_host_key(&target.host, target.port, &key, path)
                .map(|()| format!("added to {}", path.display()))
                .map_err(|e| format!("cannot add it to {}: {e}", path.display()))
        }
    };
    match saved {
        Ok(how) => tracing::info!(
            "relay {target} proved it holds the new host key {fp}: trusted from now on ({how})"
        ),
        Err(why) => tracing::warn!(
            "relay {target} proved it holds the new host key {fp}: trusted until the agent stops; {why}"
        ),
    }
}

/// Adds `pin` to the `host_key` of the config file at `path`, whole or not at all: a
/// temporary file beside it with the same mode, renamed over it.
fn add_pin_to_file(path: &Path, pin: &str) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let Some(edited) = burrow_proto::pin_edit::add_pin(&text, pin).map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".pin.tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(edited.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

/// How known_hosts names a host on a port (OpenSSH's form: `[host]:port` unless 22).
fn host_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Whether one host pattern of a known_hosts line matches `name` (OpenSSH's `*` and `?`
/// wildcards, or a hashed `|1|salt|hash` entry).
fn pattern_matches(pattern: &str, name: &str) -> bool {
    if let Some(hashed) = pattern.strip_prefix("|1|") {
        let Some((salt, hash)) = hashed.split_once('|') else {
            return false;
        };
        let (Some(salt), Some(hash)) = (base64_decode(salt), base64_decode(hash)) else {
            return false;
        };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
        return ring::hmac::verify(&key, name.as_bytes(), &hash).is_ok();
    }
    glob(pattern.as_bytes(), name.as_bytes())
}

fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => {
            (0..=name.len()).any(|i| glob(rest, name.get(i..).unwrap_or_default()))
        }
        Some((b'?', rest)) => name.split_first().is_some_and(|(_, n)| glob(rest, n)),
        Some((c, rest)) => name
            .split_first()
            .is_some_and(|(n, tail)| n.eq_ignore_ascii_case(c) && glob(rest, tail)),
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use ssh_key::encoding::base64::{Base64, Encoding};
    Base64::decode_vec(text).ok()
}

/// The keys a known_hosts file holds for `host:port`, with their line numbers. Negated
/// patterns (`!host`) exclude a line; `@revoked` and `@cert-authority` lines are not pins.
fn known_host_keys(host: &str, port: u16, path: &Path) -> std::io::Result<Vec<(usize, PublicKey)>> {
    let name = host_name(host, port);
    let text = std::fs::read_to_string(path)?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
            continue;
        }
        let Some((hosts, key)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let mut matched = false;
        let mut negated = false;
        for pattern in hosts.split(',') {
            match pattern.strip_prefix('!') {
                Some(p) if pattern_matches(p, &name) => negated = true,
                Some(_) => {}
                None if pattern_matches(pattern, &name) => matched = true,
                None => {}
            }
        }
        if !matched || negated {
            continue;
        }
        if let Ok(key) = PublicKey::from_openssh(key.trim()) {
            keys.push((n + 1, key));
        }
    }
    Ok(keys)
}

/// Appends `host:port key` to a known_hosts file.
fn learn_host_key(host: &str, port: u16, key: &PublicKey, path: &Path) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut key = key.clone();
    key.set_comment("");
    let line = key.to_openssh().map_err(std::io::Error::other)?;
    writeln!(file, "{} {}", host_name(host, port), line.trim())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_as_openssh_writes_them() {
        let dir = tempdir();
        let path = dir.join("known_hosts");
        let k = burrow_io::keys::generate_ed25519();
        let line = burrow_io::keys::public_key_line(k.public_key());
        // OpenSSH's forms: patterns, negations, ports, markers; hashed names below.
        std::fs::write(
            &path,
            format!(
                "# comment\n@revoked relay.example {line}\nother.example {line}\n\
                 *.example.net,!bad.example.net {line}\n[127.0.0.1]:2222 {line}\n"
            ),
        )
        .unwrap();
        assert_eq!(known_host_keys("127.0.0.1", 2222, &path).unwrap().len(), 1);
        assert_eq!(known_host_keys("127.0.0.1", 22, &path).unwrap().len(), 0);
        assert_eq!(
            known_host_keys("relay.example", 22, &path).unwrap().len(),
            0,
            "@revoked is no pin"
        );
        assert_eq!(
            known_host_keys("a.example.net", 22, &path).unwrap().len(),
            1
        );
        assert_eq!(
            known_host_keys("bad.example.net", 22, &path).unwrap().len(),
            0
        );
        // A hashed entry as `ssh-keygen -H` writes it.
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-H", "-f"])
            .arg(&path)
            .output()
            .expect("ssh-keygen is installed");
        assert!(ok.status.success());
        let hashed = std::fs::read_to_string(&path).unwrap();
        assert!(hashed.contains("|1|"), "{hashed}");
        assert_eq!(known_host_keys("127.0.0.1", 2222, &path).unwrap().len(), 1);
        assert_eq!(
            known_host_keys("other.example", 22, &path).unwrap().len(),
            1
        );
        assert_eq!(known_host_keys("nope.example", 22, &path).unwrap().len(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

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
