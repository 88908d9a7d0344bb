//! Serial consoles terminated at the relay: one writer, many viewers, recordings, escapes.
//!
//! # Layout
//! - [`recording`]: asciicast v2 files under `DATA/recordings/DEVICE/`, written as things happen.
//! - `hub`: one live connection to a device's console, shared by every operator attached to it.
//! - `session`: an operator's console session: escapes, write/read-only, notices.
//! - `menu`: the interactive list of consoles for `ssh -t OPERATOR@relay`.

mod hub;
mod menu;
pub mod recording;
mod session;

pub(crate) use hub::Hubs;
pub(crate) use menu::run_menu;
pub(crate) use session::{DEFAULT_SIZE, Mode, attach, console_exec, run_console, term_size};
