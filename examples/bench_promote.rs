//! `/promote` benchmark (issue 13): a caught-up streaming standby becomes a writable primary.
//!
//!     cargo run --release --example bench_promote [-- --runs N]
//!
//! One plain primary (`postgres -D`, PostgreSQL 15) runs throughout. Each run makes a fresh
//! standby of it with `pg_basebackup -R` and times, from the request to the first INSERT that
//! succeeds on the standby's already-open connection (polled every millisecond):
//! - `pg_ctl`: a bare `postgres -D STANDBY`, then `pg_ctl promote -w`;
//! - `compute_ctl`: compute_ctl running the standby with a `Replica` spec, then
//!   `POST /promote` with the primary's spec (`skip_pg_catalog_updates`) and the primary's
//!   current flush LSN, which the standby has already replayed.
//!
//! The two series alternate, N runs each (default 5); their medians are compared (target:
//! compute_ctl <= 1.2 x pg_ctl). Postgres runs as the `postgres` OS user when we are root;
//! every child is stopped by pid. Results are `RESULT` lines (see examples/bench.rs).

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{PGBIN_DIR, as_postgres, chmod, claim_port_pair, compute_ctl_binary, median, ms, pg_cmd};

const TIMEOUT: Duration = Duration::from_secs(60);
const SUPERUSER: &str = "cloud_admin";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = args.iter().position(|a| a == "--runs").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(5);
    let bin = compute_ctl_binary();
    let root = std::env::temp_dir().join(format!("bench_promote-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("sock")).unwrap();
    chmod(&root, 0o755);
    chmod(&root.join("sock"), 0o777);

    let (primary_port, _l1) = claim_port_pair();
    let primary_dir = root.join("primary");
    initdb(&primary_dir);
    let _primary = Owned(postgres(&primary_dir, primary_port, &root));
    let mut primary = wait_connect(primary_port);
    primary.batch_execute("CREATE TABLE t (x int)").unwrap();

    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let (standby_port, _l2) = claim_port_pair();
        let dir = root.join(format!("standby-{run}"));
        basebackup(&dir, primary_port);
        base.push(ms(promote_with_pg_ctl(&dir, standby_port, &root, &mut primary)));
        let _ = std::fs::remove_dir_all(&dir);

        let (standby_port, _l3) = claim_port_pair();
        let dir = root.join(format!("standby-cc-{run}"));
        basebackup(&dir, primary_port);
        ours.push(ms(promote_with_compute_ctl(&bin, &dir, standby_port, &root, &mut primary)));
        let _ = std::fs::remove_dir_all(&dir);
        println!("run {run}: pg_ctl {:.1} ms, compute_ctl {:.1} ms", base[run], ours[run]);
    }
    let (b, o) = (median(&base), median(&ours));
    println!("RESULT promote/pg_ctl_promote_w {b:.1} ms");
    println!("RESULT promote/compute_ctl {o:.1} ms baseline=promote/pg_ctl_promote_w target=1.2");
    println!("ratio compute_ctl / pg_ctl promote -w: {:.2}x (target <= 1.2x)", o / b);
    drop(primary);
    let _ = std::fs::remove_dir_all(&root);
}

fn initdb(dir: &Path) {
    support::pg_data_dir(dir);
    let out = pg_cmd("initdb")
        .arg("-D")
        .arg(dir)
        .args(["-U", SUPERUSER, "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"])
        .output()
        .unwrap();
    assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
}

fn basebackup(dir: &Path, primary_port: u16) {
    support::pg_data_dir(dir);
    let out = pg_cmd("pg_basebackup")
        .arg("-D")
        .arg(dir)
        .args(["-R", "-X", "stream", "-c", "fast", "-h", "127.0.0.1", "-U", SUPERUSER, "-p"])
        .arg(primary_port.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_basebackup: {}", String::from_utf8_lossy(&out.stderr));
}

fn postgres(dir: &Path, port: u16, root: &Path) -> Child {
    let mut c = Command::new(format!("{PGBIN_DIR}/postgres"));
    c.arg("-D").arg(dir).args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
    c.arg("-c").arg(format!("unix_socket_directories={}", root.join("sock").display()));
    as_postgres(&mut c).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

fn wait_connect(port: u16) -> postgres::Client {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let c = postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user(SUPERUSER)
            .dbname("postgres")
            .connect(postgres::NoTls);
        match c {
            Ok(c) => return c,
            Err(e) => assert!(Instant::now() < deadline, "cannot connect to {port}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Writes a row on the primary and waits until the standby has replayed it; returns the LSN.
fn catch_up(primary: &mut postgres::Client, standby: &mut postgres::Client) -> String {
    primary.batch_execute("INSERT INTO t VALUES (1)").unwrap();
    let lsn: String = primary.query_one("SELECT pg_current_wal_flush_lsn()::text", &[]).unwrap().get(0);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let ok: bool = standby
            .query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&lsn])
            .unwrap()
            .get::<_, Option<bool>>(0)
            .unwrap_or(false);
        if ok {
            return lsn;
        }
        assert!(Instant::now() < deadline, "the standby never caught up to {lsn}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Polls an INSERT on `standby` until it succeeds.
fn until_writable(standby: &mut postgres::Client) {
    let deadline = Instant::now() + TIMEOUT;
    while standby.batch_execute("INSERT INTO t VALUES (2)").is_err() {
        assert!(Instant::now() < deadline, "the standby never became writable");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn promote_with_pg_ctl(dir: &Path, port: u16, root: &Path, primary: &mut postgres::Client) -> Duration {
    let _pg = Owned(postgres(dir, port, root));
    let mut standby = wait_connect(port);
    catch_up(primary, &mut standby);
    let t0 = Instant::now();
    let st = pg_cmd("pg_ctl").args(["promote", "-w", "-D"]).arg(dir).stdout(Stdio::null()).status().unwrap();
    assert!(st.success(), "pg_ctl promote -w failed");
    until_writable(&mut standby);
    t0.elapsed()
}

fn spec(port: u16, root: &Path, mode: &str) -> serde_json::Value {
    serde_json::json!({
        "format_version": 1.0,
        "tenant_id": "b0554b632bd4d547a63b86c3630317e8",
        "timeline_id": "2414a61ffc94e428f14b5758fe308e13",
        "skip_pg_catalog_updates": true,
        "mode": mode,
        "cluster": { "roles": [], "databases": [], "settings": [
            {"name": "port", "value": port.to_string(), "vartype": "integer"},
            {"name": "listen_addresses", "value": "127.0.0.1", "vartype": "string"},
            {"name": "fsync", "value": "off", "vartype": "bool"},
            {"name": "unix_socket_directories", "value": root.join("sock").to_str().unwrap(), "vartype": "string"}
        ]}
    })
}

fn promote_with_compute_ctl(
    bin: &PathBuf,
    dir: &Path,
    port: u16,
    root: &Path,
    primary: &mut postgres::Client,
) -> Duration {
    let (http, _lock) = claim_port_pair();
    let spec_path = dir.with_extension("json");
    std::fs::write(&spec_path, spec(port, root, "Replica").to_string()).unwrap();
    let child = Command::new(bin)
        .arg("-D")
        .arg(dir)
        .args(["-C", &format!("postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"), "-b"])
        .arg(format!("{PGBIN_DIR}/postgres"))
        .args(["--http-port", &http.to_string(), "--http-bind", "127.0.0.1", "--exit-delay", "0", "-S"])
        .arg(&spec_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _cc = Owned(child);
    let deadline = Instant::now() + TIMEOUT;
    while request(http, "GET", "/status", "").is_none_or(|(_, b)| !b.contains("\"status\":\"running\"")) {
        assert!(Instant::now() < deadline, "compute_ctl never reported running");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut standby = wait_connect(port);
    let lsn = catch_up(primary, &mut standby);
    let body = serde_json::json!({ "spec": spec(port, root, "Primary"), "wal_flush_lsn": lsn }).to_string();
    let t0 = Instant::now();
    let (code, text) = request(http, "POST", "/promote", &body).expect("POST /promote");
    assert_eq!(code, 200, "/promote: {text}");
    until_writable(&mut standby);
    let took = t0.elapsed();
    println!("  /promote answered {text}");
    took
}

/// One HTTP/1.1 request; (status, body).
fn request(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(TIMEOUT)).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n")?.1.to_string()))
}

/// A child stopped by pid with SIGINT (a fast shutdown for Postgres and compute_ctl alike) and
/// waited for, whatever happens.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // SAFETY: kill(2) takes two integers and touches no memory of ours.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + TIMEOUT;
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
