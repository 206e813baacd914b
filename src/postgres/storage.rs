//! Pageserver mode: PGDATA is made anew from a basebackup on every start, and a Primary syncs
//! its safekeepers before it starts and after Postgres exits.
//!
//! Contracts of [`prepare_from_pageserver`]:
//! - prerequisites: a validated spec in pageserver mode; no Postgres runs on PGDATA;
//! - on success: PGDATA is a complete basebackup (mode 0700, owned by the Postgres user) with
//!   our `postgresql.conf`; the caller writes the remaining files and starts Postgres;
//! - on error: PGDATA does not exist (a partial unpack only ever lives in a staging directory
//!   beside it, removed on failure), so a half-written PGDATA can never be started.
//!
//! The old PGDATA is removed only when it is a PGDATA (it has `PG_VERSION`) or empty: a wrong
//! `-D` pointing at someone's files is refused instead of wiped (Neon wipes whatever is there).

use super::basebackup::{self, Request};
use super::{Node, Stopped};
use super::{conf, pgdata, safekeepers};
use crate::error::{Error, Result};
use crate::spec::{ComputeMode, Lsn, ParsedSpec, StorageMode};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Tries after the first one (Neon: 10, so 11 in all).
const RETRIES: u32 = 10;
/// The first pause between tries; each next one is 1.5 times longer (Neon's schedule).
const FIRST_PAUSE: Duration = Duration::from_millis(500);
/// Neon's testing override of [`RETRIES`]; honoured always, as it only shortens or lengthens
/// the retry schedule.
const RETRIES_ENV: &str = "NEON_COMPUTE_TESTING_BASEBACKUP_RETRIES";

/// How long the steps of [`prepare_from_pageserver`] took, for the caller to publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    pub sync_safekeepers_ms: u64,
    pub pageserver_connect_micros: u64,
    pub basebackup_ms: u64,
    pub basebackup_bytes: u64,
}

/// Wipes PGDATA and fills it from the pageserver (reference 4.3 steps 1–4). Postgres must not
/// run (`Stopped`).
pub fn prepare_from_pageserver(_proof: &Stopped, node: &Node, spec: &ParsedSpec) -> Result<Timings> {
    let StorageMode::Pageserver { connstrings, .. } = spec.storage() else {
        return Err(Error::Basebackup {
            what: "basebackup: the spec has no pageserver_connstring".into(),
            source: None,
        });
    };
    let pgdata = &node.pgdata;
    let staging = staging_dir(pgdata);
    remove_old(pgdata, &staging)?;
    let conf_text = conf::render(
        spec,
        node.internal_http_port,
        spec.spec().drop_subscriptions_before_start,
        &node.privileged_role,
        node.ssl(spec),
    );
    let timings = match fill(node, spec, &connstrings[0], &staging, &conf_text) {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    std::fs::rename(&staging, pgdata).map_err(|e| Error::io("cannot move the new PGDATA to", pgdata, e))?;
    Ok(timings)
}

fn fill(node: &Node, spec: &ParsedSpec, connstr: &str, staging: &Path, conf_text: &str) -> Result<Timings> {
    let mut timings = Timings::default();
    fresh_dir(node, staging, conf_text)?;
    let s = spec.spec();
    let lsn = match s.mode {
        ComputeMode::Primary => {
            let started = Instant::now();
            let lsn = safekeepers::sync(
                &node.postgres_bin(),
                staging,
                s.storage_auth_token.as_deref(),
                node.run_as,
                &node.interrupted,
            )
            .map_err(|e| match e {
                Error::Interrupted => e,
                e => Error::step("failed to sync safekeepers", e),
            })?;
            timings.sync_safekeepers_ms = started.elapsed().as_millis() as u64;
            Some(lsn)
        }
        ComputeMode::Static(lsn) => {
            log::info!("starting read-only node at static LSN {lsn}");
            Some(lsn)
        }
        ComputeMode::Replica => {
            log::info!("initializing standby from the latest pageserver LSN");
            None
        }
    };
    let req = Request {
        connstr,
        token: s.storage_auth_token.as_deref(),
        tenant: spec.tenant_id(),
        timeline: spec.timeline_id(),
        lsn,
        replica: s.mode != ComputeMode::Primary,
    };
    let fetched = fetch_with_retries(node, &req, staging, conf_text)?;
    log::info!(
        "basebackup of {} bytes unpacked in {} ms (connect {} us)",
        fetched.bytes,
        fetched.ms,
        fetched.connect_micros
    );
    timings.pageserver_connect_micros = fetched.connect_micros;
    timings.basebackup_ms = fetched.ms;
    timings.basebackup_bytes = fetched.bytes;
    if let Some(u) = node.run_as {
        pgdata::chown_tree(staging, u)?;
    }
    pgdata::set_owner_and_mode(staging, node.run_as)?;
    Ok(timings)
}

fn fetch_with_retries(node: &Node, req: &Request<'_>, staging: &Path, conf_text: &str) -> Result<basebackup::Fetched> {
    let retries = std::env::var(RETRIES_ENV).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(RETRIES);
    let lsn = req.lsn.map_or_else(|| "latest".to_string(), |l: Lsn| l.to_string());
    let mut pause = FIRST_PAUSE;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match basebackup::fetch(req, staging, &node.interrupted) {
            Ok(f) => return Ok(f),
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e) if attempt <= retries => {
                log::warn!(
                    "basebackup try {attempt} of {} failed: {}; retrying in {} ms",
                    retries + 1,
                    e.report(),
                    pause.as_millis()
                );
                sleep_unless_interrupted(pause, &node.interrupted)?;
                pause = pause.mul_f64(1.5);
                // Start the next try from an empty directory: nothing of a failed one stays.
                fresh_dir(node, staging, conf_text)?;
            }
            Err(e) => {
                let what =
                    format!("failed to get basebackup@{lsn} from pageserver {} after {attempt} tries", req.server());
                return Err(Error::basebackup(what, e));
            }
        }
    }
}

fn sleep_unless_interrupted(d: Duration, interrupted: &AtomicBool) -> Result<()> {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        if interrupted.load(Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }
        std::thread::sleep(Duration::from_millis(10).min(deadline.saturating_duration_since(Instant::now())));
    }
    Ok(())
}

/// `.<name>.basebackup` beside PGDATA: same file system, so the final rename is atomic.
fn staging_dir(pgdata: &Path) -> PathBuf {
    let name = pgdata.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    pgdata.with_file_name(format!(".{name}.basebackup"))
}

/// Removes the old PGDATA (refusing a directory that is not one) and any staging leftover.
fn remove_old(pgdata: &Path, staging: &Path) -> Result<()> {
    match pgdata::inspect(pgdata)? {
        pgdata::PgdataState::Missing => {}
        pgdata::PgdataState::Empty | pgdata::PgdataState::Initialized => {
            log::info!("removing the old PGDATA {}: every start is a fresh basebackup", pgdata.display());
            remove_tree(pgdata)?;
        }
    }
    remove_tree(staging)
}

fn remove_tree(p: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("cannot stat", p, e)),
    };
    let r = if meta.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
    r.map_err(|e| Error::io("cannot remove", p, e))
}

/// An empty directory, mode 0700 and owned by the Postgres user, holding only our
/// `postgresql.conf` (which `--sync-safekeepers` reads).
fn fresh_dir(node: &Node, dir: &Path, conf_text: &str) -> Result<()> {
    remove_tree(dir)?;
    std::fs::create_dir(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    pgdata::set_owner_and_mode(dir, node.run_as)?;
    // A fresh directory: nothing to compare with, and nothing to make durable (it is renamed
    // into place only when whole, and made anew at every start).
    conf::write_if_changed(&dir.join("postgresql.conf"), conf_text.as_bytes())?;
    if let Some(u) = node.run_as {
        let p = dir.join("postgresql.conf");
        std::os::unix::fs::chown(&p, Some(u.uid), Some(u.gid)).map_err(|e| Error::io("cannot chown", &p, e))?;
    }
    Ok(())
}

/// The sync after a Primary's Postgres has exited (reference 6), so that what it wrote is on
/// a quorum of safekeepers before the compute is gone, returning the LSN they agreed on
/// (what `/terminate` answers). Does nothing (`None`) in other modes.
pub fn sync_after_exit(node: &Node, spec: &ParsedSpec) -> Result<Option<Lsn>> {
    if spec.mode() != ComputeMode::Primary || !matches!(spec.storage(), StorageMode::Pageserver { .. }) {
        return Ok(None);
    }
    log::info!("syncing safekeepers on shutdown");
    let token = spec.spec().storage_auth_token.as_deref();
    let lsn = safekeepers::sync(&node.postgres_bin(), &node.pgdata, token, node.run_as, &node.interrupted)?;
    log::info!("safekeepers synced on shutdown at LSN {lsn}");
    Ok(Some(lsn))
}
