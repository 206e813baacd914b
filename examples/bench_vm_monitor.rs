//! vm-monitor round trips over its websocket: 10,000 `HealthCheck`s and 10,000
//! `DownscaleRequest` decisions, one at a time from a test agent, against compute_ctl with
//! `AUTOSCALING` set (an imitation cgroup whose `memory.stat` says 10 MiB, so every downscale
//! is approved; vanilla Postgres, so no file-cache SQL). Prints p50, p99 and max of each, the
//! same for a plain TCP echo on loopback in this process (the floor any round trip pays), and
//! compute_ctl's RSS before and after the 20,000 messages. Targets: p99 under 1 ms, RSS growth
//! under 1 MiB. Figures also as `RESULT` lines (see examples/bench.rs).
//!
//! Run: `cargo build --release && cargo run --release --example bench_vm_monitor`
//! (needs PostgreSQL 15 in /usr/lib/postgresql/15/bin; as root, Postgres runs as `postgres`).
//! The binary under test is `$COMPUTE_CTL_BIN`, else target/release/compute_ctl (built first).

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const N: usize = 10_000;

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
        .spawn()
        .unwrap();
    let mut guard = support::Guard { child, dir: dir.clone() };
    support::wait_status(http_port, &mut guard.child, &dir, "\"listening\":\"127.0.0.1:", "vm-monitor not listening");
    let pid = guard.child.id();

    let echo = echo_round_trips();
    let mut ws = Ws::connect(vm_port);
    ws.send(r#"{"min":1,"max":1}"#);
    assert_eq!(ws.recv(), r#"{"version":1}"#);
    // Warm-up: the first messages allocate the buffers that are then reused.
    let mut id = 0u64;
    for _ in 0..500 {
        id += 2;
        ws.call(&format!(r#"{{"type":"HealthCheck","content":{{}},"id":{id}}}"#));
    }
    let rss_before = rss_kib(pid);
    let mut health = Vec::with_capacity(N);
    for _ in 0..N {
        id += 2;
        let t = Instant::now();
        let r = ws.call(&format!(r#"{{"type":"HealthCheck","content":{{}},"id":{id}}}"#));
        health.push(t.elapsed());
        debug_assert!(r.contains("HealthCheck"));
    }
    let mut downscale = Vec::with_capacity(N);
    for _ in 0..N {
        id += 2;
        let msg = format!(
            r#"{{"type":"DownscaleRequest","content":{{"target":{{"cpu":1,"mem":{}}}}},"id":{id}}}"#,
            4u64 << 30
        );
        let t = Instant::now();
        let r = ws.call(&msg);
        downscale.push(t.elapsed());
        assert!(r.contains("DownscaleResult"), "{r}");
    }
    let rss_after = rss_kib(pid);

    let echo = stats(echo);
    let health = stats(health);
    let downscale = stats(downscale);
    println!("round trips, {N} each, one at a time (ms):   p50     p99     max");
    for (name, s) in [("tcp echo (floor)", &echo), ("HealthCheck", &health), ("DownscaleRequest", &downscale)] {
        println!("  {name:<28} {:7.3} {:7.3} {:7.3}", s[0], s[1], s[2]);
    }
    let growth = (rss_after as f64 - rss_before as f64) / 1024.0;
    println!(
        "compute_ctl RSS: {:.2} MiB before, {:.2} MiB after, growth {growth:.3} MiB",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    let met = health[1] < 1.0 && downscale[1] < 1.0 && growth < 1.0;
    println!("target (p99 < 1 ms, RSS growth < 1 MiB): {}", if met { "met" } else { "NOT met" });
    println!("RESULT vm_monitor/tcp_echo_p50 {:.4} ms", echo[0]);
    println!("RESULT vm_monitor/health_check_p50 {:.4} ms baseline=vm_monitor/tcp_echo_p50", health[0]);
    println!("RESULT vm_monitor/health_check_p99 {:.4} ms target=1", health[1]);
    println!("RESULT vm_monitor/downscale_p50 {:.4} ms baseline=vm_monitor/tcp_echo_p50", downscale[0]);
    println!("RESULT vm_monitor/downscale_p99 {:.4} ms target=1", downscale[1]);
    println!("RESULT vm_monitor/rss_growth {growth:.3} MiB target=1");
}

/// p50, p99 and max in milliseconds.
fn stats(mut v: Vec<Duration>) -> [f64; 3] {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    [at(0.5), at(0.99), at(1.0)]
}

/// The same number of round trips of a 50-byte message through a loopback echo thread.
fn echo_round_trips() -> Vec<Duration> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 50];
        while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let mut b = [7u8; 50];
    let mut out = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        c.write_all(&b).unwrap();
        c.read_exact(&mut b).unwrap();
        out.push(t.elapsed());
    }
    out
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

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
