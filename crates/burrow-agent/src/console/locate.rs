//! Finding a console's port: a path (a `/dev/serial/by-id/` or `by-path/` link follows the
//! adapter to whatever ttyUSB number it gets), or a USB identity looked up in sysfs each time
//! the port is opened, so a replugged adapter is found under its new name.

use std::io;
use std::path::{Path, PathBuf};

use burrow_proto::agent_config::{Console, UsbId};

/// Where sysfs and the device nodes are (tests stand in directories of their own).
#[derive(Debug, Clone)]
pub struct Roots {
    /// sysfs, normally `/sys`.
    pub sys: PathBuf,
    /// Device nodes, normally `/dev`.
    pub dev: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// The path to open for `console` now; `NotFound` says what was looked for.
pub(crate) fn resolve(console: &Console, roots: &Roots) -> io::Result<PathBuf> {
    let Some(id) = console.usb_id() else {
        return Ok(console.device.clone());
    };
    let found = find_usb(&id, roots)?;
    match found.as_slice() {
        [] => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no serial adapter with {id} is plugged in"),
        )),
        [only] => Ok(only.clone()),
        [first, ..] => {
            tracing::warn!(
                "console {}: {} serial ports match {id}; using {} (add the serial number or interface to usb = ... to choose)",
                console.name,
                found.len(),
                first.display()
            );
            Ok(first.clone())
        }
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Every tty whose USB device and interface match `id`, sorted by name.
fn find_usb(id: &UsbId, roots: &Roots) -> io::Result<Vec<PathBuf>> {
    let class = roots.sys.join("class/tty");
    let mut names: Vec<String> = match std::fs::read_dir(&class) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    names.sort();
    let mut out = Vec::new();
    for name in names {
        // Only ttys with a device behind them (virtual consoles and ptys have none).
        let Ok(mut dir) = std::fs::canonicalize(class.join(&name).join("device")) else {
            continue;
        };
        let mut interface = None;
        let mut usb = None;
        loop {
            if interface.is_none()
                && let Some(n) = read_trimmed(&dir.join("bInterfaceNumber"))
            {
                interface = u8::from_str_radix(&n, 16).ok();
            }
            if dir.join("idVendor").exists() {
                usb = Some(dir.clone());
                break;
            }
            if !dir.pop() || dir == roots.sys || dir.as_os_str().is_empty() {
                break;
            }
        }
        let Some(usb) = usb else { continue };
        let hex =
            |f: &str| read_trimmed(&usb.join(f)).and_then(|v| u16::from_str_radix(&v, 16).ok());
        if hex("idVendor") != Some(id.vendor) || hex("idProduct") != Some(id.product) {
            continue;
        }
        if let Some(serial) = &id.serial
            && read_trimmed(&usb.join("serial")).as_deref() != Some(serial.as_str())
        {
            continue;
        }
        if id.interface.is_some() && interface != id.interface {
            continue;
        }
        out.push(roots.dev.join(&name));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs tree as the kernel lays out a USB serial adapter's tty.
    pub(crate) fn fake_adapter(
        sys: &Path,
        tty: &str,
        vid: &str,
        pid: &str,
        serial: &str,
        iface: u8,
    ) {
        let usb = sys.join(format!("devices/usb1/1-{tty}"));
        let intf = usb.join(format!("1-{tty}:1.{iface}"));
        let port = intf.join(tty);
        std::fs::create_dir_all(&port).unwrap();
        std::fs::write(usb.join("idVendor"), format!("{vid}\n")).unwrap();
        std::fs::write(usb.join("idProduct"), format!("{pid}\n")).unwrap();
        std::fs::write(usb.join("serial"), format!("{serial}\n")).unwrap();
        std::fs::write(intf.join("bInterfaceNumber"), format!("{iface:02x}\n")).unwrap();
        let class = sys.join("class/tty").join(tty);
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&port, class.join("device")).unwrap();
    }

    #[test]
    fn usb_identity_finds_the_tty_whatever_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            sys: dir.path().join("sys"),
            dev: PathBuf::from("/dev"),
        };
        fake_adapter(&roots.sys, "ttyUSB3", "0403", "6001", "A1", 0);
        fake_adapter(&roots.sys, "ttyUSB4", "0403", "6011", "B2", 0);
        fake_adapter(&roots.sys, "ttyUSB5", "0403", "6011", "B2", 1);
        // A virtual console: no device behind it.
        std::fs::create_dir_all(roots.sys.join("class/tty/tty1")).unwrap();
        let mut c = Console::new("console", "", 9600);
        let find = |c: &Console| resolve(c, &roots).map_err(|e| e.to_string());
        c.usb = Some("0403:6001".into());
        assert_eq!(find(&c), Ok(PathBuf::from("/dev/ttyUSB3")));
        c.usb = Some("0403:6011:B2:1".into());
        assert_eq!(find(&c), Ok(PathBuf::from("/dev/ttyUSB5")));
        c.usb = Some("0403:6011::0".into());
        assert_eq!(find(&c), Ok(PathBuf::from("/dev/ttyUSB4")));
        c.usb = Some("0403:6001:nope".into());
        assert!(
            find(&c)
                .unwrap_err()
                .contains("no serial adapter with usb 0403:6001 serial nope")
        );
    }
}
