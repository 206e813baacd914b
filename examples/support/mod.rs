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

/// Makes `dir` (and its parents) a PGDATA-to-be: owned by the Postgres user, mode 0700.
pub fn pg_data_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    chown(dir);
    chmod(dir, 0o700);
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
    write_start_spec_with(root, pg_port, &[])
}

/// [`write_start_spec`] with more settings (`name`, `value`) after the three it always has.
pub fn write_start_spec_with(root: &Path, pg_port: u16, more: &[(&str, &str)]) -> PathBuf {
    let mut settings = vec![
        serde_json::json!({"name": "port", "value": pg_port.to_string(), "vartype": "integer"}),
        serde_json::json!({"name": "listen_addresses", "value": "127.0.0.1", "vartype": "string"}),
        serde_json::json!({"name": "unix_socket_directories", "value": root.join("sock").to_str().unwrap(), "vartype": "string"}),
    ];
    settings.extend(more.iter().map(|(n, v)| serde_json::json!({"name": n, "value": v, "vartype": "string"})));
    let spec = serde_json::json!({
        "format_version": 1.0,
        "tenant_id": "b0554b632bd4d547a63b86c3630317e8",
        "timeline_id": "2414a61ffc94e428f14b5758fe308e13",
        "skip_pg_catalog_updates": true,
        "cluster": { "roles": [], "databases": [], "settings": settings }
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

/// The `p` quantile (0..=1) of `sorted`, which must be sorted and non-empty: the element at
/// `len * p`, the last for `p` = 1.
pub fn pct<T: Copy>(sorted: &[T], p: f64) -> T {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// The arguments every bench gives compute_ctl: Postgres from [`PGBIN_DIR`], HTTP on
/// 127.0.0.1, no exit delay.
pub fn compute_ctl_args() -> [String; 6] {
    ["-b", &format!("{PGBIN_DIR}/postgres"), "--http-bind", "127.0.0.1", "--exit-delay", "0"].map(String::from)
}

/// Reads one response from `r`; the body's length when it is a 200 whose body was read whole.
pub fn read_200(r: &mut std::io::BufReader<std::net::TcpStream>) -> Option<usize> {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    if r.read_line(&mut line).is_err() || !line.starts_with("HTTP/1.1 200") {
        return None;
    }
    let mut len = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line).is_err() || line.is_empty() {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok().map(|()| len)
}

/// `POST path` with a JSON `body` on its own connection; the status code (0 if none) and the
/// whole response.
pub fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
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

/// Polls `GET /status` on `port` until its body contains `needle`; panics (naming `what` and
/// the log in `dir`) when compute_ctl exits or after 60 s.
pub fn wait_status(port: u16, child: &mut std::process::Child, dir: &Path, needle: &str, what: &str) {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /status HTTP/1.1\r\nConnection: close\r\n\r\n");
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if text.contains(needle) {
                return;
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("compute_ctl exited ({st}); see {}", dir.join("compute.log").display());
        }
        assert!(std::time::Instant::now() < deadline, "{what} after 60 s; see {}", dir.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the compute at `port` reports `running`.
pub fn wait_running(port: u16, child: &mut std::process::Child, dir: &Path) {
    wait_status(port, child, dir, "\"status\":\"running\"", "compute not running");
}

/// Stops compute_ctl (and so Postgres) and removes the directory, even on a panic.
pub struct Guard {
    pub child: std::process::Child,
    pub dir: PathBuf,
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

/// The binary under test without building it: `$COMPUTE_CTL_BIN`, else compute_ctl in the
/// target directory of this bench's profile.
pub fn built_compute_ctl_binary() -> PathBuf {
    let bin = match std::env::var_os("COMPUTE_CTL_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("the example knows its path");
            exe.parent().and_then(Path::parent).map(|d| d.join("compute_ctl")).expect("target/<profile>/examples/..")
        }
    };
    assert!(bin.exists(), "{} is missing: run `cargo build --release` first", bin.display());
    bin
}

/// A fresh `$TMPDIR/NAME-PID` with a `sock` directory Postgres may write to.
pub fn bench_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sock")).unwrap();
    chmod(&dir, 0o755);
    chmod(&dir.join("sock"), 0o777);
    dir
}

/// compute_ctl on `dir/pgdata` with the spec at `spec`, Postgres on 127.0.0.1:`pg_port`,
/// [`compute_ctl_args`], and its output in `dir/compute.log`; the caller adds the rest.
pub fn compute_ctl_command(bin: &Path, dir: &Path, pg_port: u16, spec: &Path) -> Command {
    let log = std::fs::File::create(dir.join("compute.log")).unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(["-D", dir.join("pgdata").to_str().unwrap(), "-C"])
        .arg(format!("postgresql://cloud_admin@127.0.0.1:{pg_port}/postgres"))
        .args(compute_ctl_args())
        .args(["-S", spec.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    cmd
}

/// Starts [`compute_ctl_command`] with its HTTP server on `http_port` and waits until the
/// compute is `running`; the returned guard stops it.
pub fn start_running(bin: &Path, dir: &Path, pg_port: u16, spec: &Path, http_port: u16) -> Guard {
    let child = compute_ctl_command(bin, dir, pg_port, spec).arg("--http-port").arg(http_port.to_string()).spawn();
    let mut guard = Guard { child: child.unwrap(), dir: dir.to_path_buf() };
    wait_running(http_port, &mut guard.child, dir);
    guard
}

/// A connection to 127.0.0.1:`port` whose reads give up after `read_timeout`.
pub fn connect(port: u16, read_timeout: Duration) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(read_timeout)).unwrap();
    s
}

/// Runs `client` on `n` threads at once and waits for them all; what each returned, and the
/// total the clients added to the counter they share (errors, bytes: the caller's choice).
pub fn run_clients<T, F>(n: usize, client: F) -> (Vec<T>, u64)
where
    T: Send + 'static,
    F: Fn(&std::sync::atomic::AtomicU64) -> T + Send + Sync + 'static,
{
    use std::sync::atomic::{AtomicU64, Ordering};
    let shared = std::sync::Arc::new((client, AtomicU64::new(0)));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let shared = shared.clone();
            std::thread::spawn(move || (shared.0)(&shared.1))
        })
        .collect();
    let results = threads.into_iter().map(|t| t.join().unwrap()).collect();
    (results, shared.1.load(Ordering::SeqCst))
}
