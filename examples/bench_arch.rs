//! The two static binaries side by side (issue 20): size, and compute_ctl's own CPU time to
//! `running`, for x86_64 natively and for aarch64 under `qemu-aarch64-static`.
//!
//!     cargo run --release --example bench_arch [-- --runs N]
//!
//! It builds both musl targets (`cargo build --release --target …`, linked by rust-lld), makes
//! one PGDATA with initdb, then starts compute_ctl on it N times per architecture (default 5,
//! interleaved, after one unrecorded warm-up round each), with `skip_pg_catalog_updates`. Each
//! start is timed to its `compute status: running` log line, and at that moment its CPU time is
//! read from /proc/PID/stat (utime + stime: all its threads, live and exited, Postgres
//! excluded; counted in clock ticks, usually 10 ms) and, finer, from /proc/PID/task/*/schedstat
//! (nanoseconds, live threads). Under qemu the process is the emulator running compute_ctl, so
//! its CPU is compute_ctl's plus the translation: what an aarch64 binary costs on an x86 CI
//! machine, not what it costs on arm64 hardware. Postgres is the machine's own x86_64 build in
//! both cases. Medians are printed with `RESULT` lines (see examples/bench.rs). Without
//! qemu-aarch64-static or the aarch64 target it says so and measures nothing.

#[path = "support/mod.rs"]
mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{PGBIN_DIR, chmod, claim_port_pair, median, postgres_ids, watch_for_running, write_start_spec};

const TIMEOUT: Duration = Duration::from_secs(120);
const TARGETS: [(&str, &str); 2] = [("x86_64", "x86_64-unknown-linux-musl"), ("aarch64", "aarch64-unknown-linux-musl")];

fn main() {
    let runs: usize = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => 5,
        [flag, n] if flag == "--runs" => n.parse().expect("--runs takes a number"),
        other => panic!("usage: bench_arch [--runs N], got {other:?}"),
    };
    if !Command::new("qemu-aarch64-static").arg("--version").output().is_ok_and(|o| o.status.success()) {
        println!("skipped: qemu-aarch64-static is not installed (apt-get install qemu-user-static)");
        return;
    }
    if let Ok(out) = Command::new("rustup").args(["target", "list", "--installed"]).output() {
        let installed = String::from_utf8_lossy(&out.stdout);
        if let Some((_, t)) = TARGETS.iter().find(|(_, t)| !installed.lines().any(|l| l == *t)) {
            println!("skipped: the {t} target is not installed (rustup target add {t})");
            return;
        }
    }
    let bins: Vec<PathBuf> = TARGETS.iter().map(|(_, t)| build(t)).collect();
    let b = Bench::prepare();
    println!("{runs} starts per architecture on PGDATA {}", b.pgdata.display());

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(), Vec::new()];
    for round in 0..=runs {
        for (i, bin) in bins.iter().enumerate() {
            let s = b.start(bin, i == 1);
            if round > 0 {
                samples[i].push(s);
            }
        }
    }

    println!(
        "{:<22} {:>12} {:>16} {:>20} {:>14}",
        "arch", "size bytes", "cpu ms (stat)", "cpu ms (schedstat)", "wall ms"
    );
    let mut cpu = [0.0; 2];
    for (i, ((arch, _), bin)) in TARGETS.iter().zip(&bins).enumerate() {
        let size = std::fs::metadata(bin).unwrap().len();
        let stat = median(&samples[i].iter().map(|s| s.stat_ms).collect::<Vec<_>>());
        let sched = median(&samples[i].iter().map(|s| s.sched_ms).collect::<Vec<_>>());
        let wall = median(&samples[i].iter().map(|s| s.wall_ms).collect::<Vec<_>>());
        let label = if i == 1 { format!("{arch} (qemu)") } else { arch.to_string() };
        println!("{label:<22} {size:>12} {stat:>16.1} {sched:>20.1} {wall:>14.1}");
        let mib = size as f64 / (1024.0 * 1024.0);
        println!("RESULT arch/size_{arch} {mib:.2} MiB target=4");
        cpu[i] = sched;
        let base = if i == 1 { " baseline=arch/cpu_x86_64" } else { "" };
        println!("RESULT arch/cpu_{arch} {sched:.1} ms{base}");
        println!("RESULT arch/cpu_ticks_{arch} {stat:.0} ms");
        println!("RESULT arch/wall_{arch} {wall:.1} ms");
    }
    println!("aarch64 under qemu used {:.1}x the CPU of x86_64 to running", cpu[1] / cpu[0]);
}

/// `cargo build` of the static binary for `target` when cargo runs us; its path either way.
fn build(target: &str) -> PathBuf {
    if let Some(cargo) = std::env::var_os("CARGO") {
        let args = ["build", "--release", "--quiet", "--bin", "compute_ctl", "--target", target];
        let st = Command::new(cargo).args(args).status();
        assert!(st.is_ok_and(|s| s.success()), "cargo build --release --target {target} failed");
    }
    // target/release/examples/bench_arch -> target/<triple>/release/compute_ctl
    let exe = std::env::current_exe().unwrap();
    let dir = exe.ancestors().nth(3).unwrap();
    let bin = dir.join(target).join("release/compute_ctl");
    assert!(bin.exists(), "{} not found (rustup target add {target}, then build it)", bin.display());
    bin
}

struct Sample {
    stat_ms: f64,
    sched_ms: f64,
    wall_ms: f64,
}

/// One PGDATA and spec under a directory removed on drop.
struct Bench {
    root: PathBuf,
    pgdata: PathBuf,
    spec: PathBuf,
    pg_port: u16,
    http_port: u16,
    _ports: [std::fs::File; 2],
}

impl Bench {
    fn prepare() -> Bench {
        let root = std::env::temp_dir().join(format!("compute_ctl-bench-arch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sock")).unwrap();
        chmod(&root, 0o755);
        chmod(&root.join("sock"), 0o777); // Postgres's socket and lock file
        let pgdata = root.join("pgdata");
        std::fs::create_dir(&pgdata).unwrap();
        chmod(&pgdata, 0o700);
        let ids = postgres_ids();
        if let Some((u, g)) = ids {
            std::os::unix::fs::chown(&pgdata, Some(u), Some(g)).unwrap();
        }
        let mut initdb = Command::new(format!("{PGBIN_DIR}/initdb"));
        initdb.arg("-D").arg(&pgdata).args(["-U", "cloud_admin", "-E", "UTF8", "--locale=C.UTF-8", "--auth=trust"]);
        if let Some((u, g)) = ids {
            initdb.uid(u).gid(g);
        }
        let out = initdb.output().expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let (pg_port, pg_lock) = claim_port_pair();
        let (http_port, http_lock) = claim_port_pair();
        let spec_path = write_start_spec(&root, pg_port);
        Bench { root, pgdata, spec: spec_path, pg_port, http_port, _ports: [pg_lock, http_lock] }
    }

    /// One start to the `running` log line, its CPU read then; then SIGTERM, and a check that
    /// compute_ctl exited and took its postmaster with it.
    fn start(&self, bin: &Path, qemu: bool) -> Sample {
        let mut cmd = if qemu {
            let mut c = Command::new("qemu-aarch64-static");
            c.arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.arg("-D").arg(&self.pgdata);
        cmd.args(["-C", &format!("postgresql://cloud_admin@127.0.0.1:{}/postgres", self.pg_port)]);
        cmd.arg("-S").arg(&self.spec).arg("-b").arg(format!("{PGBIN_DIR}/postgres"));
        cmd.args(["--http-port", &self.http_port.to_string(), "--http-bind", "127.0.0.1", "--exit-delay", "0"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).env_remove("RUST_LOG");
        let t0 = Instant::now();
        let mut child = Owned(cmd.spawn().expect("spawn compute_ctl"));
        let stderr = child.0.stderr.take().unwrap();
        let (rx, reader) = watch_for_running(stderr, t0);
        let Ok(wall) = rx.recv_timeout(TIMEOUT) else {
            drop(child);
            panic!("{} did not log running: {:?}", bin.display(), reader.join().unwrap());
        };
        let pid = child.0.id();
        let (stat_ms, sched_ms) = (stat_cpu_ms(pid), schedstat_cpu_ms(pid));
        let pid_file = std::fs::read_to_string(self.pgdata.join("postmaster.pid")).unwrap();
        let postmaster: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
        signal(pid as i32, libc::SIGTERM);
        let deadline = Instant::now() + TIMEOUT;
        while child.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "compute_ctl {pid} still running after SIGTERM");
            std::thread::sleep(Duration::from_millis(5));
        }
        let log = reader.join().unwrap();
        assert!(!alive(postmaster), "postmaster {postmaster} outlived compute_ctl: {log:?}");
        Sample { stat_ms, sched_ms, wall_ms: wall.as_secs_f64() * 1000.0 }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// utime + stime of the whole process (fields 14 and 15 of /proc/PID/stat, after `(comm)`).
fn stat_cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 * 1000.0 / hz
}

/// Time on CPU of every live thread, in nanoseconds (the first field of each schedstat).
fn schedstat_cpu_ms(pid: u32) -> f64 {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let s = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        ns += s.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
    }
    ns as f64 / 1e6
}

/// compute_ctl under test, stopped by pid and waited for if a panic leaves it running.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            signal(self.0.id() as i32, libc::SIGTERM);
            let deadline = Instant::now() + TIMEOUT;
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) };
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the pid exists.
    unsafe { libc::kill(pid, 0) == 0 }
}
