//! The garbage collector of compliance audit files: pgauditlogtofile starts a new
//! `PGDATA/log/audit*.log` every 5 minutes (`pgaudit.log_rotation_age`) and never deletes
//! the old ones; rsyslog reads them as they grow. Every [`INTERVAL`] a file not modified for
//! [`MAX_AGE`] is deleted (rsyslog has long sent it), and the size of the directory's log
//! files is published as `compute_audit_log_dir_size`. Neon does the same with a
//! `find -mmin +15 -delete` subprocess; here it is a directory read.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, SystemTime};

/// How often the GC runs (Neon: 60 s).
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Files older than this are deleted (Neon: 15 minutes).
pub const MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// The running GC's stop channel: one GC per process, like the compute it belongs to.
static RUNNING: Mutex<Option<Sender<()>>> = Mutex::new(None);

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub deleted: Vec<PathBuf>,
    /// Bytes of the `*log` files left in the directory.
    pub size: u64,
}

/// One pass over `dir` at `now`: deletes `audit*.log` files last modified more than
/// [`MAX_AGE`] before it and sums the sizes of what is left. A missing directory is empty.
pub fn pass(dir: &Path, now: SystemTime) -> Pass {
    let mut out = Pass::default();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let old = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age > MAX_AGE);
        if name.starts_with("audit") && name.ends_with(".log") && old {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    out.deleted.push(e.path());
                    continue;
                }
                Err(err) => log::warn!("audit log GC: cannot delete {}: {err}", e.path().display()),
            }
        }
        // What Neon's metric counts: every file whose name ends in `log`.
        if name.ends_with("log") {
            out.size += meta.len();
        }
    }
    out
}

/// Starts the GC of `dir` on its own thread, unless one runs already.
pub fn ensure_started(dir: PathBuf, interval: Duration) {
    let mut running = crate::locks::lock(&RUNNING);
    if running.is_some() {
        return;
    }
    let (tx, rx) = mpsc::channel::<()>();
    let spawned = std::thread::Builder::new().name("audit-gc".into()).spawn(move || {
        log::info!("audit log GC: every {} ms in {}", interval.as_millis(), dir.display());
        loop {
            let p = pass(&dir, SystemTime::now());
            for f in &p.deleted {
                log::info!("audit log GC: deleted {}", f.display());
            }
            crate::metrics::set_audit_log_dir_size(p.size);
            match rx.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    });
    match spawned {
        Ok(_) => *running = Some(tx),
        // The audit files are still written and sent; only their clean-up is missing.
        Err(e) => log::error!("cannot start the audit log GC thread: {e}"),
    }
}

/// Stops the GC (when the compute ends).
pub fn stop() {
    if let Some(tx) = crate::locks::lock(&RUNNING).take() {
        let _ = tx.send(());
    }
}
