//! Guessing against the relay with paramiko (a real third-party client), from several loopback
//! addresses (127.0.0.2, 127.0.0.3, ... are all this host on Linux): no answer tells which
//! names exist or which layer refused, one address slows only itself, many addresses lock an
//! operator where an admin sees it and can lift it, and parallel guesses pay what sequential
//! ones do.

mod common;

use std::time::Duration;

use common::*;

/// Password attempts, each on its own connection from its own source address: argv[3] is a
/// JSON list of [source, user, password]; `sequential` tries them in order, `parallel` all
/// at once, `forever` in order again and again. One line per attempt: OK, DENIED or ERROR.
const PASSWORDS: &str = r#"
import sys, json, socket, threading, base64, paramiko
port, host_line, mode, attempts = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
expected = base64.b64decode(host_line.split()[1])

def attempt(src, user, password):
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=30, source_address=(src, 0))
    t = paramiko.Transport(s)
    try:
        t.start_client(timeout=30)
        if t.get_remote_server_key().asbytes() != expected:
            return "ERROR host key"
        t.auth_password(user, password)
        return "OK" if t.is_authenticated() else "DENIED"
    except paramiko.AuthenticationException:
        return "DENIED"
    except Exception as e:
        return "ERROR %s" % e
    finally:
        t.close()

if mode == "parallel":
    results = [None] * len(attempts)
    def run(i, a):
        results[i] = attempt(*a)
    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(attempts)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for r in results:
        print(r, flush=True)
else:
    while True:
        for a in attempts:
            print(attempt(*a), flush=True)
        if mode != "forever":
            break
"#;

fn paramiko(
    relay: &TestRelay,
    mode: &str,
    attempts: &[(&str, &str, &str)],
) -> tokio::process::Command {
    let list: Vec<[&str; 3]> = attempts.iter().map(|&(s, u, p)| [s, u, p]).collect();
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("-c")
        .arg(PASSWORDS)
        .arg(relay.addr.port().to_string())
        .arg(relay.relay.host_public_key())
        .arg(mode)
        .arg(serde_json::to_string(&list).unwrap())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs the attempts to their end: one result per attempt.
async fn passwords(relay: &TestRelay, mode: &str, attempts: &[(&str, &str, &str)]) -> Vec<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        paramiko(relay, mode, attempts).output(),
    )
    .await
    .expect("paramiko finished")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "paramiko (pip install paramiko; ./test.sh does): {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

/// A relay whose password waits are short (tests wait for them), with `bob` (password
/// `correct horse`), `alice` (keys only) and `carol` (a password, locked).
async fn relay(
    dir: &std::path::Path,
    adjust: impl FnOnce(&mut burrow_relay::RelayConfig),
) -> TestRelay {
    let relay = TestRelay::start_with(&dir.join("relay"), "127.0.0.1:0", |c| {
        c.password_delay_first = Duration::from_millis(100);
        c.password_delay_max = Duration::from_millis(1600);
        adjust(c);
    })
    .await;
    let hash = burrow_relay::admin::hash_password("correct horse").unwrap();
    let store = relay.relay.store();
    store
        .add_operator("bob", &[], Some(&hash), &["*".to_string()], false)
        .unwrap();
    let key = keypair(dir, "alice");
    relay.add_operator("alice", &key, &["*"]);
    store
        .add_operator("carol", &[], Some(&hash), &["*".to_string()], false)
        .unwrap();
    store
        .lock_operator("carol", burrow_relay::store::now() + 3600)
        .unwrap();
    relay
}

/// bob's line of `operator ls`.
fn bob_line(listing: &str) -> &str {
    listing
        .lines()
        .find(|l| l.starts_with("bob "))
        .unwrap_or_else(|| panic!("no bob in {listing}"))
}

/// The value of counter `name` on the relay's metrics page.
async fn counter(relay: &TestRelay, name: &str) -> u64 {
    let page = relay.relay.metrics_page().await;
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not on the metrics page:\n{page}"))
        .trim()
        .parse()
        .unwrap()
}

/// The `auth` audit rows of password attempts from `source`, oldest first.
async fn attempts_from(relay: &TestRelay, source: &str) -> Vec<burrow_relay::store::AuditRecord> {
    let mut rows: Vec<_> = relay
        .audit_now(500)
        .await
        .into_iter()
        .filter(|r| r.event == "auth" && r.target.starts_with(&format!("{source}:")))
        .collect();
    rows.sort_by_key(|r| r.at);
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_password_costs_one_argon2_check_whatever_the_name() {
    let dir = tempdir();
    let relay = relay(dir.path(), |_| {}).await;
    let before = counter(&relay, "burrow_password_checks_total").await;
    // A wrong password for bob; then names with no password to check: unknown, keys only,
    // malformed, and an operator whose password login is locked.
    let users = ["bob", "nosuch", "alice", "Not_A_Name", "carol"];
    let attempts: Vec<_> = users.iter().map(|u| ("127.0.0.1", *u, "guess")).collect();
    let results = passwords(&relay, "sequential", &attempts).await;
    assert_eq!(results, vec!["DENIED"; users.len()]);
    let after = counter(&relay, "burrow_password_checks_total").await;
    assert_eq!(
        after - before,
        users.len() as u64,
        "each attempt hashes its password once, whether or not the name has one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_depends_on_the_address_not_on_the_name() {
    let dir = tempdir();
    let relay = relay(dir.path(), |_| {}).await;
    // One address guesses names that do not exist, another guesses bob's password.
    let unknown: Vec<_> = ["nosuch1", "nosuch2", "nosuch3", "nosuch4", "nosuch5"]
        .iter()
        .map(|u| ("127.0.0.2", *u, "guess"))
        .collect();
    let bob = vec![("127.0.0.3", "bob", "guess"); 5];
    assert_eq!(
        passwords(&relay, "sequential", &unknown).await,
        vec!["DENIED"; 5]
    );
    assert_eq!(
        passwords(&relay, "sequential", &bob).await,
        vec!["DENIED"; 5]
    );
    let (a, b) = (
        attempts_from(&relay, "127.0.0.2").await,
        attempts_from(&relay, "127.0.0.3").await,
    );
    // The first three of each are checked at once, the next ones wait: alike for both.
    let paced: Vec<Vec<String>> = [&a, &b]
        .iter()
        .map(|rows| rows.iter().map(|r| pacing(&r.detail)).collect())
        .collect();
    let expected = [
        "attempt 1 from this address",
        "attempt 2 from this address",
        "attempt 3 from this address",
        "attempt 4 from this address, checked after a 100ms wait for its turn",
        "attempt 5 from this address, checked after a 200ms wait for its turn",
    ];
    assert_eq!(paced[0], expected, "{a:#?}");
    assert_eq!(paced[1], expected, "{b:#?}");
}

/// The pacing part of an audit detail: `attempt N from this address[, checked after ...]`.
fn pacing(detail: &str) -> String {
    detail
        .rsplit_once(" (")
        .map(|(_, p)| p.trim_end_matches(')').to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_guessing_forever_leaves_the_operator_a_way_in() {
    let dir = tempdir();
    // A lock after 3 failures, so that one address would have locked bob long ago if it could.
    let relay = relay(dir.path(), |c| c.password_lock_after = 3).await;
    let mut guesser = paramiko(&relay, "forever", &[("127.0.0.2", "bob", "guess")])
        .spawn()
        .unwrap();
    // Let it guess well past the lock and into the longest waits.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while attempts_from(&relay, "127.0.0.2").await.len() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the guesser did not get to its tenth password"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // bob, from another address, gets in while the guessing goes on.
    let results = passwords(
        &relay,
        "sequential",
        &[("127.0.0.3", "bob", "correct horse")],
    )
    .await;
    assert_eq!(results, ["OK"]);
    let rows = attempts_from(&relay, "127.0.0.2").await;
    assert!(
        rows.iter()
            .all(|r| r.outcome == "denied" && r.detail.starts_with("wrong password")),
        "{rows:#?}"
    );
    assert!(
        rows.iter().any(|r| r.detail.contains("1.6s wait")),
        "the guessing address reached the longest wait: {rows:#?}"
    );
    let (ok, out, _) = relay.cli(&["operator", "ls"]);
    assert!(ok);
    assert!(!bob_line(&out).contains("locked"), "{out}");
    guesser.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_from_one_address_at_once_take_the_turns_of_guesses_one_by_one() {
    let dir = tempdir();
    let relay = relay(dir.path(), |_| {}).await;
    // Seven at once from one address: attempts 1 to 7, whose turns come 0, 0, 0, 0.1, 0.3,
    // 0.7 and 1.5 s after the first, as if each had waited for the answer to the one before.
    let attempts = vec![("127.0.0.4", "bob", "guess"); 7];
    let results = passwords(&relay, "parallel", &attempts).await;
    assert_eq!(results, vec!["DENIED"; 7]);
    let rows = attempts_from(&relay, "127.0.0.4").await;
    // Each got the place it would have had one by one, and the wait of that place.
    let mut places: Vec<String> = rows.iter().map(|r| pacing(&r.detail)).collect();
    places.sort_by_key(|p| p.split(' ').nth(1).and_then(|n| n.parse::<u32>().ok()));
    assert_eq!(places.len(), 7, "{rows:#?}");
    for (i, p) in places.iter().enumerate() {
        assert!(
            p.starts_with(&format!("attempt {} from this address", i + 1)),
            "{places:#?}"
        );
    }
    assert!(
        places[3..].iter().all(|p| p.contains("wait for its turn")),
        "{places:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourteen_addresses_at_once_get_ten_checks_then_the_lock() {
    let dir = tempdir();
    let relay = relay(dir.path(), |_| {}).await;
    let sources: Vec<String> = (10..24).map(|i| format!("127.0.0.{i}")).collect();
    let attempts: Vec<_> = sources
        .iter()
        .map(|s| (s.as_str(), "bob", "guess"))
        .collect();
    let results = passwords(&relay, "parallel", &attempts).await;
    assert_eq!(results, vec!["DENIED"; 14]);
    let rows: Vec<_> = relay
        .audit_now(500)
        .await
        .into_iter()
        .filter(|r| r.event == "auth" && r.who == "bob")
        .collect();
    let checked = rows
        .iter()
        .filter(|r| r.detail.starts_with("wrong password"))
        .count();
    assert_eq!(checked, 10, "{rows:#?}");
    let (ok, out, _) = relay.cli(&["operator", "ls"]);
    assert!(ok);
    assert!(bob_line(&out).contains("locked 20"), "{out}");
}

/// Three refused key logins, each on its own connection, timed from request to answer: SHA-1
/// `ssh-rsa` and a bad signature (both refused by the SSH layer before the relay is asked),
/// then a key nobody registered (refused by the relay). Prints the seconds of each.
const KEY_REFUSALS: &str = r#"
import sys, time, socket, paramiko
port, user, rsa_file, op_file, stranger_file = sys.argv[1:6]

class Forged(paramiko.Ed25519Key):
    def sign_ssh_data(self, data, algorithm=None):
        return super().sign_ssh_data(b"not this session", algorithm)

def refused(key):
    t = paramiko.Transport(socket.create_connection(("127.0.0.1", int(port))))
    try:
        t.start_client(timeout=30)
        start = time.monotonic()
        try:
            t.auth_publickey(user, key)
            return "ACCEPTED"
        except paramiko.AuthenticationException:
            return "%.3f" % (time.monotonic() - start)
    finally:
        t.close()

# paramiko no longer signs with SHA-1: the request names `ssh-rsa`, which is refused before
# its signature is looked at.
class ClaimsSha1(paramiko.RSAKey):
    def sign_ssh_data(self, data, algorithm=None):
        return super().sign_ssh_data(data, "rsa-sha2-256")

handler = paramiko.auth_handler.AuthHandler
finalize = handler._finalize_pubkey_algorithm
handler._finalize_pubkey_algorithm = lambda self, key_type: "ssh-rsa"
print(refused(ClaimsSha1.from_private_key_file(rsa_file)))
handler._finalize_pubkey_algorithm = finalize
print(refused(Forged.from_private_key_file(op_file)))
print(refused(paramiko.Ed25519Key.from_private_key_file(stranger_file)))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_the_ssh_layer_wait_like_the_relay_s_own() {
    let dir = tempdir();
    let pause = Duration::from_millis(1500);
    let relay = TestRelay::start_with(&dir.path().join("relay"), "127.0.0.1:0", |c| {
        c.auth_rejection_time = pause;
    })
    .await;
    let op = keypair(dir.path(), "op");
    relay.add_operator("op", &op, &["*"]);
    let stranger = keypair(dir.path(), "stranger");
    let rsa = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../burrow-ssh/tests/data/rsa_test_key");
    let mut python = tokio::process::Command::new("python3");
    python
        .arg("-c")
        .arg(KEY_REFUSALS)
        .arg(relay.addr.port().to_string())
        .arg("op")
        .arg(&rsa)
        .arg(&op)
        .arg(&stranger)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), python.output())
        .await
        .expect("paramiko finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "paramiko (pip install paramiko; ./test.sh does): {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each refusal came after the pause at the earliest (a bound the relay's sleep keeps,
    // not a measurement of speed), so a client cannot tell which layer refused it.
    let seconds: Vec<f64> = stdout.lines().map(|l| l.parse().unwrap_or(0.0)).collect();
    assert_eq!(seconds.len(), 3, "{stdout}");
    for s in &seconds {
        assert!(*s >= pause.as_secs_f64(), "a refusal after {s} s: {stdout}");
    }
    let audit = relay.audit_now(20).await;
    for why in ["ssh-rsa", "does not verify", "not registered"] {
        assert!(
            audit
                .iter()
                .any(|r| r.event == "auth" && r.detail.contains(why)),
            "no refusal audited for {why}: {audit:#?}"
        );
    }
}
