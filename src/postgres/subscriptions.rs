//! `drop_subscriptions_before_start`: a branch of a subscriber drops the subscriptions it
//! inherited, exactly once per timeline, before any apply worker can take the parent's slot.
//!
//! The steps, all before the compute reports `running`:
//! 1. **Guard** ([`guard_before_start`], before the postmaster starts). With Neon's Postgres
//!    (`neon` preloaded) the setting `neon.disable_logical_replication_subscribers=true` keeps
//!    apply workers off. Vanilla Postgres has no such setting, so one single-user pass in the
//!    system database (no background workers run in single-user mode) disables every
//!    subscription — unless the marker says this timeline was already done — and reports what
//!    it found. With the subscriptions disabled the launcher starts no apply worker when the
//!    server comes up.
//! 2. **Drop** ([`drop_inherited`]): unless the marker says done, in every database that has
//!    subscriptions (known from the pass, or listed), as many at once as there are cores, one
//!    transaction that takes
//!    `LOCK TABLE pg_catalog.pg_subscription IN ACCESS EXCLUSIVE MODE` (the catalog is shared,
//!    so concurrent cleanups serialize instead of deadlocking), then per subscription `DISABLE`,
//!    `CONNECTION` to a socket that cannot exist, `SET (slot_name = NONE)`, `DROP`. Detaching
//!    the slot keeps `DROP` from dropping the parent's slot; pointing the connection nowhere
//!    keeps it from dropping the table-sync slots of tables whose copy was still running.
//!    The connections are then handed to the catalog apply ([`sql::Warm`]).
//! 3. **Marker**: `neon.drop_subscriptions_done` (row 1) gets this timeline's id.
//! 4. **Release** ([`release_guard`]): with Neon's setting, rewrite it to false and reload; the
//!    single-user guard needs nothing (only inherited subscriptions were disabled, and they are
//!    gone), so subscriptions created from now on replicate.
//!
//! A crash anywhere before the marker leaves a state from which the next start finishes the
//! job (the pass disables what is left, the drop drops it); after the marker nothing is done.

use super::process::Postmaster;
use super::{Node, Stopped, conf, sql};
use crate::error::{Error, Result};
use crate::escape::quote_literal;
use crate::spec::{Id, ParsedSpec};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Mutex;

/// What keeps apply workers from starting until the drop is done. Only [`guard_before_start`]
/// makes one, with the [`Stopped`] proof, so the drop and the release, which take it, cannot
/// be reached once Postgres has started without the guard step before it:
/// ```compile_fail,E0599
/// let _ = compute_ctl::postgres::subscriptions::Guard::NeonSetting;
/// ```
/// ```no_run
/// # use compute_ctl::postgres::{Node, Stopped, subscriptions::{self, Guard}};
/// # use compute_ctl::spec::ParsedSpec;
/// fn f(proof: &Stopped, node: &Node, spec: &ParsedSpec) -> compute_ctl::Result<Guard> {
///     subscriptions::guard_before_start(proof, node, spec)
/// }
/// ```
#[derive(Debug, PartialEq, Eq)]
pub struct Guard(Kind);

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// The flag is off, or the compute is not a primary.
    None,
    /// Neon's `neon.disable_logical_replication_subscribers=true` is in postgresql.conf.
    NeonSetting,
    /// A single-user pass disabled the inherited subscriptions and listed them, or found the
    /// marker holding this timeline.
    SingleUser(Inherited),
    /// The local cache says this timeline was done: nothing to guard.
    Cached,
    /// No subscription can exist (clean cluster, empty `pg_subscription`): nothing to guard,
    /// but the marker is still recorded.
    NothingToGuard,
}

/// What the single-user pass found in the shared catalog.
#[derive(Debug, PartialEq, Eq)]
pub enum Inherited {
    /// `neon.drop_subscriptions_done` holds this timeline: nothing was touched.
    Done,
    /// Every subscription was disabled; these databases have some, with their names and
    /// whether the database takes connections.
    Todo(Vec<Database>),
}

/// A database that has subscriptions.
#[derive(Debug, PartialEq, Eq)]
pub struct Database {
    pub name: String,
    pub connectable: bool,
    pub subscriptions: Vec<String>,
}

/// File in PGDATA that caches "done for timeline X", written after the marker commits, so a
/// restart on local storage skips the single-user pass.
const DONE_CACHE: &str = "compute_ctl_subscriptions_done";

/// True when the spec preloads Neon's library, whose setting guards apply workers.
pub fn preloads_neon(spec: &ParsedSpec) -> bool {
    let s = spec.spec();
    let from_settings = s.setting("shared_preload_libraries");
    let from_conf =
        s.cluster.postgresql_conf.as_deref().and_then(|t| conf::find_in_conf_text(t, "shared_preload_libraries"));
    [from_settings, from_conf].into_iter().flatten().any(|v| conf::preloads(v, "neon"))
}

/// Whether this start drops inherited subscriptions: the flag is on and the compute is a
/// primary.
pub fn wanted(spec: &ParsedSpec) -> bool {
    spec.spec().drop_subscriptions_before_start && spec.mode() == crate::spec::ComputeMode::Primary
}

/// Step 1, before the postmaster starts (PGDATA prepared, postgresql.conf written).
/// Postgres must not run (`Stopped`).
pub fn guard_before_start(_proof: &Stopped, node: &Node, spec: &ParsedSpec) -> Result<Guard> {
    if !wanted(spec) {
        return Ok(Guard(Kind::None));
    }
    if preloads_neon(spec) {
        return Ok(Guard(Kind::NeonSetting));
    }
    let cache = node.pgdata.join(DONE_CACHE);
    if std::fs::read_to_string(&cache).is_ok_and(|t| t.trim() == spec.timeline_id().to_string()) {
        log::info!("subscriptions were already dropped for timeline {}: no guard needed", spec.timeline_id());
        return Ok(Guard(Kind::Cached));
    }
    if no_subscription_can_exist(&node.pgdata) {
        log::info!("pg_subscription is empty in a cleanly shut down cluster: no guard needed");
        return Ok(Guard(Kind::NothingToGuard));
    }
    let started = std::time::Instant::now();
    let found = single_user_disable(node, spec.timeline_id())?;
    match &found {
        Inherited::Done => log::info!(
            "single-user pass found the marker for timeline {} in {} ms: nothing disabled",
            spec.timeline_id(),
            started.elapsed().as_millis()
        ),
        Inherited::Todo(dbs) => log::info!(
            "single-user pass disabled inherited subscriptions in {} database(s) in {} ms",
            dbs.len(),
            started.elapsed().as_millis()
        ),
    }
    Ok(Guard(Kind::SingleUser(found)))
}

/// OID of the shared catalog `pg_subscription`.
const PG_SUBSCRIPTION_OID: u32 = 6100;
/// `DB_SHUTDOWNED` in `pg_control`'s `state` field.
const DB_SHUTDOWNED: u32 = 1;

/// True only when the cluster was shut down cleanly (no WAL left to replay that could add a
/// subscription) and the heap file of `pg_subscription` has no pages: then no subscription can
/// exist and the single-user pass can be skipped. Any doubt (unreadable or unexpected files)
/// answers false, so the pass runs.
pub fn no_subscription_can_exist(pgdata: &std::path::Path) -> bool {
    let Ok(control) = std::fs::read(pgdata.join("global/pg_control")) else { return false };
    // ControlFileData: system_identifier u64, pg_control_version u32, catalog_version_no u32,
    // then the DBState enum.
    let Some(state) = control.get(16..20) else { return false };
    if u32::from_ne_bytes(state.try_into().expect("4 bytes")) != DB_SHUTDOWNED {
        return false;
    }
    let Ok(map) = std::fs::read(pgdata.join("global/pg_filenode.map")) else { return false };
    // RelMapFile: magic i32, num_mappings i32, then (oid u32, filenumber u32) pairs.
    let Some(n) = map.get(4..8).map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes"))) else { return false };
    let filenode = (0..usize::try_from(n).unwrap_or(0)).find_map(|i| {
        let at = 8 + i * 8;
        let oid = u32::from_ne_bytes(map.get(at..at + 4)?.try_into().ok()?);
        let node = u32::from_ne_bytes(map.get(at + 4..at + 8)?.try_into().ok()?);
        (oid == PG_SUBSCRIPTION_OID).then_some(node)
    });
    let Some(filenode) = filenode else { return false };
    std::fs::metadata(pgdata.join(format!("global/{filenode}"))).is_ok_and(|m| m.len() == 0)
}

/// The databases that have subscriptions, as one JSON value
/// `[[name, takes connections, [subscription, ...]], ...]` (read by [`parse_databases`]): the
/// same query in the single-user pass and on a live server.
const DATABASES_WITH_SUBSCRIPTIONS: &str = "SELECT coalesce(json_agg(json_build_array(d.datname, \
    d.datallowconn AND d.datconnlimit <> -2, (SELECT json_agg(s.subname ORDER BY s.subname) \
    FROM pg_catalog.pg_subscription s WHERE s.subdbid = d.oid)) ORDER BY d.datname), '[]'::json) \
    FROM pg_catalog.pg_database d WHERE EXISTS (SELECT FROM pg_catalog.pg_subscription s WHERE s.subdbid = d.oid)";

/// Column name of the pass's result row, found in `postgres --single`'s output.
const PASS_RESULT: &str = "compute_ctl_pass";

/// One `postgres --single` run in the system database that disables every subscription
/// unless the marker holds this timeline, and reports what it found (so the drop can start
/// as soon as the server is up, without listing again). Each command is one line: in
/// single-user mode a newline ends a command. The result goes through a session setting to a
/// `SELECT`, whose row single-user mode prints on stdout whatever the logging settings.
fn single_user_disable(node: &Node, timeline: Id) -> Result<Inherited> {
    let db = sql::connstr_dbname(&node.connstr)?;
    let tl = quote_literal(&timeline.to_string());
    let body = format!(
        "DECLARE done boolean := false; found text; BEGIN \
         IF to_regclass('neon.drop_subscriptions_done') IS NOT NULL THEN \
         EXECUTE 'SELECT EXISTS (SELECT 1 FROM neon.drop_subscriptions_done WHERE timeline_id = $1)' INTO done USING {tl}; \
         END IF; \
         IF NOT done THEN UPDATE pg_catalog.pg_subscription SET subenabled = false WHERE subenabled; END IF; \
         SELECT json_build_object('done', done, 'databases', \
         CASE WHEN done THEN '[]'::json ELSE ({DATABASES_WITH_SUBSCRIPTIONS}) END)::text INTO found; \
         PERFORM set_config('compute_ctl.pass', found, false); \
         END"
    );
    let script = format!(
        "DO {}\nSELECT current_setting('compute_ctl.pass') AS {PASS_RESULT}\n",
        crate::escape::dollar_quote(&body)
    );
    // In the memory cgroup when AUTOSCALING is set, like every Postgres compute_ctl starts:
    // the pass reads the catalogs into its own memory, which the monitor must see.
    let mut cmd = crate::cgroup::command(&node.postgres_bin())?;
    cmd.args(["--single", "-D"])
        .arg(&node.pgdata)
        // No background workers run in single-user mode; these keep the pass quick by sizing
        // less shared memory for them, and none is a setting pg_control records (WAL would
        // carry a parameter change for standbys): a small buffer pool saves shared_buffers'
        // descriptors and mapping table (about 5 ms of a 26 ms pass here), fewer autovacuum
        // workers and predicate locks shrink the lock tables (about 2 ms more).
        .args(["-c", "max_logical_replication_workers=0", "-c", "autovacuum=off", "-c", "shared_buffers=1MB"])
        .args(["-c", "autovacuum_max_workers=1", "-c", "max_pred_locks_per_transaction=10"])
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(u) = node.run_as {
        cmd.uid(u.uid).gid(u.gid);
    }
    let mut child = cmd.spawn().map_err(|e| Error::system("cannot run postgres --single to guard subscriptions", e))?;
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(script.as_bytes())
        .map_err(|e| Error::system("cannot write to postgres --single", e))?;
    let out = child.wait_with_output().map_err(|e| Error::system("postgres --single (subscription guard)", e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        log::debug!("single-user: {line}");
    }
    let failed = |detail: String| Error::Process {
        what: format!("postgres --single (subscription guard) {}", super::process::describe_exit(out.status)),
        detail,
    };
    if !out.status.success() || text.contains("ERROR:") || text.contains("FATAL:") {
        let detail: Vec<&str> = text.lines().filter(|l| l.contains("ERROR") || l.contains("FATAL")).collect();
        return Err(failed(if detail.is_empty() { text.trim().to_string() } else { detail.join("; ") }));
    }
    parse_pass_output(&stdout).map_err(failed)
}

/// Reads the pass's result from single-user mode's printout of the row, a line like
/// `\t 1: compute_ctl_pass = "{...}"\t(typeid = 25, len = -1, typmod = -1, byval = f)`. The
/// value is JSON, so it has no raw tab or newline; the last `"\t(` closes it.
fn parse_pass_output(stdout: &str) -> std::result::Result<Inherited, String> {
    let marker = format!("1: {PASS_RESULT} = \"");
    let value = stdout
        .lines()
        .find_map(|l| l.split_once(&marker).and_then(|(_, rest)| rest.rsplit_once("\"\t(")).map(|(v, _)| v))
        .ok_or_else(|| format!("no {PASS_RESULT} row in its output: {:?}", stdout.trim()))?;
    let bad = |e: String| format!("unexpected {PASS_RESULT} value {value:?}: {e}");
    let v: serde_json::Value = serde_json::from_str(value).map_err(|e| bad(e.to_string()))?;
    if v["done"].as_bool().ok_or_else(|| bad("no done".into()))? {
        return Ok(Inherited::Done);
    }
    parse_databases(&v["databases"]).map(Inherited::Todo).map_err(bad)
}

/// Reads the value of [`DATABASES_WITH_SUBSCRIPTIONS`].
fn parse_databases(list: &serde_json::Value) -> std::result::Result<Vec<Database>, String> {
    let list = list.as_array().ok_or("no databases")?;
    let mut dbs = Vec::with_capacity(list.len());
    for d in list {
        let (Some(name), Some(connectable), Some(subs)) = (d[0].as_str(), d[1].as_bool(), d[2].as_array()) else {
            return Err(format!("bad entry {d}"));
        };
        let subscriptions = subs.iter().map(|s| s.as_str().map(str::to_string)).collect::<Option<Vec<_>>>();
        let subscriptions = subscriptions.ok_or_else(|| format!("bad names in {d}"))?;
        dbs.push(Database { name: name.to_string(), connectable, subscriptions });
    }
    Ok(dbs)
}

/// Creates the marker table if missing; safe before the drops (only its row 1 counts).
const MARKER_TABLE: &str = "CREATE SCHEMA IF NOT EXISTS neon; \
    CREATE TABLE IF NOT EXISTS neon.drop_subscriptions_done (id integer PRIMARY KEY, timeline_id text)";
/// Records this timeline, after every drop committed.
const MARKER_ROW: &str = "INSERT INTO neon.drop_subscriptions_done VALUES (1, current_setting('neon.timeline_id')) \
    ON CONFLICT (id) DO UPDATE SET timeline_id = EXCLUDED.timeline_id";

/// Step 2 and 3, once Postgres is ready: drop the inherited subscriptions unless the marker
/// says this timeline is done, then record it. After a single-user pass the work is known
/// already: the drops start at once, while another connection readies the marker table.
pub fn drop_inherited(node: &Node, spec: &ParsedSpec, guard: &Guard) -> Result<sql::Warm> {
    let warm = sql::Warm::new(KEEP_OPEN);
    let connstr = &node.connstr;
    let system_db = sql::connstr_dbname(connstr)?;
    let timeline = spec.timeline_id().to_string();
    let record = |client: &mut postgres::Client, sql: &str| {
        client.batch_execute(sql).map_err(|e| Error::sql("recording neon.drop_subscriptions_done", &system_db, e))
    };
    let connect_system = || sql::connect_maintenance(connstr, None, sql::APP_SUBSCRIPTIONS);
    let mut client = match &guard.0 {
        Kind::None => return Ok(warm),
        Kind::SingleUser(Inherited::Done) => {
            write_cache(node, &timeline);
            return Ok(warm);
        }
        Kind::SingleUser(Inherited::Todo(dbs)) => {
            let (marker, dropped) = std::thread::scope(|scope| {
                let marker = scope.spawn(|| {
                    let mut client = connect_system()?;
                    record(&mut client, MARKER_TABLE)?;
                    Ok::<_, Error>(client)
                });
                let dropped = drop_in_databases(connstr, &connectable(dbs), &warm);
                (marker.join().unwrap_or_else(|p| std::panic::resume_unwind(p)), dropped)
            });
            dropped?;
            marker?
        }
        Kind::NeonSetting | Kind::Cached | Kind::NothingToGuard => {
            let mut client = connect_system()?;
            if marker_done(&mut client, &system_db, &timeline)? {
                log::info!("subscriptions were already dropped for timeline {timeline}");
                write_cache(node, &timeline);
                if client.batch_execute(&rename_for_apply()).is_ok() {
                    warm.put(&system_db, client);
                }
                return Ok(warm);
            }
            let phase = "listing databases with subscriptions";
            let text: String = client
                .query_one(&format!("SELECT ({DATABASES_WITH_SUBSCRIPTIONS})::text"), &[])
                .map_err(|e| Error::sql(phase, &system_db, e))?
                .get(0);
            let dbs = serde_json::from_str(&text)
                .map_err(|e| e.to_string())
                .and_then(|v| parse_databases(&v))
                .map_err(|detail| Error::Process { what: phase.into(), detail })?;
            drop_in_databases(connstr, &connectable(&dbs), &warm)?;
            record(&mut client, MARKER_TABLE)?;
            client
        }
    };
    record(&mut client, &format!("{MARKER_ROW}; {}", rename_for_apply()))?;
    log::info!("recorded subscriptions dropped for timeline {timeline}");
    write_cache(node, &timeline);
    warm.put(&system_db, client);
    Ok(warm)
}

/// Gives a connection the catalog apply may take over the apply's name in `pg_stat_activity`.
fn rename_for_apply() -> String {
    format!("SET application_name = {}", quote_literal(sql::APP_APPLY))
}

/// The databases the drop can visit; the others' subscriptions stay disabled (said in the log).
fn connectable(dbs: &[Database]) -> Vec<&Database> {
    for db in dbs.iter().filter(|d| !d.connectable) {
        log::warn!(
            "database {:?} does not allow connections: its subscriptions {:?} stay disabled",
            db.name,
            db.subscriptions
        );
    }
    dbs.iter().filter(|d| d.connectable).collect()
}

/// Whether the marker holds `timeline`; a missing table (42P01) means never done.
fn marker_done(client: &mut postgres::Client, db: &str, timeline: &str) -> Result<bool> {
    match client.query("SELECT 1 FROM neon.drop_subscriptions_done WHERE timeline_id = $1", &[&timeline]) {
        Ok(rows) => Ok(!rows.is_empty()),
        Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => Ok(false),
        Err(e) => Err(Error::sql("checking neon.drop_subscriptions_done", db, e)),
    }
}

fn write_cache(node: &Node, timeline: &str) {
    let path = node.pgdata.join(DONE_CACHE);
    if let Err(e) = conf::write_atomically(&path, timeline.as_bytes()) {
        log::warn!("cannot cache the subscription marker (the next start will check again): {}", e.report());
    } else if let Some(u) = node.run_as {
        // Everything in PGDATA belongs to the Postgres user (tools like pg_basebackup read it).
        let _ = std::os::unix::fs::chown(&path, Some(u.uid), Some(u.gid));
    }
}

/// How many of the drop's connections stay open for the catalog apply (see [`sql::Warm`]).
/// Closing them at once also made each backend's exit compete with the next databases'
/// backend starts (measured, 20 databases on 2 cores: 79 ms closing each at once, 68 ms
/// keeping them).
const KEEP_OPEN: usize = 32;

/// How many databases the drop visits at once. Each costs a backend start, mostly kernel work
/// (fork, page faults, exit) and the relation cache that the first backend in a database
/// rebuilds after every server start: more connections at once than cores only queue
/// (measured, 20 databases on 2 cores: 2 at a time 56 ms, 8 at a time 67 ms).
pub fn drop_parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8)
}

/// Drops the subscriptions of each database, [`drop_parallelism`] databases at once.
fn drop_in_databases(connstr: &str, dbs: &[&Database], warm: &sql::Warm) -> Result<()> {
    let parallel = drop_parallelism();
    let queue = Mutex::new(dbs.iter());
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..dbs.len().min(parallel) {
            scope.spawn(|| {
                loop {
                    let Some(db) = crate::locks::lock(&queue).next() else { return };
                    match drop_in_database(connstr, &db.name, &db.subscriptions) {
                        Ok(client) => warm.put(&db.name, client),
                        Err(e) => {
                            crate::locks::lock(&first_error).get_or_insert(e);
                            return;
                        }
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

/// Drops `names` in `db` with one round trip while `pg_subscription` is locked: the
/// transaction, the lock and every statement go in one simple-query message, so databases
/// that take turns on the lock hold it for as short a time as possible.
fn drop_in_database(connstr: &str, db: &str, names: &[String]) -> Result<postgres::Client> {
    let started = std::time::Instant::now();
    // A maintenance connection: the role, read-only and timeout settings a database may carry
    // are overridden at connect, as for the catalog apply that may take it over afterwards.
    let mut client = sql::connect_maintenance(connstr, Some(db), sql::APP_SUBSCRIPTIONS)?;
    let connected = started.elapsed();
    // The commit does not wait for its WAL flush: the marker's commit, synchronous and later
    // in the WAL, flushes it too, and a crash before that leaves no marker, so the next start
    // redoes it.
    let mut script = String::from(
        "BEGIN; SET LOCAL synchronous_commit = off; \
         LOCK TABLE pg_catalog.pg_subscription IN ACCESS EXCLUSIVE MODE; ",
    );
    for name in names {
        for sql in sql::detach_and_drop(name) {
            script.push_str(&sql);
            script.push_str("; ");
        }
    }
    // Renamed in the same round trip for the catalog apply that may take the connection over.
    script.push_str(&format!("COMMIT; {}", rename_for_apply()));
    // On an error the server skips the rest; dropping the connection rolls the transaction back.
    client.batch_execute(&script).map_err(|err| Error::sql(format!("dropping subscriptions {names:?}"), db, err))?;
    log::info!(
        "dropped {} inherited subscription(s) in database {db:?} in {} ms (connect {} ms): {names:?}",
        names.len(),
        started.elapsed().as_millis(),
        connected.as_millis()
    );
    Ok(client)
}

/// Step 4: let subscriptions created from now on replicate.
pub fn release_guard(node: &Node, spec: &ParsedSpec, guard: Guard, pm: &Postmaster) -> Result<()> {
    match guard.0 {
        Kind::None | Kind::SingleUser(_) | Kind::Cached | Kind::NothingToGuard => Ok(()),
        Kind::NeonSetting => {
            let text = conf::render(spec, node.internal_http_port, false, &node.privileged_role, node.ssl(spec));
            conf::write_postgres_conf(&node.pgdata, &text)?;
            pm.reload();
            log::info!("neon.disable_logical_replication_subscribers released");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> ParsedSpec {
        ParsedSpec::parse(&format!(
            r#"{{"format_version":1.0,"drop_subscriptions_before_start":true,{extra}
            "tenant_id":"b0554b632bd4d547a63b86c3630317e8","timeline_id":"2414a61ffc94e428f14b5758fe308e13"}}"#
        ))
        .unwrap()
    }

    #[test]
    fn neon_guard_is_chosen_only_when_neon_is_preloaded() {
        let with_setting = spec(
            r#""cluster":{"roles":[],"databases":[],"settings":[
            {"name":"shared_preload_libraries","value":"pg_stat_statements, neon","vartype":"string"}]},"#,
        );
        assert!(preloads_neon(&with_setting));
        let with_conf =
            spec(r#""cluster":{"roles":[],"databases":[],"postgresql_conf":"shared_preload_libraries='neon'\n"},"#);
        assert!(preloads_neon(&with_conf));
        let vanilla = spec(
            r#""cluster":{"roles":[],"databases":[],"settings":[
            {"name":"shared_preload_libraries","value":"neon_utils","vartype":"string"}]},"#,
        );
        assert!(!preloads_neon(&vanilla));
        // The guard line is written while the flag is set, and released to false.
        assert!(
            conf::render(&with_setting, 3081, true, "neon_superuser", false)
                .contains("\nneon.disable_logical_replication_subscribers=true\n")
        );
        assert!(
            conf::render(&with_setting, 3081, false, "neon_superuser", false)
                .contains("\nneon.disable_logical_replication_subscribers=false\n")
        );
    }

    #[test]
    fn the_pass_result_is_read_from_single_user_output() {
        // As postgres --single prints a one-column row: a header line, then the value.
        let out = "\nPostgreSQL stand-alone backend 15.18\nbackend> backend> \t 1: compute_ctl_pass\t(typeid = 25, \
                   len = -1, typmod = -1, byval = f)\n\t----\n\t 1: compute_ctl_pass = \"{\"done\" : false, \
                   \"databases\" : [[\"a\\\"b\\tc = \\\"\", true, [\"s1\", \"s 2\"]], [\"x\", false, [\"y\"]]]}\"\t(typeid = 25, \
                   len = -1, typmod = -1, byval = f)\n\t----\nbackend> ";
        let Inherited::Todo(dbs) = parse_pass_output(out).unwrap() else { panic!("not todo") };
        assert_eq!(
            dbs,
            [
                Database {
                    name: "a\"b\tc = \"".into(),
                    connectable: true,
                    subscriptions: vec!["s1".into(), "s 2".into()]
                },
                Database { name: "x".into(), connectable: false, subscriptions: vec!["y".into()] },
            ]
        );
        let done = "\t 1: compute_ctl_pass = \"{\"done\" : true, \"databases\" : []}\"\t(typeid = 25)\n";
        assert_eq!(parse_pass_output(done).unwrap(), Inherited::Done);
        let none = "\t 1: compute_ctl_pass = \"{\"done\" : false, \"databases\" : []}\"\t(typeid = 25)\n";
        assert_eq!(parse_pass_output(none).unwrap(), Inherited::Todo(vec![]));
        // Anything else is an error that quotes what was seen.
        let err = parse_pass_output("backend> ").unwrap_err();
        assert!(err.contains("no compute_ctl_pass row"), "{err}");
        let err = parse_pass_output("\t 1: compute_ctl_pass = \"{\"done\": 1}\"\t(typeid = 25)").unwrap_err();
        assert!(err.contains("unexpected compute_ctl_pass value"), "{err}");
        let err =
            parse_pass_output("\t 1: compute_ctl_pass = \"{\"done\": false, \"databases\": [[1]]}\"\t(t").unwrap_err();
        assert!(err.contains("bad entry"), "{err}");
    }

    #[test]
    fn unreadable_or_unclean_clusters_never_skip_the_pass() {
        let dir = std::env::temp_dir().join(format!("cc-subs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("global")).unwrap();
        assert!(!no_subscription_can_exist(&dir));
        let mut control = vec![0u8; 64];
        control[16..20].copy_from_slice(&1u32.to_ne_bytes());
        std::fs::write(dir.join("global/pg_control"), &control).unwrap();
        let mut map = Vec::new();
        map.extend_from_slice(&0x592717i32.to_ne_bytes());
        map.extend_from_slice(&1i32.to_ne_bytes());
        map.extend_from_slice(&6100u32.to_ne_bytes());
        map.extend_from_slice(&6100u32.to_ne_bytes());
        std::fs::write(dir.join("global/pg_filenode.map"), &map).unwrap();
        std::fs::write(dir.join("global/6100"), b"").unwrap();
        assert!(no_subscription_can_exist(&dir));
        std::fs::write(dir.join("global/6100"), vec![0u8; 8192]).unwrap();
        assert!(!no_subscription_can_exist(&dir));
        std::fs::write(dir.join("global/6100"), b"").unwrap();
        control[16..20].copy_from_slice(&4u32.to_ne_bytes()); // in production: WAL may add rows
        std::fs::write(dir.join("global/pg_control"), &control).unwrap();
        assert!(!no_subscription_can_exist(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
