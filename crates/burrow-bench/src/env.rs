//! The bench environment: tools (installed when missing), a scratch directory, keys, free
//! loopback ports, and child processes that die with the harness.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};

use crate::Args;

/// A child process killed, with everything it started, when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Proc> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        Ok(Proc(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn signal(&self, signal: Signal) {
        signal_pid(self.pid(), signal);
    }
}

impl Drop for Proc {
    /// Kills the process and everything it started: `autossh` restarts its `ssh`, and socat's
    /// `EXEC:` leaves a shell, which outlived the bench when only the parent was killed. The
    /// parent is stopped first so that it starts nothing new while its children are found.
    fn drop(&mut self) {
        let pid = self.pid();
        signal_pid(pid, Signal::STOP);
        for child in descendants(pid) {
            signal_pid(child, Signal::KILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal_pid(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
}

/// Every process below `pid` (from each of its threads' `children` in /proc).
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                found.push(child);
                todo.push(child);
            }
        }
    }
    found
}

/// A free loopback port (bound, then released for the process started next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Waits until something listens on `port`.
pub async fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on port {port} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Tools, scratch space and keys of one bench run.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub burrow: PathBuf,
    pub sshd: PathBuf,
    pub rathole: Option<PathBuf>,
    /// Device key (ed25519, OpenSSH format), with `.pub` beside it.
    pub key: PathBuf,
    /// Operator key: a relay refuses one key for two principals.
    pub op_key: PathBuf,
    pub user: String,
    pub versions: Vec<(String, String)>,
}

fn which(cmd: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|p| p.join(cmd))
        .find(|p| p.is_file())
}

pub(crate) fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    eprintln!("burrow-bench: installing {}", packages.join(" "));
    let sudo = if rustix::process::geteuid().is_root() {
        vec![]
    } else {
        vec!["sudo"]
    };
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let mut argv: Vec<&str> = sudo.clone();
        argv.extend_from_slice(args);
        let status = Command::new(argv[0])
            .args(&argv[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if !status.success() {
            bail!("{} failed", argv.join(" "));
        }
        Ok(())
    };
    run(&["apt-get", "update", "-qq"])?;
    let mut args = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    run(&args)
}

/// Where rathole is installed: a cache outside the repository.
fn rathole_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("burrow-bench/rathole")
}

fn install_rathole() -> anyhow::Result<PathBuf> {
    let root = rathole_root();
    let bin = root.join("bin/rathole");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!(
        "burrow-bench: cargo install rathole into {} (once; takes a few minutes)",
        root.display()
    );
    let status = Command::new("cargo")
        .args([
            "install",
            "rathole",
            "--no-default-features",
            "--features",
            "server,client,noise",
            "--root",
        ])
        .arg(&root)
        .status()?;
    if !status.success() || !bin.is_file() {
        bail!("cargo install rathole failed");
    }
    Ok(bin)
}

fn version(cmd: &Path, arg: &str) -> String {
    full_version(cmd, arg)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Everything `cmd arg` prints (stdout, or stderr when stdout is empty).
fn full_version(cmd: &Path, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text).into_owned()
        })
        .unwrap_or_default()
}

impl Env {
    pub async fn prepare(args: &Args) -> anyhow::Result<Env> {
        let mut missing = Vec::new();
        if which("sshd").is_none() {
            missing.push("openssh-server");
        }
        if which("ssh").is_none() {
            missing.push("openssh-client");
        }
        // The idle console's pty, and the cellular link's namespaces and socket counts.
        if which("socat").is_none() {
            missing.push("socat");
        }
        if which("ip").is_none() || which("ss").is_none() {
            missing.push("iproute2");
        }
        if !missing.is_empty() {
            apt_install(&missing)?;
        }
        let _ = std::fs::create_dir_all("/run/sshd");
        let sshd = which("sshd").context("sshd not found after installing openssh-server")?;
        let burrow = match &args.burrow {
            Some(p) => p.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("no directory for the bench binary")?
                .join("burrow"),
        };
        if !burrow.is_file() {
            bail!(
                "burrow binary {} not found: build it first (cargo build --release)",
                burrow.display()
            );
        }
        let rathole = if args.no_rathole {
            None
        } else {
            match install_rathole() {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("burrow-bench: rathole unavailable ({e}); its columns stay empty");
                    None
                }
            }
        };
        raise_fd_limit();
        let dir = tempfile::Builder::new().prefix("burrow-bench-").tempdir()?;
        let key = dir.path().join("device_key");
        let op_key = dir.path().join("operator_key");
        for k in [&key, &op_key] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(k)
                .status()?;
            if !status.success() {
                bail!("ssh-keygen failed");
            }
        }
        let user = String::from_utf8_lossy(&Command::new("id").arg("-un").output()?.stdout)
            .trim()
            .to_string();
        let mut versions = vec![
            ("burrow".to_string(), version(&burrow, "--version")),
            ("OpenSSH".to_string(), version(Path::new("ssh"), "-V")),
            (
                "rustc".to_string(),
                version(Path::new("rustc"), "--version"),
            ),
        ];
        if let Some(r) = &rathole {
            // rathole prints its name on the first line and "Build Version: X" further down.
            let text = full_version(r, "--version");
            let v = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("Build Version:"))
                .map_or_else(
                    || text.lines().next().unwrap_or("").to_string(),
                    |v| format!("rathole {}", v.trim()),
                );
            versions.push(("rathole".to_string(), v));
        }
        Ok(Env {
            dir,
            burrow,
            sshd,
            rathole,
            key,
            op_key,
            user,
            versions,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn public_key(&self) -> PathBuf {
        self.key.with_extension("pub")
    }

    pub fn op_public_key(&self) -> PathBuf {
        self.op_key.with_extension("pub")
    }

    /// The private key of device `name`: the bench key for `bench-dev`, else one made for it
    /// on first use (a relay refuses one key for two devices).
    pub fn key_for(&self, name: &str) -> anyhow::Result<PathBuf> {
        if name == "bench-dev" {
            return Ok(self.key.clone());
        }
        let dir = self.path("device-keys");
        std::fs::create_dir_all(&dir)?;
        let key = dir.join(name);
        if !key.exists() {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key)
                .status()?;
            if !status.success() {
                bail!("ssh-keygen failed for {name}");
            }
        }
        Ok(key)
    }

    /// `burrow agent` arguments as device `bench-dev` against `relay` (`HOST:PORT`).
    pub fn agent_args(&self, relay: &str, fingerprint: &str, status: &Path) -> Vec<String> {
        self.device_args(relay, "bench-dev", &self.key, fingerprint, status)
    }

    fn device_args(
        &self,
        relay: &str,
        name: &str,
        key: &Path,
        fingerprint: &str,
        status: &Path,
    ) -> Vec<String> {
        let mut args: Vec<String> = ["agent", "--relay", relay, "--name", name, "--key"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(key.display().to_string());
        args.extend(["--host-key".into(), fingerprint.into()]);
        args.extend(["--status-file".into(), status.display().to_string()]);
        args
    }

    /// `burrow agent` as device `name` against the relay on `relay_port`, with `extra` flags.
    pub fn agent(
        &self,
        relay_port: u16,
        name: &str,
        fingerprint: &str,
        extra: &[&str],
        status: &Path,
    ) -> anyhow::Result<Proc> {
        let relay = format!("127.0.0.1:{relay_port}");
        let key = self.key_for(name)?;
        Proc::spawn(
            Command::new(&self.burrow)
                .args(self.device_args(&relay, name, &key, fingerprint, status))
                .args(extra)
                .env("BURROW_LOG", "error"),
        )
    }

    /// `burrow ARGS...` with output discarded; fails on a non-zero exit.
    pub fn burrow_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.burrow)
            .args(args)
            .env("BURROW_LOG", "warn")
            .output()?;
        if !out.status.success() {
            bail!("burrow {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }
}

/// Tens of thousands of sessions need as many descriptors (for us and our children).
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let mut new = limit;
    new.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, new);
}

/// Resident and proportional set size of a process, in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (
        status_field(&status, "VmRSS:").unwrap_or(0),
        status_field(&rollup, "Pss:").unwrap_or(0),
    )
}

/// The anonymous part of a process's RSS (heap, stacks), in KiB; `None` where the kernel does
/// not say it (the smoke run's check then misses the row instead of taking a 0).
pub fn anon_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, "RssAnon:")
}

/// The number of a `Name:  123 kB` line of a /proc file.
fn status_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
}

/// All descendants of `pid` (and `pid` itself).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // Fields after the command name (which may contain spaces) start after ")".
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((p, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}
