//! OpenSSH `authorized_keys` lines of a hand-built relay, and what their options mean for
//! burrow: `permitlisten` becomes `allow-listen`, `permitopen` becomes `allow-connect`, and
//! what burrow already does (`restrict`, `no-pty`, a `command=` that only refuses a shell) is
//! said to be covered. Everything else is reported as not translated, never dropped silently.

use crate::addr::{ListenSpec, Target};

/// One key line: its options, the key (`TYPE BASE64`) and the comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLine {
    /// Options in order, with their values unquoted (`permitopen="h:1"` → `("permitopen", Some("h:1"))`).
    pub options: Vec<(String, Option<String>)>,
    /// `TYPE BASE64`.
    pub key: String,
    /// The comment (may be empty).
    pub comment: String,
}

/// Key types an `authorized_keys` line may start with (after its options).
const KEY_TYPES: [&str; 9] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed448",
];

fn is_key_type(word: &str) -> bool {
    KEY_TYPES.contains(&word) || word.ends_with("-cert-v01@openssh.com")
}

/// Splits the options field at commas outside double quotes (`\"` escapes a quote).
fn parse_options(field: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut chars = field.chars().peekable();
    loop {
        let mut name = String::new();
        while let Some(c) = chars.peek().copied() {
            if c == '=' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            return Err(format!("an empty option in {field:?}"));
        }
        let value = if chars.peek() == Some(&'=') {
            chars.next();
            if chars.next() != Some('"') {
                return Err(format!("option {name}: its value must be in double quotes"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some('\\') if chars.peek() == Some(&'"') => {
                        chars.next();
                        value.push('"');
                    }
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("option {name}: the quote is never closed")),
                }
            }
            Some(value)
        } else {
            None
        };
        out.push((name.to_ascii_lowercase(), value));
        match chars.next() {
            Some(',') => continue,
            None => return Ok(out),
            Some(c) => return Err(format!("unexpected {c:?} after option {:?}", out.len())),
        }
    }
}

/// Reads one line; `Ok(None)` for blank lines and comments.
pub fn parse_line(line: &str) -> Result<Option<KeyLine>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    // The options field ends at the first blank outside quotes.
    let mut in_quotes = false;
    let mut escaped = false;
    let mut split = None;
    for (i, c) in line.char_indices() {
        if std::mem::take(&mut escaped) {
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ' ' | '\t' if !in_quotes => {
                split = Some(i);
                break;
            }
            _ => {}
        }
    }
    let (first, rest) = match split {
        Some(i) => (
            line.get(..i).unwrap_or(""),
            line.get(i..).unwrap_or("").trim_start(),
        ),
        None => (line, ""),
    };
    let (options, rest) = if is_key_type(first) {
        (Vec::new(), line)
    } else {
        (parse_options(first)?, rest)
    };
    let mut words = rest.split_whitespace();
    let (Some(kind), Some(blob)) = (words.next(), words.next()) else {
        return Err("no key after the options (expected `ssh-ed25519 AAAA...`)".into());
    };
    if !is_key_type(kind) {
        return Err(format!("{kind:?} is not a key type"));
    }
    Ok(Some(KeyLine {
        options,
        key: format!("{kind} {blob}"),
        comment: words.collect::<Vec<_>>().join(" "),
    }))
}

/// What one option became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The option as written (`permitopen="localhost:1883"`).
    pub option: String,
    /// Whether burrow does what it asked for.
    pub translated: bool,
    /// How, or why not.
    pub detail: String,
}

/// A key line's options as burrow policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translation {
    /// `allow-connect` rules: relay-side targets the device may open.
    pub allow_connect: Vec<Target>,
    /// `allow-listen` rules: real listeners on the relay.
    pub allow_listen: Vec<ListenSpec>,
    /// One note per option.
    pub notes: Vec<Note>,
    /// The first `permitlisten` port, for name templates.
    pub first_listen_port: Option<u16>,
}

/// Commands that only refuse a shell: burrow never gives a device one.
const REFUSING_COMMANDS: [&str; 6] = [
    "/usr/sbin/nologin",
    "/sbin/nologin",
    "/bin/false",
    "/usr/bin/false",
    "false",
    "nologin",
];

/// Whether a `permitopen` host can never be reached (the seeds' `_invalid_host_:1` trick to
/// disable local forwarding): host names never contain `_`.
fn is_invalid_host(host: &str) -> bool {
    host.contains('_')
}

/// Translates a line's options.
pub fn translate(options: &[(String, Option<String>)]) -> Translation {
    let mut t = Translation::default();
    for (name, value) in options {
        let written = match value {
            Some(v) => format!("{name}=\"{v}\""),
            None => name.clone(),
        };
        let (translated, detail) = translate_one(name, value.as_deref(), &mut t);
        t.notes.push(Note {
            option: written,
            translated,
            detail,
        });
    }
    t
}

fn translate_one(name: &str, value: Option<&str>, t: &mut Translation) -> (bool, String) {
    let value = value.unwrap_or("");
    match name {
        "restrict" => (true, "burrow gives devices no shell, pty, exec, agent or X11 forwarding anyway".into()),
        "no-pty" | "no-agent-forwarding" | "no-x11-forwarding" | "no-user-rc" => {
            (true, "burrow never allows this for devices".into())
        }
        "port-forwarding" => (true, "devices expose endpoints under their own name".into()),
        "no-port-forwarding" => (
            false,
            "burrow devices always expose endpoints under their own name; remove the device's endpoints by not forwarding".into(),
        ),
        "command" if REFUSING_COMMANDS.contains(&value.trim()) => {
            (true, "only refuses a shell; burrow never gives a device one".into())
        }
        "command" => (
            false,
            format!("burrow runs no command for a device; the forced command {value:?} is dropped"),
        ),
        "permitopen" => {
            let (host, port) = value.rsplit_once(':').unwrap_or((value, ""));
            if is_invalid_host(host) {
                return (
                    true,
                    "only disables local forwarding; burrow devices open nothing on the relay side unless allowed".into(),
                );
            }
            if host == "*" || port == "*" {
                return (
                    false,
                    "wildcards are not translated: allow each HOST:PORT with `device allow-connect`".into(),
                );
            }
            match value.parse::<Target>() {
                Ok(target) => {
                    let d = format!("allow-connect {target}");
                    t.allow_connect.push(target);
                    (true, d)
                }
                Err(e) => (false, format!("cannot read {value:?}: {e}")),
            }
        }
        "permitlisten" => {
            if value.ends_with(":*") || value == "*" {
                return (false, "wildcard ports are not translated".into());
            }
            // `localhost` binds loopback, as sshd does; a bare port keeps burrow's default.
            let spec = value.strip_prefix("localhost:").map_or_else(
                || value.to_string(),
                |port| format!("127.0.0.1:{port}"),
            );
            match spec.parse::<ListenSpec>() {
                Ok(l) => {
                    t.first_listen_port.get_or_insert(l.port);
                    let d = format!(
                        "allow-listen {l} (the device's forward of port {} opens it on the relay, as before; operators may also use DEVICE:{})",
                        l.port, l.port
                    );
                    t.allow_listen.push(l);
                    (true, d)
                }
                Err(e) => (false, format!("cannot read {value:?}: {e}")),
            }
        }
        "from" => (false, "burrow does not restrict devices by source address".into()),
        "expiry-time" => (false, "keys do not expire in burrow; remove the device when it is retired".into()),
        "environment" | "tunnel" | "principals" | "cert-authority" | "agent-forwarding"
        | "x11-forwarding" | "pty" | "user-rc" | "no-touch-required" | "verify-required" => {
            (false, "has no burrow equivalent".into())
        }
        other => (false, format!("unknown option {other:?}")),
    }
}

/// A device name from a `--name-from` template: `{comment}`, `{user}` and `{host}` (the
/// comment's parts around `@`), `{port}` (the first `permitlisten` port) and `{line}`; the
/// result is lower-cased, other characters become `-`, and it must be a valid device name.
pub fn name_from(
    template: &str,
    comment: &str,
    port: Option<u16>,
    line: usize,
) -> Result<String, String> {
    let (user, host) = comment.split_once('@').unwrap_or((comment, ""));
    let mut missing = None;
    let mut out = template.to_string();
    for (placeholder, value) in [
        ("{comment}", comment.to_string()),
        ("{user}", user.to_string()),
        ("{host}", host.to_string()),
        ("{port}", port.map(|p| p.to_string()).unwrap_or_default()),
        ("{line}", line.to_string()),
    ] {
        if out.contains(placeholder) {
            if value.is_empty() {
                missing.get_or_insert(placeholder);
            }
            out = out.replace(placeholder, &value);
        }
    }
    if let Some(p) = missing {
        return Err(format!("--name-from {template:?}: this line has no {p}"));
    }
    let mut name: String = out
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    let name = name.trim_matches('-').to_string();
    crate::name::check_name("device", &name)
        .map(|()| name.clone())
        .map_err(|e| format!("{e} (made from --name-from {template:?})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds' lines (with a real key type in place of `ssh-なんたら`).
    const SEED: &str = r#"restrict,port-forwarding,permitlisten="localhost:50022",permitopen="_invalid_host_:1",command="/usr/sbin/nologin" ssh-ed25519 AAAAC3 pi@garage"#;
    const MQTT: &str =
        r#"no-pty,permitopen="localhost:1883",command="/bin/false" ssh-rsa AAAAB3 mqttclient"#;

    #[test]
    fn seed_lines_translate() {
        let line = parse_line(SEED).unwrap().unwrap();
        assert_eq!(line.key, "ssh-ed25519 AAAAC3");
        assert_eq!(line.comment, "pi@garage");
        let t = translate(&line.options);
        assert_eq!(t.allow_listen, vec!["127.0.0.1:50022".parse().unwrap()]);
        assert!(t.allow_connect.is_empty());
        assert!(t.notes.iter().all(|n| n.translated), "{:#?}", t.notes);
        assert_eq!(t.first_listen_port, Some(50022));
        let t = translate(&parse_line(MQTT).unwrap().unwrap().options);
        assert_eq!(t.allow_connect, vec![Target::new("localhost", 1883)]);
        assert!(t.notes.iter().all(|n| n.translated));
    }

    #[test]
    fn what_cannot_be_translated_is_said() {
        let line = r#"from="10.0.0.0/8",command="/usr/local/bin/backup",permitopen="*:22" ssh-ed25519 AAAA x"#;
        let t = translate(&parse_line(line).unwrap().unwrap().options);
        let failed: Vec<_> = t.notes.iter().filter(|n| !n.translated).collect();
        assert_eq!(failed.len(), 3, "{failed:#?}");
        assert!(failed[1].detail.contains("backup"));
        assert!(parse_line("# comment").unwrap().is_none());
        assert!(parse_line("ssh-ed25519").is_err());
        assert!(parse_line(r#"command="unterminated ssh-ed25519 AAAA"#).is_err());
        assert_eq!(
            parse_line(r#"command="echo \"hi, there\"" ssh-ed25519 AAAA"#)
                .unwrap()
                .unwrap()
                .options,
            vec![("command".into(), Some("echo \"hi, there\"".into()))]
        );
    }

    #[test]
    fn names_from_templates() {
        assert_eq!(
            name_from("{comment}", "pi@garage", None, 1).unwrap(),
            "pi-garage"
        );
        assert_eq!(
            name_from("{host}", "pi@Garage_Pi", None, 1).unwrap(),
            "garage-pi"
        );
        assert_eq!(
            name_from("pi-{port}", "", Some(50022), 3).unwrap(),
            "pi-50022"
        );
        assert!(
            name_from("{host}", "nohost", None, 1)
                .unwrap_err()
                .contains("{host}")
        );
        assert!(name_from("{comment}", "@@", None, 1).is_err());
    }

    #[test]
    fn hostile_lines_never_panic() {
        let mut seed = 42u64;
        for _ in 0..2000 {
            let len = (crate::xorshift(&mut seed) % 80) as usize;
            let s: String = (0..len)
                .map(|_| char::from(b" \"=,\\abc-ssh"[(crate::xorshift(&mut seed) % 12) as usize]))
                .collect();
            let _ = parse_line(&s);
            let _ = parse_line(&format!("{s} ssh-ed25519 AAAA"));
        }
    }
}
