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
