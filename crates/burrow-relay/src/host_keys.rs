//! The relay's host keys and their rotation. The data directory holds the key in use
//! (`host_key`: the key exchange, the join strings, a cluster relay's identity to its peers)
//! and, during a rotation, the next one (`host_key.new`). A relay holding both announces both
//! after authentication (`hostkeys-00@openssh.com`) and proves the new one on request, so that
//! OpenSSH clients with `UpdateHostKeys` and burrow agents learn it while the old key still
//! works. Retiring puts the new key in the old one's place; the old key is deleted.
//!
//! `relay hostkey add|ls|retire` change the files; a running relay notices the change at its
//! next connection (two `stat`s per connection) and serves that connection with the keys now
//! there, so a rotation needs no restart. Sessions already up keep the key they started with;
//! the burrow agents among them are told the new keys at once (see `Relay::refresh_host_keys`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

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

/// The keys a running relay holds, in the forms it uses.
pub struct Held {
    /// The keys.
    pub keys: HostKeys,
    /// The key in use, for the key exchange.
    pub ssh: Arc<HostKey>,
    /// The others, announced and proved.
    pub extra: Vec<Arc<HostKey>>,
}

impl Held {
    fn load(dir: &Path) -> Result<Held, RelayError> {
        let keys = load(dir)?;
        let ssh = ssh_key(&keys.current, dir, HOST_KEY_FILE)?;
        let extra = match &keys.new {
            Some(new) => vec![ssh_key(new, dir, NEW_HOST_KEY_FILE)?],
            None => Vec::new(),
        };
        Ok(Held { keys, ssh, extra })
    }
}

/// How the key files looked when last read: a change to either means reading them again.
type Stamp = [Option<(SystemTime, u64, u64)>; 2];

fn stamp(dir: &Path) -> Stamp {
    let one = |file: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir.join(file)).ok().map(|m| {
            (
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.ino(),
                m.len(),
            )
        })
    };
    [one(HOST_KEY_FILE), one(NEW_HOST_KEY_FILE)]
}

/// A running relay's keys, read again when `relay hostkey` changed the files.
pub struct Live {
    dir: PathBuf,
    held: RwLock<Arc<Held>>,
    read: Mutex<Stamp>,
}

impl Live {
    /// The keys of `dir` (whose `host_key` exists).
    pub fn open(dir: &Path) -> Result<Live, RelayError> {
        let before = stamp(dir);
        let held = Held::load(dir)?;
        Ok(Live {
            dir: dir.to_path_buf(),
            held: RwLock::new(Arc::new(held)),
            read: Mutex::new(before),
        })
    }

    /// The keys held now.
    pub fn get(&self) -> Arc<Held> {
        self.held.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the files again if they changed since they were read; returns the new keys when
    /// they did. Files that do not read (a key half written) leave the keys as they were, and
    /// are tried again at the next look.
    pub fn refresh(&self) -> Option<Arc<Held>> {
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamp(&self.dir);
        if now == *read {
            return None;
        }
        match Held::load(&self.dir) {
            Ok(held) => {
                *read = now;
                let held = Arc::new(held);
                *self.held.write().unwrap_or_else(|e| e.into_inner()) = held.clone();
                Some(held)
            }
            Err(e) => {
                tracing::warn!(
                    "the host key files changed but do not read: {e}; keeping the keys held"
                );
                None
            }
        }
    }
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

    #[test]
    fn a_running_relay_sees_the_files_change() {
        let dir = tempfile::tempdir().unwrap();
        crate::datadir::load_or_create_host_key(dir.path()).unwrap();
        drop(crate::store::Store::open(&dir.path().join(crate::datadir::DATABASE_FILE)).unwrap());
        let live = Live::open(dir.path()).unwrap();
        let first = live.get().keys.current.public_key().clone();
        assert!(live.refresh().is_none(), "nothing changed");
        let new = add(dir.path()).unwrap();
        let held = live.refresh().expect("the new key is seen");
        assert_eq!(held.extra.len(), 1);
        assert_eq!(held.keys.current.public_key(), &first);
        retire(dir.path()).unwrap();
        let held = live.refresh().expect("the retirement is seen");
        assert_eq!(held.keys.current.public_key(), new.public_key());
        assert!(held.extra.is_empty());
        assert_eq!(live.get().keys.current.public_key(), new.public_key());
    }
}
