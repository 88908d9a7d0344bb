//! `burrow agent enroll JOIN` (or `--join-file FILE`): this device's key made here and
//! registered with the relay through a join token, and the agent config written.

use std::time::Duration;

use burrow_agent::enroll::{EnrollError, EnrollOptions, NameFrom, enroll, parse_join_file};
use burrow_proto::addr::ExposeSpec;
use burrow_proto::agent_config::Expose;
use burrow_proto::join::JoinToken;
use tokio_util::sync::CancellationToken;

use crate::cli::EnrollArgs;
use crate::exit::{self, Failure, Result};

/// Longest wait between two tries with --wait.
const WAIT_MAX: Duration = Duration::from_secs(60);

pub async fn run(args: EnrollArgs, shutdown: CancellationToken) -> Result {
    let usage = |m: String| Failure::new(exit::USAGE, m);
    let first_file = args.join_file.iter().find(|p| p.exists());
    let (text, file) = match (&args.join, first_file) {
        (Some(j), _) => (j.clone(), None),
        (None, None) if !args.join_file.is_empty() => {
            return Err(Failure::new(
                exit::NOINPUT,
                format!(
                    "no join file: none of {} exists",
                    args.join_file
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Failure::new(
                    exit::NOINPUT,
                    format!("cannot read the join file {}: {e}", path.display()),
                )
            })?;
            let parsed = parse_join_file(&text)
                .map_err(|e| Failure::new(exit::DATAERR, format!("{}: {e}", path.display())))?;
            (parsed.join.clone(), Some((path.clone(), parsed)))
        }
        (None, None) => return Err(usage("give the join string, or --join-file FILE".into())),
    };
    let join = JoinToken::decode(&text).map_err(|e| Failure::new(exit::DATAERR, e.to_string()))?;
    let (name, name_from) = match &file {
        Some((_, f)) => (
            args.name.clone().or_else(|| f.name.clone()),
            args.name_from.clone().or_else(|| f.name_from.clone()),
        ),
        None => (args.name.clone(), args.name_from.clone()),
    };
    let name = match (name, name_from.as_deref()) {
        (Some(n), _) => NameFrom::Given(n),
        (None, None | Some("hostname")) => NameFrom::Hostname,
        (None, Some("imsi")) => NameFrom::Imsi(args.metadata_url.clone()),
        (None, Some(other)) => {
            return Err(usage(format!(
                "--name-from {other}: use hostname or imsi (or give --name NAME)"
            )));
        }
    };
    let mut expose = Vec::new();
    for spec in &args.expose {
        let e: ExposeSpec = spec
            .parse()
            .map_err(|e| usage(format!("--expose {spec}: {e}")))?;
        expose.push(Expose {
            port: e.port,
            to: Some(e.to.to_string()),
            remote_port: None,
            bind: None,
        });
    }
    if expose.is_empty() {
        expose.push(Expose {
            port: 22,
            to: None,
            remote_port: None,
            bind: None,
        });
    }
    let key = args
        .key
        .clone()
        .unwrap_or_else(|| burrow_agent::default_status_file().with_file_name("id_ed25519"));
    let options = EnrollOptions {
        join,
        name,
        key,
        config: args.config.clone(),
        expose,
        force: args.force,
    };
    let mut delay = Duration::from_secs(2);
    let result = loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return Err(Failure::new(exit::TEMPFAIL, "stopped before the relay answered")),
            r = enroll(&options) => r,
        };
        match attempt {
            Err(EnrollError::Unreachable(why)) if args.wait => {
                eprintln!("burrow: {why}; trying again in {} s", delay.as_secs());
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(Failure::new(exit::TEMPFAIL, why)),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(WAIT_MAX);
            }
            other => break other,
        }
    };
    // The file holds a secret: gone once the relay has answered (or the device turned out to
    // be enrolled already); kept only when no relay could be reached, for the next boot.
    if let Some((path, _)) = &file
        && !matches!(result, Err(EnrollError::Unreachable(_)))
    {
        match std::fs::remove_file(path) {
            Ok(()) => eprintln!("removed the join file {}", path.display()),
            Err(e) => eprintln!(
                "burrow: warning: cannot remove the join file {} ({e}); delete it by hand, it holds a secret",
                path.display()
            ),
        }
    }
    let done = result.map_err(|e| match e {
        EnrollError::Refused(m) => Failure::new(exit::DATAERR, m),
        EnrollError::Unreachable(m) => Failure::new(exit::TEMPFAIL, m),
        EnrollError::Local(m) => Failure::new(exit::CONFIG, m),
    })?;
    if let Some(user) = &args.owner {
        hand_over(&options.key, user)?;
    }
    let name = &done.reply.device;
    println!(
        "enrolled device {name} with key {} at relay {}",
        done.fingerprint, done.relay
    );
    if !done.reply.replaced_keys.is_empty() {
        println!(
            "device {name} is re-bound to this key; its old keys are revoked ({})",
            done.reply.replaced_keys.join(", ")
        );
    }
    if !done.reply.labels.is_empty() {
        println!(
            "labels {}",
            burrow_proto::labels::format_labels(&done.reply.labels)
        );
    }
    println!(
        "wrote {} and the key {}",
        options.config.display(),
        options.key.display()
    );
    if done.reply.pending {
        println!(
            "device {name} waits for approval: on the relay, `burrow relay device approve {name}`; the agent connects once it is approved"
        );
    }
    println!(
        "start the agent: sudo systemctl enable --now burrow-agent (or burrow agent --config {})",
        options.config.display()
    );
    Ok(())
}

/// Gives the key to `user` (and its primary group), as read from /etc/passwd.
fn hand_over(key: &std::path::Path, user: &str) -> Result {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| Failure::new(exit::OSERR, format!("cannot read /etc/passwd: {e}")))?;
    let ids = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user)).then(|| {
            Some((
                f.get(2)?.parse::<u32>().ok()?,
                f.get(3)?.parse::<u32>().ok()?,
            ))
        })?
    });
    let (uid, gid) = ids.ok_or_else(|| {
        Failure::new(
            exit::CONFIG,
            format!("--owner {user}: no such user in /etc/passwd (the enrolled key stays root's)"),
        )
    })?;
    std::os::unix::fs::chown(key, Some(uid), Some(gid)).map_err(|e| {
        Failure::new(
            exit::OSERR,
            format!("cannot give {} to {user}: {e}", key.display()),
        )
    })
}
