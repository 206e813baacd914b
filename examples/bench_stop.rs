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
//! Three series run alternately, N times each (default 3): `plain` (`--pre-stop-checkpoint 0`,
//! a bare fast shutdown) and `checkpointed` (the default bound, 10 s), both with 1 GiB dirty,
//! and `clean floor`: the same 1 GiB written, then checkpointed by the benchmark itself before
//! the clock starts, then a bare fast shutdown: the refused window no pre-stop checkpoint can
//! beat, which is mostly Postgres's own exit (the postmaster frees the shared memory the
//! writes touched before it removes its lock file). Target: the checkpointed
//! refused window <= 0.2x the plain one. Results are printed as `RESULT` lines
//! (see examples/bench.rs). The binary under test is `$COMPUTE_CTL_BIN`, else
//! target/release/compute_ctl, built first when cargo runs us. Every compute_ctl is stopped by
//! pid and waited for; its Postgres gets its parent-death signal if we die.

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
    let runs = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => 3,
        [flag, n] if flag == "--runs" => n.parse().expect("--runs takes a number"),
        other => panic!("usage: bench_stop [--runs N], got {other:?}"),
    };
    let b = Bench::prepare(compute_ctl_binary());
    println!("stop: {runs} runs of each series, 1 GiB dirty, PGDATA {}", b.pgdata.display());
    let series = [("plain", "0", false), ("checkpointed", "10", false), ("clean floor", "0", true)];
    let mut stop: Vec<Vec<f64>> = vec![Vec::new(); series.len()];
    let mut refused: Vec<Vec<f64>> = vec![Vec::new(); series.len()];
    for round in 0..runs {
        for (i, (name, bound, clean)) in series.iter().enumerate() {
            let (s, r, dirty) = b.run(bound, *clean);
            println!(
                "round {round} {name:<13} stop {s:>8.1} ms  refused {r:>8.1} ms  (dirty before SIGTERM: {dirty} MiB)"
            );
            stop[i].push(s);
            refused[i].push(r);
        }
    }
    let (ps, cs, fs) = (median(&stop[0]), median(&stop[1]), median(&stop[2]));
    let (pr, cr, fr) = (median(&refused[0]), median(&refused[1]), median(&refused[2]));
    println!("{:<13} {:>14} {:>17}", "series", "stop median ms", "refused median ms");
    println!("{:<13} {ps:>14.1} {pr:>17.1}", "plain");
    println!("{:<13} {cs:>14.1} {cr:>17.1}", "checkpointed");
    println!("{:<13} {fs:>14.1} {fr:>17.1}", "clean floor");
    println!("refused window with the pre-stop checkpoint: {:.2}x the plain fast shutdown's; target <= 0.2x", cr / pr);
    println!(
        "the clean floor (1 GiB written and checkpointed before the signal) is {:.2}x the plain window; \
         checkpointed is {:+.0} ms from it, plain {:+.0} ms",
        fr / pr,
        cr - fr,
        pr - fr
    );
    println!("RESULT stop/plain_stop {ps:.1} ms");
    println!("RESULT stop/checkpointed_stop {cs:.1} ms baseline=stop/plain_stop");
    println!("RESULT stop/plain_refused {pr:.1} ms");
    println!("RESULT stop/checkpointed_refused {cr:.1} ms baseline=stop/plain_refused target=0.2");
    println!("RESULT stop/clean_floor_refused {fr:.1} ms baseline=stop/plain_refused");
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
        let setting = |n: &str, v: &str| serde_json::json!({"name": n, "value": v, "vartype": "string"});
        let spec = serde_json::json!({
            "format_version": 1.0,
            "tenant_id": "b0554b632bd4d547a63b86c3630317e8",
            "timeline_id": "2414a61ffc94e428f14b5758fe308e13",
            "skip_pg_catalog_updates": true,
            "cluster": { "roles": [], "databases": [], "settings": [
                setting("port", &pg_port.to_string()),
                setting("listen_addresses", "127.0.0.1"),
                setting("unix_socket_directories", root.join("sock").to_str().unwrap()),
                setting("shared_buffers", "2GB"),
                setting("checkpoint_timeout", "1h"),
                setting("max_wal_size", "16GB"),
                setting("wal_compression", "on"),
            ]}
        });
        let spec_path = root.join("spec.json");
        std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        Bench { root, pgdata, spec: spec_path, bin, pg_port, http_port, _ports: [pg_claim, http_claim] }
    }

    /// One run: start, dirty 1 GiB (and checkpoint it here when `clean`: the floor), SIGTERM;
    /// (stop ms, refused ms, dirty MiB).
    fn run(&self, pre_stop_checkpoint: &str, clean: bool) -> (f64, f64, i64) {
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
        let exited = loop {
            if child.0.try_wait().unwrap().is_some() {
                break Instant::now();
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
        (ms(exited - sent), ms(exited.saturating_duration_since(refused_from)), dirty_mib)
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
