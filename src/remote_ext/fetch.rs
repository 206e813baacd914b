//! Getting an extension archive once: [`Installer::fetch`] downloads `{ext}.tar.zst` from
//! `--remote-ext-base-url` and installs it, deduplicated by archive name for the whole process
//! (the `/extension_server` route and the start-up preload share one [`Installer`]).
//!
//! Dedup (reference 5.9 step 6), per archive:
//! - installed already: done at once, nothing downloaded;
//! - a download running (started by anyone): wait for it, on a condition variable, and take
//!   its outcome, success or failure. Neon only waits for a download started less than 3 s
//!   ago, polls every 500 ms, never gives up, and never returns when that download fails; here
//!   the waiter gets the failure, and the wait is bounded by [`WAIT_LIMIT`] (the download's own
//!   timeout plus time to install). An attempt always ends, even by a panic (see `Attempt`),
//!   so a "running" mark never outlives its download and Neon's 3 s staleness rule is not needed;
//! - otherwise (never tried, or the last attempt failed): download again.

use super::{DOWNLOAD_TIMEOUT_SECS, download, install, read_archive};
use crate::locks;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a request waits for a download of the same archive that another one started.
pub const WAIT_LIMIT: Duration = Duration::from_secs(DOWNLOAD_TIMEOUT_SECS + 30);

/// Why an archive was not installed. The HTTP route maps each kind to a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Nothing can be fetched: no `--remote-ext-base-url`, or `pg_config` cannot say where
    /// Postgres's directories are.
    Setup(String),
    /// The extension storage did not give the archive.
    Download(String),
    /// The archive is not one this build can read; nothing was installed.
    Unreadable(String),
    /// Writing the files failed.
    Install(String),
    /// A download of the same archive by another request did not end within [`WAIT_LIMIT`].
    WaitTimedOut(String),
}

impl Failure {
    /// The text of the failure.
    pub fn message(&self) -> &str {
        match self {
            Failure::Setup(m)
            | Failure::Download(m)
            | Failure::Unreadable(m)
            | Failure::Install(m)
            | Failure::WaitTimedOut(m) => m,
        }
    }

    /// The same failure as a request that waited for it sees it.
    fn seen_by_waiter(&self) -> Failure {
        let m = |m: &str| format!("the download another request started failed: {m}");
        match self {
            Failure::Setup(s) => Failure::Setup(m(s)),
            Failure::Download(s) => Failure::Download(m(s)),
            Failure::Unreadable(s) => Failure::Unreadable(m(s)),
            Failure::Install(s) => Failure::Install(m(s)),
            Failure::WaitTimedOut(s) => Failure::WaitTimedOut(m(s)),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// How a successful fetch went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// This call downloaded and installed the archive.
    Downloaded { files: usize, bytes: usize },
    /// An earlier fetch installed it; nothing was downloaded.
    AlreadyInstalled,
    /// Another request's download, which this call waited for, installed it.
    Waited,
}

/// Postgres's install directories and major version, from `pg_config`.
#[derive(Debug)]
pub struct PgDirs {
    /// `$(pg_config --sharedir)/extension`
    pub share: PathBuf,
    /// `$(pg_config --pkglibdir)`
    pub lib: PathBuf,
    /// "15"
    pub major: String,
}

/// Downloads and installs extension archives, each at most once at a time (see the module).
pub struct Installer {
    base_url: Option<String>,
    pg_config: PathBuf,
    dirs: OnceLock<PgDirs>,
    downloads: Downloads,
}

impl Installer {
    /// `base_url` is `--remote-ext-base-url` (ending in `/`); `bindir` holds `pg_config`.
    pub fn new(base_url: Option<String>, bindir: &Path) -> Installer {
        Installer {
            base_url,
            pg_config: bindir.join("pg_config"),
            dirs: OnceLock::new(),
            downloads: Downloads::new(WAIT_LIMIT),
        }
    }

    /// `--remote-ext-base-url`, if given.
    pub fn base_url(&self) -> Option<&str> {
        self.base_url.as_deref()
    }

    /// Postgres's directories, asked of `pg_config` once.
    pub fn dirs(&self) -> Result<&PgDirs, Failure> {
        if let Some(d) = self.dirs.get() {
            return Ok(d);
        }
        let bin = &self.pg_config;
        let out = std::process::Command::new(bin)
            .args(["--sharedir", "--pkglibdir", "--version"])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| Failure::Setup(format!("cannot run {}: {e}", bin.display())))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let (Some(share), Some(lib), Some(version)) = (lines.first(), lines.get(1), lines.get(2)) else {
            return Err(Failure::Setup(format!("{} printed {text:?}", bin.display())));
        };
        // "PostgreSQL 15.10 (Debian …)" → "15".
        let major = version.split_whitespace().nth(1).and_then(|v| v.split('.').next()).unwrap_or("").to_string();
        let dirs = PgDirs { share: Path::new(share).join("extension"), lib: lib.into(), major };
        Ok(self.dirs.get_or_init(|| dirs))
    }

    /// Downloads `{base}{BUILD_TAG}/{arch}/v{major}/extensions/{ext}.tar.zst` and installs
    /// its files, deduplicated as the module says.
    pub fn fetch(&self, ext: &str) -> Result<Fetched, Failure> {
        let Some(base) = self.base_url.as_deref() else {
            return Err(Failure::Setup("remote storage is not configured".into()));
        };
        let dirs = self.dirs()?;
        let archive = format!("{ext}.tar.zst");
        self.downloads.run(&archive, || {
            let url = format!("{base}{}/{}/v{}/extensions/{archive}", crate::metrics::BUILD_TAG, arch(), dirs.major);
            log::info!("downloading remote extension {archive} from {url}");
            let bytes = download(&url).map_err(Failure::Download)?;
            let files = read_archive(&bytes)
                .map_err(|e| Failure::Unreadable(format!("{archive}: {e}; nothing was installed")))?;
            let n = install(&files, &dirs.share, &dirs.lib)
                .map_err(|e| Failure::Install(format!("cannot install {archive}: {e}")))?;
            log::info!("installed {n} file(s) of {archive} ({} bytes downloaded)", bytes.len());
            Ok(Fetched::Downloaded { files: n, bytes: bytes.len() })
        })
    }
}

/// Neon's architecture names in the remote path.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// What is known of one archive. Entries are never removed (one per archive name asked for).
#[derive(Default)]
struct Entry {
    /// Attempts started so far; the running one, if any, is the last.
    attempt: u64,
    running: bool,
    installed: bool,
    last_failure: Option<Failure>,
    /// Requests waiting for the running attempt.
    waiting: usize,
}

/// The dedup map: archive name → [`Entry`], and the condition variable every attempt's end
/// notifies.
struct Downloads {
    map: Mutex<HashMap<String, Entry>>,
    ended: Condvar,
    wait_limit: Duration,
}

impl Downloads {
    fn new(wait_limit: Duration) -> Downloads {
        Downloads { map: Mutex::new(HashMap::new()), ended: Condvar::new(), wait_limit }
    }

    /// Runs `work` for `archive` unless it is installed or running (then waits for that
    /// attempt). The lock is never held while `work` runs.
    fn run(&self, archive: &str, work: impl FnOnce() -> Result<Fetched, Failure>) -> Result<Fetched, Failure> {
        let mut map = locks::lock(&self.map);
        let entry = map.entry(archive.to_string()).or_default();
        if entry.installed {
            return Ok(Fetched::AlreadyInstalled);
        }
        if entry.running {
            let awaited = entry.attempt;
            log::info!("{archive}: a download is already running; waiting for it");
            entry.waiting += 1;
            let deadline = Instant::now() + self.wait_limit;
            let result = loop {
                let e = map.get_mut(archive).expect("dedup entries are never removed");
                if e.installed {
                    break Ok(Fetched::Waited);
                }
                if !(e.running && e.attempt == awaited) {
                    // The awaited attempt failed (a later one may be running by now).
                    let failure = e.last_failure.as_ref().map_or_else(
                        || Failure::Download(format!("{archive}: the download another request started failed")),
                        Failure::seen_by_waiter,
                    );
                    break Err(failure);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break Err(Failure::WaitTimedOut(format!(
                        "{archive}: the download another request started did not end within {} ms",
                        self.wait_limit.as_millis()
                    )));
                }
                map = locks::wait_timeout(&self.ended, map, left);
            };
            map.get_mut(archive).expect("dedup entries are never removed").waiting -= 1;
            return result;
        }
        entry.attempt += 1;
        entry.running = true;
        let attempt = Attempt { downloads: self, archive, result: None };
        drop(map);
        let result = work();
        attempt.end(result)
    }
}

/// One running download. Ending it, or dropping it unended (a panic in the work), records the
/// outcome and wakes the waiters, so none waits for an attempt that is gone.
struct Attempt<'a> {
    downloads: &'a Downloads,
    archive: &'a str,
    result: Option<Result<Fetched, Failure>>,
}

impl Attempt<'_> {
    fn end(mut self, result: Result<Fetched, Failure>) -> Result<Fetched, Failure> {
        self.result = Some(result.clone());
        result
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let outcome = self.result.take().unwrap_or_else(|| {
            Err(Failure::Install(format!("{}: the download ended unexpectedly (see the log)", self.archive)))
        });
        let mut map = locks::lock(&self.downloads.map);
        let e = map.get_mut(self.archive).expect("dedup entries are never removed");
        e.running = false;
        match outcome {
            Ok(_) => e.installed = true,
            Err(f) => e.last_failure = Some(f),
        }
        drop(map);
        self.downloads.ended.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    type Outcome = Result<Fetched, Failure>;

    fn ok() -> Outcome {
        Ok(Fetched::Downloaded { files: 1, bytes: 1 })
    }

    /// Starts `d.run("x")` on a thread whose work blocks until `release` sends its outcome.
    /// Returns once the work has started.
    fn blocked(d: &'static Downloads) -> (mpsc::Sender<Outcome>, std::thread::JoinHandle<Outcome>) {
        let (release, rx) = mpsc::channel::<Outcome>();
        let (started_tx, started) = mpsc::channel();
        let h = std::thread::spawn(move || {
            d.run("x", || {
                started_tx.send(()).unwrap();
                rx.recv().unwrap()
            })
        });
        started.recv().unwrap();
        (release, h)
    }

    fn leak(wait: Duration) -> &'static Downloads {
        Box::leak(Box::new(Downloads::new(wait)))
    }

    /// Starts a waiter for "x"; returns once it waits for the running attempt.
    fn waiter(d: &'static Downloads) -> std::thread::JoinHandle<Outcome> {
        let h = std::thread::spawn(move || d.run("x", || Err(Failure::Install("the waiter downloaded".into()))));
        let deadline = Instant::now() + Duration::from_secs(10);
        while locks::lock(&d.map)["x"].waiting == 0 {
            assert!(Instant::now() < deadline, "the second request never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        h
    }

    #[test]
    fn a_waiter_gets_the_success_of_the_running_download_and_a_repeat_downloads_nothing() {
        let d = leak(WAIT_LIMIT);
        let (release, first) = blocked(d);
        let second = waiter(d);
        release.send(ok()).unwrap();
        assert_eq!(first.join().unwrap(), ok());
        assert_eq!(second.join().unwrap(), Ok(Fetched::Waited));
        assert_eq!(d.run("x", || panic!("installed: no download")), Ok(Fetched::AlreadyInstalled));
    }

    #[test]
    fn a_waiter_gets_the_failure_and_a_later_request_downloads_again() {
        let d = leak(WAIT_LIMIT);
        let (release, first) = blocked(d);
        let second = waiter(d);
        release.send(Err(Failure::Download("x.tar.zst: 500".into()))).unwrap();
        assert_eq!(first.join().unwrap(), Err(Failure::Download("x.tar.zst: 500".into())));
        let want = "the download another request started failed: x.tar.zst: 500";
        assert_eq!(second.join().unwrap(), Err(Failure::Download(want.into())));
        assert_eq!(locks::lock(&d.map)["x"].waiting, 0);
        assert_eq!(d.run("x", ok), ok());
    }

    #[test]
    fn the_wait_is_bounded() {
        let d = leak(Duration::from_millis(200));
        let (release, first) = blocked(d);
        let got = d.run("x", || panic!("the waiter must not download"));
        let want = "x: the download another request started did not end within 200 ms";
        assert_eq!(got, Err(Failure::WaitTimedOut(want.into())));
        release.send(ok()).unwrap();
        first.join().unwrap().unwrap();
    }

    #[test]
    fn a_panicking_download_ends_its_attempt() {
        let d = leak(WAIT_LIMIT);
        let r = std::panic::catch_unwind(|| d.run("x", || panic!("boom")));
        assert!(r.is_err());
        assert!(!locks::lock(&d.map)["x"].running);
        assert_eq!(d.run("x", ok), ok());
    }
}
