//! Neon's numbered catalog migrations (reference 2026 §7.4), run once per database cluster
//! after the start-up catalog apply of a Primary, never with `skip_pg_catalog_updates`.
//!
//! Tracking is Neon's own, so a cluster migrated by Neon's compute_ctl is not migrated again
//! here, and the reverse: table `neon_migration.migration_id` holds one row `(0, id)`, `id`
//! being the number of migrations done; migration `i` (1-based) runs when `id < i`, in its
//! own transaction that also sets `id = i`. Migrations Neon retired (`-- SKIP`) only advance
//! the id.
//!
//! Differences from Neon, on purpose:
//! - a migration that needs an object this cluster lacks (a role or function of a newer
//!   PostgreSQL, or the privileged role itself) is *skipped*: the id advances, a row goes to
//!   `neon_migration.skipped (id, reason)` and a log line says why. Neon runs such files as
//!   no-ops (their SQL checks the server version), which advances the id the same way;
//! - they run on the start-up path rather than on a background task, so `running` means
//!   migrated (a few milliseconds on a new cluster, one query afterwards);
//! - a failure is logged and counted (`compute_ctl_db_migration_failed_total`) and stops the
//!   run, as in Neon; it never fails the start.
//!
//! The SQL is written from the reference's description of each file; `{role}` is the
//! privileged role as an identifier, `{role_literal}` as a string literal.

use crate::error::{Error, Result};
use crate::escape::{quote_ident, quote_literal};
use postgres::Client;

/// Application name of the migrations' connection, as Neon's.
pub const APP_MIGRATIONS: &str = "compute_ctl:migrations";

/// What a migration needs besides the privileged role, as (description, query returning a
/// boolean).
type Need = (&'static str, &'static str);

/// One migration: `sql` None is a retired one (Neon's `-- SKIP`).
struct Migration {
    name: &'static str,
    sql: Option<&'static str>,
    needs: Option<Need>,
    uses_role: bool,
}

const fn m(name: &'static str, sql: &'static str) -> Migration {
    Migration { name, sql: Some(sql), needs: None, uses_role: true }
}

const fn retired(name: &'static str) -> Migration {
    Migration { name, sql: None, needs: None, uses_role: false }
}

const NEEDS_CREATE_SUBSCRIPTION: Need = (
    "role pg_create_subscription (PostgreSQL 16 and later)",
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pg_create_subscription')",
);

const NEEDS_LOG_STANDBY_SNAPSHOT: Need = (
    "function pg_log_standby_snapshot (PostgreSQL 16 and later)",
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE proname = 'pg_log_standby_snapshot' \
     AND pronamespace = 'pg_catalog'::pg_catalog.regnamespace)",
);

/// Neon's migrations 0001..=0012, in order; the position is the id.
const MIGRATIONS: [Migration; 12] = [
    m("0001-add_bypass_rls_to_privileged_role", "ALTER ROLE {role} BYPASSRLS"),
    // Undoes an old bug that gave every role BYPASSRLS: members of the privileged role (a
    // superuser counts as one) inherit its rights, every other role loses BYPASSRLS.
    m(
        "0002-alter_roles",
        "DO $migration$
DECLARE
    r pg_catalog.text;
BEGIN
    FOR r IN SELECT rolname::pg_catalog.text FROM pg_catalog.pg_roles
             WHERE pg_catalog.pg_has_role(rolname, {role_literal}, 'member') LOOP
        EXECUTE pg_catalog.format('ALTER ROLE %I INHERIT', r);
    END LOOP;
    FOR r IN SELECT rolname::pg_catalog.text FROM pg_catalog.pg_roles
             WHERE NOT pg_catalog.pg_has_role(rolname, {role_literal}, 'member')
               AND rolname::pg_catalog.text NOT LIKE 'pg\\_%' LOOP
        EXECUTE pg_catalog.format('ALTER ROLE %I NOBYPASSRLS', r);
    END LOOP;
END
$migration$",
    ),
    Migration {
        name: "0003-grant_pg_create_subscription_to_privileged_role",
        sql: Some("GRANT pg_create_subscription TO {role}"),
        needs: Some(NEEDS_CREATE_SUBSCRIPTION),
        uses_role: true,
    },
    m("0004-grant_pg_monitor_to_privileged_role", "GRANT pg_monitor TO {role} WITH ADMIN OPTION"),
    retired("0005-grant_all_on_tables_to_privileged_role"),
    retired("0006-grant_all_on_sequences_to_privileged_role"),
    retired("0007-grant_all_on_tables_with_grant_option_to_privileged_role"),
    retired("0008-grant_all_on_sequences_with_grant_option_to_privileged_role"),
    retired("0009-revoke_replication_for_previously_allowed_roles"),
    Migration {
        name: "0010-grant_snapshot_synchronization_funcs_to_privileged_role",
        sql: Some(
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_export_snapshot() TO {role};
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_log_standby_snapshot() TO {role}",
        ),
        needs: Some(NEEDS_LOG_STANDBY_SNAPSHOT),
        uses_role: true,
    },
    m(
        "0011-grant_pg_show_replication_origin_status_to_privileged_role",
        "GRANT EXECUTE ON FUNCTION pg_catalog.pg_show_replication_origin_status() TO {role}",
    ),
    m("0012-grant_pg_signal_backend_to_privileged_role", "GRANT pg_signal_backend TO {role} WITH ADMIN OPTION"),
];

/// How many migrations this build knows.
pub const COUNT: i64 = MIGRATIONS.len() as i64;

const SETUP: &str = "CREATE SCHEMA IF NOT EXISTS neon_migration;
CREATE TABLE IF NOT EXISTS neon_migration.migration_id (key pg_catalog.int4 NOT NULL PRIMARY KEY, \
    id pg_catalog.int8 NOT NULL DEFAULT 0);
INSERT INTO neon_migration.migration_id VALUES (0, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS neon_migration.skipped (id pg_catalog.int8 NOT NULL PRIMARY KEY, \
    reason pg_catalog.text NOT NULL);
ALTER SCHEMA neon_migration OWNER TO CURRENT_USER;
REVOKE ALL ON SCHEMA neon_migration FROM PUBLIC";

/// What one run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Ids run now (retired ones included).
    pub applied: Vec<i64>,
    /// Ids skipped now, with the reason.
    pub skipped: Vec<(i64, String)>,
    /// The id that failed, with the error; the run stopped there.
    pub failed: Option<(i64, String)>,
}

/// Runs the pending migrations on `connstr`'s database; problems are logged and counted,
/// never returned (they must not fail a start).
pub fn run(connstr: &str, privileged_role: &str) -> Report {
    let mut client = match crate::postgres::sql::connect_maintenance(connstr, None, APP_MIGRATIONS) {
        Ok(c) => c,
        Err(e) => {
            log::error!("migrations: {e}");
            return Report::default();
        }
    };
    let db = crate::postgres::sql::connstr_dbname(connstr).unwrap_or_default();
    match migrate(&mut client, &db, privileged_role) {
        Ok(report) => report,
        Err(e) => {
            log::error!("migrations: {e}");
            Report::default()
        }
    }
}

/// Runs the pending migrations on `client`, connected to database `db`.
pub fn migrate(client: &mut Client, db: &str, privileged_role: &str) -> Result<Report> {
    let sql_err = |phase: &str, e: postgres::Error| Error::sql(phase, db, e);
    // A cluster already up to date costs two queries.
    let tracked: bool = client
        .query_one("SELECT pg_catalog.to_regclass('neon_migration.migration_id') IS NOT NULL", &[])
        .map_err(|e| sql_err("read the migration id", e))?
        .get(0);
    if tracked {
        let done: Option<i64> = client
            .query_opt("SELECT id FROM neon_migration.migration_id WHERE key = 0", &[])
            .map_err(|e| sql_err("read the migration id", e))?
            .map(|r| r.get(0));
        if done.is_some_and(|d| d >= COUNT) {
            return Ok(Report::default());
        }
    }
    client.batch_execute(SETUP).map_err(|e| sql_err("create neon_migration", e))?;
    let mut id: i64 = client
        .query_one("SELECT id FROM neon_migration.migration_id WHERE key = 0", &[])
        .map_err(|e| sql_err("read the migration id", e))?
        .get(0);
    let mut report = Report::default();
    let role_ident = quote_ident(privileged_role);
    let role_literal = quote_literal(privileged_role);
    while id < COUNT {
        let next = id + 1;
        let mig = &MIGRATIONS[id as usize];
        match step(client, mig, next, privileged_role, &role_ident, &role_literal) {
            Ok(None) => {
                log::info!("migration {} applied", mig.name);
                report.applied.push(next);
            }
            Ok(Some(reason)) => {
                log::info!("migration {} skipped: this cluster has no {reason}", mig.name);
                report.skipped.push((next, reason));
            }
            Err(e) => {
                let text = crate::error::db_error_text(&e);
                log::error!("migration {} failed: {text}; later migrations wait for the next start", mig.name);
                crate::metrics::count_migration_failed(&next.to_string());
                report.failed = Some((next, text));
                break;
            }
        }
        id = next;
    }
    Ok(report)
}

/// Runs or skips one migration in its own transaction, which also records it. Returns the
/// reason when it was skipped.
fn step(
    client: &mut Client,
    mig: &Migration,
    id: i64,
    role: &str,
    role_ident: &str,
    role_literal: &str,
) -> Result<Option<String>, postgres::Error> {
    let mut tx = client.transaction()?;
    let mut missing = None;
    if mig.uses_role {
        let exists: bool =
            tx.query_one("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)", &[&role])?.get(0);
        if !exists {
            missing = Some(format!("privileged role {role_ident}"));
        }
    }
    if missing.is_none()
        && let Some((what, query)) = mig.needs
        && !tx.query_one(query, &[])?.get::<_, bool>(0)
    {
        missing = Some(what.to_string());
    }
    match (&missing, mig.sql) {
        (None, Some(sql)) => {
            let sql = sql.replace("{role_literal}", role_literal).replace("{role}", role_ident);
            tx.batch_execute(&sql)?;
        }
        (Some(reason), _) => {
            tx.execute(
                "INSERT INTO neon_migration.skipped VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET reason = $2",
                &[&id, reason],
            )?;
        }
        (None, None) => {}
    }
    tx.execute("UPDATE neon_migration.migration_id SET id = $1 WHERE key = 0", &[&id])?;
    tx.commit()?;
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twelve_migrations_in_neons_order() {
        assert_eq!(COUNT, 12);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert!(m.name.starts_with(&format!("{:04}-", i + 1)), "{}", m.name);
            assert_eq!(m.sql.is_none(), (5..=9).contains(&(i + 1)), "{}", m.name);
            if let Some(sql) = m.sql {
                assert!(sql.contains("{role}") || sql.contains("{role_literal}"), "{}", m.name);
            }
        }
    }
}
