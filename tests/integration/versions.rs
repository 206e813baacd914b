//! What differs between PostgreSQL majors (the README's "PostgreSQL versions" table): every
//! statement the catalog apply chooses by major, shown to work on the major it is chosen for,
//! and the same spec giving the same result everywhere else. These run on whichever Postgres
//! `COMPUTE_CTL_TEST_PG_BIN` names; `.ci/run` runs them on 15, 16 and 18.

use crate::catalog::{Cat, role};
use crate::support::{self, http};
use serde_json::{Value, json};

fn major() -> u32 {
    support::pg_major()
}

/// The server's message of a failed statement (`postgres::Error` displays only "db error").
fn message(e: &postgres::Error) -> String {
    e.as_db_error().map(|d| format!("{}: {}", d.message(), d.detail().unwrap_or_default())).unwrap_or(e.to_string())
}

/// Runs `sql` as a spec role, panicking with the server's message.
fn ok(c: &mut postgres::Client, sql: &str) {
    c.batch_execute(sql).unwrap_or_else(|e| panic!("{sql} on {}: {}", major(), message(&e)));
}

/// Roles `neon_superuser` is a direct member of.
fn privileged_memberships(pg: &mut postgres::Client) -> Vec<String> {
    pg.query(
        "SELECT r.rolname::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid \
         JOIN pg_roles s ON s.oid = m.member WHERE s.rolname = 'neon_superuser' ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The statements compute_ctl's apply sent while `f` ran (Postgres logs DDL with the
/// application name).
fn apply_ddl(cat: &mut Cat, f: impl FnOnce(&mut Cat)) -> Vec<String> {
    cat.ddl_during(f).into_iter().filter(|l| l.contains("app=compute_ctl:apply_config")).collect()
}

/// A spec role whose password is `NAME-pw` (an md5 verifier: md5 of the password followed by
/// the name), since only compute_ctl's own superuser logs in without one.
fn role_pw(name: &str) -> Value {
    let hash = match name {
        "app" => "c05a0a9da47b2e1b9979e572d10ca3f5",
        "a" => "60a47caeea6a59e4afbbb1c28e5b7ab4",
        "b" => "3763212e0ba5b97914ff3cb99fcd831b",
        other => panic!("no password hash for {other}"),
    };
    role(name, Some(hash))
}

/// Connects as a spec role made by [`role_pw`], with its password.
fn connect_as(port: u16, name: &str, db: &str) -> postgres::Client {
    postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(name)
        .password(format!("{name}-pw"))
        .dbname(db)
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect as {name} to 127.0.0.1:{port}/{db}: {e}"))
}

#[test]
fn privileged_role_gets_the_predefined_roles_of_its_major() {
    let mut cat = Cat::start("ver-predef", |spec| {
        spec["cluster"]["roles"] = json!([role_pw("app")]);
        spec["cluster"]["databases"] = json!([{"name": "appdb", "owner": "app", "options": null}]);
    });
    let mut pg = cat.db("postgres");
    let mut want = vec!["pg_read_all_data", "pg_write_all_data"];
    if major() >= 16 {
        want.push("pg_create_subscription");
    }
    if major() >= 17 {
        want.push("pg_maintain");
    }
    // The migrations (running in the background) add others (pg_monitor, pg_signal_backend).
    let got = privileged_memberships(&mut pg);
    assert!(want.iter().all(|w| got.iter().any(|g| g == w)), "{got:?} lacks some of {want:?}");
    assert_eq!(got.iter().any(|g| g == "pg_maintain"), major() >= 17, "{got:?}");

    // 16+: a spec role subscribes without being a superuser (15 lets only superusers).
    let mut app = connect_as(cat.s.pg_port, "app", "appdb");
    let created = app.batch_execute(
        "CREATE SUBSCRIPTION s CONNECTION 'host=127.0.0.1 port=1 dbname=postgres user=app password=x' \
         PUBLICATION p WITH (connect = false)",
    );
    if major() >= 16 {
        created.unwrap_or_else(|e| panic!("CREATE SUBSCRIPTION as a spec role on {}: {}", major(), message(&e)));
        ok(&mut app, "ALTER SUBSCRIPTION s SET (slot_name = NONE)");
        ok(&mut app, "DROP SUBSCRIPTION s");
    } else {
        let e = message(&created.expect_err("only a superuser subscribes on 15"));
        assert!(e.contains("superuser"), "{e}");
    }

    // 17+: MAINTAIN on a table the spec role does not own (health_check is the admin's).
    if major() >= 17 {
        let ok: bool =
            pg.query_one("SELECT has_table_privilege('app', 'public.health_check', 'MAINTAIN')", &[]).unwrap().get(0);
        assert!(ok, "app lacks MAINTAIN on health_check on {}", major());
    } else {
        let n: i64 = pg.query_one("SELECT count(*) FROM pg_roles WHERE rolname = 'pg_maintain'", &[]).unwrap().get(0);
        assert_eq!(n, 0, "pg_maintain exists before 17?");
    }

    // The memberships are read back: the same spec again sends no DDL.
    let spec = cat.spec();
    let ddl = apply_ddl(&mut cat, |c| c.configure_ok(&spec));
    assert!(ddl.is_empty(), "{ddl:#?}");
}

#[test]
fn roles_a_deleted_spec_role_created_stay_manageable_by_the_spec_roles() {
    let mut cat = Cat::start("ver-admin", |spec| {
        spec["cluster"]["roles"] = json!([role_pw("a"), role_pw("b")]);
    });
    let port = cat.s.pg_port;
    let mut a = connect_as(port, "a", "postgres");
    ok(&mut a, "CREATE ROLE made_by_a LOGIN");
    // A role the privileged role creates is managed by all its members, on every major (16+:
    // neon_superuser holds the ADMIN OPTION on what it creates).
    ok(&mut a, "SET ROLE neon_superuser; CREATE ROLE made_by_priv; RESET ROLE");
    let mut b = connect_as(port, "b", "postgres");
    ok(&mut b, "ALTER ROLE made_by_priv CONNECTION LIMIT 2");
    ok(&mut b, "DROP ROLE made_by_priv");

    // 16+: CREATEROLE alone no longer lets b manage a's roles; 15 does.
    let early = b.batch_execute("ALTER ROLE made_by_a CONNECTION LIMIT 1");
    if major() >= 16 {
        let e = message(&early.expect_err("16+ needs the ADMIN OPTION"));
        assert!(e.contains("permission denied"), "{e}");
    } else {
        early.unwrap();
    }
    drop(a);

    let mut spec = cat.spec();
    spec["cluster"]["roles"] = json!([role_pw("b")]);
    spec["delta_operations"] = json!([{"action": "delete_role", "name": "a"}]);
    let ddl = apply_ddl(&mut cat, |c| c.configure_ok(&spec));
    let handed: Vec<&String> = ddl.iter().filter(|l| l.contains("WITH ADMIN TRUE")).collect();
    assert_eq!(handed.len(), usize::from(major() >= 16), "{ddl:#?}");

    // Once a is gone, b manages what a created, as CREATEROLE alone allowed before 16.
    ok(&mut b, "ALTER ROLE made_by_a CONNECTION LIMIT 3");
    ok(&mut b, "DROP ROLE made_by_a");
    let ddl = apply_ddl(&mut cat, |c| c.configure_ok(&spec));
    assert!(ddl.is_empty(), "{ddl:#?}");
}

fn builtin_locale_db() -> Value {
    json!({"name": "builtin_db", "owner": "o", "options": [
        {"name": "LOCALE_PROVIDER", "value": "builtin", "vartype": "enum"},
        {"name": "BUILTIN_LOCALE", "value": "C", "vartype": "string"},
        {"name": "TEMPLATE", "value": "template0", "vartype": "enum"}
    ]})
}

#[test]
fn create_database_options_of_a_later_major_are_refused_by_name() {
    let mut cat = Cat::start("ver-dbopt", |spec| {
        spec["cluster"]["roles"] = json!([role("o", None)]);
    });
    let mut spec = cat.spec();
    spec["cluster"]["databases"] = json!([builtin_locale_db()]);
    let r = cat.configure(&spec);
    let mut pg = cat.db("postgres");
    let n: i64 = pg.query_one("SELECT count(*) FROM pg_database WHERE datname = 'builtin_db'", &[]).unwrap().get(0);
    if major() >= 17 {
        assert_eq!(r.status, 200, "{}\n{}", r.text(), cat.c.log_text());
        let provider: i8 =
            pg.query_one("SELECT datlocprovider FROM pg_database WHERE datname = 'builtin_db'", &[]).unwrap().get(0);
        assert_eq!(provider as u8, b'b');
        let ddl = apply_ddl(&mut cat, |c| c.configure_ok(&spec));
        assert!(ddl.is_empty(), "{ddl:#?}");
    } else {
        assert_eq!(r.status, 500, "{}", r.text());
        let err = r.json()["error"].as_str().unwrap().to_string();
        let want = format!("needs PostgreSQL 17 or later; this server runs PostgreSQL {}", major());
        assert!(err.contains("LOCALE_PROVIDER builtin") && err.contains(&want), "{err}");
        assert!(err.contains("builtin_db"), "{err}");
        assert_eq!(n, 0);
    }
}

#[test]
fn md5_verifiers_keep_working_and_are_warned_about_from_18() {
    let hash = "0123456789abcdef0123456789abcdef";
    let mut cat = Cat::start("ver-md5", |spec| {
        spec["cluster"]["roles"] = json!([role("old_md5", Some(hash))]);
    });
    let mut pg = cat.db("postgres");
    let stored: String =
        pg.query_one("SELECT rolpassword FROM pg_authid WHERE rolname = 'old_md5'", &[]).unwrap().get(0);
    assert_eq!(stored, format!("md5{hash}"));
    let log = cat.c.log_text();
    let warned = log.contains("md5 password verifiers are deprecated") && log.contains("old_md5");
    assert_eq!(warned, major() >= 18, "{log}");
    let spec = cat.spec();
    let ddl = apply_ddl(&mut cat, |c| c.configure_ok(&spec));
    assert!(ddl.is_empty(), "{ddl:#?}");
    // The /dbs_and_roles answer never carries the hash, whatever the major.
    let r = http::get(cat.s.http_port, "/dbs_and_roles");
    assert_eq!(r.status, 200);
    assert!(!r.text().contains(hash), "{}", r.text());
    assert!(r.json()["roles"].as_array().unwrap().iter().any(|x| x["name"] == "old_md5"), "{}", r.text());
}
