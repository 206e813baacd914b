//! Turning a standby into the primary (`POST /promote`, reference 5.6): wait until it has
//! replayed the old primary's last WAL, switch the walproposer on where the neon extension
//! runs, and promote.
//!
//! Contracts of [`promote`]:
//! - prerequisites: Postgres runs and is in recovery (a standby);
//! - on success: Postgres has left recovery and accepts writes; the timings of each step;
//! - on error: what failed. Before `pg_promote` nothing has changed, so the call can be
//!   retried; the Neon-only `ALTER SYSTEM` lines may have been written (they are rewritten by
//!   the next try).

use super::{Node, sql, subscriptions};
use crate::error::{Error, Result};
use crate::spec::{Lsn, ParsedSpec, StorageMode};
use postgres::Client;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long the standby may take to replay up to `wal_flush_lsn` (Neon: 20 tries, 1 s apart).
const CATCH_UP: Duration = Duration::from_secs(20);

/// How long the promotion may take once asked for.
const PROMOTE_WAIT: Duration = Duration::from_secs(60);

/// Neon's `PromoteState::Completed` timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timings {
    pub lsn_wait_time_ms: u32,
    pub pg_promote_time_ms: u32,
    /// Filled in by the caller, who reconfigures after the promotion.
    pub reconfigure_time_ms: u32,
}

/// Promotes the standby `node` runs. `current` is the spec it runs with, `new` the primary's.
pub fn promote(node: &Node, current: &ParsedSpec, new: &ParsedSpec, wal_flush_lsn: Lsn) -> Result<Timings> {
    let mut client = sql::connect_maintenance(&node.connstr, None, "compute_ctl:promote")?;
    let q = |c: &mut Client, query: &str| c.query_one(query, &[]).map_err(|e| Error::sql("promote", "postgres", e));
    let in_recovery: bool = q(&mut client, "SELECT pg_catalog.pg_is_in_recovery()")?.get(0);
    if !in_recovery {
        return Err(Error::invalid("promote", "compute is not a standby (pg_is_in_recovery() is false)"));
    }
    let neon = subscriptions::preloads_neon(current);
    if !neon {
        log::info!("promote: the neon extension is not loaded: no LFC prewarm precondition");
    }

    let started = Instant::now();
    let deadline = started + CATCH_UP;
    loop {
        let replayed: Option<String> = q(&mut client, "SELECT pg_catalog.pg_last_wal_replay_lsn()::text")?.get(0);
        let replayed = replayed.as_deref().and_then(|t| t.parse::<Lsn>().ok());
        if replayed.is_some_and(|l| l >= wal_flush_lsn) {
            break;
        }
        if Instant::now() >= deadline || node.interrupted.load(Ordering::SeqCst) {
            let at = replayed.map_or("nothing".to_string(), |l| l.to_string());
            return Err(Error::invalid(
                "wal_flush_lsn",
                format!("the standby did not replay up to {wal_flush_lsn} in {} s (replayed {at})", CATCH_UP.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let lsn_wait_time_ms = ms(started);

    match new.storage() {
        StorageMode::Pageserver { .. } if neon => {
            let safekeepers = new.spec().safekeeper_connstrings.join(",");
            let set = format!("ALTER SYSTEM SET neon.safekeepers TO {}", crate::escape::quote_literal(&safekeepers));
            for stmt in [set.as_str(), "ALTER SYSTEM SET synchronous_standby_names TO walproposer"] {
                client.batch_execute(stmt).map_err(|e| Error::sql("promote: safekeepers", "postgres", e))?;
            }
            q(&mut client, "SELECT pg_catalog.pg_reload_conf()")?;
        }
        _ => log::info!(
            "promote: no neon extension or no safekeepers: neon.safekeepers and \
             synchronous_standby_names = walproposer are skipped (they would hang every commit here)"
        ),
    }

    // pg_promote's own wait (like `pg_ctl promote -w`) checks every 100 ms; polling
    // pg_is_in_recovery() every millisecond sees the end of the promotion when it happens.
    let started = Instant::now();
    let signalled: bool = q(&mut client, "SELECT pg_catalog.pg_promote(false)")?.get(0);
    if !signalled {
        return Err(Error::invalid("promote", "pg_promote() could not signal the startup process"));
    }
    let deadline = started + PROMOTE_WAIT;
    loop {
        let in_recovery: bool = q(&mut client, "SELECT pg_catalog.pg_is_in_recovery()")?.get(0);
        if !in_recovery {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error::invalid(
                "promote",
                format!("the promotion did not finish in {} s", PROMOTE_WAIT.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let read_only: String = q(&mut client, "SHOW transaction_read_only")?.get(0);
    if read_only == "on" {
        return Err(Error::invalid("promote", "promoted, but transaction_read_only is still on"));
    }
    Ok(Timings { lsn_wait_time_ms, pg_promote_time_ms: ms(started), reconfigure_time_ms: 0 })
}

fn ms(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_millis()).unwrap_or(u32::MAX)
}
