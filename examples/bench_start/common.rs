//! What both modes of bench_start share: launching as the Postgres user, waiting for
//! `postmaster.pid` to say `ready`, polling `/status` over one keep-alive connection, the
//! start-up timing line of compute_ctl, stopping children by pid, and statistics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use super::support::{PGBIN_DIR, chmod, compute_ctl_binary, ms};

pub const TIMEOUT: Duration = Duration::from_secs(60);
/// Both sides are polled at this interval: `postmaster.pid` for the floor, `/status` for
/// compute_ctl.
pub const POLL: Duration = Duration::from_millis(1);

/// How every process under test is launched: as the `postgres` OS user through
/// `Command::uid/gid` (a setuid between fork and exec) when we are root, else as ourselves.
/// compute_ctl and the bare `postgres` get the very same launch.
#[derive(Clone, Copy)]
pub struct Launch(pub Option<(u32, u32)>);

impl Launch {
    pub fn detect() -> Launch {
        Launch(super::support::postgres_ids())
    }

    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        if let Some((u, g)) = self.0 {
            cmd.uid(u).gid(g);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).env_remove("RUST_LOG");
        cmd
    }

    /// Gives `p` to the Postgres user (when we are root).
    pub fn give(&self, p: &Path) {
        if let Some((u, g)) = self.0 {
            std::os::unix::fs::chown(p, Some(u), Some(g)).unwrap();
        }
    }
}

/// Polls `pgdata/postmaster.pid` every [`POLL`] until its status line says `ready`; the
/// file must not exist before (we check that every run ended with it removed).
pub fn wait_pidfile_ready(pgdata: &Path, child: &mut Child, t0: Instant) -> Duration {
    let pidfile = pgdata.join("postmaster.pid");
    loop {
        if let Ok(text) = std::fs::read_to_string(&pidfile)
            && text.lines().last().map(str::trim) == Some("ready")
        {
            return t0.elapsed();
        }
        check_alive(child, t0);
        std::thread::sleep(POLL);
    }
}

/// Postgres removes `postmaster.pid` as the last step of a clean shutdown.
pub fn assert_stopped(pgdata: &Path, log: &[String]) {
    let pidfile = pgdata.join("postmaster.pid");
    let deadline = Instant::now() + TIMEOUT;
    while pidfile.exists() {
        assert!(Instant::now() < deadline, "postgres did not stop; compute_ctl log: {log:#?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One keep-alive connection to compute_ctl's HTTP server, as a control plane polls it.
pub struct StatusConn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl StatusConn {
    pub fn connect(port: u16) -> Option<StatusConn> {
        let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.set_nodelay(true).ok()?;
        Some(StatusConn { s, buf: Vec::with_capacity(1024) })
    }

    /// `GET /status`: the `status` field, or None when the connection broke.
    pub fn status(&mut self) -> Option<String> {
        self.s.write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let (head_end, len) = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..i]).to_ascii_lowercase();
                let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:"))?.trim().parse().ok()?;
                break (i + 4, len);
            }
            let n = self.s.read(&mut chunk).ok().filter(|&n| n > 0)?;
            self.buf.extend_from_slice(&chunk[..n]);
        };
        while self.buf.len() < head_end + len {
            let n = self.s.read(&mut chunk).ok().filter(|&n| n > 0)?;
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let v: serde_json::Value = serde_json::from_slice(&self.buf[head_end..head_end + len]).ok()?;
        Some(v.get("status")?.as_str()?.to_string())
    }
}

/// Polls `/status` every [`POLL`] over one keep-alive connection (reconnecting until the
/// server listens) until it says `running`.
pub fn wait_running(port: u16, child: &mut Child, t0: Instant) -> Duration {
    let mut conn: Option<StatusConn> = None;
    loop {
        if conn.is_none() {
            conn = StatusConn::connect(port);
        }
        if let Some(c) = conn.as_mut() {
            match c.status().as_deref() {
                Some("running") => return t0.elapsed(),
                Some("failed") => panic!("compute_ctl reported failed"),
                Some(_) => {}
                None => conn = None,
            }
        }
        check_alive(child, t0);
        std::thread::sleep(POLL);
    }
}

/// compute_ctl's `start timing:` line: microseconds since its `main` began at the spawn of
/// Postgres, when Postgres was ready, and when it published `running`.
pub fn parse_timing(log: &[String]) -> Option<[f64; 3]> {
    let line = log.iter().find(|l| l.contains("start timing: "))?;
    let nums: Vec<f64> = line
        .split_once("start timing: ")?
        .1
        .split_whitespace()
        .filter_map(|w| w.parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect();
    (nums.len() == 3).then(|| [nums[0], nums[1], nums[2]])
}

/// A child that is stopped by pid (and waited for) if a panic leaves it running, so a failed
/// measurement never leaves a compute_ctl or a postmaster behind.
pub struct Owned {
    child: Child,
    signal: i32,
}

impl Owned {
    pub fn new(spawned: std::io::Result<Child>, signal: i32) -> Owned {
        Owned { child: spawned.expect("spawn"), signal }
    }
}

impl std::ops::Deref for Owned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Owned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            kill(self.child.id() as i32, self.signal);
            let deadline = Instant::now() + TIMEOUT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn check_alive(child: &mut Child, t0: Instant) {
    if let Some(st) = child.try_wait().unwrap() {
        panic!("{:?} exited early: {st}", child.id());
    }
    if t0.elapsed() > TIMEOUT {
        stop(child, libc::SIGTERM);
        panic!("not ready after {TIMEOUT:?}");
    }
}

/// Sends `signal` to our child by pid and waits for it to exit.
pub fn stop(child: &mut Child, signal: i32) {
    kill(child.id() as i32, signal);
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            kill(child.id() as i32, libc::SIGKILL);
            panic!("pid {} did not exit after signal {signal}", child.id());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Writes every dirty page back (sync(2)) before a measured start, so that the write-back of
/// what the last start or stop left (a 39 MiB basebackup each round in pageserver mode) does
/// not fall into the next measurement, whichever side it is. Neither side syncs by itself.
pub fn settle() {
    // SAFETY: sync(2) takes nothing and touches no memory of ours.
    unsafe { libc::sync() };
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
}

/// Median and 90th percentile (nearest rank).
pub fn median_p90(v: &[f64]) -> (f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    let p90 = v[((n * 9).div_ceil(10)).max(1) - 1];
    (median, p90)
}

/// The 1-minute load average, to print beside every figure: this machine is shared.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What one compute_ctl start measured: exec to the first `running` from `/status`, and its
/// timing line (spawn, ready, running in ms since its `main`).
pub struct Run {
    pub total: f64,
    pub timing: Option<[f64; 3]>,
    /// CPU time compute_ctl itself (all its threads, Postgres excluded) had used by then.
    pub cpu: f64,
}

/// CPU time of all threads of `pid`, from /proc/PID/task/*/schedstat, in ms.
/// With `BENCH_START_THREADS=1`, each thread's share is printed too (a diagnosis).
fn cpu_ms(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    let per_thread: Vec<(String, u64)> = tasks
        .filter_map(|t| {
            let ns =
                std::fs::read_to_string(t.path().join("schedstat")).ok()?.split_whitespace().next()?.parse().ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            Some((comm.trim().to_string(), ns))
        })
        .collect();
    if std::env::var_os("BENCH_START_THREADS").is_some() {
        let list: Vec<String> = per_thread.iter().map(|(c, ns)| format!("{c} {:.2}", *ns as f64 / 1e6)).collect();
        println!("  threads (ms of CPU): {}", list.join(", "));
    }
    per_thread.iter().map(|(_, ns)| ns).sum::<u64>() as f64 / 1e6
}

/// Runs `cmd` (compute_ctl), waits for `running` on `/status` at `http_port`, stops it by pid
/// (SIGTERM) and waits until Postgres on `pgdata` is gone.
pub fn run_compute_ctl(mut cmd: Command, http_port: u16, pgdata: &Path) -> Run {
    let t0 = Instant::now();
    let mut child = Owned::new(cmd.stderr(Stdio::piped()).spawn(), libc::SIGTERM);
    let stderr = child.stderr.take().unwrap();
    // Reads stderr to its end, so compute_ctl never blocks on a full pipe, and reports the
    // moment the `running` line arrives.
    let (rx, reader) = super::support::watch_for_running(stderr, t0);
    // `BENCH_START_BY_LOG=1` (a diagnosis): no polling of /status, `running` is seen on the
    // log, to tell what the polling itself costs the start.
    let total = if std::env::var_os("BENCH_START_BY_LOG").is_some() {
        ms(rx.recv_timeout(TIMEOUT).expect("compute_ctl logged running"))
    } else {
        ms(wait_running(http_port, &mut child, t0))
    };
    let cpu = cpu_ms(child.id());
    stop(&mut child, libc::SIGTERM);
    let log = reader.join().unwrap();
    assert_stopped(pgdata, &log);
    Run { total, timing: parse_timing(&log), cpu }
}

/// `postgres -D pgdata` (launched as `launch` says) until `postmaster.pid` says ready; the
/// time since `t0`. Then stops it (SIGINT, a fast shutdown) and waits until it is gone.
pub fn run_postgres(launch: Launch, postgres: &Path, pgdata: &Path, t0: Instant) -> f64 {
    let mut cmd = launch.command(postgres);
    cmd.arg("-D").arg(pgdata).stderr(Stdio::null());
    let mut child = Owned::new(cmd.spawn(), libc::SIGINT);
    let elapsed = ms(wait_pidfile_ready(pgdata, &mut child, t0));
    stop(&mut child, libc::SIGINT);
    assert_stopped(pgdata, &[]);
    elapsed
}

/// Prints a series' median and p90 beside the floor's.
/// `target` is the ratio the issue sets for this mode (printed on the `RESULT` lines).
pub fn report(name: &str, floor: &[f64], ours: &[Run], target: f64) -> (f64, f64) {
    let totals: Vec<f64> = ours.iter().map(|r| r.total).collect();
    let (fm, fp) = median_p90(floor);
    let (cm, cp) = median_p90(&totals);
    println!("{:<34} {:>9} {:>9} {:>9}", name, "median ms", "p90 ms", "vs floor");
    println!("{:<34} {fm:>9.1} {fp:>9.1}", "  floor");
    println!(
        "{:<34} {cm:>9.1} {cp:>9.1} {:>8.2}x (+{:.1} ms)",
        "  compute_ctl (exec -> /status running)",
        cm / fm,
        cm - fm
    );
    // Round by round (the two sides of a round run back to back), so that the machine's drift
    // over the run cancels: the median difference and ratio, with the 10th and 90th percentiles.
    let mut diffs: Vec<f64> = totals.iter().zip(floor).map(|(c, f)| c - f).collect();
    let ratios: Vec<f64> = totals.iter().zip(floor).map(|(c, f)| c / f).collect();
    let ((dm, dp90), rm) = (median_p90(&diffs), median_p90(&ratios).0);
    diffs.sort_by(f64::total_cmp);
    let p10 = super::support::pct(&diffs, 0.1);
    println!("  paired by round: median difference {dm:+.1} ms (p10 {p10:+.1}, p90 {dp90:+.1}), median ratio {rm:.3}x");
    let key = name.split_whitespace().next().unwrap_or(name);
    println!("RESULT start/{key}_paired_extra {dm:.2} ms");
    println!("RESULT start/{key}_paired_ratio {rm:.3} target={target}");
    let timings: Vec<[f64; 3]> = ours.iter().filter_map(|r| r.timing).collect();
    if timings.len() == ours.len() {
        let part = |f: &dyn Fn(&[f64; 3], f64) -> f64| -> f64 {
            median_p90(&timings.iter().zip(&totals).map(|(t, total)| f(t, *total)).collect::<Vec<_>>()).0
        };
        let before = part(&|t, _| t[0]);
        let pg = part(&|t, _| t[1] - t[0]);
        let after = part(&|t, _| t[2] - t[1]);
        let rest = part(&|t, total| total - t[2]);
        println!(
            "  split (medians, from its timing line): main -> spawn {before:.1} ms, postgres start {pg:.1} ms, \
             ready -> running {after:.1} ms, exec before main + seen on /status {rest:.1} ms"
        );
        let cpu = median_p90(&ours.iter().map(|r| r.cpu).collect::<Vec<_>>()).0;
        println!("  compute_ctl's own CPU time (all threads, Postgres excluded) until running: median {cpu:.2} ms");
        println!("RESULT start/{key}_cpu {cpu:.2} ms");
        println!("RESULT start/{key}_before_spawn {before:.2} ms");
        println!("RESULT start/{key}_postgres_start {pg:.2} ms");
        println!("RESULT start/{key}_after_ready {after:.2} ms");
        println!("RESULT start/{key}_exec_and_poll {rest:.2} ms");
    } else {
        println!("  (no `start timing:` line in compute_ctl's log: an older binary?)");
    }
    (fm, cm)
}
