//! Stop benchmark (issue 16): how long a stop takes, and for how long clients are refused,
//! with and without the `CHECKPOINT` compute_ctl runs before the fast shutdown.
//!
//!     cargo run --release --example bench_stop [-- --runs N]
//!
//! One PGDATA (initdb) with `shared_buffers = 2GB`, `checkpoint_timeout = 1h` and a
//! `max_wal_size` large enough that no checkpoint starts by itself. Each run starts
//! compute_ctl, writes 1 GiB of dirty pages (an `INSERT … SELECT` into a table emptied first,
//! so the pages stay in shared buffers), then sends SIGTERM and measures:
//! - stop: from SIGTERM to compute_ctl's exit;
//! - refused: from the first connection attempt Postgres refuses (a prober thread opens a new
//!   connection every 5 ms) to compute_ctl's exit: the window in which a client finds the
//!   database neither serving nor gone.
//!
//! Three series run alternately, N times each (default 5): `plain` (`--pre-stop-checkpoint 0`,
//! a bare fast shutdown) and `checkpointed` (the default bound, 10 s), both with 1 GiB dirty,
//! and `clean floor`: the same 1 GiB written, then checkpointed by the benchmark itself before
//! the clock starts, then a bare fast shutdown: the refused window no pre-stop checkpoint can
//! beat. Target: the checkpointed refused window <= 0.2x the plain one.
//!
//! Where the clean floor goes (strace -f -T and perf on the postmaster and its children during
//! a stop, README "Shorter stops"): after its shutdown checkpoint (tens of ms when nothing is
//! dirty) the checkpointer exits, and then the postmaster, in an `on_shmem_exit` callback,
//! unmaps the anonymous shared segment (`munmap` of 2.2 GB): the last mapping of it, so the
//! kernel frees every page the run touched, 4 KiB at a time (`shmem_undo_range`), before
//! the postmaster closes its listening sockets and removes `postmaster.pid`. Without huge
//! pages that is 0.4-1.8 s for 1 GiB touched; with huge pages 512 times fewer pages to free.
//! So every series runs in two configurations: the machine as it is (normally
//! `vm.nr_hugepages = 0`: 4 KiB pages), then, when we are root and `--no-huge-pages` is not
//! given, with huge pages reserved for the run (`vm.nr_hugepages` raised by what
//! `postgres -C shared_memory_size_in_huge_pages` says, then restored; both printed).
//! Postgres's default `huge_pages = try` uses them; each run prints how much of the
//! postmaster's memory is in huge pages (`HugetlbPages`), so a run that found none (another
//! Postgres took them) shows it.
//!
//! Each run also prints, from Postgres's own log, the shutdown checkpoint's time and the
//! teardown after it (`checkpoint complete` to `database system is shut down`), and how long
//! compute_ctl took to exit after its postmaster had exited (polled in /proc every ms; `-`
//! when compute_ctl had reaped it before a poll saw it exit): the share of the window
//! compute_ctl itself causes. Results are printed as `RESULT` lines (see
//! examples/bench.rs) with the load average. The binary under test is `$COMPUTE_CTL_BIN`,
//! else target/release/compute_ctl, built first when cargo runs us. Every compute_ctl is
//! stopped by pid and waited for; its Postgres gets its parent-death signal if we die.

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::{PGBIN_DIR, chmod, chown, compute_ctl_binary, median, ms, pg_cmd};

const TIMEOUT: Duration = Duration::from_secs(120);
const GIB: i64 = 1 << 30;

fn main() {
    let mut runs = 5;
    let mut huge = true;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|n| n.parse().ok()).expect("--runs takes a number"),
            "--no-huge-pages" => huge = false,
            other => panic!("usage: bench_stop [--runs N] [--no-huge-pages], got {other:?}"),
        }
    }
    let b = Bench::prepare(compute_ctl_binary());
    println!("stop: {runs} runs of each series, 1 GiB dirty, PGDATA {}", b.pgdata.display());
    let nr = read_nr_hugepages();
    let plain = b.configuration(&format!("as the machine is (vm.nr_hugepages = {nr})"), runs);
    let base = plain.report("", None);
    if !huge {
        return;
    }
    let need = b.huge_pages_needed();
    match HugePages::reserve(need, HUGE_PAGES_MARGIN) {
        Ok(guard) => {
            println!(
                "vm.nr_hugepages {} -> {} for the next configuration ({need} needed, up to {HUGE_PAGES_MARGIN} \
                 more for other Postgres instances on this machine, which take free huge pages too)",
                guard.old, guard.now
            );
            let h = b.configuration(&format!("huge pages reserved (vm.nr_hugepages = {})", guard.now), runs);
            drop(guard);
            h.report("huge_", Some(base));
        }
        Err(e) => println!("huge-pages configuration skipped: {e}"),
    }
}

/// One run's figures.
#[derive(Clone, Copy)]
struct Run {
    stop: f64,
    refused: f64,
    /// The shutdown checkpoint, from Postgres's log.
    checkpoint: Option<f64>,
    /// `checkpoint complete` to `database system is shut down`, from Postgres's log.
    teardown: Option<f64>,
    /// The postmaster's exit (seen in /proc) to compute_ctl's exit.
    after_exit: Option<f64>,
}

/// The three series of one configuration.
struct Configuration {
    name: String,
    series: Vec<(&'static str, Vec<Run>)>,
}

const SERIES: [(&str, &str, bool); 3] =
    [("plain", "0", false), ("checkpointed", "10", false), ("clean floor", "0", true)];

impl Bench {
    fn configuration(&self, name: &str, runs: usize) -> Configuration {
        println!("== configuration: {name}; load average {}", load_average());
        let mut c =
            Configuration { name: name.to_string(), series: SERIES.iter().map(|s| (s.0, Vec::new())).collect() };
        for round in 0..runs {
            for (i, (series, bound, clean)) in SERIES.iter().enumerate() {
                let (r, dirty, huge_mib) = self.run(bound, *clean);
                let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
                println!(
                    "round {round} {series:<13} stop {:>7.1} ms  refused {:>7.1} ms  shutdown checkpoint {:>6} ms  \
                     teardown {:>6} ms  compute_ctl after postgres {:>5} ms  (dirty {dirty} MiB, postmaster \
                     huge pages {huge_mib} MiB, load {})",
                    r.stop,
                    r.refused,
                    opt(r.checkpoint),
                    opt(r.teardown),
                    opt(r.after_exit),
                    load_average()
                );
                c.series[i].1.push(r);
            }
        }
        c
    }
}

impl Configuration {
    /// Prints the medians and RESULT lines (keys prefixed `prefix`); `base` is the plain
    /// refused window of the first configuration. Returns this configuration's plain refused
    /// median.
    fn report(&self, prefix: &str, base: Option<f64>) -> f64 {
        let med = |i: usize, f: &dyn Fn(&Run) -> Option<f64>| {
            let v: Vec<f64> = self.series[i].1.iter().filter_map(f).collect();
            if v.is_empty() { f64::NAN } else { median(&v) }
        };
        println!("-- {} (medians, load average {})", self.name, load_average());
        println!(
            "{:<13} {:>8} {:>8} {:>10} {:>9} {:>11}",
            "series", "stop", "refused", "checkpoint", "teardown", "after exit"
        );
        for (i, (name, _)) in self.series.iter().enumerate() {
            println!(
                "{name:<13} {:>8.1} {:>8.1} {:>10.1} {:>9.1} {:>11.1}",
                med(i, &|r| Some(r.stop)),
                med(i, &|r| Some(r.refused)),
                med(i, &|r| r.checkpoint),
                med(i, &|r| r.teardown),
                med(i, &|r| r.after_exit)
            );
        }
        let (ps, cs) = (med(0, &|r| Some(r.stop)), med(1, &|r| Some(r.stop)));
        let (pr, cr, fr) = (med(0, &|r| Some(r.refused)), med(1, &|r| Some(r.refused)), med(2, &|r| Some(r.refused)));
        let verdict = |x: f64| if x <= 0.2 { "met" } else { "not met" };
        println!(
            "refused window with the pre-stop checkpoint: {:.2}x this configuration's plain fast shutdown; \
             target <= 0.2x: {}",
            cr / pr,
            verdict(cr / pr)
        );
        if let Some(base) = base {
            println!(
                "  and {:.2}x the plain fast shutdown's of the first configuration ({base:.1} ms): {}",
                cr / base,
                verdict(cr / base)
            );
        }
        println!(
            "the clean floor (1 GiB written and checkpointed before the signal) is {:.2}x the plain window; \
             checkpointed is {:+.0} ms from it, plain {:+.0} ms",
            fr / pr,
            cr - fr,
            pr - fr
        );
        println!("RESULT stop/{prefix}plain_stop {ps:.1} ms");
        println!("RESULT stop/{prefix}checkpointed_stop {cs:.1} ms baseline=stop/{prefix}plain_stop");
        println!("RESULT stop/{prefix}plain_refused {pr:.1} ms");
        println!("RESULT stop/{prefix}checkpointed_refused {cr:.1} ms baseline=stop/{prefix}plain_refused target=0.2");
        println!("RESULT stop/{prefix}clean_floor_refused {fr:.1} ms baseline=stop/{prefix}plain_refused");
        pr
    }
}

struct Bench {
    root: PathBuf,
    pgdata: PathBuf,
    spec: PathBuf,
    bin: PathBuf,
    pg_port: u16,
    http_port: u16,
    /// The claims on both port pairs, held for the whole run.
    _ports: [std::fs::File; 2],
}

impl Bench {
    fn prepare(bin: PathBuf) -> Bench {
        let root = std::env::temp_dir().join(format!("compute_ctl-bench-stop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sock")).unwrap();
        chmod(&root, 0o755);
        chmod(&root.join("sock"), 0o777);
        let pgdata = root.join("pgdata");
        std::fs::create_dir(&pgdata).unwrap();
        chmod(&pgdata, 0o700);
        chown(&pgdata);
        let mut initdb = pg_cmd("initdb");
        initdb.arg("-D").arg(&pgdata).args(["-U", "cloud_admin", "-E", "UTF8", "--locale=C.UTF-8", "--auth=trust"]);
        let out = initdb.output().expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let (pg_port, pg_claim) = support::claim_port_pair();
        let (http_port, http_claim) = support::claim_port_pair();
        let spec_path = support::write_start_spec_with(
            &root,
            pg_port,
            &[
                ("shared_buffers", "2GB"),
                ("checkpoint_timeout", "1h"),
                ("max_wal_size", "16GB"),
                ("wal_compression", "on"),
            ],
        );
        Bench { root, pgdata, spec: spec_path, bin, pg_port, http_port, _ports: [pg_claim, http_claim] }
    }

    /// One run: start, dirty 1 GiB (and checkpoint it here when `clean`: the floor), SIGTERM;
    /// (figures, dirty MiB, MiB of the postmaster's memory in huge pages).
    fn run(&self, pre_stop_checkpoint: &str, clean: bool) -> (Run, i64, u64) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-D").arg(&self.pgdata);
        cmd.args(["-C", &format!("postgresql://cloud_admin@127.0.0.1:{}/postgres", self.pg_port)]);
        cmd.arg("-S").arg(&self.spec).arg("-b").arg(format!("{PGBIN_DIR}/postgres"));
        cmd.args(["--http-port", &self.http_port.to_string(), "--http-bind", "127.0.0.1", "--exit-delay", "0"]);
        cmd.args(["--pre-stop-checkpoint", pre_stop_checkpoint]);
        let log = std::fs::File::create(self.root.join("compute_ctl.log")).unwrap();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).env("RUST_LOG", "info");
        let mut child = Owned(cmd.spawn().expect("spawn compute_ctl"));
        let t0 = Instant::now();
        let mut c = loop {
            if let Ok(c) = postgres::Config::new()
                .host("127.0.0.1")
                .port(self.pg_port)
                .user("cloud_admin")
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(1))
                .connect(postgres::NoTls)
            {
                break c;
            }
            if child.0.try_wait().unwrap().is_some() {
                let log = std::fs::read_to_string(self.root.join("compute_ctl.log")).unwrap_or_default();
                panic!("compute_ctl exited during its start; its log:\n{log}");
            }
            assert!(t0.elapsed() < TIMEOUT, "postgres not up");
            std::thread::sleep(Duration::from_millis(20));
        };
        // Running (the catalog is skipped, so Postgres accepting is the end of the start)
        // needs a moment more; wait for compute_ctl to say it.
        let log_path = self.root.join("compute_ctl.log");
        while !std::fs::read_to_string(&log_path).unwrap_or_default().contains("compute status: running") {
            assert!(t0.elapsed() < TIMEOUT, "compute_ctl not running");
            std::thread::sleep(Duration::from_millis(10));
        }
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS dirty (id bigint, pad text) WITH (fillfactor = 100);
             ALTER TABLE dirty ALTER COLUMN pad SET STORAGE PLAIN;
             TRUNCATE dirty;
             CHECKPOINT;",
        )
        .unwrap();
        // ~ 7 rows of 1000 bytes a page: 131072 pages is 1 GiB.
        c.batch_execute("INSERT INTO dirty SELECT g, repeat('x', 990) FROM generate_series(1, 131072 * 7) g").unwrap();
        let size: i64 = c.query_one("SELECT pg_relation_size('dirty')", &[]).unwrap().get(0);
        assert!(size >= GIB - GIB / 20, "table is only {} MiB", size >> 20);
        if clean {
            c.batch_execute("CHECKPOINT").unwrap();
        }
        let dirty_mib = dirty_mib(&mut c).unwrap_or(if clean { 0 } else { size >> 20 });
        drop(c);
        let pm = std::fs::read_to_string(self.pgdata.join("postmaster.pid")).unwrap();
        let pm: i32 = pm.lines().next().and_then(|l| l.trim().parse().ok()).expect("a pid in postmaster.pid");
        let huge_mib = proc_status_kib(pm, "HugetlbPages:").unwrap_or(0) >> 10;

        let stop_flag = Arc::new(AtomicBool::new(false));
        let first_refusal: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let prober = {
            let (stop_flag, first_refusal, port) = (stop_flag.clone(), first_refusal.clone(), self.pg_port);
            std::thread::spawn(move || {
                while !stop_flag.load(Ordering::SeqCst) {
                    let attempt = Instant::now();
                    let ok = postgres::Config::new()
                        .host("127.0.0.1")
                        .port(port)
                        .user("cloud_admin")
                        .dbname("postgres")
                        .connect_timeout(Duration::from_secs(1))
                        .connect(postgres::NoTls)
                        .is_ok();
                    if !ok {
                        first_refusal.lock().unwrap().get_or_insert(attempt);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        // A first probe has succeeded before the signal goes out.
        std::thread::sleep(Duration::from_millis(20));
        let sent = Instant::now();
        // SAFETY: kill(2) takes two integers and touches no memory of ours.
        unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
        // The postmaster is compute_ctl's child: exited once it is a zombie or gone.
        let mut pm_exited = None;
        let exited = loop {
            if child.0.try_wait().unwrap().is_some() {
                break Instant::now();
            }
            if pm_exited.is_none() && !alive(pm) {
                pm_exited = Some(Instant::now());
            }
            assert!(sent.elapsed() < TIMEOUT, "compute_ctl did not stop");
            std::thread::sleep(Duration::from_millis(1));
        };
        stop_flag.store(true, Ordering::SeqCst);
        prober.join().unwrap();
        let refused_from = first_refusal.lock().unwrap().unwrap_or(exited);
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if std::env::var_os("BENCH_STOP_VERBOSE").is_some() {
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            println!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        if pre_stop_checkpoint != "0" {
            assert!(log.contains("pre-stop checkpoint done"), "no pre-stop checkpoint in the log:\n{log}");
        }
        let (checkpoint, teardown) = shutdown_times(&log);
        let run = Run {
            stop: ms(exited - sent),
            refused: ms(exited.saturating_duration_since(refused_from)),
            checkpoint,
            teardown,
            after_exit: pm_exited.map(|t| ms(exited - t)),
        };
        (run, dirty_mib, huge_mib)
    }

    /// Huge pages the shared memory of this PGDATA's configuration takes (Postgres 15+).
    fn huge_pages_needed(&self) -> u64 {
        let mut cmd = pg_cmd("postgres");
        cmd.arg("-D").arg(&self.pgdata).args(["-C", "shared_memory_size_in_huge_pages"]);
        let out = cmd.output().expect("run postgres -C");
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().parse().unwrap_or_else(|_| panic!("postgres -C shared_memory_size_in_huge_pages said {text:?}"))
    }
}

/// Whether `pid` runs (neither gone nor a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A `kB` field of /proc/PID/status.
fn proc_status_kib(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// From the Postgres lines of compute_ctl's log (`PG: 2026-11-30 06:52:00.963 GMT [pid]
/// LOG: ...`): the shutdown checkpoint's time (`checkpoint starting: shutdown` to its
/// `checkpoint complete`) and the teardown after it (to `database system is shut down`), ms.
fn shutdown_times(log: &str) -> (Option<f64>, Option<f64>) {
    let at = |line: &str| -> Option<f64> {
        let time = line.strip_prefix("PG: ")?.split(' ').nth(1)?;
        let mut hms = time.split(':').map(|p| p.parse::<f64>().ok());
        Some((hms.next()?? * 3600.0 + hms.next()?? * 60.0 + hms.next()??) * 1000.0)
    };
    let last = |what: &str| log.lines().filter(|l| l.contains(what)).filter_map(at).next_back();
    let started = last("checkpoint starting: shutdown");
    let complete = last("checkpoint complete");
    let down = last("database system is shut down");
    let checkpoint = started.zip(complete).map(|(s, c)| c - s);
    (checkpoint, complete.zip(down).map(|(c, d)| d - c))
}

fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split(' ').take(3).collect::<Vec<_>>().join(" ")
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Huge pages reserved beyond what our Postgres needs: with `huge_pages = try` (the default),
/// any Postgres started on this machine while they are free takes some (~70 for a default
/// 128 MB), and ours would then find too few and fall back to 4 KiB pages.
const HUGE_PAGES_MARGIN: u64 = 1024;

fn read_nr_hugepages() -> u64 {
    std::fs::read_to_string(NR_HUGEPAGES).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

/// Huge pages reserved for the run: `vm.nr_hugepages` raised by what the run needs, put back
/// on drop (also when a run panics).
struct HugePages {
    old: u64,
    now: u64,
}

impl HugePages {
    /// Raises `vm.nr_hugepages` by `need` plus what the kernel can give of `margin`.
    fn reserve(need: u64, margin: u64) -> Result<HugePages, String> {
        let old = read_nr_hugepages();
        let want = old + need + margin;
        std::fs::write(NR_HUGEPAGES, want.to_string())
            .map_err(|e| format!("cannot raise {NR_HUGEPAGES} to {want} (needs root): {e}"))?;
        let guard = HugePages { old, now: read_nr_hugepages() };
        if guard.now < old + need {
            // The kernel found too little contiguous memory.
            return Err(format!("the kernel reserved only {} of {} huge pages", guard.now, old + need));
        }
        Ok(guard)
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        match std::fs::write(NR_HUGEPAGES, self.old.to_string()) {
            Ok(()) => println!("vm.nr_hugepages restored to {}", self.old),
            Err(e) => println!("CANNOT restore vm.nr_hugepages to {}: {e}; set it by hand", self.old),
        }
    }
}

/// Dirty shared buffers in MiB, when `pg_buffercache` can be installed.
fn dirty_mib(c: &mut postgres::Client) -> Option<i64> {
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_buffercache").ok()?;
    let row = c.query_one("SELECT count(*) FILTER (WHERE isdirty) * 8 / 1024 FROM pg_buffercache", &[]).ok()?;
    Some(row.get(0))
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A compute_ctl stopped by pid (SIGTERM, then SIGKILL) if a panic leaves it running.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // SAFETY: kill(2) takes two integers and touches no memory of ours.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + TIMEOUT;
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
