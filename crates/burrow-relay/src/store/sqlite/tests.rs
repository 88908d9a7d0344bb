//! The SQLite registry against an in-memory database.

use super::*;
use burrow_io::keys::{fingerprint, generate_ed25519};

fn row(at: i64, outcome: &str) -> AuditRecord {
    AuditRecord {
        at,
        event: "stream".into(),
        who: "alice".into(),
        target: "pi:22".into(),
        outcome: outcome.into(),
        detail: String::new(),
        device: None,
        operator: None,
    }
}

#[test]
fn audit_retention_by_age_and_rows_keeps_open_streams() {
    let s = Store::open_in_memory().unwrap();
    s.audit(&row(10, "open")).unwrap();
    for at in 0..20 {
        s.audit(&row(at, "ok")).unwrap();
    }
    // Older than 5: 5 rows go (the open one stays).
    assert_eq!(s.prune_audit(5, 1000).unwrap(), 5);
    assert_eq!(s.audit_len().unwrap(), 16);
    // At most 10 rows: the oldest go, the open one stays whatever its age.
    s.prune_audit(0, 10).unwrap();
    let left = s.audit_tail(100).unwrap();
    assert!(left.iter().any(|r| r.outcome == "open"));
    assert!(left.len() <= 11, "{}", left.len());
    assert_eq!(left.last().unwrap().at, 19);
}

#[test]
fn devices_operators_and_policy() {
    let s = Store::open_in_memory().unwrap();
    let k1 = generate_ed25519().public_key().clone();
    let k2 = generate_ed25519().public_key().clone();
    s.add_device("pi", std::slice::from_ref(&k1)).unwrap();
    assert!(matches!(
        s.add_device("pi", &[]),
        Err(StoreError::Conflict(_))
    ));
    s.add_device_keys("pi", std::slice::from_ref(&k2)).unwrap();
    assert!(s.device_has_key("pi", &fingerprint(&k2)).unwrap());
    assert!(!s.device_has_key("other", &fingerprint(&k2)).unwrap());
    assert!(matches!(
        s.add_device_keys("nope", &[]),
        Err(StoreError::NoDevice(_))
    ));

    s.allow_connect("pi", "localhost", 1883).unwrap();
    assert!(s.may_connect("pi", "localhost", 1883).unwrap());
    assert!(!s.may_connect("pi", "localhost", 1884).unwrap());

    s.add_device("cam", &[]).unwrap();
    s.allow_listen("pi", "127.0.0.1", 8080).unwrap();
    assert!(matches!(
        s.allow_listen("cam", "0.0.0.0", 8080),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.listen_addr("pi", 8080).unwrap().as_deref(),
        Some("127.0.0.1")
    );

    assert!(matches!(
        s.add_operator("pi", &[], None, &[], false),
        Err(StoreError::Conflict(_))
    ));
    // A key belongs to one principal: pi's key is neither an operator's nor another device's.
    for refused in [
        s.add_operator("alice", std::slice::from_ref(&k1), None, &[], false),
        s.add_device("cam2", std::slice::from_ref(&k2)),
        s.add_device_keys("cam", std::slice::from_ref(&k1)),
    ] {
        match refused {
            Err(StoreError::Conflict(why)) => {
                assert!(why.contains("device \"pi\""), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(s.operator("alice").unwrap().is_none());
    assert!(!s.device_exists("cam2").unwrap());
    // Its own key again changes nothing.
    s.add_device_keys("pi", std::slice::from_ref(&k1)).unwrap();
    let k3 = generate_ed25519().public_key().clone();
    s.add_operator(
        "alice",
        std::slice::from_ref(&k3),
        Some("hash"),
        &["pi*".into()],
        true,
    )
    .unwrap();
    let alice = s.operator("alice").unwrap().unwrap();
    assert!(alice.has_password && alice.console_only);
    assert_eq!(alice.allow, ["pi*"]);
    assert!(s.operator_has_key("alice", &fingerprint(&k3)).unwrap());
    match s.add_device_keys("cam", std::slice::from_ref(&k3)) {
        Err(StoreError::Conflict(why)) => assert!(why.contains("operator \"alice\""), "{why}"),
        other => panic!("{other:?}"),
    }

    s.set_online("pi", "127.0.0.1:5555").unwrap();
    s.set_endpoint("pi", 22, true).unwrap();
    let pi = s
        .devices()
        .unwrap()
        .into_iter()
        .find(|d| d.name == "pi")
        .unwrap();
    assert!(pi.online);
    assert_eq!(pi.endpoints, [22]);
    assert_eq!(pi.fingerprints.len(), 2);
    assert_eq!(pi.allow_connect, ["localhost:1883"]);
    s.set_offline("pi").unwrap();
    assert!(s.last_seen("pi").unwrap().is_some());

    s.remove_device("pi").unwrap();
    assert!(!s.device_has_key("pi", &fingerprint(&k1)).unwrap());
    assert!(!s.may_connect("pi", "localhost", 1883).unwrap());
    assert!(matches!(
        s.remove_device("pi"),
        Err(StoreError::NoDevice(_))
    ));
}

#[test]
fn audit_tail_is_ordered() {
    let s = Store::open_in_memory().unwrap();
    for i in 0..5 {
        s.audit(&AuditRecord {
            at: i,
            event: "auth".into(),
            who: format!("d{i}"),
            target: String::new(),
            outcome: "ok".into(),
            detail: String::new(),
            device: None,
            operator: None,
        })
        .unwrap();
    }
    let tail = s.audit_tail(2).unwrap();
    assert_eq!(tail.iter().map(|r| r.at).collect::<Vec<_>>(), [3, 4]);
}

/// A trail of `n` entries over `n` seconds: 20 devices, 5 operators, 4 event kinds.
fn trail(s: &Store, n: i64) {
    let records: Vec<Write> = (0..n)
        .map(|i| {
            let (event, who, target) = match i % 4 {
                0 => (
                    "auth",
                    format!("dev-{}", i % 20),
                    "10.0.0.1:5000".to_string(),
                ),
                1 => (
                    "offline",
                    format!("dev-{}", i % 20),
                    "10.0.0.1:5000".to_string(),
                ),
                2 => (
                    "stream",
                    format!("op-{}", i % 5),
                    format!("dev-{}:22", i % 20),
                ),
                _ => (
                    "console-attach",
                    format!("op-{}", i % 5),
                    format!("dev-{}/tty", i % 20),
                ),
            };
            let about = (event == "auth").then_some(crate::audit_subject::About::Device);
            let (device, operator) = crate::audit_subject::subjects(event, &who, &target, about);
            Write::Audit(AuditRecord {
                at: 1_000_000 + i,
                event: event.into(),
                who,
                target,
                outcome: "ok".into(),
                detail: format!("row {i}"),
                device,
                operator,
            })
        })
        .collect();
    let refs: Vec<&Write> = records.iter().collect();
    s.apply_together(&refs).unwrap();
}

#[test]
fn each_audit_filter_walks_an_index() {
    use crate::store::AuditQuery;
    let s = Store::open_in_memory().unwrap();
    trail(&s, 20_000);
    s.with(|c| c.execute_batch("ANALYZE").map_err(sql("analyze")))
        .unwrap();
    let q = |f: &dyn Fn(&mut AuditQuery)| {
        let mut q = AuditQuery {
            limit: 50,
            ..AuditQuery::default()
        };
        f(&mut q);
        q
    };
    for (query, index) in [
        (q(&|q| q.device = Some("dev-3".into())), "audit_device"),
        (q(&|q| q.operator = Some("op-2".into())), "audit_operator"),
        (q(&|q| q.event = Some("offline".into())), "audit_event"),
        (q(&|q| q.since = Some(1_019_000)), "audit_at"),
        (q(&|q| q.until = Some(1_000_100)), "audit_at"),
        (q(&|_| {}), "audit_at"),
        (
            q(&|q| {
                q.device = Some("dev-3".into());
                q.since = Some(1_010_000);
                q.until = Some(1_012_000);
            }),
            "audit_device",
        ),
    ] {
        let plan = s.audit_plan(&query, false).unwrap();
        assert!(
            plan.contains(&format!("USING INDEX {index}")) && !plan.contains("TEMP B-TREE"),
            "{query:?}: {plan}"
        );
        let follow = s.audit_plan(&query, true).unwrap();
        assert!(
            follow.contains("USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
            "{query:?} while following: {follow}"
        );
    }
}

#[test]
fn audit_filters_find_what_a_scan_finds() {
    use crate::store::AuditQuery;
    let s = Store::open_in_memory().unwrap();
    trail(&s, 4_000);
    let all = s
        .audit_query(&AuditQuery {
            limit: 1_000_000,
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(all.len(), 4_000);
    for query in [
        AuditQuery {
            device: Some("dev-3".into()),
            limit: 30,
            ..AuditQuery::default()
        },
        AuditQuery {
            operator: Some("op-2".into()),
            since: Some(1_001_000),
            until: Some(1_002_000),
            limit: 1_000,
            ..AuditQuery::default()
        },
        AuditQuery {
            event: Some("console-attach".into()),
            device: Some("dev-7".into()),
            limit: 5,
            ..AuditQuery::default()
        },
        AuditQuery {
            until: Some(1_000_009),
            limit: 100,
            ..AuditQuery::default()
        },
        AuditQuery {
            device: Some("op-1".into()),
            limit: 100,
            ..AuditQuery::default()
        },
    ] {
        let got = s.audit_query(&query).unwrap();
        let matching: Vec<_> = all
            .iter()
            .filter(|e| {
                let r = &e.record;
                query
                    .device
                    .as_ref()
                    .is_none_or(|d| r.device.as_ref() == Some(d))
                    && query
                        .operator
                        .as_ref()
                        .is_none_or(|o| r.operator.as_ref() == Some(o))
                    && query.event.as_ref().is_none_or(|v| &r.event == v)
                    && query.since.is_none_or(|t| r.at >= t)
                    && query.until.is_none_or(|t| r.at <= t)
            })
            .cloned()
            .collect();
        let want = &matching[matching.len().saturating_sub(query.limit)..];
        assert_eq!(got, want, "{query:?}");
        assert!(
            query.device.as_deref() == Some("op-1") || !got.is_empty(),
            "{query:?}"
        );
    }
}

#[test]
fn a_device_coming_and_going_is_no_registry_change() {
    let s = Store::open_in_memory().unwrap();
    let k = generate_ed25519().public_key().clone();
    s.add_device("pi", std::slice::from_ref(&k)).unwrap();
    let before = s.registry_version().unwrap();
    s.set_online("pi", "127.0.0.1:40000").unwrap();
    s.set_offline("pi").unwrap();
    assert!(s.last_seen("pi").unwrap().is_some());
    assert_eq!(
        s.registry_version().unwrap(),
        before,
        "a connect and a disconnect moved the registry version"
    );
    // Any other change to a device row still does.
    s.with(|c| {
        c.execute("UPDATE devices SET pending = 1 WHERE name = 'pi'", [])
            .map_err(sql("test"))
    })
    .unwrap();
    let pending = s.registry_version().unwrap();
    assert!(pending > before);
    assert!(s.approve_device("pi").unwrap());
    assert!(s.registry_version().unwrap() > pending);
    // Every column of the table but last_seen is in the trigger's list.
    let mut columns: Vec<String> = s
        .with(|c| {
            let mut q = c
                .prepare("SELECT name FROM pragma_table_info('devices')")
                .map_err(sql("test"))?;
            q.query_map([], |r| r.get(0))
                .and_then(|rows| rows.collect::<Result<Vec<String>, _>>())
                .map_err(sql("test"))
        })
        .unwrap();
    columns.retain(|c| c != "last_seen");
    columns.sort();
    let mut counted = crate::store::DEVICE_COLUMNS_THAT_COUNT.to_vec();
    counted.sort();
    assert_eq!(columns, counted);
}

#[test]
fn the_listing_counts_each_devices_reconnects_of_the_last_day() {
    let s = Store::open_in_memory().unwrap();
    for name in ["cam", "pi", "zz"] {
        s.add_device(name, &[]).unwrap();
    }
    let now = crate::store::now();
    let day = crate::store::health::RECONNECT_WINDOW_SECS;
    // pi: three reconnects in the last day and one before it; cam: one; zz: none.
    let connects = [
        ("pi", now - 10),
        ("pi", now - 3600),
        ("pi", now - day + 60),
        ("pi", now - day - 60),
        ("cam", now - 5),
    ];
    s.with(|c| {
        for (device, at) in connects {
            c.execute(
                "INSERT INTO device_connects (device, at) VALUES (?1, ?2)",
                params![device, at],
            )
            .map_err(sql("test"))?;
        }
        Ok(())
    })
    .unwrap();
    let counts: Vec<(String, u32)> = s
        .devices()
        .unwrap()
        .into_iter()
        .map(|d| (d.name, d.health.reconnects_24h))
        .collect();
    assert_eq!(
        counts,
        [
            ("cam".to_string(), 1),
            ("pi".to_string(), 3),
            ("zz".to_string(), 0)
        ]
    );
    assert_eq!(s.reconnects_since("pi", now - day).unwrap(), 3);
}
