//! `GET /status` latency under 64 concurrent keep-alive clients, first on an idle compute (the
//! baseline), then while the compute is busy applying its catalog: live reconfigurations
//! (`POST /configure`) back to back, each with a spec of 300 roles and 20 databases. The first
//! one creates them all (CREATE ROLE, CREATE DATABASE); each later one changes every role's
//! password and every database's owner (ALTER ROLE, ALTER DATABASE ... OWNER TO), so a real
//! catalog apply is running through the whole measurement. Prints requests per second, p50, p99
//! and max for both runs, the ratios, and whether the target (p99 under 5 ms under load, zero
//! errors) is met, and the figures as `RESULT` lines (see examples/bench.rs).
//!
//! Run: `cargo build --release && cargo run --release --example bench_http`
//! (needs PostgreSQL 15 in /usr/lib/postgresql/15/bin; as root, Postgres runs as `postgres`).
//! The binary under test is `$COMPUTE_CTL_BIN`, else target/<profile>/compute_ctl. A panic
//! (nothing measured) exits non-zero; compute_ctl is stopped and the directory removed.

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{chmod, free_port};

const CLIENTS: usize = 64;
const RUN: Duration = Duration::from_secs(5);
const PGBIN: &str = "/usr/lib/postgresql/15/bin/postgres";
/// The catalog each busy-phase `/configure` applies.
const ROLES: usize = 300;
const DBS: usize = 20;

fn main() {
    let bin = match std::env::var_os("COMPUTE_CTL_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("the example knows its path");
            exe.parent().and_then(Path::parent).map(|d| d.join("compute_ctl")).expect("target/<profile>/examples/..")
        }
    };
    assert!(bin.exists(), "{} is missing: run `cargo build --release` first", bin.display());

    let dir = std::env::temp_dir().join(format!("bench_http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sock")).unwrap();
    chmod(&dir, 0o755);
    chmod(&dir.join("sock"), 0o777);
    let http_port = free_port();
    let pg_port = loop {
        let p = free_port();
        if p != http_port && p != http_port + 1 && p + 1 != http_port {
            break p;
        }
    };
    let initial = spec(pg_port, &dir.join("sock"), None);
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, initial.to_string()).unwrap();
    let log = std::fs::File::create(dir.join("compute.log")).unwrap();
    let child = Command::new(&bin)
        .args(["-D", dir.join("pgdata").to_str().unwrap(), "-C"])
        .arg(format!("postgresql://cloud_admin@127.0.0.1:{pg_port}/postgres"))
        .args(["-b", PGBIN, "--http-bind", "127.0.0.1", "--exit-delay", "0", "-S", spec_path.to_str().unwrap()])
        .arg("--http-port")
        .arg(http_port.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut guard = Guard { child, dir: dir.clone() };
    wait_running(http_port, &mut guard.child, &dir);

    println!("GET /status, {CLIENTS} keep-alive clients, {} s per run", RUN.as_secs());
    let idle = measure(http_port);
    print("idle compute (baseline)", &idle);

    // The load: catalog applies back to back, each through a live reconfiguration.
    let stop = Arc::new(AtomicBool::new(false));
    let reconfigures = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, count) = (stop.clone(), reconfigures.clone());
        let sock = dir.join("sock");
        std::thread::spawn(move || {
            let mut n = 0usize;
            let mut took = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let body = serde_json::json!({
                    "spec": spec(pg_port, &sock, Some(n)),
                    "compute_ctl_config": {"jwks": {"keys": []}}
                });
                let t = Instant::now();
                let (code, text) = post(http_port, "/configure", &body.to_string());
                took.push(t.elapsed().as_secs_f64() * 1e3);
                assert_eq!(code, 200, "reconfiguration {n} failed: {text}");
                n += 1;
                count.fetch_add(1, Ordering::Relaxed);
            }
            took
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let busy = measure(http_port);
    stop.store(true, Ordering::SeqCst);
    let took = load.join().expect("the reconfiguration thread failed");
    let applies = reconfigures.load(Ordering::SeqCst);
    print(&format!("busy compute ({applies} catalog applies of {ROLES} roles, {DBS} databases)"), &busy);
    assert!(applies > 0, "no catalog apply finished during the measurement");
    let took: Vec<String> = took.iter().map(|ms| format!("{ms:.0} ms")).collect();
    println!(
        "each /configure took (the first creates the catalog, the last may end after the run): {}",
        took.join(", ")
    );
    println!(
        "ratios busy/idle: rps {:.2}, p50 {:.2}, p99 {:.2}",
        busy.rps / idle.rps,
        busy.p50.as_secs_f64() / idle.p50.as_secs_f64(),
        busy.p99.as_secs_f64() / idle.p99.as_secs_f64()
    );
    let ok = busy.p99 < Duration::from_millis(5) && busy.errors == 0 && idle.errors == 0;
    println!("target p99 < 5 ms under load, zero errors: {}", if ok { "MET" } else { "NOT MET" });
    for (name, st) in [("idle", &idle), ("busy", &busy)] {
        let base = |k: &str| if name == "busy" { format!(" baseline=http/idle_{k}") } else { String::new() };
        println!("RESULT http/{name}_rps {:.0} req_per_s{}", st.rps, base("rps"));
        println!("RESULT http/{name}_p50 {:.3} ms{}", st.p50.as_secs_f64() * 1e3, base("p50"));
        let target = if name == "busy" { " target=5" } else { "" };
        println!("RESULT http/{name}_p99 {:.3} ms{target}", st.p99.as_secs_f64() * 1e3);
        println!("RESULT http/{name}_max {:.3} ms", st.max.as_secs_f64() * 1e3);
        println!("RESULT http/{name}_errors {} count target=0", st.errors);
    }
    println!("RESULT http/busy_catalog_applies {applies} count");
    let (code, _) = post(http_port, "/terminate", "");
    assert_eq!(code, 200);
    let _ = guard.child.wait();
}

struct Stats {
    rps: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    requests: usize,
    errors: u64,
}

fn measure(port: u16) -> Stats {
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let errors = errors.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(100_000);
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                while start.elapsed() < RUN {
                    let t = Instant::now();
                    let ok = s.write_all(b"GET /status HTTP/1.1\r\nHost: b\r\n\r\n").is_ok() && read_ok(&mut r);
                    lat.push(t.elapsed());
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                        s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                        s.set_nodelay(true).unwrap();
                        r = BufReader::new(s.try_clone().unwrap());
                    }
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let elapsed = start.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Stats {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: *all.last().unwrap(),
        requests: all.len(),
        errors: errors.load(Ordering::SeqCst),
    }
}

/// Reads one response; true when it is a 200 with a body.
fn read_ok(r: &mut BufReader<TcpStream>) -> bool {
    let mut line = String::new();
    if r.read_line(&mut line).is_err() || !line.starts_with("HTTP/1.1 200") {
        return false;
    }
    let mut len = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line).is_err() || line.is_empty() {
            return false;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).is_ok() && len > 0
}

fn print(name: &str, s: &Stats) {
    println!(
        "{name}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, {} requests, {} errors",
        s.rps,
        s.p50.as_secs_f64() * 1e3,
        s.p99.as_secs_f64() * 1e3,
        s.max.as_secs_f64() * 1e3,
        s.requests,
        s.errors
    );
}

fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text)
}

/// The compute's spec; `round` Some(n) adds the busy phase's catalog, whose passwords and
/// database owners change with every round.
fn spec(pg_port: u16, sock: &Path, round: Option<usize>) -> serde_json::Value {
    let (roles, dbs): (Vec<serde_json::Value>, Vec<serde_json::Value>) = match round {
        None => (Vec::new(), Vec::new()),
        Some(n) => (
            (0..ROLES)
                .map(|i| serde_json::json!({"name": format!("role_{i}"), "encrypted_password": format!("{:032x}", i * 1_000_000 + n)}))
                .collect(),
            (0..DBS)
                .map(|i| serde_json::json!({"name": format!("db_{i}"), "owner": format!("role_{}", i * 10 + n % 2)}))
                .collect(),
        ),
    };
    serde_json::json!({
        "format_version": 1.0,
        "tenant_id": "b0554b632bd4d547a63b86c3630317e8",
        "timeline_id": "2414a61ffc94e428f14b5758fe308e13",
        "cluster": {
            "roles": roles, "databases": dbs,
            "settings": [
                {"name": "port", "value": pg_port.to_string(), "vartype": "integer"},
                {"name": "listen_addresses", "value": "127.0.0.1", "vartype": "string"},
                {"name": "unix_socket_directories", "value": sock.to_str().unwrap(), "vartype": "string"},
                {"name": "fsync", "value": "off", "vartype": "bool"}
            ]
        }
    })
}

fn wait_running(port: u16, child: &mut Child, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /status HTTP/1.1\r\nConnection: close\r\n\r\n");
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if text.contains("\"status\":\"running\"") {
                return;
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("compute_ctl exited ({st}); see {}", dir.join("compute.log").display());
        }
        assert!(Instant::now() < deadline, "compute not running after 60 s; see {}", dir.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops compute_ctl (and so Postgres) and removes the directory, even on a panic.
struct Guard {
    child: Child,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
