//! vm-monitor round trips over its websocket, one at a time from a test agent, against
//! compute_ctl with `AUTOSCALING` set (an imitation cgroup whose `memory.stat` says 10 MiB, so
//! every downscale is approved; vanilla Postgres, so no file-cache SQL): `HealthCheck` echoes
//! and `DownscaleRequest` decisions, beside a plain TCP echo on loopback in this process (the
//! floor any round trip pays).
//!
//! The machine is shared and noisy, so the three are interleaved message by message (echo,
//! HealthCheck, DownscaleRequest, echo, …): a burst of noise lands on all three alike instead
//! of on whichever ran at that moment. [`ROUNDS`] rounds of [`N`] of each; every round's p50,
//! p99 and max are printed, the `RESULT` lines give the median over rounds of each p50 and p99,
//! and the worst round's p99 is printed too. compute_ctl's RSS is measured before the first
//! round and after the last. The load average is printed before and after. Targets: p99 under
//! 1 ms, RSS growth under 1 MiB. Figures also as `RESULT` lines (see examples/bench.rs).
//!
//! Run: `cargo build --release && cargo run --release --example bench_vm_monitor`
//! (needs PostgreSQL 15 in /usr/lib/postgresql/15/bin; as root, Postgres runs as `postgres`).
//! The binary under test is `$COMPUTE_CTL_BIN`, else target/release/compute_ctl (built first).

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Round trips of each kind per round.
const N: usize = 10_000;
const ROUNDS: usize = 5;
const KINDS: [&str; 3] = ["tcp echo (floor)", "HealthCheck", "DownscaleRequest"];

fn main() {
    let bin = support::compute_ctl_binary();
    let dir = std::env::temp_dir().join(format!("bench_vm_monitor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cgroup = dir.join("cgroup/neon-postgres");
    std::fs::create_dir_all(&cgroup).unwrap();
    std::fs::create_dir_all(dir.join("sock")).unwrap();
    support::chmod(&dir, 0o755);
    support::chmod(&dir.join("sock"), 0o777);
    std::fs::write(cgroup.join("cgroup.procs"), "").unwrap();
    std::fs::write(cgroup.join("memory.stat"), "active_anon 5242880\ninactive_anon 5242880\n").unwrap();
    let (http_port, pg_port, vm_port) = (support::free_port(), support::free_port(), support::free_port());
    let spec = serde_json::json!({
        "format_version": 1.0,
        "tenant_id": "b0554b632bd4d547a63b86c3630317e8",
        "timeline_id": "2414a61ffc94e428f14b5758fe308e13",
        "cluster": {"roles": [], "databases": [], "settings": [
            {"name": "port", "value": pg_port.to_string(), "vartype": "integer"},
            {"name": "listen_addresses", "value": "127.0.0.1", "vartype": "string"},
            {"name": "unix_socket_directories", "value": dir.join("sock").to_str().unwrap(), "vartype": "string"},
            {"name": "shared_buffers", "value": "16MB", "vartype": "string"},
            {"name": "fsync", "value": "off", "vartype": "bool"}
        ]}
    });
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let child = support::compute_ctl_command(&bin, &dir, pg_port, &spec_path)
        .args(["--http-port", &http_port.to_string(), "--vm-monitor-addr", &format!("127.0.0.1:{vm_port}")])
        .args(["--cgroup-root", dir.join("cgroup").to_str().unwrap()])
        .env("AUTOSCALING", "1")
        // compute_ctl writes cgroup.procs itself: a cgexec on PATH would not know the imitation.
        .env("PATH", path_without_cgexec())
        .spawn()
        .unwrap();
    let mut guard = support::Guard { child, dir: dir.clone() };
    support::wait_status(http_port, &mut guard.child, &dir, "\"listening\":\"127.0.0.1:", "vm-monitor not listening");
    let pid = guard.child.id();
    println!("load average before: {}", load_average());

    let mut echo = Echo::start();
    let mut ws = Ws::connect(vm_port);
    ws.send(r#"{"min":1,"max":1}"#);
    assert_eq!(ws.recv(), r#"{"version":1}"#);
    let mut id = 0u64;
    let downscale = |id: u64| {
        format!(r#"{{"type":"DownscaleRequest","content":{{"target":{{"cpu":1,"mem":{}}}}},"id":{id}}}"#, 4u64 << 30)
    };
    let health = |id: u64| format!(r#"{{"type":"HealthCheck","content":{{}},"id":{id}}}"#);
    // Warm-up: the first messages allocate the buffers that are then reused.
    for _ in 0..500 {
        echo.call();
        id += 2;
        ws.call(&health(id));
        id += 2;
        ws.call(&downscale(id));
    }
    let rss_before = rss_kib(pid);
    let postmaster = postmaster_pid(&dir.join("pgdata"));
    let cpu_before = cpu_by_thread(pid, postmaster);
    // rounds[r][k]: p50, p99, max of kind k in round r.
    let mut rounds: Vec<[[f64; 3]; 3]> = Vec::with_capacity(ROUNDS);
    println!("round trips, {N} of each kind per round, interleaved, one at a time (ms):");
    println!("  round  {:<18} {:>7} {:>7} {:>7}", "kind", "p50", "p99", "max");
    for round in 1..=ROUNDS {
        let mut times: [Vec<Duration>; 3] = std::array::from_fn(|_| Vec::with_capacity(N));
        for _ in 0..N {
            let t = Instant::now();
            echo.call();
            times[0].push(t.elapsed());
            id += 2;
            let msg = health(id);
            let t = Instant::now();
            let r = ws.call(&msg);
            times[1].push(t.elapsed());
            debug_assert!(r.contains("HealthCheck"));
            id += 2;
            let msg = downscale(id);
            let t = Instant::now();
            let r = ws.call(&msg);
            times[2].push(t.elapsed());
            assert!(r.contains("DownscaleResult"), "{r}");
        }
        let s = times.map(stats);
        for (kind, st) in KINDS.iter().zip(&s) {
            println!("  {round:>5}  {kind:<18} {:7.3} {:7.3} {:7.3}", st[0], st[1], st[2]);
        }
        rounds.push(s);
    }
    let rss_after = rss_kib(pid);
    let cpu_after = cpu_by_thread(pid, postmaster);
    println!("load average after: {}", load_average());
    print_cpu(&cpu_before, &cpu_after, 2 * N * ROUNDS, N * ROUNDS);

    // Per kind: the median over rounds of p50 and of p99, and the worst round's p99.
    let summary: Vec<(f64, f64, f64)> = (0..3)
        .map(|k| {
            let p50 = median(rounds.iter().map(|r| r[k][0]).collect());
            let p99s: Vec<f64> = rounds.iter().map(|r| r[k][1]).collect();
            let worst = p99s.iter().copied().fold(0.0, f64::max);
            (p50, median(p99s), worst)
        })
        .collect();
    println!("over {ROUNDS} rounds (ms):    median p50  median p99  worst p99");
    for (kind, (p50, p99, worst)) in KINDS.iter().zip(&summary) {
        println!("  {kind:<24} {p50:10.3} {p99:11.3} {worst:10.3}");
    }
    let growth = (rss_after as f64 - rss_before as f64) / 1024.0;
    println!(
        "compute_ctl RSS: {:.2} MiB before, {:.2} MiB after {} messages, growth {growth:.3} MiB",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        2 * N * ROUNDS
    );
    let (echo, health, downscale) = (summary[0], summary[1], summary[2]);
    let met = health.1 < 1.0 && downscale.1 < 1.0 && growth < 1.0;
    println!("target (median p99 < 1 ms, RSS growth < 1 MiB): {}", if met { "met" } else { "NOT met" });
    println!("RESULT vm_monitor/tcp_echo_p50 {:.4} ms", echo.0);
    println!("RESULT vm_monitor/tcp_echo_p99 {:.4} ms", echo.1);
    println!("RESULT vm_monitor/health_check_p50 {:.4} ms baseline=vm_monitor/tcp_echo_p50", health.0);
    println!("RESULT vm_monitor/health_check_p99 {:.4} ms target=1", health.1);
    println!("RESULT vm_monitor/downscale_p50 {:.4} ms baseline=vm_monitor/tcp_echo_p50", downscale.0);
    println!("RESULT vm_monitor/downscale_p99 {:.4} ms target=1", downscale.1);
    println!("RESULT vm_monitor/rss_growth {growth:.3} MiB target=1");
}

/// p50, p99 and max in milliseconds.
fn stats(mut v: Vec<Duration>) -> [f64; 3] {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    [at(0.5), at(0.99), at(1.0)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ") + &format!(" ({} CPUs)", cpus())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// This process's `PATH` without the directories that hold a `cgexec`.
fn path_without_cgexec() -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::env::split_paths(&path).filter(|d| !d.join("cgexec").exists())).unwrap()
}

/// A 50-byte message through a loopback echo thread, one at a time.
struct Echo {
    c: TcpStream,
    b: [u8; 50],
}

impl Echo {
    fn start() -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::Builder::new().name("echo-server".into()).spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let mut b = [0u8; 50];
            while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
        });
        server.unwrap();
        let c = TcpStream::connect(addr).unwrap();
        c.set_nodelay(true).unwrap();
        Echo { c, b: [7u8; 50] }
    }

    fn call(&mut self) {
        self.c.write_all(&self.b).unwrap();
        self.c.read_exact(&mut self.b).unwrap();
    }
}

/// A minimal masked websocket client (the tests have the thorough one).
struct Ws {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Ws {
    fn connect(port: u16) -> Ws {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(
            b"GET /monitor HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .unwrap();
        let mut ws = Ws { s, buf: Vec::new() };
        let end = loop {
            if let Some(i) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            ws.fill();
        };
        assert!(ws.buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&ws.buf));
        ws.buf.drain(..end + 4);
        ws
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.s.read(&mut chunk).unwrap();
        assert!(n > 0, "the vm-monitor closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    fn send(&mut self, text: &str) {
        let p = text.as_bytes();
        assert!(p.len() < 126);
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut f = vec![0x81, 0x80 | p.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(p.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&f).unwrap();
    }

    fn recv(&mut self) -> String {
        loop {
            if self.buf.len() >= 2 {
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    126 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let text = String::from_utf8(self.buf[at..at + len].to_vec()).unwrap();
                    self.buf.drain(..at + len);
                    return text;
                }
            }
            self.fill();
        }
    }

    fn call(&mut self, text: &str) -> String {
        self.send(text);
        self.recv()
    }
}

/// On-CPU nanoseconds and times run, from `/proc/PID/task/TID/schedstat`, with the thread's
/// name, by `(pid, tid)`: every thread of compute_ctl (`pid`), and of Postgres (`postmaster`
/// and its children).
type Cpu = std::collections::BTreeMap<(u32, u32), (String, u64, u64)>;

fn cpu_by_thread(pid: u32, postmaster: u32) -> Cpu {
    let children =
        std::fs::read_to_string(format!("/proc/{postmaster}/task/{postmaster}/children")).unwrap_or_default();
    let mut pids = vec![pid, postmaster, std::process::id()];
    pids.extend(children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    let mut out = Cpu::new();
    for p in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_string();
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            let f: Vec<u64> = stat.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            if f.len() == 3 {
                let name = match p {
                    _ if p == pid => comm,
                    _ if p == std::process::id() && comm == "echo-server" => "bench: echo-server".into(),
                    _ if p == std::process::id() => continue,
                    _ => format!("postgres: {comm}"),
                };
                out.insert((p, tid), (name, f[0], f[2]));
            }
        }
    }
    out
}

/// Where the CPU went during the rounds: compute_ctl's session thread per message (and this
/// process's echo thread per echo, its floor), and everything else that woke up meanwhile
/// (threads gone before the end are not counted).
fn print_cpu(before: &Cpu, after: &Cpu, messages: usize, echoes: usize) {
    let mut by_name: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for (k, (name, ns, runs)) in after {
        let (ns0, runs0) = before.get(k).map_or((0, 0), |(_, n, r)| (*n, *r));
        let e = by_name.entry(name.as_str()).or_default();
        e.0 += ns - ns0;
        e.1 += runs - runs0;
    }
    println!("CPU during the rounds (schedstat), compute_ctl and Postgres:");
    for (name, (ns, runs)) in by_name.iter().filter(|(_, (ns, runs))| *ns > 0 || *runs > 0) {
        let per = match *name {
            "vm-monitor-agen" => Some(("message", messages)),
            "bench: echo-server" => Some(("echo", echoes)),
            _ => None,
        };
        if let Some((what, n)) = per {
            println!(
                "  {name:<32} {:9.3} ms, {runs:7} runs: {:.2} us and {:.2} runs per {what}",
                *ns as f64 / 1e6,
                *ns as f64 / 1e3 / n as f64,
                *runs as f64 / n as f64
            );
        } else {
            println!("  {name:<32} {:9.3} ms, {runs:7} runs", *ns as f64 / 1e6);
        }
    }
}

fn postmaster_pid(pgdata: &std::path::Path) -> u32 {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).unwrap();
    text.lines().next().and_then(|l| l.trim().parse().ok()).unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
