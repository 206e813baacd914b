//! Authorization costs, on a compute in `empty` (no Postgres needed) whose control-plane
//! stand-in sends one Ed25519 key:
//!
//! 1. Memory under a flood of unauthorized uploads: 64 connections each send the head of a
//!    50 MB `POST /configure` with a bad token and then stream the body without waiting. The
//!    answer comes from the head, so compute_ctl's peak RSS (`VmHWM`) must stay under 16 MiB;
//!    the baseline is its RSS before the flood.
//! 2. `GET /status` under 64 keep-alive clients, with a valid JWT against no authorization at
//!    all (a second compute without keys), runs alternated: req/s and p99 side by side. Target:
//!    p99 within 1 ms of the unauthenticated run (verified tokens are cached by their bytes).
//!    Also the cost of one signature check without the cache, measured in this process.
//!
//! Run: `cargo build --release && cargo run --release --example bench_auth`. The binary under
//! test is `$COMPUTE_CTL_BIN`, else target/<profile>/compute_ctl. Prints `RESULT` lines (see
//! examples/bench.rs); compute_ctl is stopped and its directory removed, also on a panic.

#[path = "support/mod.rs"]
mod support;

use compute_ctl::auth::{Authorizer, KeySet, base64url, jwks, jwt};
use ed25519_compact::{KeyPair, Seed};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CLIENTS: usize = 64;
const UPLOAD: usize = 50_000_000;
const RUN: Duration = Duration::from_secs(3);
const ROUNDS: usize = 5;
const COMPUTE_ID: &str = "bench-compute";

fn main() {
    let bin = support::compute_ctl_binary();
    let dir = std::env::temp_dir().join(format!("bench_auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let kp = KeyPair::from_seed(Seed::new([42; 32]));
    let x = base64url::encode(kp.pk.as_ref());
    let config = json!({"jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "bench", "x": x}]}});
    let cp = control_plane(json!({"status": "empty", "spec": null, "compute_ctl_config": config}).to_string());
    let guarded = Compute::start(&bin, &dir.join("guarded"), Some(cp));
    let open = Compute::start(&bin, &dir.join("open"), None);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let token = jwt::sign(&json!({"alg": "EdDSA"}), &json!({"compute_id": COMPUTE_ID, "exp": now + 3600}), &kp.sk);
    let auth = format!("Bearer {token}");
    assert_eq!(get_status(guarded.port, Some(&auth)), 200, "the valid token is refused");
    assert_eq!(get_status(guarded.port, None), 400, "no token is let in");

    // 1. The upload flood.
    let (rss_before, _) = rss(guarded.pid());
    let flood = flood(guarded.port);
    let (rss_after, hwm) = rss(guarded.pid());
    println!(
        "unauthorized uploads: {CLIENTS} connections x {} MB: all answered {}, first answer after {:.1} ms, last after {:.1} ms; \
         the server took {:.1} MB of the {:.0} MB offered",
        UPLOAD / 1_000_000,
        flood.answered,
        flood.first_answer.as_secs_f64() * 1e3,
        flood.last_answer.as_secs_f64() * 1e3,
        flood.accepted as f64 / 1e6,
        (CLIENTS * UPLOAD) as f64 / 1e6
    );
    println!(
        "compute_ctl RSS: {:.2} MiB before, peak (VmHWM) {:.2} MiB, {:.2} MiB after",
        mib(rss_before),
        mib(hwm),
        mib(rss_after)
    );
    assert_eq!(flood.answered, CLIENTS, "some uploads got no answer");
    println!("RESULT auth/rss_before_flood {:.2} MiB", mib(rss_before));
    println!("RESULT auth/rss_peak_flood {:.2} MiB target=16", mib(hwm));
    println!("RESULT auth/flood_last_answer {:.1} ms", flood.last_answer.as_secs_f64() * 1e3);

    // 2. /status with and without a JWT, alternated; the third series sends the same header
    // to the compute without keys (which ignores it), to tell the cost of the longer request
    // from the cost of checking it.
    let mut open_runs = Vec::new();
    let mut jwt_runs = Vec::new();
    let mut header_runs = Vec::new();
    for _ in 0..ROUNDS {
        open_runs.push(measure(open.port, None));
        jwt_runs.push(measure(guarded.port, Some(&auth)));
        header_runs.push(measure(open.port, Some(&auth)));
    }
    let med = |runs: &[Stats], f: fn(&Stats) -> f64| support::median(&runs.iter().map(f).collect::<Vec<_>>());
    let (o_rps, j_rps, h_rps) = (med(&open_runs, |s| s.rps), med(&jwt_runs, |s| s.rps), med(&header_runs, |s| s.rps));
    let (o_p99, j_p99, h_p99) =
        (med(&open_runs, |s| s.p99_ms), med(&jwt_runs, |s| s.p99_ms), med(&header_runs, |s| s.p99_ms));
    let (o_p50, j_p50, h_p50) =
        (med(&open_runs, |s| s.p50_ms), med(&jwt_runs, |s| s.p50_ms), med(&header_runs, |s| s.p50_ms));
    let errors: u64 = open_runs.iter().chain(&jwt_runs).chain(&header_runs).map(|s| s.errors).sum();
    println!(
        "GET /status, {CLIENTS} keep-alive clients, {ROUNDS} alternated runs of {} s each (medians):",
        RUN.as_secs()
    );
    println!("  no authorization:                 {o_rps:.0} req/s, p50 {o_p50:.3} ms, p99 {o_p99:.3} ms");
    println!("  valid JWT, checked:               {j_rps:.0} req/s, p50 {j_p50:.3} ms, p99 {j_p99:.3} ms");
    println!("  same header, no keys (unchecked): {h_rps:.0} req/s, p50 {h_p50:.3} ms, p99 {h_p99:.3} ms");
    println!(
        "  p99 difference {:+.3} ms (target within 1 ms), req/s ratio {:.2}, errors {errors}",
        j_p99 - o_p99,
        j_rps / o_rps
    );
    let p99s = |runs: &[Stats]| runs.iter().map(|s| format!("{:.1}", s.p99_ms)).collect::<Vec<_>>().join(", ");
    println!(
        "  p99 of each run (ms): none {}; JWT {}; header unchecked {}",
        p99s(&open_runs),
        p99s(&jwt_runs),
        p99s(&header_runs)
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("  load average after the runs: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let (verify_us, cached_ns) = check_cost(&kp);
    println!("in this process: one check without the cache {verify_us:.1} us; with the cache {cached_ns:.0} ns");
    println!("RESULT auth/open_rps {o_rps:.0} req_per_s");
    println!("RESULT auth/jwt_rps {j_rps:.0} req_per_s baseline=auth/open_rps");
    println!("RESULT auth/open_p99 {o_p99:.3} ms");
    println!("RESULT auth/jwt_p99 {j_p99:.3} ms baseline=auth/open_p99");
    println!("RESULT auth/jwt_p99_minus_open {:.3} ms target=1", (j_p99 - o_p99).max(0.0));
    println!("RESULT auth/header_unchecked_p99 {h_p99:.3} ms baseline=auth/open_p99");
    println!("RESULT auth/verify_uncached {verify_us:.1} us");
    println!("RESULT auth/check_cached {cached_ns:.0} ns");
    println!("RESULT auth/errors {errors} count target=0");
    drop((guarded, open));
    let _ = std::fs::remove_dir_all(&dir);
}

struct Flood {
    answered: usize,
    first_answer: Duration,
    last_answer: Duration,
    accepted: u64,
}

/// Each client writes the head, then streams the body blindly while its reader waits for the
/// answer. The peak RSS is the kernel's high-water mark, read afterwards.
fn flood(port: u16) -> Flood {
    let start = Instant::now();
    let (answers, accepted) = support::run_clients(CLIENTS, move |sent_total| {
        let mut s = support::connect(port, Duration::from_secs(10));
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "POST /configure HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer not.a.token\r\n\
             Content-Type: application/json\r\nContent-Length: {UPLOAD}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut reader = s.try_clone().unwrap();
        let answer = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            match reader.read(&mut buf) {
                Ok(n) if buf[..n].starts_with(b"HTTP/1.1 401") => Some(start.elapsed()),
                _ => None,
            }
        });
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        while sent < UPLOAD {
            match s.write(&chunk[..chunk.len().min(UPLOAD - sent)]) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent_total.fetch_add(sent as u64, Ordering::Relaxed);
        answer.join().unwrap()
    });
    let times: Vec<Duration> = answers.into_iter().flatten().collect();
    Flood {
        answered: times.len(),
        first_answer: times.iter().min().copied().unwrap_or_default(),
        last_answer: times.iter().max().copied().unwrap_or_default(),
        accepted,
    }
}

/// (VmRSS, VmHWM) in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

struct Stats {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn measure(port: u16, auth: Option<&str>) -> Stats {
    let request = match auth {
        Some(a) => format!("GET /status HTTP/1.1\r\nHost: b\r\nAuthorization: {a}\r\n\r\n"),
        None => "GET /status HTTP/1.1\r\nHost: b\r\n\r\n".to_string(),
    };
    let request = Arc::new(request);
    let errors = Arc::new(AtomicU64::new(0));
    let go = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (request, errors, go) = (request.clone(), errors.clone(), go.clone());
            std::thread::spawn(move || {
                let s = support::connect(port, Duration::from_secs(5));
                s.set_nodelay(true).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                while !go.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                let start = Instant::now();
                let mut lat = Vec::with_capacity(50_000);
                while start.elapsed() < RUN {
                    let t = Instant::now();
                    if !(w.write_all(request.as_bytes()).is_ok() && support::read_200(&mut r).is_some()) {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let start = Instant::now();
    go.store(true, Ordering::Release);
    let mut all: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let elapsed = start.elapsed();
    all.sort();
    let pct = |p: f64| support::pct(&all, p).as_secs_f64() * 1e3;
    Stats {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        errors: errors.load(Ordering::SeqCst),
    }
}

fn get_status(port: u16, auth: Option<&str>) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let extra = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    s.write_all(format!("GET /status HTTP/1.1\r\nHost: b\r\nConnection: close\r\n{extra}\r\n").as_bytes()).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Microseconds for one full check (parse, signature, claims), the cache bypassed; and
/// nanoseconds for the whole check of the header through `Authorizer` with the token cached.
fn check_cost(kp: &KeyPair) -> (f64, f64) {
    let set = KeySet { keys: vec![jwks::Key { name: "k".into(), key: kp.pk }], skipped: Vec::new() };
    let token = jwt::sign(&json!({"alg": "EdDSA"}), &json!({"compute_id": COMPUTE_ID}), &kp.sk);
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        assert!(jwt::verify(std::hint::black_box(token.as_bytes()), &set.keys, COMPUTE_ID, 0).is_ok());
    }
    let uncached = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let auth = Authorizer::new(None, Some(set), COMPUTE_ID);
    let header = format!("Bearer {token}");
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        assert!(auth.check(Some(std::hint::black_box(&header)), 0).is_ok());
    }
    (uncached, t.elapsed().as_secs_f64() * 1e9 / f64::from(n))
}

/// A control-plane stand-in answering every request with `body`; returns its port.
fn control_plane(body: String) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    port
}

/// A compute_ctl in `empty`, stopped (SIGTERM, then waited for) on drop.
struct Compute {
    child: Child,
    port: u16,
    /// Holds the claim on the port pair for as long as the compute runs.
    _claim: std::fs::File,
}

impl Compute {
    fn start(bin: &Path, dir: &Path, control_plane: Option<u16>) -> Compute {
        std::fs::create_dir_all(dir).unwrap();
        let (port, claim) = support::claim_port_pair();
        let mut cmd = Command::new(bin);
        cmd.args(["-D", dir.join("pgdata").to_str().unwrap(), "-C", "postgresql://cloud_admin@127.0.0.1:9/postgres"])
            .args(support::compute_ctl_args())
            .args(["-i", COMPUTE_ID])
            .args(["--http-port", &port.to_string()]);
        if let Some(cp) = control_plane {
            cmd.args(["-p", &format!("http://127.0.0.1:{cp}")]);
        }
        let log = std::fs::File::create(dir.join("compute.log")).unwrap();
        let child = cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        let mut c = Compute { child, port, _claim: claim };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(c.child.try_wait().unwrap().is_none(), "compute_ctl exited; see {}", dir.display());
            assert!(Instant::now() < deadline, "compute_ctl did not listen; see {}", dir.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Compute {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}
