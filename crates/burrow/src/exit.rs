//! Exit codes (sysexits.h) and the error type that carries one.

/// Bad command line.
pub const USAGE: i32 = 64;
/// Input data (a key, a listing) is malformed.
pub const DATAERR: i32 = 65;
/// A file could not be read.
pub const NOINPUT: i32 = 66;
/// Internal failure.
pub const SOFTWARE: i32 = 70;
/// An operating system error (cannot bind, ...).
pub const OSERR: i32 = 71;
/// EX_TEMPFAIL: a temporary failure (the database cannot be reached); try again.
pub const TEMPFAIL: i32 = 75;
/// Bad configuration.
pub const CONFIG: i32 = 78;

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

pub type Result<T = ()> = std::result::Result<T, Failure>;
