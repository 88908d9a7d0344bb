//! Serial consoles terminated at the relay: one writer, many viewers, recordings, escapes.
//!
//! # Layout
//! - [`recording`]: asciicast v2 files under `DATA/recordings/DEVICE/`, written as things happen.
//! - `hub`: one live connection to a device's console, shared by every operator attached to it.
//! - `session`: an operator's console session: escapes, write/read-only, notices.
//! - `menu`: the interactive list of consoles for `ssh -t OPERATOR@relay`.
//! - [`portlog`]: port logs uploaded by agents, stored per console, read back as lines.
//! - `upload`: the relay's end of an agent's upload channel (port logs, console alerts).
//! - `actions`: what the newer escapes do (replay, who, status, settings, power).
//! - `commands`: `console set|power|log|who` as exec commands.

pub(crate) mod actions;
mod commands;
mod hub;
mod menu;
pub mod portlog;
pub mod recording;
mod session;
pub(crate) mod upload;

pub(crate) use commands::console_exec;
pub(crate) use hub::{Attached, BREAK_DURATION, Hub, Hubs, Out, Role};
pub(crate) use menu::run_menu;
pub(crate) use session::{DEFAULT_SIZE, Mode, attach, notice_line, run_console, term_size};
pub(crate) use upload::SeenAlerts;
