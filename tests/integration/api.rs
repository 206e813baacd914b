//! Every route in the states that matter, authentication, the control-plane spec fetch,
//! termination, the activity monitor and PID 1 duties, against a real Postgres.

use crate::support::http::{self, StandIn};
use crate::support::{self, Compute, Setup};
use std::time::{Duration, Instant};

const NEON_METRICS_FIELDS: [&str; 13] = [
    "wait_for_spec_ms",
    "sync_sk_check_ms",
    "sync_safekeepers_ms",
    "pageserver_connect_micros",
    "basebackup_ms",
    "basebackup_bytes",
    "start_postgres_ms",
    "config_ms",
    "total_startup_ms",
    "load_ext_ms",
    "num_ext_downloaded",
    "largest_ext_size",
    "total_ext_download_size",
];

#[test]
fn metrics_json_and_prometheus_text() {
    let s = Setup::new("api-metrics");
    let mut c = s.spawn();
    c.wait_running();
    let m = http::get(s.http_port, "/metrics.json").json();
    for f in NEON_METRICS_FIELDS {
        assert!(m[f].is_u64(), "{f} missing or not a u64 in {m}");
    }
    assert!(m["start_postgres_ms"].as_u64().unwrap() > 0, "{m}");
    assert!(m["total_startup_ms"].as_u64().unwrap() >= m["start_postgres_ms"].as_u64().unwrap(), "{m}");
    // The installed-extension gauge is filled shortly after start, off the start-up path.
    let text = support::poll(Duration::from_secs(10), "compute_installed_extensions", || {
        let r = http::get(s.http_port, "/metrics");
        let t = r.text();
        t.contains("compute_installed_extensions{").then_some((r, t))
    });
    let (r, text) = text;
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    assert!(
        text.contains(
            r#"compute_installed_extensions{extension_name="plpgsql",version="1.0",owned_by_superuser="1"} 2"#
        ),
        "{text}"
    );
    assert!(text.contains("compute_ctl_up{build_tag=\"latest\",status=\"running\"} 1\n"), "{text}");
    assert_eq!(text.matches("compute_ctl_up{").count(), 1, "{text}");
    assert!(text.contains("compute_pg_current_downtime_ms 0\n"), "{text}");
    assert!(text.contains("compute_pg_downtime_ms_total 0\n"), "{text}");
    assert!(text.contains("compute_ctl_startup_duration_seconds{step=\"start_postgres\"} "), "{text}");
    assert!(
        text.contains(r#"compute_ctl_http_requests_total{server="external",route="/metrics.json",code="200"} 1"#),
        "{text}"
    );
    match http::promtool_check(&text) {
        Some((ok, msg)) => assert!(ok, "promtool check metrics failed: {msg}\n{text}"),
        None => eprintln!("promtool not installed: Prometheus text checked by assertions only"),
    }
}

#[test]
fn postgres_routes_on_a_running_compute() {
    let s = Setup::new("api-routes");
    let mut c = s.spawn();
    c.wait_running();
    let p = s.http_port;

    let info = http::get(p, "/info").json();
    assert!(info["num_cpus"].as_u64().unwrap() >= 1);

    // No pg_stat_statements: an empty list, in a real JSON object.
    let r = http::get(p, "/insights");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"pg_stat_statements": []}));

    let r = http::request(p, "POST", "/check_writability", &[], b"").unwrap();
    assert_eq!((r.status, r.json()), (200, serde_json::json!(true)));
    let mut db = s.client();
    let n: i64 = db.query_one("SELECT count(*) FROM public.health_check", &[]).unwrap().get(0);
    assert_eq!(n, 1);

    // /database_schema with a name that needs every kind of quoting.
    let tricky = "we\"ird db=x' dbname=postgres ;";
    db.batch_execute(&format!("CREATE DATABASE {}", quote_ident(tricky))).unwrap();
    let mut t = support::pg_client(s.pg_port, tricky);
    t.batch_execute("CREATE TABLE only_in_tricky (id int PRIMARY KEY, note text)").unwrap();
    let q: String = tricky.bytes().map(|b| format!("%{b:02X}")).collect();
    let r = http::get(p, &format!("/database_schema?database={q}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let dump = r.text();
    assert!(dump.contains("CREATE TABLE public.only_in_tricky"), "{dump}");
    // The pg_dump beside -b: the dump and the server are of the major under test.
    let major = support::pg_major();
    assert!(dump.contains(&format!("-- Dumped from database version {major}.")), "{dump}");
    assert!(dump.contains(&format!("-- Dumped by pg_dump version {major}.")), "{dump}");
    let r = http::get(p, "/database_schema?database=postgres");
    assert!(!r.text().contains("only_in_tricky"));
    let r = http::get(p, "/database_schema?database=no_such_db");
    assert_eq!((r.status, r.error().as_str()), (404, "database does not exist"));
    let r = http::get(p, "/database_schema");
    assert_eq!(r.status, 400);

    // Internal: /extensions installs, then updates; /grants grants.
    let ip = p + 1;
    if !support::skip_without_extension("hstore", "api::postgres_routes_on_a_running_compute (its /extensions part)") {
        extensions_install_then_update(ip, tricky, &mut t);
    }

    t.batch_execute("CREATE ROLE \"gr antee\"; CREATE SCHEMA \"my schema\"").unwrap();
    let body = serde_json::json!({"database": tricky, "schema": "my schema", "privileges": ["USAGE", "CREATE"], "role": "gr antee"});
    let r = http::post_json(ip, "/grants", &body);
    assert_eq!((r.status, r.json()), (201, body));
    let ok: bool = t.query_one("SELECT has_schema_privilege('gr antee', 'my schema', 'CREATE')", &[]).unwrap().get(0);
    assert!(ok);
    let bad = serde_json::json!({"database": "postgres", "schema": "public", "privileges": ["FLY"], "role": "x"});
    assert_eq!(http::post_json(ip, "/grants", &bad).status, 422);
}

/// `/extensions` installs `hstore` 1.7 in `db`, then updates it to 1.8; an unknown extension
/// is a 500 naming the failure.
fn extensions_install_then_update(ip: u16, db: &str, t: &mut postgres::Client) {
    let body = serde_json::json!({"extension": "hstore", "database": db, "version": "1.7"});
    let r = http::post_json(ip, "/extensions", &body);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"extension": "hstore", "version": "1.7"}));
    let v: String = t.query_one("SELECT extversion FROM pg_extension WHERE extname = 'hstore'", &[]).unwrap().get(0);
    assert_eq!(v, "1.7");
    let body = serde_json::json!({"extension": "hstore", "database": db, "version": "1.8"});
    assert_eq!(http::post_json(ip, "/extensions", &body).status, 201);
    let v: String = t.query_one("SELECT extversion FROM pg_extension WHERE extname = 'hstore'", &[]).unwrap().get(0);
    assert_eq!(v, "1.8");
    let body = serde_json::json!({"extension": "no_such_ext", "database": "postgres", "version": "1"});
    let r = http::post_json(ip, "/extensions", &body);
    assert_eq!(r.status, 500);
    assert!(r.error().starts_with("failed to install extension"), "{}", r.text());
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[test]
fn insights_lists_user_statements_from_pg_stat_statements() {
    if support::skip_without_extension(
        "pg_stat_statements",
        "api::insights_lists_user_statements_from_pg_stat_statements",
    ) {
        return;
    }
    let mut s = Setup::new("api-insights");
    s.setting("shared_preload_libraries", "pg_stat_statements", "string");
    let mut c = s.spawn();
    c.wait_running();
    let mut db = s.client();
    // The catalog apply installs the extension because the spec preloads it.
    let n: i64 =
        db.query_one("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'", &[]).unwrap().get(0);
    assert_eq!(n, 1);
    db.batch_execute("CREATE ROLE alice LOGIN PASSWORD 'alice-pw'").unwrap();
    let mut alice = support::pg_connect_with_password(s.pg_port, "alice", "alice-pw").unwrap();
    alice.batch_execute("SELECT 4242 AS insight_marker").unwrap();
    db.batch_execute("SELECT 1717 AS superuser_marker").unwrap();
    let r = http::get(s.http_port, "/insights");
    assert_eq!(r.status, 200);
    let rows = r.json()["pg_stat_statements"].as_array().unwrap().clone();
    let text = serde_json::to_string(&rows).unwrap();
    assert!(text.contains("insight_marker"), "{text}");
    assert!(!text.contains("superuser_marker"), "the --connstr user's statements are left out: {text}");
}

#[test]
fn routes_that_need_running_answer_412_in_empty() {
    let s = Setup::empty("api-412");
    let mut c = Compute::spawn(&s.base_args(), s.http_port);
    c.wait_status("empty", Duration::from_secs(20));
    let p = s.http_port;
    for (port, method, path) in [
        (p, "GET", "/insights"),
        (p, "POST", "/check_writability"),
        (p + 1, "POST", "/extensions"),
        (p + 1, "POST", "/grants"),
    ] {
        let r = http::request(port, method, path, &[("Content-Type", "application/json")], b"{}").unwrap();
        assert_eq!(r.status, 412, "{method} {path}: {}", r.text());
        assert_eq!(r.error(), "invalid compute status: empty");
    }
    // /terminate works from empty (Neon hangs here) and the process exits 0.
    let r = http::request(p, "POST", "/terminate", &[], b"").unwrap();
    assert_eq!((r.status, r.json()), (200, serde_json::json!({"lsn": null})));
    assert_eq!(c.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn configure_is_refused_with_412_when_the_spec_was_inline() {
    let s = Setup::new("api-inline");
    let mut args = s.base_args();
    args.extend(["-s".into(), s.spec.to_string()]);
    let mut c = Compute::spawn(&args, s.http_port);
    c.wait_running();
    let r = http::post_json(s.http_port, "/configure", &serde_json::json!({"spec": s.spec, "compute_ctl_config": {}}));
    assert_eq!(r.status, 412);
    assert_eq!(r.error(), "live configuration is not allowed for this compute node");
}

#[test]
fn terminate_from_running_answers_the_checkpoint_lsn_then_lingers() {
    let s = Setup::new("api-terminate");
    let mut args = s.args();
    let n = args.iter().position(|a| a == "--exit-delay").unwrap();
    args[n + 1] = "3".into();
    let mut c = Compute::spawn(&args, s.http_port);
    c.wait_running();
    let pm = support::postmaster_pid(&s.pgdata).unwrap();
    let r = http::request(s.http_port, "POST", "/terminate?mode=bogus", &[], b"").unwrap();
    assert_eq!(r.status, 400);
    let r = http::request(s.http_port, "POST", "/terminate", &[], b"").unwrap();
    let answered = Instant::now();
    assert_eq!(r.status, 200, "{}", r.text());
    let lsn = r.json()["lsn"].as_str().unwrap().to_string();
    assert!(!support::pid_alive(pm));
    assert_eq!(support::cluster_state(&s.pgdata), "shut down");
    let out = std::process::Command::new(format!("{}/pg_controldata", support::pg_bin_dir()))
        .arg(&s.pgdata)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    let control = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(control.contains(&format!("Latest checkpoint location:           {lsn}\n")), "{lsn} vs\n{control}");
    // During the grace period: /status says terminated, a second /terminate is 201 with the
    // same body.
    assert_eq!(c.status().unwrap()["status"], "terminated");
    let r = http::request(s.http_port, "POST", "/terminate", &[], b"").unwrap();
    assert_eq!((r.status, r.json()), (201, serde_json::json!({ "lsn": lsn })));
    let r = http::post_json(s.http_port, "/configure", &serde_json::json!({"spec": s.spec, "compute_ctl_config": {}}));
    assert_eq!((r.status, r.error().as_str()), (412, "invalid compute status: terminated"));
    let r = http::get(s.http_port, "/insights");
    assert_eq!((r.status, r.error().as_str()), (412, "invalid compute status: terminated"));
    let code = c.wait_exit(Duration::from_secs(20));
    assert_eq!(code.code(), Some(0));
    assert!(answered.elapsed() >= Duration::from_millis(2500), "exited {:?} after the answer", answered.elapsed());
}

#[test]
fn configure_on_a_running_compute_reloads_and_answers_the_status() {
    let mut s = Setup::new("api-reconfigure");
    let mut c = s.spawn();
    c.wait_running();
    s.setting("work_mem", "7777kB", "string");
    let r = http::post_json(s.http_port, "/configure", &serde_json::json!({"spec": s.spec, "compute_ctl_config": {}}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "running");
    let v: String = s.client().query_one("SHOW work_mem", &[]).unwrap().get(0);
    assert_eq!(v, "7777kB");
}

#[test]
fn terminate_immediate_postgres_skips_the_shutdown_checkpoint() {
    let s = Setup::new("api-immediate");
    let mut c = s.spawn();
    c.wait_running();
    let r = http::request(s.http_port, "POST", "/terminate?mode=immediate_postgres", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    c.wait_exit(Duration::from_secs(20));
    assert_ne!(support::cluster_state(&s.pgdata), "shut down");
}

#[test]
fn bearer_token_guards_every_route_but_metrics() {
    let s = Setup::new("api-auth");
    let token = "tok-3f1c9a2b7d";
    let token_file = s.dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut args = s.args();
    args.extend(["--http-auth-token-file".into(), token_file.to_str().unwrap().into()]);
    let mut c = Compute::spawn(&args, s.http_port);
    // /status needs the token: poll with it.
    let auth = format!("Bearer {token}");
    support::poll(Duration::from_secs(30), "running", || {
        let r = http::request(s.http_port, "GET", "/status", &[("Authorization", &auth)], b"").ok()?;
        (r.status == 200 && r.json()["status"] == "running").then_some(())
    });
    for (port, path) in [(s.http_port, "/status"), (s.http_port, "/metrics.json"), (s.http_port + 1, "/extensions")] {
        let r = http::get(port, path);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        r.error();
        let r = http::request(port, "GET", path, &[("Authorization", "Bearer tok-3f1c9a2b7e")], b"").unwrap();
        assert_eq!(r.status, 401, "{path} with a wrong token");
    }
    assert_eq!(http::request(s.http_port, "GET", "/status", &[("Authorization", &auth)], b"").unwrap().status, 200);
    assert_eq!(http::get(s.http_port, "/metrics").status, 200);
    let r = http::request(s.http_port, "POST", "/terminate", &[("Authorization", &auth)], b"").unwrap();
    assert_eq!(r.status, 200);
    c.wait_exit(Duration::from_secs(20));
    assert!(!c.log_text().contains(token), "the token reached the log");
}

#[test]
fn a_missing_token_file_stops_the_start_with_a_clear_error() {
    let s = Setup::new("api-notoken");
    let mut args = s.args();
    args.extend(["--http-auth-token-file".into(), s.dir.join("absent").to_str().unwrap().into()]);
    let mut c = Compute::spawn(&args, s.http_port);
    assert_eq!(c.wait_exit(Duration::from_secs(10)).code(), Some(1));
    assert!(c.log_text().contains("--http-auth-token-file"), "{}", c.log_text());
}

fn attached(spec: &serde_json::Value) -> String {
    serde_json::json!({"status": "attached", "spec": spec, "compute_ctl_config": {"jwks": {"keys": []}}}).to_string()
}

fn cplane_args(s: &Setup, uri: &str) -> Vec<String> {
    let mut a = s.base_args();
    a.extend(["-p".into(), uri.into(), "-i".into(), "compute-abc".into()]);
    a
}

#[test]
fn control_plane_fetch_retries_503_and_undecodable_200() {
    let s = Setup::new("api-cplane");
    let cp = StandIn::start(vec![(503, "{}".into()), (200, "not json".into()), (200, attached(&s.spec))]);
    let env = [("NEON_CONTROL_PLANE_TOKEN", "cp-secret-77")];
    let mut c = http::spawn_with_env(&cplane_args(&s, &cp.uri()), s.http_port, &env, s.dir.join("c.log"));
    c.wait_running();
    assert_eq!(cp.count(), 3);
    let first = cp.requests.lock().unwrap()[0].clone();
    assert!(first.starts_with("GET /compute/api/v2/computes/compute-abc/spec HTTP/1.1\r\n"), "{first}");
    assert!(first.contains("Authorization: Bearer cp-secret-77\r\n"), "{first}");
    let text = http::get(s.http_port, "/metrics").text();
    assert!(
        text.contains(r#"compute_ctl_cplane_requests_total{rpc="GetConfig",http_status="503 Whatever"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"compute_ctl_cplane_requests_total{rpc="GetConfig",http_status="200 Whatever"} 2"#),
        "{text}"
    );
    assert!(!c.log_text().contains("cp-secret-77"), "the control-plane token reached the log");
}

#[test]
fn control_plane_404_fails_at_once() {
    let s = Setup::new("api-cplane404");
    let cp = StandIn::start(vec![(404, r#"{"error":"no such compute"}"#.into())]);
    let mut c = Compute::spawn(&cplane_args(&s, &cp.uri()), s.http_port);
    assert_eq!(c.wait_exit(Duration::from_secs(20)).code(), Some(1));
    assert_eq!(cp.count(), 1, "a 404 is not retried");
    assert!(c.log_text().contains("404"), "{}", c.log_text());
}

#[test]
fn control_plane_503_every_time_gives_up_after_three_attempts() {
    let s = Setup::new("api-cplane503");
    let cp = StandIn::start(vec![(503, "{}".into())]);
    let mut c = Compute::spawn(&cplane_args(&s, &cp.uri()), s.http_port);
    assert_eq!(c.wait_exit(Duration::from_secs(60)).code(), Some(1));
    assert_eq!(cp.count(), 3);
    assert!(c.log_text().contains("exhausted all 3 attempts"), "{}", c.log_text());
}

#[test]
fn control_plane_empty_waits_for_configure() {
    let s = Setup::new("api-cplane-empty");
    let cp = StandIn::start(vec![(200, r#"{"status":"empty","spec":null,"compute_ctl_config":{}}"#.into())]);
    let mut c = Compute::spawn(&cplane_args(&s, &cp.uri()), s.http_port);
    // `/status` says empty from the start, so first wait for the fetch itself.
    support::poll(Duration::from_secs(20), "the spec request", || (cp.count() == 1).then_some(()));
    c.wait_status("empty", Duration::from_secs(20));
    // Stays empty until /configure; the pool time is measured.
    std::thread::sleep(Duration::from_millis(300));
    let r = http::post_json(s.http_port, "/configure", &serde_json::json!({"spec": s.spec, "compute_ctl_config": {}}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "running");
    assert_eq!(cp.count(), 1, "an empty answer is not retried");
    let m = http::get(s.http_port, "/metrics.json").json();
    assert!(m["wait_for_spec_ms"].as_u64().unwrap() >= 300, "{m}");
}

/// `last_active` as an RFC 3339 string; fixed width, so strings compare like times.
fn last_active(c: &Compute) -> Option<String> {
    c.status().and_then(|s| s["last_active"].as_str().map(str::to_string))
}

#[test]
fn last_active_follows_clients_not_compute_ctl() {
    let s = Setup::new("api-monitor");
    let mut c = s.spawn();
    c.wait_running();
    // compute_ctl's own work and the --connstr superuser (Neon's cloud_admin) do not count.
    let mut db = s.client();
    db.batch_execute("CREATE ROLE alice LOGIN PASSWORD 'alice-pw'").unwrap();
    let p = s.http_port;
    assert_eq!(http::request(p, "POST", "/check_writability", &[], b"").unwrap().status, 200);
    assert_eq!(http::get(p, "/insights").status, 200);
    assert_eq!(http::get(p, "/database_schema?database=postgres").status, 200);
    // Three monitor periods with only those connections: still nothing. (A wait for an
    // absence, bounded by the monitor's period, not a synchronisation.)
    let busy = std::thread::spawn({
        let port = s.pg_port;
        move || support::pg_client(port, "postgres").batch_execute("SELECT pg_sleep(1.6)").unwrap()
    });
    busy.join().unwrap();
    assert_eq!(last_active(&c), None, "activity of compute_ctl or its superuser counted");

    let mut alice = support::pg_connect_with_password(s.pg_port, "alice", "alice-pw").unwrap();
    alice.batch_execute("SELECT 1").unwrap();
    let first = support::poll(Duration::from_secs(5), "last_active", || last_active(&c));
    // A later query moves it forward.
    alice.batch_execute("SELECT pg_sleep(0.6)").unwrap();
    let second =
        support::poll(Duration::from_secs(5), "last_active to move", || last_active(&c).filter(|t| *t > first));
    // It never goes back, also once alice leaves.
    drop(alice);
    std::thread::sleep(Duration::from_millis(1100));
    assert!(last_active(&c).unwrap() >= second);
}

#[test]
fn as_pid_1_orphans_are_reaped() {
    if !support::is_root() || std::process::Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("SKIPPED: needs root and unshare(1) for a PID namespace");
        return;
    }
    let probe = std::process::Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: unshare --pid --fork --mount-proc is not permitted here");
        return;
    }
    let s = Setup::new("api-pid1");
    let mut args = vec!["--pid".to_string(), "--fork".into(), "--mount-proc".into(), support::BIN.into()];
    args.extend(s.args());
    let log = s.dir.join("pid1.log");
    let f = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new("unshare")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let mut c = Compute { child: Some(child), http_port: s.http_port, log };
    c.wait_running();
    assert!(c.log_text().contains("running as PID 1"), "{}", c.log_text());
    // compute_ctl's pid as seen from here: the child of unshare.
    let unshare_pid = c.pid();
    let cc = support::children_of(unshare_pid)[0];
    // Orphans: a shell in the namespace starts two sleepers and exits; they are re-parented to
    // compute_ctl (PID 1 there), and when they exit nobody but it can reap them.
    let st = std::process::Command::new("nsenter")
        .args(["--target", &cc.to_string(), "--pid", "--mount", "sh", "-c", "sleep 1 & sleep 1.2 & exit 0"])
        .status()
        .unwrap();
    assert!(st.success());
    let orphans = support::poll(Duration::from_secs(5), "sleepers re-parented to compute_ctl", || {
        let kids: Vec<u32> =
            support::children_of(cc).into_iter().filter(|p| comm(*p).as_deref() == Some("sleep")).collect();
        (kids.len() == 2).then_some(kids)
    });
    for pid in orphans {
        support::poll(Duration::from_secs(10), "the orphan to be reaped", || {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        });
    }
    // As PID 1 it still handles SIGTERM: a fast shutdown of Postgres, then exit 1.
    let st = std::process::Command::new("kill").args(["-TERM", &cc.to_string()]).status().unwrap();
    assert!(st.success());
    assert_eq!(c.wait_exit(Duration::from_secs(20)).code(), Some(1));
    // (postmaster.pid holds a pid of the namespace, so the clean shutdown is the proof.)
    assert_eq!(support::cluster_state(&s.pgdata), "shut down");
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}
