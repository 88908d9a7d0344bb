//! Device and operator names, and the SSH login forms (`NAME`, `OPERATOR:DEVICE/CONSOLE`).

use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {kind} name {name:?}: use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit"
)]
pub struct InvalidName {
    /// "device", "operator" or "console".
    pub kind: &'static str,
    /// The refused input.
    pub name: String,
}

/// Longest name accepted, like a DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// True when `name` matches `[a-z0-9][a-z0-9-]{0,62}`.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(first) if first.is_ascii_lowercase() || first.is_ascii_digit() => {}
        _ => return false,
    }
    bytes.len() <= MAX_NAME_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Checks a name of the given kind ("device", "operator", "console").
pub fn check_name(kind: &'static str, name: &str) -> Result<(), InvalidName> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(InvalidName {
            kind,
            name: name.to_string(),
        })
    }
}

/// The console a login names when it names none.
pub const DEFAULT_CONSOLE: &str = "console";

/// What an SSH user name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// A device or an operator, told apart by the registry.
    Plain(String),
    /// `OPERATOR:DEVICE[/CONSOLE]`: an operator straight into a device's console.
    Console {
        /// The operator who authenticates.
        operator: String,
        /// The device whose console is wanted.
        device: String,
        /// The console on that device.
        console: String,
    },
}

impl Login {
    /// Parses an SSH user name.
    pub fn parse(user: &str) -> Result<Login, InvalidName> {
        let Some((operator, target)) = user.split_once(':') else {
            check_name("device or operator", user)?;
            return Ok(Login::Plain(user.to_string()));
        };
        check_name("operator", operator)?;
        let (device, console) = target.split_once('/').unwrap_or((target, DEFAULT_CONSOLE));
        check_name("device", device)?;
        check_name("console", console)?;
        Ok(Login::Console {
            operator: operator.to_string(),
            device: device.to_string(),
            console: console.to_string(),
        })
    }

    /// The name whose credentials authenticate this login.
    pub fn principal(&self) -> &str {
        match self {
            Login::Plain(name) => name,
            Login::Console { operator, .. } => operator,
        }
    }
}

impl fmt::Display for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Login::Plain(name) => f.write_str(name),
            Login::Console {
                operator,
                device,
                console,
            } => write!(f, "{operator}:{device}/{console}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "garage-pi", "0", "pi-01", &"a".repeat(63)] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-pi",
            "Pi",
            "pi_01",
            "pi.local",
            "pi:1",
            "pi/x",
            "ü",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn logins() {
        assert_eq!(
            Login::parse("garage-pi"),
            Ok(Login::Plain("garage-pi".into()))
        );
        assert_eq!(
            Login::parse("alice:garage-pi"),
            Ok(Login::Console {
                operator: "alice".into(),
                device: "garage-pi".into(),
                console: "console".into()
            })
        );
        assert_eq!(
            Login::parse("alice:garage-pi/ttyusb1")
                .map(|l| l.to_string())
                .as_deref(),
            Ok("alice:garage-pi/ttyusb1")
        );
        for bad in [
            "alice:",
            ":pi",
            "alice:pi/",
            "alice:pi/a/b",
            "a:b:c",
            "Alice",
        ] {
            assert!(Login::parse(bad).is_err(), "{bad}");
        }
    }
}
