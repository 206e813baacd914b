//! What every benchmark needs, written once: where the Postgres binaries are, free loopback
//! ports, medians, running Postgres tools as the `postgres` OS user when we are root, and the
//! compute_ctl binary under test. Each bench includes it with `#[path = "support/mod.rs"]`.
#![allow(dead_code)] // each bench uses a different part

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// PostgreSQL 15's binaries.
pub const PGBIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// A command for a Postgres tool in [`PGBIN_DIR`], run as the `postgres` user when we are root.
pub fn pg_cmd(tool: &str) -> Command {
    let mut c = Command::new(format!("{PGBIN_DIR}/{tool}"));
    as_postgres(&mut c);
    c
}

/// uid and gid of the `postgres` OS user when we are root (Postgres refuses to run as root).
pub fn postgres_ids() -> Option<(u32, u32)> {
    if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let f: Vec<&str> = passwd.lines().find(|l| l.starts_with("postgres:"))?.split(':').collect();
    Some((f[2].parse().ok()?, f[3].parse().ok()?))
}

/// Makes `cmd` run as the `postgres` user when we are root.
pub fn as_postgres(cmd: &mut Command) -> &mut Command {
    if let Some((u, g)) = postgres_ids() {
        cmd.uid(u).gid(g);
    }
    cmd
}

/// Gives `p` to the `postgres` user when we are root.
pub fn chown(p: &Path) {
    if let Some((u, g)) = postgres_ids() {
        std::os::unix::fs::chown(p, Some(u), Some(g)).unwrap();
    }
}

pub fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A free loopback port whose next port is free too (compute_ctl's internal HTTP server takes
/// it), below the kernel's ephemeral range's end.
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        if port < 65000 && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// A free port pair (PORT, PORT+1) below the kernel's ephemeral range, claimed as the
/// integration tests claim theirs: an even PORT in 10000-32766 whose lock file
/// `/tmp/compute_ctl-test-ports/PORT` we hold (flock, until the returned file is dropped or we
/// exit), with nothing listening on either port.
pub fn claim_port_pair() -> (u16, std::fs::File) {
    let dir = Path::new("/tmp/compute_ctl-test-ports");
    std::fs::create_dir_all(dir).unwrap();
    let span = (32767 - 10000) / 2;
    let start = std::process::id() as usize * 97;
    for n in 0..span {
        let port = (10000 + 2 * ((start + n) % span)) as u16;
        let open =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(port.to_string()));
        let Ok(lock) = open else { continue };
        if lock.try_lock().is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok()
        {
            return (port, lock);
        }
    }
    panic!("no free port pair in 10000-32767");
}

/// Writes `root/spec.json`, the start benchmarks' spec: no catalog work
/// (`skip_pg_catalog_updates`), Postgres on 127.0.0.1:`pg_port` with its socket in `root/sock`.
pub fn write_start_spec(root: &Path, pg_port: u16) -> PathBuf {
    let spec = serde_json::json!({
        "format_version": 1.0,
        "tenant_id": "b0554b632bd4d547a63b86c3630317e8",
        "timeline_id": "2414a61ffc94e428f14b5758fe308e13",
        "skip_pg_catalog_updates": true,
        "cluster": { "roles": [], "databases": [], "settings": [
            {"name": "port", "value": pg_port.to_string(), "vartype": "integer"},
            {"name": "listen_addresses", "value": "127.0.0.1", "vartype": "string"},
            {"name": "unix_socket_directories", "value": root.join("sock").to_str().unwrap(), "vartype": "string"}
        ]}
    });
    let path = root.join("spec.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    path
}

/// Reads compute_ctl's stderr to its end on a thread (so it never blocks on a full pipe) and
/// sends the time since `t0` when the `compute status: running` line arrives; the thread
/// returns every line, for a panic message.
pub fn watch_for_running(
    stderr: std::process::ChildStderr,
    t0: std::time::Instant,
) -> (std::sync::mpsc::Receiver<Duration>, std::thread::JoinHandle<Vec<String>>) {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("compute status: running") {
                let _ = tx.send(t0.elapsed());
            }
            lines.push(line);
        }
        lines
    });
    (rx, reader)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The binary under test: `$COMPUTE_CTL_BIN`, else target/release/compute_ctl beside this
/// bench, built first with `$CARGO build --release` when cargo runs us.
pub fn compute_ctl_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("COMPUTE_CTL_BIN") {
        return PathBuf::from(p);
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        let st = Command::new(cargo).args(["build", "--release", "--quiet", "--bin", "compute_ctl"]).status();
        assert!(st.is_ok_and(|s| s.success()), "cargo build --release --bin compute_ctl failed");
    }
    let exe = std::env::current_exe().unwrap();
    // target/release/examples/bench_x -> target/release/compute_ctl
    let bin = exe.parent().and_then(Path::parent).unwrap().join("compute_ctl");
    assert!(bin.exists(), "{} not found; build it or set COMPUTE_CTL_BIN", bin.display());
    bin
}
