//! Regressions from trying to break the configuration path (issue 17): a `/configure` whose
//! `postgresql.conf` cannot be parsed, restart-only settings with invalid values, and spec
//! roles that would weaken compute_ctl's own superuser or `neon_superuser`.

use crate::support::{Setup, http};
use serde_json::{Value, json};
use std::time::Duration;

fn configure(s: &Setup, spec: &Value) -> http::Response {
    http::post_json(s.http_port, "/configure", &json!({"spec": spec, "compute_ctl_config": {}}))
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
        let err = r.error();
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
    let err = r.error();
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

fn role_flags(s: &Setup, name: &str) -> (bool, bool, Option<String>) {
    let row = s
        .client()
        .query_one("SELECT rolsuper, rolcanlogin, rolpassword FROM pg_authid WHERE rolname = $1", &[&name])
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Regression: a spec role `cloud_admin` with `NOSUPERUSER` stripped compute_ctl's own
/// superuser (every later start failed), and a spec role `neon_superuser` became a login role.
#[test]
fn spec_roles_never_weaken_the_superuser_or_neon_superuser() {
    let mut s = Setup::new("faults-superuser");
    let conf = s.pgdata.join("postgresql.conf");
    let before = std::fs::read(&conf).unwrap();
    let good = s.spec.clone();
    s.spec["cluster"]["roles"] =
        json!([{"name": "cloud_admin", "options": [{"name": "NOSUPERUSER", "vartype": "bool"}]}]);
    let mut c = s.spawn();
    assert!(!c.wait_exit(Duration::from_secs(30)).success());
    let log = c.log_text();
    assert!(log.contains("NOSUPERUSER would take superuser away from \"cloud_admin\""), "{log}");
    assert_eq!(std::fs::read(&conf).unwrap(), before, "postgresql.conf written before the refusal");

    // Listed with a password (as Neon's docker-compose does): the password is applied, the
    // superuser stays; a neon_superuser entry is ignored.
    s.spec = good;
    s.spec["cluster"]["roles"] = json!([
        {"name": "cloud_admin", "encrypted_password": "b093c0d3b281ba6da1eacc608620abd8"},
        {"name": "neon_superuser", "encrypted_password": "b093c0d3b281ba6da1eacc608620abd8"}
    ]);
    for _ in 0..2 {
        let mut c = s.spawn();
        c.wait_running();
        let (sup, login, pw) = role_flags(&s, "cloud_admin");
        assert!(sup && login, "cloud_admin lost superuser or login");
        assert_eq!(pw.as_deref(), Some("md5b093c0d3b281ba6da1eacc608620abd8"));
        let (sup, login, pw) = role_flags(&s, "neon_superuser");
        assert!(!sup && !login && pw.is_none(), "neon_superuser was altered");
        // Live: refused with the option named, nothing changed.
        let mut bad = s.spec.clone();
        bad["cluster"]["roles"][0]["options"] = json!([{"name": "NOLOGIN", "vartype": "bool"}]);
        let r = configure(&s, &bad);
        assert_eq!(r.status, 500, "{}", r.text());
        assert!(r.error().contains("NOLOGIN"), "{}", r.text());
        assert!(role_flags(&s, "cloud_admin").1);
        c.signal("TERM");
        c.wait_exit(Duration::from_secs(30));
    }
}

/// Regression: concurrent `/configure` calls were answered 200 with a body saying
/// `configuration_pending` (the next request's state, read after the owner moved on).
#[test]
fn concurrent_configures_answer_200_only_with_the_state_they_left() {
    let s = Setup::new("faults-concurrent-configure");
    let mut c = s.spawn();
    c.wait_running();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let mut spec = s.spec.clone();
            spec["cluster"]["roles"] = json!([{"name": format!("concurrent_{i}")}]);
            let port = s.http_port;
            std::thread::spawn(move || {
                http::post_json(port, "/configure", &json!({"spec": spec, "compute_ctl_config": {}}))
            })
        })
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert!(r.status == 200 || r.status == 412, "{} {}", r.status, r.text());
        if r.status == 200 {
            assert_eq!(r.json()["status"], "running", "{}", r.text());
        }
    }
}
