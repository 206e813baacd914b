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
