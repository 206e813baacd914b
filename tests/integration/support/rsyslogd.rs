//! A stand-in for the VM's rsyslogd and the init that respawns it: a copy of `sleep` named
//! `rsyslogd` (so its `comm` is `rsyslogd`), started by a thread of the test that starts a new
//! one whenever the current one exits. compute_ctl is told, through its test-only variable
//! `COMPUTE_CTL_TEST_RSYSLOGD_EXE`, to stop only processes running this copy, so parallel
//! tests never stop each other's stand-ins (nor a real rsyslogd).
//!
//! Dropping it stops the respawner, then kills and reaps the current stand-in: no process is
//! left behind, even when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The variable that limits compute_ctl's restart to one executable (tests only).
pub const EXE_ENV: &str = "COMPUTE_CTL_TEST_RSYSLOGD_EXE";

pub struct StandIn {
    pub exe: PathBuf,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<u32>>>,
    /// How many stand-ins were started (1 before any restart).
    started: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl StandIn {
    /// Copies `sleep` to `dir/bin/rsyslogd` and starts the respawner; returns once the first
    /// stand-in runs.
    pub fn start(dir: &Path) -> StandIn {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let exe = bin.join("rsyslogd");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        let exe = std::fs::canonicalize(&exe).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let started = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (exe, stop, current, started) = (exe.clone(), stop.clone(), current.clone(), started.clone());
            std::thread::spawn(move || respawn(&exe, &stop, &current, &started))
        };
        let s = StandIn { exe, stop, current, started, thread: Some(thread) };
        s.wait_started(1);
        s
    }

    /// The environment entry that points compute_ctl at this stand-in.
    pub fn env(&self) -> (&'static str, String) {
        (EXE_ENV, self.exe.to_str().unwrap().to_string())
    }

    pub fn pid(&self) -> Option<u32> {
        *self.current.lock().unwrap()
    }

    pub fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` stand-ins were started and one runs; returns its pid.
    pub fn wait_started(&self, n: usize) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.started() >= n
                && let Some(pid) = self.pid()
            {
                return pid;
            }
            assert!(Instant::now() < deadline, "stand-in rsyslogd number {n} never started");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn respawn(exe: &Path, stop: &AtomicBool, current: &Mutex<Option<u32>>, started: &AtomicUsize) {
    while !stop.load(Ordering::SeqCst) {
        let mut child: Child = Command::new(exe).arg("600").stdin(Stdio::null()).stdout(Stdio::null()).spawn().unwrap();
        *current.lock().unwrap() = Some(child.id());
        started.fetch_add(1, Ordering::SeqCst);
        loop {
            if stop.load(Ordering::SeqCst) {
                let _ = child.kill();
                let _ = child.wait();
                *current.lock().unwrap() = None;
                return;
            }
            if child.try_wait().unwrap().is_some() {
                *current.lock().unwrap() = None;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
