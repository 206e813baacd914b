//! The neon extension's Local File Cache, seen through its SQL functions (reference 2026 §5.8):
//! `neon.get_local_cache_state()` returns the cache's contents as bytes, and
//! `neon.prewarm_local_cache(bytea)` loads such bytes back; `neon.get_prewarm_info()` reports
//! what the last prewarm did.
//!
//! Contracts of [`Session`]:
//! - [`Session::open`]: prerequisites: Postgres accepts connections through `--connstr`. On
//!   success: a maintenance connection (no `statement_timeout`) on which `functions` exist. On
//!   error: a sentence for the `failed` state; where a function is missing (vanilla
//!   PostgreSQL) it names the function and the neon extension.
//! - [`Session::prewarm`] can be interrupted from another thread with the [`CancelToken`] of
//!   [`Session::cancel_token`], through Postgres's cancel protocol; it then answers
//!   [`Interrupted::Cancelled`].

use super::{Node, sql};
use crate::error::db_error_text;
use postgres::{CancelToken, Client};

/// `neon.get_local_cache_state()`.
pub const GET_STATE: &str = "neon.get_local_cache_state()";
/// `neon.prewarm_local_cache(bytea)`.
pub const PREWARM: &str = "neon.prewarm_local_cache(bytea)";
/// `neon.get_prewarm_info()`.
pub const PREWARM_INFO: &str = "neon.get_prewarm_info()";

/// A connection for one prewarm or offload.
pub struct Session {
    client: Client,
}

/// What `neon.get_prewarm_info()` reports (its first three columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrewarmInfo {
    pub total: i32,
    pub prewarmed: i32,
    pub skipped: i32,
}

/// Why [`Session::prewarm`] did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interrupted {
    /// The query was cancelled (SQLSTATE 57014).
    Cancelled,
    /// Any other error, as a sentence.
    Failed(String),
}

impl Session {
    /// Connects as `app` and checks that every one of `functions` exists.
    pub fn open(node: &Node, app: &str, functions: &[&str]) -> Result<Session, String> {
        let mut client = sql::connect_maintenance(&node.connstr, None, app).map_err(|e| format!("{}", e.report()))?;
        for f in functions {
            let row = client
                .query_one("SELECT pg_catalog.to_regprocedure($1) IS NOT NULL", &[f])
                .map_err(|e| format!("cannot look up {f}: {}", db_error_text(&e)))?;
            if !row.get::<_, bool>(0) {
                return Err(format!(
                    "the neon extension's function {f} does not exist on this Postgres: the local file cache \
                     needs the neon extension (vanilla PostgreSQL has none)"
                ));
            }
        }
        Ok(Session { client })
    }

    /// The token that cancels this session's running query from another thread.
    pub fn cancel_token(&self) -> CancelToken {
        self.client.cancel_token()
    }

    /// `neon.get_local_cache_state()`: None when the extension has nothing to offload.
    pub fn state(&mut self) -> Result<Option<Vec<u8>>, String> {
        let row = self
            .client
            .query_one("SELECT neon.get_local_cache_state()", &[])
            .map_err(|e| format!("{GET_STATE} failed: {}", db_error_text(&e)))?;
        row.try_get(0).map_err(|e| format!("{GET_STATE} did not return bytea: {e}"))
    }

    /// `neon.prewarm_local_cache($1)` with `bytes`.
    pub fn prewarm(&mut self, bytes: &[u8]) -> Result<(), Interrupted> {
        match self.client.execute("SELECT neon.prewarm_local_cache($1)", &[&bytes]) {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&postgres::error::SqlState::QUERY_CANCELED) => Err(Interrupted::Cancelled),
            Err(e) => Err(Interrupted::Failed(format!("{PREWARM} failed: {}", db_error_text(&e)))),
        }
    }

    /// `neon.get_prewarm_info()`.
    pub fn info(&mut self) -> Result<PrewarmInfo, String> {
        let fail = |e: String| format!("{PREWARM_INFO} failed: {e}");
        let row = self
            .client
            .query_one("SELECT * FROM neon.get_prewarm_info()", &[])
            .map_err(|e| fail(db_error_text(&e).to_string()))?;
        let col = |i: usize| -> Result<i32, String> {
            // Neon's function answers int4 columns; a bigint stand-in is read too.
            row.try_get::<_, i32>(i)
                .or_else(|_| row.try_get::<_, i64>(i).map(|v| i32::try_from(v).unwrap_or(i32::MAX)))
                .map_err(|e| fail(format!("column {i}: {e}")))
        };
        Ok(PrewarmInfo { total: col(0)?, prewarmed: col(1)?, skipped: col(2)? })
    }
}
