//! Regressions from trying to break signal handling (issue 17).

use crate::support::{self, Setup};
use std::time::{Duration, Instant};

/// Regression: SIGHUP killed compute_ctl (exit 129, no log line) when it was not PID 1, and
/// Postgres crash-stopped through its parent-death signal.
#[test]
fn sighup_is_forwarded_to_postgres_as_a_reload() {
    let s = Setup::new("faults-sighup");
    let mut c = s.spawn();
    c.wait_running();
    let pid = support::postmaster_pid(&s.pgdata).unwrap();
    std::fs::write(s.pgdata.join("compute_ctl_temp_override.conf"), "work_mem = '5555kB'\n").unwrap();
    c.signal("HUP");
    let mut client = s.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.query_one("SHOW work_mem", &[]).unwrap().get::<_, String>(0) != "5555kB" {
        assert!(c.try_wait().is_none(), "compute_ctl exited on SIGHUP; log:\n{}", c.log_text());
        assert!(Instant::now() < deadline, "postgres did not reload; log:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(c.log_text().contains("received SIGHUP: reloading the configuration of postgres"));
    assert_eq!(c.status().unwrap()["status"], "running");
    assert_eq!(support::postmaster_pid(&s.pgdata), Some(pid));
}

/// Regression: SIGTERM during initdb waited for initdb to finish (6.8 s).
#[test]
fn sigterm_during_initdb_kills_it_and_leaves_no_pgdata() {
    let s = Setup::empty("faults-sigterm-initdb");
    let mut c = s.spawn();
    let parent = s.pgdata.parent().unwrap().to_path_buf();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Wait until initdb has begun writing its sibling directory.
    loop {
        let started = std::fs::read_dir(&parent).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with(".pgdata.initdb-") && e.path().join("global").exists()
        });
        if started {
            break;
        }
        assert!(c.try_wait().is_none() && Instant::now() < deadline, "initdb never started:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(2));
    }
    c.signal("TERM");
    assert!(!c.wait_exit(Duration::from_secs(30)).success());
    // Had compute_ctl waited for initdb, the finished PGDATA would be in place.
    assert!(!s.pgdata.exists(), "initdb ran to the end after SIGTERM; log:\n{}", c.log_text());
    assert!(c.log_text().contains("interrupted: killing initdb"), "{}", c.log_text());
}

fn many_databases(spec: &mut serde_json::Value, n: usize) {
    let roles: Vec<_> = (0..n).map(|i| serde_json::json!({"name": format!("sig_role_{i}")})).collect();
    let dbs: Vec<_> =
        (0..n).map(|i| serde_json::json!({"name": format!("sig_db_{i}"), "owner": format!("sig_role_{i}")})).collect();
    spec["cluster"]["roles"] = serde_json::json!(roles);
    spec["cluster"]["databases"] = serde_json::json!(dbs);
}

/// Counts `sig_db_*` databases, or None once Postgres no longer answers.
fn sig_dbs(port: u16) -> Option<i64> {
    let mut c = postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(support::SUPERUSER)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(2))
        .connect(postgres::NoTls)
        .ok()?;
    c.query_one("SELECT count(*) FROM pg_database WHERE datname LIKE 'sig_db_%'", &[]).ok().map(|r| r.get(0))
}

/// Regression: SIGTERM 1.6 s into a long catalog apply at start was handled only after the
/// apply finished, and `/status` said `running` after the signal.
#[test]
fn sigterm_during_the_start_apply_stops_it_and_never_reports_running() {
    let mut s = Setup::new("faults-sigterm-apply");
    many_databases(&mut s.spec, 60);
    let mut c = s.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sig_dbs(s.pg_port).unwrap_or(0) < 2 {
        assert!(c.try_wait().is_none() && Instant::now() < deadline, "the apply never began:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(5));
    }
    c.signal("TERM");
    let mut statuses = Vec::new();
    while c.try_wait().is_none() {
        if let Some(st) = c.status() {
            statuses.push(st["status"].as_str().unwrap_or("").to_string());
        }
        assert!(Instant::now() < deadline, "compute_ctl did not exit; log:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!statuses.iter().any(|s| s == "running" || s == "failed"), "{statuses:?}");
    // The apply stopped where it was: not all databases were made.
    s.spec["skip_pg_catalog_updates"] = serde_json::json!(true);
    let mut c2 = s.spawn();
    c2.wait_running();
    let made = sig_dbs(s.pg_port).unwrap();
    assert!(made < 60, "the apply ran to the end after SIGTERM ({made} databases)");
}

/// Regression: SIGTERM during a live `/configure` answered the waiting client 200 with
/// `termination_pending` in the body.
#[test]
fn sigterm_during_a_live_configure_answers_it_non_2xx() {
    let s = Setup::new("faults-sigterm-configure");
    let mut c = s.spawn();
    c.wait_running();
    let mut spec = s.spec.clone();
    many_databases(&mut spec, 60);
    let port = s.http_port;
    let client = std::thread::spawn(move || {
        crate::support::http::post_json(
            port,
            "/configure",
            &serde_json::json!({"spec": spec, "compute_ctl_config": {}}),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while sig_dbs(s.pg_port).unwrap_or(0) < 2 {
        assert!(!client.is_finished() && Instant::now() < deadline, "the apply never began:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(5));
    }
    c.signal("TERM");
    let r = client.join().unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("terminating"), "{}", r.text());
    assert!(!c.wait_exit(Duration::from_secs(30)).success());
}
