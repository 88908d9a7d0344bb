//! Password guessing, as bookkeeping with no I/O: each source address's checks take turns with
//! a growing wait, and an operator's password login is locked by failures from several
//! addresses.
//!
//! One address, however it guesses, slows only itself. Its checks run one after another, each
//! waiting longer than the last, and checks asked for at once are given the turns they would
//! have had one by one, so parallel guesses pay the same doubling as sequential ones. One address
//! counts for at most a quarter of the failures that lock an operator, so it cannot lock the
//! real operator out; many addresses can, and that lock is stored with the operator
//! (`operator ls` shows it, `operator unlock` lifts it, the audit records it). The wait never
//! reaches the authentication deadline, so a password from an address that is not guessing is
//! checked at once, and one from a guessing address is still checked, late.
//!
//! Nothing here depends on whether a name exists: the wait is the address's alone, and the
//! operator's count is kept only for operators with a password (an attacker cannot observe
//! it: a locked operator's refusal looks like any other).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Failures from an address that cost no wait; each one past them doubles it.
pub(crate) const FREE_FAILURES: u32 = 3;
/// Failure counts are forgotten after this long without a failure.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Sources tracked at most; past that, those quiet for [`FORGET_AFTER`] are dropped first, then
/// the stalest.
const MAX_TRACKED: usize = 65_536;

/// Where guesses come from: an IPv4 address, or an IPv6 /64 (what one host is usually given).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Source(IpAddr);

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => Source(IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into())),
            },
            v4 => Source(v4),
        }
    }
}

/// One address's failures and the turns it has been given.
struct Turns {
    failures: u32,
    /// Checks given a turn and not yet decided: counted as failures until they are.
    pending: u32,
    /// The latest turn given.
    next: Instant,
    last: Instant,
}

/// One source's part in an operator's failures in a row.
#[derive(Default, Clone, Copy)]
struct Part {
    failures: u32,
    pending: u32,
}

#[derive(Default)]
struct State {
    sources: HashMap<Source, Turns>,
    /// Operators with failures in a row, by source.
    operators: HashMap<String, (HashMap<Source, Part>, Instant)>,
}

/// Password-guessing bookkeeping of one relay.
pub(crate) struct Throttle {
    state: Arc<Mutex<State>>,
    first: Duration,
    max: Duration,
    lock_after: u32,
}

/// A check's turn: when it may run. Dropped undecided (the connection went away while it
/// waited), it gives its turn back without counting.
pub(crate) struct Check {
    state: Arc<Mutex<State>>,
    source: Source,
    at: Instant,
    /// Its place among the address's attempts since it was last quiet (1 for the first).
    attempt: u32,
    /// The operator it counts against, once [`Check::against`] said it may be checked.
    operator: Option<String>,
    lock_after: u32,
    decided: bool,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The most failures one source adds to an operator's count: a quarter of the lock, rounded
/// up, so that locking takes four addresses (fewer only when the lock is set below 4).
pub(crate) fn share(lock_after: u32) -> u32 {
    lock_after.div_ceil(4).max(1)
}

/// An operator's failures in a row (with `pending` checks counted as failures), each source
/// counting up to its share.
fn counted(parts: &HashMap<Source, Part>, lock_after: u32, pending: bool) -> u32 {
    let cap = share(lock_after);
    parts
        .values()
        .map(|p| {
            let n = if pending {
                p.failures.saturating_add(p.pending)
            } else {
                p.failures
            };
            n.min(cap)
        })
        .fold(0, u32::saturating_add)
}

impl Throttle {
    /// Waits doubling from `first` after [`FREE_FAILURES`], each at most `max`; an operator
    /// locked after `lock_after` failures in a row.
    pub(crate) fn new(first: Duration, max: Duration, lock_after: u32) -> Throttle {
        Throttle {
            state: Arc::default(),
            first,
            max: max.max(first),
            lock_after: lock_after.max(1),
        }
    }

    /// The wait before a check from an address with `n` failures (and checks in flight).
    fn wait(&self, n: u32) -> Duration {
        match n.checked_sub(FREE_FAILURES) {
            None => Duration::ZERO,
            Some(k) => self.first.saturating_mul(1 << k.min(20)).min(self.max),
        }
    }

    /// Gives a password check from `ip` its turn: after the address's turns already given,
    /// plus the wait its failures earn. A turn further off than the longest wait is not given
    /// (the address is running many checks at once): `Err` says how far off it was.
    pub(crate) fn reserve(&self, ip: IpAddr, now: Instant) -> Result<Check, Duration> {
        let source = Source::of(ip);
        let mut state = lock(&self.state);
        if state.sources.len() >= MAX_TRACKED && !state.sources.contains_key(&source) {
            state
                .sources
                .retain(|_, t| t.pending > 0 || now.duration_since(t.last) < FORGET_AFTER);
            // Still full (that many addresses guessing within 15 minutes): the stalest goes.
            let stalest = (state.sources.len() >= MAX_TRACKED)
                .then(|| {
                    state
                        .sources
                        .iter()
                        .filter(|(_, t)| t.pending == 0)
                        .min_by_key(|(_, t)| t.last)
                        .map(|(k, _)| *k)
                })
                .flatten();
            if let Some(k) = stalest {
                state.sources.remove(&k);
            }
        }
        let turns = state.sources.entry(source).or_insert(Turns {
            failures: 0,
            pending: 0,
            next: now,
            last: now,
        });
        if now.duration_since(turns.last) >= FORGET_AFTER {
            turns.failures = 0;
        }
        let before = turns.failures.saturating_add(turns.pending);
        let at = turns.next.max(now) + self.wait(before);
        let ahead = at.duration_since(now);
        if ahead > self.max {
            return Err(ahead);
        }
        turns.pending = turns.pending.saturating_add(1);
        turns.next = at;
        turns.last = now;
        Ok(Check {
            state: self.state.clone(),
            source,
            at,
            attempt: before.saturating_add(1),
            operator: None,
            lock_after: self.lock_after,
            decided: false,
        })
    }

    /// Forgets an operator's failures: a lock now stands for them.
    pub(crate) fn forget_operator(&self, operator: &str) {
        lock(&self.state).operators.remove(operator);
    }
}

impl Check {
    /// When the check may run.
    pub(crate) fn at(&self) -> Instant {
        self.at
    }

    /// Its place among its address's attempts (failed or in flight) since it was last quiet:
    /// attempts at once from one address get the places they would have had one by one.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Counts this check against `operator` (which has a password and is not locked). False
    /// when its failures in a row, with the checks in flight, already reach the lock: the
    /// password is then refused like a locked one, and that lock is being stored.
    pub(crate) fn against(&mut self, operator: &str, now: Instant) -> bool {
        let mut state = lock(&self.state);
        let (parts, last) = state
            .operators
            .entry(operator.to_string())
            .or_insert_with(|| (HashMap::new(), now));
        if now.duration_since(*last) >= FORGET_AFTER {
            parts.retain(|_, p| p.pending > 0);
            for p in parts.values_mut() {
                p.failures = 0;
            }
        }
        *last = now;
        if counted(parts, self.lock_after, true) >= self.lock_after {
            return false;
        }
        let part = parts.entry(self.source).or_default();
        part.pending = part.pending.saturating_add(1);
        self.operator = Some(operator.to_string());
        true
    }

    /// The right password: the operator's failures in a row are over.
    pub(crate) fn succeeded(mut self) {
        self.decided = true;
        let mut state = lock(&self.state);
        if let Some(t) = state.sources.get_mut(&self.source) {
            t.pending = t.pending.saturating_sub(1);
        }
        if let Some(op) = &self.operator {
            state.operators.remove(op);
        }
    }

    /// A refused password (wrong, for no such operator, or for a locked one). Returns the
    /// operator's failures in a row when they now reach the lock.
    pub(crate) fn failed(mut self, now: Instant) -> Option<u32> {
        self.decided = true;
        let mut state = lock(&self.state);
        if let Some(t) = state.sources.get_mut(&self.source) {
            t.pending = t.pending.saturating_sub(1);
            t.failures = t.failures.saturating_add(1);
            t.last = now;
        }
        let op = self.operator.as_ref()?;
        let (parts, last) = state.operators.get_mut(op)?;
        *last = now;
        if let Some(p) = parts.get_mut(&self.source) {
            p.pending = p.pending.saturating_sub(1);
            p.failures = p.failures.saturating_add(1);
        }
        let n = counted(parts, self.lock_after, false);
        (n >= self.lock_after).then_some(n)
    }
}

impl Drop for Check {
    fn drop(&mut self) {
        if self.decided {
            return;
        }
        let mut state = lock(&self.state);
        if let Some(t) = state.sources.get_mut(&self.source) {
            t.pending = t.pending.saturating_sub(1);
        }
        if let Some(op) = &self.operator
            && let Some((parts, _)) = state.operators.get_mut(op)
            && let Some(p) = parts.get_mut(&self.source)
        {
            p.pending = p.pending.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Guesses from `from` one after another, each answered before the next is asked for:
    /// the waits each one got.
    fn sequential(t: &Throttle, from: IpAddr, n: usize, mut now: Instant) -> Vec<Duration> {
        let mut waits = Vec::new();
        for _ in 0..n {
            let c = t.reserve(from, now).unwrap();
            waits.push(c.at() - now);
            now = c.at();
            c.failed(now);
        }
        waits
    }

    #[test]
    fn one_address_waits_doubling_up_to_the_longest_and_forgets() {
        let t = Throttle::new(S, 16 * S, 10);
        let now = Instant::now();
        let a = ip("192.0.2.1");
        let secs: Vec<u64> = sequential(&t, a, 10, now)
            .iter()
            .map(Duration::as_secs)
            .collect();
        assert_eq!(secs, [0, 0, 0, 1, 2, 4, 8, 16, 16, 16]);
        // Another address is not slowed at all.
        assert_eq!(t.reserve(ip("192.0.2.2"), now).unwrap().at(), now);
        // After a quiet spell the address starts afresh.
        let later = now + 200 * S + FORGET_AFTER;
        assert_eq!(t.reserve(a, later).unwrap().at(), later);
    }

    #[test]
    fn parallel_guesses_get_the_turns_sequential_ones_would() {
        let t = Throttle::new(S, 16 * S, 10);
        let now = Instant::now();
        let a = ip("192.0.2.1");
        // Everything asked for at once: turns 0, 0, 0, 1, 3, 7, 15 s from now, then a turn
        // past the longest wait is refused.
        let checks: Vec<Check> = (0..7).map(|_| t.reserve(a, now).unwrap()).collect();
        let at: Vec<u64> = checks.iter().map(|c| (c.at() - now).as_secs()).collect();
        assert_eq!(at, [0, 0, 0, 1, 3, 7, 15]);
        assert_eq!(t.reserve(a, now).err(), Some(31 * S));
        // The same guesses one by one are answered no sooner.
        let u = Throttle::new(S, 16 * S, 10);
        let mut ends = Vec::new();
        let mut clock = now;
        for w in sequential(&u, a, 7, now) {
            clock += w;
            ends.push((clock - now).as_secs());
        }
        assert_eq!(ends, at);
        // A turn given back (its connection went away) frees the address's count.
        drop(checks);
        assert_eq!(t.reserve(a, now + 40 * S).unwrap().at(), now + 40 * S);
    }

    #[test]
    fn one_address_never_locks_an_operator_four_do() {
        let t = Throttle::new(S, 16 * S, 10);
        let mut now = Instant::now();
        let guess = |t: &Throttle, from: &str, now: Instant| {
            let mut c = t.reserve(ip(from), now).unwrap();
            let at = c.at();
            assert!(c.against("bob", at));
            c.failed(at)
        };
        // One address, forever: never a lock.
        for _ in 0..100 {
            assert_eq!(guess(&t, "192.0.2.1", now), None);
            now += 20 * S;
        }
        // Three more addresses add their shares (3 each): the first guess of the third
        // reaches 10.
        for from in ["192.0.2.2", "192.0.2.3"] {
            for _ in 0..3 {
                assert_eq!(guess(&t, from, now), None);
            }
        }
        assert_eq!(guess(&t, "192.0.2.4", now), Some(10));
        // The right password ends the count.
        let t = Throttle::new(S, 16 * S, 10);
        for from in ["192.0.2.2", "192.0.2.3", "192.0.2.4"] {
            for _ in 0..3 {
                assert_eq!(guess(&t, from, now), None);
            }
        }
        let mut c = t.reserve(ip("198.51.100.1"), now).unwrap();
        assert!(c.against("bob", now));
        c.succeeded();
        assert_eq!(guess(&t, "192.0.2.5", now), None);
    }

    #[test]
    fn checks_in_flight_count_toward_the_lock() {
        let t = Throttle::new(S, 16 * S, 10);
        let now = Instant::now();
        // Fourteen addresses at once: ten are checked, the rest find the lock on its way.
        let mut checks = Vec::new();
        let mut refused = 0;
        for i in 1..=14 {
            let mut c = t.reserve(ip(&format!("192.0.2.{i}")), now).unwrap();
            if c.against("bob", now) {
                checks.push(c);
            } else {
                refused += 1;
            }
        }
        assert_eq!((checks.len(), refused), (10, 4));
        let locks: Vec<Option<u32>> = checks.into_iter().map(|c| c.failed(now)).collect();
        assert_eq!(locks.iter().flatten().count(), 1);
        assert_eq!(locks.last(), Some(&Some(10)));
    }

    #[test]
    fn ipv6_guesses_count_per_64() {
        let t = Throttle::new(S, 16 * S, 10);
        let now = Instant::now();
        for i in 0..FREE_FAILURES {
            t.reserve(ip(&format!("2001:db8::{i}")), now)
                .unwrap()
                .failed(now);
        }
        let c = t.reserve(ip("2001:db8::ffff:1"), now).unwrap();
        assert_eq!(c.at() - now, S);
        let other = t.reserve(ip("2001:db8:0:1::1"), now).unwrap();
        assert_eq!(other.at(), now);
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.1")),
            Source::of(ip("192.0.2.1"))
        );
    }

    #[test]
    fn sources_tracked_are_bounded() {
        let t = Throttle::new(S, 16 * S, 10);
        let now = Instant::now();
        for i in 0..MAX_TRACKED as u32 + 10 {
            let from = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.reserve(from, now + Duration::from_millis(u64::from(i)))
                .unwrap()
                .failed(now);
        }
        assert_eq!(lock(&t.state).sources.len(), MAX_TRACKED);
    }

    #[test]
    fn share_is_a_quarter_rounded_up() {
        assert_eq!([1, 2, 3, 4, 5, 10, 12].map(share), [1, 1, 1, 1, 2, 3, 3]);
    }
}
