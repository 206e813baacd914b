//! Restarting rsyslog as Neon's VMs expect: stop the running `rsyslogd` and wait for the
//! VM's init to start a new one. compute_ctl never starts rsyslogd itself.
//!
//! Neon runs `pkill rsyslogd` and then polls `pgrep rsyslogd` for up to 5 s. Here `/proc` is
//! read directly: only processes whose `comm` is exactly `rsyslogd` are signalled (SIGTERM,
//! what `pkill` sends), by pid, and the wait looks for an `rsyslogd` that is not one of those
//! (Neon's `pgrep` can find the old one still exiting and call it restarted).

use crate::error::{Error, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long init has to start a new rsyslogd (Neon: 5 s).
pub const WAIT: Duration = Duration::from_secs(5);

/// Which `rsyslogd` processes may be stopped. The default, every one, is what a VM has: a
/// single system rsyslogd. Tests name the executable of their own stand-in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub exe: Option<PathBuf>,
}

impl Filter {
    fn admits(&self, pid: u32) -> bool {
        match &self.exe {
            None => true,
            Some(exe) => std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| &p == exe),
        }
    }
}

/// The pids of the running processes named exactly `rsyslogd` that `filter` admits (zombies
/// left out: they are not running).
pub fn rsyslogd_pids(filter: &Filter) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else { continue };
        if comm.strip_suffix('\n').unwrap_or(&comm) != "rsyslogd" {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next());
        if state != Some("Z") && filter.admits(pid) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Stops every running `rsyslogd` the filter admits and waits up to `wait` for one that is
/// not among them. Returns the new pid; fails, naming what was stopped, when none appears.
pub fn restart(filter: &Filter, wait: Duration) -> Result<u32> {
    let old = rsyslogd_pids(filter);
    for &pid in &old {
        // Gone already is fine: the point is that it no longer runs the old configuration.
        if let Err(e) = crate::sys::kill(pid, libc::SIGTERM)
            && e.raw_os_error() != Some(libc::ESRCH)
        {
            return Err(Error::system(format!("cannot stop rsyslogd (pid {pid}) to restart it"), e));
        }
    }
    let started = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(&pid) = rsyslogd_pids(filter).iter().find(|p| !old.contains(p)) {
            log::info!(
                "rsyslogd restarted: stopped {old:?}, pid {pid} runs after {} ms",
                started.elapsed().as_millis()
            );
            return Ok(pid);
        }
        let left = wait.saturating_sub(started.elapsed());
        if left.is_zero() {
            let stopped = if old.is_empty() { "none was running".to_string() } else { format!("stopped {old:?}") };
            return Err(Error::Process {
                what: "restarting rsyslog".into(),
                detail: format!(
                    "no new rsyslogd running {} ms after the restart ({stopped}); compute_ctl does not \
                     start rsyslogd itself: the system's init must respawn it",
                    wait.as_millis()
                ),
            });
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
