//! The plan of an apply, built before anything runs: the cluster-wide statements from one read
//! of the catalog, then (per database) the statements from a read of that database. The real
//! apply ([`super::apply_with`]) executes exactly these plans; `compute_ctl plan` prints them
//! ([`dry_run`]) and executes nothing.
//!
//! One thing a dry run cannot know: databases the plan creates do not exist yet, so their
//! per-database statements are planned only when the apply runs (the dry run says so).

use super::catalog::{self, DbDelta, Snapshot, Stmt};
use super::per_db::{self, DbTask};
use super::{SystemState, by_version, db_tasks, privileged};
use crate::error::{Error, Result};
use crate::escape::quote_ident;
use crate::postgres::sql;
use crate::postgres::version::PgVersion;
use crate::spec::{AuditLogLevel, ComputeSpec};
use postgres::Client;
use std::collections::HashSet;

/// One statement of the cluster-wide plan and the database it runs in.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub phase: &'static str,
    /// None: the system database (the one of the connection string).
    pub db: Option<String>,
    pub stmt: Stmt,
}

/// The cluster-wide part of an apply.
#[derive(Debug)]
pub struct SystemPlan {
    /// Phases before the per-database work: `neon_superuser` to schema `neon`.
    pub head: Vec<Step>,
    /// The databases visited next, each planned when it is visited.
    pub tasks: Vec<DbTask>,
    pub roles_to_delete: Vec<String>,
    /// Phases after the per-database work: extensions, `health_check`.
    pub tail: Vec<Step>,
    /// The last phase: dropped roles. On 16+ the apply first hands their ADMIN OPTIONs to
    /// the privileged role ([`by_version::hand_over_admin_of_deleted_roles`]), read then.
    pub drop_roles: Vec<Step>,
    /// After everything, as Neon: the pgaudit extensions of `audit_log_level` ([`audit_steps`]).
    pub audit: Vec<Step>,
    /// The server's major, which chose the statements that differ between majors.
    pub version: PgVersion,
    /// `neon_superuser` is created by this plan (what was verified before no longer holds).
    pub creates_superuser: bool,
}

fn on_system(phase: &'static str, stmts: Vec<Stmt>) -> impl Iterator<Item = Step> {
    stmts.into_iter().map(move |stmt| Step { phase, db: None, stmt })
}

fn plain(sql: &str) -> Stmt {
    Stmt { sql: sql.into(), what: sql.into() }
}

impl SystemPlan {
    /// Reads the catalog through `client` (connected to `system_db`) and plans every
    /// cluster-wide phase, in the order the apply runs them.
    pub fn build(client: &mut Client, spec: &ComputeSpec, privileged: &str, system_db: &str) -> Result<SystemPlan> {
        let read = |e| Error::sql("read catalog", system_db, e);
        let mut snap = Snapshot::load(client, privileged).map_err(read)?;
        let state = SystemState::load(client).map_err(read)?;
        let jwks_roles: HashSet<String> = spec
            .local_proxy_config
            .iter()
            .flat_map(|l| l.jwks.iter().flatten())
            .flat_map(|j| j.role_names.iter().cloned())
            .collect();

        // Before any statement: a spec that would weaken compute_ctl's own roles changes nothing.
        privileged::check(spec, &state.current_user, privileged)?;
        // Before any DDL too: a database option this major lacks fails the apply with nothing done.
        by_version::check_database_options(spec, &snap, state.version)?;

        let mut head: Vec<Step> = Vec::new();
        let superuser = catalog::create_superuser(spec, privileged, &mut snap);
        let creates_superuser = !superuser.is_empty();
        head.extend(on_system("create_superuser", superuser));
        let memberships = by_version::privileged_role_memberships(state.version, privileged, &mut snap);
        head.extend(on_system("create_superuser", memberships));
        by_version::warn_md5(spec, state.version);
        head.extend(on_system("drop_invalid_databases", catalog::drop_invalid_databases(&mut snap)));
        head.extend(on_system("rename_roles", catalog::rename_roles(spec, &mut snap)));
        head.extend(on_system(
            "create_and_alter_roles",
            catalog::create_and_alter_roles(spec, privileged, &jwks_roles, &state.current_user, &mut snap),
        ));
        const DBS: &str = "rename_and_delete_databases";
        for delta in catalog::rename_and_delete_databases(spec, &mut snap) {
            match delta {
                DbDelta::Rename(stmt) => head.push(Step { phase: DBS, db: None, stmt }),
                DbDelta::Delete { name, allow_connections_first, stmts } => {
                    head.extend(drop_subscriptions_of(client, system_db, &name, allow_connections_first)?);
                    head.extend(on_system(DBS, stmts));
                }
            }
        }
        head.extend(on_system(
            "create_and_alter_databases",
            catalog::create_and_alter_databases(spec, privileged, &mut snap),
        ));
        if !state.neon_schema {
            head.extend(on_system("create_schema_neon", vec![plain("CREATE SCHEMA IF NOT EXISTS neon")]));
        }

        let roles_to_delete = catalog::roles_to_delete(spec, &snap);
        let tasks = db_tasks(spec, &snap, system_db, &state.current_user);

        let mut tail: Vec<Step> = Vec::new();
        if state.pg_stat_statements_preloaded && !state.pg_stat_statements_installed {
            let s = plain("CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
            tail.extend(on_system("handle_other_extensions", vec![s]));
        }
        match (&state.neon_available, &state.neon_installed) {
            (Some(_), None) => tail.extend(on_system(
                "handle_neon_extension",
                vec![plain("CREATE EXTENSION IF NOT EXISTS neon WITH SCHEMA neon")],
            )),
            (Some(available), Some(installed)) if available != installed => {
                tail.extend(on_system("handle_neon_extension", vec![plain("ALTER EXTENSION neon UPDATE")]))
            }
            _ => {}
        }
        if !state.health_check {
            tail.extend(on_system(
                "create_availability_check",
                vec![
                    plain(
                        "CREATE TABLE IF NOT EXISTS health_check (id serial primary key, updated_at timestamptz default now())",
                    ),
                    plain("INSERT INTO health_check VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET updated_at = now()"),
                ],
            ));
        }
        let drop_roles = on_system("drop_roles", catalog::drop_roles(&roles_to_delete, &mut snap)).collect();
        let audit = audit_steps(spec.audit_log_level, &state);
        Ok(SystemPlan {
            head,
            tasks,
            roles_to_delete,
            tail,
            drop_roles,
            audit,
            version: state.version,
            creates_superuser,
        })
    }
}

/// Neon's last phases for an audit level (reference 2026 §7.2): `pgaudit` (every level but
/// `Disabled`), `pgauditlogtofile` (the compliance levels), both in schema `public`, and no
/// auditing of database `postgres` (compute_ctl's own). Only what is missing is planned, so a
/// second apply sends nothing; Neon sends all three every time. Without a database
/// `postgres` the last one is left out (Neon fails the apply there).
pub(super) fn audit_steps(level: AuditLogLevel, state: &SystemState) -> Vec<Step> {
    let compliance = matches!(level, AuditLogLevel::Hipaa | AuditLogLevel::Extended | AuditLogLevel::Full);
    if level == AuditLogLevel::Disabled {
        return Vec::new();
    }
    let mut out = Vec::new();
    if !state.pgaudit {
        out.extend(on_system(
            "create_pgaudit_extension",
            vec![plain("CREATE EXTENSION IF NOT EXISTS pgaudit WITH SCHEMA public")],
        ));
    }
    if compliance && !state.pgauditlogtofile {
        out.extend(on_system(
            "create_pgauditlogtofile_extension",
            vec![plain("CREATE EXTENSION IF NOT EXISTS pgauditlogtofile WITH SCHEMA public")],
        ));
    }
    if state.postgres_db && !state.postgres_db_audit_off {
        out.extend(on_system(
            "disable_postgres_db_pgaudit",
            vec![plain("ALTER DATABASE postgres SET pgaudit.log TO 'none'")],
        ));
    }
    out
}

/// Before `DROP DATABASE … WITH (FORCE)`: drops that database's subscriptions without
/// touching the publisher (slot detached, connection string made unreachable so that not
/// even table-sync slots are dropped). `pg_subscription` is a shared catalog, so the system
/// database lists them; the statements run in the database itself.
fn drop_subscriptions_of(client: &mut Client, system_db: &str, db: &str, allow_first: bool) -> Result<Vec<Step>> {
    const PHASE: &str = "rename_and_delete_databases";
    let names: Vec<String> = client
        .query(
            "SELECT subname::text FROM pg_catalog.pg_subscription s JOIN pg_catalog.pg_database d \
             ON d.oid = s.subdbid WHERE d.datname = $1 ORDER BY s.oid",
            &[&db],
        )
        .map_err(|e| Error::sql(PHASE, system_db, e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    if names.is_empty() {
        return Ok(out);
    }
    if allow_first {
        let s = plain(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", quote_ident(db)));
        out.push(Step { phase: PHASE, db: None, stmt: s });
    }
    for name in names {
        for sql in sql::detach_and_drop(&name) {
            out.push(Step { phase: PHASE, db: Some(db.to_string()), stmt: plain(&sql) });
        }
    }
    Ok(out)
}

/// A statement of a dry run: phase, database, what would be sent (passwords redacted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub phase: &'static str,
    pub db: String,
    pub sql: String,
}

/// What `compute_ctl plan` prints: every statement an apply of `spec` would run now, in order,
/// and the notes for what cannot be planned ahead. Only reads the catalog.
#[derive(Debug, Default)]
pub struct DryRun {
    pub statements: Vec<Planned>,
    /// Databases the plan creates: their per-database statements are planned by the apply.
    pub created_later: Vec<String>,
    pub notes: Vec<String>,
}

impl DryRun {
    /// Whether an apply would change anything.
    pub fn changes(&self) -> bool {
        !self.statements.is_empty() || !self.created_later.is_empty()
    }
}

/// Plans an apply of `spec` against the Postgres of `connstr` and runs none of it.
pub fn dry_run(connstr: &str, spec: &ComputeSpec, privileged: &str) -> Result<DryRun> {
    const APP: &str = "compute_ctl:plan";
    let system_db = sql::connstr_dbname(connstr)?;
    let mut client = sql::connect_maintenance(connstr, Some(&system_db), APP)?;
    let plan = SystemPlan::build(&mut client, spec, privileged, &system_db)?;
    let mut out = DryRun::default();
    let push = |steps: &[Step], out: &mut DryRun| {
        for s in steps {
            let db = s.db.clone().unwrap_or_else(|| system_db.clone());
            out.statements.push(Planned { phase: s.phase, db, sql: s.stmt.what.clone() });
        }
    };
    push(&plan.head, &mut out);
    for task in &plan.tasks {
        if task.oid.is_none() && task.name != system_db {
            out.created_later.push(task.name.clone());
            continue;
        }
        let mut db_client =
            if task.name == system_db { None } else { Some(sql::connect_maintenance(connstr, Some(&task.name), APP)?) };
        let c = db_client.as_mut().unwrap_or(&mut client);
        for (phase, op) in per_db::plan_one(c, task, &plan.roles_to_delete, privileged)? {
            out.statements.push(Planned { phase, db: task.name.clone(), sql: op.shown().to_string() });
        }
    }
    push(&plan.tail, &mut out);
    let sys = |phase, stmt: Stmt| Step { phase, db: None, stmt };
    let handover =
        by_version::admin_to_take_over(&mut client, &system_db, plan.version, privileged, &plan.roles_to_delete)?;
    push(&handover.into_iter().map(|s| sys("drop_roles", s)).collect::<Vec<_>>(), &mut out);
    push(&plan.drop_roles, &mut out);
    push(&plan.audit, &mut out);
    Ok(out)
}

/// Runs plan steps: system-database steps on `sys`, the others on a connection to their
/// database, opened when first needed and closed before the next system step (a `DROP
/// DATABASE … WITH (FORCE)` follows those).
pub(super) fn run_steps(sys: &mut per_db::Exec<'_>, connstr: &str, steps: &[Step]) -> Result<()> {
    let mut other: Option<(String, Client)> = None;
    for s in steps {
        match &s.db {
            None => {
                other = None;
                sys.run(s.phase, &s.stmt)?;
            }
            Some(db) => {
                if other.as_ref().is_none_or(|(name, _)| name != db) {
                    other = Some((db.clone(), super::maintenance_client(connstr, Some(db))?));
                }
                let (name, client) = other.as_mut().expect("opened above");
                per_db::Exec { client, db: name, counter: sys.counter }.run(s.phase, &s.stmt)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(installed: (bool, bool), postgres_db: (bool, bool)) -> SystemState {
        SystemState {
            version: PgVersion::parse("150000"),
            current_user: "cloud_admin".into(),
            neon_schema: true,
            pg_stat_statements_preloaded: false,
            pg_stat_statements_installed: false,
            neon_available: None,
            neon_installed: None,
            health_check: true,
            pgaudit: installed.0,
            pgauditlogtofile: installed.1,
            postgres_db: postgres_db.0,
            postgres_db_audit_off: postgres_db.1,
        }
    }

    fn sqls(level: AuditLogLevel, s: &SystemState) -> Vec<String> {
        audit_steps(level, s).into_iter().map(|s| format!("{}: {}", s.phase, s.stmt.sql)).collect()
    }

    #[test]
    fn audit_phases_by_level_and_only_what_is_missing() {
        let fresh = state((false, false), (true, false));
        assert!(sqls(AuditLogLevel::Disabled, &fresh).is_empty());
        let base = [
            "create_pgaudit_extension: CREATE EXTENSION IF NOT EXISTS pgaudit WITH SCHEMA public",
            "disable_postgres_db_pgaudit: ALTER DATABASE postgres SET pgaudit.log TO 'none'",
        ];
        assert_eq!(sqls(AuditLogLevel::Log, &fresh), base);
        assert_eq!(sqls(AuditLogLevel::Base, &fresh), base);
        for level in [AuditLogLevel::Hipaa, AuditLogLevel::Extended, AuditLogLevel::Full] {
            assert_eq!(
                sqls(level, &fresh),
                [
                    base[0],
                    "create_pgauditlogtofile_extension: CREATE EXTENSION IF NOT EXISTS pgauditlogtofile WITH SCHEMA public",
                    base[1],
                ]
            );
            assert!(sqls(level, &state((true, true), (true, true))).is_empty(), "a second apply sends nothing");
        }
        assert_eq!(sqls(AuditLogLevel::Base, &state((true, false), (false, false))), Vec::<String>::new());
    }
}
