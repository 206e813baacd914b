//! Shared fixtures: a template PGDATA made by `initdb` once per test run and copied per test,
//! free loopback ports, a running compute_ctl child that is stopped by pid on drop, and a raw
//! HTTP client.
#![allow(dead_code)]

pub mod agent;
pub mod cgexec;
pub mod endpoint_storage;
pub mod http;
pub mod pageserver;
pub mod publisher;
pub mod rsyslogd;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_compute_ctl");
/// Debian's PostgreSQL 15: the default, and what pageserver-mode and basebackup tests always use.
pub const PG15_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The environment variable naming the bin directory of the Postgres the tests run
/// (`.ci/run` sets it to each major of the version matrix).
pub const PG_BIN_ENV: &str = "COMPUTE_CTL_TEST_PG_BIN";
pub const SUPERUSER: &str = "cloud_admin";
pub const TENANT: &str = "b0554b632bd4d547a63b86c3630317e8";
pub const TIMELINE: &str = "2414a61ffc94e428f14b5758fe308e13";

/// The bin directory of the Postgres under test: `$COMPUTE_CTL_TEST_PG_BIN`, else Debian's 15.
/// The wheels' builds find their libraries through their RPATH, so no library path is set.
pub fn pg_bin_dir() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| match std::env::var(PG_BIN_ENV) {
        Ok(d) if !d.trim().is_empty() => d.trim().trim_end_matches('/').to_string(),
        _ => PG15_BIN_DIR.to_string(),
    })
}

/// The major version of the Postgres under test, from `postgres --version`.
pub fn pg_major() -> u32 {
    static MAJOR: OnceLock<u32> = OnceLock::new();
    *MAJOR.get_or_init(|| {
        let out = Command::new(format!("{}/postgres", pg_bin_dir()))
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("{PG_BIN_ENV}: cannot run {}/postgres: {e}", pg_bin_dir()));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // "postgres (PostgreSQL) 16.2"
        text.split_whitespace()
            .last()
            .and_then(|v| v.split(['.', 'b', 'r', 'd']).next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("{PG_BIN_ENV}: cannot read a version from {text:?}"))
    })
}

/// True when the test must be skipped because it needs PostgreSQL `major` (pageserver mode and
/// basebackups: the storage stand-ins serve what Debian's 15 makes); prints the skip by name so
/// it is never a silent pass.
pub fn skip_unless_major(major: u32, test: &str) -> bool {
    if pg_major() == major {
        return false;
    }
    skipped(&format!("{test}: needs PostgreSQL {major}, this run uses {} ({})", pg_major(), pg_bin_dir()));
    true
}

/// True (after printing the skip by name) when the Postgres under test lacks extension `ext`
/// (the 16.2 wheel ships no contrib modules).
pub fn skip_without_extension(ext: &str, test: &str) -> bool {
    let control = Command::new(format!("{}/pg_config", pg_bin_dir()))
        .arg("--sharedir")
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join(format!("extension/{ext}.control")));
    if control.as_deref().is_some_and(Path::exists) {
        return false;
    }
    skipped(&format!("{test}: PostgreSQL {} at {} has no extension {ext}", pg_major(), pg_bin_dir()));
    true
}

/// Prints `SKIPPED: what` where it is always seen: straight to the process's stdout, which
/// the test harness does not capture (it captures only the print macros).
pub fn skipped(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "SKIPPED: {what}");
}

pub fn pgbin() -> String {
    format!("{}/postgres", pg_bin_dir())
}

pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// uid and gid of the `postgres` OS user (Postgres runs as it when the tests run as root).
pub fn postgres_ids() -> (u32, u32) {
    let text = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = text.lines().find(|l| l.starts_with("postgres:")).expect("the postgres OS user exists");
    let f: Vec<&str> = line.split(':').collect();
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

/// Runs `cmd` as the postgres user when we are root.
pub fn as_pg_user(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if is_root() {
        let (u, g) = postgres_ids();
        cmd.uid(u).gid(g);
    }
    cmd
}

/// Gives `path` (one entry) to the postgres user when we are root.
pub fn give_to_pg(path: &Path) {
    if is_root() {
        let (u, g) = postgres_ids();
        std::os::unix::fs::chown(path, Some(u), Some(g)).unwrap();
    }
}

static ROOT: OnceLock<PathBuf> = OnceLock::new();
static PANICKED: AtomicBool = AtomicBool::new(false);

/// The root of this test run's directories: one per test process, removed when the process
/// exits after a run in which nothing panicked (kept for a look otherwise, and then removed by
/// the next run once this process is gone).
fn run_root() -> &'static Path {
    ROOT.get_or_init(|| {
        let base = std::env::temp_dir().join("compute_ctl-tests");
        std::fs::create_dir_all(&base).unwrap();
        set_mode(&base, 0o755);
        // Leftovers of earlier runs whose process is gone.
        for e in std::fs::read_dir(&base).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("run-").and_then(|p| p.parse::<u32>().ok())
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let root = base.join(format!("run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        set_mode(&root, 0o755);
        remove_on_clean_exit();
        root
    })
}

/// Arranges for the run root to be removed at process exit unless a panic (a failed test, or
/// a failing helper thread) happened. The test harness has no end-of-run hook, so this uses
/// `atexit`, which runs both when the harness returns from `main` and when it calls `exit`.
fn remove_on_clean_exit() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::SeqCst);
        previous(info)
    }));
    extern "C" fn at_exit() {
        if !PANICKED.load(Ordering::SeqCst)
            && let Some(root) = ROOT.get()
        {
            let _ = std::fs::remove_dir_all(root);
        }
    }
    // SAFETY: `at_exit` is a plain `extern "C" fn()` that touches only statics and the file
    // system; registering it has no other precondition.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::atexit(at_exit) };
    assert_eq!(rc, 0, "atexit registration");
}

pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A PGDATA made by `initdb` once per test run (superuser `cloud_admin`, trust auth).
pub fn template_pgdata() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = run_root().join("template");
        std::fs::create_dir_all(&dir).unwrap();
        give_to_pg(&dir);
        set_mode(&dir, 0o700);
        let out = as_pg_user(Command::new(format!("{}/initdb", pg_bin_dir())).arg("-D").arg(&dir).args([
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--auth=trust",
            "--no-sync",
        ]))
        .output()
        .unwrap();
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

/// A fresh directory for one test, removed on drop.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = run_root().join(format!("{name}-{}", N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        set_mode(&path, 0o755);
        TestDir { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }

    /// A copy of the template PGDATA at `name` (milliseconds, unlike initdb).
    pub fn pgdata_copy(&self, name: &str) -> PathBuf {
        let dst = self.path.join(name);
        let st = Command::new("cp").arg("-a").arg(template_pgdata()).arg(&dst).status().unwrap();
        assert!(st.success());
        dst
    }

    /// A directory the postgres user can write (for Unix sockets).
    pub fn socket_dir(&self) -> PathBuf {
        let p = self.path.join("sock");
        std::fs::create_dir_all(&p).unwrap();
        set_mode(&p, 0o777);
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A loopback port nobody listens on right now, with `port + 1` free too (HTTP servers use
/// both). Ports come from 10000-32767, below the kernel's ephemeral range (32768-60999), so a
/// port we checked cannot be handed to someone's outgoing connection before we bind it. Each
/// port is claimed with an exclusive lock on `/tmp/compute_ctl-test-ports/PORT`, held until this
/// test process exits (the kernel drops it even on SIGKILL), so parallel test binaries and runs
/// never pick the same port; binding checks that nothing else uses it.
pub fn free_port() -> u16 {
    const LOW: usize = 10000;
    const HIGH: usize = 32767;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = Path::new("/tmp/compute_ctl-test-ports");
    std::fs::create_dir_all(dir).unwrap();
    let span = (HIGH - LOW) / 2;
    let start = (std::process::id() as usize * 97) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (LOW + 2 * ((start + n) % span)) as u16;
        let Some(lock) = claim_port(dir, port) else { continue };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok()
        {
            HELD.lock().unwrap().push(lock);
            return port;
        }
    }
    panic!("no free port pair in {LOW}-{HIGH}");
}

/// An exclusive, non-blocking lock on the lock file of `port`; `None` when another process
/// holds it.
fn claim_port(dir: &Path, port: u16) -> Option<std::fs::File> {
    let f =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(port.to_string())).ok()?;
    f.try_lock().ok()?;
    Some(f)
}

/// A minimal local-mode spec for Postgres on `pg_port` with its socket in `sock`.
pub fn local_spec(pg_port: u16, sock: &Path) -> serde_json::Value {
    serde_json::json!({
        "format_version": 1.0,
        "tenant_id": TENANT,
        "timeline_id": TIMELINE,
        "cluster": {
            "roles": [],
            "databases": [],
            "settings": [
                {"name": "port", "value": pg_port.to_string(), "vartype": "integer"},
                {"name": "listen_addresses", "value": "127.0.0.1", "vartype": "string"},
                {"name": "unix_socket_directories", "value": sock.to_str().unwrap(), "vartype": "string"},
                {"name": "max_connections", "value": "30", "vartype": "integer"},
                {"name": "shared_buffers", "value": "16MB", "vartype": "string"},
                {"name": "fsync", "value": "off", "vartype": "bool"}
            ]
        }
    })
}

pub fn connstr(pg_port: u16) -> String {
    format!("postgresql://{SUPERUSER}@127.0.0.1:{pg_port}/postgres")
}

/// Everything a test needs to run one compute: its directory, ports, PGDATA path and spec.
pub struct Setup {
    pub dir: TestDir,
    pub pgdata: PathBuf,
    pub pg_port: u16,
    pub http_port: u16,
    pub spec: serde_json::Value,
}

impl Setup {
    /// PGDATA copied from the template.
    pub fn new(name: &str) -> Setup {
        let dir = TestDir::new(name);
        let pgdata = dir.pgdata_copy("pgdata");
        Setup::with_pgdata(dir, pgdata)
    }

    /// PGDATA path that does not exist yet.
    pub fn empty(name: &str) -> Setup {
        let dir = TestDir::new(name);
        let pgdata = dir.join("pgdata");
        Setup::with_pgdata(dir, pgdata)
    }

    pub fn with_pgdata(dir: TestDir, pgdata: PathBuf) -> Setup {
        let pg_port = free_port();
        let http_port = free_port();
        let spec = local_spec(pg_port, &dir.socket_dir());
        Setup { dir, pgdata, pg_port, http_port, spec }
    }

    pub fn connstr(&self) -> String {
        connstr(self.pg_port)
    }

    /// Writes the spec to a file and returns the standard arguments with `-S`.
    pub fn args(&self) -> Vec<String> {
        let spec_path = self.dir.join("spec.json");
        std::fs::write(&spec_path, serde_json::to_vec_pretty(&self.spec).unwrap()).unwrap();
        let mut a = self.base_args();
        a.extend(["-S".into(), spec_path.to_str().unwrap().into()]);
        a
    }

    /// The arguments without a spec source.
    pub fn base_args(&self) -> Vec<String> {
        vec![
            "-D".into(),
            self.pgdata.to_str().unwrap().into(),
            "-C".into(),
            self.connstr(),
            "-b".into(),
            pgbin(),
            "--http-port".into(),
            self.http_port.to_string(),
            "--http-bind".into(),
            "127.0.0.1".into(),
            "--exit-delay".into(),
            "0".into(),
        ]
    }

    pub fn spawn(&self) -> Compute {
        Compute::spawn(&self.args(), self.http_port)
    }

    pub fn client(&self) -> postgres::Client {
        pg_client(self.pg_port, "postgres")
    }

    pub fn setting(&mut self, name: &str, value: &str, vartype: &str) {
        let settings = self.spec["cluster"]["settings"].as_array_mut().unwrap();
        settings.retain(|s| s["name"] != name);
        settings.push(serde_json::json!({"name": name, "value": value, "vartype": vartype}));
    }
}

pub fn pg_client(port: u16, db: &str) -> postgres::Client {
    pg_client_as(port, SUPERUSER, db)
}

/// Connects over TCP to 127.0.0.1 as `user` with `password`; the error when refused.
pub fn pg_connect_with_password(port: u16, user: &str, password: &str) -> Result<postgres::Client, postgres::Error> {
    postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5))
        .connect(postgres::NoTls)
}

pub fn pg_client_as(port: u16, user: &str, db: &str) -> postgres::Client {
    postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname(db)
        .connect_timeout(Duration::from_secs(5))
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect as {user} to 127.0.0.1:{port}/{db}: {e}"))
}

/// A compute_ctl child process; killed (SIGKILL, so Postgres gets its parent-death signal) on
/// drop if still running, and waited for.
pub struct Compute {
    pub child: Option<Child>,
    pub http_port: u16,
    pub log: PathBuf,
}

static LOG_N: AtomicUsize = AtomicUsize::new(0);

impl Compute {
    pub fn spawn(args: &[String], http_port: u16) -> Compute {
        Compute::spawn_env(args, http_port, &[])
    }

    /// With extra environment variables (`AUTOSCALING`, say).
    pub fn spawn_env(args: &[String], http_port: u16, env: &[(&str, &str)]) -> Compute {
        let log = run_root().join(format!("compute-{}.log", LOG_N.fetch_add(1, Ordering::SeqCst)));
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(args).envs(env.iter().copied()).stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f);
        Compute { child: Some(cmd.spawn().unwrap()), http_port, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let r = http::request(self.http_port, "GET", "/status", &[], b"").ok()?;
        serde_json::from_slice(&r.body).ok()
    }

    /// Polls `/status` until it says `want`, failing on `failed` (unless wanted) or exit.
    pub fn wait_status(&mut self, want: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status() {
                if s["status"] == want {
                    return s;
                }
                if s["status"] == "failed" && want != "failed" {
                    panic!("compute failed: {s}\nlog:\n{}", self.log_text());
                }
            }
            if let Some(st) = self.try_wait() {
                panic!("compute_ctl exited ({st}) before {want}; log:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "no status {want} in {timeout:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_running(&mut self) -> serde_json::Value {
        self.wait_status("running", Duration::from_secs(30))
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().unwrap()
    }

    /// Waits for compute_ctl to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "compute_ctl still running after {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().unwrap();
        assert!(st.success());
    }
}

impl Drop for Compute {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take()
            && c.try_wait().ok().flatten().is_none()
        {
            {
                let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The pid in `PGDATA/postmaster.pid`, if any.
pub fn postmaster_pid(pgdata: &Path) -> Option<u32> {
    std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
}

/// True while a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Waits until `pid` is gone.
pub fn wait_pid_gone(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still alive after {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `pg_controldata` on PGDATA and returns the "Database cluster state" line's value.
pub fn cluster_state(pgdata: &Path) -> String {
    let out = Command::new(format!("{}/pg_controldata", pg_bin_dir())).arg(pgdata).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("Database cluster state:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no cluster state in pg_controldata output: {text}"))
}

/// A snapshot of every file under `dir` (path, bytes), to prove a directory was untouched.
pub fn tree_snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

/// Polls `f` every 20 ms until it returns Some, at most `timeout`; panics naming `what`.
pub fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids whose parent is `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}
