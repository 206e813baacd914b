//! Overhead of `drop_subscriptions_before_start` on a branch start.
//!
//! For branches whose parent subscribes in 1, 5 and 20 databases (one subscription each, to a
//! real publisher on loopback), it times compute_ctl from process start to `/status` saying
//! `running` with the flag on (the drop happens), and the same branch after the drop was
//! recorded with the flag off, alternating, median of 15 each, and prints the overhead. It
//! times the floor of any such drop, one cold connection to each database right after a
//! start (`DROP SUBSCRIPTION` works only in its own database), and prints what compute_ctl
//! adds above it (`above`, which should not grow with the databases). It also times the
//! alternatives the guard was chosen against: a no-op single-user pass and a fast restart.
//!
//! Run: `cargo run --release --example bench_subscriptions [sizes...]` (as root or as a user
//! that can run Postgres; PostgreSQL 15 in /usr/lib/postgresql/15/bin). Output lines starting
//! with `RESULT` are collected by `examples/bench.rs`: `subscriptions/overhead_<n>db` (target
//! 100 ms), the flag-on median against the flag-off one, and the alternatives. The binary
//! under test is `$COMPUTE_CTL_BIN`, else target/<profile>/compute_ctl. `BENCH_APPLY=1`: the
//! spec lists the databases and the catalog apply runs in both starts (keys get `_apply`);
//! `BENCH_FSYNC=on`: the branches run with fsync; `BENCH_KEEP=1`: the directories and logs stay.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{PGBIN_DIR, chmod, compute_ctl_binary, free_port, median, ms, pg_cmd};

const RUNS: usize = 15;

fn main() {
    let root = std::env::temp_dir().join(format!("cc-bench-subs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    chmod(&root, 0o755);
    let exe = compute_ctl_binary();
    let template = initdb(&root.join("template"));
    let publisher = Plain::start(
        &root,
        "publisher",
        &template,
        41000,
        &["wal_level=logical", "max_wal_senders=100", "max_replication_slots=100"],
    );

    let mode = if with_apply() { "catalog apply of the databases" } else { "skip_pg_catalog_updates" };
    println!("drop_subscriptions_before_start overhead (median of {RUNS} starts, {mode}, local mode)");
    let head = ["databases", "flag on ms", "flag off ms", "overhead ms", "floor ms", "above ms"];
    println!("{:>10} {:>14} {:>14} {:>12} {:>12} {:>12}", head[0], head[1], head[2], head[3], head[4], head[5]);
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1, 5, 20] } else { sizes };
    for n in sizes {
        let dbs: Vec<String> = (0..n).map(|d| format!("b{n}_{d}")).collect();
        for db in &dbs {
            publisher.sql("postgres", &format!("CREATE DATABASE {db}"));
            publisher.sql(
                db,
                "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t VALUES (1)",
            );
        }
        let parent = make_parent(&root, &template, &publisher, &dbs, free_port());
        let port = free_port();
        // With the apply, the parent had its catalog applied already (one compute_ctl start,
        // flag off), as a real parent has: otherwise the flag-on starts would also do the
        // first apply's work, which the flag-off ones (copies of a branch) no longer do.
        let parent = if with_apply() {
            start_branch(&exe, &root, &parent, port, &format!("applied{n}"), false).1
        } else {
            parent
        };
        // A branch whose drop was recorded: the baseline start, flag off.
        let (_, done) = start_branch(&exe, &root, &parent, port, &format!("done{n}"), true);
        // On, off and the floor alternate, so a slow spell of this shared machine weighs on all.
        let (mut on, mut off, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..RUNS {
            on.push(start_branch(&exe, &root, &parent, port, &format!("on{n}-{r}"), true).0);
            off.push(start_branch(&exe, &root, &done, port, &format!("off{n}-{r}"), false).0);
            floor.push(visit_floor(&root, &done, port, &dbs, &format!("floor{n}-{r}")));
        }
        let (m_on, m_off, m_floor) = (median(&on), median(&off), median(&floor));
        let overhead = m_on - m_off;
        println!("{n:>10} {m_on:>14.1} {m_off:>14.1} {overhead:>12.1} {m_floor:>12.1} {:>12.1}", overhead - m_floor);
        // The target: under 100 ms whatever the number of databases.
        let k = if with_apply() { "_apply" } else { "" };
        println!("RESULT subscriptions/overhead{k}_{n}db {overhead:.1} ms target=100");
        println!("RESULT subscriptions/flag_off{k}_{n}db {m_off:.1} ms");
        println!("RESULT subscriptions/flag_on{k}_{n}db {m_on:.1} ms baseline=subscriptions/flag_off{k}_{n}db");
        println!("RESULT subscriptions/visit_floor{k}_{n}db {m_floor:.1} ms");
        // What compute_ctl adds beyond visiting each database once: it should not grow.
        println!("RESULT subscriptions/above_floor{k}_{n}db {:.1} ms", overhead - m_floor);
    }

    // The alternatives: a no-op single-user pass, and a fast restart (what
    // max_logical_replication_workers = 0 would cost to undo).
    let pgdata = copy_dir(&template, &root.join("alt"));
    let single: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            let mut c = pg_cmd("postgres");
            c.args(["--single", "-D"])
                .arg(&pgdata)
                .arg("postgres")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = c.spawn().unwrap();
            child.stdin.take().unwrap().write_all(b"SELECT 1\n").unwrap();
            assert!(child.wait().unwrap().success());
            ms(t.elapsed())
        })
        .collect();
    let plain = Plain::start(&root, "restart", &template, free_port(), &[]);
    let restart: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            let st = pg_cmd("pg_ctl")
                .args(["restart", "-m", "fast", "-w", "-s", "-D"])
                .arg(&plain.pgdata)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
            ms(t.elapsed())
        })
        .collect();
    let _ = pg_cmd("pg_ctl").args(["stop", "-m", "fast", "-s", "-D"]).arg(&plain.pgdata).status();
    println!(
        "guard alternatives: no-op single-user pass {:.1} ms, fast restart (pg_ctl restart -w) {:.1} ms",
        median(&single),
        median(&restart)
    );
    println!("RESULT subscriptions/single_user_pass {:.1} ms", median(&single));
    println!("RESULT subscriptions/fast_restart {:.1} ms", median(&restart));
    drop(publisher);
    if std::env::var_os("BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        println!("kept {}", root.display());
    }
}

fn initdb(dir: &Path) -> PathBuf {
    support::pg_data_dir(dir);
    let out = pg_cmd("initdb")
        .arg("-D")
        .arg(dir)
        .args(["-U", "cloud_admin", "-E", "UTF8", "--locale=C.UTF-8", "--auth=trust", "--no-sync"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.to_path_buf()
}

fn copy_dir(from: &Path, to: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(to);
    assert!(Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
    let _ = std::fs::remove_file(to.join("postmaster.pid"));
    to.to_path_buf()
}

/// A plain Postgres server (publisher, parent, restart baseline).
struct Plain {
    pgdata: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Plain {
    fn start(root: &Path, name: &str, template: &Path, port: u16, settings: &[&str]) -> Plain {
        let pgdata = copy_dir(template, &root.join(name));
        // The copy's write-back must not run during what is timed on this server.
        assert!(Command::new("sync").status().unwrap().success());
        let mut c = pg_cmd("postgres");
        c.arg("-D").arg(&pgdata);
        for s in ["listen_addresses=127.0.0.1", "unix_socket_directories=", "fsync=off", "max_connections=200"]
            .iter()
            .chain(settings)
        {
            c.arg("-c").arg(s);
        }
        c.arg("-c").arg(format!("port={port}"));
        let child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let p = Plain { pgdata, port, child: Some(child) };
        wait_ready(&p.pgdata);
        p
    }

    /// Runs `sql` through psql in `db` (stopping at the first error); returns its output.
    fn psql(&self, db: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let out = Command::new(format!("{PGBIN_DIR}/psql"))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "cloud_admin", "-p", &port])
            .args(["-d", db, "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn sql(&self, db: &str, sql: &str) {
        self.psql(db, sql);
    }

    fn query(&self, db: &str, sql: &str) -> String {
        self.psql(db, sql)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-INT").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_ready(pgdata: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::fs::read_to_string(pgdata.join("postmaster.pid"))
            .is_ok_and(|t| t.lines().last().map(str::trim) == Some("ready"))
        {
            return;
        }
        assert!(Instant::now() < deadline, "postgres in {} not ready", pgdata.display());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A stopped parent whose databases each subscribe to the publisher, caught up.
fn make_parent(root: &Path, template: &Path, publisher: &Plain, dbs: &[String], port: u16) -> PathBuf {
    let name = format!("parent{}", dbs.len());
    let mut p = Plain::start(
        root,
        &name,
        template,
        port,
        &["max_logical_replication_workers=30", "max_worker_processes=40", "max_replication_slots=50"],
    );
    for db in dbs {
        p.sql("postgres", &format!("CREATE DATABASE {db}"));
        p.sql(db, "CREATE TABLE t (id int PRIMARY KEY)");
        p.sql(db, &format!("CREATE SUBSCRIPTION sub_{db} CONNECTION 'host=127.0.0.1 port={} user=cloud_admin dbname={db}' PUBLICATION pub", publisher.port));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for db in dbs {
        while p.query(db, "SELECT count(*) FROM t") != "1" {
            assert!(Instant::now() < deadline, "parent did not sync {db}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    p.stop();
    std::fs::write(p.pgdata.join("bench_databases"), dbs.join("\n")).unwrap();
    p.pgdata.clone()
}

/// The floor of any drop that visits each database: right after a plain start of a copy of
/// the recorded branch, one connection to each of `dbs` (as many at once as the drop opens),
/// doing nothing. The first backend in a database after a start rebuilds its relation cache,
/// so this is the unavoidable part of the per-database cost.
fn visit_floor(root: &Path, done: &Path, port: u16, dbs: &[String], name: &str) -> f64 {
    let mut plain = Plain::start(root, name, done, port, &[]);
    let parallel = compute_ctl::postgres::subscriptions::drop_parallelism();
    let queue = std::sync::Mutex::new(dbs.iter());
    let t = Instant::now();
    let clients: Vec<postgres::Client> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..parallel.min(dbs.len()))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    while let Some(db) = queue.lock().unwrap().next() {
                        let url = format!("host=127.0.0.1 port={port} user=cloud_admin dbname={db}");
                        mine.push(postgres::Client::connect(&url, postgres::NoTls).unwrap());
                    }
                    mine
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    let took = ms(t.elapsed());
    drop(clients);
    plain.stop();
    let _ = std::fs::remove_dir_all(&plain.pgdata);
    took
}

/// Copies `from` to a fresh branch PGDATA, starts compute_ctl on it (new timeline, flag as
/// given), returns the time from spawn to `running` and the PGDATA (stopped again).
fn start_branch(exe: &Path, root: &Path, from: &Path, port: u16, name: &str, flag: bool) -> (f64, PathBuf) {
    let pgdata = copy_dir(from, &root.join(name));
    // The copy's write-back (about 8 MB per database) must not run during the timed start.
    assert!(Command::new("sync").status().unwrap().success());
    let http = port + 1;
    let spec = serde_json::json!({
        "format_version": 1.0,
        "tenant_id": "b0554b632bd4d547a63b86c3630317e8",
        "timeline_id": format!("{:032x}", name.bytes().fold(7u128, |h, b| h.wrapping_mul(131).wrapping_add(u128::from(b)))),
        "skip_pg_catalog_updates": !with_apply(),
        "drop_subscriptions_before_start": flag,
        "cluster": {"roles": [], "databases": spec_databases(from), "settings": [
            {"name": "port", "value": port.to_string(), "vartype": "integer"},
            {"name": "listen_addresses", "value": "127.0.0.1", "vartype": "string"},
            {"name": "unix_socket_directories", "value": "", "vartype": "string"},
            {"name": "max_logical_replication_workers", "value": "30", "vartype": "integer"},
            {"name": "max_worker_processes", "value": "40", "vartype": "integer"},
            {"name": "max_replication_slots", "value": "50", "vartype": "integer"},
            {"name": "fsync", "value": fsync(), "vartype": "bool"}
        ]}
    });
    let t = Instant::now();
    let mut child = Command::new(exe)
        .args(["-D", pgdata.to_str().unwrap(), "-C", &format!("postgresql://cloud_admin@127.0.0.1:{port}/postgres")])
        .args([
            "-b",
            &format!("{PGBIN_DIR}/postgres"),
            "--http-port",
            &http.to_string(),
            "--http-bind",
            "127.0.0.1",
            "--exit-delay",
            "0",
        ])
        .args(["-s", &spec.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join(format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut poller = Poller { port: http, conn: None };
    let took = loop {
        if let Some(body) = poller.status()
            && body.contains("\"status\":\"running\"")
        {
            break ms(t.elapsed());
        }
        if let Some(st) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(root.join(format!("{name}.log"))).unwrap_or_default();
            panic!("compute_ctl exited ({st}) before running:\n{log}");
        }
        assert!(Instant::now() < deadline, "branch {name} not running");
        std::thread::sleep(Duration::from_millis(1));
    };
    if flag && let Some(m) = get(http, "/metrics.json") {
        let body = m.split("\r\n\r\n").nth(1).unwrap_or("{}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        eprintln!("  {name}: {took:.1} ms to running, drop_subscriptions_ms {}", v["drop_subscriptions_ms"]);
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
    (took, pgdata)
}

/// Polls `/status` over one keep-alive connection, so the harness's own CPU (a new TCP
/// connection and server thread wake-up every millisecond) weighs less on a 2-core machine.
struct Poller {
    port: u16,
    conn: Option<std::io::BufReader<std::net::TcpStream>>,
}

impl Poller {
    fn status(&mut self) -> Option<String> {
        let result = self.try_status();
        if result.is_none() {
            self.conn = None;
        }
        result
    }

    fn try_status(&mut self) -> Option<String> {
        use std::io::BufRead;
        if self.conn.is_none() {
            self.conn = Some(std::io::BufReader::new(std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?));
        }
        let conn = self.conn.as_mut()?;
        conn.get_mut().write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let mut length = 0;
        loop {
            let mut line = String::new();
            if conn.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().ok()?;
            }
        }
        let mut body = vec![0; length];
        conn.read_exact(&mut body).ok()?;
        String::from_utf8(body).ok()
    }
}

/// With `BENCH_APPLY=1` the branches' spec lists their databases and the catalog apply runs
/// (as on a branch's first start), so both starts connect to every database; by default
/// `skip_pg_catalog_updates` is set and the flag-off start connects to none.
fn with_apply() -> bool {
    std::env::var_os("BENCH_APPLY").is_some_and(|v| v == "1")
}

/// The spec's databases when the apply runs: those of the parent (named after its size).
fn spec_databases(parent: &Path) -> serde_json::Value {
    if !with_apply() {
        return serde_json::json!([]);
    }
    let mut names: Vec<String> = std::fs::read_to_string(parent.join("bench_databases"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    names.sort();
    serde_json::Value::Array(
        names.into_iter().map(|n| serde_json::json!({"name": n, "owner": "cloud_admin"})).collect(),
    )
}

/// The branches' `fsync`: off unless `BENCH_FSYNC=on` (then WAL flushes and the single-user
/// pass's checkpoint reach the disk, as in production).
fn fsync() -> String {
    std::env::var("BENCH_FSYNC").unwrap_or_else(|_| "off".into())
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}
