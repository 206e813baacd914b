//! Checks a rewritten `postgresql.conf` before a live reconfigure reloads it: Postgres keeps
//! the old value of a setting it cannot apply and only logs why, and the next start would
//! refuse the file altogether, so a bad value must fail the reconfigure instead.

use crate::error::{Error, Result};
use crate::postgres::process::RunAs;
use crate::postgres::sql;
use std::path::Path;

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

/// Parses the configuration as the next start would, with `postgres -D PGDATA -C port`
/// (allowed beside a running server; it reads the files and exits). This catches what
/// `pg_file_settings` cannot tell from a pending restart: an invalid value of a restart-only
/// setting (`shared_buffers = 'abc'`), or a bad line in an included file. The error is
/// Postgres's own message.
pub fn check_startable(postgres: &Path, pgdata: &Path, run_as: Option<RunAs>) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(postgres);
    cmd.arg("-D").arg(pgdata).args(["-C", "port"]).env("LC_ALL", "C").stdin(std::process::Stdio::null());
    if let Some(u) = run_as {
        cmd.uid(u.uid).gid(u.gid);
    }
    let out =
        cmd.output().map_err(|e| Error::Process { what: "cannot run postgres -C".into(), detail: e.to_string() })?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    Err(Error::invalid("postgresql.conf", format!("the next start would fail: {}", lines.join("; "))))
}
