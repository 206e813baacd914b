//! `GET /status` under attack: its latency on an idle compute (the baseline), then while 1,100
//! slowloris connections trickle request heads (and reconnect when closed), then while 64
//! clients hammer `GET /database_schema` on a database with a table locked, each giving up
//! after 1 s and asking again. A probe opens a new connection, asks for `/status` and counts as
//! failed unless it gets a 200 within 2 s. Also counted: `pg_dump` children of compute_ctl
//! (their peak, and what is left 5 s after the attack), and user connections refused during
//! the hammering. Target: p99 under 100 ms in both attacks, no failed probe, nothing left.
//!
//! Run: `cargo build --release && cargo run --release --example bench_faults`
//! (needs PostgreSQL 15 in /usr/lib/postgresql/15/bin; as root, Postgres runs as `postgres`).
//! The binary under test is `$COMPUTE_CTL_BIN`, else target/<profile>/compute_ctl. Prints
//! `RESULT` lines (see examples/bench.rs); compute_ctl is stopped and the directory removed.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{pct, post};

const SLOW_CONNECTIONS: usize = 1100;
const SCHEMA_CLIENTS: usize = 64;
const RUN: Duration = Duration::from_secs(10);
const PROBE_EVERY: Duration = Duration::from_millis(20);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn main() {
    let bin = support::built_compute_ctl_binary();
    let dir = support::bench_dir("bench_faults");
    let http_port = free_port(0);
    let pg_port = free_port(http_port + 2);
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec(pg_port, &dir.join("sock")).to_string()).unwrap();
    let mut guard = support::start_running(&bin, &dir, pg_port, &spec_path, http_port);
    let compute_pid = guard.child.id();

    println!("GET /status probes (new connection each, every {PROBE_EVERY:?}, {RUN:?} per run)");
    let idle = probe(http_port, RUN / 2);
    idle.print("idle compute (baseline)");

    let slow = slowloris(http_port);
    slow.print(&format!("{SLOW_CONNECTIONS} slowloris connections"));

    let (schema, peak_dumps, refused_users, answers) = hammer_schema(http_port, pg_port, compute_pid);
    schema.print(&format!("{SCHEMA_CLIENTS} clients on /database_schema, a table locked"));
    println!(
        "/database_schema answers: {} x 200, {} x 429, {} other, {} timed out; peak pg_dump children {peak_dumps}; \
         user connections refused {refused_users}",
        answers[0], answers[1], answers[2], answers[3]
    );
    // What is left once the attack is over.
    let deadline = Instant::now() + Duration::from_secs(5);
    while children_named(compute_pid, "pg_dump") > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left_dumps = children_named(compute_pid, "pg_dump");
    let (code, _) = post(http_port, "/terminate", "");
    assert_eq!(code, 200, "terminate");
    let _ = guard.child.wait();
    let left_postgres = Command::new("pgrep")
        .args(["-f", &format!("postgres -D {}", dir.join("pgdata").display())])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0);
    println!("left behind: {left_dumps} pg_dump, {left_postgres} postgres");

    let ok = slow.p99 < Duration::from_millis(100)
        && schema.p99 < Duration::from_millis(100)
        && slow.failed + schema.failed == 0
        && left_dumps + left_postgres == 0;
    println!(
        "target p99 < 100 ms in both, 0 failed probes, nothing left behind: {}",
        if ok { "MET" } else { "NOT MET" }
    );
    println!("RESULT faults/idle_p99 {:.3} ms", idle.p99.as_secs_f64() * 1e3);
    for (name, st) in [("slowloris", &slow), ("schema", &schema)] {
        println!("RESULT faults/{name}_p50 {:.3} ms", st.p50.as_secs_f64() * 1e3);
        println!("RESULT faults/{name}_p99 {:.3} ms target=100", st.p99.as_secs_f64() * 1e3);
        println!("RESULT faults/{name}_max {:.3} ms", st.max.as_secs_f64() * 1e3);
        println!("RESULT faults/{name}_failed {} count target=0", st.failed);
    }
    println!("RESULT faults/schema_peak_pg_dump {peak_dumps} count");
    println!("RESULT faults/schema_user_refused {refused_users} count target=0");
    println!("RESULT faults/left_behind {} count target=0", left_dumps + left_postgres);
}

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
    probes: usize,
    failed: usize,
}

impl Stats {
    fn print(&self, name: &str) {
        println!(
            "{name}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, {} probes, {} failed",
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3,
            self.probes,
            self.failed
        );
    }
}

/// Probes `/status` for `run`; a failed probe counts with the probe timeout as its latency.
fn probe(port: u16, run: Duration) -> Stats {
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut failed = 0;
    while start.elapsed() < run {
        let t = Instant::now();
        if status_ok(port) {
            lat.push(t.elapsed());
        } else {
            failed += 1;
            lat.push(t.elapsed().max(PROBE_TIMEOUT));
        }
        std::thread::sleep(PROBE_EVERY);
    }
    lat.sort();
    Stats { p50: pct(&lat, 0.5), p99: pct(&lat, 0.99), max: *lat.last().unwrap(), probes: lat.len(), failed }
}

fn status_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), PROBE_TIMEOUT) else { return false };
    let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
    if s.write_all(b"GET /status HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut text = Vec::new();
    let _ = s.read_to_end(&mut text);
    text.starts_with(b"HTTP/1.1 200")
}

/// Opens the slow connections, each with a partial head, and keeps adding a byte to each one
/// every 500 ms from one thread, reopening any the server closed; probes meanwhile.
fn slowloris(port: u16) -> Stats {
    let stop = Arc::new(AtomicBool::new(false));
    let reopened = Arc::new(AtomicUsize::new(0));
    let open = |port: u16| -> Option<TcpStream> {
        let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        (&s).write_all(b"GET /status HTTP/1.1\r\nHost: b\r\nX-Slow: ").ok()?;
        s.set_nonblocking(true).ok()?;
        Some(s)
    };
    let attacker = {
        let (stop, reopened) = (stop.clone(), reopened.clone());
        std::thread::spawn(move || {
            let mut conns: Vec<Option<TcpStream>> = (0..SLOW_CONNECTIONS).map(|_| open(port)).collect();
            while !stop.load(Ordering::Relaxed) {
                for c in conns.iter_mut() {
                    let alive = c.as_ref().is_some_and(|s| {
                        // Anything read (an answer, or the end) means the server is done with it.
                        let closed = match (&*s).read(&mut [0u8; 512]) {
                            Ok(_) => true,
                            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                        };
                        !closed && (&*s).write_all(b"a").is_ok()
                    });
                    if !alive {
                        *c = open(port);
                        reopened.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let stats = probe(port, RUN);
    stop.store(true, Ordering::SeqCst);
    attacker.join().unwrap();
    println!("slowloris: {} connections reopened after the server closed them", reopened.load(Ordering::SeqCst));
    stats
}

/// Locks a table, starts the hammering clients, probes `/status`, samples the `pg_dump`
/// children and tries user connections meanwhile. Returns the probe stats, the peak number of
/// `pg_dump` children, the refused user connections, and the answers (200, 429, other, timeout).
fn hammer_schema(port: u16, pg_port: u16, compute_pid: u32) -> (Stats, usize, usize, [usize; 4]) {
    let connect = move || {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(pg_port)
            .user("cloud_admin")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5))
            .connect(postgres::NoTls)
    };
    let mut locker = connect().expect("connect to lock a table");
    // Two round trips: in one, the CREATE would join the transaction and stay invisible.
    locker.batch_execute("CREATE TABLE IF NOT EXISTS bench_locked (x int)").unwrap();
    locker.batch_execute("BEGIN; LOCK TABLE bench_locked").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
    let clients: Vec<_> = (0..SCHEMA_CLIENTS)
        .map(|_| {
            let (stop, answers) = (stop.clone(), answers.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { continue };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let _ = s.write_all(b"GET /database_schema?database=postgres HTTP/1.1\r\nHost: b\r\n\r\n");
                    let mut head = [0u8; 12];
                    let i = match s.read_exact(&mut head) {
                        Ok(()) if head.starts_with(b"HTTP/1.1 200") => 0,
                        Ok(()) if head.starts_with(b"HTTP/1.1 429") => 1,
                        Ok(()) => 2,
                        Err(_) => 3,
                    };
                    answers[i].fetch_add(1, Ordering::Relaxed);
                    if i == 1 {
                        // A polite client backs off a little after a 429.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        })
        .collect();
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut peak, mut refused) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(children_named(compute_pid, "pg_dump"));
                match connect() {
                    Ok(mut c) => {
                        if c.simple_query("SELECT 1").is_err() {
                            refused += 1;
                        }
                    }
                    Err(_) => refused += 1,
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (peak, refused)
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let stats = probe(port, RUN);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let (peak, refused) = sampler.join().unwrap();
    locker.batch_execute("ROLLBACK").unwrap();
    let a = [0, 1, 2, 3].map(|i| answers[i].load(Ordering::SeqCst));
    (stats, peak, refused, a)
}

/// Children of `pid` whose command name is `name`.
fn children_named(pid: u32, name: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some((comm, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") ")) else { continue };
        let ppid = rest.split_whitespace().nth(1).and_then(|v| v.parse::<u32>().ok());
        if ppid == Some(pid) && comm == name {
            n += 1;
        }
    }
    n
}

fn spec(pg_port: u16, sock: &Path) -> serde_json::Value {
    serde_json::json!({
        "format_version": 1.0,
        "tenant_id": "b0554b632bd4d547a63b86c3630317e8",
        "timeline_id": "2414a61ffc94e428f14b5758fe308e13",
        "cluster": {
            "roles": [], "databases": [],
            "settings": [
                {"name": "port", "value": pg_port.to_string(), "vartype": "integer"},
                {"name": "listen_addresses", "value": "127.0.0.1", "vartype": "string"},
                {"name": "unix_socket_directories", "value": sock.to_str().unwrap(), "vartype": "string"},
                {"name": "max_connections", "value": "100", "vartype": "integer"},
                {"name": "fsync", "value": "off", "vartype": "bool"}
            ]
        }
    })
}

/// A port pair below the ephemeral range, checked by binding (a benchmark runs alone), from
/// `from` on (0: a place chosen by process id).
fn free_port(from: u16) -> u16 {
    let start = if from == 0 { std::process::id() as u16 % 6000 } else { from.saturating_sub(20000) / 2 };
    (0..6000u16)
        .map(|i| 20000 + 2 * ((start + i) % 6000))
        .find(|&p| {
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
        })
        .expect("a free port pair")
}
