//! The password path of authentication: the address's turn, the same argon2 work whatever
//! the name, and the operator lock that failures from several addresses set.
//!
//! No answer tells whether a name exists: a name with no password (unknown, malformed, or an
//! operator with keys only) is checked against a decoy hash made like the real ones, and a
//! locked operator's password is hashed too before it is refused.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use burrow_proto::name::Login;

use crate::Relay;
use crate::audit::Outcome as Audited;
use crate::metrics::AuthFailure;
use crate::store::Write;

/// What a password attempt came to.
pub(crate) enum Outcome {
    /// The right password for this operator.
    Accepted(Login),
    /// Refused: why (for the audit) and the metric's reason.
    Refused(String, AuthFailure),
}

/// Longest wait for the lock to be stored before the next guesses are counted afresh.
const LOCK_WRITE_WAIT: Duration = Duration::from_secs(5);

/// The hash of no one's password, made as real ones are (argon2id, default cost).
static DECOY: LazyLock<String> = LazyLock::new(|| {
    let secret: [u8; 16] = rand::random();
    let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    crate::admin::hash_password(&secret).unwrap_or_default()
});

/// Makes the decoy hash now (it costs one argon2 run), so that the first unknown name is
/// answered no slower than the rest.
pub(crate) fn prepare() {
    LazyLock::force(&DECOY);
}

/// Where a password stands before it is hashed.
enum Standing {
    /// An operator with a password, not locked: the hash decides.
    Open(Login),
    /// No password under that name.
    Unknown,
    /// This operator is locked until then (seconds since the epoch).
    Locked(String, i64),
    /// Failures with the checks in flight reach the lock, which is being stored.
    Locking,
}

/// Checks `password` for `user` from `peer` when the address's turn comes. Returns what it
/// came to and when the check was taken up (refusals are paced from then).
pub(crate) async fn attempt(
    relay: &Relay,
    peer: SocketAddr,
    user: &str,
    password: &str,
) -> (Outcome, Instant) {
    let asked = Instant::now();
    let mut check = match relay.throttle.reserve(peer.ip(), asked) {
        Ok(check) => check,
        Err(ahead) => {
            let why = format!(
                "password not checked: this address's checks already wait {}s (they take turns, each failure waiting longer)",
                ahead.as_secs()
            );
            return (Outcome::Refused(why, AuthFailure::Throttled), asked);
        }
    };
    let waited = check.at().saturating_duration_since(asked);
    if !waited.is_zero() {
        tokio::time::sleep_until(check.at().into()).await;
    }
    let started = Instant::now();
    let login = Login::parse(user).ok();
    let stored = match &login {
        Some(login) => relay.db.operator_password(login.principal()).await,
        None => Ok(None),
    };
    let (hash, standing) = match (stored, login) {
        (Err(e), _) => return (Outcome::Refused(e.to_string(), AuthFailure::Other), started),
        (Ok(Some(stored)), Some(login)) => match stored.locked_until {
            Some(until) => (
                stored.hash,
                Standing::Locked(login.principal().to_string(), until),
            ),
            None if check.against(login.principal(), started) => {
                (stored.hash, Standing::Open(login))
            }
            None => (stored.hash, Standing::Locking),
        },
        (Ok(_), _) => (DECOY.clone(), Standing::Unknown),
    };
    relay.metrics.password_checked();
    let password = password.to_string();
    // argon2 costs tens of milliseconds of CPU: keep it off the async workers.
    let right =
        tokio::task::spawn_blocking(move || crate::admin::verify_password(&hash, &password))
            .await
            .unwrap_or(false);
    let attempt = check.attempt();
    let after_wait = |why: String| {
        if waited.is_zero() {
            format!("{why} (attempt {attempt} from this address)")
        } else {
            format!(
                "{why} (attempt {attempt} from this address, checked after a {waited:?} wait for its turn)"
            )
        }
    };
    let refused = match standing {
        Standing::Open(login) if right => {
            check.succeeded();
            return (Outcome::Accepted(login), started);
        }
        Standing::Open(login) => {
            if let Some(in_a_row) = check.failed(Instant::now()) {
                lock(relay, login.principal(), in_a_row, peer).await;
            }
            Outcome::Refused(after_wait("wrong password".into()), AuthFailure::Password)
        }
        Standing::Unknown => {
            check.failed(Instant::now());
            Outcome::Refused(
                after_wait("password login: no operator with a password of that name".into()),
                AuthFailure::Password,
            )
        }
        Standing::Locked(name, until) => {
            check.failed(Instant::now());
            Outcome::Refused(
                format!(
                    "password login locked until {} after wrong passwords from several addresses (lift it with `burrow relay operator unlock {name}`)",
                    burrow_proto::time::format_rfc3339(until)
                ),
                AuthFailure::Locked,
            )
        }
        Standing::Locking => {
            check.failed(Instant::now());
            Outcome::Refused(
                "password login being locked after wrong passwords from several addresses".into(),
                AuthFailure::Locked,
            )
        }
    };
    (refused, started)
}

/// Locks `name`'s password login, audits it, and forgets its count once the lock is stored.
async fn lock(relay: &Relay, name: &str, in_a_row: u32, peer: SocketAddr) {
    let config = &relay.config;
    let until = crate::store::now()
        + i64::try_from(config.password_lock_for.as_secs()).unwrap_or(i64::MAX / 2);
    let write = relay.db.write(Write::LockOperator {
        name: name.to_string(),
        until,
    });
    match tokio::time::timeout(LOCK_WRITE_WAIT, write).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("cannot store the password lock of operator {name}: {e}"),
        Err(_) => tracing::warn!(
            "the password lock of operator {name} not stored within {LOCK_WRITE_WAIT:?}"
        ),
    }
    relay.throttle.forget_operator(name);
    relay.audit.record(
        "lock",
        name,
        &peer.to_string(),
        Audited::Denied,
        &format!(
            "{in_a_row} wrong passwords in a row from several addresses (one address counts for at most {}): password login locked until {} (lift it with `burrow relay operator unlock {name}`)",
            crate::throttle::share(config.password_lock_after),
            burrow_proto::time::format_rfc3339(until)
        ),
    );
}
