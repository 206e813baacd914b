//! The compute lifecycle on a local PGDATA, end to end with a real Postgres.

use crate::support::{self, Setup, http};
use std::time::{Duration, Instant};

#[test]
fn empty_pgdata_is_initialized_and_runs() {
    let s = Setup::empty("initdb");
    let mut c = s.spawn();
    let status = c.wait_running();
    assert_eq!(status["timeline"], support::TIMELINE);
    assert_eq!(status["tenant"], support::TENANT);
    assert!(status["start_time"].as_str().unwrap().ends_with('Z'));
    let mut db = s.client();
    let one: i32 = db.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
    let tl: String = db.query_one("SELECT current_setting('neon.timeline_id')", &[]).unwrap().get(0);
    assert_eq!(tl, support::TIMELINE);
    // Postgres's own lines reach compute_ctl's stderr, prefixed.
    assert!(c.log_text().contains("PG: "), "{}", c.log_text());
    // pg_hba.conf has the md5 line exactly once.
    let hba = std::fs::read_to_string(s.pgdata.join("pg_hba.conf")).unwrap();
    assert_eq!(hba.lines().filter(|l| *l == "host\tall\t\tall\t\tall\t\tmd5").count(), 1);
}

#[test]
fn restart_keeps_data_and_pg_hba_line_once() {
    let s = Setup::new("restart");
    {
        let mut c = s.spawn();
        c.wait_running();
        s.client().batch_execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)").unwrap();
        let r = http::request(s.http_port, "POST", "/terminate", &[], b"").unwrap();
        assert_eq!(r.status, 200);
        assert!(c.wait_exit(Duration::from_secs(20)).success());
    }
    let mut c = s.spawn();
    c.wait_running();
    let x: i32 = s.client().query_one("SELECT x FROM kept", &[]).unwrap().get(0);
    assert_eq!(x, 42);
    let hba = std::fs::read_to_string(s.pgdata.join("pg_hba.conf")).unwrap();
    assert_eq!(hba.lines().filter(|l| *l == "host\tall\t\tall\t\tall\t\tmd5").count(), 1);
}

#[test]
fn sigterm_stops_postgres_cleanly_and_exits_nonzero() {
    let s = Setup::new("sigterm");
    let mut c = s.spawn();
    c.wait_running();
    let pm = support::postmaster_pid(&s.pgdata).unwrap();
    assert!(support::pid_alive(pm));
    c.signal("TERM");
    let st = c.wait_exit(Duration::from_secs(20));
    assert!(!st.success(), "exit status {st}");
    assert!(!support::pid_alive(pm), "postgres {pm} outlived compute_ctl");
    // A fast shutdown leaves a cleanly shut down cluster: no crash recovery next time.
    assert_eq!(support::cluster_state(&s.pgdata), "shut down");
    let mut c = s.spawn();
    c.wait_running();
    assert!(!c.log_text().contains("database system was interrupted"), "{}", c.log_text());
}

#[test]
fn sigkill_of_compute_ctl_leaves_no_orphan_postgres() {
    let s = Setup::new("sigkill");
    let mut c = s.spawn();
    c.wait_running();
    let pm = support::postmaster_pid(&s.pgdata).unwrap();
    c.signal("KILL");
    c.wait_exit(Duration::from_secs(5));
    support::wait_pid_gone(pm, Duration::from_secs(20));
}

#[test]
fn postgres_stopped_from_outside_makes_compute_ctl_exit_with_its_code() {
    let s = Setup::new("pgctlstop");
    let mut c = s.spawn();
    c.wait_running();
    let out = support::as_pg_user(std::process::Command::new(format!("{}/pg_ctl", support::pg_bin_dir())).args([
        "stop",
        "-m",
        "fast",
        "-D",
        s.pgdata.to_str().unwrap(),
    ]))
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st = c.wait_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "log:\n{}", c.log_text());
}

/// Runs compute_ctl with a bad spec on an existing PGDATA: it must exit non-zero quickly,
/// name the problem, and leave every byte of PGDATA as it was.
fn bad_spec_is_refused(name: &str, spec_text: &str, expect: &str) {
    let s = Setup::new(name);
    let before = support::tree_snapshot(&s.pgdata);
    let spec_path = s.dir.join("bad.json");
    std::fs::write(&spec_path, spec_text).unwrap();
    let mut args = s.base_args();
    args.extend(["-S".into(), spec_path.to_str().unwrap().into()]);
    let started = Instant::now();
    let mut c = support::Compute::spawn(&args, s.http_port);
    let st = c.wait_exit(Duration::from_secs(5));
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert!(!st.success());
    let log = c.log_text();
    assert!(log.contains(expect), "expected {expect:?} in:\n{log}");
    assert!(support::tree_snapshot(&s.pgdata) == before, "PGDATA changed");
}

#[test]
fn invalid_json_is_refused_before_touching_pgdata() {
    bad_spec_is_refused("badjson", "{\"format_version\": 1.0, \"cluster\": ", "invalid spec: EOF while parsing");
}

#[test]
fn wrong_typed_field_is_refused_before_touching_pgdata() {
    let mut spec = support::local_spec(1, std::path::Path::new("/tmp"));
    spec["skip_pg_catalog_updates"] = serde_json::json!("yes");
    bad_spec_is_refused("badtype", &spec.to_string(), "invalid type: string \"yes\", expected a boolean");
}

#[test]
fn bad_timeline_is_refused_before_touching_pgdata() {
    let mut spec = support::local_spec(1, std::path::Path::new("/tmp"));
    spec["timeline_id"] = serde_json::json!("xyz");
    bad_spec_is_refused("badtl", &spec.to_string(), "timeline_id: expected 32 hex digits, got \"xyz\"");
}

#[test]
fn postgres_that_cannot_start_reports_failed_then_exits() {
    let s = Setup::new("porttaken");
    // Something else holds the Postgres port.
    let _holder = std::net::TcpListener::bind(("127.0.0.1", s.pg_port)).unwrap();
    let mut args = s.args();
    let i = args.iter().position(|a| a == "--exit-delay").unwrap();
    args[i + 1] = "3".into();
    let mut c = support::Compute::spawn(&args, s.http_port);
    let status = c.wait_status("failed", Duration::from_secs(20));
    let err = status["error"].as_str().unwrap();
    assert!(err.contains("postgres did not start"), "{err}");
    assert!(err.contains("could not bind") || err.contains("Address already in use"), "{err}");
    let st = c.wait_exit(Duration::from_secs(20));
    assert!(!st.success());
    assert!(support::postmaster_pid(&s.pgdata).is_none_or(|p| !support::pid_alive(p)));
}

#[test]
fn hostile_string_settings_round_trip_or_are_refused() {
    let mut s = Setup::new("confescape");
    let nasty = "a'b\\c\nlisten_addresses = '*'\r\td\"e";
    s.setting("test.escaping", nasty, "string");
    let mut c = s.spawn();
    c.wait_running();
    let mut db = s.client();
    let shown: String = db.query_one("SHOW test.escaping", &[]).unwrap().get(0);
    assert_eq!(shown, nasty);
    let listen: String = db.query_one("SHOW listen_addresses", &[]).unwrap().get(0);
    assert_eq!(listen, "127.0.0.1");
    let conf = std::fs::read_to_string(s.pgdata.join("postgresql.conf")).unwrap();
    assert!(!conf.lines().any(|l| l.starts_with("listen_addresses = '*'") || l.starts_with("fsync = on")), "{conf}");

    // A name, or an unquoted value, that could smuggle a line is refused with its field named.
    for (name, value, vartype, expect) in [
        ("x\nfsync", "on", "bool", "not a valid configuration parameter name"),
        ("work_mem", "4MB\nfsync = on", "integer", "of a integer setting contains control characters"),
    ] {
        let mut bad = Setup::new("confescape-bad");
        bad.setting(name, value, vartype);
        let mut c = bad.spawn();
        let st = c.wait_exit(Duration::from_secs(5));
        assert!(!st.success());
        assert!(c.log_text().contains(expect), "{}", c.log_text());
        assert!(support::postmaster_pid(&bad.pgdata).is_none());
    }
}

#[test]
fn a_closed_stderr_does_not_make_compute_ctl_deaf_to_sigterm() {
    let s = Setup::new("epipe");
    let mut child = std::process::Command::new(support::BIN)
        .args(s.args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = support::Compute { child: None, http_port: s.http_port, log: s.dir.join("none.log") };
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.status().is_none_or(|st| st["status"] != "running") {
        assert!(Instant::now() < deadline, "not running");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pm = support::postmaster_pid(&s.pgdata).unwrap();
    // The reader of compute_ctl's stderr goes away (a restarted log shipper, say).
    drop(child.stderr.take());
    // Log lines are now written to a closed pipe; the signal must still be handled.
    let _ = http::get(s.http_port, "/metrics.json");
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    c.child = Some(child);
    let st = c.wait_exit(Duration::from_secs(20));
    assert!(!st.success());
    support::wait_pid_gone(pm, Duration::from_secs(20));
}

#[test]
fn a_second_sigterm_escalates_a_stuck_fast_shutdown_to_immediate() {
    let mut s = Setup::new("escalate");
    // A fast shutdown waits for the archiver, and this archive command never returns: the
    // first SIGTERM starts a shutdown that cannot finish.
    s.setting("archive_mode", "on", "enum");
    // Unique to this test, so the process scan below finds only our archiver's command.
    let command = format!("sleep 600.{}", s.pg_port);
    s.setting("archive_command", &command, "string");
    let mut c = s.spawn();
    c.wait_running();
    let pm = support::postmaster_pid(&s.pgdata).unwrap();
    s.client().batch_execute("CREATE TABLE w (x int); INSERT INTO w VALUES (1); SELECT pg_switch_wal()").unwrap();
    let archiving = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c == format!("{}\0", command.replace(' ', "\0")).as_bytes())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !archiving() {
        assert!(Instant::now() < deadline, "the archiver never ran its command");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.signal("TERM");
    c.wait_status("termination_pending_fast", Duration::from_secs(10));
    assert!(support::pid_alive(pm), "the fast shutdown was expected to hang on the archiver");
    assert!(c.try_wait().is_none());
    c.signal("TERM");
    let st = c.wait_exit(Duration::from_secs(20));
    assert!(!st.success());
    support::wait_pid_gone(pm, Duration::from_secs(10));
    assert!(c.log_text().contains("second signal: immediate shutdown"), "{}", c.log_text());
    // Postgres runs the archiver's last cycle after the shutdown checkpoint, so the hang can
    // come before it ("in production"), during it ("shutting down") or after it ("shut down",
    // likelier now that the pre-stop CHECKPOINT leaves the shutdown checkpoint little to do).
    // What proves the escalation is the log line above and the exit while the archiver still
    // hangs; pg_control must only be in one of those states, never "in crash recovery".
    let state = support::cluster_state(&s.pgdata);
    assert!(
        ["in production", "shutting down", "shut down"].contains(&state.as_str()),
        "an immediate shutdown left {state:?}"
    );
}
