//! Admission of unauthenticated connections: a per-source rate of new connections, a per-source
//! cap, and a global cap that makes room by dropping the oldest unauthenticated connection.
//!
//! A permit is held from TCP accept until authentication succeeds or the connection ends, so
//! authenticated devices are not counted at all. The rate counts what does not authenticate:
//! each new connection takes a token from its address's bucket, and one that logs in gives it
//! back. A fleet behind one carrier NAT address reconnecting after a relay restart therefore
//! spends nothing, while a flood of handshakes that never authenticate (from anyone without a
//! key or password) is held to the rate. When the global cap is full, a newcomer does
//! not get refused: the connection that has waited longest without authenticating is cut
//! instead. Real clients authenticate within a second, so what gets cut is what an attacker
//! holds open; legitimate operators and devices keep getting in during a flood (as OpenSSH's
//! `MaxStartups` random early drop and `PerSourcePenalties` intend, without refusing everyone).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

/// Most sources whose rate is tracked; beyond it the fullest buckets are forgotten.
const MAX_TRACKED_SOURCES: usize = 65_536;

/// Caps on connections that have not authenticated yet.
pub struct Gate {
    state: Arc<Mutex<State>>,
    global_max: usize,
    per_ip_max: usize,
    /// New connections per second and burst allowed from one address; `None`: no limit.
    rate: Option<(f64, f64)>,
}

#[derive(Default)]
struct State {
    next: u64,
    /// Unauthenticated connections, oldest first.
    waiting: BTreeMap<u64, (IpAddr, CancellationToken)>,
    per_ip: HashMap<IpAddr, usize>,
    buckets: HashMap<IpAddr, Bucket>,
}

/// A token bucket of new connections from one address.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Held by an unauthenticated connection; dropping it frees its place.
pub struct Permit {
    seq: u64,
    state: Arc<Mutex<State>>,
    /// The address and the burst of its bucket, when a token was taken.
    token: Option<(IpAddr, f64)>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too many unauthenticated connections from this address.
    PerIp,
    /// This address opens new connections faster than allowed.
    Rate,
}

/// An admitted connection, and the one cut to make room for it, if any.
pub struct Admitted {
    /// The newcomer's place.
    pub permit: Permit,
    /// The address of the oldest unauthenticated connection, cut to make room.
    pub evicted: Option<IpAddr>,
}

impl State {
    fn remove(&mut self, seq: u64) -> Option<(IpAddr, CancellationToken)> {
        let (ip, cut) = self.waiting.remove(&seq)?;
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
        Some((ip, cut))
    }

    /// Takes one token from `ip`'s bucket; false when it is empty.
    fn take_token(&mut self, ip: IpAddr, (rate, burst): (f64, f64), now: Instant) -> bool {
        if self.buckets.len() >= MAX_TRACKED_SOURCES && !self.buckets.contains_key(&ip) {
            // Forget sources that have refilled anyway; they lose nothing by it.
            self.buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Gate {
    /// A gate admitting `global` unauthenticated connections, `per_ip` from one address, and
    /// new connections from one address at `rate` per second with a `burst` (`rate` 0: no limit).
    pub fn new(global: usize, per_ip: usize, rate: f64, burst: f64) -> Self {
        Gate {
            state: Arc::default(),
            global_max: global.max(1),
            per_ip_max: per_ip.max(1),
            rate: (rate > 0.0).then_some((rate, burst.max(1.0))),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `ip` (cancelling `cut` ends it), or says why not.
    pub fn admit(&self, ip: IpAddr, cut: CancellationToken) -> Result<Admitted, Refused> {
        let mut state = self.state();
        if let Some(rate) = self.rate
            && !state.take_token(ip, rate, Instant::now())
        {
            return Err(Refused::Rate);
        }
        if state.per_ip.get(&ip).copied().unwrap_or(0) >= self.per_ip_max {
            return Err(Refused::PerIp);
        }
        let mut evicted = None;
        if state.waiting.len() >= self.global_max
            && let Some(oldest) = state.waiting.keys().next().copied()
            && let Some((old_ip, old_cut)) = state.remove(oldest)
        {
            old_cut.cancel();
            evicted = Some(old_ip);
        }
        let seq = state.next;
        state.next += 1;
        state.waiting.insert(seq, (ip, cut));
        *state.per_ip.entry(ip).or_insert(0) += 1;
        Ok(Admitted {
            permit: Permit {
                seq,
                state: self.state.clone(),
                token: self.rate.map(|(_, burst)| (ip, burst)),
            },
            evicted,
        })
    }
}

impl Permit {
    /// The connection authenticated: its place is free and its token goes back to its
    /// address's bucket, so that logging in costs a known device or operator nothing.
    pub fn authenticated(self) {
        if let Some((ip, burst)) = self.token {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(b) = state.buckets.get_mut(&ip) {
                b.tokens = (b.tokens + 1.0).min(burst);
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.remove(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_cap_and_room_made_by_cutting_the_oldest() {
        let gate = Gate::new(3, 2, 0.0, 0.0);
        let (a, b, c) = (ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3"));
        let first = CancellationToken::new();
        let p1 = gate.admit(a, first.clone()).unwrap();
        let _p2 = gate.admit(a, CancellationToken::new()).unwrap();
        assert_eq!(
            gate.admit(a, CancellationToken::new()).err(),
            Some(Refused::PerIp)
        );
        let _p3 = gate.admit(b, CancellationToken::new()).unwrap();
        // Full: the newcomer gets in, the oldest waiting connection is cut.
        let p4 = gate.admit(c, CancellationToken::new()).unwrap();
        assert_eq!(p4.evicted, Some(a));
        assert!(first.is_cancelled());
        // The cut one's permit going away later changes nothing twice.
        drop(p1);
        assert!(gate.admit(a, CancellationToken::new()).is_ok());
    }

    #[test]
    fn a_connection_that_authenticates_gives_its_token_back() {
        let gate = Gate::new(1000, 1000, 0.001, 3.0);
        let a = ip("10.0.0.1");
        // Any number of logins in a row from one address: each gives its token back.
        for _ in 0..100 {
            gate.admit(a, CancellationToken::new())
                .unwrap()
                .permit
                .authenticated();
        }
        // Connections that never authenticate spend the burst, then are refused.
        let held: Vec<_> = (0..3)
            .map(|_| gate.admit(a, CancellationToken::new()).unwrap())
            .collect();
        assert_eq!(
            gate.admit(a, CancellationToken::new()).err(),
            Some(Refused::Rate)
        );
        // Failing to authenticate gives nothing back.
        drop(held);
        assert_eq!(
            gate.admit(a, CancellationToken::new()).err(),
            Some(Refused::Rate)
        );
    }

    #[test]
    fn rate_per_source_leaves_other_sources_alone() {
        let gate = Gate::new(1000, 1000, 1.0, 3.0);
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(gate.admit(a, CancellationToken::new()).unwrap());
        }
        assert_eq!(
            gate.admit(a, CancellationToken::new()).err(),
            Some(Refused::Rate)
        );
        assert!(gate.admit(b, CancellationToken::new()).is_ok());
    }
}
