//! On-demand access (`[metadata]`): where the agent looks for its tunnel, what an entry in a
//! metadata document looks like, and how an entry becomes the tunnel's configuration.
//!
//! A metadata document (SORACOM Air user data, or any JSON served over HTTP) holds at most one
//! entry for this device, in one of two forms:
//! - `ssh`: the structure of the soracom_autossh script, unchanged:
//!   `{"ssh":{"imsis":{"IMSI":{"portForwardParam":"10022:localhost:22 USER@HOST","privateKey":"PEM"}}}}`.
//!   It describes a remote forward to a stock OpenSSH sshd, as `ssh -R` would make it.
//! - `burrow`: `{"burrow":{"imsis":{"IMSI":{"relay":"HOST:PORT","name":"DEVICE",
//!   "host_key":"SHA256:...","private_key":"PEM","expose":[{"port":22}]}}}}`, for a burrow relay.
//!
//! Without an id (a URL of its own per device) the `ssh` or `burrow` value is the entry itself.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::addr::{Target, parse_port};
use crate::agent_config::{AgentConfig, Expose, Seconds};
use crate::secret::Secret;

/// SORACOM Air's metadata service, reachable from the SIM's own data session.
pub const SORACOM_BASE_URL: &str = "http://metadata.soracom.io";
/// How often the metadata is read (the seed's cron ran every 5 minutes).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// Time allowed for one request, connect to last byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response accepted; SORACOM user data is far smaller.
pub const MAX_RESPONSE: usize = 1 << 20;

/// Which metadata service to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataKind {
    /// SORACOM Air: the IMSI from `/v1/subscriber`, the document from `/v1/userdata`.
    Soracom,
    /// Any HTTP(S) URL returning a JSON document.
    Url,
}

/// The `[metadata]` section of the agent configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    /// `soracom` or `url`.
    pub kind: MetadataKind,
    /// Base URL (soracom, default `http://metadata.soracom.io`) or the document's URL (url).
    pub url: Option<String>,
    /// url kind: the key under `imsis` that names this device (else the entry is the document's).
    pub id: Option<String>,
    /// Seconds between reads (default 300).
    pub interval: Option<Seconds>,
    /// Seconds allowed for one request (default 10).
    pub timeout: Option<Seconds>,
    /// PEM file of extra certificate authorities trusted for an `https` URL.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Where this device's id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSource {
    /// The `imsi` field of this JSON document (SORACOM's `/v1/subscriber`).
    Subscriber(HttpUrl),
    /// Fixed in the configuration.
    Fixed(String),
    /// None: the document holds this device's entry directly.
    None,
}

/// What to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The document holding the entries.
    pub document: HttpUrl,
    /// How the entry for this device is picked.
    pub id: IdSource,
}

impl MetadataConfig {
    /// Checks the section; the message names the key and the fix.
    pub fn validate(&self) -> Result<(), String> {
        let source = self.source()?;
        if self.ca_file.is_some() && !source.document.tls {
            return Err(format!(
                "[metadata] ca_file only applies to https URLs, and {} is not one",
                source.document
            ));
        }
        for (what, value, max) in [
            ("interval", self.interval, 7.0 * 86_400.0),
            ("timeout", self.timeout, 3600.0),
        ] {
            if let Some(v) = value {
                v.check_range(what, 0.05, max, false)
                    .map_err(|e| format!("[metadata] {e}"))?;
            }
        }
        if self.kind == MetadataKind::Soracom && self.id.is_some() {
            return Err(
                "[metadata] id is only for kind = \"url\": with kind = \"soracom\" the IMSI comes from /v1/subscriber"
                    .into(),
            );
        }
        if let Some(id) = &self.id
            && id.is_empty()
        {
            return Err("[metadata] id must not be empty".into());
        }
        Ok(())
    }

    /// Seconds between reads.
    pub fn interval(&self) -> Duration {
        self.interval.map_or(DEFAULT_INTERVAL, Seconds::duration)
    }

    /// Time allowed for one request.
    pub fn timeout(&self) -> Duration {
        self.timeout.map_or(DEFAULT_TIMEOUT, Seconds::duration)
    }

    /// The URLs to read and how the device's entry is picked.
    pub fn source(&self) -> Result<Source, String> {
        match self.kind {
            MetadataKind::Soracom => {
                let text = self.url.as_deref().unwrap_or(SORACOM_BASE_URL);
                let base: HttpUrl = text
                    .parse()
                    .map_err(|e| format!("[metadata] url = {text:?}: {e}"))?;
                Ok(Source {
                    document: base.join("/v1/userdata"),
                    id: IdSource::Subscriber(base.join("/v1/subscriber")),
                })
            }
            MetadataKind::Url => {
                let Some(text) = self.url.as_deref() else {
                    return Err(
                        "[metadata] kind = \"url\" needs url = \"https://...\" (the JSON document to read)"
                            .into(),
                    );
                };
                let document: HttpUrl = text
                    .parse()
                    .map_err(|e| format!("[metadata] url = {text:?}: {e}"))?;
                let id = match &self.id {
                    Some(id) => IdSource::Fixed(id.clone()),
                    None => IdSource::None,
                };
                Ok(Source { document, id })
            }
        }
    }

    /// One line naming the source, for logs and `burrow agent status`.
    pub fn describe(&self) -> String {
        match (self.kind, self.source()) {
            (MetadataKind::Soracom, Ok(s)) => format!("soracom {}", s.document),
            (MetadataKind::Url, Ok(s)) => match &self.id {
                Some(id) => format!("url {} (id {id})", s.document),
                None => format!("url {}", s.document),
            },
            (_, Err(e)) => e,
        }
    }
}

/// An `http://` or `https://` URL, split for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `https`.
    pub tls: bool,
    /// Host name or address, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// This URL with `suffix` appended to its path (`/v1` + `/userdata`).
    pub fn join(&self, suffix: &str) -> HttpUrl {
        HttpUrl {
            path: format!("{}{suffix}", self.path.trim_end_matches('/')),
            ..self.clone()
        }
    }

    fn default_port(&self) -> u16 {
        if self.tls { 443 } else { 80 }
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.host_header(), self.path)
    }
}

impl FromStr for HttpUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "write http://HOST[:PORT]/PATH or https://HOST[:PORT]/PATH";
        let lower = s.to_ascii_lowercase();
        let (tls, rest) = if lower.starts_with("https://") {
            (true, s.get(8..).unwrap_or_default())
        } else if lower.starts_with("http://") {
            (false, s.get(7..).unwrap_or_default())
        } else {
            return Err(format!("not an http or https URL: {usage}"));
        };
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("URL contains spaces or control characters".into());
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err("user names and passwords in the URL are not supported".into());
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("unclosed '[' in the host: {usage}"))?;
            match after.strip_prefix(':') {
                Some(p) => (host, parse_port(p).map_err(|e| e.to_string())?),
                None if after.is_empty() => (host, default_port),
                None => return Err(format!("unexpected {after:?} after the host: {usage}")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, parse_port(p).map_err(|e| e.to_string())?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("no host: {usage}"));
        }
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        Ok(HttpUrl {
            tls,
            host: host.to_string(),
            port,
            path,
        })
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Body, de-chunked.
    pub body: Vec<u8>,
}

/// Parses a whole HTTP/1.x response read until the server closed the connection.
pub fn parse_http_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the response ended before its headers did (not an HTTP server?)")?;
    let (head, body) = raw.split_at(head_end);
    let body = body.get(4..).unwrap_or_default();
    let head = std::str::from_utf8(head).map_err(|_| "the response headers are not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!(
            "not an HTTP/1 response: {:?}",
            status_line.chars().take(40).collect::<String>()
        ));
    }
    let status = parts
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| format!("bad HTTP status line {status_line:?}"))?;
    let reason = parts.next().unwrap_or_default().trim().to_string();
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad HTTP header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        body.get(..n)
            .ok_or_else(|| format!("the response ended after {} of {n} bytes", body.len()))?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok(HttpResponse {
        status,
        reason,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("the response ended inside a chunk header")?;
        let (line, after) = rest.split_at(line_end);
        let line = std::str::from_utf8(line).map_err(|_| "bad chunk header")?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        let after = after.get(2..).unwrap_or_default();
        if size == 0 {
            return Ok(out);
        }
        let chunk = after
            .get(..size)
            .ok_or("the response ended inside a chunk")?;
        out.extend_from_slice(chunk);
        rest = after
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or("a chunk is not followed by CRLF")?;
    }
}

/// Reads the `imsi` field of SORACOM's `/v1/subscriber` document.
pub fn subscriber_imsi(body: &[u8]) -> Result<String, String> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the subscriber document is not JSON: {e}"))?;
    match doc.get("imsi") {
        Some(Value::String(imsi)) if !imsi.is_empty() => Ok(imsi.clone()),
        _ => Err("the subscriber document has no \"imsi\" field".into()),
    }
}

/// This device's entry in a metadata document.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A stock-sshd remote forward in soracom_autossh's format.
    Ssh(SshEntry),
    /// A burrow relay entry.
    Burrow(BurrowEntry),
}

/// An entry as found, with its raw JSON to tell a changed entry from an unchanged one.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The parsed entry.
    pub entry: Entry,
    /// The JSON it came from.
    pub raw: Value,
}

/// soracom_autossh's entry: `ssh -R PORTFORWARDPARAM` with a delivered key.
#[derive(Debug, Clone, PartialEq)]
pub struct SshEntry {
    /// Address the sshd listens on (`BIND:` in front of the port; its GatewayPorts decides).
    pub bind: Option<String>,
    /// Port the sshd listens on for operators.
    pub remote_port: u16,
    /// The device-side service the forward reaches.
    pub to: Target,
    /// The user the device logs in as.
    pub user: String,
    /// The sshd.
    pub relay: Target,
    /// The delivered private key.
    pub private_key: Secret,
    /// The sshd's host key fingerprint, when the entry pins it (`hostKey`).
    pub host_key: Option<String>,
}

/// A burrow-native entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurrowEntry {
    /// Relay address, `HOST[:PORT]`.
    pub relay: String,
    /// Device name (default: `name` in the agent config).
    pub name: Option<String>,
    /// Relay host key fingerprint, `SHA256:...` (absent: trust on first use).
    pub host_key: Option<String>,
    /// The device's private key, OpenSSH or PEM text.
    pub private_key: Secret,
    /// Endpoints (default: the config's `[[expose]]`, else port 22).
    #[serde(default)]
    pub expose: Vec<Expose>,
}

/// Finds this device's entry in a document. Empty text means no entry; anything else must be
/// a JSON object. Other devices' entries are not looked at.
pub fn find_entry(document: &[u8], id: Option<&str>) -> Result<Option<Found>, String> {
    if document.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let doc: Value =
        serde_json::from_slice(document).map_err(|e| format!("the document is not JSON: {e}"))?;
    if !doc.is_object() {
        return Err("the document is not a JSON object".into());
    }
    let pick = |form: &str| -> Result<Option<Value>, String> {
        let Some(section) = doc.get(form) else {
            return Ok(None);
        };
        let Some(id) = id else {
            return Ok(Some(section.clone()));
        };
        let imsis = section
            .get("imsis")
            .and_then(Value::as_object)
            .ok_or_else(|| format!("\"{form}\" has no \"imsis\" object"))?;
        Ok(imsis.get(id).cloned())
    };
    let ssh = pick("ssh")?.filter(|v| !v.is_null());
    let burrow = pick("burrow")?.filter(|v| !v.is_null());
    let (raw, entry) = match (ssh, burrow) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "both an \"ssh\" and a \"burrow\" entry{}: keep one",
                id.map(|i| format!(" for {i}")).unwrap_or_default()
            ));
        }
        (None, None) => return Ok(None),
        (Some(raw), None) => {
            let entry = parse_ssh_entry(&raw).map_err(|e| format!("\"ssh\" entry: {e}"))?;
            (raw, Entry::Ssh(entry))
        }
        (None, Some(raw)) => {
            let entry: BurrowEntry = serde_json::from_value(raw.clone())
                .map_err(|e| format!("\"burrow\" entry: {e}"))?;
            (raw, Entry::Burrow(entry))
        }
    };
    Ok(Some(Found { entry, raw }))
}

fn parse_ssh_entry(raw: &Value) -> Result<SshEntry, String> {
    let field = |name: &str| -> Result<Option<String>, String> {
        match raw.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{name} must be a string")),
        }
    };
    let param = field("portForwardParam")?.ok_or("no portForwardParam")?;
    let key = field("privateKey")?.ok_or("no privateKey")?;
    let host_key = field("hostKey")?;
    let forward = parse_port_forward_param(&param)?;
    Ok(SshEntry {
        private_key: Secret::new(key),
        host_key,
        ..forward
    })
}

/// Parses soracom_autossh's `portForwardParam`, the arguments after `ssh -R`:
/// `PORT:HOST:HOSTPORT [-p SSHPORT] USER@SSHHOST` (or `ssh://USER@SSHHOST:SSHPORT`).
pub fn parse_port_forward_param(param: &str) -> Result<SshEntry, String> {
    let usage = "write \"PORT:HOST:HOSTPORT USER@SSHHOST\", e.g. \"10022:localhost:22 pi@203.0.113.7\" (add -p SSHPORT for another sshd port)";
    let mut forward = None;
    let mut destination = None;
    let mut ssh_port = None;
    let mut words = param.split_whitespace();
    while let Some(word) = words.next() {
        if word == "-R" {
            continue;
        }
        if let Some(p) = word.strip_prefix("-p") {
            let p = if p.is_empty() {
                words.next().ok_or("-p needs a port")?
            } else {
                p
            };
            ssh_port = Some(parse_port(p).map_err(|e| format!("-p: {e}"))?);
        } else if word.starts_with('-') {
            return Err(format!("option {word} is not supported: {usage}"));
        } else if forward.is_none() {
            forward = Some(word);
        } else if destination.is_none() {
            destination = Some(word);
        } else {
            return Err(format!("unexpected {word:?}: {usage}"));
        }
    }
    let forward = forward.ok_or_else(|| format!("portForwardParam is empty: {usage}"))?;
    let destination = destination.ok_or_else(|| format!("no USER@SSHHOST: {usage}"))?;
    let (bind, remote_port, to) =
        parse_remote_forward(forward).map_err(|e| format!("{e}: {usage}"))?;
    let (user, relay) =
        parse_destination(destination, ssh_port).map_err(|e| format!("{e}: {usage}"))?;
    Ok(SshEntry {
        bind,
        remote_port,
        to,
        user,
        relay,
        private_key: Secret::default(),
        host_key: None,
    })
}

/// `[BIND:]PORT:HOST:HOSTPORT`, as `ssh -R` takes it (IPv6 addresses in brackets).
fn parse_remote_forward(spec: &str) -> Result<(Option<String>, u16, Target), String> {
    let fields = split_colons(spec);
    let (bind, port, host, host_port) = match fields.as_slice() {
        [port, host, host_port] => (None, *port, *host, *host_port),
        [bind, port, host, host_port] => (Some(*bind), *port, *host, *host_port),
        _ => return Err(format!("{spec:?} is not [BIND:]PORT:HOST:HOSTPORT")),
    };
    let unbracket = |s: &str| s.trim_start_matches('[').trim_end_matches(']').to_string();
    let bind = match bind.map(unbracket) {
        Some(b) if b.is_empty() => return Err(format!("{spec:?}: empty bind address")),
        b => b,
    };
    let port = parse_port(port).map_err(|e| format!("{spec:?}: {e}"))?;
    let host = unbracket(host);
    if host.is_empty() {
        return Err(format!("{spec:?}: no forward target host"));
    }
    let host_port = parse_port(host_port).map_err(|e| format!("{spec:?}: {e}"))?;
    Ok((bind, port, Target::new(host, host_port)))
}

/// Splits at colons outside `[...]`.
fn split_colons(spec: &str) -> Vec<&str> {
    let mut fields = Vec::new();
    let (mut depth, mut start) = (0u32, 0);
    for (i, c) in spec.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ':' if depth == 0 => {
                fields.push(spec.get(start..i).unwrap_or_default());
                start = i + 1;
            }
            _ => {}
        }
    }
    fields.push(spec.get(start..).unwrap_or_default());
    fields
}

fn parse_destination(word: &str, port: Option<u16>) -> Result<(String, Target), String> {
    let (word, uri) = match word.strip_prefix("ssh://") {
        Some(rest) => (rest.trim_end_matches('/'), true),
        None => (word, false),
    };
    let (user, host) = word
        .rsplit_once('@')
        .ok_or_else(|| format!("{word:?} has no user: write USER@SSHHOST"))?;
    if user.is_empty() {
        return Err(format!("{word:?} has no user: write USER@SSHHOST"));
    }
    let relay = if uri && (host.contains(':') && !host.ends_with(']')) {
        let t: Target = host.parse().map_err(|e| format!("{host:?}: {e}"))?;
        Target::new(t.host, port.unwrap_or(t.port))
    } else {
        if host.matches(':').count() == 1 {
            return Err(format!(
                "{host:?}: give the sshd port as -p PORT or write ssh://USER@HOST:PORT"
            ));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{word:?} has no host"));
        }
        Target::new(host, port.unwrap_or(22))
    };
    Ok((user.to_string(), relay))
}

/// The tunnel an entry describes, ready to run.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// The agent configuration for this tunnel.
    pub config: AgentConfig,
    /// The key to write to `config.key` before starting.
    pub private_key: Secret,
    /// Whether the relay's host key is pinned by the entry (else trusted on first use).
    pub host_key_pinned: bool,
    /// One line describing the tunnel.
    pub summary: String,
}

impl Entry {
    /// The tunnel this entry describes on top of `base` (keepalive, backoff, consoles...), with
    /// the key at `key_path` and, when the entry pins no host key, trust on first use recorded
    /// in `known_hosts`.
    pub fn tunnel(
        &self,
        base: &AgentConfig,
        key_path: &Path,
        known_hosts: &Path,
    ) -> Result<Tunnel, String> {
        let mut config = base.clone();
        config.metadata = None;
        config.key = key_path.to_path_buf();
        let (host_key, private_key, summary) = match self {
            Entry::Ssh(e) => {
                config.relay = e.relay.to_string();
                config.name = e.user.clone();
                config.expose = vec![Expose {
                    port: e.to.port,
                    to: Some(e.to.to_string()),
                    remote_port: Some(e.remote_port),
                    bind: e.bind.clone(),
                }];
                let bind = match &e.bind {
                    Some(b) if b.contains(':') => format!("[{b}]:"),
                    Some(b) => format!("{b}:"),
                    None => String::new(),
                };
                let summary = format!(
                    "ssh -R {bind}{}:{} {}@{}",
                    e.remote_port, e.to, e.user, e.relay
                );
                (e.host_key.clone(), e.private_key.clone(), summary)
            }
            Entry::Burrow(e) => {
                config.relay = e.relay.clone();
                if let Some(name) = &e.name {
                    config.name = name.clone();
                } else if config.name.is_empty() {
                    return Err(
                        "the burrow entry has no \"name\" and the agent config sets none".into(),
                    );
                }
                if !e.expose.is_empty() {
                    config.expose = e.expose.clone();
                } else if config.expose.is_empty() {
                    config.expose = vec![Expose {
                        port: 22,
                        to: None,
                        remote_port: None,
                        bind: None,
                    }];
                }
                let ports: Vec<String> = config.expose.iter().map(|x| x.port.to_string()).collect();
                let summary = format!(
                    "burrow {} as {} exposing {}",
                    e.relay,
                    config.name,
                    ports.join(", ")
                );
                (e.host_key.clone(), e.private_key.clone(), summary)
            }
        };
        let host_key_pinned = host_key.is_some();
        config.host_key = host_key;
        config.known_hosts = (!host_key_pinned).then(|| known_hosts.to_path_buf());
        config.trust_on_first_use = !host_key_pinned;
        config.validate().map_err(|e| e.to_string())?;
        Ok(Tunnel {
            config,
            private_key,
            host_key_pinned,
            summary,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u: HttpUrl = "http://metadata.soracom.io".parse().unwrap();
        assert_eq!(
            u.join("/v1/userdata").to_string(),
            "http://metadata.soracom.io/v1/userdata"
        );
        let u: HttpUrl = "HTTPS://[::1]:8443/a/b?x=1#frag".parse().unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "::1", 8443, "/a/b?x=1")
        );
        assert_eq!(u.host_header(), "[::1]:8443");
        let u: HttpUrl = "http://127.0.0.1:9000/meta/".parse().unwrap();
        assert_eq!(u.join("/v1/subscriber").path, "/meta/v1/subscriber");
        for bad in [
            "ftp://x/",
            "http://",
            "http://a b/",
            "http://u:p@h/",
            "http://h:0/",
            "http://[::1/",
        ] {
            assert!(bad.parse::<HttpUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn responses() {
        let r = parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, extra")
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let r = parse_http_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"Wikipedia");
        let r = parse_http_response(b"HTTP/1.0 500 Internal Server Error\r\n\r\noops").unwrap();
        assert_eq!(
            (r.status, r.reason.as_str(), r.body.as_slice()),
            (500, "Internal Server Error", &b"oops"[..])
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5",
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert!(
                parse_http_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    const SEED: &str = r#"{"ssh":{"imsis":{"440103123456789":{
        "portForwardParam":"10022:localhost:22 ec2-user@203.0.113.7",
        "privateKey":"-----BEGIN KEY-----"}}}}"#;

    #[test]
    fn seed_entry() {
        let found = find_entry(SEED.as_bytes(), Some("440103123456789"))
            .unwrap()
            .unwrap();
        let Entry::Ssh(e) = &found.entry else {
            panic!("{found:?}")
        };
        assert_eq!(e.remote_port, 10022);
        assert_eq!(e.to, Target::new("localhost", 22));
        assert_eq!(e.user, "ec2-user");
        assert_eq!(e.relay, Target::new("203.0.113.7", 22));
        assert_eq!(e.private_key.expose(), "-----BEGIN KEY-----");
        assert_eq!(
            find_entry(SEED.as_bytes(), Some("440109999999999")).unwrap(),
            None
        );
        assert_eq!(find_entry(b"", Some("1")).unwrap(), None);
        assert_eq!(find_entry(b" \n", Some("1")).unwrap(), None);
        assert_eq!(find_entry(br#"{"other":1}"#, Some("1")).unwrap(), None);
        assert_eq!(
            find_entry(br#"{"ssh":{"imsis":{"1":null}}}"#, Some("1")).unwrap(),
            None
        );
    }

    #[test]
    fn bad_documents_are_errors() {
        for (doc, want) in [
            (&br#"{"ssh":{"imsis":{"1":{"#[..], "not JSON"),
            (b"[1,2]", "not a JSON object"),
            (br#"{"ssh":{"1":{}}}"#, "imsis"),
            (br#"{"ssh":{"imsis":{"1":{"privateKey":"k"}}}}"#, "portForwardParam"),
            (br#"{"ssh":{"imsis":{"1":{"portForwardParam":"10022:localhost:22 h","privateKey":"k"}}}}"#, "no user"),
            (br#"{"ssh":{"imsis":{"1":{"portForwardParam":"a:b:10022:localhost:22 u@h","privateKey":"k"}}}}"#, "[BIND:]PORT"),
            (br#"{"ssh":{"imsis":{"1":{"portForwardParam":"10022:localhost:22 -L 1:a:2 u@h","privateKey":"k"}}}}"#, "-L"),
            (br#"{"burrow":{"imsis":{"1":{"relay":"r:22","private_key":"k","colour":"red"}}}}"#, "colour"),
            (br#"{"ssh":{"imsis":{"1":{}}},"burrow":{"imsis":{"1":{}}}}"#, "keep one"),
        ] {
            let err = find_entry(doc, Some("1")).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    #[test]
    fn forward_params() {
        let e = parse_port_forward_param("0.0.0.0:10022:localhost:22 pi@h").unwrap();
        assert_eq!((e.bind.as_deref(), e.remote_port), (Some("0.0.0.0"), 10022));
        let e = parse_port_forward_param("[::]:10022:[::1]:22 pi@h").unwrap();
        assert_eq!((e.bind.as_deref(), e.to.host.as_str()), (Some("::"), "::1"));
        assert!(parse_port_forward_param(":10022:localhost:22 pi@h").is_err());
        let e = parse_port_forward_param("-R 2222:[::1]:22 -p 2200 pi@relay.example").unwrap();
        assert_eq!(
            (e.remote_port, e.to.host.as_str(), e.to.port),
            (2222, "::1", 22)
        );
        assert_eq!(
            (e.user.as_str(), e.relay.clone()),
            ("pi", Target::new("relay.example", 2200))
        );
        let e = parse_port_forward_param("10022:localhost:22 ssh://pi@relay.example:2022").unwrap();
        assert_eq!(e.relay, Target::new("relay.example", 2022));
        let e =
            parse_port_forward_param("10022:localhost:22 -p2201 ssh://pi@[2001:db8::1]").unwrap();
        assert_eq!(e.relay, Target::new("2001:db8::1", 2201));
        for bad in [
            "",
            "10022 u@h",
            "1:a:2 u@h:2022",
            "10022:localhost:22",
            "x:localhost:22 u@h",
            "1:a:2 u@h extra",
            "1:a:2 -p u@h",
        ] {
            assert!(parse_port_forward_param(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_kind_without_id_takes_the_entry_itself() {
        let doc = br#"{"burrow":{"relay":"relay.example:2222","name":"pi-7","host_key":"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU","private_key":"PEM","expose":[{"port":22},{"port":80,"to":"127.0.0.1:8080"}]}}"#;
        let found = find_entry(doc, None).unwrap().unwrap();
        let Entry::Burrow(e) = &found.entry else {
            panic!("{found:?}")
        };
        assert_eq!(e.relay, "relay.example:2222");
        assert_eq!(e.expose.len(), 2);
        let mut base = AgentConfig::new("", "", Default::default());
        base.metadata = Some(MetadataConfig {
            kind: MetadataKind::Url,
            url: Some("http://x/".into()),
            id: None,
            interval: None,
            timeout: None,
            ca_file: None,
        });
        let t = found
            .entry
            .tunnel(&base, Path::new("/s/key"), Path::new("/s/kh"))
            .unwrap();
        assert!(t.host_key_pinned);
        assert_eq!(t.config.name, "pi-7");
        assert_eq!(
            t.config.host_key.as_deref(),
            Some("SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU")
        );
        assert_eq!(t.config.known_hosts, None);
        assert_eq!(t.config.metadata, None);
        assert_eq!(t.private_key.expose(), "PEM");
    }

    #[test]
    fn seed_tunnel_trusts_on_first_use() {
        let found = find_entry(SEED.as_bytes(), Some("440103123456789"))
            .unwrap()
            .unwrap();
        let base = AgentConfig::new("", "", Default::default());
        let t = found
            .entry
            .tunnel(&base, Path::new("/s/key"), Path::new("/s/kh"))
            .unwrap();
        assert!(!t.host_key_pinned);
        assert!(t.config.trust_on_first_use);
        assert_eq!(t.config.known_hosts.as_deref(), Some(Path::new("/s/kh")));
        assert_eq!(t.config.relay, "203.0.113.7:22");
        assert_eq!(t.config.expose[0].requested_port(), 10022);
        assert_eq!(
            t.summary,
            "ssh -R 10022:localhost:22 ec2-user@203.0.113.7:22"
        );
    }

    #[test]
    fn burrow_entry_needs_a_name_from_somewhere() {
        let doc = br#"{"burrow":{"relay":"r:22","private_key":"k"}}"#;
        let found = find_entry(doc, None).unwrap().unwrap();
        let base = AgentConfig::new("", "", Default::default());
        let err = found
            .entry
            .tunnel(&base, Path::new("/k"), Path::new("/kh"))
            .unwrap_err();
        assert!(err.contains("name"), "{err}");
        let base = AgentConfig::new("", "pi-9", Default::default());
        let t = found
            .entry
            .tunnel(&base, Path::new("/k"), Path::new("/kh"))
            .unwrap();
        assert_eq!(
            (t.config.name.as_str(), t.config.expose[0].port),
            ("pi-9", 22)
        );
    }

    #[test]
    fn subscriber() {
        assert_eq!(
            subscriber_imsi(br#"{"imsi":"440103123456789","tags":{}}"#).unwrap(),
            "440103123456789"
        );
        assert!(subscriber_imsi(br#"{"msisdn":"1"}"#).is_err());
        assert!(subscriber_imsi(b"<html>").is_err());
    }

    #[test]
    fn config_validation() {
        let mut m = MetadataConfig {
            kind: MetadataKind::Soracom,
            url: None,
            id: None,
            interval: None,
            timeout: None,
            ca_file: None,
        };
        assert!(m.validate().is_ok());
        assert_eq!(
            m.describe(),
            "soracom http://metadata.soracom.io/v1/userdata"
        );
        m.id = Some("1".into());
        assert!(m.validate().unwrap_err().contains("IMSI"));
        m.kind = MetadataKind::Url;
        assert!(m.validate().unwrap_err().contains("needs url"));
        m.url = Some("https://ops.example/devices.json".into());
        assert!(m.validate().is_ok());
        m.ca_file = Some("/etc/burrow/ca.pem".into());
        assert!(m.validate().is_ok());
        m.url = Some("http://ops.example/devices.json".into());
        assert!(m.validate().unwrap_err().contains("ca_file"));
        m.ca_file = None;
        m.interval = Some(Seconds::Whole(0));
        assert!(m.validate().unwrap_err().contains("interval"));
    }
}
