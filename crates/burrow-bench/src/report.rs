//! The results: raw JSON and `BENCHMARKS.md` with the machine, versions, tables and targets.

use std::fmt::Write;
use std::path::Path;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::env::Env;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub group: String,
    pub system: String,
    pub value: f64,
    pub unit: String,
    pub note: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Results {
    pub date: String,
    pub machine: Vec<(String, String)>,
    pub versions: Vec<(String, String)>,
    pub command: String,
    pub entries: Vec<Entry>,
}

fn machine() -> Vec<(String, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = read("/proc/meminfo")
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1048576.0))
        .unwrap_or_default();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    vec![
        ("CPU".into(), cpu),
        ("cores".into(), cores.to_string()),
        ("memory".into(), mem),
        ("kernel".into(), kernel),
    ]
}

impl Results {
    pub fn new(env: &Env) -> Results {
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Results {
            date,
            machine: machine(),
            versions: env.versions.clone(),
            // bench/run.sh names itself; a direct run shows its own arguments.
            command: std::env::var("BURROW_BENCH_COMMAND").unwrap_or_else(|_| {
                let mut words: Vec<String> = std::env::args().collect();
                if let Some(program) = words.first_mut() {
                    *program = "burrow-bench".into();
                }
                words.join(" ")
            }),
            entries: Vec::new(),
        }
    }

    pub fn push(&mut self, group: &str, system: &str, value: f64, unit: &str) {
        self.entries.push(Entry {
            group: group.into(),
            system: system.into(),
            value,
            unit: unit.into(),
            note: None,
        });
    }

    pub fn push_note(&mut self, group: &str, system: &str, value: f64, unit: &str, note: &str) {
        self.push(group, system, value, unit);
        if let Some(e) = self.entries.last_mut() {
            e.note = Some(note.into());
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn find(&self, group_prefix: &str, system_prefix: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.group.starts_with(group_prefix) && e.system.starts_with(system_prefix))
    }

    /// The smoke run's check: every kind of measurement produced a number for burrow and OpenSSH.
    pub fn check_complete(&self) -> anyhow::Result<()> {
        let needed = [
            ("throughput, 1 stream, device→operator", "burrow exposure"),
            ("throughput, 1 stream, device→operator", "burrow operator"),
            ("throughput, 8 streams, operator→device", "OpenSSH ssh -R"),
            (
                "throughput, 1 stream, device→operator",
                "OpenSSH operator path",
            ),
            ("latency p50", "burrow operator"),
            ("latency p50", "direct TCP"),
            (
                "idle devices held by one relay",
                "burrow relay: RSS per device",
            ),
            ("idle devices held by OpenSSH sshd", "sshd: RSS per device"),
            ("reconnect after a device reboot", "burrow"),
            ("reconnect storm", "burrow"),
            (crate::webconsole::GROUP, "web console (WebSocket)"),
            (crate::cgnat::GROUP, crate::cgnat::DEFAULT_FLAGS),
            (crate::cgnat::GROUP, crate::cgnat::LIFTED),
            ("agent footprint", "idle agent RSS"),
            ("agent footprint", "idle agent anonymous memory"),
            (crate::enroll::GROUP, crate::enroll::SYSTEM),
            ("cellular link: throughput", "burrow"),
            ("cellular link: throughput", "OpenSSH"),
            ("cellular link: latency p50", "burrow"),
            ("cellular link: time to notice a blackout", "burrow agent"),
            ("cellular link: time to notice a blackout", "burrow relay"),
            ("cellular link: endpoint back", "burrow"),
            (
                "relay memory under hostile peers",
                "burrow relay: RSS at rest",
            ),
            ("relay memory under hostile peers", "a stalled key exchange"),
            (
                "relay memory under hostile peers",
                "20,000 one-byte packets",
            ),
            (
                "relay memory under hostile peers",
                "burrow relay: RSS after",
            ),
        ];
        // Idle costs need network namespaces (root); where they can be made, they must be there.
        let idle = [
            (crate::cellular::IDLE_GROUP, "burrow, profile standard"),
            (crate::cellular::IDLE_GROUP, crate::cellular::IDLE_SESSION),
            (crate::cellular::IDLE_GROUP, "burrow, profile metered"),
            (crate::cellular::IDLE_GROUP, "OpenSSH ssh -R"),
        ];
        let netns = crate::cellular::netns_available();
        // The cluster parts need PostgreSQL (installed by test.sh) and root.
        let cluster = [
            ("ls latency", "burrow on SQLite"),
            ("ls latency", "burrow on PostgreSQL"),
            ("reconnect storm across three relays", "burrow"),
            ("failover after SIGKILL", "burrow, two relays configured"),
            ("failover after SIGKILL", "burrow, connections = 2"),
        ];
        for (group, system) in cluster.into_iter().filter(|_| crate::cluster::available()) {
            match self.find(group, system) {
                Some(e) if e.value.is_finite() && e.value >= 0.0 => {}
                _ => bail!("no result for {group} / {system}"),
            }
        }
        for (group, system) in needed.into_iter().chain(idle.into_iter().filter(|_| netns)) {
            match self.find(group, system) {
                Some(e) if e.value.is_finite() && e.value >= 0.0 => {}
                _ => bail!("no result for {group} / {system}"),
            }
        }
        Ok(())
    }

    /// Each target: what, the measured value, and whether it is met (`None`: a ratio, no target).
    fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        let mut out = Vec::new();
        let v = |g: &str, s: &str| self.find(g, s).map(|e| e.value);
        for dir in ["device→operator", "operator→device"] {
            let g = format!("throughput, 1 stream, {dir}");
            let burrow = v(&g, "burrow exposure");
            let ratios = [
                (
                    "exposure path",
                    "burrow exposure",
                    "OpenSSH ssh -R (default cipher)",
                    "OpenSSH ssh -R (aes256-gcm)",
                ),
                (
                    "operator path",
                    "burrow operator, ssh -L via relay (default cipher)",
                    "OpenSSH operator path, ssh -L to ssh -R (default cipher)",
                    "OpenSSH operator path, ssh -L to ssh -R (aes256-gcm)",
                ),
            ];
            for (what, ours, theirs, theirs_same) in ratios {
                if let (Some(b), Some(o)) = (v(&g, ours), v(&g, theirs)) {
                    out.push((
                        format!(
                            "single stream {dir}, {what}: at least 1.5x OpenSSH (default ciphers)"
                        ),
                        format!("{:.2}x", b / o),
                        Some(b >= 1.5 * o),
                    ));
                }
                let ours_same = if what == "exposure path" {
                    v(&g, ours)
                } else {
                    v(&g, "burrow operator, ssh -L via relay (aes256-gcm)")
                };
                if let (Some(b), Some(o)) = (ours_same, v(&g, theirs_same)) {
                    out.push((
                        format!("single stream {dir}, {what}: burrow / OpenSSH, both aes256-gcm"),
                        format!("{:.2}x", b / o),
                        None,
                    ));
                }
            }
            if let (Some(b), Some(r)) = (burrow, v(&g, "rathole (noise)")) {
                out.push((
                    format!("single stream {dir}: at least rathole (noise)"),
                    format!("{:.2}x", b / r),
                    Some(b >= r),
                ));
            }
            if let (Some(b), Some(d)) = (burrow, v(&g, "direct TCP")) {
                out.push((
                    format!("single stream {dir}: burrow / direct TCP (the physical limit)"),
                    format!("{:.2}x", b / d),
                    None,
                ));
            }
        }
        if let (Some(b), Some(o)) = (
            v("latency p50", "burrow exposure"),
            v("latency p50", "OpenSSH ssh -R (default cipher)"),
        ) {
            out.push((
                "p50 latency no worse than OpenSSH".into(),
                format!("{b:.0} µs vs {o:.0} µs"),
                Some(b <= o),
            ));
        }
        for e in self
            .entries
            .iter()
            .filter(|e| e.system == "burrow relay: RSS per device")
        {
            out.push((
                format!("at most 16 KiB relay memory per idle device ({})", e.group),
                format!("{:.1} KiB", e.value),
                Some(e.value <= 16.0),
            ));
        }
        for e in self.entries.iter().filter(|e| {
            e.group.starts_with("relay memory under hostile peers") && e.system.contains("growth")
        }) {
            out.push((
                format!("relay memory bounded under attack: {}", e.system),
                format!("{:.1} MiB", e.value),
                Some(e.value <= 64.0),
            ));
        }
        if let Some(after) = self.entries.iter().find(|e| {
            e.group.starts_with("relay memory under hostile peers")
                && e.system.contains("after the attacks")
        }) {
            out.push((
                "relay memory back within 64 MB of rest once the attackers are gone".into(),
                format!("{:.1} MiB", after.value),
                Some(after.value <= 61.0),
            ));
        }
        for e in self
            .entries
            .iter()
            .filter(|e| e.group.starts_with(crate::enroll::GROUP) && e.group.contains("(50)"))
        {
            out.push((
                "50 agents enrolled from one reusable token, all up within 60 s".into(),
                format!("{:.1} s", e.value),
                Some(e.value <= 60.0),
            ));
        }
        if let (Some(w), Some(s)) = (
            v(crate::webconsole::GROUP, "web console (WebSocket)"),
            v(crate::webconsole::GROUP, "SSH console session"),
        ) {
            out.push((
                "console keystroke echo through the web console within 2x SSH's".into(),
                format!("{w:.0} µs vs {s:.0} µs ({:.2}x)", w / s),
                Some(w <= 2.0 * s),
            ));
        }
        for e in self
            .entries
            .iter()
            .filter(|e| e.group.starts_with("ls latency"))
        {
            let (plain, backend) = if e.system == crate::cluster::HEALTH_SQLITE {
                ("burrow on SQLite", "SQLite")
            } else if e.system == crate::cluster::HEALTH_POSTGRES {
                ("burrow on PostgreSQL", "PostgreSQL")
            } else {
                continue;
            };
            if let Some(without) = self
                .entries
                .iter()
                .find(|x| x.group == e.group && x.system == plain)
            {
                out.push((
                    format!(
                        "device ls with health within 2x of the listing without ({backend}, {})",
                        e.group
                            .trim_start_matches("ls latency (")
                            .trim_end_matches(')')
                    ),
                    format!(
                        "{:.1} ms vs {:.1} ms ({:.2}x)",
                        e.value,
                        without.value,
                        e.value / without.value
                    ),
                    Some(e.value <= 2.0 * without.value),
                ));
            }
        }
        for e in self
            .entries
            .iter()
            .filter(|e| e.group == crate::webconsole::FLEET_GROUP)
        {
            out.push((
                format!("fleet page within 1 s ({})", e.system),
                format!("{:.0} ms", e.value),
                Some(e.value < 1000.0),
            ));
        }
        if let Some(r) = v("reconnect after a device reboot", "burrow") {
            out.push((
                "endpoint back within 1 s of the new session after a reboot".into(),
                format!("{r:.2} s"),
                Some(r <= 1.0),
            ));
        }
        for e in self.entries.iter().filter(|e| {
            e.group.starts_with("reconnect storm after a relay restart")
                && e.group.contains("(10000")
        }) {
            out.push((
                "10k devices all back within 30 s of a relay restart".into(),
                format!("{:.1} s", e.value),
                Some(e.value <= 30.0),
            ));
            out.push((
                "10k-device reconnect storm no slower than on russh (5.4 s)".into(),
                format!("{:.1} s", e.value),
                Some(e.value <= 5.4),
            ));
        }
        if let (Some(d), Some(l)) = (
            v(crate::cgnat::GROUP, crate::cgnat::DEFAULT_FLAGS),
            v(crate::cgnat::GROUP, crate::cgnat::LIFTED),
        ) {
            out.push((
                "a fleet behind one carrier NAT address back after a restart within 1.3x the time with the per-address limits lifted".into(),
                format!("{d:.1} s vs {l:.1} s ({:.2}x)", d / l),
                Some(d <= 1.3 * l),
            ));
        }
        for e in self
            .entries
            .iter()
            .filter(|e| e.group.starts_with("reconnect storm across three relays"))
        {
            out.push((
                "10k devices back within 30 s across three relays on PostgreSQL".into(),
                format!("{:.1} s", e.value),
                Some(e.value <= 30.0),
            ));
        }
        if let Some(t) = v("failover after SIGKILL", "burrow, two relays configured") {
            out.push((
                "failover after SIGKILL of a relay under 5 s (two relays configured)".into(),
                format!("{t:.2} s"),
                Some(t < 5.0),
            ));
        }
        if let Some(n) = v("failover after SIGKILL", "burrow, connections = 2") {
            out.push((
                "no idle device interrupted by a relay's death with connections = 2".into(),
                format!("{n:.0}"),
                Some(n == 0.0),
            ));
        }
        let idle = |s: &str| v(crate::cellular::IDLE_GROUP, s);
        if let Some(b) = idle("burrow, profile standard") {
            out.push((
                "idle device with default settings: at most 5 MB a month on the wire".into(),
                format!("{b:.2} MB"),
                Some(b <= 5.0),
            ));
            if let Some(session) = idle(crate::cellular::IDLE_SESSION) {
                out.push((
                    "an idle open ssh -J session: at most 2x an idle device".into(),
                    format!("{:.2}x ({session:.2} MB)", session / b),
                    Some(session <= 2.0 * b),
                ));
            }
            if let Some(seed) = idle("OpenSSH ssh -R") {
                out.push((
                    "idle cost at most a quarter of autossh with the seed's settings".into(),
                    format!("{:.2}x of {seed:.1} MB", b / seed),
                    Some(b <= seed / 4.0),
                ));
            }
            if let Some(monitored) = idle("autossh -M") {
                out.push((
                    "idle cost / autossh -M 20000 with ServerAliveInterval 60".into(),
                    format!("{:.2}x of {monitored:.1} MB", b / monitored),
                    None,
                ));
            }
        }
        let notice = [
            v("cellular link: time to notice", "burrow agent"),
            v("cellular link: time to notice", "burrow relay"),
        ];
        if let [Some(a), Some(r)] = notice {
            out.push((
                "idle device's dead link marked down on both sides within 3 minutes".into(),
                format!("agent {a:.0} s, relay {r:.0} s"),
                Some(a.max(r) <= 180.0),
            ));
        }
        if let Some(b) = v("cellular link: endpoint back", "burrow") {
            out.push((
                "endpoint back within seconds (10 s) of the link returning".into(),
                format!("{b:.1} s"),
                Some(b <= 10.0),
            ));
        }
        if let Some(r) = v("agent footprint", "idle agent RSS") {
            // The target is on the RSS; its own part is said beside it where it was measured.
            let figure = match v("agent footprint", "idle agent anonymous memory") {
                Some(a) => format!("{r:.1} MiB ({a:.1} MiB of it anonymous)"),
                None => format!("{r:.1} MiB"),
            };
            out.push(("idle agent under 8 MiB RSS".into(), figure, Some(r < 8.0)));
        }
        if let Some(s) = v("agent footprint", "burrow binary size") {
            out.push((
                // Issue 25 set the budget at 12 MiB with the web console (10 MiB before it).
                "stripped binary at most 12 MiB with the web console".into(),
                format!("{s:.1} MiB"),
                Some(s <= 12.0),
            ));
        }
        out
    }

    fn markdown(&self) -> String {
        let mut s = String::from("# burrow benchmarks\n\n");
        let _ = writeln!(
            s,
            "Measured on loopback by `{}` on {}. Every number below comes from that one run; `results.json` beside this file has the raw values.\n",
            self.command, self.date
        );
        s.push_str("| machine | |\n|---|---|\n");
        for (k, v) in &self.machine {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        s.push_str("\n| software | version |\n|---|---|\n");
        for (k, v) in &self.versions {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        s.push_str("\n## Targets\n\n| target | measured | met |\n|---|---|---|\n");
        for (t, m, ok) in self.targets() {
            let met = match ok {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "(ratio)",
            };
            let _ = writeln!(s, "| {t} | {m} | {met} |");
        }
        let mut groups: Vec<&str> = Vec::new();
        for e in &self.entries {
            if !groups.contains(&e.group.as_str()) {
                groups.push(&e.group);
            }
        }
        for g in groups {
            let _ = write!(s, "\n## {g}\n\n| system | value |\n|---|---|\n");
            for e in self.entries.iter().filter(|e| e.group == g) {
                let value = if e.value >= 100.0 {
                    format!("{:.0}", e.value)
                } else {
                    format!("{:.2}", e.value)
                };
                let note = e
                    .note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                let _ = writeln!(s, "| {} | {value} {}{note} |", e.system, e.unit);
            }
        }
        s.push_str(NOTES);
        s.push_str(&observed_sshd(self));
        s
    }
}

/// Heading of the appended tuning log.
pub const TUNING_HEADING: &str = "\n# History: tuning log (not from this run)\n\nWhat follows is hand-kept history: each step's before and after numbers were measured in earlier runs, on this machine, at the time of that step. The numbers above this heading are the only ones from the run this report describes.\n\n";

const NOTES: &str = "
## How each number is taken

- **Throughput**: N seconds of bulk data through each path (`--seconds`, default 2), 1 or 8 TCP connections at once, each measured `--repeats` times (default 5) with the median reported, to a bulk service on the device side (part of the harness: one connection per stream and no separate control connection, unlike iperf3, whose control connection can queue behind its data on one multiplexed `ssh -L` connection); *device→operator* is the device sending. Gbit/s is bytes received over the time until the receiver has all of them. OpenSSH is a test sshd with `ssh -N -R` using aes256-gcm, the cipher burrow's agent and relay negotiate by default (the operator path uses whatever the operator's OpenSSH client prefers: chacha20-poly1305 by default). rathole runs its `noise` transport (encrypted) and plain TCP. The burrow *exposure* path is agent → relay → a real listener granted by `allow-listen`; the *operator* path is stock `ssh -L` through the relay to the device's endpoint (the same `direct-tcpip` that `ssh -W` and `ssh -J` use). All paths are up at once and measured in rounds: each round takes each kind of run (streams and direction) through every path before the next kind, starting one path further on each round, so that the machine's drift over minutes (about 20 % on a shared host) falls on every system alike rather than on whichever ran during a slow minute, and the runs a ratio compares are seconds apart.
- **Latency**: 64-byte writes echoed back, one TCP connection per path and round, its first tenth discarded; in each round, after the throughput runs, `--round-trips` (default 2000) through every path, taken in slices of 100 with the paths in turn, so that the machine's drift over the second or so that a path's round trips take falls on every path alike; p50 and p99 over all rounds' round trips.
- **Idle devices**: real SSH device sessions (one process opening them all), each authenticated and holding one endpoint; the relay's RSS and PSS before and after, divided by the count. For sshd, the same with `ssh -N -R` client processes, summed over sshd's processes.
- **Agent footprint**: one agent holding one endpoint and one console (on a pty), up and idle: its VmRSS, and its RssAnon, the part that is the agent's own (heap and stacks); the rest of the RSS is pages of the binary, shared with every other burrow process on the host and dropped by the kernel under memory pressure.
- **Reconnect after a reboot**: the device's old session is frozen with SIGSTOP (TCP open, nothing answers) and a new one starts at once: the time until the endpoint answers again. OpenSSH's new `ssh -R` is restarted every second, as autossh does, until its forward can bind; a value marked *not back within the cap* means the old session still held the port when `--reconnect-cap` ran out (a lower bound). A frozen client's kernel keeps acknowledging TCP, so only sshd's own keepalive (`ClientAlive*`) could free the port; after a real reboot the peer's kernel is gone too, and the port is freed only when TCP retransmissions give up (about 15 minutes with Linux defaults; the seeds report about 10).
- **Idle cost**: each system runs in two network namespaces made for it (relay side and device side, joined by a veth pair); after the tunnel is up and settled, the device's veth counters (both ways) are read before and after a quiet window (`--idle-seconds`, default 600) and scaled to 30 days. Bytes are IP bytes: the veth's count minus its 14-byte Ethernet header per packet, which a cellular carrier does not carry. burrow's rows add what the window is too short to see: its probes (the cost of one probe, measured by an agent that probes every 20 s and sends no keepalives, times the probes a month its profile runs) and one key exchange a week (counted as a whole new connection, an upper bound). The idle `ssh -J` session row is the default device with an operator's `ssh -J` session (`ssh -N`, through the relay to an sshd in the device's namespace) opened before the window and silent through it; its rekey term is the device's own connection. OpenSSH rekeys by data only and runs no probes. WireGuard, not measured here, sends a 32-byte keepalive in a 60-byte IP packet every 25 s with its usual `PersistentKeepalive = 25`: about 6.2 MB a month.
- **Cellular link**: `burrow-linkemu` (a userspace TCP relay, since this kernel has no `sch_netem`) between the device and the relay: 2 Mbit/s each way, 300 ± 100 ms each way, 3 % of segments lost and retransmitted. burrow runs its defaults; OpenSSH is `ssh -R` with the seed's autossh settings (`ServerAliveInterval 30`, `ServerAliveCountMax 3`, restarted a second after it exits) to an sshd with its defaults. For the blackout both links drop everything at once, with the devices idle; each end's verdict is timed from the start of the blackout (the burrow agent's status, `device ls` on the relay, the ssh client's exit, and sshd's forwarded port closing), then the links come back and the time until a 64-byte echo passes again is taken. The emulator relays TCP, so a connection the ssh client gives up is closed towards sshd as soon as the link returns: kinder to OpenSSH than a real carrier, where sshd would hold the stale port until its own timeouts.
- **Enrolling a batch**: one reusable join token (`burrow relay token create --reusable`); `--enroll-agents` devices (50) run `burrow agent enroll JOIN --name ...` all at once from 127.0.0.1, each making its own key, proving the token to the relay over SSH and writing its config; each then starts `burrow agent --config` from that file. The clock runs from the first enrollment until every agent's status says `up`.
- **Reconnect storm**: the relay is killed; once every device has seen its session go down, the relay is restarted on the same data directory and the clock starts; devices reconnect with the agent's backoff (1 s doubling to 30 s, jittered); the time until every device has its endpoint again. Relays run with their default flags everywhere in this report, per-address limits included; the simulated fleets connect from loopback addresses 127.0.0.1, 127.0.0.2, ..., `--devices-per-address` devices (250) on each, as a cellular fleet reaches the relay from a handful of carrier NAT addresses.
- **Restart behind one carrier NAT address**: `--cgnat-devices` devices (300) all from 127.0.0.1, each retrying 5 to 10 s (uniformly) after a loss or a refusal, as autossh restarts ssh; the relay is killed with SIGKILL, restarted once every device has seen its session go, and the clock runs until every device is back. Taken twice in one run: with the relay's default flags, and with its per-address limits lifted (`--handshakes-per-ip 0`, `--max-unauthenticated-per-ip 20000`), which leaves the devices' own jitter. The connections the relay refused after the restart come from its metrics.
";

/// What this run observed of OpenSSH's reconnect after a reboot, in words made from the numbers.
fn observed_sshd(results: &Results) -> String {
    let version = results
        .versions
        .iter()
        .find(|(k, _)| k == "OpenSSH")
        .map_or("OpenSSH", |(_, v)| v.as_str());
    let mut s = String::new();
    for e in results.entries.iter().filter(|e| {
        e.group.starts_with("reconnect after a device reboot") && e.system.starts_with("OpenSSH")
    }) {
        let outcome = match &e.note {
            Some(_) => format!(
                "the endpoint was not back within the cap of {:.0} s",
                e.value
            ),
            None => format!("the endpoint was back after {:.1} s", e.value),
        };
        let _ = writeln!(
            s,
            "- Observed in this run with {version}, {}: {outcome}.",
            e.system
        );
    }
    s
}

/// Writes `BENCHMARKS.md` again from a run's `results.json` (after a change to the report's
/// wording; the numbers stay those of that run).
pub fn render(results_json: &Path, out: &Path) -> anyhow::Result<()> {
    let results: Results = serde_json::from_str(&std::fs::read_to_string(results_json)?)?;
    write(out, &results)
}

pub fn write(out: &Path, results: &Results) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    // Hand-written notes on tuning follow the tables, labelled as what they are: history, with
    // numbers from earlier runs, not from this one.
    let mut text = results.markdown();
    if let Ok(tuning) = std::fs::read_to_string(out.join("tuning.md")) {
        text.push_str(TUNING_HEADING);
        text.push_str(&tuning);
    }
    std::fs::write(out.join("BENCHMARKS.md"), text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(versions: &[(&str, &str)]) -> Results {
        Results {
            date: "2026-11-25 00:00 UTC".into(),
            machine: Vec::new(),
            versions: versions
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            command: "burrow-bench".into(),
            entries: Vec::new(),
        }
    }

    #[test]
    fn machine_specific_sentences_come_from_this_run() {
        let group = "reconnect after a device reboot (old session frozen)";
        let mut r = results(&[("OpenSSH", "OpenSSH_9.9p9 Test")]);
        r.push(group, "burrow (takeover)", 0.06, "s");
        r.push(
            group,
            "OpenSSH sshd, ClientAliveInterval 15, CountMax 3",
            47.5,
            "s",
        );
        r.push_note(
            group,
            "OpenSSH sshd, default settings",
            120.0,
            "s",
            "not back within the cap (lower bound)",
        );
        let md = r.markdown();
        assert!(
            md.contains("with OpenSSH_9.9p9 Test, OpenSSH sshd, ClientAliveInterval 15, CountMax 3: the endpoint was back after 47.5 s"),
            "{md}"
        );
        assert!(md.contains("not back within the cap of 120 s"), "{md}");
        // Nothing about a machine this run did not measure.
        assert!(!md.contains("9.2p1"), "{md}");
        assert!(!md.contains("Debian 12"), "{md}");
    }

    #[test]
    fn tuning_log_is_labelled_as_history() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tuning.md"),
            "## Tuning log\n\nstep 1: 8 -> 11 Gbit/s\n",
        )
        .unwrap();
        write(dir.path(), &results(&[])).unwrap();
        let md = std::fs::read_to_string(dir.path().join("BENCHMARKS.md")).unwrap();
        let history = md.find("not from this run").expect("a history heading");
        let step = md.find("step 1").unwrap();
        assert!(history < step, "{md}");
    }
}
