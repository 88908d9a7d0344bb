//! The write queue: order, and waiting for a commit.

use super::*;

fn audit(who: &str) -> AuditRecord {
    AuditRecord {
        at: 1,
        event: "auth".into(),
        who: who.into(),
        target: String::new(),
        outcome: "ok".into(),
        detail: String::new(),
        device: None,
        operator: None,
    }
}

#[tokio::test]
async fn queued_writes_commit_in_order_and_a_waiting_one_sees_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite(&dir.path().join("r.db")).unwrap();
    for i in 0..1000 {
        db.submit(Write::Audit(audit(&format!("d{i}"))));
    }
    let id = db.write(Write::AuditOpen(audit("last"))).await.unwrap();
    assert!(matches!(id, Written::Id(1001)), "{id:?}");
    let tail = db.audit_tail(3).await.unwrap();
    let who: Vec<_> = tail.iter().map(|r| r.who.as_str()).collect();
    assert_eq!(who, ["d998", "d999", "last"]);
}
