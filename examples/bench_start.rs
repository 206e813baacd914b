//! Start-up benchmark (issue 2), plus the idle cost of a running compute_ctl (issue 7).
//!
//!     cargo run --release --example bench_start [-- --runs N]
//!
//! On one prepared PGDATA (made by initdb, then configured by one compute_ctl start), four
//! series run interleaved, N times each (default 10), and their medians are compared:
//! - `floor`: the bare `postgres -D PGDATA` until `postmaster.pid` says `ready`, polled every
//!   millisecond: what no supervisor can beat;
//! - `pg_ctl`: `pg_ctl start -w` until it returns (it polls every 100 ms);
//! - `compute_ctl (status)`: from spawning compute_ctl (spec with `skip_pg_catalog_updates`) to
//!   the first `GET /status` that says `running`, polled every millisecond, as a client sees it;
//! - `compute_ctl (log)`: the same start, timed by the `compute status: running` line on its
//!   stderr, read with a blocking read. compute_ctl writes that line just before it publishes
//!   the status, so it is the same moment unless the machine is busy enough to preempt it
//!   between the two, and it has neither the 1 ms polling granularity nor 1000 connections a
//!   second competing with the start for two cores.
//!
//! With the log series it also reads the CPU time compute_ctl itself had used (all threads,
//! from /proc/PID/task/*/schedstat): its own cost, free of the noise of Postgres's start.
//!
//! Then one compute_ctl is left running idle for a window of seconds and its resident memory
//! (VmRSS, Postgres excluded), CPU time and wake-ups are read from /proc.
//!
//! Postgres runs as the `postgres` OS user when we are root. Every run is stopped by pid and
//! waited for; orphaned postmasters (`pg_ctl` daemonizes) are reaped because this process makes
//! itself a child subreaper. The binary under test is `$COMPUTE_CTL_BIN`, else
//! target/release/compute_ctl, built first with `$CARGO build --release` when cargo runs us.
//! Results are printed as `RESULT` lines (see examples/bench.rs).

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{
    PGBIN_DIR, as_postgres, chmod, compute_ctl_binary, free_port, median, ms, postgres_ids, watch_for_running,
    write_start_spec,
};

const TIMEOUT: Duration = Duration::from_secs(60);
const IDLE_SETTLE: Duration = Duration::from_secs(2);
const IDLE_WINDOW: Duration = Duration::from_secs(10);

fn main() {
    let runs = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => 10,
        [flag, n] if flag == "--runs" => n.parse().expect("--runs takes a number"),
        other => panic!("usage: bench_start [--runs N], got {other:?}"),
    };
    become_subreaper();
    let bin = compute_ctl_binary();
    let b = Bench::prepare(bin);
    println!("start-up: {runs} runs of each series on PGDATA {}", b.pgdata.display());

    let series = ["floor", "pg_ctl", "compute_ctl (status)", "compute_ctl (log)"];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); series.len()];
    let mut cpu = Vec::new();
    // One unrecorded round first: page cache and first-exec costs are not what we measure.
    for round in 0..=runs {
        let (by_log, cpu_ms) = b.compute_ctl(false);
        let t = [b.floor(), b.pg_ctl(), b.compute_ctl(true).0, by_log];
        if round > 0 {
            cpu.push(cpu_ms);
            for (v, ms) in times.iter_mut().zip(t) {
                v.push(ms);
            }
        }
    }
    let medians: Vec<f64> = times.iter().map(|v| median(v)).collect();
    let floor = medians[0];
    println!("{:<22} {:>9} {:>9} {:>9} {:>9}", "series", "median ms", "min ms", "max ms", "vs floor");
    for ((name, v), m) in series.iter().zip(&times).zip(&medians) {
        let (lo, hi) = (v.iter().copied().fold(f64::MAX, f64::min), v.iter().copied().fold(0.0, f64::max));
        println!("{name:<22} {m:>9.1} {lo:>9.1} {hi:>9.1} {:>8.2}x", m / floor);
    }
    let (status, log, pg_ctl) = (medians[2], medians[3], medians[1]);
    println!(
        "compute_ctl to running is {:.2}x the floor ({:.2}x by its log line) and {:.2}x pg_ctl start -w; target: <= 1.2x the floor",
        status / floor,
        log / floor,
        status / pg_ctl
    );
    println!("RESULT start/floor {floor:.1} ms");
    println!("RESULT start/pg_ctl_start_w {pg_ctl:.1} ms baseline=start/floor");
    println!("RESULT start/compute_ctl_status {status:.1} ms baseline=start/floor target=1.2");
    println!("RESULT start/compute_ctl_log {log:.1} ms baseline=start/floor target=1.2");
    println!("RESULT start/compute_ctl_vs_pg_ctl {:.2} x", status / pg_ctl);
    let cpu = median(&cpu);
    println!("compute_ctl's own CPU time (all threads, Postgres excluded) until running: median {cpu:.1} ms");
    println!("RESULT start/compute_ctl_cpu {cpu:.1} ms");

    b.idle();
}

/// One PGDATA, its ports and spec, under a directory removed on drop.
struct Bench {
    root: PathBuf,
    pgdata: PathBuf,
    spec: PathBuf,
    bin: PathBuf,
    pg_port: u16,
    http_port: u16,
}

impl Bench {
    fn prepare(bin: PathBuf) -> Bench {
        let root = std::env::temp_dir().join(format!("compute_ctl-bench-start-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sock")).unwrap();
        let uid_gid = postgres_ids();
        chmod(&root, 0o755);
        chmod(&root.join("sock"), 0o777);
        let pgdata = root.join("pgdata");
        std::fs::create_dir(&pgdata).unwrap();
        chmod(&pgdata, 0o700);
        if let Some((u, g)) = uid_gid {
            std::os::unix::fs::chown(&pgdata, Some(u), Some(g)).unwrap();
        }
        let mut initdb = Command::new(format!("{PGBIN_DIR}/initdb"));
        initdb.arg("-D").arg(&pgdata).args(["-U", "cloud_admin", "-E", "UTF8", "--locale=C.UTF-8", "--auth=trust"]);
        let out = as_postgres(&mut initdb).output().expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));

        let pg_port = free_port();
        let http_port = std::iter::repeat_with(free_port).find(|&p| p != pg_port && p + 1 != pg_port).unwrap();
        let spec_path = write_start_spec(&root, pg_port);
        let b = Bench { root, pgdata, spec: spec_path, bin, pg_port, http_port };
        // The first start writes compute_ctl's configuration into PGDATA; every series then
        // starts the very same cluster.
        b.compute_ctl(false);
        b
    }

    fn compute_ctl_command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-D").arg(&self.pgdata);
        cmd.args(["-C", &format!("postgresql://cloud_admin@127.0.0.1:{}/postgres", self.pg_port)]);
        cmd.arg("-S").arg(&self.spec).arg("-b").arg(format!("{PGBIN_DIR}/postgres"));
        cmd.args(["--http-port", &self.http_port.to_string(), "--http-bind", "127.0.0.1", "--exit-delay", "0"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).env_remove("RUST_LOG");
        cmd
    }

    /// Milliseconds from spawning compute_ctl to `running`: by polling `/status` every
    /// millisecond, or by its log line. Then stops it by pid (SIGTERM) and waits for its exit.
    /// Also returns the CPU time compute_ctl itself (all its threads, Postgres excluded) had
    /// used when it was seen running.
    fn compute_ctl(&self, poll_status: bool) -> (f64, f64) {
        let t0 = Instant::now();
        let mut child = Owned::new(self.compute_ctl_command().stderr(Stdio::piped()).spawn(), libc::SIGTERM);
        let stderr = child.stderr.take().unwrap();
        let (rx, reader) = watch_for_running(stderr, t0);
        let elapsed = if poll_status {
            loop {
                if status(self.http_port).as_deref() == Some("running") {
                    break t0.elapsed();
                }
                check_alive(&mut child, t0);
                std::thread::sleep(Duration::from_millis(1));
            }
        } else {
            match rx.recv_timeout(TIMEOUT) {
                Ok(d) => d,
                Err(_) => {
                    stop(&mut child, libc::SIGTERM);
                    panic!("compute_ctl did not log running: {:?}", reader.join().unwrap());
                }
            }
        };
        let cpu_ns = ProcSample::read(child.id()).cpu_ns;
        // The log line is written just before the status is published: under CPU contention
        // a request can still see the previous status for a moment.
        while status(self.http_port).as_deref() != Some("running") {
            check_alive(&mut child, t0);
            std::thread::sleep(Duration::from_millis(1));
        }
        stop(&mut child, libc::SIGTERM);
        let log = reader.join().unwrap();
        self.assert_stopped(&log);
        (ms(elapsed), cpu_ns as f64 / 1e6)
    }

    /// The floor: `postgres -D` until `postmaster.pid` names it and says `ready`.
    fn floor(&self) -> f64 {
        let t0 = Instant::now();
        let mut cmd = Command::new(format!("{PGBIN_DIR}/postgres"));
        cmd.arg("-D").arg(&self.pgdata).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = Owned::new(as_postgres(&mut cmd).spawn(), libc::SIGINT);
        let pidfile = self.pgdata.join("postmaster.pid");
        let pid = child.id().to_string();
        let elapsed = loop {
            if let Ok(text) = std::fs::read_to_string(&pidfile)
                && text.lines().next().map(str::trim) == Some(pid.as_str())
                && text.lines().last().map(str::trim) == Some("ready")
            {
                break t0.elapsed();
            }
            check_alive(&mut child, t0);
            std::thread::sleep(Duration::from_millis(1));
        };
        stop(&mut child, libc::SIGINT);
        self.assert_stopped(&[]);
        ms(elapsed)
    }

    /// `pg_ctl start -w` until it returns; the daemonized postmaster is then stopped by the pid
    /// in `postmaster.pid` and reaped (we are its subreaper).
    fn pg_ctl(&self) -> f64 {
        let t0 = Instant::now();
        let mut cmd = Command::new(format!("{PGBIN_DIR}/pg_ctl"));
        cmd.args(["start", "-w", "-s", "-D"]).arg(&self.pgdata);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let st = as_postgres(&mut cmd).status().expect("run pg_ctl");
        let elapsed = t0.elapsed();
        assert!(st.success(), "pg_ctl start -w failed: {st}");
        let text = std::fs::read_to_string(self.pgdata.join("postmaster.pid")).unwrap();
        let pid: i32 = text.lines().next().unwrap().trim().parse().unwrap();
        let adopted = Adopted(pid);
        kill(pid, libc::SIGINT);
        reap(pid);
        std::mem::forget(adopted);
        self.assert_stopped(&[]);
        ms(elapsed)
    }

    /// Postgres removes `postmaster.pid` as the last step of a clean shutdown.
    fn assert_stopped(&self, log: &[String]) {
        let pidfile = self.pgdata.join("postmaster.pid");
        let deadline = Instant::now() + TIMEOUT;
        while pidfile.exists() {
            assert!(Instant::now() < deadline, "postgres did not stop; compute_ctl log: {log:#?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Idle cost of a running compute_ctl: VmRSS (Postgres excluded), CPU and wake-ups over
    /// a window, read from /proc for all of its threads.
    fn idle(&self) {
        let mut child = Owned::new(self.compute_ctl_command().stderr(Stdio::null()).spawn(), libc::SIGTERM);
        let t0 = Instant::now();
        while status(self.http_port).as_deref() != Some("running") {
            check_alive(&mut child, t0);
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(IDLE_SETTLE);
        let pid = child.id();
        let before = ProcSample::read(pid);
        std::thread::sleep(IDLE_WINDOW);
        let after = ProcSample::read(pid);
        stop(&mut child, libc::SIGTERM);
        self.assert_stopped(&[]);

        let secs = IDLE_WINDOW.as_secs_f64();
        let cpu_pct = (after.cpu_ns - before.cpu_ns) as f64 / 1e9 / secs * 100.0;
        let tick_pct = (after.ticks - before.ticks) as f64 / ticks_per_second() / secs * 100.0;
        let wakeups = (after.switches - before.switches) as f64 / secs;
        println!(
            "idle compute_ctl (pid {pid}, {} threads) over {secs} s: VmRSS {} KiB (peak {} KiB), CPU {cpu_pct:.4}% \
             (utime+stime {tick_pct:.2}%), {wakeups:.1} context switches/s",
            after.threads, after.rss_kib, after.hwm_kib
        );
        println!("RESULT idle/rss {:.2} MiB target=8", after.rss_kib as f64 / 1024.0);
        println!("RESULT idle/rss_peak {:.2} MiB", after.hwm_kib as f64 / 1024.0);
        println!("RESULT idle/cpu {cpu_pct:.4} %");
        println!("RESULT idle/cpu_utime_stime {tick_pct:.2} %");
        println!("RESULT idle/wakeups {wakeups:.1} per_s");
        println!("RESULT idle/threads {} count", after.threads);
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// What /proc says about a process, summed over its threads.
struct ProcSample {
    rss_kib: u64,
    hwm_kib: u64,
    ticks: u64,
    cpu_ns: u64,
    switches: u64,
    threads: usize,
}

impl ProcSample {
    fn read(pid: u32) -> ProcSample {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        // utime and stime are fields 14 and 15 of /proc/PID/stat, counted after the `(comm)`.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after_comm: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        let ticks = after_comm[11].parse::<u64>().unwrap() + after_comm[12].parse::<u64>().unwrap();
        let (mut cpu_ns, mut switches, mut threads) = (0, 0, 0);
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
            threads += 1;
            let sched = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            cpu_ns += sched.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let st = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            for l in st.lines().filter(|l| l.contains("ctxt_switches:")) {
                switches += l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        ProcSample { rss_kib: field("VmRSS:"), hwm_kib: field("VmHWM:"), ticks, cpu_ns, switches, threads }
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// `GET /status` on a fresh connection; the `status` field, or None when not answering yet.
fn status(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(v.get("status")?.as_str()?.to_string())
}

/// A child that is stopped by pid (and waited for) if a panic leaves it running, so a failed
/// measurement never leaves a compute_ctl or a postmaster behind.
struct Owned {
    child: Child,
    signal: i32,
}

impl Owned {
    fn new(spawned: std::io::Result<Child>, signal: i32) -> Owned {
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
            let pid = self.child.id() as i32;
            // SAFETY: kill(2) takes two integers and touches no memory of ours.
            unsafe { libc::kill(pid, self.signal) };
            let deadline = Instant::now() + TIMEOUT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The postmaster `pg_ctl` left running, stopped (fast) and reaped if a panic comes first.
struct Adopted(i32);

impl Drop for Adopted {
    fn drop(&mut self) {
        // SAFETY: kill(2) and waitpid(2) take integers and a pointer to a local.
        unsafe {
            libc::kill(self.0, libc::SIGINT);
            let mut st = 0;
            libc::waitpid(self.0, &mut st, 0);
        }
    }
}

fn check_alive(child: &mut Child, t0: Instant) {
    if let Some(st) = child.try_wait().unwrap() {
        panic!("{:?} exited early: {st}", child.id());
    }
    if t0.elapsed() > TIMEOUT {
        stop(child, libc::SIGTERM);
        panic!("not ready after {TIMEOUT:?}");
    }
}

/// Sends `signal` to our child by pid and waits for it to exit.
fn stop(child: &mut Child, signal: i32) {
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

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
}

/// Waits for an adopted orphan (see [`become_subreaper`]) to exit.
fn reap(pid: i32) {
    let mut st = 0;
    // SAFETY: waitpid(2) writes the status into a local that outlives the call.
    let rc = unsafe { libc::waitpid(pid, &mut st, 0) };
    assert_eq!(rc, pid, "waitpid({pid}): {}", std::io::Error::last_os_error());
}

/// `pg_ctl` daemonizes Postgres; as a child subreaper we adopt it and can wait for its exit.
fn become_subreaper() {
    // SAFETY: prctl(2) with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl(PR_SET_CHILD_SUBREAPER): {}", std::io::Error::last_os_error());
}
