//! The per-database phases (reference 4.8 phase 8) and the bounded pool that runs them: N
//! worker threads take databases from a shared queue, each with its own connection to that
//! database, opened only when the database is looked at.
//!
//! Deadlocks: the only per-database work that touches shared catalogs heavily is the
//! clean-up before `DROP ROLE` (`REASSIGN OWNED`, `DROP OWNED`); it runs in one transaction
//! per database that first takes a self-conflicting lock on `pg_shdepend`, so those
//! transactions queue one after another instead of deadlocking across databases.

use super::catalog::Stmt;
use super::{Counter, maintenance_client_from};
use crate::error::{Error, Result};
use crate::escape::quote_ident;
use postgres::Client;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// One database to visit.
#[derive(Debug, Clone)]
pub struct DbTask {
    pub name: String,
    /// Owner after this apply; the target of `REASSIGN OWNED`.
    pub owner: String,
    /// A spec database that accepts connections: its public schema is managed.
    pub manage_schema: bool,
    /// None for a database created by this apply.
    pub oid: Option<u32>,
}

/// Databases whose schema `public` this process has already brought to the spec's state:
/// (connection string, database oid, owner). A live reconfigure does not connect to them
/// again, which is what makes a repeated apply cheap; a new process (every start) checks
/// every database once. A new owner, a database dropped and created again (new oid) or a
/// re-created `neon_superuser` ([`forget_verified`]) makes the database checked again.
static VERIFIED: Mutex<BTreeSet<(String, u32, String)>> = Mutex::new(BTreeSet::new());

fn verified() -> std::sync::MutexGuard<'static, BTreeSet<(String, u32, String)>> {
    crate::locks::lock(&VERIFIED)
}

/// Forgets what was verified for `connstr` (every connection string when None), so that the
/// next apply checks every database again.
pub fn forget_verified(connstr: Option<&str>) {
    verified().retain(|(c, _, _)| connstr.is_some_and(|want| c != want));
}

/// What every task shares.
pub struct Shared<'a> {
    pub connstr: &'a str,
    pub roles_to_delete: &'a [String],
    /// `--privileged-role-name`.
    pub privileged_role: &'a str,
    pub counter: &'a Counter,
    /// Connections left open by an earlier step of the start, taken before opening new ones.
    pub warm: Option<&'a crate::postgres::sql::Warm>,
}

/// Runs `tasks` on at most `workers` threads; stops taking new work at the first error and
/// returns it.
pub fn run_all(tasks: &[DbTask], workers: usize, shared: &Shared<'_>) -> Result<()> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let workers = workers.clamp(1, tasks.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(task) = tasks.get(i) else { break };
                    if let Err(e) = run_one(task, shared) {
                        stop.store(true, Ordering::SeqCst);
                        crate::locks::lock(&first_error).get_or_insert(e);
                    }
                }
            });
        }
    });
    match crate::locks::into_inner(first_error) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn run_one(task: &DbTask, shared: &Shared<'_>) -> Result<()> {
    let deleting: Vec<&String> = shared.roles_to_delete.iter().filter(|r| **r != task.owner).collect();
    let key = |oid: u32| (shared.connstr.to_string(), oid, task.owner.clone());
    let check_schema = task.manage_schema && !task.oid.is_some_and(|oid| verified().contains(&key(oid)));
    if deleting.is_empty() && !check_schema {
        return Ok(());
    }
    let mut client = maintenance_client_from(shared.warm, shared.connstr, &task.name)?;
    let mut exec = Exec { client: &mut client, db: &task.name, counter: shared.counter };
    if !deleting.is_empty() {
        // Planned inside the transaction, after the lock, so that what was read still holds.
        exec.plain(DELETE_REFS, "BEGIN; LOCK TABLE pg_catalog.pg_shdepend IN SHARE ROW EXCLUSIVE MODE")?;
        // Each role is planned when its turn comes, after the roles before it were handled.
        for role in &deleting {
            let ops = plan_role_references(exec.client, &task.name, role, &task.owner)?;
            run_ops(&mut exec, DELETE_REFS, &ops)?;
        }
        exec.plain(DELETE_REFS, "COMMIT")?;
    }
    if check_schema {
        let ops = plan_schema_perms(exec.client, &task.name, &task.owner, shared.privileged_role)?;
        run_ops(&mut exec, SCHEMA_PERMS, &ops)?;
        let oid = match task.oid {
            Some(oid) => oid,
            None => exec
                .query(SCHEMA_PERMS, "SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()", &[])?
                .first()
                .map(|r| r.get(0))
                .unwrap_or_default(),
        };
        verified().insert(key(oid));
    }
    Ok(())
}

/// One statement of a database's plan: counted and logged ([`Op::Run`]), or transaction
/// plumbing sent as it is ([`Op::Plain`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Run(Stmt),
    Plain(&'static str),
}

impl Op {
    /// What a dry run prints.
    pub fn shown(&self) -> &str {
        match self {
            Op::Run(s) => &s.what,
            Op::Plain(sql) => sql,
        }
    }
}

fn run_ops(exec: &mut Exec<'_>, phase: &'static str, ops: &[Op]) -> Result<()> {
    ops.iter().try_for_each(|op| match op {
        Op::Run(s) => exec.run(phase, s),
        Op::Plain(sql) => exec.plain(phase, sql),
    })
}

/// What a dry run of one database prints: the per-database phases planned from a read-only
/// look at it (no transaction, no lock; nothing is remembered as verified).
pub fn plan_one(
    client: &mut Client,
    task: &DbTask,
    roles_to_delete: &[String],
    privileged: &str,
) -> Result<Vec<(&'static str, Op)>> {
    let deleting: Vec<&String> = roles_to_delete.iter().filter(|r| **r != task.owner).collect();
    let mut out = Vec::new();
    if !deleting.is_empty() {
        out.push((DELETE_REFS, Op::Plain("BEGIN")));
        out.push((DELETE_REFS, Op::Plain("LOCK TABLE pg_catalog.pg_shdepend IN SHARE ROW EXCLUSIVE MODE")));
        for role in &deleting {
            let ops = plan_role_references(client, &task.name, role, &task.owner)?;
            out.extend(ops.into_iter().map(|o| (DELETE_REFS, o)));
        }
        out.push((DELETE_REFS, Op::Plain("COMMIT")));
    }
    if task.manage_schema {
        let ops = plan_schema_perms(client, &task.name, &task.owner, privileged)?;
        out.extend(ops.into_iter().map(|o| (SCHEMA_PERMS, o)));
    }
    Ok(out)
}

/// A connection to one database that counts what it runs.
pub struct Exec<'a> {
    pub client: &'a mut Client,
    pub db: &'a str,
    pub counter: &'a Counter,
}

impl Exec<'_> {
    pub fn run(&mut self, phase: &'static str, stmt: &Stmt) -> Result<()> {
        log::debug!("{phase} in {:?}: {}", self.db, stmt.what);
        self.client.batch_execute(&stmt.sql).map_err(|e| Error::sql(format!("{phase}: {}", stmt.what), self.db, e))?;
        self.counter.add(phase, 1);
        Ok(())
    }

    fn query(
        &mut self,
        phase: &'static str,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>> {
        self.client.query(sql, params).map_err(|e| Error::sql(phase, self.db, e))
    }

    fn plain(&mut self, phase: &'static str, sql: &str) -> Result<()> {
        self.client.batch_execute(sql).map_err(|e| Error::sql(phase, self.db, e))
    }
}

const DELETE_REFS: &str = "delete_role_references";

/// Privileges held by role `$1` on objects of this database, granted by someone else: who
/// granted them, and the `REVOKE` target. `DROP OWNED` revokes only what the object owner
/// granted, so these would keep `DROP ROLE` from succeeding.
const FOREIGN_GRANTS: &str = "
WITH r AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1)
SELECT DISTINCT g.rolname::text, k.kind, k.nsp::text, k.obj::text FROM (
    SELECT CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END AS kind, n.nspname AS nsp,
           c.relname AS obj, a.grantor, a.grantee
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace,
           pg_catalog.aclexplode(c.relacl) a
    UNION ALL
    SELECT 'TABLE', n.nspname, c.relname, a.grantor, a.grantee
      FROM pg_catalog.pg_attribute att JOIN pg_catalog.pg_class c ON c.oid = att.attrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace, pg_catalog.aclexplode(att.attacl) a
    UNION ALL
    SELECT 'SCHEMA', NULL, n.nspname, a.grantor, a.grantee
      FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
    UNION ALL
    SELECT 'DATABASE', NULL, d.datname, a.grantor, a.grantee
      FROM pg_catalog.pg_database d, pg_catalog.aclexplode(d.datacl) a
     WHERE d.datname = pg_catalog.current_database()
) k JOIN pg_catalog.pg_roles g ON g.oid = k.grantor
WHERE k.grantee = (SELECT oid FROM r) AND k.grantor <> (SELECT oid FROM r)
ORDER BY 1, 2, 3, 4";

/// `REASSIGN OWNED` to the database owner, `REVOKE` of what other grantors gave (as those
/// grantors, with `CASCADE` for what the role passed on), then `DROP OWNED`; run in one
/// transaction. The grants are read before the `REASSIGN`, which changes only objects the
/// role owns, not the grants others gave it that are listed here.
fn plan_role_references(client: &mut Client, db: &str, role: &str, owner: &str) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    {
        let r = quote_ident(role);
        ops.push(Op::Run(stmt(format!("REASSIGN OWNED BY {r} TO {}", quote_ident(owner)))));
        let grants = client.query(FOREIGN_GRANTS, &[&role]).map_err(|e| Error::sql(DELETE_REFS, db, e))?;
        for g in grants {
            let grantor: String = g.get(0);
            // Only the four words the query itself produces reach the statement.
            let kind = match g.get::<_, String>(1).as_str() {
                "TABLE" => "TABLE",
                "SEQUENCE" => "SEQUENCE",
                "SCHEMA" => "SCHEMA",
                "DATABASE" => "DATABASE",
                other => unreachable!("FOREIGN_GRANTS yields no object kind {other:?}"),
            };
            let nsp: Option<String> = g.get(2);
            let obj: String = g.get(3);
            let target = match nsp {
                Some(n) => format!("{}.{}", quote_ident(&n), quote_ident(&obj)),
                None => quote_ident(&obj),
            };
            ops.push(Op::Run(stmt(format!("SET LOCAL ROLE {}", quote_ident(&grantor)))));
            ops.push(Op::Run(stmt(format!("REVOKE ALL ON {kind} {target} FROM {r} CASCADE"))));
            ops.push(Op::Plain("RESET ROLE"));
        }
        ops.push(Op::Run(stmt(format!("DROP OWNED BY {r}"))));
    }
    Ok(ops)
}

const SCHEMA_PERMS: &str = "change_schema_perms";

/// The state of schema `public` that [`change_schema_perms`] manages; no row when there is no
/// `public` schema. The privilege counts are compared with everything `ALL` grants
/// (`acldefault`), so the check holds on any Postgres version.
const SCHEMA_STATE: &str = "
WITH p AS (SELECT oid, nspowner FROM pg_catalog.pg_namespace WHERE nspname = 'public'),
     su AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1),
     w AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'web_access'),
     me AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
SELECT pg_catalog.pg_get_userbyid(p.nspowner)::text,
       COALESCE(NOT pg_catalog.has_schema_privilege((SELECT oid FROM w), p.oid, 'CREATE'), false),
       (SELECT count(DISTINCT a.privilege_type) FROM pg_catalog.pg_default_acl d, pg_catalog.aclexplode(d.defaclacl) a
         WHERE d.defaclrole = (SELECT oid FROM me) AND d.defaclnamespace = p.oid AND d.defaclobjtype = 'r'
           AND a.grantee = (SELECT oid FROM su) AND a.is_grantable)
         >= (SELECT count(*) FROM pg_catalog.aclexplode(pg_catalog.acldefault('r', (SELECT oid FROM me)))),
       (SELECT count(DISTINCT a.privilege_type) FROM pg_catalog.pg_default_acl d, pg_catalog.aclexplode(d.defaclacl) a
         WHERE d.defaclrole = (SELECT oid FROM me) AND d.defaclnamespace = p.oid AND d.defaclobjtype = 'S'
           AND a.grantee = (SELECT oid FROM su) AND a.is_grantable)
         >= (SELECT count(*) FROM pg_catalog.aclexplode(pg_catalog.acldefault('s', (SELECT oid FROM me)))),
       current_user::text
FROM p";

/// Schema `public`: owned by the database owner when the admin still owns it, `CREATE` for
/// `web_access`, default privileges for the privileged role (reference 4.8 8b); each
/// statement only when its state is not there yet.
fn plan_schema_perms(client: &mut Client, db: &str, owner: &str, privileged: &str) -> Result<Vec<Op>> {
    let rows = client.query(SCHEMA_STATE, &[&privileged]).map_err(|e| Error::sql(SCHEMA_PERMS, db, e))?;
    let Some(row) = rows.first() else { return Ok(Vec::new()) };
    let schema_owner: String = row.get(0);
    let need_web_access: bool = row.get(1);
    let tables_ok: bool = row.get(2);
    let sequences_ok: bool = row.get(3);
    let me: String = row.get(4);
    let mut ops = Vec::new();
    let admin_owned = schema_owner == me || schema_owner == "cloud_admin" || schema_owner == "zenith_admin";
    if admin_owned && schema_owner != owner {
        ops.push(Op::Run(stmt(format!("ALTER SCHEMA public OWNER TO {}", quote_ident(owner)))));
    }
    if need_web_access {
        ops.push(Op::Run(stmt("GRANT CREATE ON SCHEMA public TO web_access".into())));
    }
    for (ok, what) in [(tables_ok, "TABLES"), (sequences_ok, "SEQUENCES")] {
        if !ok {
            let sql = format!(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON {what} TO {} WITH GRANT OPTION",
                quote_ident(privileged)
            );
            ops.push(Op::Run(stmt(sql)));
        }
    }
    Ok(ops)
}

fn stmt(sql: String) -> Stmt {
    Stmt { what: sql.clone(), sql }
}
