//! The agent's health report about its link and board: what it holds, when a new one is worth
//! the bytes of sending, and the one-line summary the relay lists.
//!
//! The agent reads its state every few minutes but sends it only when something notable
//! changed (the carrier, the radio technology, the signal by a clear step, the Pi's power or
//! heat flags) and otherwise once every few hours; the report rides on a packet the agent
//! sends anyway (its keepalive), so it costs its own bytes and no packet of its own.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Name of the SSH global request (sent without asking for an answer) that carries a report
/// as one JSON string.
pub const REQUEST: &str = "health@burrow";

/// Largest report a relay takes, in bytes of JSON; a larger one is ignored.
pub const MAX_REPORT: usize = 4096;

/// Longest text kept of any string in a report (an operator name, a reason).
const MAX_FIELD_CHARS: usize = 96;

/// What the agent knows about its link and board.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Report {
    /// The cellular link, as ModemManager sees it.
    #[serde(default)]
    pub modem: Modem,
    /// A Raspberry Pi's firmware throttling flags (`get_throttled`), when readable: see
    /// [`throttled_flags`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<u32>,
    /// SoC temperature in °C, when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_c: Option<f32>,
    /// Free bytes on the root file system (for an unprivileged user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free: Option<u64>,
    /// Size of the root file system in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_total: Option<u64>,
    /// Seconds since the device booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<u64>,
}

/// Whether ModemManager could be asked, and what it said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModemManager {
    /// Not read yet.
    #[default]
    Unknown,
    /// ModemManager is not installed (no `mmcli`) or not running.
    Absent,
    /// ModemManager runs and knows no modem.
    None,
    /// A modem was read.
    Present,
    /// `mmcli` failed in another way (the reason says how).
    Error,
}

/// The cellular link as ModemManager reports it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Modem {
    /// Whether ModemManager answered.
    #[serde(default)]
    pub mm: ModemManager,
    /// Why it is absent or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The modem's state (`connected`, `registered`, `searching`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The network operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// The access technology (`lte`, `5gnr`, `umts`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tech: Option<String>,
    /// Signal quality in percent, as ModemManager rates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<u8>,
    /// Received signal strength, dBm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rssi: Option<f32>,
    /// Reference signal received power (LTE, 5G), dBm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsrp: Option<f32>,
    /// Reference signal received quality (LTE, 5G), dB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsrq: Option<f32>,
    /// Signal to noise ratio, dB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snr: Option<f32>,
    /// Bytes received on the data bearer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx: Option<u64>,
    /// Bytes sent on the data bearer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx: Option<u64>,
}

/// Names of the set bits of a Raspberry Pi's `get_throttled` value: bits 0-3 hold now, bits
/// 16-19 have held since boot.
pub fn throttled_flags(flags: u32) -> Vec<&'static str> {
    const BITS: [(u32, &str); 8] = [
        (0, "under-voltage"),
        (1, "arm frequency capped"),
        (2, "throttled"),
        (3, "soft temperature limit"),
        (16, "under-voltage has occurred"),
        (17, "arm frequency capping has occurred"),
        (18, "throttling has occurred"),
        (19, "soft temperature limit has occurred"),
    ];
    BITS.iter()
        .filter(|(bit, _)| flags & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// Reads `get_throttled` as the firmware prints it: `throttled=0x50005` (vcgencmd) or a bare
/// hexadecimal number (sysfs).
pub fn parse_throttled(text: &str) -> Option<u32> {
    let t = text.trim();
    let t = t.strip_prefix("throttled=").unwrap_or(t);
    let t = t.strip_prefix("0x").unwrap_or(t);
    u32::from_str_radix(t, 16).ok()
}

/// A step in signal strength worth a report of its own, in dB.
const SIGNAL_STEP_DB: f32 = 10.0;
/// A step in signal quality worth a report of its own, in percent points.
const QUALITY_STEP: u8 = 20;
/// A step in temperature worth a report of its own, in °C.
const TEMP_STEP_C: f32 = 10.0;

impl Report {
    /// What changed since `sent` that is worth sending a report for, if anything: a new
    /// carrier, technology or modem state, the signal moving by a clear step, the Pi's power
    /// or heat flags, a large change of temperature, or the disk filling up. Small wobbles
    /// wait for the periodic report.
    pub fn notable_change(&self, sent: &Report) -> Option<&'static str> {
        let (m, s) = (&self.modem, &sent.modem);
        if m.mm != s.mm {
            return Some("ModemManager's answer");
        }
        if m.operator != s.operator {
            return Some("operator");
        }
        if m.tech != s.tech {
            return Some("access technology");
        }
        if m.state != s.state {
            return Some("modem state");
        }
        let moved = |a: Option<f32>, b: Option<f32>, step: f32| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() >= step,
            (a, b) => a.is_some() != b.is_some(),
        };
        let strength = |m: &Modem| m.rsrp.or(m.rssi);
        if moved(strength(m), strength(s), SIGNAL_STEP_DB) {
            return Some("signal strength");
        }
        if m.rsrp.or(m.rssi).is_none() {
            let q = |m: &Modem| m.quality.map(f32::from);
            if moved(q(m), q(s), f32::from(QUALITY_STEP)) {
                return Some("signal quality");
            }
        }
        if self.throttled != sent.throttled {
            return Some("power and throttling flags");
        }
        if moved(self.temp_c, sent.temp_c, TEMP_STEP_C) {
            return Some("temperature");
        }
        if disk_band(self) != disk_band(sent) {
            return Some("free disk");
        }
        None
    }

    /// The report with every string escaped and bounded, and every number rounded: what the
    /// relay stores of a report from an untrusted peer.
    pub fn cleaned(mut self) -> Report {
        let clean = |s: &mut Option<String>| {
            if let Some(v) = s.take() {
                *s = Some(crate::text::clean(&v, MAX_FIELD_CHARS));
            }
        };
        let m = &mut self.modem;
        clean(&mut m.why);
        clean(&mut m.state);
        clean(&mut m.operator);
        clean(&mut m.tech);
        for v in [&mut m.rssi, &mut m.rsrp, &mut m.rsrq, &mut m.snr] {
            *v = v.filter(|x| x.is_finite()).map(round1);
        }
        m.quality = m.quality.map(|q| q.min(100));
        self.temp_c = self.temp_c.filter(|x| x.is_finite()).map(round1);
        self
    }

    /// One short line for listings: the link (`lte -97 dBm`, `no ModemManager`, `no modem`)
    /// followed by what is wrong with the board now (`under-voltage`, `throttled`).
    pub fn summary(&self) -> String {
        let m = &self.modem;
        let mut out = match m.mm {
            ModemManager::Unknown => "-".to_string(),
            ModemManager::Absent => "no ModemManager".to_string(),
            ModemManager::None => "no modem".to_string(),
            ModemManager::Error => "modem error".to_string(),
            ModemManager::Present => {
                let mut parts = Vec::new();
                match (&m.tech, &m.state) {
                    (Some(t), _) => parts.push(t.clone()),
                    (None, Some(s)) => parts.push(s.clone()),
                    (None, None) => parts.push("modem".to_string()),
                }
                match (m.rsrp.or(m.rssi), m.quality) {
                    (Some(dbm), _) => parts.push(format!("{dbm:.0} dBm")),
                    (None, Some(q)) => parts.push(format!("{q}%")),
                    (None, None) => {}
                }
                parts.join(" ")
            }
        };
        let now = self.throttled.unwrap_or(0) & 0xf;
        for flag in throttled_flags(now) {
            out.push_str(", ");
            out.push_str(flag);
        }
        out
    }
}

/// How often reports go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// An unchanged report is sent again after this long.
    pub refresh: Duration,
    /// A notable change is sent at most this often (the worst a wobbling signal can cost).
    pub change_gap: Duration,
}

impl Cadence {
    /// The cadence for reading every `interval` and refreshing every `refresh`: a change goes
    /// out at most every six readings (30 minutes with the default five).
    pub fn new(interval: Duration, refresh: Duration) -> Cadence {
        Cadence {
            refresh,
            change_gap: interval.saturating_mul(6).min(refresh),
        }
    }

    /// Why `latest` should be sent now, given what this session sent last (and when), if it
    /// should: the session's first report, a notable change past the gap, or the refresh.
    pub fn due(
        &self,
        latest: &Report,
        sent: Option<(&Report, Instant)>,
        now: Instant,
    ) -> Option<&'static str> {
        let Some((last, at)) = sent else {
            return Some("the session's first report");
        };
        let since = now.saturating_duration_since(at);
        if since >= self.refresh {
            return Some("periodic report");
        }
        if since >= self.change_gap {
            return latest.notable_change(last);
        }
        None
    }
}

/// Free disk as a band: below 5 %, below 10 %, or fine.
fn disk_band(r: &Report) -> u8 {
    match (r.disk_free, r.disk_total) {
        (Some(free), Some(total)) if total > 0 => {
            let percent = free.saturating_mul(100) / total;
            match percent {
                0..5 => 0,
                5..10 => 1,
                _ => 2,
            }
        }
        _ => 3,
    }
}

fn round1(x: f32) -> f32 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lte(rsrp: f32) -> Report {
        Report {
            modem: Modem {
                mm: ModemManager::Present,
                state: Some("connected".into()),
                operator: Some("NTT DOCOMO".into()),
                tech: Some("lte".into()),
                quality: Some(60),
                rsrp: Some(rsrp),
                ..Modem::default()
            },
            ..Report::default()
        }
    }

    #[test]
    fn small_wobbles_are_not_news_and_clear_steps_are() {
        let sent = lte(-95.0);
        assert_eq!(lte(-99.0).notable_change(&sent), None);
        assert_eq!(lte(-86.0).notable_change(&sent), None);
        assert_eq!(lte(-105.0).notable_change(&sent), Some("signal strength"));
        let mut roaming = lte(-95.0);
        roaming.modem.operator = Some("KDDI".into());
        assert_eq!(roaming.notable_change(&sent), Some("operator"));
        let mut fallback = lte(-95.0);
        fallback.modem.tech = Some("umts".into());
        assert_eq!(fallback.notable_change(&sent), Some("access technology"));
        let mut sagging = lte(-95.0);
        sagging.throttled = Some(0x50005);
        assert_eq!(
            sagging.notable_change(&sent),
            Some("power and throttling flags")
        );
        let mut hot = lte(-95.0);
        hot.temp_c = Some(71.0);
        let mut warm = lte(-95.0);
        warm.temp_c = Some(65.0);
        assert_eq!(hot.notable_change(&warm), None);
        assert_eq!(hot.notable_change(&sent), Some("temperature"));
    }

    #[test]
    fn reports_go_on_the_first_chance_on_change_past_the_gap_and_on_refresh() {
        let c = Cadence::new(Duration::from_secs(300), Duration::from_secs(6 * 3600));
        assert_eq!(c.change_gap, Duration::from_secs(1800));
        let t0 = Instant::now();
        let min = |m: u64| t0 + Duration::from_secs(m * 60);
        let sent = lte(-95.0);
        assert_eq!(c.due(&sent, None, t0), Some("the session's first report"));
        // A change within the gap waits; past it, it goes.
        let moved = lte(-110.0);
        assert_eq!(c.due(&moved, Some((&sent, t0)), min(10)), None);
        assert_eq!(
            c.due(&moved, Some((&sent, t0)), min(30)),
            Some("signal strength")
        );
        // Nothing notable: only the refresh.
        assert_eq!(c.due(&lte(-97.0), Some((&sent, t0)), min(359)), None);
        assert_eq!(
            c.due(&lte(-97.0), Some((&sent, t0)), min(360)),
            Some("periodic report")
        );
    }

    #[test]
    fn a_filling_disk_is_news_once_per_band() {
        let with = |free: u64| Report {
            disk_free: Some(free),
            disk_total: Some(1000),
            ..Report::default()
        };
        assert_eq!(with(500).notable_change(&with(900)), None);
        assert_eq!(with(80).notable_change(&with(500)), Some("free disk"));
        assert_eq!(with(70).notable_change(&with(80)), None);
        assert_eq!(with(10).notable_change(&with(70)), Some("free disk"));
    }

    #[test]
    fn the_summary_names_the_link_and_what_is_wrong_now() {
        assert_eq!(lte(-97.4).summary(), "lte -97 dBm");
        let mut quality_only = lte(-90.0);
        quality_only.modem.rsrp = None;
        assert_eq!(quality_only.summary(), "lte 60%");
        let absent = Report {
            modem: Modem {
                mm: ModemManager::Absent,
                why: Some("mmcli is not installed".into()),
                ..Modem::default()
            },
            throttled: Some(0x50005),
            ..Report::default()
        };
        assert_eq!(
            absent.summary(),
            "no ModemManager, under-voltage, throttled"
        );
        // Flags that only occurred since boot are in the report, not in the summary.
        let mut past = lte(-80.0);
        past.throttled = Some(0x50000);
        assert_eq!(past.summary(), "lte -80 dBm");
        assert_eq!(
            throttled_flags(0x50000),
            vec!["under-voltage has occurred", "throttling has occurred"]
        );
    }

    #[test]
    fn throttled_reads_both_firmware_forms() {
        assert_eq!(parse_throttled("throttled=0x50005\n"), Some(0x50005));
        assert_eq!(parse_throttled("50005"), Some(0x50005));
        assert_eq!(parse_throttled("0"), Some(0));
        assert_eq!(parse_throttled("throttled=oops"), None);
    }

    #[test]
    fn a_hostile_report_is_bounded_and_rounded() {
        let mut r = lte(-95.123);
        r.modem.operator = Some("x\n".repeat(500));
        r.modem.snr = Some(f32::NAN);
        r.modem.quality = Some(250);
        let c = r.cleaned();
        assert!(c.modem.operator.unwrap().len() < 200);
        assert_eq!(c.modem.rsrp, Some(-95.1));
        assert_eq!(c.modem.snr, None);
        assert_eq!(c.modem.quality, Some(100));
        // Unknown fields from a newer agent are ignored, missing ones default.
        let newer: Report =
            serde_json::from_str(r#"{"modem":{"mm":"present","band":3},"fan_rpm":1200}"#).unwrap();
        assert_eq!(newer.modem.mm, ModemManager::Present);
    }
}
