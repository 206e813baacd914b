//! The idle cost of a running compute_ctl (issue 7): resident memory (Postgres excluded), CPU
//! time and wake-ups over a window, read from /proc for all of its threads.

use super::common::{Owned, assert_stopped, stop, wait_running};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IDLE_SETTLE: Duration = Duration::from_secs(2);
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// Starts `cmd` (compute_ctl), lets it settle once running, then samples it over a window.
pub fn idle(mut cmd: Command, http_port: u16, pgdata: &Path) {
    let mut child = Owned::new(cmd.stderr(Stdio::null()).spawn(), libc::SIGTERM);
    wait_running(http_port, &mut child, Instant::now());
    std::thread::sleep(IDLE_SETTLE);
    let pid = child.id();
    let before = ProcSample::read(pid);
    std::thread::sleep(IDLE_WINDOW);
    let after = ProcSample::read(pid);
    stop(&mut child, libc::SIGTERM);
    assert_stopped(pgdata, &[]);

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
