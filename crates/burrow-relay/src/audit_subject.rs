//! Which device and which operator an audit entry concerns: stored beside the entry, so that
//! `relay audit --device NAME` and `--operator NAME` are one indexed lookup each, and the same
//! for the web console's audit search.
//!
//! The entry's `who` and `target` are free text (a login `alice:garage-pi/console0`, a peer
//! address, `garage-pi:22`), so the subjects are decided where the entry is made: from the
//! event's kind, or said outright by the code that knows (a login, a revocation).

/// Whose deed an entry records, when its event alone does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum About<'a> {
    /// `who` is a device.
    Device,
    /// `who` is an operator's login (`alice`, or `alice:garage-pi/console0` naming a device).
    Operator,
    /// `who` is an operator, and the entry is about this device.
    OperatorOn(&'a str),
}

/// Events a device does: `who` is the device.
const DEVICE_EVENTS: [&str; 9] = [
    "takeover",
    "offline",
    "online",
    "endpoint-add",
    "endpoint-remove",
    "device-connect",
    "console-recording",
    "quarantine",
    "replace",
];

/// Events an operator (or a listener's client) does to a device: the device is named by the
/// target (`garage-pi:22`, `garage-pi/console0`).
const ON_DEVICE_EVENTS: [&str; 5] = [
    "stream",
    "console-attach",
    "console-detach",
    "console-break",
    "console-baud",
];

/// Events an operator does with no device in them.
const OPERATOR_EVENTS: [&str; 2] = ["session", "lock"];

/// The device and the operator an entry concerns, `(device, operator)`; `about` says whose
/// deed it is when the event does not (logins and revocations).
pub fn subjects(
    event: &str,
    who: &str,
    target: &str,
    about: Option<About<'_>>,
) -> (Option<String>, Option<String>) {
    let owned = |s: &str| (!s.is_empty()).then(|| s.to_string());
    if DEVICE_EVENTS.contains(&event) || about == Some(About::Device) {
        return (owned(who), None);
    }
    let operator = operator_of(who).and_then(owned);
    match about {
        Some(About::OperatorOn(device)) => return (owned(device), operator),
        Some(About::Operator) => {
            // A login names the device it is for (`alice:garage-pi/console0`).
            let device = who.split_once(':').map(|(_, t)| name_part(t));
            return (device.and_then(owned), operator);
        }
        Some(About::Device) | None => {}
    }
    if ON_DEVICE_EVENTS.contains(&event) {
        return (owned(name_part(target)), operator);
    }
    if OPERATOR_EVENTS.contains(&event) {
        return (None, operator);
    }
    (None, None)
}

/// The operator in `who`: a login's principal, not a listener's client (`listener ADDR`).
fn operator_of(who: &str) -> Option<&str> {
    if who.starts_with("listener ") {
        return None;
    }
    Some(who.split_once(':').map_or(who, |(op, _)| op))
}

/// `garage-pi` of `garage-pi:22` or `garage-pi/console0`.
fn name_part(target: &str) -> &str {
    let end = target.find(['/', ':']).unwrap_or(target.len());
    target.get(..end).unwrap_or(target)
}

/// The same decision in SQL, for entries written before the subjects were stored (schema
/// migration): `instr` is the dialect's `instr(haystack, needle)` (`strpos` on PostgreSQL).
/// Logins and revocations of those entries are told apart by the detail their code wrote.
pub(crate) fn backfill_sql(instr: &str) -> String {
    let list = |events: &[&str]| {
        events
            .iter()
            .map(|e| format!("'{e}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let before = |col: &str, sep: &str| format!("substr({col}, 1, {instr}({col}, '{sep}') - 1)");
    let name_part = format!(
        "CASE WHEN {instr}(target, '/') > 0 THEN {} WHEN {instr}(target, ':') > 0 THEN {} ELSE target END",
        before("target", "/"),
        before("target", ":"),
    );
    let principal = format!(
        "CASE WHEN {instr}(who, ':') > 0 THEN {} ELSE who END",
        before("who", ":")
    );
    // The device of a login `op:device[/console]`.
    let login_device = format!(
        "CASE WHEN {instr}(who, '/') > 0 THEN substr(who, {instr}(who, ':') + 1, {instr}(who, '/') - {instr}(who, ':') - 1) \
         ELSE substr(who, {instr}(who, ':') + 1) END"
    );
    // Entries whose device is `who` by what their code wrote: logins and revocations of a
    // device, the relay's enrollments (not `device import`, made by whoever ran it), tokens
    // used by a device or refused to a name (not those refused to a peer address).
    let device_actor = format!(
        "((event IN ('auth', 'revoke') AND detail LIKE 'device %') \
         OR (event = 'enroll' AND detail NOT LIKE 'device import%') \
         OR (event = 'token' AND {instr}(who, ':') = 0))"
    );
    let operator_actor = "(event IN ('auth', 'revoke') AND detail LIKE 'operator %')";
    format!(
        "UPDATE audit SET
           device = NULLIF(CASE
             WHEN event IN ({devices}) OR {device_actor} THEN who
             WHEN event IN ({on_device}) THEN {name_part}
             WHEN event = 'revoke' AND detail LIKE 'operator policy no longer allows%' THEN target
             WHEN {operator_actor} AND {instr}(who, ':') > 0 THEN {login_device}
           END, ''),
           operator = NULLIF(CASE
             WHEN event IN ({on_device}, {operators}) AND who NOT LIKE 'listener %' THEN {principal}
             WHEN {operator_actor} THEN {principal}
           END, '')",
        devices = list(&DEVICE_EVENTS),
        on_device = list(&ON_DEVICE_EVENTS),
        operators = list(&OPERATOR_EVENTS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries as the relay's code writes them, with the detail it writes (the backfill reads
    /// it), and the subjects expected.
    /// event, who, target, detail, about, device, operator.
    type Row = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        Option<About<'static>>,
        Option<&'static str>,
        Option<&'static str>,
    );

    #[rustfmt::skip]
    const ROWS: &[Row] = &[
        ("auth", "garage-pi", "10.0.0.5:40000", "device authenticated with key SHA256:x", Some(About::Device), Some("garage-pi"), None),
        ("auth", "alice", "10.0.0.6:40000", "operator authenticated by public key", Some(About::Operator), None, Some("alice")),
        ("auth", "alice:garage-pi/console0", "10.0.0.6:40000", "operator authenticated by password", Some(About::Operator), Some("garage-pi"), Some("alice")),
        ("auth", "alice:garage-pi", "10.0.0.6:40000", "operator authenticated by password", Some(About::Operator), Some("garage-pi"), Some("alice")),
        ("auth", "mallory", "10.0.0.7:40000", "key SHA256:y is not registered for mallory", None, None, None),
        ("session", "alice", "shell", "", None, None, Some("alice")),
        ("lock", "alice", "10.0.0.6:40000", "locked after 5 wrong passwords", None, None, Some("alice")),
        ("stream", "alice", "garage-pi:22", "from 127.0.0.1 via this relay", None, Some("garage-pi"), Some("alice")),
        ("stream", "listener 127.0.0.1:5000", "garage-pi:80", "", None, Some("garage-pi"), None),
        ("console-attach", "alice", "garage-pi/console0", "read-write", None, Some("garage-pi"), Some("alice")),
        ("console-detach", "alice", "garage-pi/console0", "", None, Some("garage-pi"), Some("alice")),
        ("console-break", "bob", "garage-pi/console0", "", None, Some("garage-pi"), Some("bob")),
        ("console-baud", "bob", "garage-pi/console0", "", None, Some("garage-pi"), Some("bob")),
        ("console-recording", "garage-pi", "garage-pi/console0", "", None, Some("garage-pi"), None),
        ("takeover", "garage-pi", "10.0.0.5:40001", "", None, Some("garage-pi"), None),
        ("offline", "garage-pi", "10.0.0.5:40001", "", None, Some("garage-pi"), None),
        ("endpoint-add", "garage-pi", "garage-pi:22", "", None, Some("garage-pi"), None),
        ("endpoint-remove", "garage-pi", "garage-pi:22", "", None, Some("garage-pi"), None),
        ("device-connect", "garage-pi", "db.internal:5432", "", None, Some("garage-pi"), None),
        ("revoke", "garage-pi", "10.0.0.5:40001", "device or its key was removed; session closed", Some(About::Device), Some("garage-pi"), None),
        ("revoke", "alice", "alice:garage-pi", "operator was removed; connection closed", Some(About::Operator), None, Some("alice")),
        ("revoke", "alice", "garage-pi", "operator policy no longer allows device garage-pi; stream closed", Some(About::OperatorOn("garage-pi")), Some("garage-pi"), Some("alice")),
        ("revoke", "alice", "alice", "operator was removed; connection closed", Some(About::Operator), None, Some("alice")),
        ("quarantine", "garage-pi", "10.0.0.5:40001", "session refused: key SHA256:x is quarantined", None, Some("garage-pi"), None),
        ("replace", "garage-pi", "10.0.0.5:40001", "device re-bound to key SHA256:x through k7", None, Some("garage-pi"), None),
        ("enroll", "pi-042", "10.0.0.5:40001", "device enrolled with key SHA256:x through k7", Some(About::Device), Some("pi-042"), None),
        ("enroll", "pi-042", "10.0.0.5:40001", "already enrolled with key SHA256:x; answered again", Some(About::Device), Some("pi-042"), None),
        ("enroll", "root", "fleet.csv", "device import: 3 devices registered, 0 lines not imported", None, None, None),
        ("token", "pi-042", "token k7", "used to enroll device pi-042 from 10.0.0.5:40001", Some(About::Device), Some("pi-042"), None),
        ("token", "pi-043", "token k7", "the name pi-043 does not match", Some(About::Device), Some("pi-043"), None),
        ("token", "10.0.0.5:40001", "token k7", "no such token", None, None, None),
    ];

    #[test]
    fn each_event_names_its_device_and_operator() {
        for (event, who, target, _, about, device, operator) in ROWS {
            let got = subjects(event, who, target, *about);
            let want = (device.map(String::from), operator.map(String::from));
            assert_eq!(got, want, "{event} {who} {target}");
        }
        assert_eq!(subjects("something-new", "x", "y:1", None), (None, None));
    }

    /// Entries written before the subjects were stored get the same ones from the migration.
    #[test]
    fn the_backfill_agrees_with_the_relay() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE audit (id INTEGER PRIMARY KEY, event TEXT, who TEXT, target TEXT,
             detail TEXT, device TEXT, operator TEXT)",
        )
        .unwrap();
        for (event, who, target, detail, ..) in ROWS {
            c.execute(
                "INSERT INTO audit (event, who, target, detail) VALUES (?1, ?2, ?3, ?4)",
                [event, who, target, detail],
            )
            .unwrap();
        }
        c.execute_batch(&backfill_sql("instr")).unwrap();
        let mut stmt = c
            .prepare("SELECT device, operator FROM audit ORDER BY id")
            .unwrap();
        let got: Vec<(Option<String>, Option<String>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (row, got) in ROWS.iter().zip(got) {
            let (event, who, target, _, about, ..) = row;
            assert_eq!(got, subjects(event, who, target, *about), "{row:?}");
        }
    }
}
