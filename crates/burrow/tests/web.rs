//! The web console: login by one-time link and password, sessions and their protections
//! (CSRF, Origin, TLS), TOTP on the web and over SSH, and the pages and consoles in a real
//! Chromium (`tests/web/browser.py`, driven by Selenium; `./test.sh` installs both).

mod common;
mod web_common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use web_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_logs_in_once_and_changes_need_origin_and_csrf() {
    let s = site().await;
    let link = link(s.config("alice")).await;
    assert!(
        link.starts_with(&format!("{}/login/link#", s.base)),
        "{link}"
    );
    let (status, cookie) = redeem(s.web, &link).await;
    assert_eq!(status, 303);
    let cookie = cookie.expect("a session cookie");
    let (again, none) = redeem(s.web, &link).await;
    assert_eq!(again, 403, "a link works once");
    assert!(none.is_none());

    let origin = format!("http://{}", s.web);
    let (status, _, page) = http(s.web, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!(status, 200);
    assert!(page.contains("data-device=\"pi\""), "{page}");
    let csrf = page
        .split("name=\"csrf\" content=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();

    // A change with no CSRF token, or from another site, is refused and audited.
    let (status, _, _) = http(
        s.web,
        "POST",
        "/logout",
        &[("Cookie", &cookie), ("Origin", &origin)],
        "",
    )
    .await;
    assert_eq!(status, 403, "POST without a CSRF token");
    let (status, _, _) = http(
        s.web,
        "POST",
        "/logout",
        &[("Cookie", &cookie), ("Origin", "http://evil.example")],
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(status, 403, "POST from another origin");
    // A WebSocket from another origin, with the session's cookie, is refused.
    let ws_headers = |origin: &str| {
        vec![
            ("Cookie", cookie.clone()),
            ("Origin", origin.to_string()),
            ("Upgrade", "websocket".to_string()),
            ("Connection", "Upgrade".to_string()),
            ("Sec-WebSocket-Version", "13".to_string()),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".to_string()),
        ]
    };
    let evil = ws_headers("http://evil.example");
    let evil: Vec<(&str, &str)> = evil.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, _) = http(s.web, "GET", "/console/pi/console/ws", &evil, "").await;
    assert_eq!(status, 403, "WebSocket from another origin");
    let good = ws_headers(&origin);
    let good: Vec<(&str, &str)> = good.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, _) = http(s.web, "GET", "/console/pi/console/ws", &good, "").await;
    assert_eq!(status, 101, "the same WebSocket from this site");

    let (status, _, _) = http(
        s.web,
        "POST",
        "/logout",
        &[("Cookie", &cookie), ("Origin", &origin)],
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(status, 303);
    let (status, _, _) = http(s.web, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!(status, 303, "logged out: back to the login page");
    let audit = s.relay.audit_now(200).await;
    assert!(
        audit
            .iter()
            .any(|r| r.event == "web-change" && r.outcome == "denied" && r.who == "alice"),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|r| r.event == "web-view" && r.who == "alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_limits_what_an_operator_sees() {
    let s = site().await;
    let (_, cookie) = redeem(s.web, &link(s.config("olga")).await).await;
    let cookie = cookie.unwrap();
    let (_, _, page) = http(s.web, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert!(page.contains("data-device=\"edge\""), "{page}");
    assert!(!page.contains("data-device=\"pi\""), "{page}");
    let (status, _, _) = http(s.web, "GET", "/device/pi", &[("Cookie", &cookie)], "").await;
    assert_eq!(status, 404, "a device outside the policy is not found");
    let (status, _, _) = http(s.web, "GET", "/device/edge", &[("Cookie", &cookie)], "").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_login_with_totp_on_the_web_and_ssh() {
    let s = site().await;
    let (ok, _, err) = s
        .relay
        .cli(&["operator", "password", "alice", "--password-stdin"]);
    assert!(!ok, "needs stdin");
    let _ = err;
    let mut set = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args([
            "relay",
            "operator",
            "password",
            "alice",
            "--password-stdin",
            "--data-dir",
        ])
        .arg(&s.relay.data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    set.stdin
        .take()
        .unwrap()
        .write_all(b"correct horse battery\n")
        .unwrap();
    assert!(set.wait().unwrap().success());
    let origin = format!("http://{}", s.web);
    let login = |password: &'static str, code: String| {
        let origin = origin.clone();
        async move {
            http(
                s.web,
                "POST",
                "/login",
                &[("Origin", &origin)],
                &format!("name=alice&password={password}&code={code}"),
            )
            .await
        }
    };
    let (status, _, _) = login("wrong", String::new()).await;
    assert_eq!(status, 401);
    let (status, head, _) = login("correct+horse+battery", String::new()).await;
    assert_eq!(status, 303, "{head}");

    let (ok, out, err) = s.relay.cli(&["operator", "totp", "enroll", "alice"]);
    assert!(ok, "{err}");
    let secret = out
        .lines()
        .find_map(|l| l.split("type the secret: ").nth(1))
        .unwrap()
        .trim()
        .to_string();
    let key = burrow_relay::totp::base32_decode(&secret).unwrap();
    let code_at = |offset: i64| {
        let step = burrow_relay::totp::step_of(burrow_relay::store::now()) + offset;
        format!("{:06}", burrow_relay::totp::hotp(&key, step as u64))
    };
    let (status, _, _) = login("correct+horse+battery", String::new()).await;
    assert_eq!(status, 401, "a code is asked once enrolled");
    let (status, _, _) = login("correct+horse+battery", code_at(5)).await;
    assert_eq!(status, 401, "a code from minutes away");
    let code = code_at(0);
    let (status, _, _) = login("correct+horse+battery", code.clone()).await;
    assert_eq!(status, 303, "the current code");
    let (status, _, _) = login("correct+horse+battery", code).await;
    assert_eq!(status, 401, "a code works once");

    // SSH: the password, then keyboard-interactive's "Verification code" prompt (paramiko,
    // as PuTTY and TeraTerm do it). The next step's code: the current one was used above.
    let script = format!(
        r#"
import paramiko, socket, sys
def run(code):
    sock = socket.create_connection(("127.0.0.1", {port}))
    t = paramiko.Transport(sock)
    t.start_client(timeout=10)
    try:
        rest = t.auth_password("alice", "correct horse battery")
        print("after password:", rest)
    except paramiko.BadAuthenticationType as e:
        print("partial:", e.allowed_types)
    prompts = []
    def handler(title, instructions, fields):
        prompts.extend(f[0] for f in fields)
        return [code for _ in fields]
    try:
        t.auth_interactive("alice", handler)
        ok = t.is_authenticated()
    except paramiko.AuthenticationException:
        ok = False
    print("prompts:", prompts, "ok:", ok)
    t.close()
    return ok
bad = run("000000" if "{code}" != "000000" else "111111")
good = run("{code}")
sys.exit(0 if good and not bad else 1)
"#,
        port = s.relay.addr.port(),
        code = code_at(1),
    );
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "paramiko: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Verification code"), "{stdout}");
}

/// The browser scenarios: `tests/web/browser.py` drives Chromium and asks this test, line by
/// line on its stdout, for what only the test can do (stop an agent, read the router).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium() {
    let mut s = site().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web/browser.py");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    let keep = std::env::var_os("BURROW_WEB_SCREENSHOTS").map(PathBuf::from);
    let params = serde_json::json!({
        "base": s.base,
        "ssh_configs": s.configs.iter().map(|(n, p)| (n.clone(), p.display().to_string())).collect::<std::collections::HashMap<_, _>>(),
        "screenshots": keep.clone().unwrap_or(shots.clone()).display().to_string(),
        "data_dir": s.relay.data_dir.display().to_string(),
    });
    let mut child = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(params.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdin = child.stdin.take().unwrap();
    let mut log = String::new();
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            println!("browser: {line}");
            log.push_str(&line);
            log.push('\n');
            let Some(req) = line.strip_prefix("REQ ") else {
                continue;
            };
            let answer = match req.split_once(' ').unwrap_or((req, "")) {
                ("stop-agent", _) => {
                    if let Some(a) = s.other_agent.take() {
                        a.stop().await;
                    }
                    "OK".to_string()
                }
                ("router-has", text) => {
                    let got = String::from_utf8_lossy(&s.router.received()).to_string();
                    if got.contains(text) { "YES" } else { "NO" }.to_string()
                }
                ("power-calls", _) => {
                    let calls = std::fs::read_to_string(s.dir.path().join("power-calls"))
                        .unwrap_or_default();
                    format!(
                        "[{}]",
                        calls.split_whitespace().collect::<Vec<_>>().join(" ")
                    )
                }
                (other, _) => format!("unknown request {other}"),
            };
            stdin
                .write_all(format!("{answer}\n").as_bytes())
                .await
                .unwrap();
        }
    };
    // Bounded: the script's own waits are bounded too; this is the backstop.
    tokio::time::timeout(std::time::Duration::from_secs(300), run)
        .await
        .expect("the browser test finished within 5 minutes");
    let status = child.wait().await.unwrap();
    assert!(
        status.success(),
        "browser scenarios failed (screenshots in {}):\n{log}",
        keep.unwrap_or(shots).display()
    );
    assert!(log.contains("ALL PASSED"), "{log}");
}

/// A test CA and a certificate for 127.0.0.1 it signed: (CA certificate, server certificate,
/// server key), made with the openssl CLI.
fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is installed (./test.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"],
        &ec[..],
        &[
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=burrow web test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"],
        &ec[..],
        &[
            "-keyout",
            &p("web.key"),
            "-out",
            &p("web.csr"),
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        &p("web.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("web.pem"),
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
    ]);
    (dir.join("ca.pem"), dir.join("web.pem"), dir.join("web.key"))
}

/// One HTTPS request trusting only the CA in `cert`; returns the whole response.
async fn https(port: u16, cert: &Path, request: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_secure_cookies_and_plain_http_off_loopback_is_refused() {
    let dir = tempdir();
    let data = dir.path().join("relay");
    let bin = env!("CARGO_BIN_EXE_burrow");
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .arg("relay")
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert!(run(&["init"]).status.success());
    // A login form on every address without TLS: refused at start, before anything is bound.
    let out = run(&["--listen", "127.0.0.1:0", "--web", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no TLS") && err.contains("--web-cert"),
        "{err}"
    );
    let out = run(&[
        "--listen",
        "127.0.0.1:0",
        "--web",
        "127.0.0.1:0",
        "--web-cert",
        "/nonexistent.pem",
        "--web-key",
        "/nonexistent.key",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read the certificate /nonexistent.pem"),
        "{err}"
    );

    let mut add = std::process::Command::new(bin)
        .args([
            "relay",
            "operator",
            "add",
            "alice",
            "--password-stdin",
            "--data-dir",
        ])
        .arg(&data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        add.stdin
            .take()
            .unwrap()
            .write_all(b"tls password 1\n")
            .unwrap();
    }
    assert!(add.wait().unwrap().success());
    let (ca, cert, key) = test_pki(dir.path());
    let port = free_port();
    let web = format!("127.0.0.1:{port}");
    let (_relay, _, _) = relay_process(
        &data,
        &[
            "--web",
            &web,
            "--web-cert",
            cert.to_str().unwrap(),
            "--web-key",
            key.to_str().unwrap(),
        ],
    );
    let page = eventually("the web console over TLS", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await;
    drop(page);
    let login = https(
        port,
        &ca,
        &format!("GET /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(login.starts_with("HTTP/1.1 200"), "{login}");
    let body = "name=alice&password=tls+password+1";
    let answer = https(
        port,
        &ca,
        &format!(
            "POST /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: https://127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    let cookie = answer
        .lines()
        .find(|l| l.starts_with("set-cookie: burrow_session="))
        .unwrap_or_else(|| panic!("{answer}"));
    for attr in ["; Secure", "; HttpOnly", "; SameSite=Strict", "; Max-Age="] {
        assert!(cookie.contains(attr), "{cookie}");
    }
}
