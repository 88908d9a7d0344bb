//! When the agent sends a keepalive, and when a session counts as dead, on either end.
//!
//! One side sends: the agent, and only when its own direction has been quiet for the
//! interval (streams that move data need no keepalive). Each keepalive asks the relay for an
//! answer; any byte from the relay is that answer. After a stream moved bytes, the agent checks
//! the link sooner (the busy interval after it last heard the relay), once: an answered keepalive
//! sent after those bytes proves they were not lost, and an open stream that stays silent then
//! costs what an idle session costs (a SIM is billed for every keepalive). The relay never sends keepalives to an agent
//! that declared its schedule (in the comment of its SSH identification line): it only
//! watches the silence and drops the session once a keepalive is overdue by the timeout.
//!
//! Everything here is pure: the caller passes the time and what the link did.

use std::time::{Duration, Instant};

/// How often the agent proves itself, as it declares it to the relay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// A keepalive goes out after this long without sending anything.
    pub interval: Duration,
    /// After a stream moved bytes that no answered keepalive has covered yet, one also goes out
    /// after this long without receiving anything.
    pub busy_interval: Duration,
    /// Time a keepalive may go unanswered (counted once what was queued ahead of it left).
    pub timeout: Duration,
}

/// Key of the schedule in the agent's identification comment (`keepalive=150/20`).
const COMMENT_KEY: &str = "keepalive=";
/// Longest interval a relay takes from a peer: a typo must not keep a dead session for days.
const MAX_DECLARED: f64 = 86_400.0;
/// Shortest interval or timeout a relay takes from a peer.
const MIN_DECLARED: f64 = 0.05;

impl Schedule {
    /// The comment the agent appends to its SSH identification line.
    pub fn comment(&self) -> String {
        format!(
            "{COMMENT_KEY}{}/{}",
            self.interval.as_secs_f64(),
            self.timeout.as_secs_f64()
        )
    }

    /// The declared interval and timeout in the identification line `id`, if any; the busy
    /// interval is the agent's own business and comes back equal to the interval.
    pub fn from_ssh_id(id: &str) -> Option<Schedule> {
        let comment = id.split_once(' ')?.1;
        let value = comment
            .split(' ')
            .find_map(|word| word.strip_prefix(COMMENT_KEY))?;
        let (interval, timeout) = value.split_once('/')?;
        let secs = |s: &str| {
            s.parse::<f64>()
                .ok()
                .filter(|v| (MIN_DECLARED..=MAX_DECLARED).contains(v))
                .map(Duration::from_secs_f64)
        };
        let interval = secs(interval)?;
        Some(Schedule {
            interval,
            busy_interval: interval,
            timeout: secs(timeout)?,
        })
    }

    /// Silence after which the relay holds the device suspect: its keepalive is overdue.
    pub fn suspect_after(&self) -> Duration {
        self.interval + self.timeout / 2
    }

    /// Silence after which the relay drops the session.
    pub fn dead_after(&self) -> Duration {
        self.interval + self.timeout
    }
}

/// Key of the agent process's id in its identification comment (`instance=9f2c...`).
const INSTANCE_KEY: &str = "instance=";

/// The identification comment word that names an agent process: its sessions on several
/// relays belong together, and a new process (a reboot) takes over an old one's.
pub fn instance_word(instance: &str) -> String {
    format!("{INSTANCE_KEY}{instance}")
}

/// The agent process id declared in the identification line `id`, if any (1 to 32 hex
/// digits; anything else is ignored).
pub fn instance_from_ssh_id(id: &str) -> Option<String> {
    let comment = id.split_once(' ')?.1;
    let value = comment
        .split(' ')
        .find_map(|word| word.strip_prefix(INSTANCE_KEY))?;
    (!value.is_empty() && value.len() <= 32 && value.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| value.to_ascii_lowercase())
}

/// What the link did, as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// Last byte received from the relay.
    pub last_rx: Instant,
    /// Last byte sent to the relay.
    pub last_tx: Instant,
    /// Last time a stream opened or moved bytes either way; `None` if none ever did.
    pub streams_moved_at: Option<Instant>,
    /// Last time bytes queued ahead of the outstanding keepalive were still being acknowledged
    /// (the link is slow, not dead); `None` when unknown or nothing was queued.
    pub queue_moving_at: Option<Instant>,
}

/// What the agent should do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing until this time (or until the link does something).
    Wait(Instant),
    /// Send a keepalive that asks for an answer, then ask again.
    SendKeepalive,
    /// The relay is gone: this says why.
    Dead(String),
}

/// The agent's keepalive state for one session.
#[derive(Debug, Clone)]
pub struct Liveness {
    schedule: Schedule,
    /// When the unanswered keepalive went out.
    waiting_since: Option<Instant>,
    /// When the last answered keepalive went out: everything before it reached the relay.
    proven_at: Option<Instant>,
}

impl Liveness {
    /// A session that just came up.
    pub fn new(schedule: Schedule) -> Liveness {
        Liveness {
            schedule,
            waiting_since: None,
            proven_at: None,
        }
    }

    /// The schedule it keeps.
    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// Since when a keepalive has been waiting for its answer.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.waiting_since
    }

    /// Decides what to do at `now`.
    pub fn step(&mut self, now: Instant, link: Link) -> Step {
        if let Some(sent) = self.waiting_since {
            if link.last_rx >= sent {
                // Any byte from the relay answers it.
                self.waiting_since = None;
                self.proven_at = Some(sent);
            } else {
                let clock = link.queue_moving_at.map_or(sent, |t| t.max(sent));
                let deadline = clock + self.schedule.timeout;
                if now >= deadline {
                    return Step::Dead(format!(
                        "the relay sent nothing for {:.0} s and left a keepalive unanswered for {:.0} s",
                        now.saturating_duration_since(link.last_rx).as_secs_f64(),
                        now.saturating_duration_since(sent).as_secs_f64(),
                    ));
                }
                return Step::Wait(deadline);
            }
        }
        let mut due = link.last_tx + self.schedule.interval;
        // Stream bytes not yet covered by an answered keepalive may be lost on a dead link:
        // check soon. An open stream that moved nothing since is as idle as no stream.
        let unproven = link
            .streams_moved_at
            .is_some_and(|moved| self.proven_at.is_none_or(|proven| moved >= proven));
        if unproven {
            due = due.min(link.last_rx + self.schedule.busy_interval);
        }
        if now >= due {
            self.waiting_since = Some(now);
            return Step::SendKeepalive;
        }
        Step::Wait(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Schedule = Schedule {
        interval: Duration::from_secs(150),
        busy_interval: Duration::from_secs(10),
        timeout: Duration::from_secs(20),
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn idle(t0: Instant, rx: u64, tx: u64) -> Link {
        Link {
            last_rx: t0 + secs(rx),
            last_tx: t0 + secs(tx),
            streams_moved_at: None,
            queue_moving_at: None,
        }
    }

    #[test]
    fn idle_session_sends_one_keepalive_per_interval_and_an_answer_resets_it() {
        let t0 = Instant::now();
        let mut l = Liveness::new(S);
        assert_eq!(l.step(t0, idle(t0, 0, 0)), Step::Wait(t0 + secs(150)));
        assert_eq!(
            l.step(t0 + secs(149), idle(t0, 0, 0)),
            Step::Wait(t0 + secs(150))
        );
        assert_eq!(l.step(t0 + secs(150), idle(t0, 0, 0)), Step::SendKeepalive);
        // Waiting: the deadline is the timeout after sending.
        assert_eq!(
            l.step(t0 + secs(151), idle(t0, 0, 150)),
            Step::Wait(t0 + secs(170))
        );
        // The answer arrives: the next keepalive is one interval after the last one sent.
        assert_eq!(
            l.step(t0 + secs(151), idle(t0, 151, 150)),
            Step::Wait(t0 + secs(300))
        );
        assert_eq!(l.waiting_since(), None);
    }

    #[test]
    fn data_sent_defers_the_keepalive_and_data_received_alone_does_not() {
        let t0 = Instant::now();
        let mut l = Liveness::new(S);
        // Sending keeps the relay informed: no keepalive needed.
        assert_eq!(
            l.step(t0 + secs(200), idle(t0, 0, 100)),
            Step::Wait(t0 + secs(250))
        );
        // Receiving only (a one-way stream to the device) still needs the agent to speak up,
        // or the relay, which hears nothing, would drop the session.
        assert_eq!(
            l.step(t0 + secs(200), idle(t0, 199, 0)),
            Step::SendKeepalive
        );
    }

    #[test]
    fn an_unanswered_keepalive_is_a_verdict_only_after_the_timeout() {
        let t0 = Instant::now();
        let mut l = Liveness::new(S);
        assert_eq!(l.step(t0 + secs(150), idle(t0, 0, 0)), Step::SendKeepalive);
        assert_eq!(
            l.step(t0 + secs(169), idle(t0, 0, 150)),
            Step::Wait(t0 + secs(170))
        );
        match l.step(t0 + secs(170), idle(t0, 0, 150)) {
            Step::Dead(why) => assert!(why.contains("170 s") && why.contains("20 s"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_queue_still_draining_ahead_of_the_keepalive_moves_its_deadline() {
        let t0 = Instant::now();
        let mut l = Liveness::new(S);
        assert_eq!(l.step(t0 + secs(150), idle(t0, 0, 0)), Step::SendKeepalive);
        let mut link = idle(t0, 0, 150);
        link.queue_moving_at = Some(t0 + secs(165));
        assert_eq!(l.step(t0 + secs(175), link), Step::Wait(t0 + secs(185)));
        assert!(matches!(l.step(t0 + secs(185), link), Step::Dead(_)));
    }

    #[test]
    fn streams_that_moved_bytes_check_within_the_busy_interval() {
        let t0 = Instant::now();
        let mut l = Liveness::new(S);
        let mut link = idle(t0, 0, 5);
        link.streams_moved_at = Some(t0 + secs(5));
        assert_eq!(l.step(t0 + secs(6), link), Step::Wait(t0 + secs(10)));
        assert_eq!(l.step(t0 + secs(10), link), Step::SendKeepalive);
        // Dead within busy interval + timeout of the last byte heard.
        assert!(matches!(l.step(t0 + secs(30), link), Step::Dead(_)));
    }

    #[test]
    fn a_stream_that_stays_silent_after_an_answer_costs_no_more_than_an_idle_session() {
        let t0 = Instant::now();
        let mut l = Liveness::new(S);
        // A stream opened and moved bytes at 1 s; the relay was last heard then.
        let mut link = idle(t0, 1, 1);
        link.streams_moved_at = Some(t0 + secs(1));
        assert_eq!(l.step(t0 + secs(11), link), Step::SendKeepalive);
        // The answer covers the stream's bytes: from then on only the idle interval applies.
        link.last_tx = t0 + secs(11);
        link.last_rx = t0 + secs(12);
        assert_eq!(l.step(t0 + secs(12), link), Step::Wait(t0 + secs(161)));
        assert_eq!(l.step(t0 + secs(100), link), Step::Wait(t0 + secs(161)));
        // The stream moves again: one more check, the busy interval after the relay was heard.
        link.streams_moved_at = Some(t0 + secs(120));
        link.last_rx = t0 + secs(120);
        assert_eq!(l.step(t0 + secs(121), link), Step::Wait(t0 + secs(130)));
        // Bytes the device sends after a long silence of the relay are checked at once.
        let mut l = Liveness::new(S);
        let mut link = idle(t0, 0, 0);
        link.streams_moved_at = Some(t0 + secs(100));
        link.last_tx = t0 + secs(100);
        assert_eq!(l.step(t0 + secs(100), link), Step::SendKeepalive);
    }

    #[test]
    fn the_schedule_travels_in_the_identification_comment() {
        let id = format!("SSH-2.0-burrow_0.1.0 {}", S.comment());
        let back = Schedule::from_ssh_id(&id).expect("parses");
        assert_eq!((back.interval, back.timeout), (S.interval, S.timeout));
        assert_eq!(back.dead_after(), secs(170));
        assert!(back.suspect_after() < back.dead_after());
        let scaled = Schedule {
            interval: Duration::from_millis(500),
            busy_interval: Duration::from_millis(500),
            timeout: Duration::from_millis(250),
        };
        let id = format!("SSH-2.0-burrow_0.1.0 other {}", scaled.comment());
        assert_eq!(Schedule::from_ssh_id(&id), Some(scaled));
        for bad in [
            "SSH-2.0-burrow_0.1.0",
            "SSH-2.0-OpenSSH_9.6",
            "SSH-2.0-burrow_0.1.0 keepalive=",
            "SSH-2.0-burrow_0.1.0 keepalive=150",
            "SSH-2.0-burrow_0.1.0 keepalive=x/20",
            "SSH-2.0-burrow_0.1.0 keepalive=1e9/20",
            "SSH-2.0-burrow_0.1.0 keepalive=150/0",
            "SSH-2.0-burrow_0.1.0 keepalive=NaN/20",
            "SSH-2.0-burrow_0.1.0 keepalive=-5/20",
        ] {
            assert_eq!(Schedule::from_ssh_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_agent_process_travels_in_the_identification_comment() {
        let id = format!(
            "SSH-2.0-burrow_0.1.0 {} {}",
            S.comment(),
            instance_word("9F2c00")
        );
        assert_eq!(instance_from_ssh_id(&id).as_deref(), Some("9f2c00"));
        assert!(Schedule::from_ssh_id(&id).is_some());
        for bad in [
            "SSH-2.0-OpenSSH_9.6",
            "SSH-2.0-burrow_0.1.0 instance=",
            "SSH-2.0-burrow_0.1.0 instance=xyz",
            "SSH-2.0-burrow_0.1.0 instance=0123456789abcdef0123456789abcdef0",
        ] {
            assert_eq!(instance_from_ssh_id(bad), None, "{bad}");
        }
    }
}
