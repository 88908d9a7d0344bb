//! UTC timestamps formatted for people (`2026-11-23 12:03 UTC`) and read back from them (RFC 3339,
//! or `2h` for two hours ago), without a calendar dependency.

/// Formats seconds since the Unix epoch as `YYYY-MM-DD HH:MM UTC`.
pub fn format_utc_minutes(unix_seconds: i64) -> String {
    let (date, secs) = split(unix_seconds);
    format!("{date} {:02}:{:02} UTC", secs / 3600, secs / 60 % 60)
}

/// Formats seconds since the Unix epoch as RFC 3339 (`YYYY-MM-DDTHH:MM:SSZ`).
pub fn format_rfc3339(unix_seconds: i64) -> String {
    let (date, secs) = split(unix_seconds);
    format!(
        "{date}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Formats seconds since the Unix epoch as a file-name-safe stamp (`20261123T120300Z`).
pub fn format_compact(unix_seconds: i64) -> String {
    format_rfc3339(unix_seconds).replace(['-', ':'], "")
}

/// A duration as people read it: `45 s`, `12 min`, `3 h 05 min`, `2 d 4 h`.
pub fn format_duration(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h {:02} min", secs / 3600, secs / 60 % 60),
        _ => format!("{} d {} h", secs / 86_400, secs / 3600 % 24),
    }
}

/// Parses `20261123T120300Z` (as [`format_compact`] writes it).
pub fn parse_compact(stamp: &str) -> Option<i64> {
    let b = stamp.as_bytes();
    if b.len() != 16 || b.get(8) != Some(&b'T') || b.get(15) != Some(&b'Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| stamp.get(r)?.parse::<i64>().ok();
    from_parts(
        num(0..4)?,
        num(4..6)?,
        num(6..8)?,
        num(9..11)?,
        num(11..13)?,
        num(13..15)?,
    )
}

/// Parses RFC 3339 in UTC (`2026-11-23T12:03:00Z`, fractions allowed); returns unix
/// milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let t = text
        .trim()
        .strip_suffix('Z')
        .or_else(|| text.trim().strip_suffix("+00:00"))?;
    let (date, time) = t.split_once(['T', ' '])?;
    let mut d = date.split('-');
    let (y, m, day) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut h = hms.split(':');
    let (hh, mm, ss) = (
        h.next()?.parse().ok()?,
        h.next()?.parse().ok()?,
        h.next().map_or(Some(0), |s| s.parse().ok())?,
    );
    let ms = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        digits.parse::<i64>().ok()?
    };
    Some(from_parts(y, m, day, hh, mm, ss)? * 1000 + ms)
}

/// `since` as people write it: RFC 3339 (`2026-11-23T12:03:00Z`), or a time ago (`90s`, `10m`,
/// `2h`, `3d`); returns unix milliseconds.
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    if let Some(ms) = parse_rfc3339_ms(t) {
        return Ok(ms);
    }
    let unit = t.chars().last().unwrap_or(' ');
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => 0,
    };
    if scale > 0
        && let Some(n) = t.get(..t.len() - 1).and_then(|n| n.parse::<i64>().ok())
        && n >= 0
    {
        return Ok(now_ms - n * scale * 1000);
    }
    Err(format!(
        "--since {text:?}: give a time as 2026-11-23T12:03:00Z or an age as 90s, 10m, 2h or 3d"
    ))
}

fn from_parts(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> Option<i64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

fn split(unix_seconds: i64) -> (String, i64) {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (format!("{y:04}-{m:02}-{d:02}"), secs)
}

/// A point in time as a person gives it on a command line: RFC 3339 (`2026-11-23T12:03:00Z`,
/// an offset such as `+09:00`, fractions of a second ignored), a date alone (`2026-11-23`,
/// midnight UTC), or a time that long before `now`: a number and `s`, `m`, `h`, `d` or `w`
/// (`90s`, `15m`, `1h`, `2d`). Returns seconds since the epoch; the error says what is accepted.
pub fn parse_time(text: &str, now: i64) -> Result<i64, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "{text:?} is not a time: give RFC 3339 (2026-11-23T12:03:00Z or with an offset like +09:00), a date (2026-11-23), or how long ago (90s, 15m, 1h, 2d, 1w)"
        )
    };
    if let Some(ago) = parse_ago(t) {
        return ago.map(|secs| now.saturating_sub(secs)).ok_or_else(bad);
    }
    parse_rfc3339(t).ok_or_else(bad)
}

/// `N` + unit, as seconds; `None` if `t` does not have that shape, `Some(None)` if it does
/// but overflows.
fn parse_ago(t: &str) -> Option<Option<i64>> {
    let unit = t.chars().last()?;
    let per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return None,
    };
    let digits = t.get(..t.len() - 1)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse::<i64>().ok().and_then(|n| n.checked_mul(per)))
}

/// RFC 3339 (`T` or a space between date and time, `Z` or `±HH:MM`), or a date alone.
fn parse_rfc3339(t: &str) -> Option<i64> {
    let num = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let date = t.get(..10)?;
    let rest = t.get(10..)?;
    let mut parts = date.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 || parts.next().is_some() {
        return None;
    }
    let (y, m, d) = (num(y)?, num(m)?, num(d)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let max_day = *month_days.get(usize::try_from(m).ok()?.checked_sub(1)?)?;
    if !(1..=max_day).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m, d);
    if rest.is_empty() {
        return Some(days * 86_400);
    }
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let clock = rest.get(..8)?;
    let mut zone = rest.get(8..)?;
    let mut hms = clock.split(':');
    let (h, mi, s) = (num(hms.next()?)?, num(hms.next()?)?, num(hms.next()?)?);
    if hms.next().is_some() || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    if let Some(frac) = zone.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        zone = frac.get(digits..)?;
    }
    let offset = match zone {
        "Z" | "z" => 0,
        _ => {
            let sign = match zone.get(..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let (oh, om) = zone.get(1..)?.split_once(':')?;
            if oh.len() != 2 || om.len() != 2 {
                return None;
            }
            let (oh, om) = (num(oh)?, num(om)?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3_600 + om * 60)
        }
    };
    Some(days * 86_400 + h * 3_600 + mi * 60 + s.min(59) - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of `civil_from_days`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(format_utc_minutes(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc_minutes(1_795_435_380), "2026-11-23 12:03 UTC");
        assert_eq!(format_compact(1_795_435_380), "20261123T120300Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn times_read_back() {
        let now = 1_795_435_380;
        for (text, want) in [
            ("2026-11-23T12:03:00Z", Some(now)),
            ("2026-11-23 12:03:00Z", Some(now)),
            ("2026-11-23T21:03:00+09:00", Some(now)),
            ("2026-11-23T07:03:00.250-05:00", Some(now)),
            ("2000-02-29", Some(951_782_400)),
            ("1969-12-31T23:59:59Z", Some(-1)),
            ("90s", Some(now - 90)),
            ("15m", Some(now - 900)),
            ("1h", Some(now - 3_600)),
            ("2d", Some(now - 172_800)),
            ("1w", Some(now - 604_800)),
            (" 0s ", Some(now)),
            ("2001-02-29", None),
            ("2026-13-01", None),
            ("2026-11-23T24:00:00Z", None),
            ("2026-11-23T12:03:00", None),
            ("2026-11-23T12:03:00+0900", None),
            ("2026-11-23T12:03:00.Z", None),
            ("h", None),
            ("-1h", None),
            ("1.5h", None),
            ("1y", None),
            ("99999999999999999999d", None),
            ("yesterday", None),
            ("", None),
            ("２026-11-23", None),
        ] {
            assert_eq!(parse_time(text, now).ok(), want, "{text:?}");
        }
        for t in [0, 1, 951_782_400, 1_795_435_380, -86_401] {
            assert_eq!(parse_time(&format_rfc3339(t), 0), Ok(t));
        }
        let err = parse_time("yesterday", now).unwrap_err();
        assert!(err.contains("RFC 3339") && err.contains("2d"), "{err}");
    }

    #[test]
    fn parsed_back() {
        for t in [0, 951_782_400, 1_795_435_380, -1] {
            assert_eq!(parse_compact(&format_compact(t)), Some(t));
            assert_eq!(parse_rfc3339_ms(&format_rfc3339(t)), Some(t * 1000));
        }
        assert_eq!(
            parse_rfc3339_ms("2026-11-23T12:03:00.25Z"),
            Some(1_795_435_380_250)
        );
        assert_eq!(parse_since("10m", 1_000_000), Ok(400_000));
        assert_eq!(
            parse_since("2026-11-23T12:03:00Z", 0),
            Ok(1_795_435_380_000)
        );
        assert!(parse_since("yesterday", 0).unwrap_err().contains("10m"));
        assert_eq!(parse_compact("20261323T120300Z"), None);
    }
}
