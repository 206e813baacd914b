//! Declarative catalog apply: roles, databases and delta operations (reference 4.8), on
//! vanilla PostgreSQL.
//!
//! The spec is the source of truth for the roles and databases it names; others are left
//! alone, and only delta operations delete. The apply reads the catalog once and plans every
//! cluster-wide phase as a list of statements from the difference ([`plan`], from the pure
//! functions of [`catalog`]) before running any; each database is read and planned when it is
//! visited, then its plan runs. A second apply of the same spec sends no DDL at all.
//! Per-database phases run on a bounded pool of threads ([`per_db`]). `compute_ctl plan`
//! prints the same plans without running them ([`plan::dry_run`]). Where PostgreSQL majors
//! differ, the statements are chosen by the server's `server_version_num`, read once per
//! apply ([`by_version`]).
//!
//! Phases, in order: the privileged role (`--privileged-role-name`, default `neon_superuser`); drop invalid databases; rename roles; create and alter
//! roles; rename and delete databases (a deleted database's subscriptions are dropped first,
//! leaving the publisher's slots alone); create databases and fix owners; schema `neon`; per
//! database: references of deleted roles, schema `public`; `pg_stat_statements` when
//! preloaded; the `neon` extension when available; `health_check`; drop roles; with an
//! `audit_log_level`, the pgaudit extensions and `pgaudit.log = none` for database `postgres`.
//!
//! Every connection is a *maintenance connection*: `application_name`
//! `compute_ctl:apply_config`, and start-up options that override per-database or per-role
//! settings that would break the apply (`role`, `default_transaction_read_only`,
//! `search_path`, `statement_timeout`, `lock_timeout`, `idle_in_transaction_session_timeout`).
//! Options from the client override `ALTER DATABASE … SET`, and no statement is needed.

pub mod by_version;
pub mod catalog;
pub mod per_db;
pub mod plan;
pub mod privileged;
pub mod settings;

use crate::error::{Error, Result};
use crate::postgres::sql::Warm;
use crate::postgres::version::PgVersion;
use crate::postgres::{conf, sql};
use crate::spec::{ComputeSpec, Database, ParsedSpec, Role};
use catalog::Snapshot;
use per_db::{DbTask, Exec};
use plan::SystemPlan;
use postgres::Client;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A spec for unit tests: the fixed header fields, then `cluster_and_ops` (the JSON members
/// `"cluster":{..}` and any others, without the outer braces).
#[cfg(test)]
pub(crate) fn test_spec(cluster_and_ops: &str) -> ComputeSpec {
    let json = format!(
        r#"{{"format_version":1.0,"tenant_id":"b0554b632bd4d547a63b86c3630317e8",
            "timeline_id":"2414a61ffc94e428f14b5758fe308e13",{cluster_and_ops}}}"#
    );
    ParsedSpec::parse(&json).unwrap().spec().clone()
}

/// How many databases are worked on at once.
#[derive(Debug, Clone, Copy)]
pub enum Concurrency {
    /// At start: derived from `max_connections` (reference 4.7).
    AtStart,
    /// On reconfigure: the spec's `reconfigure_concurrency`.
    Reconfigure(usize),
}

/// Statements run, per phase, for the log line at the end (and for tests and the benchmark).
#[derive(Debug, Default)]
pub struct Counter(Mutex<BTreeMap<&'static str, u64>>);

impl Counter {
    pub fn add(&self, phase: &'static str, n: u64) {
        *crate::locks::lock(&self.0).entry(phase).or_default() += n;
    }

    pub fn total(&self) -> u64 {
        crate::locks::lock(&self.0).values().sum()
    }

    pub fn by_phase(&self) -> BTreeMap<&'static str, u64> {
        crate::locks::lock(&self.0).clone()
    }
}

/// What an apply did.
#[derive(Debug)]
pub struct Report {
    pub statements: BTreeMap<&'static str, u64>,
    pub total: u64,
    pub elapsed: Duration,
}

/// Applies the spec's catalog; `privileged` is `--privileged-role-name`.
pub fn apply_spec(
    connstr: &str,
    spec: &ParsedSpec,
    privileged: &str,
    concurrency: Concurrency,
    warm: Option<&Warm>,
) -> Result<()> {
    apply_with(connstr, spec.spec(), privileged, concurrency, warm).map(|_| ())
}

/// Applies the spec's catalog and says how many statements each phase ran.
pub fn apply(connstr: &str, spec: &ComputeSpec, privileged: &str, concurrency: Concurrency) -> Result<Report> {
    apply_with(connstr, spec, privileged, concurrency, None)
}

/// [`apply`], first using connections an earlier step left open (see [`Warm`]).
pub fn apply_with(
    connstr: &str,
    spec: &ComputeSpec,
    privileged: &str,
    concurrency: Concurrency,
    warm: Option<&Warm>,
) -> Result<Report> {
    let started = Instant::now();
    let workers = match concurrency {
        Concurrency::AtStart => start_concurrency(spec),
        Concurrency::Reconfigure(n) => n.max(1),
    };
    let system_db = sql::connstr_dbname(connstr)?;
    let counter = Counter::default();
    let mut client = maintenance_client_from(warm, connstr, &system_db)?;
    let plan = SystemPlan::build(&mut client, spec, privileged, &system_db)?;
    if plan.creates_superuser {
        // Default privileges checked before were for a neon_superuser that is gone.
        per_db::forget_verified(Some(connstr));
    }
    let mut sys = Exec { client: &mut client, db: &system_db, counter: &counter };
    plan::run_steps(&mut sys, connstr, &plan.head)?;
    let tasks = &plan.tasks;
    let shared = per_db::Shared {
        connstr,
        roles_to_delete: &plan.roles_to_delete,
        privileged_role: privileged,
        counter: &counter,
        warm,
    };
    per_db::run_all(tasks, workers, &shared)?;
    let mut sys = Exec { client: &mut client, db: &system_db, counter: &counter };
    plan::run_steps(&mut sys, connstr, &plan.tail)?;
    // Reads who holds which ADMIN OPTION only now, after the renames and per-database work.
    by_version::hand_over_admin_of_deleted_roles(&mut sys, plan.version, privileged, &plan.roles_to_delete)?;
    plan::run_steps(&mut sys, connstr, &plan.drop_roles)?;
    plan::run_steps(&mut sys, connstr, &plan.audit)?;

    let report = Report { statements: counter.by_phase(), total: counter.total(), elapsed: started.elapsed() };
    let phases: Vec<String> = report.statements.iter().map(|(p, n)| format!("{p}={n}")).collect();
    log::info!(
        "catalog applied in {} ms with {} statements ({}) over {} databases, {workers} at a time",
        report.elapsed.as_millis(),
        report.total,
        if phases.is_empty() { "nothing to change".to_string() } else { phases.join(", ") },
        tasks.len(),
    );
    Ok(report)
}

/// Reference 4.7: from `max_connections` (settings, else the base `postgresql_conf`):
/// below 10 that many, below 30 ten, else a third; 10 when it is not given.
pub fn start_concurrency(spec: &ComputeSpec) -> usize {
    let limit = spec
        .setting("max_connections")
        .or_else(|| spec.cluster.postgresql_conf.as_deref().and_then(|t| conf::find_in_conf_text(t, "max_connections")))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match limit {
        Some(l) if l < 10 => l,
        Some(l) if l < 30 => 10,
        Some(l) => l / 3,
        None => 10,
    }
    .max(1)
}

/// A maintenance connection (see the module docs) to `db`, or to the database of the
/// connection string.
pub fn maintenance_client(connstr: &str, db: Option<&str>) -> Result<Client> {
    sql::connect_maintenance(connstr, db, sql::APP_APPLY)
}

/// A connection to `db` left open by an earlier step of the start, else a new
/// [`maintenance_client`].
pub fn maintenance_client_from(warm: Option<&Warm>, connstr: &str, db: &str) -> Result<Client> {
    match warm.and_then(|w| w.take(db)) {
        Some(client) => Ok(client),
        None => maintenance_client(connstr, Some(db)),
    }
}

/// What the cluster-wide phases after the roles and databases look at, read once.
pub(super) struct SystemState {
    /// `server_version_num`: read here, once per apply, for every statement that differs
    /// between majors.
    version: PgVersion,
    current_user: String,
    neon_schema: bool,
    pg_stat_statements_preloaded: bool,
    pg_stat_statements_installed: bool,
    neon_available: Option<String>,
    neon_installed: Option<String>,
    health_check: bool,
    /// Installed: `pgaudit`, `pgauditlogtofile`; whether database `postgres` exists and has
    /// `pgaudit.log=none` set.
    pgaudit: bool,
    pgauditlogtofile: bool,
    postgres_db: bool,
    postgres_db_audit_off: bool,
}

impl SystemState {
    fn load(client: &mut Client) -> Result<SystemState, postgres::Error> {
        let row = client.query_one(
            "SELECT current_user::text,
                    EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'neon'),
                    pg_catalog.current_setting('shared_preload_libraries'),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_stat_statements'),
                    (SELECT default_version FROM pg_catalog.pg_available_extensions WHERE name = 'neon'),
                    (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'neon'),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE tablename = 'health_check'),
                    pg_catalog.current_setting('server_version_num'),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgaudit'),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgauditlogtofile'),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = 'postgres'),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s
                            JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
                            WHERE d.datname = 'postgres' AND s.setrole = 0
                              AND 'pgaudit.log=none' = ANY (s.setconfig))",
            &[],
        )?;
        let preload: String = row.get(2);
        let version: String = row.get(7);
        Ok(SystemState {
            version: PgVersion::parse(&version),
            current_user: row.get(0),
            neon_schema: row.get(1),
            pg_stat_statements_preloaded: conf::preloads(&preload, "pg_stat_statements"),
            pg_stat_statements_installed: row.get(3),
            neon_available: row.get(4),
            neon_installed: row.get(5),
            health_check: row.get(6),
            pgaudit: row.get(8),
            pgauditlogtofile: row.get(9),
            postgres_db: row.get(10),
            postgres_db_audit_off: row.get(11),
        })
    }
}

/// The per-database work list: every spec database plus the system database (once, if the
/// spec also names it).
pub(super) fn db_tasks(spec: &ComputeSpec, snap: &Snapshot, system_db: &str, me: &str) -> Vec<DbTask> {
    let mut tasks: Vec<DbTask> = Vec::new();
    let mut system_seen = false;
    for db in &spec.cluster.databases {
        if tasks.iter().any(|t| t.name == db.name) {
            continue;
        }
        let row = snap.dbs.get(&db.name);
        let usable = row.is_some_and(|r| !r.restrict_conn && !r.invalid);
        let is_system = db.name == system_db;
        system_seen |= is_system;
        if !usable && !is_system {
            continue;
        }
        let owner = if is_system { me.to_string() } else { db.owner.clone() };
        tasks.push(DbTask { name: db.name.clone(), owner, manage_schema: usable, oid: row.and_then(|r| r.oid) });
    }
    if !system_seen {
        tasks.push(DbTask { name: system_db.to_string(), owner: me.to_string(), manage_schema: false, oid: None });
    }
    tasks
}

/// `GET /dbs_and_roles`: every role and database, as Neon answers it but **without password
/// hashes** (`encrypted_password` is always null). The owner is the plain role name.
pub fn dbs_and_roles(connstr: &str) -> Result<serde_json::Value> {
    let mut client = sql::connect(connstr, None, sql::APP_STATUS)?;
    let db = sql::connstr_dbname(connstr)?;
    let snap = Snapshot::load(&mut client, catalog::NEON_SUPERUSER).map_err(|e| Error::sql("dbs_and_roles", &db, e))?;
    let mut roles: Vec<Role> =
        snap.roles.keys().map(|name| Role { name: name.clone(), encrypted_password: None, options: None }).collect();
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    let mut databases: Vec<Database> = snap
        .dbs
        .into_iter()
        .map(|(name, d)| Database {
            name,
            owner: d.owner,
            options: None,
            restrict_conn: d.restrict_conn,
            invalid: d.invalid,
        })
        .collect();
    databases.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(serde_json::json!({ "roles": roles, "databases": databases }))
}
