//! Checks a rewritten `postgresql.conf` before a live reconfigure reloads it: Postgres keeps
//! the old value of a setting it cannot apply and only logs why, and the next start would
//! refuse the file altogether, so a bad value must fail the reconfigure instead.

use crate::error::{Error, Result};
use crate::postgres::sql;

/// What `pg_file_settings` (which parses the files anew on every query) says about the lines
/// of `postgresql.conf` that cannot take effect.
#[derive(Debug, Default)]
pub struct Check {
    /// Lines whose value Postgres refuses (`name = value`), and file-level errors (a syntax
    /// error, an include that cannot be read) as `postgresql.conf line N: error`.
    pub invalid: Vec<String>,
    /// Changed settings that need a restart; a reload cannot apply them.
    pub need_restart: Vec<String>,
}

pub fn check_postgresql_conf(connstr: &str) -> Result<Check> {
    let mut client = sql::connect(connstr, None, sql::APP_APPLY)?;
    // Every column but `postmaster` can be NULL: a file-level error has no name or setting.
    let rows = client
        .query(
            "SELECT f.name::text, f.setting, COALESCE(s.context = 'postmaster', false), f.sourceline, f.error
               FROM pg_catalog.pg_file_settings f LEFT JOIN pg_catalog.pg_settings s ON s.name = f.name
              WHERE f.error IS NOT NULL AND f.sourcefile LIKE '%/postgresql.conf'",
            &[],
        )
        .map_err(|e| Error::sql("check postgresql.conf", "postgres", e))?;
    let mut check = Check::default();
    for r in rows {
        let name: Option<String> = r.try_get(0).unwrap_or(None);
        let setting: Option<String> = r.try_get(1).unwrap_or(None);
        let postmaster: bool = r.try_get(2).unwrap_or(false);
        let line: Option<i32> = r.try_get(3).unwrap_or(None);
        let error: Option<String> = r.try_get(4).unwrap_or(None);
        match name {
            Some(name) => {
                let entry = format!("{name} = {:?}", setting.unwrap_or_default());
                if postmaster { check.need_restart.push(entry) } else { check.invalid.push(entry) }
            }
            None => check.invalid.push(format!(
                "postgresql.conf line {}: {}",
                line.map_or_else(|| "?".into(), |l| l.to_string()),
                error.unwrap_or_else(|| "error".into())
            )),
        }
    }
    Ok(check)
}
