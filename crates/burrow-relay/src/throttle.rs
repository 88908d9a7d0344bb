//! Password guessing: growing delays per source address and per operator, a temporary lock of an
//! operator's password login, and a cap on concurrent password checks per address.
//!
//! Keys are not guessable, so only passwords are throttled. The lock is stored with the operator
//! (`operator ls` shows it, `operator unlock` lifts it); failure counts live in memory and are
//! forgotten after a quiet spell.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failures that cost no delay; each one past them doubles it (1 s, 2 s, 4 s, ...).
const FREE_FAILURES: u32 = 3;
/// Longest delay before a password is checked.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// Failure counts are forgotten after this long without a failure.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Password checks running at once from one address.
const MAX_CONCURRENT_PER_IP: usize = 2;
/// Sources and operators tracked at most; past that the stalest are forgotten.
const MAX_TRACKED: usize = 65_536;

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Addr(IpAddr),
    Operator(String),
}

struct Failures {
    count: u32,
    last: Instant,
}

/// Password-guessing defences of one relay.
#[derive(Default)]
pub(crate) struct Throttle {
    failures: Mutex<HashMap<Key, Failures>>,
    checking: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// A password check in progress from one address.
pub(crate) struct Checking {
    ip: IpAddr,
    checking: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Checking {
    fn drop(&mut self) {
        let mut map = self.checking.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Throttle {
    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Failures>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, key: &Key, now: Instant) -> u32 {
        self.failures()
            .get(key)
            .filter(|f| now.duration_since(f.last) < FORGET_AFTER)
            .map_or(0, |f| f.count)
    }

    /// Starts a password check from `ip`, unless too many run from there already.
    pub(crate) fn begin(&self, ip: IpAddr) -> Option<Checking> {
        let mut map = self.checking.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_CONCURRENT_PER_IP {
            return None;
        }
        *n += 1;
        Some(Checking {
            ip,
            checking: self.checking.clone(),
        })
    }

    /// How long to wait before checking a password from `ip` for `operator`: doubling from 1 s
    /// after the first few failures of either, up to [`MAX_DELAY`].
    pub(crate) fn delay(&self, ip: IpAddr, operator: &str, now: Instant) -> Duration {
        let n = self
            .count(&Key::Addr(ip), now)
            .max(self.count(&Key::Operator(operator.to_string()), now));
        match n.checked_sub(FREE_FAILURES + 1) {
            None => Duration::ZERO,
            Some(k) => Duration::from_secs(1u64 << k.min(5)).min(MAX_DELAY),
        }
    }

    /// Counts a failure; returns the operator's failures in a row (for its lock).
    pub(crate) fn failed(&self, ip: IpAddr, operator: Option<&str>, now: Instant) -> u32 {
        let mut map = self.failures();
        if map.len() >= MAX_TRACKED {
            map.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
        }
        let mut bump = |key: Key| {
            let f = map.entry(key).or_insert(Failures {
                count: 0,
                last: now,
            });
            if now.duration_since(f.last) >= FORGET_AFTER {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
            f.count
        };
        bump(Key::Addr(ip));
        operator.map_or(0, |op| bump(Key::Operator(op.to_string())))
    }

    /// Forgets an operator's failures (a successful login, or a lock that now stands for them).
    pub(crate) fn forget_operator(&self, operator: &str) {
        self.failures().remove(&Key::Operator(operator.to_string()));
    }

    /// A successful login from `ip`: its failures are forgotten too.
    pub(crate) fn succeeded(&self, ip: IpAddr, operator: &str) {
        self.failures().remove(&Key::Addr(ip));
        self.forget_operator(operator);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_per_address_and_operator_and_are_forgotten() {
        let t = Throttle::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let now = Instant::now();
        for _ in 0..FREE_FAILURES {
            t.failed(a, Some("alice"), now);
        }
        assert_eq!(t.delay(a, "bob", now), Duration::ZERO);
        t.failed(a, Some("alice"), now);
        assert_eq!(t.delay(a, "bob", now), Duration::from_secs(1));
        t.failed(a, Some("alice"), now);
        assert_eq!(t.delay(a, "bob", now), Duration::from_secs(2));
        // Another address guessing alice's password is slowed by alice's count.
        assert_eq!(t.delay(b, "alice", now), Duration::from_secs(2));
        for _ in 0..20 {
            t.failed(a, Some("alice"), now);
        }
        assert_eq!(t.delay(a, "alice", now), MAX_DELAY);
        assert_eq!(t.delay(a, "alice", now + FORGET_AFTER), Duration::ZERO);
        t.succeeded(a, "alice");
        assert_eq!(t.delay(a, "alice", now), Duration::ZERO);
    }

    #[test]
    fn concurrent_checks_per_address_are_capped() {
        let t = Throttle::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = t.begin(a).unwrap();
        let _second = t.begin(a).unwrap();
        assert!(t.begin(a).is_none());
        assert!(t.begin("192.0.2.9".parse().unwrap()).is_some());
        drop(first);
        assert!(t.begin(a).is_some());
    }
}
