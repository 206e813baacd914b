//! The Postgres child: spawning it as the unprivileged user, forwarding its log, waiting until
//! it is ready, signalling it by pid safely, and making sure it never outlives compute_ctl.

use super::{Node, Stopped};
use crate::error::{Error, Result};
use crate::sys;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How Postgres is asked to stop (the signal `pg_ctl stop -m` sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT: roll back sessions, write a shutdown checkpoint.
    Fast,
    /// SIGQUIT: exit at once; the next start runs crash recovery.
    Immediate,
}

/// The OS identity Postgres runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Last lines of the Postgres log, kept for error messages, and every line while a capture
/// is on (see [`Postmaster::capture_log`]).
#[derive(Clone, Default)]
pub struct LogTail(Arc<Mutex<Tail>>);

#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    capture: Option<Vec<String>>,
}

const LOG_TAIL_LINES: usize = 20;
/// A capture keeps at most this many lines (the first ones).
const CAPTURE_LINES: usize = 10_000;

/// While waiting for `ready`, how often an exit of Postgres or a termination request is
/// checked when PGDATA shows no change.
const EXIT_CHECK: Duration = Duration::from_millis(50);

impl LogTail {
    fn push(&self, line: String) {
        let mut tail = crate::locks::lock(&self.0);
        if let Some(c) = tail.capture.as_mut().filter(|c| c.len() < CAPTURE_LINES) {
            c.push(line.clone());
        }
        if tail.lines.len() == LOG_TAIL_LINES {
            tail.lines.pop_front();
        }
        tail.lines.push_back(line);
    }

    pub fn text(&self) -> String {
        let tail = crate::locks::lock(&self.0);
        tail.lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

/// Copies a child's stderr to ours, each line prefixed `PG: ` so Postgres's lines are told
/// apart from compute_ctl's, keeping the last lines for error reports.
pub fn forward_log(stderr: impl std::io::Read + Send + 'static, tail: LogTail) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("postgres-log".into())
        .spawn(move || {
            // Postgres's lines must not preempt Postgres: forwarding them can wait for a free CPU.
            let _ = sys::batch_scheduling();
            for line in BufReader::new(stderr).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).into_owned();
                // One write(2) per line: stderr is unbuffered, and `writeln!` with the prefix
                // would make three, which a stop (whose last lines pass here before compute_ctl
                // can report Postgres's exit) pays for in every line.
                let _ = std::io::stderr().lock().write_all(format!("PG: {line}\n").as_bytes());
                tail.push(line);
            }
        })
        .expect("spawning a thread only fails when the system is out of resources")
}

/// Exit status shared between the reaper thread and everyone who signals the child.
struct ExitState {
    status: Mutex<Option<ExitStatus>>,
    changed: Condvar,
}

/// A running `postgres -D PGDATA`. Dropping it stops Postgres (fast, then immediate, then
/// SIGKILL) and waits, so no error path can leave an orphan.
pub struct Postmaster {
    pid: u32,
    pgdata: PathBuf,
    exit: Arc<ExitState>,
    log: LogTail,
}

/// A cloneable way to signal and await the postmaster from other threads (the signal thread
/// escalates a second SIGTERM through it); it does not own the process.
#[derive(Clone)]
pub struct PostmasterHandle {
    pid: u32,
    exit: Arc<ExitState>,
}

impl PostmasterHandle {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn stop(&self, mode: StopMode) {
        signal_pid(self.pid, &self.exit, mode.signal());
    }

    /// Asks the postmaster to reread its configuration (what `pg_ctl reload` does).
    pub fn reload(&self) {
        signal_pid(self.pid, &self.exit, sys::SIGHUP);
    }

    pub fn has_exited(&self) -> bool {
        crate::locks::lock(&self.exit.status).is_some()
    }
}

impl StopMode {
    fn signal(self) -> i32 {
        match self {
            StopMode::Fast => sys::SIGINT,
            StopMode::Immediate => sys::SIGQUIT,
        }
    }
}

/// Signals a child by pid. The status lock is held so the reaper cannot reap (and the kernel
/// cannot recycle the pid) between the check and the kill.
fn signal_pid(pid: u32, exit: &ExitState, signal: i32) {
    let status = crate::locks::lock(&exit.status);
    if status.is_none()
        && let Err(e) = sys::kill(pid, signal)
    {
        log::warn!("cannot signal postgres (pid {pid}): {e}");
    }
}

impl Postmaster {
    /// Spawns `postgres -D PGDATA` and returns at once; see [`wait_ready`]. It consumes the
    /// [`Stopped`] proof: nothing that needs Postgres down can follow.
    ///
    /// `on_exit` runs on the reaper thread when Postgres exits, whoever stopped it.
    ///
    /// [`wait_ready`]: Postmaster::wait_ready
    pub fn spawn(
        _proof: Stopped,
        node: &Node,
        env: &[(&str, &str)],
        on_exit: Box<dyn FnOnce(ExitStatus) + Send>,
    ) -> Result<Postmaster> {
        let (pgbin, pgdata, run_as) = (node.postgres_bin(), &node.pgdata, node.run_as);
        // In the memory cgroup when AUTOSCALING is set (see `cgroup`).
        let wrapped = crate::cgroup::wrap(&pgbin)?;
        let mut args = wrapped.args;
        args.extend(["-D".into(), pgdata.as_os_str().to_os_string()]);
        // Debian's Postgres speaks sd_notify itself: it must not tell systemd it is ready
        // before compute_ctl has configured it (and systemd would refuse a non-main pid).
        let mut vars: Vec<(&str, Option<&str>)> =
            ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"].into_iter().map(|k| (k, None)).collect();
        vars.extend(env.iter().map(|(k, v)| (*k, Some(*v))));
        let cannot = |e| Error::system(format!("cannot run {}", wrapped.program.display()), e);
        let devnull = std::fs::File::open("/dev/null").map_err(cannot)?;
        let (stderr, stderr_w) = std::io::pipe().map_err(cannot)?;
        // Not `Command`: it forks (a copy of compute_ctl) as soon as a uid or a hook is set;
        // see `sys::spawn`.
        let pid = sys::spawn(&sys::Launch {
            program: &wrapped.program,
            args: &args,
            env: &vars,
            run_as: run_as.map(|u| (u.uid, u.gid)),
            death_signal: sys::SIGQUIT,
            cgroup_procs: wrapped.procs.as_ref().map(|f| f.as_fd()),
            stdin: devnull.as_fd(),
            stdout: None,
            stderr: stderr_w.as_fd(),
        })
        .map_err(cannot)?;
        drop(stderr_w);
        let log = LogTail::default();
        let log_thread = forward_log(stderr, log.clone());
        let exit = Arc::new(ExitState { status: Mutex::new(None), changed: Condvar::new() });
        spawn_reaper(pid, exit.clone(), log_thread, on_exit);
        log::info!("started postgres, pid {pid}");
        Ok(Postmaster { pid, pgdata: pgdata.to_path_buf(), exit, log })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_tail(&self) -> String {
        self.log.text()
    }

    /// Starts keeping every log line from now on (a capture already on starts again).
    pub fn capture_log(&self) {
        crate::locks::lock(&self.log.0).capture = Some(Vec::new());
    }

    /// The lines captured so far; the capture goes on.
    pub fn captured_log(&self) -> Vec<String> {
        crate::locks::lock(&self.log.0).capture.clone().unwrap_or_default()
    }

    /// Ends the capture.
    pub fn end_capture(&self) {
        crate::locks::lock(&self.log.0).capture = None;
    }

    /// The exit status, once Postgres has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *crate::locks::lock(&self.exit.status)
    }

    /// Waits until `postmaster.pid` names this process and says `ready` (or `standby`: a hot
    /// standby that accepts read-only connections). The file is read
    /// again whenever PGDATA's top directory changes (inotify), so `ready` is seen as soon as
    /// Postgres writes it, with no polling tick in between and no wake-ups meanwhile; when
    /// inotify is unavailable, every millisecond. An exit or a termination request is noticed
    /// within [`EXIT_CHECK`].
    pub fn wait_ready(&self, timeout: Duration, interrupted: &AtomicBool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let pidfile = self.pgdata.join("postmaster.pid");
        let pid_line = self.pid.to_string();
        // Watching starts before the first read, so no write can fall between the two.
        let watch = sys::DirWatch::new(&self.pgdata)
            .inspect_err(|e| log::warn!("cannot watch {} ({e}): polling postmaster.pid", self.pgdata.display()))
            .ok();
        loop {
            if let Ok(text) = std::fs::read_to_string(&pidfile) {
                let mut lines = text.lines();
                let ours = lines.next().map(str::trim) == Some(pid_line.as_str());
                if ours && matches!(text.lines().last().map(str::trim), Some("ready" | "standby")) {
                    return Ok(());
                }
            }
            if let Some(status) = self.exit_status() {
                // Let the log thread drain the last lines before quoting them.
                std::thread::sleep(Duration::from_millis(20));
                return Err(Error::PostgresStart { reason: describe_exit(status), log_tail: self.log_tail() });
            }
            if interrupted.load(Ordering::SeqCst) {
                return Err(Error::Interrupted);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::PostgresStart {
                    reason: format!("not ready after {} s", timeout.as_secs()),
                    log_tail: self.log_tail(),
                });
            }
            let left = (deadline - now).min(EXIT_CHECK);
            match &watch {
                Some(w) => {
                    if let Err(e) = w.wait(left) {
                        log::warn!("watching {} failed ({e}): polling", self.pgdata.display());
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Sends the shutdown signal for `mode`; a no-op once Postgres has exited.
    pub fn stop(&self, mode: StopMode) {
        self.signal(mode.signal());
    }

    /// Asks the postmaster to reread its configuration (what `pg_ctl reload` does).
    pub fn reload(&self) {
        self.signal(sys::SIGHUP);
    }

    fn signal(&self, signal: i32) {
        signal_pid(self.pid, &self.exit, signal);
    }

    pub fn handle(&self) -> PostmasterHandle {
        PostmasterHandle { pid: self.pid, exit: self.exit.clone() }
    }

    /// Waits for Postgres to exit, at most `timeout`; returns its status if it did.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Option<ExitStatus> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut status = crate::locks::lock(&self.exit.status);
        loop {
            if let Some(s) = *status {
                return Some(s);
            }
            match deadline {
                None => status = crate::locks::wait(&self.exit.changed, status),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    status = crate::locks::wait_timeout(&self.exit.changed, status, d - now);
                }
            }
        }
    }

    /// Stops Postgres and waits for it: fast, then immediate after `grace`, then SIGKILL.
    pub fn shutdown(&self, grace: Duration) -> ExitStatus {
        for (signal, wait) in [(sys::SIGINT, grace), (sys::SIGQUIT, grace), (sys::SIGKILL, Duration::from_secs(3600))] {
            self.signal(signal);
            if let Some(status) = self.wait_exit(Some(wait)) {
                return status;
            }
            log::warn!("postgres (pid {}) still running after {} s, escalating", self.pid, wait.as_secs());
        }
        unreachable!("SIGKILL cannot be ignored and the last wait is an hour")
    }
}

impl Drop for Postmaster {
    fn drop(&mut self) {
        if self.exit_status().is_none() {
            log::info!("stopping postgres (pid {}) that is being abandoned", self.pid);
            self.shutdown(Duration::from_secs(10));
        }
    }
}

fn spawn_reaper(
    pid: u32,
    exit: Arc<ExitState>,
    log_thread: std::thread::JoinHandle<()>,
    on_exit: Box<dyn FnOnce(ExitStatus) + Send>,
) {
    std::thread::Builder::new()
        .name("postgres-reaper".into())
        .spawn(move || {
            if let Err(e) = sys::wait_exited_nowait(pid) {
                log::error!("waiting for postgres (pid {pid}) failed: {e}");
            }
            let status = {
                let mut guard = crate::locks::lock(&exit.status);
                let status = sys::wait_status(pid).unwrap_or_else(|_| ExitStatus::from_raw(1 << 8));
                *guard = Some(status);
                status
            };
            let _ = log_thread.join();
            log::info!("postgres (pid {pid}) exited: {}", describe_exit(status));
            exit.changed.notify_all();
            on_exit(status);
        })
        .expect("spawning a thread only fails when the system is out of resources");
}

/// `exited with code 1`, `killed by signal 9`.
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Is a process with this pid still alive (tests, diagnostics)?
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(false)
}
