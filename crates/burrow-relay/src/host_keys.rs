//! The relay's host keys and their rotation. The data directory holds the key in use
//! (`host_key`: the key exchange, the join strings, a cluster relay's identity to its peers)
//! and, during a rotation, the next one (`host_key.new`). A relay holding both announces both
//! after authentication (`hostkeys-00@openssh.com`) and proves the new one on request, so that
//! OpenSSH clients with `UpdateHostKeys` and burrow agents learn it while the old key still
//! works. Retiring puts the new key in the old one's place; the old key is deleted.
//!
//! `relay hostkey add|ls|retire` change the files; a running relay reads them when it starts.

use std::path::Path;
use std::sync::Arc;

use burrow_io::keys::PrivateKey;
use burrow_ssh::kex::HostKey;

use crate::RelayError;
use crate::datadir::HOST_KEY_FILE;

/// The next host key, held beside the one in use during a rotation.
pub const NEW_HOST_KEY_FILE: &str = "host_key.new";

/// The host keys a relay holds.
#[derive(Clone)]
pub struct HostKeys {
    /// The key in use.
    pub current: PrivateKey,
    /// The next key, announced and proved but not used in key exchanges yet.
    pub new: Option<PrivateKey>,
}

impl HostKeys {
    /// Every key held, the one in use first.
    pub fn all(&self) -> impl Iterator<Item = &PrivateKey> {
        std::iter::once(&self.current).chain(self.new.as_ref())
    }

    /// The OpenSSH public key lines of every key held, one a line (what a relay records for
    /// join strings).
    pub fn public_lines(&self) -> String {
        self.all()
            .map(|k| burrow_io::keys::public_key_line(k.public_key()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The SSH layer's form of an Ed25519 key; the error names the file.
pub fn ssh_key(key: &PrivateKey, dir: &Path, file: &str) -> Result<Arc<HostKey>, RelayError> {
    key.key_data()
        .ed25519()
        .and_then(|k| HostKey::from_seed(k.private.as_ref()))
        .map(Arc::new)
        .ok_or_else(|| {
            RelayError::DataDir(format!(
                "the host key {} is not an ed25519 key",
                dir.join(file).display()
            ))
        })
}

fn data_err(e: impl std::fmt::Display) -> RelayError {
    RelayError::DataDir(e.to_string())
}

/// The next key of `dir`, if a rotation is under way.
pub fn load_new(dir: &Path) -> Result<Option<PrivateKey>, RelayError> {
    let path = dir.join(NEW_HOST_KEY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    burrow_io::keys::load_private_key(&path)
        .map(Some)
        .map_err(data_err)
}

/// The keys of an existing data directory.
pub fn load(dir: &Path) -> Result<HostKeys, RelayError> {
    Ok(HostKeys {
        current: crate::datadir::load_host_key(dir)?,
        new: load_new(dir)?,
    })
}

/// Makes the next key (`relay hostkey add`); refused while one is already waiting.
pub fn add(dir: &Path) -> Result<PrivateKey, RelayError> {
    crate::datadir::load_host_key(dir)?;
    let path = dir.join(NEW_HOST_KEY_FILE);
    if let Some(existing) = load_new(dir)? {
        return Err(RelayError::DataDir(format!(
            "a new host key {} is already held in {}: retire the old key (`burrow relay hostkey retire`) before adding another",
            burrow_io::keys::fingerprint(existing.public_key()),
            path.display()
        )));
    }
    let key = burrow_io::keys::generate_ed25519();
    burrow_io::keys::write_private_key(&path, &key).map_err(data_err)?;
    sync_dir(dir)?;
    Ok(key)
}

/// Retires the key in use (`relay hostkey retire`): the new key takes its place, in one
/// rename, so a crash leaves one or the other and never no key. Returns (old, new).
pub fn retire(dir: &Path) -> Result<(PrivateKey, PrivateKey), RelayError> {
    let keys = load(dir)?;
    let Some(new) = keys.new else {
        return Err(RelayError::DataDir(
            "no new host key to take the place of the one in use: add one first (`burrow relay hostkey add`), restart the relay and give devices time to learn it (see `burrow relay hostkey ls`)".into(),
        ));
    };
    std::fs::rename(dir.join(NEW_HOST_KEY_FILE), dir.join(HOST_KEY_FILE)).map_err(|e| {
        RelayError::DataDir(format!(
            "cannot put {} in place of {}: {e}",
            dir.join(NEW_HOST_KEY_FILE).display(),
            dir.join(HOST_KEY_FILE).display()
        ))
    })?;
    sync_dir(dir)?;
    Ok((keys.current, new))
}

/// Makes a rename or a new file in `dir` survive a crash.
fn sync_dir(dir: &Path) -> Result<(), RelayError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RelayError::DataDir(format!("cannot sync {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_then_retire_keeps_exactly_one_key_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = crate::datadir::load_or_create_host_key(dir.path()).unwrap();
        // A relay's directory has its registry beside the key.
        drop(crate::store::Store::open(&dir.path().join(crate::datadir::DATABASE_FILE)).unwrap());
        assert!(retire(dir.path()).is_err(), "nothing to retire into");
        let new = add(dir.path()).unwrap();
        let err = add(dir.path()).unwrap_err().to_string();
        assert!(err.contains("already held"), "{err}");
        let held = load(dir.path()).unwrap();
        assert_eq!(held.current.public_key(), first.public_key());
        assert_eq!(held.new.as_ref().unwrap().public_key(), new.public_key());
        assert_eq!(held.public_lines().lines().count(), 2);
        let (old, promoted) = retire(dir.path()).unwrap();
        assert_eq!(old.public_key(), first.public_key());
        assert_eq!(promoted.public_key(), new.public_key());
        let held = load(dir.path()).unwrap();
        assert_eq!(held.current.public_key(), new.public_key());
        assert!(held.new.is_none());
    }
}
