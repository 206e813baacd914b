//! Pageserver mode end to end: a stand-in pageserver serves a basebackup made by
//! `pg_basebackup -Ft -X fetch` from a real Postgres, and a `postgres` wrapper stands in for
//! `--sync-safekeepers`.
//!
//! These run on PostgreSQL 15 only (Neon's storage protocol is per version, and the stand-ins
//! serve what Debian's 15 `pg_basebackup` makes): on another version of the matrix each test
//! prints that it is skipped, by name.

use crate::support::cgexec::{self, Cgexec};
use crate::support::pageserver::{Faults, StandIn, Wrapper};
use crate::support::{self, Compute, PG15_BIN_DIR as PGBIN_DIR, Setup, TENANT, TIMELINE, TestDir, http};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub(crate) const TOKEN: &str = "storage-token-42";
pub(crate) const SYNC_LSN: &str = "0/169AD58";
pub(crate) const SOURCE_ROW: &str = "hello from the source";

/// `base.tar` of a real Postgres holding table `from_source`, made once per test run.
pub(crate) fn fixture_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        // Kept for the whole run (a static is never dropped); the next run removes it.
        let dir = Box::leak(Box::new(TestDir::new("bb-source")));
        let pgdata = dir.pgdata_copy("src");
        let sock = dir.socket_dir();
        let port = support::free_port();
        let mut pg = support::as_pg_user(Command::new(format!("{PGBIN_DIR}/postgres")).arg("-D").arg(&pgdata).args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            &format!("unix_socket_directories={}", sock.display()),
            "-c",
            "fsync=off",
            // A standby refuses to run with fewer connections than its primary had.
            "-c",
            "max_connections=30",
        ]))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut db = loop {
            let c = postgres::Config::new()
                .host("127.0.0.1")
                .port(port)
                .user(support::SUPERUSER)
                .dbname("postgres")
                .connect(postgres::NoTls);
            match c {
                Ok(c) => break c,
                Err(e) => assert!(Instant::now() < deadline, "source postgres did not start: {e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        db.batch_execute(&format!(
            "CREATE TABLE from_source (x text); INSERT INTO from_source VALUES ('{SOURCE_ROW}')"
        ))
        .unwrap();
        let out = dir.join("backup");
        let st = Command::new(format!("{PGBIN_DIR}/pg_basebackup"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", support::SUPERUSER])
            .arg("-D")
            .arg(&out)
            .args(["-Ft", "-X", "fetch", "-c", "fast", "--no-manifest", "--no-sync"])
            .status()
            .unwrap();
        assert!(st.success(), "pg_basebackup failed");
        drop(db);
        support::as_pg_user(Command::new("kill").args(["-INT", &pg.id().to_string()])).status().unwrap();
        pg.wait().unwrap();
        out.join("base.tar")
    })
}

/// A compute in pageserver mode: its stand-in pageserver and `postgres` wrapper.
pub(crate) struct Neon {
    pub(crate) s: Setup,
    pub(crate) ps: StandIn,
    pub(crate) wrapper: Wrapper,
    env: Vec<(String, String)>,
    /// Appended to compute_ctl's arguments.
    extra_args: Vec<String>,
}

impl Neon {
    /// PGDATA starts as a copy of the template (so the test can see it wiped).
    pub(crate) fn new(name: &str, mode: serde_json::Value) -> Neon {
        let mut s = Setup::new(name);
        let ps = StandIn::start(true);
        ps.add_tar(TENANT, TIMELINE, fixture_tar());
        let wrapper = Wrapper::new(&s.dir.path, PGBIN_DIR, SYNC_LSN);
        s.spec["mode"] = mode;
        s.spec["pageserver_connstring"] = ps.connstr().into();
        s.spec["safekeeper_connstrings"] = serde_json::json!(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        s.spec["storage_auth_token"] = TOKEN.into();
        Neon { s, ps, wrapper, env: Vec::new(), extra_args: Vec::new() }
    }

    pub(crate) fn retries(&mut self, n: u32) {
        self.env.push(("NEON_COMPUTE_TESTING_BASEBACKUP_RETRIES".into(), n.to_string()));
    }

    /// compute_ctl with `-b` pointing at the wrapper; `exit_delay` keeps a failed start's
    /// `/status` readable.
    pub(crate) fn spawn(&self, exit_delay: u32) -> Compute {
        let mut args = self.s.args();
        let b = args.iter().position(|a| a == "-b").unwrap();
        args[b + 1] = self.wrapper.bin.to_str().unwrap().into();
        let d = args.iter().position(|a| a == "--exit-delay").unwrap();
        args[d + 1] = exit_delay.to_string();
        args.extend(self.extra_args.iter().cloned());
        let log = self.s.dir.join(&format!("compute-{}.log", self.ps.seen().connections));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(support::BIN)
            .args(&args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        Compute { child: Some(child), http_port: self.s.http_port, log }
    }

    fn command(&self, tail: &str) -> String {
        format!("basebackup {TENANT} {TIMELINE}{tail}")
    }

    pub(crate) fn source_row(&self) -> String {
        self.s.client().query_one("SELECT x FROM from_source", &[]).unwrap().get(0)
    }

    /// Waits for `failed`, checks Postgres never started, and returns the error.
    fn expect_failed(&self, c: &mut Compute) -> String {
        let status = c.wait_status("failed", Duration::from_secs(60));
        let err = status["error"].as_str().unwrap().to_string();
        assert!(!c.log_text().contains("started postgres"), "postgres was started:\n{}", c.log_text());
        assert!(!self.s.pgdata.exists(), "a PGDATA was left at {}", self.s.pgdata.display());
        assert!(!self.s.dir.join(".pgdata.basebackup").exists(), "the staging directory was left behind");
        c.signal("TERM");
        c.wait_exit(Duration::from_secs(20));
        err
    }
}

fn metrics(port: u16) -> serde_json::Value {
    let r = http::request(port, "GET", "/metrics.json", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn primary_starts_from_the_basebackup_and_every_restart_is_fresh() {
    if support::skip_unless_major(15, "storage::primary_starts_from_the_basebackup_and_every_restart_is_fresh") {
        return;
    }
    let n = Neon::new("ps-primary", "Primary".into());
    std::fs::write(n.s.pgdata.join("stale-before-start"), b"x").unwrap();
    let mut c = n.spawn(0);
    c.wait_running();
    assert_eq!(n.source_row(), SOURCE_ROW);
    let seen = n.ps.seen();
    assert_eq!(seen.queries, vec![n.command(&format!(" {SYNC_LSN}"))]);
    assert_eq!(seen.passwords, vec![TOKEN.to_string()]);
    assert_eq!(seen.users, vec!["no_user".to_string()]);
    let syncs = n.wrapper.sync_calls();
    assert_eq!(syncs.len(), 1, "{syncs:?}");
    assert!(syncs[0].ends_with(&format!("token={TOKEN}")), "{syncs:?}");

    // What was there before is gone; the files of a started PGDATA are in place.
    let pgdata = &n.s.pgdata;
    assert!(!pgdata.join("stale-before-start").exists());
    assert!(!pgdata.join("standby.signal").exists());
    let hba = std::fs::read_to_string(pgdata.join("pg_hba.conf")).unwrap();
    assert_eq!(hba.lines().filter(|l| *l == "host\tall\t\tall\t\tall\t\tmd5").count(), 1);
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(pgdata).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        if support::is_root() {
            let (uid, _) = support::postgres_ids();
            assert_eq!(meta.uid(), uid);
            assert_eq!(std::fs::metadata(pgdata.join("base")).unwrap().uid(), uid);
        }
    }
    let m = metrics(n.s.http_port);
    let tar_len = std::fs::metadata(fixture_tar()).unwrap().len();
    assert_eq!(m["basebackup_bytes"], tar_len, "{m}");
    assert!(m["pageserver_connect_micros"].as_u64().unwrap() > 0, "{m}");
    assert!(m["total_startup_ms"].as_u64().unwrap() >= m["basebackup_ms"].as_u64().unwrap(), "{m}");

    // Changes made while running, and a file dropped into PGDATA, do not survive a restart.
    n.s.client().batch_execute("CREATE TABLE written_locally (x int)").unwrap();
    std::fs::write(pgdata.join("dropped-in"), b"x").unwrap();
    let r = http::request(n.s.http_port, "POST", "/terminate", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert!(c.wait_exit(Duration::from_secs(30)).success(), "{}", c.log_text());
    // The Primary synced its safekeepers again after Postgres exited.
    assert_eq!(n.wrapper.sync_calls().len(), 2, "{}", c.log_text());

    n.wrapper.set_lsn("0/2000028");
    let mut c = n.spawn(0);
    c.wait_running();
    assert!(!pgdata.join("dropped-in").exists());
    assert_eq!(n.source_row(), SOURCE_ROW);
    let gone = n.s.client().query_opt("SELECT 1 FROM pg_class WHERE relname = 'written_locally'", &[]).unwrap();
    assert!(gone.is_none(), "a table written before the restart survived");
    assert_eq!(n.ps.seen().queries.last().unwrap(), &n.command(" 0/2000028"));
}

fn read_only_mode(name: &str, mode: serde_json::Value, tail: &str) {
    let n = Neon::new(name, mode);
    let mut c = n.spawn(0);
    c.wait_running();
    assert_eq!(n.ps.seen().queries, vec![n.command(tail)]);
    assert!(n.s.pgdata.join("standby.signal").exists());
    let in_recovery: bool = n.s.client().query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(in_recovery);
    assert_eq!(n.source_row(), SOURCE_ROW);
    assert!(n.wrapper.sync_calls().is_empty(), "a read-only compute ran --sync-safekeepers");
    c.signal("TERM");
    c.wait_exit(Duration::from_secs(30));
    assert!(n.wrapper.sync_calls().is_empty(), "a read-only compute synced on shutdown");
}

#[test]
fn static_asks_for_its_lsn_as_a_replica() {
    if support::skip_unless_major(15, "storage::static_asks_for_its_lsn_as_a_replica") {
        return;
    }
    // Far beyond the WAL the backup holds: recovery waits there, open for reads.
    read_only_mode("ps-static", serde_json::json!({"Static": "FF/0"}), " FF/0 --replica");
}

#[test]
fn replica_asks_for_the_latest_lsn() {
    if support::skip_unless_major(15, "storage::replica_asks_for_the_latest_lsn") {
        return;
    }
    read_only_mode("ps-replica", "Replica".into(), " --replica");
}

#[test]
fn first_failed_connections_are_retried() {
    if support::skip_unless_major(15, "storage::first_failed_connections_are_retried") {
        return;
    }
    let n = Neon::new("ps-retry", "Replica".into());
    n.ps.set_faults(Faults { fail_first: 3, ..Faults::default() });
    let mut c = n.spawn(0);
    c.wait_running();
    assert_eq!(n.ps.seen().connections, 4);
    let log = c.log_text();
    assert!(log.contains("basebackup try 3 of 11 failed") && log.contains("stand-in: refusing connection 3"), "{log}");
    assert_eq!(n.source_row(), SOURCE_ROW);
}

#[test]
fn a_cut_stream_fails_the_start_after_the_retries() {
    if support::skip_unless_major(15, "storage::a_cut_stream_fails_the_start_after_the_retries") {
        return;
    }
    let mut n = Neon::new("ps-cut", "Replica".into());
    n.retries(1);
    n.ps.set_faults(Faults { cut_at: Some(300_000), ..Faults::default() });
    let mut c = n.spawn(60);
    let err = n.expect_failed(&mut c);
    assert!(err.contains("failed to get basebackup@latest") && err.contains("after 2 tries"), "{err}");
    assert_eq!(n.ps.seen().connections, 2);
}

#[test]
fn an_error_mid_stream_fails_the_start_with_its_text() {
    if support::skip_unless_major(15, "storage::an_error_mid_stream_fails_the_start_with_its_text") {
        return;
    }
    let mut n = Neon::new("ps-midstream", "Replica".into());
    n.retries(0);
    n.ps.set_faults(Faults { error_at: Some(300_000), ..Faults::default() });
    let mut c = n.spawn(60);
    let err = n.expect_failed(&mut c);
    assert!(err.contains("stand-in: injected failure in the middle of the basebackup"), "{err}");
}

/// One tar entry with any name (the `tar` builder refuses the ones tested here).
fn raw_entry(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

#[test]
fn tar_entries_outside_pgdata_write_nothing_there() {
    if support::skip_unless_major(15, "storage::tar_entries_outside_pgdata_write_nothing_there") {
        return;
    }
    let mut n = Neon::new("ps-evil", "Replica".into());
    n.retries(0);
    let outside_rel = n.s.dir.join("escaped-relative");
    let outside_abs = n.s.dir.join("escaped-absolute");
    for (i, name) in ["../escaped-relative", outside_abs.to_str().unwrap()].into_iter().enumerate() {
        let tar = n.s.dir.join(&format!("evil-{i}.tar"));
        let mut bytes = raw_entry("PG_VERSION", b"15\n");
        bytes.extend(raw_entry(name, b"evil"));
        bytes.extend([0u8; 1024]);
        std::fs::write(&tar, bytes).unwrap();
        n.ps.add_tar(TENANT, TIMELINE, &tar);
        let mut c = n.spawn(60);
        let err = n.expect_failed(&mut c);
        assert!(err.contains("refusing tar entry") && err.contains(name), "{err}");
        assert!(!outside_rel.exists() && !outside_abs.exists(), "an entry was written outside PGDATA");
    }
}

#[test]
fn sync_failure_fails_the_start_with_its_output() {
    if support::skip_unless_major(15, "storage::sync_failure_fails_the_start_with_its_output") {
        return;
    }
    let n = Neon::new("ps-syncfail", "Primary".into());
    n.wrapper.fail_with("no quorum of safekeepers answered");
    let mut c = n.spawn(60);
    let err = n.expect_failed(&mut c);
    assert!(err.contains("failed to sync safekeepers") && err.contains("exited with code 3"), "{err}");
    assert!(err.contains("no quorum of safekeepers answered") && err.contains("giving up"), "{err}");
    assert!(n.ps.seen().queries.is_empty(), "a basebackup was fetched without an LSN");
}

#[test]
fn a_hanging_sync_is_stopped_by_sigterm_and_dies_with_a_killed_compute_ctl() {
    if support::skip_unless_major(
        15,
        "storage::a_hanging_sync_is_stopped_by_sigterm_and_dies_with_a_killed_compute_ctl",
    ) {
        return;
    }
    let n = Neon::new("ps-synchang", "Primary".into());
    n.wrapper.hang();
    for signal in ["TERM", "KILL"] {
        std::fs::remove_file(n.s.dir.join("sync-ctl/sync.pid")).ok();
        let mut c = n.spawn(0);
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid = loop {
            if let Some(p) = n.wrapper.sync_pid() {
                break p;
            }
            assert!(Instant::now() < deadline, "sync never started; log:\n{}", c.log_text());
            std::thread::sleep(Duration::from_millis(10));
        };
        c.signal(signal);
        assert!(!c.wait_exit(Duration::from_secs(10)).success());
        support::wait_pid_gone(pid, Duration::from_secs(10));
        assert!(n.ps.seen().queries.is_empty());
    }
}

/// Regression (issue 17): SIGTERM during a basebackup the pageserver stopped sending waited
/// for the stream, which never came.
#[test]
fn sigterm_interrupts_a_stalled_basebackup() {
    let n = Neon::new("ps-stall", "Replica".into());
    n.ps.set_faults(Faults { stall_at: Some(100_000), ..Faults::default() });
    let mut c = n.spawn(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while n.ps.stalled() == 0 {
        assert!(Instant::now() < deadline, "the basebackup never stalled; log:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    c.signal("TERM");
    assert!(!c.wait_exit(Duration::from_secs(10)).success(), "log:\n{}", c.log_text());
    assert!(c.log_text().contains("interrupted"), "{}", c.log_text());
}

#[test]
fn restart_in_pageserver_mode_is_refused_and_postgres_is_left_alone() {
    if support::skip_unless_major(15, "storage::restart_in_pageserver_mode_is_refused_and_postgres_is_left_alone") {
        return;
    }
    let n = Neon::new("ps-restart", "Primary".into());
    let mut c = n.spawn(0);
    c.wait_running();
    let pm = support::postmaster_pid(&n.s.pgdata).unwrap();
    let syncs = n.wrapper.sync_calls().len();
    let r = http::request(n.s.http_port, "POST", "/restart", &[], b"").unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("the control plane must restart the compute"), "{}", r.text());
    assert_eq!(support::postmaster_pid(&n.s.pgdata), Some(pm), "postgres was not stopped");
    assert_eq!(c.status().unwrap()["status"], "running");
    assert_eq!(n.source_row(), SOURCE_ROW, "postgres still serves");
    assert_eq!(n.wrapper.sync_calls().len(), syncs, "no safekeeper sync ran");
    assert!(!c.log_text().contains("pre-stop checkpoint done"), "nothing of a stop ran:\n{}", c.log_text());
    c.signal("TERM");
    c.wait_exit(Duration::from_secs(30));
}

#[test]
fn sigterm_of_a_running_primary_syncs_safekeepers_after_postgres_exits() {
    if support::skip_unless_major(15, "storage::sigterm_of_a_running_primary_syncs_safekeepers_after_postgres_exits") {
        return;
    }
    let n = Neon::new("ps-sigterm", "Primary".into());
    let mut c = n.spawn(0);
    c.wait_running();
    let pm = support::postmaster_pid(&n.s.pgdata).unwrap();
    c.signal("TERM");
    assert!(!c.wait_exit(Duration::from_secs(30)).success());
    assert!(!support::pid_alive(pm));
    let calls = n.wrapper.sync_calls();
    assert_eq!(calls.len(), 2, "{calls:?}\n{}", c.log_text());
    let log = c.log_text();
    let (exited, synced) = (log.find("exited:").unwrap(), log.find("syncing safekeepers on shutdown").unwrap());
    assert!(exited < synced, "the shutdown sync ran before postgres exited:\n{log}");
}

/// With AUTOSCALING and `cgexec` on `PATH`, a Primary's `--sync-safekeepers` (at start and
/// after Postgres stops) and its postmaster all run through `cgexec -g memory:neon-postgres`,
/// as Neon's wrapper runs them.
#[test]
fn with_autoscaling_sync_safekeepers_and_postgres_run_through_cgexec() {
    if support::skip_unless_major(15, "storage::with_autoscaling_sync_safekeepers_and_postgres_run_through_cgexec") {
        return;
    }
    let mut n = Neon::new("ps-cgexec", "Primary".into());
    let root = n.s.dir.join("cgroup-root");
    let cgroup = cgexec::imitation_cgroup(&root, "neon-postgres");
    let cg = Cgexec::new(&n.s.dir.path, &root);
    n.env.extend([("AUTOSCALING".into(), "1".into()), ("PATH".into(), cg.path())]);
    let vm = format!("127.0.0.1:{}", support::free_port());
    n.extra_args.extend(["--cgroup-root".into(), root.to_str().unwrap().into(), "--vm-monitor-addr".into(), vm]);
    let mut c = n.spawn(0);
    c.wait_running();
    assert_eq!(n.source_row(), SOURCE_ROW);
    let wrapper = n.wrapper.bin.to_str().unwrap().to_string();
    let via = |tail: &[&str]| {
        let mut v = vec!["-g".to_string(), "memory:neon-postgres".into(), wrapper.clone()];
        v.extend(tail.iter().map(|a| a.to_string()));
        v
    };
    let sync = via(&["--sync-safekeepers"]);
    let postmaster = via(&["-D", n.s.pgdata.to_str().unwrap()]);
    assert_eq!(cg.calls(), vec![sync.clone(), postmaster.clone()]);
    assert_eq!(n.wrapper.sync_calls().len(), 1);
    let pid = support::postmaster_pid(&n.s.pgdata).unwrap();
    let members = cgexec::members(&cgroup);
    assert_eq!(members.len(), 2, "{members:?}");
    assert_eq!(members[1], pid, "{members:?}");

    let r = http::request(n.s.http_port, "POST", "/terminate", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert!(c.wait_exit(Duration::from_secs(30)).success(), "{}", c.log_text());
    assert_eq!(cg.calls(), vec![sync.clone(), postmaster, sync]);
    assert_eq!(n.wrapper.sync_calls().len(), 2);
    assert_eq!(cgexec::members(&cgroup).len(), 3);
}

#[test]
fn a_directory_that_is_not_a_pgdata_is_not_wiped() {
    if support::skip_unless_major(15, "storage::a_directory_that_is_not_a_pgdata_is_not_wiped") {
        return;
    }
    let n = Neon::new("ps-notpgdata", "Replica".into());
    std::fs::remove_dir_all(&n.s.pgdata).unwrap();
    std::fs::create_dir(&n.s.pgdata).unwrap();
    std::fs::write(n.s.pgdata.join("precious"), b"someone's file").unwrap();
    let mut c = n.spawn(60);
    let status = c.wait_status("failed", Duration::from_secs(30));
    let err = status["error"].as_str().unwrap();
    assert!(err.contains("not a PGDATA") && err.contains(n.s.pgdata.to_str().unwrap()), "{err}");
    assert_eq!(std::fs::read(n.s.pgdata.join("precious")).unwrap(), b"someone's file");
    assert_eq!(n.ps.seen().connections, 0);
    c.signal("TERM");
    c.wait_exit(Duration::from_secs(20));
}
