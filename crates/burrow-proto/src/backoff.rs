//! Jittered exponential reconnect backoff, reset after a stable period.

use std::time::Duration;

/// Reconnect delays: doubling from `min` up to `max`, each drawn from [d/2, d] ("equal jitter")
/// so that a thousand devices behind one relay restart do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff between `min` and `max` (`max` is raised to `min` if smaller).
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay; `unit` is a random number in [0, 1) supplied by the caller.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        let ceiling = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let unit = unit.clamp(0.0, 1.0);
        ceiling.div_f64(2.0) + ceiling.div_f64(2.0).mul_f64(unit)
    }

    /// Forgets past failures, after a connection stayed up long enough.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let ceilings: Vec<Duration> = (0..8).map(|_| b.next_delay(1.0)).collect();
        let secs: Vec<u64> = ceilings.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b.attempts(), 8);
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_in_half_to_full() {
        let mut b = Backoff::new(Duration::from_secs(4), Duration::from_secs(4));
        for unit in [0.0, 0.25, 0.5, 0.999, 7.0, -1.0] {
            let d = b.next_delay(unit);
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_secs(4),
                "{d:?}"
            );
        }
    }

    #[test]
    fn survives_many_attempts() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..10_000 {
            b.next_delay(0.5);
        }
        assert!(b.next_delay(1.0) <= Duration::from_secs(30));
    }
}
