//! SSH key files: loading with permission checks, generating, fingerprinting, parsing public keys.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, HashAlg, LineEnding};
pub use ssh_key::{PrivateKey, PublicKey};

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read key {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A private key file that group or others can read.
    #[error(
        "private key {path} is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`"
    )]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A public key where the private key was wanted.
    #[error(
        "{path} is a public key; give the private key file instead (usually {private}, the same path without .pub)"
    )]
    PublicNotPrivate {
        /// The key file given.
        path: PathBuf,
        /// Where its private half usually is.
        private: String,
    },
    /// A private key where a public key was wanted.
    #[error(
        "{what} is a private key; give its public half instead: {public} (ssh-keygen writes it beside the private key; `ssh-keygen -y -f KEY` prints it). A private key stays on its device"
    )]
    PrivateNotPublic {
        /// The file or input that held it.
        what: String,
        /// Where its public half usually is.
        public: String,
    },
    /// The file is not a key of the expected form.
    #[error("cannot parse key {what}: {reason}")]
    Parse {
        /// The file or input that held it.
        what: String,
        /// What the parser said.
        reason: String,
    },
    /// Writing a key failed.
    #[error("cannot write key {path}: {source}")]
    Write {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// `SHA256:...` fingerprint of a public key, as OpenSSH prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Loads an unencrypted OpenSSH private key, refusing files readable by group or others.
pub fn load_private_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let read = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(read)?;
    // A `.pub` given by mistake is world-readable by design: say what it is before the mode.
    if parse_public_keys(&text, "").is_ok() {
        let shown = path.display().to_string();
        return Err(KeyError::PublicNotPrivate {
            path: path.to_path_buf(),
            private: shown
                .strip_suffix(".pub")
                .unwrap_or("the file without .pub")
                .to_string(),
        });
    }
    let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    parse_private_key(&text).map_err(|reason| KeyError::Parse {
        what: path.display().to_string(),
        reason,
    })
}

/// Parses an unencrypted private key: OpenSSH's format, or PEM (PKCS#1 and PKCS#8 RSA,
/// PKCS#8 and SEC1 ECDSA) as cloud providers hand keys out.
pub fn parse_private_key(text: &str) -> Result<PrivateKey, String> {
    let text = text.trim();
    if text.starts_with("-----BEGIN RSA PRIVATE KEY-----")
        || text.starts_with("-----BEGIN PRIVATE KEY-----")
        || text.starts_with("-----BEGIN EC PRIVATE KEY-----")
    {
        return parse_pem_private_key(text);
    }
    let key = PrivateKey::from_openssh(text).map_err(|e| {
        format!("{e} (expected an OpenSSH private key, `-----BEGIN OPENSSH PRIVATE KEY-----`)")
    })?;
    if key.is_encrypted() {
        return Err(
            "the key is protected by a passphrase; burrow runs unattended and needs a key without one (`ssh-keygen -p -N '' -f KEY` removes it)"
                .into(),
        );
    }
    Ok(key)
}

fn parse_pem_private_key(text: &str) -> Result<PrivateKey, String> {
    use p256::elliptic_curve::sec1::ToSec1Point;
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use ssh_key::private::{EcdsaKeypair, KeypairData, RsaKeypair};
    let rsa_key = |k: rsa::RsaPrivateKey| -> Result<PrivateKey, String> {
        let pair = RsaKeypair::try_from(k).map_err(|e| format!("RSA key: {e}"))?;
        PrivateKey::new(KeypairData::Rsa(pair), "").map_err(|e| e.to_string())
    };
    let ecdsa = |pair: EcdsaKeypair| -> Result<PrivateKey, String> {
        PrivateKey::new(KeypairData::Ecdsa(pair), "").map_err(|e| e.to_string())
    };
    if text.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
        if text.contains("ENCRYPTED") {
            return Err(
                "the PEM key is protected by a passphrase; burrow needs a key without one".into(),
            );
        }
        let k =
            rsa::RsaPrivateKey::from_pkcs1_pem(text).map_err(|e| format!("PKCS#1 RSA key: {e}"))?;
        return rsa_key(k);
    }
    if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_pem(text) {
        return rsa_key(k);
    }
    let p256 =
        p256::SecretKey::from_pkcs8_pem(text).or_else(|_| p256::SecretKey::from_sec1_pem(text));
    if let Ok(k) = p256 {
        return ecdsa(EcdsaKeypair::NistP256 {
            public: k.public_key().to_sec1_point(false),
            private: k.into(),
        });
    }
    let p384 =
        p384::SecretKey::from_pkcs8_pem(text).or_else(|_| p384::SecretKey::from_sec1_pem(text));
    if let Ok(k) = p384 {
        return ecdsa(EcdsaKeypair::NistP384 {
            public: k.public_key().to_sec1_point(false),
            private: k.into(),
        });
    }
    let p521 =
        p521::SecretKey::from_pkcs8_pem(text).or_else(|_| p521::SecretKey::from_sec1_pem(text));
    if let Ok(k) = p521 {
        return ecdsa(EcdsaKeypair::NistP521 {
            public: k.public_key().to_sec1_point(false),
            private: k.into(),
        });
    }
    Err("a PEM private key that is neither RSA nor ECDSA P-256/384/521 (or is encrypted)".into())
}

/// Generates a new ed25519 key pair.
pub fn generate_ed25519() -> PrivateKey {
    // ssh-key's generator wants a rand_core 0.10 CryptoRng; the thread RNG is one (seeded from the OS).
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .expect("ed25519 key generation does not fail")
}

/// Writes a private key in OpenSSH format with mode 0600 (refusing to overwrite).
pub fn write_private_key(path: &Path, key: &PrivateKey) -> Result<(), KeyError> {
    let werr = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| werr(std::io::Error::other(e.to_string())))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(werr)?;
    file.write_all(text.as_bytes()).map_err(werr)?;
    file.sync_all().map_err(werr)
}

/// The public half of a key as one authorized_keys line (`ssh-ed25519 AAAA... comment`).
pub fn public_key_line(key: &PublicKey) -> String {
    key.to_openssh().unwrap_or_default()
}

/// Parses public keys in authorized_keys form, one per line; blank lines and `#` comments skip.
pub fn parse_public_keys(text: &str, what: &str) -> Result<Vec<PublicKey>, KeyError> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with("-----BEGIN") && line.contains("PRIVATE KEY") {
            let public = match what {
                "stdin" | "" => "the key's .pub file".to_string(),
                file => format!("{file}.pub"),
            };
            return Err(KeyError::PrivateNotPublic {
                what: what.to_string(),
                public,
            });
        }
        let key = PublicKey::from_openssh(line).map_err(|e| KeyError::Parse {
            what: format!("{what} line {}", n + 1),
            reason: format!("{e} (expected an OpenSSH public key such as `ssh-ed25519 AAAA...`)"),
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(KeyError::Parse {
            what: what.to_string(),
            reason: "no public key found".into(),
        });
    }
    Ok(keys)
}

/// Parses one public key in authorized_keys form.
pub fn parse_public_key(line: &str) -> Result<PublicKey, ssh_key::Error> {
    PublicKey::from_openssh(line.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_write_load_roundtrip() {
        let dir = std::env::temp_dir().join(format!("burrow-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("id");
        let key = generate_ed25519();
        write_private_key(&path, &key).unwrap();
        let loaded = load_private_key(&path).unwrap();
        assert_eq!(
            fingerprint(loaded.public_key()),
            fingerprint(key.public_key())
        );
        assert!(fingerprint(key.public_key()).starts_with("SHA256:"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_private_key(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(err.contains("0644"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn public_keys_parse_with_line_numbers() {
        let key = generate_ed25519();
        let line = public_key_line(key.public_key());
        let text = format!("# comment\n\n{line}\n");
        assert_eq!(parse_public_keys(&text, "f").unwrap().len(), 1);
        let err = parse_public_keys(&format!("{line}\nssh-ed25519 garbage\n"), "f")
            .unwrap_err()
            .to_string();
        assert!(err.contains("f line 2"), "{err}");
        assert!(parse_public_keys("\n", "f").is_err());
        let private = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n";
        let err = parse_public_keys(private, "keys/pi")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("keys/pi is a private key") && err.contains("keys/pi.pub"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod pem_tests {
    /// A key made by OpenSSH's `ssh-keygen` with `passphrase` and `args`; its private file's text.
    fn ssh_keygen(path: &std::path::Path, passphrase: &str, args: &[&str]) -> String {
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-N", passphrase, "-f"])
            .arg(path)
            .args(args)
            .status()
            .expect("ssh-keygen is installed (./test.sh installs openssh-client)");
        assert!(ok.success(), "ssh-keygen {args:?}");
        std::fs::read_to_string(path).unwrap()
    }

    /// Keys as cloud providers hand them out (AWS EC2 key pairs are PKCS#1 PEM) must load:
    /// on-demand access delivers such keys unchanged.
    #[test]
    fn pkcs1_and_pkcs8_pem_keys_parse() {
        let dir = std::env::temp_dir().join(format!("burrow-pem-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, args) in [
            ("rsa_pkcs1", &["-t", "rsa", "-b", "2048", "-m", "PEM"][..]),
            ("rsa_pkcs8", &["-t", "rsa", "-b", "2048", "-m", "PKCS8"][..]),
            ("ecdsa_pkcs8", &["-t", "ecdsa", "-m", "PKCS8"][..]),
            ("ecdsa_sec1", &["-t", "ecdsa", "-b", "384", "-m", "PEM"][..]),
        ] {
            let path = dir.join(name);
            let text = ssh_keygen(&path, "", args);
            let key = super::parse_private_key(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            // The same public key as ssh-keygen derives from the file.
            let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
            let public = super::parse_public_key(&public).unwrap();
            assert_eq!(key.public_key().key_data(), public.key_data(), "{name}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A key with a passphrase is refused with the way out, not with a parse error.
    #[test]
    fn passphrase_protected_keys_are_refused_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("burrow-pass-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, args, says) in [
            ("ed25519", &["-t", "ed25519"][..], "ssh-keygen -p -N ''"),
            (
                "rsa_pkcs1",
                &["-t", "rsa", "-b", "2048", "-m", "PEM"][..],
                "passphrase",
            ),
        ] {
            let text = ssh_keygen(&dir.join(name), "secret words", args);
            let e = super::parse_private_key(&text).expect_err(name);
            assert!(e.contains(says), "{name}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
