//! The relay's data directory: host key, database, console recordings; the lock that keeps a
//! second relay out of it; the mark of a directory whose registry is a cluster's PostgreSQL.

use std::path::{Path, PathBuf};

use burrow_io::keys::PrivateKey;

use crate::RelayError;

/// File name of the relay's ed25519 host key inside the data directory.
pub const HOST_KEY_FILE: &str = "host_key";
/// File name of the SQLite database inside the data directory.
pub const DATABASE_FILE: &str = "burrow.db";
/// File locked by the relay that runs on the directory, holding its PID.
pub const LOCK_FILE: &str = "relay.lock";
/// File saying that the directory belongs to a relay of a cluster, and which database.
pub const CLUSTER_FILE: &str = "cluster";

/// A file of zeros the relay keeps in its data directory and deletes when it cannot open its
/// database for a full disk: room for the database's shared-memory index and the first
/// writes, so that a relay restarted on a full disk starts and serves.
pub const RESERVE_FILE: &str = "reserve";
/// Size of [`RESERVE_FILE`].
pub const RESERVE_BYTES: usize = 512 * 1024;

/// Makes [`RESERVE_FILE`] if it is missing and there is room (written whole or not at all).
pub fn keep_reserve(dir: &Path) {
    let path = dir.join(RESERVE_FILE);
    if path.exists() {
        return;
    }
    let tmp = dir.join(format!("{RESERVE_FILE}.tmp"));
    // Zeros really written: a file only set to its length would hold no space.
    let made =
        std::fs::write(&tmp, vec![0u8; RESERVE_BYTES]).and_then(|()| std::fs::rename(&tmp, &path));
    match made {
        Ok(()) => tracing::debug!("made the disk reserve {}", path.display()),
        Err(_) => {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// Deletes [`RESERVE_FILE`]; true if there was one.
pub fn release_reserve(dir: &Path) -> bool {
    std::fs::remove_file(dir.join(RESERVE_FILE)).is_ok()
}

/// The lock of a relay on its data directory; released when dropped (or when the process
/// ends, however it ends).
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

/// Takes the directory for this relay, before anything in it is read or written: a second
/// relay started on it (a systemd start beside a manual one, another port) must not mark the
/// running relay's open audit rows interrupted, write offline rows for its devices or serve
/// beside it. Fails naming the directory and the PID holding it.
pub fn lock(dir: &Path) -> Result<DirLock, RelayError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| RelayError::DataDir(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut held = String::new();
            let _ = file.read_to_string(&mut held);
            let by = match held.trim().parse::<u32>() {
                Ok(pid) => format!("the relay with PID {pid}"),
                Err(_) => "another relay".to_string(),
            };
            return Err(RelayError::DataDir(format!(
                "the data directory {} is in use by {by}; nothing was changed. Stop that relay \
                 first, or give this one a data directory of its own (--data-dir)",
                dir.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(RelayError::DataDir(format!(
                "cannot lock {}: {e}",
                path.display()
            )));
        }
    }
    // Who holds it, for the next one to name; a full disk may refuse even these few bytes,
    // which costs only the PID in that message.
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(DirLock { _file: file })
}

/// What a cluster relay's data directory says about its registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMark {
    /// The database URL, without its password.
    pub database: String,
    /// The relay's id.
    pub relay_id: String,
}

/// Marks `dir` as the data directory of relay `relay_id` of the cluster on `database` (kept
/// without its password), so that commands run on the directory without `--database` say so
/// instead of reading an empty or stale SQLite registry.
pub fn mark_cluster(dir: &Path, database: &str, relay_id: &str) -> std::io::Result<()> {
    let text = format!(
        "# This data directory belongs to a relay of a cluster: its registry is in PostgreSQL.\n\
         # Commands on it need --database (or BURROW_DATABASE_URL).\n\
         database = {:?}\nrelay-id = {relay_id:?}\n",
        without_password(database)
    );
    let path = dir.join(CLUSTER_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    // Written whole or not at all: a full disk must not leave half a file.
    let tmp = dir.join(format!("{CLUSTER_FILE}.tmp"));
    let written = std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The cluster `dir` belongs to, if it is a cluster relay's directory.
pub fn cluster_of(dir: &Path) -> Option<ClusterMark> {
    let text = std::fs::read_to_string(dir.join(CLUSTER_FILE)).ok()?;
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
        })
    };
    Some(ClusterMark {
        database: field("database").unwrap_or_default(),
        relay_id: field("relay-id").unwrap_or_default(),
    })
}

/// `database` with any password taken out (`postgresql://user:secret@host/db` →
/// `postgresql://user@host/db`, `?password=...` dropped).
pub fn without_password(database: &str) -> String {
    let (base, query) = database.split_once('?').unwrap_or((database, ""));
    let base = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest
                .split_once('/')
                .map_or((rest, None), |(a, p)| (a, Some(p)));
            let authority = match authority.rsplit_once('@') {
                Some((user, host)) => {
                    let user = user.split_once(':').map_or(user, |(u, _)| u);
                    format!("{user}@{host}")
                }
                None => authority.to_string(),
            };
            match path {
                Some(p) => format!("{scheme}://{authority}/{p}"),
                None => format!("{scheme}://{authority}"),
            }
        }
        None => base.to_string(),
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.to_ascii_lowercase().starts_with("password="))
        .collect();
    if kept.is_empty() {
        base
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// The refusal for a registry command run on a cluster relay's directory without
/// `--database`.
fn belongs_to_cluster(dir: &Path, mark: &ClusterMark) -> RelayError {
    RelayError::DataDir(format!(
        "the data directory {} belongs to relay {} of a cluster: its registry is in PostgreSQL \
         ({}), not in this directory. Pass --database URL (or set BURROW_DATABASE_URL)",
        dir.display(),
        mark.relay_id,
        mark.database
    ))
}

/// The data directory used when neither `--data-dir` nor `BURROW_DATA_DIR` is given:
/// `/var/lib/burrow` for root, else `$XDG_STATE_HOME/burrow` or `~/.local/state/burrow`.
pub fn default_data_dir() -> PathBuf {
    let is_root = std::env::var("USER").is_ok_and(|u| u == "root")
        || std::env::var("HOME").is_ok_and(|h| h == "/root");
    if is_root {
        return PathBuf::from("/var/lib/burrow");
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(state).join("burrow");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/burrow"),
        None => PathBuf::from("/var/lib/burrow"),
    }
}

/// Creates the directory (mode 0700) if missing.
pub fn ensure(dir: &Path) -> Result<(), RelayError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            RelayError::DataDir(format!(
                "cannot create data directory {}: {e} (choose another with --data-dir or BURROW_DATA_DIR)",
                dir.display()
            ))
        })
}

/// Checks that `dir` holds a relay's SQLite registry (and host key) before an admin command
/// uses it; a cluster relay's directory is refused with the way to its registry.
///
/// Only starting the relay or `burrow relay init` creates a data directory: a mistyped
/// `--data-dir` must not quietly become a second, empty relay that the running one never reads.
pub fn require_existing(dir: &Path) -> Result<(), RelayError> {
    if let Some(mark) = cluster_of(dir) {
        return Err(belongs_to_cluster(dir, &mark));
    }
    require_files(dir, &[DATABASE_FILE, HOST_KEY_FILE])
}

/// Checks that `dir` holds a relay (its host key), single or of a cluster: for commands that
/// need no registry (`fingerprint`, `recordings`).
pub fn require_relay(dir: &Path) -> Result<(), RelayError> {
    if cluster_of(dir).is_some() {
        return require_files(dir, &[HOST_KEY_FILE]);
    }
    require_files(dir, &[DATABASE_FILE, HOST_KEY_FILE])
}

/// Refuses to run a single relay (SQLite) on a cluster relay's directory: it would serve an
/// empty registry of its own.
pub fn refuse_cluster_dir_for_sqlite(dir: &Path) -> Result<(), RelayError> {
    match cluster_of(dir) {
        Some(mark) => Err(RelayError::DataDir(format!(
            "the data directory {} belongs to relay {} of a cluster on {}: start it with \
             --database URL (or BURROW_DATABASE_URL) and --peer-listen; to make it a single \
             relay again, remove {}",
            dir.display(),
            mark.relay_id,
            mark.database,
            dir.join(CLUSTER_FILE).display()
        ))),
        None => Ok(()),
    }
}

fn require_files(dir: &Path, files: &[&str]) -> Result<(), RelayError> {
    let missing: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let what = if dir.is_dir() {
        format!("{} has no {}", dir.display(), missing.join(" and "))
    } else {
        format!("{} does not exist", dir.display())
    };
    Err(RelayError::DataDir(format!(
        "no relay data directory at {}: {what}. Pass the --data-dir (or BURROW_DATA_DIR) the running \
         relay uses (it logs it at start), or create a new one with `burrow relay init --data-dir {}`",
        dir.display(),
        dir.display()
    )))
}

/// Loads the host key of an existing data directory (see [`require_relay`]).
pub fn load_host_key(dir: &Path) -> Result<PrivateKey, RelayError> {
    require_relay(dir)?;
    burrow_io::keys::load_private_key(&dir.join(HOST_KEY_FILE))
        .map_err(|e| RelayError::DataDir(e.to_string()))
}

/// Loads the host key, creating it on first start. Returns the key and whether it was created.
pub fn load_or_create_host_key(dir: &Path) -> Result<(PrivateKey, bool), RelayError> {
    ensure(dir)?;
    let path = dir.join(HOST_KEY_FILE);
    if path.exists() {
        let key = burrow_io::keys::load_private_key(&path)
            .map_err(|e| RelayError::DataDir(e.to_string()))?;
        return Ok((key, false));
    }
    let key = burrow_io::keys::generate_ed25519();
    burrow_io::keys::write_private_key(&path, &key)
        .map_err(|e| RelayError::DataDir(e.to_string()))?;
    Ok((key, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_taken_out_of_database_urls() {
        for (url, shown) in [
            (
                "postgresql://burrow:s3cret@db:5432/burrow",
                "postgresql://burrow@db:5432/burrow",
            ),
            (
                "postgresql://burrow@db/burrow",
                "postgresql://burrow@db/burrow",
            ),
            ("postgres://u:p@h", "postgres://u@h"),
            (
                "postgresql://u@h/d?password=x&sslmode=disable",
                "postgresql://u@h/d?sslmode=disable",
            ),
            ("postgresql://u@h/d?PASSWORD=x", "postgresql://u@h/d"),
        ] {
            assert_eq!(without_password(url), shown, "{url}");
        }
    }

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(
            err.contains(&format!("PID {}", std::process::id())),
            "{err}"
        );
        drop(first);
        lock(dir.path()).unwrap();
    }
}
