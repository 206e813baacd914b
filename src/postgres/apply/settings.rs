//! Checks a rewritten `postgresql.conf` before a live reconfigure reloads it: Postgres keeps
//! the old value of a setting it cannot apply and only logs why, and the next start would
//! refuse the file altogether, so a bad value must fail the reconfigure instead.

use crate::error::{Error, Result};
use crate::postgres::sql;

/// What `pg_file_settings` (which parses the files anew on every query) says about the lines
/// of `postgresql.conf` that cannot take effect.
#[derive(Debug, Default)]
pub struct Check {
    /// Lines whose value Postgres refuses (`name = value`).
    pub invalid: Vec<String>,
    /// Changed settings that need a restart; a reload cannot apply them.
    pub need_restart: Vec<String>,
}

pub fn check_postgresql_conf(connstr: &str) -> Result<Check> {
    let mut client = sql::connect(connstr, None, sql::APP_APPLY)?;
    let rows = client
        .query(
            "SELECT f.name, COALESCE(f.setting, ''), COALESCE(s.context = 'postmaster', false)
               FROM pg_catalog.pg_file_settings f LEFT JOIN pg_catalog.pg_settings s ON s.name = f.name
              WHERE f.error IS NOT NULL AND f.sourcefile LIKE '%/postgresql.conf'",
            &[],
        )
        .map_err(|e| Error::sql("check postgresql.conf", "postgres", e))?;
    let mut check = Check::default();
    for r in rows {
        let (name, setting, postmaster): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
        let line = format!("{name} = {setting:?}");
        if postmaster { check.need_restart.push(line) } else { check.invalid.push(line) }
    }
    Ok(check)
}

/// When Postgres last loaded its configuration files, as it prints the time; compare it
/// before and after a reload to know when the reload was taken.
pub fn conf_load_time(client: &mut postgres::Client) -> Result<String> {
    let row = client
        .query_one("SELECT pg_catalog.pg_conf_load_time()::text", &[])
        .map_err(|e| Error::sql("read pg_conf_load_time", "postgres", e))?;
    Ok(row.get(0))
}

/// The settings whose new value waits for a restart (`pg_settings.pending_restart`), sorted,
/// read once Postgres has taken the reload asked for after `loaded_before` (the
/// [`conf_load_time`] seen before it), polling at most `wait` for that.
pub fn pending_restart(
    client: &mut postgres::Client,
    loaded_before: &str,
    wait: std::time::Duration,
) -> Result<Vec<String>> {
    let deadline = std::time::Instant::now() + wait;
    // A backend takes a reload between two commands, once the postmaster has passed it on.
    while conf_load_time(client)? == loaded_before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let rows = client
        .query("SELECT name FROM pg_catalog.pg_settings WHERE pending_restart ORDER BY name", &[])
        .map_err(|e| Error::sql("read pg_settings", "postgres", e))?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}
