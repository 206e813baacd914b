//! `compute_ctl plan`: against a compute whose catalog already matches (empty plan, exit 0) and
//! one that needs work (the exact statements, exit 2, nothing changed), with Postgres logging
//! every statement to prove that the plan only reads; then the apply of the same spec runs
//! exactly what the plan printed.

use crate::support::{self, BIN, Compute, Setup, http};
use serde_json::{Value, json};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn start(name: &str) -> (Setup, Compute) {
    let mut s = Setup::new(name);
    s.setting("log_statement", "all", "enum");
    s.setting("log_line_prefix", "%m [%p] app=%a db=%d ", "string");
    s.spec["cluster"]["roles"] =
        json!([{"name": "alice", "encrypted_password": "0123456789abcdef0123456789abcdef", "options": null}]);
    s.spec["cluster"]["databases"] = json!([{"name": "appdb", "owner": "alice", "options": null}]);
    let mut c = s.spawn();
    c.wait_running();
    (s, c)
}

fn plan(s: &Setup, spec: &Value) -> Output {
    let path = s.dir.join("plan-spec.json");
    std::fs::write(&path, serde_json::to_vec(spec).unwrap()).unwrap();
    Command::new(BIN).args(["plan", "-C", &s.connstr(), "-S", path.to_str().unwrap()]).output().unwrap()
}

/// Waits until the compute's log (Postgres logs there too) contains `needle`.
fn wait_log(c: &Compute, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = c.log_text();
        if log.contains(needle) {
            return log;
        }
        assert!(Instant::now() < deadline, "{needle:?} never logged:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A statement of our own, to know that every line logged before it is in the log.
fn marker(s: &Setup, c: &Compute, name: &str) -> String {
    let m = format!("plan_marker_{name}_{}", std::process::id());
    s.client().batch_execute(&format!("SELECT '{m}'")).unwrap();
    wait_log(c, &m)
}

/// What Postgres logged for an application name: (database, statement text). A statement
/// logged over several lines continues on lines that start with a tab.
fn logged_in(log: &str, app: &str) -> Vec<(String, String)> {
    let tag = format!("app={app} db=");
    let mut out: Vec<(String, String)> = Vec::new();
    let mut open = false;
    for line in log.lines() {
        let line = line.strip_prefix("PG: ").unwrap_or(line);
        if let Some(more) = line.strip_prefix('\t') {
            if open && let Some(last) = out.last_mut() {
                last.1 = format!("{} {}", last.1, more.trim()).trim().to_string();
            }
            continue;
        }
        open = false;
        let Some((_, rest)) = line.split_once(&tag) else { continue };
        let Some((db, m)) = rest.split_once(" LOG:  ") else { continue };
        let sql = match m.strip_prefix("statement: ") {
            Some(sql) => sql,
            None => match m.strip_prefix("execute ").and_then(|e| e.split_once(": ")) {
                Some((_, sql)) => sql,
                None => continue,
            },
        };
        out.push((db.to_string(), sql.trim().to_string()));
        open = true;
    }
    out
}

fn logged(log: &str, app: &str) -> Vec<String> {
    logged_in(log, app).into_iter().map(|(_, s)| s).collect()
}

fn assert_only_reads(log: &str) {
    let stmts = logged(log, "compute_ctl:plan");
    assert!(!stmts.is_empty(), "the plan's catalog reads were not logged:\n{log}");
    for st in &stmts {
        let head = st.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        assert!(head == "SELECT" || head == "WITH", "the plan ran more than a read: {st}");
    }
}

#[test]
fn plan_against_a_matching_catalog_is_empty_and_only_reads() {
    let (s, c) = start("plan-empty");
    let out = plan(&s, &s.spec);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, "-- nothing to run\n");
    assert_only_reads(&marker(&s, &c, "empty"));
}

#[test]
fn plan_prints_the_statements_the_apply_then_runs_and_changes_nothing() {
    let (s, mut c) = start("plan-work");
    let mut pg = s.client();
    // A role the spec no longer names but a delta deletes, owning an object in appdb.
    pg.batch_execute("CREATE ROLE gone LOGIN").unwrap();
    support::pg_client(s.pg_port, "appdb").batch_execute("CREATE SCHEMA gone_s AUTHORIZATION gone").unwrap();
    let snapshot = |pg: &mut postgres::Client| -> Vec<String> {
        let q = "SELECT 'role ' || rolname || ' ' || coalesce(rolpassword, '') FROM pg_authid \
                 UNION ALL SELECT 'db ' || datname || ' ' || pg_get_userbyid(datdba) FROM pg_database ORDER BY 1";
        pg.query(q, &[]).unwrap().iter().map(|r| r.get(0)).collect()
    };
    let before = snapshot(&mut pg);

    let mut spec = s.spec.clone();
    spec["cluster"]["roles"] = json!([
        {"name": "alice", "encrypted_password": "fedcba9876543210fedcba9876543210", "options": null},
        {"name": "bob", "encrypted_password": null, "options": null}
    ]);
    spec["cluster"]["databases"] = json!([
        {"name": "appdb", "owner": "alice", "options": null},
        {"name": "bobdb", "owner": "bob", "options": null}
    ]);
    spec["delta_operations"] = json!([{"action": "delete_role", "name": "gone"}]);
    let out = plan(&s, &spec);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let expected = "\
-- create_and_alter_roles (database \"postgres\")
ALTER ROLE \"alice\" LOGIN PASSWORD <redacted>;
CREATE ROLE \"bob\" INHERIT CREATEROLE CREATEDB BYPASSRLS REPLICATION IN ROLE \"neon_superuser\" LOGIN PASSWORD <redacted>;
-- create_and_alter_databases (database \"postgres\")
CREATE DATABASE \"bobdb\" OWNER \"bob\";
GRANT ALL PRIVILEGES ON DATABASE \"bobdb\" TO \"neon_superuser\";
-- delete_role_references (database \"appdb\")
BEGIN;
LOCK TABLE pg_catalog.pg_shdepend IN SHARE ROW EXCLUSIVE MODE;
REASSIGN OWNED BY \"gone\" TO \"alice\";
DROP OWNED BY \"gone\";
COMMIT;
-- delete_role_references (database \"postgres\")
BEGIN;
LOCK TABLE pg_catalog.pg_shdepend IN SHARE ROW EXCLUSIVE MODE;
REASSIGN OWNED BY \"gone\" TO \"cloud_admin\";
DROP OWNED BY \"gone\";
COMMIT;
-- drop_roles (database \"postgres\")
DROP ROLE IF EXISTS \"gone\";
-- note: database \"bobdb\" is created above; its schema public is planned once it exists
-- 15 statements would run
";
    assert_eq!(stdout, expected);
    let log = marker(&s, &c, "work");
    assert_only_reads(&log);
    assert_eq!(snapshot(&mut pg), before, "the plan changed the catalog");

    // The apply of the same spec runs those statements, database by database in the plan's
    // order (databases are worked on in parallel); the new database's own statements come on
    // top, and the log shows passwords where the plan redacts them.
    let body = json!({"spec": spec, "compute_ctl_config": {"jwks": {"keys": []}}});
    let r = http::post_json(s.http_port, "/configure", &body);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), c.log_text());
    let log = marker(&s, &c, "applied");
    let cut = |st: &str| st.trim_end_matches(';').split(" PASSWORD ").next().unwrap().to_string();
    let plumbing =
        |st: &str| st == "BEGIN" || st == "COMMIT" || st.starts_with("LOCK TABLE") || st.starts_with("BEGIN;");
    let applied: Vec<(String, String)> = logged_in(&log, "compute_ctl:apply_config")
        .into_iter()
        .filter(|(_, st)| !st.starts_with("SELECT") && !st.trim_start().starts_with("WITH") && !plumbing(st))
        .map(|(db, st)| (db, cut(&st)))
        .collect();
    let mut planned: Vec<(String, String)> = Vec::new();
    let mut db = String::new();
    for l in stdout.lines() {
        if let Some(h) = l.strip_prefix("-- ").and_then(|h| h.split_once("(database \"")) {
            db = h.1.trim_end_matches("\")").to_string();
        } else if !l.starts_with("--") && !plumbing(l.trim_end_matches(';')) {
            planned.push((db.clone(), cut(l)));
        }
    }
    assert_eq!(planned.len(), 9, "{planned:#?}");
    for name in ["postgres", "appdb"] {
        let mut rest = applied.iter().filter(|(d, _)| d == name);
        for (_, p) in planned.iter().filter(|(d, _)| d == name) {
            assert!(rest.any(|(_, a)| a == p), "planned {p:?} was not applied in order in {name}: {applied:#?}");
        }
    }
    // Now nothing is left to do.
    let out = plan(&s, &spec);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    drop(pg);
    c.signal("TERM");
    c.wait_exit(Duration::from_secs(30));
}
