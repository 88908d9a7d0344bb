//! Reading a new password for `--password-stdin`: one line from a pipe, or a prompt without echo,
//! asked twice, on a terminal.

use std::io::{BufRead, IsTerminal, Write};

use crate::exit::{self, Failure, Result};

/// Reads the new password for `whom`: from a terminal without echo (twice, compared), else one
/// line from stdin.
pub fn read_new(whom: &str) -> Result<String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt(&format!("New password for {whom}: "))?;
        let second = prompt(&format!("Retype the password for {whom}: "))?;
        if first != second {
            return Err(Failure::new(
                exit::DATAERR,
                "the two passwords differ; nothing was changed",
            ));
        }
        first
    } else {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).map_err(|e| {
            Failure::new(
                exit::NOINPUT,
                format!("cannot read password from stdin: {e}"),
            )
        })?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        return Err(Failure::new(
            exit::DATAERR,
            "empty password; nothing was changed",
        ));
    }
    Ok(password)
}

/// One line from the terminal on stdin with echo off; echo is restored however it ends.
fn prompt(text: &str) -> Result<String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin)
        .map_err(|e| Failure::new(exit::OSERR, format!("cannot read terminal settings: {e}")))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&stdin, OptionalActions::Flush, &quiet)
        .map_err(|e| Failure::new(exit::OSERR, format!("cannot turn off echo: {e}")))?;
    let mut err = std::io::stderr();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(&stdin, OptionalActions::Flush, &saved);
    read.map_err(|e| Failure::new(exit::NOINPUT, format!("cannot read password: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
