//! Today's Neon (2026): termination statuses and bodies, `/promote`, `/refresh_configuration`,
//! `/extension_server`, the LFC routes and `/autoscaling_metrics`, against a real Postgres.

use crate::support::http;
use crate::support::{self, Compute, Setup};
use std::time::{Duration, Instant};

fn error_of(r: &http::Response) -> String {
    r.json()["error"].as_str().unwrap_or_else(|| panic!("no error field: {}", r.text())).to_string()
}

/// Polls `f` until it returns Some, at most `timeout`.
fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A compute whose fast shutdown takes a moment: the archiver must archive a finished WAL
/// segment with a command that sleeps first, so the pending status can be seen. `/status`
/// is answered for 60 s after a termination that lingers.
fn slow_to_stop(name: &str) -> (Setup, Compute) {
    let mut s = Setup::new(name);
    s.setting("archive_mode", "on", "enum");
    s.setting("archive_command", "sleep 1.5", "string");
    let mut args = s.args();
    let n = args.iter().position(|a| a == "--exit-delay").unwrap();
    args[n + 1] = "60".into();
    let mut c = Compute::spawn(&args, s.http_port);
    c.wait_running();
    s.client().batch_execute("CREATE TABLE w (x int); INSERT INTO w VALUES (1); SELECT pg_switch_wal()").unwrap();
    (s, c)
}

/// Sends `/terminate?mode=MODE` and checks the pending status while it runs, then the 200
/// `{"lsn"}` answer and a clean fast shutdown of Postgres; returns the LSN.
fn terminate_watching(s: &Setup, c: &Compute, mode: &str, pending: &str) -> String {
    let port = s.http_port;
    let path = format!("/terminate?mode={mode}");
    let req = std::thread::spawn(move || http::request(port, "POST", &path, &[], b"").unwrap());
    poll(Duration::from_secs(20), pending, || (c.status()?["status"] == pending).then_some(()));
    let r = req.join().unwrap();
    assert_eq!(r.status, 200, "{mode}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let lsn = r.json()["lsn"].as_str().unwrap_or_else(|| panic!("{mode}: no lsn in {}", r.text())).to_string();
    assert_eq!(support::cluster_state(&s.pgdata), "shut down", "{mode} stops Postgres with a fast shutdown");
    lsn
}

/// `fast`: `termination_pending_fast`, then `/status` stays for --exit-delay and a repeated
/// `/terminate` is 201 with the same body.
#[test]
fn terminate_fast_reports_its_status_and_repeats_its_body() {
    let (s, mut c) = slow_to_stop("term-fast");
    let lsn = terminate_watching(&s, &c, "fast", "termination_pending_fast");
    assert_eq!(c.status().unwrap()["status"], "terminated");
    let r = http::request(s.http_port, "POST", "/terminate?mode=immediate", &[], b"").unwrap();
    assert_eq!((r.status, r.json()), (201, serde_json::json!({ "lsn": lsn })));
    let r = http::request(s.http_port, "POST", "/check_writability", &[], b"").unwrap();
    assert_eq!((r.status, error_of(&r).as_str()), (412, "invalid compute status: terminated"));
    c.signal("TERM");
    c.wait_exit(Duration::from_secs(20));
}

/// `immediate`: `termination_pending_immediate`, the same fast shutdown, and the process
/// exits without waiting out the 60 s --exit-delay.
#[test]
fn terminate_immediate_reports_its_status_and_exits_without_the_exit_delay() {
    let (s, mut c) = slow_to_stop("term-immediate");
    terminate_watching(&s, &c, "immediate", "termination_pending_immediate");
    assert_eq!(c.wait_exit(Duration::from_secs(20)).code(), Some(0));
}
