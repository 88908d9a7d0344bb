//! Pattern alerts on a console's output, evaluated on the device: lines assembled from what the
//! port says, matched against each rule, with context before and after, and a quiet time per
//! rule. Time is passed in, so the logic is tested without a clock.

use std::collections::VecDeque;
use std::time::Duration;

use crate::console_config::{AlertRule, DEFAULT_ALERT_CONTEXT};
use crate::portlog::{ConsoleAlert, printable};

/// A prompt without a line end (`rommon 1 >`) is matched once the port was quiet this long.
pub const PARTIAL_LINE_QUIET: Duration = Duration::from_millis(500);
/// An alert waits at most this long for its lines after the match.
pub const AFTER_WAIT: Duration = Duration::from_secs(3);
/// Longest line kept for matching.
const MAX_LINE: usize = 1024;

struct Rule {
    label: String,
    regex: regex_lite::Regex,
    every_ms: u64,
    before: usize,
    after: usize,
    /// When it last fired.
    fired_ms: Option<u64>,
    suppressed: u64,
}

/// An alert that still gathers the lines after its match.
struct Pending {
    alert: ConsoleAlert,
    want_after: usize,
    due_ms: u64,
}

/// Watches one console's output.
pub struct Watcher {
    console: String,
    rules: Vec<Rule>,
    /// Recent whole lines, for context before a match.
    recent: VecDeque<String>,
    keep: usize,
    /// The line under way: bytes, when it started, where in the log.
    line: Vec<u8>,
    line_at: Option<(u64, u64)>,
    /// Rules that already fired on the line under way (matched while it was a prompt).
    fired_on_line: Vec<usize>,
    last_byte_ms: u64,
    pending: Vec<Pending>,
}

impl Watcher {
    /// A watcher for `rules`; the error names the rule whose pattern does not compile.
    pub fn new(console: &str, rules: &[AlertRule]) -> Result<Watcher, String> {
        let mut compiled = Vec::new();
        for r in rules {
            let regex = regex_lite::Regex::new(&r.pattern).map_err(|e| {
                format!(
                    "console {console}: alert pattern {:?} is not a regular expression: {e}",
                    r.pattern
                )
            })?;
            compiled.push(Rule {
                label: r.label().to_string(),
                regex,
                every_ms: r.every().as_millis() as u64,
                before: r.before.unwrap_or(DEFAULT_ALERT_CONTEXT),
                after: r.after.unwrap_or(DEFAULT_ALERT_CONTEXT),
                fired_ms: None,
                suppressed: 0,
            });
        }
        let keep = compiled.iter().map(|r| r.before).max().unwrap_or(0);
        Ok(Watcher {
            console: console.to_string(),
            rules: compiled,
            recent: VecDeque::new(),
            keep,
            line: Vec::new(),
            line_at: None,
            fired_on_line: Vec::new(),
            last_byte_ms: 0,
            pending: Vec::new(),
        })
    }

    /// Whether there is anything to watch for.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Feeds output that arrived at `now_ms`, found at `offset` in the log; alerts that are
    /// complete go to `out`.
    pub fn feed(&mut self, now_ms: u64, offset: u64, bytes: &[u8], out: &mut Vec<ConsoleAlert>) {
        if self.rules.is_empty() {
            return;
        }
        self.last_byte_ms = now_ms;
        for &b in bytes {
            if self.line_at.is_none() {
                self.line_at = Some((now_ms, offset));
            }
            if b == b'\n' {
                self.end_line(now_ms);
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        self.release(now_ms, false, out);
    }

    /// Matches a prompt the port left without a line end, and sends alerts whose wait for
    /// their lines after is over. Call it now and then (every few hundred milliseconds).
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<ConsoleAlert>) {
        if !self.line.is_empty()
            && now_ms.saturating_sub(self.last_byte_ms) >= PARTIAL_LINE_QUIET.as_millis() as u64
        {
            let text = printable(&self.line);
            self.match_line(&text, now_ms);
        }
        self.release(now_ms, false, out);
    }

    /// Every alert still gathering lines, as it is (the agent stops).
    pub fn drain(&mut self, now_ms: u64, out: &mut Vec<ConsoleAlert>) {
        self.release(now_ms, true, out);
    }

    fn end_line(&mut self, now_ms: u64) {
        let text = printable(&self.line);
        // Alerts raised by this very line gather the lines after it, not the line itself.
        let earlier = self.pending.len();
        self.match_line(&text, now_ms);
        for p in self.pending.iter_mut().take(earlier) {
            if p.alert.after.len() < p.want_after && !text.is_empty() {
                p.alert.after.push(text.clone());
            }
        }
        if !text.is_empty() {
            self.recent.push_back(text);
            while self.recent.len() > self.keep {
                self.recent.pop_front();
            }
        }
        self.line.clear();
        self.line_at = None;
        self.fired_on_line.clear();
    }

    fn match_line(&mut self, text: &str, now_ms: u64) {
        if text.is_empty() {
            return;
        }
        let (at_ms, offset) = self.line_at.unwrap_or((now_ms, 0));
        for (i, rule) in self.rules.iter_mut().enumerate() {
            if self.fired_on_line.contains(&i) || !rule.regex.is_match(text) {
                continue;
            }
            self.fired_on_line.push(i);
            if rule
                .fired_ms
                .is_some_and(|t| now_ms.saturating_sub(t) < rule.every_ms)
            {
                rule.suppressed += 1;
                continue;
            }
            rule.fired_ms = Some(now_ms);
            let before: Vec<String> = self
                .recent
                .iter()
                .skip(self.recent.len().saturating_sub(rule.before))
                .cloned()
                .collect();
            self.pending.push(Pending {
                alert: ConsoleAlert {
                    stream: 0,
                    seq: 0,
                    console: self.console.clone(),
                    rule: rule.label.clone(),
                    line: text.to_string(),
                    before,
                    after: Vec::new(),
                    at_ms,
                    offset,
                    suppressed: std::mem::take(&mut rule.suppressed),
                },
                want_after: rule.after,
                due_ms: now_ms + AFTER_WAIT.as_millis() as u64,
            });
        }
    }

    fn release(&mut self, now_ms: u64, all: bool, out: &mut Vec<ConsoleAlert>) {
        let mut i = 0;
        while i < self.pending.len() {
            let done = self
                .pending
                .get(i)
                .is_some_and(|p| all || p.alert.after.len() >= p.want_after || now_ms >= p.due_ms);
            if done {
                out.push(self.pending.remove(i).alert);
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_config::Seconds;

    fn rule(pattern: &str, every: u64) -> AlertRule {
        AlertRule {
            name: None,
            pattern: pattern.into(),
            every: Some(Seconds::Whole(every)),
            before: Some(2),
            after: Some(1),
        }
    }

    #[test]
    fn a_match_carries_its_context_and_waits_for_the_line_after() {
        let mut w = Watcher::new("console", &[rule("%SYS-5-RESTART", 60)]).unwrap();
        let mut out = Vec::new();
        w.feed(1000, 0, b"one\r\ntwo\r\nthree\r\n", &mut out);
        w.feed(2000, 100, b"%SYS-5-RESTART: System restarted\r\n", &mut out);
        assert!(out.is_empty(), "waits for the line after");
        w.feed(2100, 200, b"Press RETURN\r\n", &mut out);
        assert_eq!(out.len(), 1);
        let a = &out[0];
        assert_eq!(a.line, "%SYS-5-RESTART: System restarted");
        assert_eq!(a.before, ["two", "three"]);
        assert_eq!(a.after, ["Press RETURN"]);
        assert_eq!((a.at_ms, a.offset), (2000, 100));
    }

    #[test]
    fn a_rule_stays_quiet_and_counts_what_it_skipped() {
        let mut w = Watcher::new("console", &[rule("LINK-3-UPDOWN", 60)]).unwrap();
        let mut out = Vec::new();
        for i in 0..5u64 {
            w.feed(
                1000 + i * 1000,
                i,
                b"%LINK-3-UPDOWN: Gi0/1 down\r\nx\r\n",
                &mut out,
            );
        }
        assert_eq!(out.len(), 1);
        w.feed(70_000, 9, b"%LINK-3-UPDOWN: Gi0/1 up\r\nx\r\n", &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].suppressed, 4);
    }

    #[test]
    fn a_prompt_without_a_line_end_matches_once_quiet() {
        let mut w = Watcher::new("console", &[rule("^rommon [0-9]+ >", 0)]).unwrap();
        let mut out = Vec::new();
        w.feed(1000, 0, b"rommon 1 >", &mut out);
        w.tick(1200, &mut out);
        assert!(out.is_empty());
        w.tick(1600, &mut out);
        // Matched; no line after comes, so it goes when its wait is over.
        w.tick(1600 + AFTER_WAIT.as_millis() as u64, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].line, "rommon 1 >");
        // The same line ending later does not fire again.
        w.feed(9000, 0, b" boot\r\n", &mut out);
        w.drain(9000, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let err = Watcher::new("aux", &[rule("(unclosed", 1)]).err().unwrap();
        assert!(
            err.contains("console aux") && err.contains("(unclosed"),
            "{err}"
        );
    }
}
