//! Today's Neon interface (issue 13): `-c/--config`, the flags added in 2025,
//! `pageserver_connection_info`, the `neon.*` lines, the privileged role and Neon's numbered
//! migrations, on a real PostgreSQL 15 and the stand-ins.

use crate::storage::{SOURCE_ROW, SYNC_LSN, fixture_tar};
use crate::support::pageserver::{StandIn, Wrapper};
use crate::support::{self, Compute, PG15_BIN_DIR as PGBIN_DIR, Setup, TENANT, TIMELINE, http};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes `{"spec": spec, "compute_ctl_config": ...}` and returns the arguments with `-c`.
fn config_args(s: &Setup, spec: Value) -> Vec<String> {
    let path = s.dir.join("config.json");
    let config = json!({"spec": spec, "compute_ctl_config": {"jwks": {"keys": []}}});
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let mut a = s.base_args();
    a.extend(["-c".into(), path.to_str().unwrap().into()]);
    a
}

fn with_bin(mut args: Vec<String>, bin: &Path) -> Vec<String> {
    let b = args.iter().position(|a| a == "-b").unwrap();
    args[b + 1] = bin.to_str().unwrap().into();
    args
}

fn one<T: for<'a> postgres::types::FromSql<'a>>(c: &mut postgres::Client, sql: &str) -> T {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

fn conf(s: &Setup) -> String {
    std::fs::read_to_string(s.pgdata.join("postgresql.conf")).unwrap()
}

/// The effects of migrations 0001, 0004, 0011 and 0012 on `role`.
fn assert_migrated(c: &mut postgres::Client, role: &str) {
    let q = |what: &str| format!("SELECT {what} FROM pg_catalog.pg_roles WHERE rolname = '{role}'");
    assert!(one::<bool>(c, &q("rolbypassrls")), "0001: {role} has BYPASSRLS");
    for granted in ["pg_monitor", "pg_signal_backend"] {
        let admin: bool = one(
            c,
            &format!(
                "SELECT admin_option FROM pg_catalog.pg_auth_members \
                 WHERE roleid = '{granted}'::regrole AND member = '{role}'::regrole"
            ),
        );
        assert!(admin, "0004/0012: {role} holds {granted} WITH ADMIN OPTION");
    }
    let exec: bool =
        one(c, &format!("SELECT has_function_privilege('{role}', 'pg_show_replication_origin_status()', 'EXECUTE')"));
    assert!(exec, "0011: {role} may execute pg_show_replication_origin_status");
}

fn restart(s: &Setup, c: &mut Compute, args: &[String]) -> Compute {
    let r = http::request(s.http_port, "POST", "/terminate", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", c.log_text());
    assert!(c.wait_exit(Duration::from_secs(30)).success(), "{}", c.log_text());
    let mut c = Compute::spawn(args, s.http_port);
    c.wait_running();
    c
}

#[test]
fn config_file_starts_and_neon_migrations_run_once() {
    let mut s = Setup::new("n26-config");
    s.spec["cluster"]["roles"] = json!([{"name": "alice", "encrypted_password": null, "options": null}]);
    s.spec["suspend_timeout_seconds"] = json!(-1);
    let args = config_args(&s, s.spec.clone());
    let mut c = Compute::spawn(&args, s.http_port);
    c.wait_running();
    let text = conf(&s);
    assert!(text.contains("\nneon.compute_mode=primary\n"), "{text}");
    assert!(text.contains("\nneon.privileged_role_name='neon_superuser'\n"), "{text}");

    let mut db = s.client();
    assert_eq!(one::<i64>(&mut db, "SELECT id FROM neon_migration.migration_id WHERE key = 0"), 12);
    assert_migrated(&mut db, "neon_superuser");
    assert!(one::<bool>(&mut db, "SELECT pg_has_role('alice', 'neon_superuser', 'MEMBER')"));
    // PostgreSQL 15 has neither pg_create_subscription (0003) nor pg_log_standby_snapshot
    // (0010): those two are recorded as skipped, not failed.
    let skipped: Vec<i64> =
        db.query("SELECT id FROM neon_migration.skipped ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(skipped, [3, 10]);
    let log = c.log_text();
    assert!(log.contains("migration 0003-grant_pg_create_subscription_to_privileged_role skipped"), "{log}");
    assert!(log.contains("migration 0012-grant_pg_signal_backend_to_privileged_role applied"), "{log}");
    let metrics = http::get(s.http_port, "/metrics").text();
    assert!(!metrics.contains("compute_ctl_db_migration_failed_total"), "{metrics}");

    // Not re-run after a restart: a grant taken away stays away.
    db.batch_execute("REVOKE pg_monitor FROM neon_superuser").unwrap();
    drop(db);
    let mut c = restart(&s, &mut c, &args);
    assert!(!c.log_text().contains("migration 0"), "{}", c.log_text());
    let mut db = s.client();
    assert!(!one::<bool>(&mut db, "SELECT pg_has_role('neon_superuser', 'pg_monitor', 'MEMBER')"));

    // A cluster whose record says only 0001 ran gets 0002 onwards on the next start: the
    // grant is back, and a role outside the privileged role loses BYPASSRLS (0002).
    db.batch_execute("CREATE ROLE stray BYPASSRLS; UPDATE neon_migration.migration_id SET id = 1").unwrap();
    drop(db);
    let c = restart(&s, &mut c, &args);
    let mut db = s.client();
    assert_eq!(one::<i64>(&mut db, "SELECT id FROM neon_migration.migration_id WHERE key = 0"), 12);
    assert_migrated(&mut db, "neon_superuser");
    assert!(!one::<bool>(&mut db, "SELECT rolbypassrls FROM pg_roles WHERE rolname = 'stray'"), "0002");
    assert!(one::<bool>(&mut db, "SELECT rolbypassrls FROM pg_roles WHERE rolname = 'alice'"), "0002 keeps members");
    drop(c);
}

#[test]
fn null_spec_waits_for_configure_and_todays_flags_apply() {
    let s = Setup::new("n26-null");
    let mut args = config_args(&s, Value::Null);
    args.extend(
        [
            "--privileged-role-name",
            "my_admin",
            "--installed-extensions-collection-interval",
            "1",
            "--dev",
            "--lakebase-mode",
            "false",
            "--pg-init-timeout",
            "5",
            "-r",
            "http://127.0.0.1:1/ext//",
            "-i",
            "compute-n26",
        ]
        .map(String::from),
    );
    let mut c = Compute::spawn(&args, s.http_port);
    c.wait_status("empty", Duration::from_secs(10));
    let log = c.log_text();
    assert!(log.contains("--pg-init-timeout is enforced only in Neon's lakebase mode"), "{log}");

    let mut spec = s.spec.clone();
    spec["cluster"]["roles"] = json!([{"name": "bob", "encrypted_password": null, "options": null}]);
    let r = http::post_json(s.http_port, "/configure", &json!({"spec": spec, "compute_ctl_config": {}}));
    assert_eq!(r.status, 200, "{}", r.text());
    c.wait_running();

    let text = conf(&s);
    assert!(text.contains("\nneon.privileged_role_name='my_admin'\n"), "{text}");
    let mut db = s.client();
    assert!(one::<bool>(&mut db, "SELECT pg_has_role('bob', 'my_admin', 'MEMBER')"));
    assert!(!one::<bool>(&mut db, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'neon_superuser')"));
    assert_migrated(&mut db, "my_admin");

    // Collected again within the interval: an extension created now shows up.
    db.batch_execute("CREATE EXTENSION citext").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = http::get(s.http_port, "/metrics").text();
        if m.contains(r#"compute_installed_extensions{extension_name="citext""#) {
            break;
        }
        assert!(Instant::now() < deadline, "citext never collected:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn skip_pg_catalog_updates_runs_no_migration() {
    let mut s = Setup::new("n26-skip");
    s.spec["skip_pg_catalog_updates"] = json!(true);
    let mut c = Compute::spawn(&config_args(&s, s.spec.clone()), s.http_port);
    c.wait_running();
    let mut db = s.client();
    assert!(!one::<bool>(&mut db, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'neon_migration')"));
}

#[test]
fn bad_new_flags_exit_2_naming_the_flag() {
    let s = Setup::new("n26-flags");
    for (extra, want) in [
        (["--privileged-role-name", "Admin"], "--privileged-role-name"),
        (["-r", "http://gw/x?y=1"], "query"),
        (["--lakebase-mode", "maybe"], "--lakebase-mode"),
    ] {
        let mut args = config_args(&s, s.spec.clone());
        args.extend(extra.map(String::from));
        let mut c = Compute::spawn(&args, s.http_port);
        assert_eq!(c.wait_exit(Duration::from_secs(10)).code(), Some(2));
        assert!(c.log_text().contains(want), "{}", c.log_text());
    }
}

/// A pageserver-mode compute described the 2026 way: `-c`, `pageserver_connection_info`
/// only, and a safekeeper generation.
#[test]
fn pageserver_mode_from_pageserver_connection_info_only() {
    let mut s = Setup::new("n26-psinfo");
    let ps = StandIn::start(false);
    ps.add_tar(TENANT, TIMELINE, fixture_tar());
    let wrapper = Wrapper::new(&s.dir.path, PGBIN_DIR, SYNC_LSN);
    s.spec["pageserver_connection_info"] = json!({
        "shard_count": 0, "stripe_size": null,
        "shards": {"0000": {"pageservers": [{"id": 1, "libpq_url": ps.connstr(), "grpc_url": null}]}}
    });
    s.spec["safekeeper_connstrings"] = json!(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
    s.spec["safekeepers_generation"] = json!(3);
    s.spec["endpoint_id"] = json!("ep-test-1");
    let args = with_bin(config_args(&s, s.spec.clone()), &wrapper.bin);
    let mut c = Compute::spawn(&args, s.http_port);
    c.wait_running();
    let row: String = one(&mut s.client(), "SELECT x FROM from_source");
    assert_eq!(row, SOURCE_ROW, "the data came from the pageserver, not from initdb");
    assert_eq!(ps.seen().queries, vec![format!("basebackup {TENANT} {TIMELINE} {SYNC_LSN}")]);
    let text = conf(&s);
    let storage = format!(
        "# Neon storage settings\n\n# derived from compute spec's pageserver_connection_info field\n\
         neon.pageserver_connstring='{}'\nneon.safekeepers='g#3:127.0.0.1:1,127.0.0.1:2,127.0.0.1:3'\n\
         neon.tenant_id='{TENANT}'\nneon.timeline_id='{TIMELINE}'\nneon.endpoint_id='ep-test-1'\n",
        ps.connstr()
    );
    assert!(text.contains(&storage), "{text}");
    drop(c);
}

/// Storage named but unusable: exit 1 before anything in PGDATA changes, never local mode.
#[test]
fn unusable_storage_fails_before_pgdata_is_touched() {
    let s = Setup::new("n26-bad-storage");
    let before = support::tree_snapshot(&s.pgdata);
    let sk = json!(["127.0.0.1:1"]);
    let url = "postgresql://no_user@127.0.0.1:1";
    for (patch, want) in [
        (
            json!({"pageserver_connection_info": {"shard_count": 2, "stripe_size": 2048,
                "shards": {"0002": {"pageservers": [{"libpq_url": url}]}}}, "safekeeper_connstrings": sk}),
            "shard 0102 missing",
        ),
        (
            json!({"pageserver_connection_info": {"shard_count": 0,
                "shards": {"0000": {"pageservers": [{"grpc_url": "grpc://127.0.0.1:1"}]}}, "prefer_protocol": "grpc"},
                "safekeeper_connstrings": sk}),
            "libpq_url",
        ),
        (
            json!({"pageserver_connection_info": {"shard_count": 0, "shards": {"0000": {"pageservers": []}}},
                "safekeeper_connstrings": sk}),
            "pageservers",
        ),
        (json!({"pageserver_connstring": format!("{url},{url}"), "safekeeper_connstrings": sk}), "no stripe_size"),
        (
            json!({"pageserver_connection_info": {"shard_count": 0,
                "shards": {"0000": {"pageservers": [{"libpq_url": url}]}}},
                "safekeeper_connstrings": ["127.0.0.1:1", "127.0.0.1:1"]}),
            "duplicate entry",
        ),
    ] {
        let mut spec = s.spec.clone();
        for (k, v) in patch.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let mut c = Compute::spawn(&config_args(&s, spec), s.http_port);
        assert_eq!(c.wait_exit(Duration::from_secs(10)).code(), Some(1), "{}", c.log_text());
        assert!(c.log_text().contains(want), "want {want:?}:\n{}", c.log_text());
        assert!(support::tree_snapshot(&s.pgdata) == before, "PGDATA changed");
    }
}

/// Sets `cluster.settings[name]`, adding it when missing; None removes it.
fn set(spec: &mut Value, name: &str, value: Option<&str>) {
    let settings = spec["cluster"]["settings"].as_array_mut().unwrap();
    let vartype = settings.iter().find(|o| o["name"] == name).map_or(json!("string"), |o| o["vartype"].clone());
    settings.retain(|o| o["name"] != name);
    if let Some(v) = value {
        settings.push(json!({"name": name, "value": v, "vartype": vartype}));
    }
}

/// Neon's own files (shared/data, copied into tests/data), started as they are except for
/// what points outside this machine or needs Neon's Postgres: storage entries go to the
/// stand-ins, ports and sockets to the test's, and `neon`, `pg_cron`, `timescaledb` leave
/// `shared_preload_libraries` (vanilla has none of them), as do
/// `synchronous_standby_names = walproposer` (on vanilla every commit would wait for it) and
/// the settings only Neon's Postgres knows, whose names have no dot (vanilla refuses to start
/// with them).
fn start_from_neon_file(name: &str, config: Value) {
    let s = Setup::new(name);
    let ps = StandIn::start(false);
    ps.add_tar(TENANT, TIMELINE, fixture_tar());
    let wrapper = Wrapper::new(&s.dir.path, PGBIN_DIR, SYNC_LSN);
    let mut config = config;
    let spec = &mut config["spec"];
    set(spec, "neon.pageserver_connstring", Some(&ps.connstr()));
    set(spec, "neon.safekeepers", Some("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"));
    set(spec, "port", Some(&s.pg_port.to_string()));
    set(spec, "listen_addresses", Some("127.0.0.1"));
    set(spec, "unix_socket_directories", Some(s.dir.socket_dir().to_str().unwrap()));
    set(spec, "shared_buffers", Some("16MB"));
    set(spec, "shared_preload_libraries", Some("pg_stat_statements"));
    for neon_only in [
        "synchronous_standby_names",
        "max_replication_write_lag",
        "max_replication_flush_lag",
        "autoprewarm",
        "offload_lfc_interval_seconds",
    ] {
        set(spec, neon_only, None);
    }
    let path = s.dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let mut args = with_bin(s.base_args(), &wrapper.bin);
    args.extend(["-c".into(), path.to_str().unwrap().into()]);
    let mut c = Compute::spawn(&args, s.http_port);
    c.wait_running();
    let row: String = one(&mut s.client(), "SELECT x FROM from_source");
    assert_eq!(row, SOURCE_ROW);
    assert_eq!(wrapper.sync_calls().len(), 1);
    drop(c);
}

#[test]
fn neon_compose_config_file_starts_against_the_stand_ins() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/neon_compute_config_2026.json"))
            .unwrap()
            .replace("TENANT_ID", TENANT)
            .replace("TIMELINE_ID", TIMELINE);
    start_from_neon_file("n26-compose", serde_json::from_str(&text).unwrap());
}

#[test]
fn neon_2026_cluster_spec_starts_against_the_stand_ins() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/neon_cluster_spec_2026.json"))
        .unwrap();
    let spec: Value = serde_json::from_str(&text).unwrap();
    start_from_neon_file("n26-spec", json!({"spec": spec, "compute_ctl_config": {"jwks": {"keys": []}}}));
}

/// A migration that fails is logged and counted, later ones wait, and the start goes on.
#[test]
fn a_failing_migration_never_fails_the_start() {
    let s = Setup::new("n26-migfail");
    let args = config_args(&s, s.spec.clone());
    let mut c = Compute::spawn(&args, s.http_port);
    c.wait_running();
    // Break the record of skipped migrations, and say only 0001 and 0002 ran: skipping 0003
    // on PostgreSQL 15 then fails.
    let mut db = s.client();
    db.batch_execute(
        "DROP TABLE neon_migration.skipped; CREATE TABLE neon_migration.skipped (id int8 PRIMARY KEY);
         UPDATE neon_migration.migration_id SET id = 2; REVOKE pg_monitor FROM neon_superuser",
    )
    .unwrap();
    drop(db);
    let c = restart(&s, &mut c, &args);
    let log = c.log_text();
    assert!(log.contains("migration 0003-grant_pg_create_subscription_to_privileged_role failed"), "{log}");
    let metrics = http::get(s.http_port, "/metrics").text();
    assert!(metrics.contains("compute_ctl_db_migration_failed_total{migration_id=\"3\"} 1\n"), "{metrics}");
    let mut db = s.client();
    assert_eq!(one::<i64>(&mut db, "SELECT id FROM neon_migration.migration_id WHERE key = 0"), 2);
    assert!(!one::<bool>(&mut db, "SELECT pg_has_role('neon_superuser', 'pg_monitor', 'MEMBER')"), "0004 waited");
}
