//! The one error type of the crate.
//!
//! Every variant carries the context a user needs to act on it (the field, the file, the
//! phase, the database). `Display` is lowercase, has no trailing period and does not repeat
//! the source; `source()` returns it.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in compute_ctl.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A command-line problem; the message names the flag.
    Usage(String),
    /// The spec is not valid JSON or has a field of the wrong type.
    SpecJson(serde_json::Error),
    /// The spec parsed but a field fails validation.
    SpecInvalid { field: String, reason: String },
    /// A file or directory operation failed.
    Io { context: String, path: PathBuf, source: io::Error },
    /// A child process could not be spawned or failed.
    Process { what: String, detail: String },
    /// Postgres did not become ready.
    PostgresStart { reason: String, log_tail: String },
    /// A SQL statement failed; `phase` says which step of the start or apply ran it.
    Sql { phase: String, database: String, source: postgres::Error },
    /// Fetching or unpacking the basebackup failed.
    Basebackup(String),
    /// The control plane could not be asked for a spec.
    ControlPlane(String),
    /// Start-up was interrupted by a termination request.
    Interrupted,
    /// A request named a database that does not exist.
    NoSuchDatabase(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io { context: context.into(), path: path.into(), source }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::SpecInvalid { field: field.into(), reason: reason.into() }
    }

    pub(crate) fn sql(phase: impl Into<String>, database: impl Into<String>, source: postgres::Error) -> Error {
        Error::Sql { phase: phase.into(), database: database.into(), source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => write!(f, "{msg}"),
            Error::SpecJson(e) => write!(f, "invalid spec: {e}"),
            Error::SpecInvalid { field, reason } => write!(f, "invalid spec: {field}: {reason}"),
            Error::Io { context, path, source } => {
                write!(f, "{context} {}: {source}", path.display())
            }
            Error::Process { what, detail } => write!(f, "{what}: {detail}"),
            Error::PostgresStart { reason, log_tail } if log_tail.is_empty() => {
                write!(f, "postgres did not start: {reason}")
            }
            Error::PostgresStart { reason, log_tail } => {
                write!(f, "postgres did not start: {reason}; last log lines:\n{log_tail}")
            }
            Error::Sql { phase, database, source } => {
                write!(f, "{phase} in database {database:?}: {}", db_error_text(source))
            }
            Error::Basebackup(msg) => write!(f, "basebackup: {msg}"),
            Error::ControlPlane(msg) => write!(f, "control plane: {msg}"),
            Error::Interrupted => write!(f, "interrupted by a termination request"),
            // Neon's exact words, which clients match; the name is in the request.
            Error::NoSuchDatabase(_) => write!(f, "database does not exist"),
        }
    }
}

/// The server's own message when there is one (the `postgres` crate's `Display` says only
/// "db error"), so that `/status` shows the real cause.
pub(crate) fn db_error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code()),
        // The crate's own errors ("invalid configuration", "error connecting to server") keep
        // the useful part in their source.
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::SpecJson(e) => Some(e),
            Error::Io { source, .. } => Some(source),
            Error::Sql { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
