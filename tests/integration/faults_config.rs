//! Regressions from trying to break the configuration path (issue 17): a `/configure` whose
//! `postgresql.conf` cannot be parsed, restart-only settings with invalid values, and spec
//! roles that would weaken compute_ctl's own superuser or `neon_superuser`.

use crate::support::{Setup, http};
use serde_json::{Value, json};
use std::time::Duration;

fn configure(s: &Setup, spec: &Value) -> http::Response {
    http::post_json(s.http_port, "/configure", &json!({"spec": spec, "compute_ctl_config": {}}))
}

fn error_of(r: &http::Response) -> String {
    r.json()["error"].as_str().unwrap_or_else(|| panic!("no error field: {}", r.text())).to_string()
}

/// Regression: `pg_file_settings` has a NULL `name` for a file-level error, and reading it
/// with `Row::get` panicked the main thread: compute_ctl exited 101 and Postgres stopped.
#[test]
fn a_file_level_error_in_a_live_configure_is_refused_and_postgres_keeps_serving() {
    let s = Setup::new("faults-file-error");
    let mut c = s.spawn();
    c.wait_running();
    let conf = s.pgdata.join("postgresql.conf");
    let before = std::fs::read(&conf).unwrap();
    let mut syntax = s.spec.clone();
    syntax["cluster"]["postgresql_conf"] = json!("foo = = bar\n");
    let mut include = s.spec.clone();
    include["cluster"]["settings"].as_array_mut().unwrap().push(json!(
        {"name": "include", "value": "/nonexistent/compute_ctl.conf", "vartype": "string"}));
    for (spec, needle) in [(syntax, "syntax error"), (include, "/nonexistent/compute_ctl.conf")] {
        let r = configure(&s, &spec);
        assert_eq!(r.status, 500, "{}\nlog:\n{}", r.text(), c.log_text());
        let err = error_of(&r);
        assert!(err.contains(needle), "{err}");
        assert!(c.try_wait().is_none(), "compute_ctl exited; log:\n{}", c.log_text());
        assert_eq!(std::fs::read(&conf).unwrap(), before, "postgresql.conf was not put back");
        let one: i32 = s.client().query_one("SELECT 1", &[]).unwrap().get(0);
        assert_eq!(one, 1);
        assert_eq!(c.status().unwrap()["status"], "failed");
    }
    // A corrected spec brings it back.
    let r = configure(&s, &s.spec);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "running");
}

/// Regression: `shared_buffers = 'abc'` was taken for a pending restart, answered 200 and
/// left in `postgresql.conf`, so the next start failed.
#[test]
fn an_invalid_value_of_a_restart_only_setting_is_refused_live() {
    let mut s = Setup::new("faults-restart-only");
    let mut c = s.spawn();
    c.wait_running();
    let conf = s.pgdata.join("postgresql.conf");
    let before = std::fs::read(&conf).unwrap();
    let good = s.spec.clone();
    s.setting("shared_buffers", "abc", "string");
    let r = configure(&s, &s.spec);
    assert_eq!(r.status, 500, "{}", r.text());
    let err = error_of(&r);
    assert!(err.contains("shared_buffers"), "{err}");
    assert_eq!(std::fs::read(&conf).unwrap(), before, "postgresql.conf was not put back");
    // A valid restart-only change is still accepted (it waits for the next start).
    s.spec = good;
    s.setting("shared_buffers", "24MB", "string");
    let r = configure(&s, &s.spec);
    assert_eq!(r.status, 200, "{}", r.text());
    drop(c);
    let mut c = s.spawn();
    c.wait_running();
    let v: String = s.client().query_one("SHOW shared_buffers", &[]).unwrap().get(0);
    assert_eq!(v, "24MB");
}
