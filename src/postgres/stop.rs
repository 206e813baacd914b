//! The `CHECKPOINT` before a fast shutdown. A fast shutdown refuses new connections at once
//! and then writes the shutdown checkpoint: every dirty buffer. A checkpoint run just before,
//! while Postgres still serves, leaves that final one little to write, so the window in which
//! clients are refused shrinks to about the time of the last few seconds' writes.
//!
//! Bounded: the `CHECKPOINT` waits at most the given time (`statement_timeout`); when the bound
//! passes, the wait is cancelled and the fast shutdown goes ahead (the checkpointer finishes
//! the checkpoint it began, and the shutdown checkpoint follows it). Skipped when Postgres
//! cannot take it: no connection within the bound (it is starting, stopping or overloaded), or
//! the bound is zero.

use crate::error::db_error_text;
use crate::postgres::sql;
use postgres::NoTls;
use std::time::{Duration, Instant};

/// What the pre-stop checkpoint did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// Finished in this time.
    Done(Duration),
    /// The bound passed first; the wait was cancelled.
    TimedOut(Duration),
    /// Not run, and why.
    Skipped(String),
    /// Postgres refused or failed it (the fast shutdown goes ahead anyway).
    Failed(String),
}

/// The application name of the checkpoint's connection.
pub const APP: &str = "compute_ctl:pre_stop_checkpoint";

/// Runs `CHECKPOINT` through `connstr`, waiting at most `bound` in all (connection included).
pub fn checkpoint(connstr: &str, bound: Duration) -> Checkpoint {
    if bound.is_zero() {
        return Checkpoint::Skipped("--pre-stop-checkpoint is 0".into());
    }
    let started = Instant::now();
    let mut config = match sql::config(connstr) {
        Ok(c) => c,
        Err(e) => return Checkpoint::Skipped(e.to_string()),
    };
    config.application_name(APP);
    // libpq-style timeouts are whole seconds at best; the statement timeout below is exact.
    config.connect_timeout(bound.min(Duration::from_secs(2)).max(Duration::from_millis(100)));
    let mut client = match config.connect(NoTls) {
        Ok(c) => c,
        Err(e) => return Checkpoint::Skipped(format!("postgres takes no connection: {}", db_error_text(&e))),
    };
    let left = bound.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
    let set = format!("SET statement_timeout = {}", left.as_millis().max(1));
    if let Err(e) = client.batch_execute(&set) {
        return Checkpoint::Failed(db_error_text(&e));
    }
    match client.batch_execute("CHECKPOINT") {
        Ok(()) => Checkpoint::Done(started.elapsed()),
        Err(e) if e.code() == Some(&postgres::error::SqlState::QUERY_CANCELED) => {
            Checkpoint::TimedOut(started.elapsed())
        }
        Err(e) => Checkpoint::Failed(db_error_text(&e)),
    }
}

impl Checkpoint {
    /// One log line's worth.
    pub fn describe(&self) -> String {
        match self {
            Checkpoint::Done(d) => format!("pre-stop checkpoint done in {} ms", d.as_millis()),
            Checkpoint::TimedOut(d) => {
                format!("pre-stop checkpoint cut short after {} ms; the shutdown checkpoint finishes it", d.as_millis())
            }
            Checkpoint::Skipped(why) => format!("pre-stop checkpoint skipped: {why}"),
            Checkpoint::Failed(why) => format!("pre-stop checkpoint failed ({why}); stopping anyway"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_bound_and_unreachable_postgres_skip_it_quickly() {
        assert!(matches!(checkpoint("postgresql://a@127.0.0.1:1/postgres", Duration::ZERO), Checkpoint::Skipped(_)));
        let started = Instant::now();
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let c = checkpoint("postgresql://a@127.0.0.1:1/postgres", Duration::from_secs(5));
        assert!(matches!(c, Checkpoint::Skipped(ref why) if why.contains("no connection")), "{c:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
