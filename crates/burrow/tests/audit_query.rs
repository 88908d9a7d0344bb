//! `burrow relay audit` filters and `--follow` against real relays, real OpenSSH clients and
//! real SQLite and PostgreSQL: what each filter finds, that each is one indexed query on both
//! backends, that following sees what any relay of a cluster writes, and that an older
//! registry gets the entries' devices and operators when it is migrated.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use burrow_relay::audit_follow::AuditFollow;
use burrow_relay::store::{AuditQuery, AuditRecord, Db, Write};
use common::*;
use tokio::io::AsyncBufReadExt;

/// `burrow relay ARGS...` against `--data-dir DIR` or `--database URL`.
fn burrow(registry: &[&str], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("relay")
        .args(registry)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn json_rows(registry: &[&str], args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["audit", "--json"];
    if !args.contains(&"--limit") {
        all.extend(["--limit", "1000"]);
    }
    all.extend_from_slice(args);
    let (ok, out, err) = burrow(registry, &all);
    assert!(ok, "audit {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `burrow relay ... audit --follow --json ARGS`: the lines it prints, as they come.
struct Follower {
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
    _child: tokio::process::Child,
}

impl Follower {
    fn start(registry: &[&str], args: &[&str]) -> Follower {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
            .arg("relay")
            .args(registry)
            .args(["audit", "--follow", "--json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
                sink.lock().unwrap().push(v);
            }
        });
        Follower {
            lines,
            _child: child,
        }
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a printed line satisfies `want`, and returns every line printed so far.
    async fn wait_for(
        &self,
        what: &str,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        eventually(what, || {
            let lines = self.lines();
            lines.iter().any(&want).then_some(lines)
        })
        .await
    }
}

/// Runs `ls` on the relay as the operator of `config`.
async fn operator_ls(config: &Path) {
    let (ok, _, err) = ssh_output(config, &["relay", "ls"], b"").await;
    assert!(ok, "ssh relay ls: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_filters_and_follow_on_a_running_relay() {
    let site = relay_with_echo_device("alice").await;
    let relay = &site.relay;
    let dir = site.dir.path();
    let bob_key = keypair(dir, "bob");
    relay.add_operator("bob", &bob_key, &["*"]);
    let bob = ssh_config(dir, relay, "bob", &bob_key);
    // A stream of alice's to pi, and a login of bob's.
    let (ok, echoed, err) = ssh_output(&site.operator, &["-W", "pi:22", "relay"], b"hello").await;
    assert!(ok && echoed == b"hello", "{err}");
    operator_ls(&bob).await;
    // A login with a key nobody has: refused, for no one known.
    let stranger = keypair(dir, "stranger");
    let mallory = ssh_config(dir, relay, "mallory", &stranger);
    let (ok, ..) = ssh_output(&mallory, &["relay", "ls"], b"").await;
    assert!(!ok);
    relay.ended_stream_row().await;
    relay.relay.db().flush().await;
    let data = relay.data_dir.to_str().unwrap();
    let reg = ["--data-dir", data];

    let all = json_rows(&reg, &[]);
    let pi = json_rows(&reg, &["--device", "pi"]);
    assert!(
        !pi.is_empty() && pi.iter().all(|r| r["device"] == "pi"),
        "{pi:#?}"
    );
    let want_pi: Vec<_> = all.iter().filter(|r| r["device"] == "pi").collect();
    assert_eq!(pi.iter().collect::<Vec<_>>(), want_pi);
    // The device's own login and endpoint, and the stream opened to it.
    for (event, who) in [("auth", "pi"), ("endpoint-add", "pi"), ("stream", "alice")] {
        assert!(
            pi.iter().any(|r| r["event"] == event && r["who"] == who),
            "no {event} by {who} in {pi:#?}"
        );
    }
    let alice = json_rows(&reg, &["--operator", "alice"]);
    let events: Vec<&str> = alice.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert!(
        events.contains(&"auth") && events.contains(&"stream"),
        "{alice:#?}"
    );
    assert!(alice.iter().all(|r| r["operator"] == "alice"), "{alice:#?}");
    let streams = json_rows(&reg, &["--event", "stream", "--operator", "alice"]);
    assert_eq!(streams.len(), 1, "{streams:#?}");
    assert_eq!(streams[0]["target"], "pi:22");
    let refused = json_rows(&reg, &["--event", "auth"]);
    assert!(
        refused
            .iter()
            .any(|r| r["who"] == "mallory" && r["outcome"] == "denied"),
        "{refused:#?}"
    );
    assert!(json_rows(&reg, &["--operator", "mallory"]).is_empty());
    // Times: everything happened within the hour and after 2000, nothing before it.
    assert_eq!(json_rows(&reg, &["--since", "1h"]).len(), all.len());
    assert_eq!(
        json_rows(&reg, &["--since", "2000-01-01T00:00:00+09:00"]).len(),
        all.len()
    );
    assert!(json_rows(&reg, &["--until", "2000-01-01"]).is_empty());
    let (ok, _, err) = burrow(&reg, &["audit", "--since", "last tuesday"]);
    assert!(
        !ok && err.contains("--since") && err.contains("RFC 3339"),
        "{err}"
    );
    // The plain listing, newest last, limited.
    let (ok, out, _) = burrow(&reg, &["audit", "--device", "pi", "--limit", "2"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 2, "{out}");

    // Following pi: what is there first, then a new stream of bob's, and nothing else.
    let follow = Follower::start(&reg, &["--device", "pi", "--limit", "1000"]);
    follow
        .wait_for("the entries there already", |r| {
            r["event"] == "endpoint-add"
        })
        .await;
    let before = follow.lines().len();
    assert_eq!(before, pi.len());
    operator_ls(&bob).await;
    // A stream held open until the follower printed it: printed again when it ended, with how.
    let mut stream = tokio::process::Command::from(ssh(&bob, &["-W", "pi:22", "relay"]))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    follow
        .wait_for("bob's stream to pi, open", |r| {
            r["event"] == "stream" && r["who"] == "bob" && r["outcome"] == "open"
        })
        .await;
    drop(stream.stdin.take());
    assert!(stream.wait().await.unwrap().success());
    let lines = follow
        .wait_for("bob's stream to pi, ended", |r| {
            r["event"] == "stream" && r["who"] == "bob" && r["outcome"] == "ok"
        })
        .await;
    let new = &lines[before..];
    assert!(new.iter().all(|r| r["device"] == "pi"), "{new:#?}");
    assert!(
        !new.iter()
            .any(|r| r["event"] == "auth" && r["who"] == "bob"),
        "bob's login concerns no device: {new:#?}"
    );
    let bobs: Vec<&str> = new
        .iter()
        .filter(|r| r["who"] == "bob")
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(bobs, ["open", "ok"], "{new:#?}");
    let mut seen = std::collections::HashSet::new();
    for r in &lines {
        assert!(
            seen.insert((r["id"].as_i64(), r["outcome"].to_string())),
            "printed twice: {r}"
        );
    }
}

/// Writes `n` entries through the relay's own write path: 20 devices, 5 operators, 4 common
/// events and a rare one (`takeover`, one in 200).
async fn populate(db: &Db, n: i64) {
    for i in 0..n {
        let (event, who, target, about) = match i % 4 {
            _ if i % 200 == 7 => (
                "takeover",
                format!("dev-{}", i % 20),
                "10.0.0.2:5000".to_string(),
                None,
            ),
            0 => (
                "auth",
                format!("dev-{}", i % 20),
                "10.0.0.1:5000".to_string(),
                Some(burrow_relay::audit::About::Device),
            ),
            1 => (
                "offline",
                format!("dev-{}", i % 20),
                "10.0.0.1:5000".to_string(),
                None,
            ),
            2 => (
                "stream",
                format!("op-{}", i % 5),
                format!("dev-{}:22", i % 20),
                None,
            ),
            _ => (
                "console-attach",
                format!("op-{}", i % 5),
                format!("dev-{}/tty", i % 20),
                None,
            ),
        };
        let (device, operator) = burrow_relay::audit_subject::subjects(event, &who, &target, about);
        db.submit(Write::Audit(AuditRecord {
            at: 1_700_000_000 + i,
            event: event.into(),
            who,
            target,
            outcome: "ok".into(),
            detail: format!("row {i}"),
            device,
            operator,
        }));
    }
    db.flush().await;
}

fn query(f: impl FnOnce(&mut AuditQuery)) -> AuditQuery {
    let mut q = AuditQuery {
        limit: 50,
        ..AuditQuery::default()
    };
    f(&mut q);
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_audit_filter_is_one_indexed_query_on_postgresql() {
    let pg = TestPostgres::start().await;
    let db = Db::postgres(&pg.url, "r1").await.unwrap();
    populate(&db, 40_000).await;
    let (client, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.batch_execute("ANALYZE audit").await.unwrap();
    let t = |s: i64| 1_700_000_000 + s;
    for (q, index) in [
        (query(|q| q.device = Some("dev-3".into())), "audit_device"),
        (
            query(|q| q.operator = Some("op-2".into())),
            "audit_operator",
        ),
        (query(|q| q.event = Some("takeover".into())), "audit_event"),
        // A quarter of the trail: walking the time index and skipping the rest is cheaper.
        (query(|q| q.event = Some("offline".into())), "audit_"),
        (query(|q| q.since = Some(t(39_000))), "audit_at"),
        (query(|q| q.until = Some(t(100))), "audit_at"),
        (query(|_| {}), "audit_at"),
        (
            query(|q| {
                q.device = Some("dev-3".into());
                q.since = Some(t(10_000));
                q.until = Some(t(12_000));
            }),
            "audit_device",
        ),
    ] {
        let plan = db.audit_plan(&q, false).await.unwrap();
        assert!(
            plan.contains(&format!("Index Scan Backward using {index}"))
                && !plan.contains("Seq Scan")
                && !plan.contains("Sort"),
            "{q:?}:\n{plan}"
        );
        let follow = db.audit_plan(&q, true).await.unwrap();
        assert!(
            follow.contains("Index Scan using audit_") && !follow.contains("Seq Scan"),
            "{q:?} while following:\n{follow}"
        );
    }
    // What the CLI finds is what a scan of the whole trail finds.
    let reg = ["--database", pg.url.as_str()];
    let all = json_rows(&reg, &["--limit", "100000"]);
    assert_eq!(all.len(), 40_000);
    for args in [
        vec!["--device", "dev-3", "--limit", "40"],
        vec!["--operator", "op-1", "--event", "stream", "--limit", "7"],
        vec![
            "--event",
            "offline",
            "--since",
            "2023-11-14T22:30:00Z",
            "--until",
            "2023-11-14T22:40:00Z",
        ],
    ] {
        let got = json_rows(&reg, &args);
        let flag = |name: &str| {
            args.iter()
                .position(|a| *a == name)
                .map(|i| args[i + 1].to_string())
        };
        let since = flag("--since").map(|s| burrow_proto::time::parse_time(&s, 0).unwrap());
        let until = flag("--until").map(|s| burrow_proto::time::parse_time(&s, 0).unwrap());
        let limit: usize = flag("--limit").map_or(1000, |l| l.parse().unwrap());
        let matching: Vec<&serde_json::Value> = all
            .iter()
            .filter(|r| {
                flag("--device").is_none_or(|d| r["device"] == d.as_str())
                    && flag("--operator").is_none_or(|o| r["operator"] == o.as_str())
                    && flag("--event").is_none_or(|e| r["event"] == e.as_str())
                    && since.is_none_or(|s| r["at"].as_i64().unwrap() >= s)
                    && until.is_none_or(|u| r["at"].as_i64().unwrap() <= u)
            })
            .collect();
        let want = &matching[matching.len().saturating_sub(limit)..];
        assert!(!want.is_empty(), "{args:?}");
        assert_eq!(got.iter().collect::<Vec<_>>(), want, "{args:?}");
        assert!(got.iter().all(|r| r["relay"] == "r1"));
    }
}

/// An entry whose transaction commits after a later entry's: following still prints it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_sees_an_entry_committed_after_a_later_one() {
    let pg = TestPostgres::start().await;
    let db = Db::postgres(&pg.url, "").await.unwrap();
    populate(&db, 10).await;
    let (mut slow, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let (fast, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let (shown, mut follow) = AuditFollow::start(&db, query(|q| q.event = Some("late".into())))
        .await
        .unwrap();
    assert!(shown.is_empty());
    let insert = "INSERT INTO audit (at, event, who, target, outcome, detail)
                  VALUES (extract(epoch FROM now())::bigint, 'late', $1, '', 'ok', '') RETURNING id";
    let tx = slow.transaction().await.unwrap();
    let first: i64 = tx.query_one(insert, &[&"first"]).await.unwrap().get(0);
    let second: i64 = fast.query_one(insert, &[&"second"]).await.unwrap().get(0);
    assert!(first < second);
    let seen = follow.poll(&db).await.unwrap();
    assert_eq!(
        seen.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![second],
        "only the committed entry is visible yet"
    );
    tx.commit().await.unwrap();
    let seen = follow.poll(&db).await.unwrap();
    assert_eq!(
        seen.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![first],
        "the entry committed late is printed, and the other not again"
    );
    assert!(follow.poll(&db).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_cluster_prints_what_every_relay_writes() {
    let pg = TestPostgres::start().await;
    let dir = tempdir();
    let a = cluster_relay(dir.path(), &pg, "ra").await;
    let b = cluster_relay(dir.path(), &pg, "rb").await;
    let (alice_key, bob_key) = (keypair(dir.path(), "alice"), keypair(dir.path(), "bob"));
    let db = a.relay.db();
    for (name, key) in [("alice", &alice_key), ("bob", &bob_key)] {
        db.add_operator(name, &[public_key(key)], None, &["*".into()], false)
            .await
            .unwrap();
    }
    let config = |relay: &TestRelay, user: &str, key: &Path| {
        let d = dir.path().join(format!("{user}-{}", relay.addr.port()));
        std::fs::create_dir_all(&d).unwrap();
        ssh_config(&d, relay, user, key)
    };
    let reg = ["--database", pg.url.as_str()];
    let follow = Follower::start(&reg, &["--operator", "alice"]);
    // The follower has started once an entry written after it shows.
    operator_ls(&config(&a, "alice", &alice_key)).await;
    follow
        .wait_for("alice's login on ra", |r| r["relay"] == "ra")
        .await;
    operator_ls(&config(&b, "bob", &bob_key)).await;
    operator_ls(&config(&b, "alice", &alice_key)).await;
    let lines = follow
        .wait_for("alice's login on rb", |r| {
            r["relay"] == "rb" && r["event"] == "auth"
        })
        .await;
    assert!(lines.iter().all(|r| r["operator"] == "alice"), "{lines:#?}");
    // Bob's login came between alice's two: it was read, and not printed.
    b.relay.db().flush().await;
    let bobs = json_rows(&reg, &["--operator", "bob"]);
    assert!(bobs.iter().any(|r| r["relay"] == "rb"), "{bobs:#?}");
}

/// A registry made before the entries had devices and operators (version 5: without the web
/// console's version 7 either): the start of a newer relay migrates it, and the filters find
/// the older entries too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_registry_gets_its_entries_subjects_when_migrated() {
    let dir = tempdir();
    let path = dir.path().join("burrow.db");
    drop(burrow_relay::store::Store::open(&path).unwrap());
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "DROP INDEX audit_at; DROP INDEX audit_device; DROP INDEX audit_operator;
         DROP INDEX audit_event; ALTER TABLE audit DROP COLUMN device;
         ALTER TABLE audit DROP COLUMN operator;
         ALTER TABLE operators DROP COLUMN role; ALTER TABLE operators DROP COLUMN totp_secret;
         DROP TABLE web_logins; PRAGMA user_version = 5;
         INSERT INTO audit (at, event, who, target, outcome, detail) VALUES
           (1, 'auth', 'pi', '10.0.0.1:1', 'ok', 'device authenticated with key SHA256:x'),
           (2, 'stream', 'alice', 'pi:22', 'ok', '5 bytes to device'),
           (3, 'auth', 'alice:pi/tty', '10.0.0.2:1', 'ok', 'operator authenticated by password');",
    )
    .unwrap();
    drop(c);
    let store = burrow_relay::store::Store::open(&path).unwrap();
    let pi = store
        .audit_query(&query(|q| q.device = Some("pi".into())))
        .unwrap();
    assert_eq!(pi.len(), 3, "{pi:#?}");
    let alice = store
        .audit_query(&query(|q| q.operator = Some("alice".into())))
        .unwrap();
    assert_eq!(
        alice.iter().map(|e| e.record.at).collect::<Vec<_>>(),
        vec![2, 3]
    );

    let pg = TestPostgres::start().await;
    drop(Db::postgres(&pg.url, "").await.unwrap());
    let (client, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "DROP INDEX audit_at, audit_device, audit_operator, audit_event;
             ALTER TABLE audit DROP COLUMN device, DROP COLUMN operator;
             DROP TRIGGER devices_updated ON devices;
             ALTER TABLE operators DROP COLUMN role, DROP COLUMN totp_secret;
             DROP TABLE web_logins;
             DELETE FROM schema_migrations WHERE version >= 6;
             INSERT INTO audit (at, event, who, target, outcome, detail) VALUES
               (1, 'auth', 'pi', '10.0.0.1:1', 'ok', 'device authenticated with key SHA256:x'),
               (2, 'stream', 'alice', 'pi:22', 'ok', '5 bytes to device'),
               (3, 'auth', 'alice:pi/tty', '10.0.0.2:1', 'ok', 'operator authenticated by password');",
        )
        .await
        .unwrap();
    let db = Db::postgres(&pg.url, "").await.unwrap();
    let pi = db
        .audit_query(&query(|q| q.device = Some("pi".into())))
        .await
        .unwrap();
    assert_eq!(pi.len(), 3, "{pi:#?}");
    let alice = db
        .audit_query(&query(|q| q.operator = Some("alice".into())))
        .await
        .unwrap();
    assert_eq!(
        alice.iter().map(|e| e.record.at).collect::<Vec<_>>(),
        vec![2, 3]
    );
}
