//! Ingest of a large basebackup: compute_ctl's streamed unpack (through the stand-in
//! pageserver of the tests, over a real TCP connection) against `tar -xf` of the same file.
//!
//! ```text
//! cargo run --release --example bench_basebackup [-- --scale 60 --runs 5]
//! ```
//! The first run makes `/tmp/compute_ctl-bench/base-s<scale>.tar` (`pgbench -i -s <scale>`
//! on a fresh cluster, then `pg_basebackup -Ft -X fetch`, about 1 GiB at scale 60) and keeps
//! it for later runs. Each ingest runs in a child process of this program (`--ingest`), so
//! its peak RSS (VmHWM) is compute_ctl's alone; the stand-in serves from this process.
//! Prints the median time of each side, their ratio (target: within 1.2x) and the peak RSS
//! (target: under 32 MiB).
//!
//! The ingest is the library's (what compute_ctl runs), in a child of this program, so
//! `$COMPUTE_CTL_BIN` does not apply. Results are printed as `RESULT` lines (see
//! examples/bench.rs); a panic (nothing measured) exits non-zero. The unpacked trees are
//! removed, also on a panic; the fixture is kept as the cache.

#[path = "../tests/integration/support/pageserver.rs"]
mod pageserver;

#[path = "support/mod.rs"]
mod support;

use compute_ctl::postgres::basebackup::{Request, fetch};
use compute_ctl::postgres::pgdata;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{PGBIN_DIR, as_postgres, median, ms};

const TENANT: &str = "b0554b632bd4d547a63b86c3630317e8";
const TIMELINE: &str = "2414a61ffc94e428f14b5758fe308e13";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--ingest") {
        ingest(&args[2], Path::new(&args[3]));
        return;
    }
    let opt = |name: &str, default: u32| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (scale, runs) = (opt("--scale", 60), opt("--runs", 5));
    let work = PathBuf::from("/tmp/compute_ctl-bench");
    std::fs::create_dir_all(&work).unwrap();
    let tar = work.join(format!("base-s{scale}.tar"));
    if !tar.exists() {
        make_fixture(&work, scale, &tar);
    }
    let size = std::fs::metadata(&tar).unwrap().len();
    println!("basebackup: {} ({:.0} MiB), {runs} runs each", tar.display(), size as f64 / 1048576.0);

    let ps = pageserver::StandIn::start(false);
    ps.add_tar(TENANT, TIMELINE, &tar);
    let ours_dir = work.join("ours");
    let tar_dir = work.join("tar");
    let _cleanup = RemoveDirs(vec![ours_dir.clone(), tar_dir.clone()]);
    let (mut ours, mut theirs, mut peak_kib) = (Vec::new(), Vec::new(), 0u64);
    for run in 0..runs {
        for d in [&ours_dir, &tar_dir] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d).unwrap();
        }
        flush();
        let t = Instant::now();
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--ingest", &ps.connstr(), ours_dir.to_str().unwrap()])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let ours_time = t.elapsed();
        assert!(out.status.success(), "ingest failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let kib: u64 = text.trim().parse().unwrap_or_else(|_| panic!("ingest printed {text:?}"));
        peak_kib = peak_kib.max(kib);
        flush();
        let t = Instant::now();
        let st = Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&tar_dir).status().unwrap();
        let tar_time = t.elapsed();
        assert!(st.success(), "tar -xf failed");
        println!(
            "run {}: compute_ctl {:7.0} ms   tar -xf {:7.0} ms   peak RSS {:.1} MiB",
            run + 1,
            ms(ours_time),
            ms(tar_time),
            kib as f64 / 1024.0
        );
        ours.push(ms(ours_time));
        theirs.push(ms(tar_time));
    }
    let (mo, mt) = (median(&ours), median(&theirs));
    println!(
        "median: compute_ctl {:.0} ms ({:.0} MiB/s), tar -xf {:.0} ms; ratio {:.2}x (target <= 1.2x)",
        mo,
        size as f64 / 1048576.0 / (mo / 1000.0),
        mt,
        mo / mt
    );
    println!("peak RSS of the ingest: {:.1} MiB (target < 32 MiB)", peak_kib as f64 / 1024.0);
    println!("RESULT basebackup/tar_xf {:.0} ms", mt);
    println!("RESULT basebackup/ingest {:.0} ms baseline=basebackup/tar_xf target=1.2", mo);
    println!("RESULT basebackup/ingest_throughput {:.0} MiB_per_s", size as f64 / 1048576.0 / (mo / 1000.0));
    println!("RESULT basebackup/peak_rss {:.1} MiB target=32", peak_kib as f64 / 1024.0);
}

/// Removes the unpacked trees when the benchmark ends, also when a panic unwinds.
struct RemoveDirs(Vec<PathBuf>);

impl Drop for RemoveDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The child: what compute_ctl does for a basebackup (fetch and unpack, then give the tree
/// to the postgres user); prints its peak RSS in KiB.
fn ingest(connstr: &str, dir: &Path) {
    let req = Request {
        connstr,
        token: None,
        tenant: TENANT.parse().unwrap(),
        timeline: TIMELINE.parse().unwrap(),
        lsn: None,
        replica: false,
    };
    fetch(&req, dir, &std::sync::atomic::AtomicBool::new(false)).unwrap_or_else(|e| panic!("{e}"));
    if let Ok(u) = pgdata::lookup_user("postgres") {
        pgdata::chown_tree(dir, u).unwrap();
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap();
    println!("{}", hwm.trim().trim_end_matches("kB").trim());
}

/// Writes back dirty pages so that one run's writeback does not slow the next one down.
fn flush() {
    let _ = Command::new("sync").status();
}

/// initdb, `pgbench -i -s scale`, `pg_basebackup -Ft -X fetch` into `tar`.
fn make_fixture(work: &Path, scale: u32, tar: &Path) {
    println!("making the fixture (pgbench -i -s {scale}; this takes a few minutes)");
    let src = work.join("src");
    let out = work.join("backup");
    for d in [&src, &out] {
        let _ = std::fs::remove_dir_all(d);
    }
    std::fs::create_dir_all(&src).unwrap();
    if let Ok(u) = pgdata::lookup_user("postgres") {
        std::os::unix::fs::chown(&src, Some(u.uid), Some(u.gid)).unwrap();
        std::os::unix::fs::chown(work, Some(u.uid), Some(u.gid)).unwrap();
    }
    let run = |cmd: &mut Command| {
        let st = cmd.status().unwrap();
        assert!(st.success(), "{cmd:?} failed");
    };
    run(as_postgres(Command::new(format!("{PGBIN_DIR}/initdb")).arg("-D").arg(&src).args([
        "-U",
        "cloud_admin",
        "--auth=trust",
        "--no-sync",
    ]))
    .stdout(Stdio::null()));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let mut pg = as_postgres(Command::new(format!("{PGBIN_DIR}/postgres")).arg("-D").arg(&src).args([
        "-p",
        &port,
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "unix_socket_directories=",
        "-c",
        "fsync=off",
        "-c",
        "max_wal_size=4GB",
    ]))
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Command::new(format!("{PGBIN_DIR}/pg_isready"))
        .args(["-h", "127.0.0.1", "-p", &port])
        .status()
        .is_ok_and(|s| !s.success())
    {
        assert!(Instant::now() < deadline, "postgres did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let conn = ["-h", "127.0.0.1", "-p", &port, "-U", "cloud_admin"];
    run(Command::new(format!("{PGBIN_DIR}/pgbench")).args(conn).args([
        "-i",
        "-q",
        "-s",
        &scale.to_string(),
        "postgres",
    ]));
    run(Command::new(format!("{PGBIN_DIR}/pg_basebackup")).args(conn).arg("-D").arg(&out).args([
        "-Ft",
        "-X",
        "fetch",
        "-c",
        "fast",
        "--no-manifest",
        "--no-sync",
    ]));
    let _ = Command::new("kill").args(["-INT", &pg.id().to_string()]).status();
    pg.wait().unwrap();
    std::fs::rename(out.join("base.tar"), tar).unwrap();
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(&out);
}
