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

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{free_port, pct, post, read_200};

const CLIENTS: usize = 64;
const RUN: Duration = Duration::from_secs(5);
/// The catalog each busy-phase `/configure` applies.
const ROLES: usize = 300;
const DBS: usize = 20;

fn main() {
    let bin = support::built_compute_ctl_binary();

    let dir = support::bench_dir("bench_http");
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
    let mut guard = support::start_running(&bin, &dir, pg_port, &spec_path, http_port);

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

fn measure(port: u16) -> Stats {
    let start = Instant::now();
    let (per_client, errors) = support::run_clients(CLIENTS, move |errors| {
        let mut lat = Vec::with_capacity(100_000);
        let mut s = support::connect(port, Duration::from_secs(5));
        s.set_nodelay(true).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        while start.elapsed() < RUN {
            let t = Instant::now();
            let ok = s.write_all(b"GET /status HTTP/1.1\r\nHost: b\r\n\r\n").is_ok()
                && read_200(&mut r).is_some_and(|len| len > 0);
            lat.push(t.elapsed());
            if !ok {
                errors.fetch_add(1, Ordering::Relaxed);
                s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_nodelay(true).unwrap();
                r = BufReader::new(s.try_clone().unwrap());
            }
        }
        lat
    });
    let mut all: Vec<Duration> = per_client.into_iter().flatten().collect();
    let elapsed = start.elapsed();
    all.sort();
    Stats {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(&all, 0.50),
        p99: pct(&all, 0.99),
        max: *all.last().unwrap(),
        requests: all.len(),
        errors,
    }
}

struct Stats {
    rps: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    requests: usize,
    errors: u64,
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
