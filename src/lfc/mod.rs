//! LFC prewarm and offload (reference 2026 §5.8): the neon extension's Local File Cache is
//! saved to the endpoint storage ("offload") and loaded back into a new compute ("prewarm"),
//! so that a restarted or promoted compute starts with a warm cache.
//!
//! This module owns the two state machines, Neon's `LfcPrewarmState` and `LfcOffloadState`
//! (their JSON bodies are the answers of `GET /lfc/prewarm` and `GET /lfc/offload`), and the
//! background work: each prewarm or offload runs on its own thread, never on an HTTP handler
//! or the owner loop. After `running`, [`ensure_started`] starts the prewarm of `autoprewarm`
//! and the offload every `offload_lfc_interval_seconds`; [`stop`] ends both when Postgres
//! stops.
//!
//! # Types
//! - [`Machine`] holds both states. [`Machine::begin_prewarm`] is the only way to a
//!   [`Ticket`], and it refuses while a prewarm runs (Neon's 429); the ticket is spent by
//!   [`Machine::finish_prewarm`], so only the prewarm that began can end the `prewarming` state.
//! - [`Job`] is the running prewarm's cancel handle: `DELETE /lfc/prewarm` sets it and sends
//!   Postgres's cancel request while `neon.prewarm_local_cache` runs.
//!
//! ```compile_fail,E0451
//! // A ticket cannot be made outside `begin_prewarm` (E0451: private field).
//! let t = compute_ctl::lfc::Ticket { job: std::sync::Arc::new(Default::default()) };
//! ```
//! ```
//! // The twin: the ticket `begin_prewarm` hands out.
//! let mut m = compute_ctl::lfc::Machine::default();
//! let t = m.begin_prewarm().unwrap();
//! m.finish_prewarm(t, compute_ctl::lfc::PrewarmState::Skipped);
//! ```
//!
//! Differences from Neon, on purpose: a `DELETE` with no prewarm running changes nothing (in
//! Neon it leaves a cancelled token behind, and the next prewarm ends `cancelled`); with no
//! spec the `POST` answers 412 (Neon's task panics with the state lock held).

mod machine;
pub mod storage;

pub use machine::{Job, Machine, OFFLOAD_BUSY, OffloadState, PREWARM_BUSY, PrewarmState, Ticket};

use crate::locks::lock;
use crate::metrics::{Counter, count};
use crate::postgres::Node;
use crate::postgres::lfc::{self as pg, Interrupted, Session};
use crate::spec::ParsedSpec;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What of the spec the LFC work needs: the object's path and the endpoint storage.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    tenant: String,
    timeline: String,
    endpoint_id: Option<String>,
    addr: Option<String>,
    token: Option<String>,
    autoprewarm: bool,
    offload_interval: Option<Duration>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("endpoint_id", &self.endpoint_id)
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .finish_non_exhaustive()
    }
}

impl Target {
    pub fn of(spec: &ParsedSpec) -> Target {
        Target {
            tenant: spec.tenant_id().to_string(),
            timeline: spec.timeline_id().to_string(),
            endpoint_id: spec.spec().endpoint_id.clone().filter(|e| !e.is_empty()),
            addr: spec.endpoint_storage_addr().map(str::to_string),
            token: spec.endpoint_storage_token().map(str::to_string),
            autoprewarm: spec.spec().autoprewarm,
            offload_interval: spec.spec().offload_lfc_interval_seconds.map(|n| Duration::from_secs(n.get())),
        }
    }

    /// The object of `from_endpoint`, else of this endpoint; an error names what is missing.
    pub fn object(&self, from_endpoint: Option<&str>) -> Result<storage::Object, String> {
        let missing = |field: &str, setting: &str| {
            format!("{field} missing: set it in the spec (or as the setting {setting}) to use the endpoint storage")
        };
        let addr =
            self.addr.as_deref().ok_or_else(|| missing("endpoint_storage_addr", "neon.endpoint_storage_addr"))?;
        let token =
            self.token.as_deref().ok_or_else(|| missing("endpoint_storage_token", "neon.endpoint_storage_token"))?;
        let endpoint = from_endpoint
            .or(self.endpoint_id.as_deref())
            .ok_or("endpoint_id missing: the spec names no endpoint and the request no from_endpoint")?;
        Ok(storage::Object::new(addr, &self.tenant, &self.timeline, endpoint, token))
    }
}

/// Whether `id` can be a path segment of the object URL (Neon's endpoint ids are like
/// `ep-cool-darkness-123456`).
pub fn valid_endpoint_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

static MACHINE: Mutex<Option<Machine>> = Mutex::new(None);

fn machine<R>(f: impl FnOnce(&mut Machine) -> R) -> R {
    f(lock(&MACHINE).get_or_insert_with(Machine::default))
}

/// `GET /lfc/prewarm`.
pub fn prewarm_state() -> PrewarmState {
    machine(|m| m.prewarm().clone())
}

/// `GET /lfc/offload`.
pub fn offload_state() -> OffloadState {
    machine(|m| m.offload().clone())
}

fn ms(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_millis()).unwrap_or(u32::MAX)
}

fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> Result<(), String> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(work)
        .map(|_| ())
        .map_err(|e| format!("cannot start {name}: {e}"))
}

/// Starts a prewarm from `from_endpoint`'s state (else this endpoint's) on its own thread.
/// `Err` is Neon's 429 message when one runs already.
pub fn start_prewarm(node: &Node, target: &Target, from_endpoint: Option<&str>) -> Result<(), String> {
    let ticket = machine(Machine::begin_prewarm)?;
    count(Counter::LfcPrewarms);
    let object = target.object(from_endpoint);
    log::info!("LFC prewarm started from {}", object.as_ref().map_or("nowhere", |o| o.url.as_str()));
    let (node, job) = (node.clone(), ticket.job());
    let ticket = Arc::new(Mutex::new(Some(ticket)));
    let slot = ticket.clone();
    let result = spawn("lfc-prewarm", move || {
        let end = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| prewarm(&node, object, &job)))
            .unwrap_or_else(|_| PrewarmState::Failed { error: "internal error: the prewarm panicked".into() });
        if let Some(t) = lock(&slot).take() {
            finish_prewarm(t, end);
        }
    });
    if let Err(e) = result
        && let Some(t) = lock(&ticket).take()
    {
        finish_prewarm(t, PrewarmState::Failed { error: e });
    }
    Ok(())
}

fn finish_prewarm(ticket: Ticket, end: PrewarmState) {
    match &end {
        PrewarmState::Failed { error } => {
            count(Counter::LfcPrewarmErrors);
            log::warn!("LFC prewarm failed: {error}");
        }
        other => log::info!("LFC prewarm ended: {}", serde_json::to_string(other).unwrap_or_default()),
    }
    machine(|m| m.finish_prewarm(ticket, end));
}

/// The prewarm itself: download, decompress, `neon.prewarm_local_cache`, `get_prewarm_info`.
fn prewarm(node: &Node, object: Result<storage::Object, String>, job: &Job) -> PrewarmState {
    let run = || -> Result<PrewarmState, String> {
        // Postgres first: on vanilla PostgreSQL the missing neon function is the answer.
        let mut session = Session::open(node, "compute_ctl:lfc_prewarm", &[pg::PREWARM, pg::PREWARM_INFO])?;
        let object = object?;
        if job.cancelled() {
            return Ok(PrewarmState::Cancelled);
        }
        let started = Instant::now();
        let compressed = match storage::get(&object)? {
            storage::Fetched::Found(b) => b,
            storage::Fetched::Missing => {
                log::info!("LFC prewarm: no state stored at {}", object.url);
                return Ok(PrewarmState::Skipped);
            }
        };
        let state_download_time_ms = ms(started);
        if job.cancelled() {
            return Ok(PrewarmState::Cancelled);
        }
        let started = Instant::now();
        let state = storage::decompress(&compressed, storage::MAX_STATE)?;
        let uncompress_time_ms = ms(started);
        drop(compressed);
        if !job.arm(session.cancel_token()) {
            return Ok(PrewarmState::Cancelled);
        }
        let started = Instant::now();
        match session.prewarm(&state) {
            Ok(()) => {}
            Err(Interrupted::Cancelled) => return Ok(PrewarmState::Cancelled),
            Err(Interrupted::Failed(e)) => return Err(e),
        }
        let prewarm_time_ms = ms(started);
        let info = session.info()?;
        Ok(PrewarmState::Completed {
            total: info.total,
            prewarmed: info.prewarmed,
            skipped: info.skipped,
            state_download_time_ms,
            uncompress_time_ms,
            prewarm_time_ms,
        })
    };
    run().unwrap_or_else(|error| PrewarmState::Failed { error })
}

/// `DELETE /lfc/prewarm`: cancels the running prewarm, if any.
pub fn cancel_prewarm() {
    match machine(|m| m.running_job()) {
        Some(job) => {
            log::info!("LFC prewarm: cancel requested");
            job.cancel();
        }
        None => log::info!("LFC prewarm: cancel requested with no prewarm running: nothing to do"),
    }
}

/// Starts an offload on its own thread; `Err` is Neon's 429 message when one runs already.
pub fn start_offload(node: &Node, target: &Target) -> Result<(), String> {
    machine(Machine::begin_offload)?;
    let (node, target) = (node.clone(), target.clone());
    if let Err(e) = spawn("lfc-offload", move || offload_now(&node, &target)) {
        machine(|m| m.finish_offload(OffloadState::Failed { error: e }));
    }
    Ok(())
}

/// Runs an offload begun with [`Machine::begin_offload`] and records its end.
fn offload_now(node: &Node, target: &Target) {
    count(Counter::LfcOffloads);
    let end = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| offload(node, target)))
        .unwrap_or_else(|_| Err("internal error: the offload panicked".into()))
        .unwrap_or_else(|error| OffloadState::Failed { error });
    match &end {
        OffloadState::Failed { error } => {
            count(Counter::LfcOffloadErrors);
            log::warn!("LFC offload failed: {error}");
        }
        other => log::info!("LFC offload ended: {}", serde_json::to_string(other).unwrap_or_default()),
    }
    machine(|m| m.finish_offload(end));
}

fn offload(node: &Node, target: &Target) -> Result<OffloadState, String> {
    let mut session = Session::open(node, "compute_ctl:lfc_offload", &[pg::GET_STATE])?;
    let object = target.object(None)?;
    let started = Instant::now();
    let Some(state) = session.state()? else {
        log::info!("LFC offload: the file cache has no state to save");
        return Ok(OffloadState::Skipped);
    };
    drop(session);
    let state_query_time_ms = ms(started);
    let started = Instant::now();
    let compressed = storage::compress(&state)?;
    let compress_time_ms = ms(started);
    drop(state);
    let started = Instant::now();
    storage::put(&object, compressed)?;
    Ok(OffloadState::Completed { state_query_time_ms, compress_time_ms, state_upload_time_ms: ms(started) })
}

/// The background tasks of one Postgres run: whether they run, for which postmaster, and a
/// generation that [`stop`] moves on so the periodic offload of an earlier run ends.
struct Run {
    active: bool,
    generation: u64,
    /// The postmaster `autoprewarm` last ran for: once per postmaster.
    autoprewarmed: Option<u32>,
}

static RUN: Mutex<Run> = Mutex::new(Run { active: false, generation: 0, autoprewarmed: None });
static WAKE: Condvar = Condvar::new();

/// Once Postgres (postmaster `pid`) runs: the prewarm of `autoprewarm` (once per postmaster)
/// and the offload every `offload_lfc_interval_seconds`, from the spec published in `target`.
/// Does nothing while they run.
pub fn ensure_started(node: &Node, target: Option<&Arc<Target>>, pid: Option<u32>) {
    let (Some(target), Some(pid)) = (target, pid) else { return };
    let (generation, autoprewarm) = {
        let mut run = lock(&RUN);
        if run.active {
            return;
        }
        run.active = true;
        let autoprewarm = target.autoprewarm && run.autoprewarmed != Some(pid);
        if autoprewarm {
            run.autoprewarmed = Some(pid);
        }
        (run.generation, autoprewarm)
    };
    if autoprewarm {
        log::info!("autoprewarm: starting an LFC prewarm");
        if let Err(e) = start_prewarm(node, target, None) {
            log::warn!("autoprewarm: {e}");
        }
    }
    if let Some(interval) = target.offload_interval {
        let (node, target) = (node.clone(), target.clone());
        let started = spawn("lfc-offload-every", move || offload_every(interval, generation, &node, &target));
        match started {
            Ok(()) => log::info!("LFC offload every {} s", interval.as_secs()),
            Err(e) => log::error!("no periodic LFC offload: {e}"),
        }
    }
}

/// The periodic offload: first after `interval`, then every `interval`, until [`stop`].
fn offload_every(interval: Duration, generation: u64, node: &Node, target: &Target) {
    let mut next = Instant::now() + interval;
    loop {
        let begun = {
            let mut run = lock(&RUN);
            loop {
                if run.generation != generation {
                    return;
                }
                let left = next.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                run = WAKE.wait_timeout(run, left).map_or_else(|e| e.into_inner().0, |(g, _)| g);
            }
            // Begun under the run's lock: once `stop` has moved the generation on, no offload
            // begins, and one begun before it is waited for.
            machine(|m| m.may_offload_periodically() && m.begin_offload().is_ok())
        };
        next = Instant::now() + interval;
        if begun {
            offload_now(node, target);
        } else {
            log::debug!("periodic LFC offload skipped: a prewarm or an offload is in progress, or the prewarm failed");
        }
    }
}

/// How long [`stop`] waits for an offload in progress to end before Postgres stops.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Postgres stops: the periodic offload ends (an offload in progress gets up to `STOP_WAIT`
/// to finish, so that it does not fail half-way) and a running prewarm is cancelled. The next
/// [`ensure_started`] starts them again.
pub fn stop() {
    {
        let mut run = lock(&RUN);
        if !run.active {
            return;
        }
        run.active = false;
        run.generation += 1;
    }
    WAKE.notify_all();
    if let Some(job) = machine(|m| m.running_job()) {
        job.cancel();
    }
    let deadline = Instant::now() + STOP_WAIT;
    while machine(|m| *m.offload() == OffloadState::Offloading) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    log::info!("LFC background tasks stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(extra: &str) -> Target {
        let json = format!(
            r#"{{"format_version":1.0,"cluster":{{"roles":[],"databases":[]{extra}}},
            "tenant_id":"b0554b632bd4d547a63b86c3630317e8","timeline_id":"2414a61ffc94e428f14b5758fe308e13"}}"#
        );
        Target::of(&ParsedSpec::parse(&json).unwrap())
    }

    #[test]
    fn the_object_url_comes_from_the_spec_or_its_settings_and_missing_parts_are_named() {
        let err = target("").object(None).unwrap_err();
        assert!(err.starts_with("endpoint_storage_addr missing"), "{err}");
        let settings = r#","settings":[
            {"name":"neon.endpoint_storage_addr","value":"store:9000","vartype":"string"},
            {"name":"neon.endpoint_storage_token","value":"tok","vartype":"string"}]"#;
        let t = target(settings);
        let err = t.object(None).unwrap_err();
        assert!(err.starts_with("endpoint_id missing"), "{err}");
        let o = t.object(Some("ep-x")).unwrap();
        assert_eq!(
            o.url,
            "http://store:9000/b0554b632bd4d547a63b86c3630317e8/2414a61ffc94e428f14b5758fe308e13/ep-x/lfc_state"
        );
        assert!(!format!("{t:?}").contains("tok\""), "{t:?}");
    }

    #[test]
    fn endpoint_ids_that_fit_a_path_segment() {
        assert!(valid_endpoint_id("ep-cool-darkness-123456"));
        for bad in ["", ".", "..", "a/b", "a b", "a?b", "%2e"] {
            assert!(!valid_endpoint_id(bad), "{bad:?}");
        }
    }
}
