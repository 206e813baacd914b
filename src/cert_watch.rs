//! The certificate watcher (reference 2026 §10.1): with `compute_ctl_config.tls` set
//! (whatever the features, as Neon), a thread reads the certificate file every
//! [`POLL`] and, once the compute has first reached `running` and again whenever the file's
//! bytes change, asks the owner for a live reconfiguration with the current spec
//! ([`Event::CertificateChanged`]): `configuration_pending`, `configuration`, `running`, with
//! the key and certificate copied into PGDATA again and Postgres reloaded.
//!
//! It only sends events; what one does is `lifecycle::step`'s business (nothing, unless the
//! compute is `running`). It stops once the compute is `failed`, terminating or terminated.
//! Neon compares SHA-256 digests of the file; this compares the bytes (no hashing needed for
//! a file of a few kilobytes, and no cryptography of our own).

use crate::error::{Error, Result};
use crate::lifecycle::{Event, Message, Shared, Status};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::time::Duration;

/// How often the certificate file is read (Neon: 60 s).
pub const POLL: Duration = Duration::from_secs(60);
/// Overrides [`POLL`], in milliseconds. Meant for tests, which cannot wait a minute.
pub const POLL_ENV: &str = "COMPUTE_CTL_TLS_POLL_MS";
/// How often the status is looked at while waiting for the first `running`.
const STATUS_POLL: Duration = Duration::from_millis(50);

/// The [`POLL`] in force.
pub fn poll_interval() -> Duration {
    std::env::var(POLL_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(POLL, Duration::from_millis)
}

/// Starts the watcher thread for `cert_path`.
pub fn spawn(cert_path: PathBuf, shared: Shared, events: Sender<Message>) -> Result<()> {
    let poll = poll_interval();
    std::thread::Builder::new()
        .name("cert-watch".into())
        .spawn(move || watch(&cert_path, &shared, &events, poll))
        .map(drop)
        .map_err(|e| Error::system("cannot start the certificate watcher", e))
}

fn ended(status: Status) -> bool {
    matches!(
        status,
        Status::Failed | Status::TerminationPendingFast | Status::TerminationPendingImmediate | Status::Terminated
    )
}

fn watch(cert_path: &std::path::Path, shared: &Shared, events: &Sender<Message>, poll: Duration) {
    let send = || events.send(Message { event: Event::CertificateChanged, reply: None }).is_ok();
    // The first `running`: the start copied whatever the file held then; reconfigure once, as
    // Neon does, so that a certificate renewed during the start is taken.
    loop {
        let status = shared.get().status;
        if ended(status) {
            log::info!("certificate watcher: compute is {}, stopping", status.wire_name());
            return;
        }
        if status == Status::Running {
            break;
        }
        std::thread::sleep(STATUS_POLL);
    }
    let mut last = std::fs::read(cert_path).ok();
    log::info!(
        "certificate watcher: compute is running; reconfiguring once, then reading {} every {poll:?}",
        cert_path.display()
    );
    if !send() {
        return;
    }
    let mut unreadable = false;
    loop {
        std::thread::sleep(poll);
        let status = shared.get().status;
        if ended(status) {
            log::info!("certificate watcher: compute is {}, stopping", status.wire_name());
            return;
        }
        let now = match std::fs::read(cert_path) {
            Ok(bytes) => {
                unreadable = false;
                bytes
            }
            Err(e) => {
                if !unreadable {
                    log::warn!("certificate watcher: cannot read {} ({e}); trying again", cert_path.display());
                    unreadable = true;
                }
                continue;
            }
        };
        if last.as_ref() != Some(&now) {
            log::info!("certificate watcher: {} changed; reconfiguring", cert_path.display());
            last = Some(now);
            if !send() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{RecvTimeoutError, channel};

    /// Nothing before `running`; one event on `running`, one per change of the bytes (not per
    /// write of the same bytes); the thread ends once the compute has failed.
    #[test]
    fn events_on_first_running_and_on_each_change_until_failed() {
        let dir = std::env::temp_dir().join(format!("cc-certwatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("tls.crt");
        std::fs::write(&cert, "A").unwrap();
        let shared = Shared::new();
        let (tx, rx) = channel();
        let (path, snapshot) = (cert.clone(), shared.clone());
        let thread = std::thread::spawn(move || watch(&path, &snapshot, &tx, Duration::from_millis(10)));
        let next = |wait: u64| rx.recv_timeout(Duration::from_millis(wait)).map(|m| m.event);
        assert!(matches!(next(200), Err(RecvTimeoutError::Timeout)), "nothing before running");
        shared.update(|s| s.status = Status::Running);
        assert!(matches!(next(10_000), Ok(Event::CertificateChanged)), "once on running");
        std::fs::write(&cert, "A").unwrap();
        assert!(matches!(next(200), Err(RecvTimeoutError::Timeout)), "same bytes: nothing");
        std::fs::write(&cert, "B").unwrap();
        assert!(matches!(next(10_000), Ok(Event::CertificateChanged)), "on a change");
        shared.update(|s| s.status = Status::Failed);
        assert!(matches!(next(10_000), Err(RecvTimeoutError::Disconnected)), "stops on failed");
        thread.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
