//! The Postgres side of the routes that query a running compute: `/insights`,
//! `/check_writability`, `/extensions`, `/grants`. Each opens its own short connection with
//! `--connstr`, tagged `compute_ctl:<what>` so the activity monitor does not count it as user
//! activity. Errors keep their cause; the HTTP layer maps them to status codes.

use super::{Node, sql};
use crate::error::{Error, Result, db_error_text};
use crate::escape::quote_ident;

/// The top 100 statements of `pg_stat_statements` by mean time, excluding compute_ctl's own
/// superuser, as a JSON array. Empty when the extension is not installed or cannot be read
/// (logged), as in Neon.
pub fn insights(node: &Node) -> Result<serde_json::Value> {
    let mut client = sql::connect(&node.connstr, None, "compute_ctl:insights")?;
    let superuser = sql::connstr_user(&node.connstr).unwrap_or_default();
    let query = "SELECT coalesce(json_agg(row_to_json(s)), '[]'::json)::text FROM ( \
                   SELECT * FROM pg_stat_statements \
                   WHERE userid IS DISTINCT FROM (SELECT oid FROM pg_roles WHERE rolname = $1) \
                   ORDER BY (mean_exec_time + mean_plan_time) DESC LIMIT 100) s";
    let installed = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')", &[])
        .map(|r| r.get::<_, bool>(0))
        .map_err(|e| {
            Error::sql("cannot query pg_extension", sql::connstr_dbname(&node.connstr).unwrap_or_default(), e)
        })?;
    if !installed {
        return Ok(serde_json::Value::Array(vec![]));
    }
    Ok(match client.query_one(query, &[&superuser]) {
        Ok(row) => serde_json::from_str(row.get::<_, &str>(0)).unwrap_or(serde_json::Value::Array(vec![])),
        Err(e) => {
            log::warn!("cannot read pg_stat_statements: {}", db_error_text(&e));
            serde_json::Value::Array(vec![])
        }
    })
}

/// An upsert into `public.health_check`. A full disk is logged and still counts as success,
/// as in Neon.
pub fn check_writability(node: &Node) -> Result<()> {
    let mut client = sql::connect(&node.connstr, None, "compute_ctl:check_writability")?;
    let result = client.batch_execute(
        "CREATE TABLE IF NOT EXISTS public.health_check (id integer PRIMARY KEY, updated_at timestamptz DEFAULT now()); \
         INSERT INTO public.health_check VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET updated_at = now();",
    );
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&postgres::error::SqlState::DISK_FULL) => {
            log::warn!("tenant disk is full: {}", db_error_text(&e));
            Ok(())
        }
        Err(e) => Err(Error::sql("checking writability", sql::connstr_dbname(&node.connstr).unwrap_or_default(), e)),
    }
}

/// Installs `extension` at `version` in `database`, or updates it to that version.
pub fn install_extension(node: &Node, database: &str, extension: &str, version: &str) -> Result<()> {
    let mut c = sql::connect(&node.connstr, Some(database), "compute_ctl:install_extension")?;
    let installed: Option<String> = c
        .query_opt("SELECT extversion FROM pg_extension WHERE extname = $1", &[&extension])
        .map_err(|e| Error::sql("reading pg_extension", database, e))?
        .map(|r| r.get(0));
    let (ext, ver) = (quote_ident(extension), quote_ident(version));
    let stmt = match installed {
        Some(v) if v == version => return Ok(()),
        Some(_) => format!("ALTER EXTENSION {ext} UPDATE TO {ver}"),
        None => format!("CREATE EXTENSION IF NOT EXISTS {ext} WITH VERSION {ver}"),
    };
    c.batch_execute(&stmt).map_err(|e| Error::sql(format!("installing extension {extension:?}"), database, e))
}

/// `GRANT <privileges> ON SCHEMA "<schema>" TO "<role>"` in `database`. The privileges are
/// keywords the caller has checked against a fixed list.
pub fn grant_on_schema(node: &Node, database: &str, schema: &str, privileges: &[&str], role: &str) -> Result<()> {
    let stmt = format!("GRANT {} ON SCHEMA {} TO {}", privileges.join(", "), quote_ident(schema), quote_ident(role));
    let mut c = sql::connect(&node.connstr, Some(database), "compute_ctl:set_role_grants")?;
    c.batch_execute(&stmt).map_err(|e| Error::sql("granting privileges on a schema", database, e))
}
