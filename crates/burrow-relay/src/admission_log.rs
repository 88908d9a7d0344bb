//! Connections the gate refused or cut, reported in the log at most every 10 s: a flood must
//! not flood the log, and devices refused behind a carrier NAT must not go unseen.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::gate::Refused;

/// Shortest time between two reports.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What the gate did to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// Closed at accept.
    Refused(Refused),
    /// The oldest unauthenticated connection, cut to make room for a newer one.
    Cut,
}

/// The limits a report names, with the flags that set them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) rate: f64,
    pub(crate) burst: f64,
    pub(crate) per_ip: usize,
    pub(crate) global: usize,
}

#[derive(Default)]
struct Tally {
    reported: Option<Instant>,
    too_fast: u64,
    too_many: u64,
    cut: u64,
    latest: Option<IpAddr>,
}

/// Counts what the gate did since the last report.
pub(crate) struct AdmissionLog {
    limits: Limits,
    tally: Mutex<Tally>,
}

impl AdmissionLog {
    pub(crate) fn new(limits: Limits) -> AdmissionLog {
        AdmissionLog {
            limits,
            tally: Mutex::default(),
        }
    }

    /// Counts `event` for a connection from `ip`; returns the report when one is due (the
    /// first event at once, then at most one per [`REPORT_EVERY`], covering everything since).
    pub(crate) fn note(&self, event: Event, ip: IpAddr, now: Instant) -> Option<String> {
        let mut t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Refused(Refused::Rate) => t.too_fast += 1,
            Event::Refused(Refused::PerIp) => t.too_many += 1,
            Event::Cut => t.cut += 1,
        }
        t.latest = Some(ip);
        if t.reported
            .is_some_and(|at| now.duration_since(at) < REPORT_EVERY)
        {
            return None;
        }
        let since = match t.reported {
            Some(at) => format!("in the last {}s", now.duration_since(at).as_secs()),
            None => "since the start".to_string(),
        };
        let l = self.limits;
        let mut parts = Vec::new();
        if t.too_fast > 0 {
            parts.push(format!(
                "refused {} connections from addresses opening more than {}/s after a burst of {} without logging in (--handshakes-per-ip, --handshake-burst)",
                t.too_fast, l.rate, l.burst
            ));
        }
        if t.too_many > 0 {
            parts.push(format!(
                "refused {} connections from addresses already holding {} unauthenticated ones (--max-unauthenticated-per-ip)",
                t.too_many, l.per_ip
            ));
        }
        if t.cut > 0 {
            parts.push(format!(
                "cut {} unauthenticated connections, the oldest, to make room past {} (--max-unauthenticated)",
                t.cut, l.global
            ));
        }
        let latest = t.latest.map(|ip| ip.to_string()).unwrap_or_default();
        let report = format!("{} {since}; the latest from {latest}", parts.join("; "));
        *t = Tally {
            reported: Some(now),
            ..Tally::default()
        };
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_at_once_then_at_most_every_ten_seconds_with_everything_since() {
        let log = AdmissionLog::new(Limits {
            rate: 20.0,
            burst: 60.0,
            per_ip: 64,
            global: 512,
        });
        let now = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = log.note(Event::Refused(Refused::Rate), a, now).unwrap();
        assert!(first.contains("refused 1 connections from addresses opening more than 20/s"));
        assert!(
            first.ends_with("since the start; the latest from 192.0.2.1"),
            "{first}"
        );
        for i in 1..1000 {
            let event = if i % 2 == 0 {
                Event::Refused(Refused::PerIp)
            } else {
                Event::Cut
            };
            assert_eq!(log.note(event, b, now + Duration::from_millis(i)), None);
        }
        let next = log
            .note(Event::Refused(Refused::Rate), a, now + REPORT_EVERY)
            .unwrap();
        assert!(
            next.contains("refused 1 connections from addresses opening"),
            "{next}"
        );
        assert!(
            next.contains("refused 499 connections from addresses already holding 64"),
            "{next}"
        );
        assert!(
            next.contains("cut 500 unauthenticated connections"),
            "{next}"
        );
        assert!(
            next.ends_with("in the last 10s; the latest from 192.0.2.1"),
            "{next}"
        );
    }
}
