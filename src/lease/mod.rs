//! LSN leases for a `Static` compute (reference §4.12, 2026 §10.2): a read-only compute at a
//! fixed LSN asks every pageserver to keep that LSN's data from garbage collection.
//!
//! One thread, owned by the compute: the owner calls [`ensure`] as soon as a spec is accepted
//! (as Neon does, so the basebackup at the old LSN is protected too) and after every event
//! while the compute runs (it starts the thread, or hands it a changed spec), and [`stop`]
//! before it stops Postgres or when a start failed; [`wait_stopped`] at the end of the process
//! bounds how long a lease query still in flight may delay the exit. The owner never waits on the thread otherwise: it only takes
//! a mutex that the thread holds for no longer than a copy.
//!
//! A round asks every pageserver of every shard, over libpq, with the simple query
//! `lease lsn <tenant_shard_id> <timeline_id> <lsn> `, and reads `valid_until` (ms since the
//! epoch) from the answer. Then:
//! - all granted: sleep until `max(earliest − 60 s, earliest / 2)` from now;
//! - any NULL: the LSN is behind the pageserver's GC cutoff; the lease can never be had, so
//!   the thread logs a warning and ends (Neon ends it too). A later change of the pageservers
//!   or the LSN starts it again;
//! - any error: retry after 500 ms × 1.5ⁿ, at most 60 s.
//!
//! Every sleep is a wait on a condition variable, so a new target (a live `/configure` or
//! `/refresh_configuration` naming other pageservers) or [`stop`] ends it at once.
//!
//! Each query's connection has a connect timeout, a TCP user timeout and keepalives of
//! [`QUERY_TIMEOUT`], so a pageserver that vanishes mid-query fails the round within that
//! bound. (The `postgres` crate has no read timeout: a pageserver that keeps the connection
//! alive but never answers holds the round until the process ends; no further query is
//! sent after [`stop`], and the exit waits at most [`QUERY_TIMEOUT`] for it.)
//!
//! State for `/status` (`lsn_lease`) and `/metrics` (`compute_ctl_lsn_lease_*`) is kept here.

mod target;

pub use target::{Pageserver, Target, parse_valid_until, query, renew_after, retry_after, target, tenant_shard_id};

use crate::error::db_error_text;
use crate::spec::ParsedSpec;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bound on one lease query's connect, and on a dead peer during it.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What `/status` and `/metrics` show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    /// Set once a lease thread has been started in this process.
    pub enabled: bool,
    pub lsn: Option<String>,
    /// The earliest `valid_until` of the last granted round, ms since the epoch.
    pub valid_until_ms: Option<u64>,
    /// A pageserver answered NULL: the LSN is behind its GC cutoff.
    pub refused: bool,
    /// Failed rounds since the process started.
    pub failures: u64,
    pub last_error: Option<String>,
    /// Granted rounds since the process started.
    pub granted: u64,
}

#[derive(Debug, Default)]
struct Inner {
    target: Option<Arc<Target>>,
    /// Bumped with every new target, so a sleeping thread knows to start a round.
    generation: u64,
    stop: bool,
    /// A thread is alive (between its spawn and its last unlock).
    running: bool,
    /// The target that was refused; not asked again until the target changes.
    refused: Option<Arc<Target>>,
    info: Info,
}

struct Lease {
    inner: Mutex<Option<Inner>>,
    changed: Condvar,
}

static LEASE: Lease = Lease { inner: Mutex::new(None), changed: Condvar::new() };

fn lock() -> MutexGuard<'static, Option<Inner>> {
    crate::locks::lock(&LEASE.inner)
}

fn with<R>(f: impl FnOnce(&mut Inner) -> R) -> R {
    f(lock().get_or_insert_with(Inner::default))
}

/// Called by the owner when a spec is accepted and after every event while the compute
/// runs: starts the thread for a `Static` compute in pageserver mode, hands it a changed
/// target, or stops it when the spec no longer asks for leases (a promotion, say). Never
/// blocks on the thread.
pub fn ensure(spec: &ParsedSpec) {
    let wanted = target(spec);
    let mut guard = lock();
    let inner = guard.get_or_insert_with(Inner::default);
    let Some(wanted) = wanted else {
        if inner.running && !inner.stop {
            log::info!("lsn lease: the spec is no longer Static in pageserver mode; stopping the lease thread");
            inner.stop = true;
            inner.target = None;
            LEASE.changed.notify_all();
        }
        return;
    };
    let asking = inner.running && !inner.stop && inner.target.as_deref() == Some(&wanted);
    if asking || inner.refused.as_deref() == Some(&wanted) {
        return;
    }
    describe(&wanted);
    inner.refused = None;
    inner.info.refused = false;
    inner.target = Some(Arc::new(wanted));
    inner.generation += 1;
    inner.stop = false;
    if inner.running {
        LEASE.changed.notify_all();
        return;
    }
    inner.running = true;
    inner.info.enabled = true;
    drop(guard);
    if let Err(e) = std::thread::Builder::new().name("lsn-lease".into()).spawn(run) {
        log::error!("lsn lease: cannot start the lease thread: {e}");
        with(|i| i.running = false);
    }
}

fn describe(t: &Target) {
    log::info!("lsn lease: leasing LSN {} of timeline {} on {} pageserver(s)", t.lsn, t.timeline, t.pageservers.len());
    if t.grpc_preferred {
        log::warn!("lsn lease: prefer_protocol is grpc; this build speaks libpq only and uses each libpq_url");
    }
    if !t.skipped.is_empty() {
        log::warn!("lsn lease: no libpq_url for {}; no lease is taken there", t.skipped.join(", "));
    }
}

/// Asks the thread to end (before Postgres is stopped). It sends no further query; one in
/// flight finishes first.
pub fn stop() {
    if let Some(inner) = lock().as_mut()
        && inner.running
    {
        inner.stop = true;
        LEASE.changed.notify_all();
    }
}

/// Waits up to `limit` for the thread to end after [`stop`]; true when none runs.
pub fn wait_stopped(limit: Duration) -> bool {
    let guard = lock();
    let (guard, _) = LEASE
        .changed
        .wait_timeout_while(guard, limit, |g| g.as_ref().is_some_and(|i| i.running))
        .unwrap_or_else(PoisonError::into_inner);
    !guard.as_ref().is_some_and(|i| i.running)
}

/// A copy of the state for `/status` and `/metrics`.
pub fn info() -> Info {
    lock().as_ref().map(|i| i.info.clone()).unwrap_or_default()
}

/// How one round ended.
enum Round {
    /// The earliest `valid_until` of all pageservers.
    Granted(SystemTime),
    /// `(pageserver, tenant shard)` that answered NULL.
    Refused(String, String),
    Failed(String),
    /// [`stop`] came between two pageservers.
    Stopped,
}

fn run() {
    let mut failures = 0u32;
    loop {
        let (t, generation) = {
            let mut guard = lock();
            let inner = guard.get_or_insert_with(Inner::default);
            match (&inner.target, inner.stop) {
                (Some(t), false) => (t.clone(), inner.generation),
                _ => {
                    inner.running = false;
                    LEASE.changed.notify_all();
                    log::info!("lsn lease: thread stopped");
                    return;
                }
            }
        };
        let wait = match round(&t) {
            Round::Granted(until) => {
                failures = 0;
                let now = SystemTime::now();
                let valid = until.duration_since(now).unwrap_or_default();
                let wait = renew_after(valid);
                log::info!(
                    "lsn lease: LSN {} leased until {} ms since the epoch; renewing in {} ms",
                    t.lsn,
                    ms(until),
                    wait.as_millis()
                );
                with(|i| {
                    i.info.lsn = Some(t.lsn.to_string());
                    i.info.valid_until_ms = Some(ms(until));
                    i.info.granted += 1;
                    i.info.last_error = None;
                });
                wait
            }
            Round::Refused(server, shard) => {
                log::warn!(
                    "lsn lease: {server} refused the lease of LSN {} for {shard}: the lease could not be obtained, \
                     the LSN is behind the GC cutoff; no further leases are asked for",
                    t.lsn
                );
                let mut guard = lock();
                let inner = guard.get_or_insert_with(Inner::default);
                inner.info.refused = true;
                inner.info.valid_until_ms = None;
                // A target changed during the round is tried at once; the refused one never again.
                if inner.generation == generation {
                    inner.refused = Some(t);
                    inner.target = None;
                }
                continue;
            }
            Round::Stopped => continue,
            Round::Failed(e) => {
                failures += 1;
                let wait = retry_after(failures);
                log::warn!("lsn lease: {e}; retry {failures} in {} ms", wait.as_millis());
                with(|i| {
                    i.info.failures += 1;
                    i.info.last_error = Some(e);
                });
                wait
            }
        };
        sleep(generation, wait);
    }
}

/// Waits `d`, or less when the target changes or the thread is asked to stop.
fn sleep(generation: u64, d: Duration) {
    let guard = lock();
    let _ = LEASE
        .changed
        .wait_timeout_while(guard, d, |g| g.as_ref().is_some_and(|i| i.generation == generation && !i.stop))
        .unwrap_or_else(PoisonError::into_inner);
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One lease from every pageserver; stops at the first refusal or error.
fn round(t: &Target) -> Round {
    if t.pageservers.is_empty() {
        return Round::Failed("no pageserver with a libpq_url to lease from".into());
    }
    let mut earliest: Option<SystemTime> = None;
    for ps in &t.pageservers {
        if with(|i| i.stop) {
            return Round::Stopped;
        }
        match lease_one(t, ps) {
            Ok(Some(until)) => earliest = Some(earliest.map_or(until, |e| e.min(until))),
            Ok(None) => return Round::Refused(server(&ps.url), ps.tenant_shard.clone()),
            Err(e) => return Round::Failed(format!("lease from {} failed: {e}", server(&ps.url))),
        }
    }
    Round::Granted(earliest.expect("at least one pageserver was asked"))
}

/// Sends one lease query; `Ok(None)` is a refusal (NULL `valid_until`).
fn lease_one(t: &Target, ps: &Pageserver) -> Result<Option<SystemTime>, String> {
    let mut config: postgres::Config =
        ps.url.parse().map_err(|e: postgres::Error| format!("invalid pageserver connection string: {e}"))?;
    if let Some(token) = &t.token {
        config.password(token);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(QUERY_TIMEOUT);
    }
    config
        .tcp_user_timeout(QUERY_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(QUERY_TIMEOUT / 2)
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(5);
    let started = Instant::now();
    let mut client = config.connect(postgres::NoTls).map_err(|e| format!("cannot connect: {}", db_error_text(&e)))?;
    let text = query(&ps.tenant_shard, t.timeline, t.lsn);
    let answer = client.simple_query(&text).map_err(|e| db_error_text(&e))?;
    let row = answer
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .ok_or("the answer has no row")?;
    let cell = row.try_get(0).map_err(|e| format!("the answer has no valid_until column: {e}"))?;
    let until = parse_valid_until(cell)?;
    log::debug!("lsn lease: {} answered in {} ms", server(&ps.url), started.elapsed().as_millis());
    Ok(until.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)))
}

/// `host:port` of a connection string, for messages (it may hold a password).
fn server(url: &str) -> String {
    let Ok(c) = url.parse::<postgres::Config>() else { return "(unparsable connection string)".into() };
    let host = match c.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    format!("{host}:{}", c.get_ports().first().copied().unwrap_or(5432))
}

/// `lsn_lease` in `/status`: None until a lease thread has started.
pub fn status_json() -> Option<serde_json::Value> {
    let i = info();
    i.enabled.then(|| {
        serde_json::json!({
            "lsn": i.lsn,
            "valid_until": i.valid_until_ms,
            "refused": i.refused,
            "failures": i.failures,
            "last_error": i.last_error,
        })
    })
}

/// The `compute_ctl_lsn_lease_*` families, once a lease thread has started.
pub fn render_metrics(out: &mut String) {
    use crate::metrics::family;
    let i = info();
    if !i.enabled {
        return;
    }
    family(
        out,
        "compute_ctl_lsn_lease_valid_until_seconds",
        "gauge",
        "When the current LSN lease runs out, in seconds since the epoch (absent when none is held)",
        i.valid_until_ms.map(|ms| (Vec::new(), ms as f64 / 1000.0)).into_iter(),
    );
    family(
        out,
        "compute_ctl_lsn_lease_refused",
        "gauge",
        "Whether a pageserver refused the LSN lease (the LSN is behind its GC cutoff)",
        std::iter::once((Vec::new(), if i.refused { 1.0 } else { 0.0 })),
    );
    family(
        out,
        "compute_ctl_lsn_lease_failures_total",
        "counter",
        "LSN lease rounds that failed and were retried",
        std::iter::once((Vec::new(), i.failures as f64)),
    );
    family(
        out,
        "compute_ctl_lsn_lease_granted_total",
        "counter",
        "LSN lease rounds granted by every pageserver",
        std::iter::once((Vec::new(), i.granted as f64)),
    );
}

#[cfg(test)]
mod tests;
