//! UTC timestamps formatted for people (`2026-11-23 12:03 UTC`), without a calendar dependency.

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

fn split(unix_seconds: i64) -> (String, i64) {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (format!("{y:04}-{m:02}-{d:02}"), secs)
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
}
