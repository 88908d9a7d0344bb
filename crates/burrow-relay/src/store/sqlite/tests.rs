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
        })
        .unwrap();
    }
    let tail = s.audit_tail(2).unwrap();
    assert_eq!(tail.iter().map(|r| r.at).collect::<Vec<_>>(), [3, 4]);
}
