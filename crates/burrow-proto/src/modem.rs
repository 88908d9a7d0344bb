//! ModemManager's `mmcli --output-keyvalue` answers read into a [`Modem`]: the modem list, the
//! modem itself, its extended signal, and its data bearer.
//!
//! The key-value form prints one `key : value` per line, `--` for a value it does not know, and
//! lists as `key.length : N` followed by `key.value[1] : ...`. Whatever else a line holds is
//! ignored: a newer ModemManager adds keys, an older one lacks some.

use std::collections::HashMap;

use crate::health::{Modem, ModemManager};

/// `mmcli -K` output as a map of its keys (values `--` left out).
pub fn parse_keyvalue(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(" : ")?;
            let (key, value) = (key.trim(), value.trim());
            (!key.is_empty() && value != "--" && !value.is_empty())
                .then(|| (key.to_string(), unescape(value)))
        })
        .collect()
}

/// Undoes the C-style escaping mmcli applies to values (`\"`, `\\`, `\t`, `\n`).
fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// The values of list `key` (`key.value[1]`, `key.value[2]`, ...), in order.
fn list(kv: &HashMap<String, String>, key: &str) -> Vec<String> {
    (1..=64)
        .map_while(|i| kv.get(&format!("{key}.value[{i}]")).cloned())
        .collect()
}

/// The D-Bus paths of the modems in `mmcli -L -K` output.
pub fn modem_paths(list_output: &HashMap<String, String>) -> Vec<String> {
    list(list_output, "modem-list")
}

/// What `mmcli -m MODEM -K` says: state, technology, quality, operator; returns the first
/// data bearer's path, to read its byte counts.
pub fn read_modem(modem: &mut Modem, kv: &HashMap<String, String>) -> Option<String> {
    modem.mm = ModemManager::Present;
    modem.state = kv.get("modem.generic.state").cloned();
    modem.tech = list(kv, "modem.generic.access-technologies")
        .into_iter()
        .next()
        .or_else(|| kv.get("modem.generic.access-technologies").cloned());
    modem.quality = kv
        .get("modem.generic.signal-quality.value")
        .and_then(|q| q.trim_end_matches('%').parse::<u8>().ok());
    modem.operator = kv
        .get("modem.3gpp.operator-name")
        .or_else(|| kv.get("modem.3gpp.operator-code"))
        .cloned();
    list(kv, "modem.generic.bearers").into_iter().next()
}

/// What `mmcli -m MODEM --signal-get -K` says: RSSI, RSRP, RSRQ and SNR of the technology
/// in use (5G, then LTE, then UMTS, then GSM). Returns the polling rate ModemManager uses (0
/// when extended signal reading is not set up, and nothing is measured).
pub fn read_signal(modem: &mut Modem, kv: &HashMap<String, String>) -> u32 {
    let number = |key: String| kv.get(&key).and_then(|v| v.parse::<f32>().ok());
    for family in ["5g", "lte", "umts", "gsm"] {
        let rssi = number(format!("modem.signal.{family}.rssi"));
        let rsrp = number(format!("modem.signal.{family}.rsrp"));
        if rssi.is_none() && rsrp.is_none() {
            continue;
        }
        modem.rssi = rssi;
        modem.rsrp = rsrp;
        modem.rsrq = number(format!("modem.signal.{family}.rsrq"));
        modem.snr = number(format!("modem.signal.{family}.snr"));
        break;
    }
    kv.get("modem.signal.refresh.rate")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// What `mmcli -b BEARER -K` says about bytes used: the totals across the bearer's
/// connections where ModemManager keeps them, else those of its current connection.
pub fn read_bearer(modem: &mut Modem, kv: &HashMap<String, String>) {
    let bytes = |total: &str, current: &str| {
        kv.get(total)
            .or_else(|| kv.get(current))
            .and_then(|v| v.parse::<u64>().ok())
    };
    modem.rx = bytes("bearer.stats.total-bytes-rx", "bearer.stats.bytes-rx");
    modem.tx = bytes("bearer.stats.total-bytes-tx", "bearer.stats.bytes-tx");
}

/// Reads a failure of `mmcli`: ModemManager absent (not installed, not running) or another
/// error, with its reason.
pub fn read_failure(modem: &mut Modem, stderr: &str) {
    let why = crate::text::clean(stderr.trim(), 200);
    let absent = stderr.contains("couldn't find the ModemManager process")
        || stderr.contains("ServiceUnknown")
        || stderr.contains("was not provided by any .service");
    modem.mm = if absent {
        ModemManager::Absent
    } else {
        ModemManager::Error
    };
    modem.why = Some(if absent {
        "ModemManager is not running".into()
    } else {
        why
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str =
        "modem-list.length   : 1\nmodem-list.value[1] : /org/freedesktop/ModemManager1/Modem/0\n";

    const MODEM: &str = r#"modem.dbus-path                                 : /org/freedesktop/ModemManager1/Modem/0
modem.generic.state                             : connected
modem.generic.access-technologies.length        : 1
modem.generic.access-technologies.value[1]      : lte
modem.generic.signal-quality.value              : 67
modem.generic.signal-quality.recent             : yes
modem.generic.bearers.length                    : 1
modem.generic.bearers.value[1]                  : /org/freedesktop/ModemManager1/Bearer/3
modem.3gpp.operator-code                        : 44010
modem.3gpp.operator-name                        : NTT DOCOMO
modem.3gpp.registration-state                   : home
modem.3gpp.pco                                  : --
"#;

    const SIGNAL: &str = "modem.signal.refresh.rate : 300\nmodem.signal.lte.rssi : -65.00\nmodem.signal.lte.rsrq : -10.00\nmodem.signal.lte.rsrp : -97.00\nmodem.signal.lte.snr : 12.20\nmodem.signal.umts.rssi : --\n";

    const BEARER: &str = "bearer.stats.duration : 5000\nbearer.stats.bytes-rx : 1024\nbearer.stats.bytes-tx : 512\nbearer.stats.total-bytes-rx : 123456789\nbearer.stats.total-bytes-tx : 2345678\n";

    #[test]
    fn a_connected_lte_modem_is_read_whole() {
        let list = parse_keyvalue(LIST);
        assert_eq!(
            modem_paths(&list),
            vec!["/org/freedesktop/ModemManager1/Modem/0"]
        );
        let mut m = Modem::default();
        let bearer = read_modem(&mut m, &parse_keyvalue(MODEM));
        assert_eq!(
            bearer.as_deref(),
            Some("/org/freedesktop/ModemManager1/Bearer/3")
        );
        assert_eq!(read_signal(&mut m, &parse_keyvalue(SIGNAL)), 300);
        read_bearer(&mut m, &parse_keyvalue(BEARER));
        assert_eq!(m.mm, ModemManager::Present);
        assert_eq!(m.state.as_deref(), Some("connected"));
        assert_eq!(m.tech.as_deref(), Some("lte"));
        assert_eq!(m.operator.as_deref(), Some("NTT DOCOMO"));
        assert_eq!(m.quality, Some(67));
        assert_eq!(
            (m.rssi, m.rsrp, m.rsrq, m.snr),
            (Some(-65.0), Some(-97.0), Some(-10.0), Some(12.2))
        );
        assert_eq!((m.rx, m.tx), (Some(123_456_789), Some(2_345_678)));
    }

    #[test]
    fn unknown_values_and_odd_lines_are_left_out() {
        let kv = parse_keyvalue("a : --\nno separator\n : x\nb : \"quoted\\\" value\"\n");
        assert_eq!(kv.len(), 1);
        assert_eq!(kv["b"], "\"quoted\" value\"");
        let mut m = Modem::default();
        assert_eq!(
            read_signal(&mut m, &parse_keyvalue("modem.signal.refresh.rate : 0\n")),
            0
        );
        assert_eq!(m.rsrp, None);
        assert_eq!(
            modem_paths(&parse_keyvalue("modem-list.length : 0\n")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn modem_manager_not_running_is_absent_and_other_failures_say_why() {
        let mut m = Modem::default();
        read_failure(
            &mut m,
            "error: couldn't find the ModemManager process in the bus\n",
        );
        assert_eq!(m.mm, ModemManager::Absent);
        let mut m = Modem::default();
        read_failure(&mut m, "error: modem is locked\n");
        assert_eq!(m.mm, ModemManager::Error);
        assert_eq!(m.why.as_deref(), Some("error: modem is locked"));
    }

    #[test]
    fn hostile_output_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let len = (crate::xorshift(&mut seed) % 200) as usize;
            const ALPHABET: &[u8] = b" :.\\\n-ab[]1";
            let bytes: Vec<u8> = (0..len)
                .map(|_| ALPHABET[(crate::xorshift(&mut seed) % ALPHABET.len() as u64) as usize])
                .collect();
            let kv = parse_keyvalue(&String::from_utf8_lossy(&bytes));
            let mut m = Modem::default();
            let _ = read_modem(&mut m, &kv);
            let _ = read_signal(&mut m, &kv);
            read_bearer(&mut m, &kv);
        }
    }
}
