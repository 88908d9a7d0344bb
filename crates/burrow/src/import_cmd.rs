//! `burrow relay device import`: devices in bulk from a factory CSV, or from the
//! `authorized_keys` of a hand-built relay with its options turned into policy. Every line is
//! reported (imported, or why not; each option translated, or why not); the lines that can be
//! imported are, whatever the others do.

use std::path::Path;

use burrow_proto::authorized_keys::{name_from, parse_line, translate};
use burrow_proto::labels::{Labels, parse_labels};
use burrow_relay::audit::Outcome;
use burrow_relay::store::Db;
use burrow_relay::store::fleet::ImportDevice;

use crate::exit::{self, Failure, Result};
use crate::relay_cmd::store_err;

/// What the command was given.
pub struct ImportArgs<'a> {
    pub csv: Option<&'a Path>,
    pub authorized_keys: Option<&'a Path>,
    pub name_from: &'a str,
    pub labels: &'a [String],
    pub dry_run: bool,
}

/// One line read: the device to import, or why the line cannot be.
struct Planned {
    line: usize,
    device: std::result::Result<ImportDevice, String>,
    /// What was said about the line's options.
    notes: Vec<String>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            exit::NOINPUT,
            format!("cannot read {}: {e}", path.display()),
        )
    })
}

pub async fn run(db: &Db, args: ImportArgs<'_>) -> Result {
    let common = parse_labels(args.labels).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    let (what, mut planned) = match (args.csv, args.authorized_keys) {
        (Some(csv), None) => (csv, from_csv(&read(csv)?, &common)?),
        (None, Some(keys)) => (
            keys,
            from_authorized_keys(&read(keys)?, args.name_from, &common),
        ),
        _ => {
            return Err(Failure::new(
                exit::USAGE,
                "give a CSV file, or --authorized-keys FILE",
            ));
        }
    };
    // Two lines naming one device: the first wins, the second says so.
    let mut seen = std::collections::HashMap::new();
    for p in &mut planned {
        if let Ok(d) = &p.device
            && let Some(first) = seen.insert(d.name.clone(), p.line)
        {
            let name = d.name.clone();
            seen.insert(name.clone(), first);
            p.device = Err(format!("device {name} is already named by line {first}"));
        }
    }
    let devices: Vec<ImportDevice> = planned
        .iter()
        .filter_map(|p| p.device.as_ref().ok().cloned())
        .collect();
    let results = if args.dry_run || devices.is_empty() {
        vec![Ok(()); devices.len()]
    } else {
        db.import_devices(&devices).await.map_err(store_err)?
    };
    let mut results = results.into_iter();
    let (mut imported, mut refused, mut untranslated) = (0usize, 0usize, 0usize);
    for p in &planned {
        let outcome = match &p.device {
            Ok(d) => results.next().unwrap_or(Ok(())).map(|()| describe(d)),
            Err(e) => Err(e.clone()),
        };
        match outcome {
            Ok(done) => {
                imported += 1;
                let verb = if args.dry_run {
                    "would import"
                } else {
                    "imported"
                };
                println!("line {}: {verb} {done}", p.line);
            }
            Err(why) => {
                refused += 1;
                println!("line {}: not imported: {why}", p.line);
            }
        }
        for n in &p.notes {
            if n.starts_with("not translated") {
                untranslated += 1;
            }
            println!("  {n}");
        }
    }
    let verb = if args.dry_run {
        "would import"
    } else {
        "imported"
    };
    println!(
        "{verb} {imported} devices from {}; {refused} lines not imported; {untranslated} options not translated",
        what.display()
    );
    if !args.dry_run && imported > 0 {
        let invoker = crate::fleet_cmd::invoker();
        let _ = burrow_relay::audit::Audit::new(db.clone())
            .record_stored(
                "enroll",
                &invoker,
                &what.display().to_string(),
                Outcome::Ok,
                &format!(
                    "device import: {imported} devices registered, {refused} lines not imported"
                ),
            )
            .await;
    }
    if refused > 0 {
        return Err(Failure::new(
            exit::DATAERR,
            format!(
                "{refused} lines of {} were not imported (see above); fix them and import again (imported devices are skipped)",
                what.display()
            ),
        ));
    }
    Ok(())
}

fn describe(d: &ImportDevice) -> String {
    let mut out = format!(
        "device {} with key {}",
        d.name,
        d.keys
            .iter()
            .map(burrow_io::keys::fingerprint)
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !d.labels.is_empty() {
        out.push_str(&format!(
            ", labels {}",
            burrow_proto::labels::format_labels(&d.labels)
        ));
    }
    for (h, p) in &d.allow_connect {
        out.push_str(&format!(
            ", allow-connect {}",
            burrow_proto::addr::Target::new(h.clone(), *p)
        ));
    }
    for (a, p) in &d.allow_listen {
        out.push_str(&format!(
            ", allow-listen {}",
            burrow_proto::addr::Target::new(a.clone(), *p)
        ));
    }
    out
}

fn key(text: &str) -> std::result::Result<burrow_io::keys::PublicKey, String> {
    burrow_io::keys::parse_public_key(text)
        .map_err(|e| format!("the public key does not parse ({e}); expected `ssh-ed25519 AAAA...`"))
}

/// `name,public_key,labels` rows (labels `k=v;k=v`, or quoted with commas).
fn from_csv(text: &str, common: &Labels) -> Result<Vec<Planned>> {
    let records = burrow_proto::csv::parse(text)
        .map_err(|e| Failure::new(exit::DATAERR, format!("the CSV cannot be read: {e}")))?;
    let mut out = Vec::new();
    for (i, r) in records.into_iter().enumerate() {
        let field = |n: usize| r.fields.get(n).map(String::as_str).unwrap_or("");
        if i == 0 && field(0).eq_ignore_ascii_case("name") {
            continue;
        }
        let device = (|| {
            let name = field(0).to_string();
            burrow_proto::name::check_name("device", &name).map_err(|e| e.to_string())?;
            if field(1).is_empty() {
                return Err("no public key in the second column".to_string());
            }
            let mut labels = common.clone();
            if !field(2).is_empty() {
                labels.extend(parse_labels(&[field(2)]).map_err(|e| e.to_string())?);
            }
            if r.fields.len() > 3 {
                return Err(format!(
                    "{} columns; expected name, public key, labels (quote a field that holds commas)",
                    r.fields.len()
                ));
            }
            Ok(ImportDevice {
                name,
                keys: vec![key(field(1))?],
                labels,
                ..ImportDevice::default()
            })
        })();
        out.push(Planned {
            line: r.line,
            device,
            notes: Vec::new(),
        });
    }
    Ok(out)
}

/// Lines of an `authorized_keys`: each key a device, its options its policy.
fn from_authorized_keys(text: &str, template: &str, common: &Labels) -> Vec<Planned> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let parsed = match parse_line(raw) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                out.push(Planned {
                    line,
                    device: Err(e),
                    notes: Vec::new(),
                });
                continue;
            }
        };
        let t = translate(&parsed.options);
        let notes = t
            .notes
            .iter()
            .map(|n| {
                if n.translated {
                    format!("translated: {}: {}", n.option, n.detail)
                } else {
                    format!("not translated: {}: {}", n.option, n.detail)
                }
            })
            .collect();
        let device =
            name_from(template, &parsed.comment, t.first_listen_port, line).and_then(|name| {
                Ok(ImportDevice {
                    name,
                    keys: vec![key(&parsed.key)?],
                    labels: common.clone(),
                    allow_connect: t
                        .allow_connect
                        .iter()
                        .map(|c| (c.host.clone(), c.port))
                        .collect(),
                    allow_listen: t
                        .allow_listen
                        .iter()
                        .map(|l| (l.addr.clone(), l.port))
                        .collect(),
                })
            });
        out.push(Planned {
            line,
            device,
            notes,
        });
    }
    out
}
