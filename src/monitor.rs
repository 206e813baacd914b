//! The activity monitor: tells the control plane, through `last_active` in `GET /status`,
//! when a user last used this compute (reference 5).
//!
//! One thread, started the first time the compute is `running`. Every 500 ms (the first tick
//! at once) it runs one query on one reused connection, tagged
//! `compute_ctl:activity_monitor`, while Postgres is up; it reconnects on the next tick after
//! any error and ends when the compute terminates.
//!
//! What counts as activity, as in Neon: a client backend that is not idle (`last_active` =
//! now), or else the latest `state_change` of idle client backends; a replication connection
//! other than the walproposer, a running subscription worker or an autovacuum worker (now).
//! What does not count: compute_ctl's own connections (application_name `compute_ctl:…`) and
//! connections of the `--connstr` user, which plays Neon's `cloud_admin` (the control plane's
//! own user). `last_active` only moves forward.
//!
//! Each tick also feeds the downtime metrics: a failed connect or query, or Postgres down
//! while the compute should be running, counts as down (Neon's `report_down`).
//!
//! The installed-extensions gauge is collected once Postgres is up after a start, then every
//! collection interval: `--installed-extensions-collection-interval`, replaced by the spec's
//! `suspend_timeout_seconds` when it has one (`-1` or `0` mean 3600 s), as Neon does. (Neon
//! sleeps twice the interval and never lets it shrink; here it is the interval as given.)
//!
//! Cost: one single-row query per 500 ms on an open connection, a few hundred microseconds of
//! Postgres time per second.

use crate::lifecycle::{Shared, Status};
use crate::postgres::sql;
use crate::spec::ComputeSpec;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const INTERVAL: Duration = Duration::from_millis(500);

/// Seconds between installed-extension collections.
static EXTENSIONS_INTERVAL_SECS: AtomicU64 = AtomicU64::new(3600);

/// Sets the collection interval from the flag and the running spec (see the module docs).
pub fn set_extensions_interval(flag: Duration, spec: &ComputeSpec) {
    let secs = match spec.suspend_timeout_seconds {
        None => flag.as_secs(),
        Some(s) if s <= 0 => 3600,
        Some(s) => s as u64,
    };
    EXTENSIONS_INTERVAL_SECS.store(secs.max(1), Ordering::SeqCst);
}

/// One round trip: the whole of Neon's checks. State times are read as epoch microseconds, so
/// the session's TimeZone does not matter (Neon formats them in the session's zone and reads
/// them as UTC).
const QUERY: &str = "SELECT \
    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
       AND usename::text IS DISTINCT FROM $1 AND coalesce(application_name, '') NOT LIKE 'compute\\_ctl:%' \
       AND state IS DISTINCT FROM 'idle') AS busy, \
    (SELECT (extract(epoch FROM max(state_change)) * 1000000)::int8 FROM pg_stat_activity \
       WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
       AND usename::text IS DISTINCT FROM $1 AND coalesce(application_name, '') NOT LIKE 'compute\\_ctl:%' \
       AND state = 'idle') AS idle_since, \
    (SELECT count(*) FROM pg_stat_replication WHERE application_name IS DISTINCT FROM 'walproposer') \
     + (SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL) \
     + (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker') AS background";

/// Starts the monitor thread once per process; later calls do nothing.
pub fn ensure_started(shared: &Shared, connstr: &str) {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let shared = shared.clone();
    let connstr = connstr.to_string();
    let spawned = std::thread::Builder::new().name("compute-monitor".into()).spawn(move || run(&shared, &connstr));
    if let Err(e) = spawned {
        log::error!("cannot start the activity monitor: {e}");
    }
}

fn run(shared: &Shared, connstr: &str) {
    let superuser = sql::connstr_user(connstr).unwrap_or_default();
    let mut conn: Option<(postgres::Client, postgres::Statement)> = None;
    // When the next installed-extensions collection is due; None: at once.
    let mut next_extensions: Option<Instant> = None;
    loop {
        let snap = shared.get();
        let now = Instant::now();
        match snap.status {
            Status::TerminationPendingFast | Status::TerminationPendingImmediate | Status::Terminated => return,
            // Waiting for a spec or starting: there is no Postgres to be down yet.
            Status::Empty | Status::ConfigurationPending | Status::Init => conn = None,
            _ if !snap.postgres_up => {
                conn = None;
                crate::metrics::monitor_check(false, now);
            }
            _ => {
                if conn.is_none() {
                    conn = connect(connstr);
                }
                let mut up = false;
                if let Some((client, stmt)) = conn.as_mut() {
                    match sample(client, stmt, &superuser) {
                        Ok(Some(t)) => {
                            up = true;
                            shared.touch_active(t);
                        }
                        Ok(None) => up = true,
                        Err(e) => {
                            log::warn!("activity monitor: {}; reconnecting", crate::error::db_error_text(&e));
                            conn = None;
                        }
                    }
                    // Off the start-up path, as Neon does after start.
                    if next_extensions.is_none_or(|t| now >= t)
                        && let Some((client, _)) = conn.as_mut()
                        && refresh_installed_extensions(client, connstr)
                    {
                        let secs = EXTENSIONS_INTERVAL_SECS.load(Ordering::SeqCst);
                        next_extensions = Some(now + Duration::from_secs(secs));
                    }
                }
                crate::metrics::monitor_check(up, now);
            }
        }
        std::thread::sleep(INTERVAL);
    }
}

fn connect(connstr: &str) -> Option<(postgres::Client, postgres::Statement)> {
    let mut client = match sql::connect(connstr, None, sql::APP_MONITOR) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("activity monitor cannot connect: {}", e.report());
            return None;
        }
    };
    match client.prepare_typed(QUERY, &[postgres::types::Type::TEXT]) {
        Ok(stmt) => Some((client, stmt)),
        Err(e) => {
            log::warn!("activity monitor cannot prepare its query: {}", crate::error::db_error_text(&e));
            None
        }
    }
}

/// The activity time this sample shows, if any.
fn sample(
    client: &mut postgres::Client,
    stmt: &postgres::Statement,
    superuser: &str,
) -> Result<Option<SystemTime>, postgres::Error> {
    let row = client.query_one(stmt, &[&superuser])?;
    let busy: i64 = row.get(0);
    let idle_since: Option<i64> = row.get(1);
    let background: i64 = row.get(2);
    if busy > 0 || background > 0 {
        return Ok(Some(SystemTime::now()));
    }
    Ok(idle_since.and_then(|us| u64::try_from(us).ok()).map(|us| UNIX_EPOCH + Duration::from_micros(us)))
}

/// Fills `compute_installed_extensions` from up to 500 connectable databases. True when done.
fn refresh_installed_extensions(client: &mut postgres::Client, connstr: &str) -> bool {
    use crate::metrics::InstalledExtension;
    let dbs = match client.query(
        "SELECT datname FROM pg_database WHERE datallowconn AND datconnlimit <> -2 ORDER BY datname LIMIT 500",
        &[],
    ) {
        Ok(rows) => rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>(),
        Err(_) => return false,
    };
    let mut counts = std::collections::BTreeMap::<InstalledExtension, u64>::new();
    for db in dbs {
        let Ok(mut c) = sql::connect(connstr, Some(&db), "compute_ctl:installed_extensions") else { continue };
        let Ok(rows) = c.query("SELECT extname::text, extversion, extowner::oid::int8 FROM pg_extension", &[]) else {
            continue;
        };
        for r in rows {
            let ext = InstalledExtension {
                name: r.get(0),
                version: r.get(1),
                // 10 is the bootstrap superuser's oid, as Neon checks.
                owned_by_superuser: r.get::<_, i64>(2) == 10,
            };
            *counts.entry(ext).or_default() += 1;
        }
    }
    crate::metrics::set_installed_extensions(counts);
    true
}
