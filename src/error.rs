//! The one error type of the crate.
//!
//! Every variant carries the context a user needs to act on it (the field, the file, the
//! phase, the database). `Display` is lowercase, has no trailing period and does not repeat
//! the source; `source()` returns it.

use std::fmt;
use std::io;
use std::net::SocketAddr;
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
    /// A process, thread or signal handler could not be started or talked to.
    System { what: String, source: io::Error },
    /// A child process failed; `detail` is what it said.
    Process { what: String, detail: String },
    /// An HTTP server could not bind its address.
    Bind { server: &'static str, addr: SocketAddr, source: io::Error },
    /// Postgres did not become ready.
    PostgresStart { reason: String, log_tail: String },
    /// A SQL statement failed; `phase` says which step of the start or apply ran it.
    Sql { phase: String, database: String, source: postgres::Error },
    /// Fetching or unpacking the basebackup failed.
    Basebackup { what: String, source: Option<Box<dyn std::error::Error + Send + Sync>> },
    /// A step failed because of the error inside.
    Step { what: String, source: Box<Error> },
    /// The control plane could not be asked for a spec.
    ControlPlane(String),
    /// Start-up was interrupted by a termination request.
    Interrupted,
    /// A request named a database that does not exist.
    NoSuchDatabase(String),
    /// A table stayed locked longer than the step waits (the message says which step).
    LockTimeout(String),
    /// A library of `shared_preload_libraries` could not be fetched from the remote
    /// extension storage before Postgres started.
    Preload { library: String, reason: String },
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

    pub(crate) fn system(what: impl Into<String>, source: io::Error) -> Error {
        Error::System { what: what.into(), source }
    }

    pub(crate) fn basebackup(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Basebackup { what: what.into(), source: Some(Box::new(source)) }
    }

    pub(crate) fn step(what: impl Into<String>, source: Error) -> Error {
        Error::Step { what: what.into(), source: Box::new(source) }
    }

    /// The message with its causes, as a user sees it in the log, `/status` and HTTP bodies.
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => write!(f, "{msg}"),
            Error::SpecJson(_) => write!(f, "invalid spec"),
            Error::SpecInvalid { field, reason } => write!(f, "invalid spec: {field}: {reason}"),
            Error::Io { context, path, .. } => write!(f, "{context} {}", path.display()),
            Error::System { what, .. } => write!(f, "{what}"),
            Error::Process { what, detail } => write!(f, "{what}: {detail}"),
            Error::Bind { server, addr, .. } => write!(f, "cannot bind the {server} HTTP server to {addr}"),
            Error::PostgresStart { reason, log_tail } if log_tail.is_empty() => {
                write!(f, "postgres did not start: {reason}")
            }
            Error::PostgresStart { reason, log_tail } => {
                write!(f, "postgres did not start: {reason}; last log lines:\n{log_tail}")
            }
            Error::Sql { phase, database, .. } => write!(f, "{phase} in database {database:?}"),
            Error::Basebackup { what, .. } => write!(f, "{what}"),
            Error::Step { what, .. } => write!(f, "{what}"),
            Error::ControlPlane(msg) => write!(f, "control plane: {msg}"),
            Error::Interrupted => write!(f, "interrupted by a termination request"),
            // Neon's exact words, which clients match; the name is in the request.
            Error::NoSuchDatabase(_) => write!(f, "database does not exist"),
            Error::LockTimeout(msg) => write!(f, "{msg}"),
            Error::Preload { library, reason } => {
                write!(f, "cannot preload shared library {library} (named by shared_preload_libraries): {reason}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::SpecJson(e) => Some(e),
            Error::Io { source, .. } | Error::System { source, .. } | Error::Bind { source, .. } => Some(source),
            Error::Sql { source, .. } => Some(source),
            Error::Basebackup { source, .. } => source.as_deref().map(|e| e as _),
            Error::Step { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// An error and its causes, `what: why: root cause`. A Postgres error shows the server's own
/// message (severity, text, SQLSTATE) and ends the chain.
pub struct Report<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            if let Some(pg) = e.downcast_ref::<postgres::Error>() {
                return write!(f, ": {}", db_error_text(pg));
            }
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
