//! Today's Neon (2026): termination statuses and bodies, `/promote`, `/refresh_configuration`,
//! `/extension_server`, the LFC routes and `/autoscaling_metrics`, against a real Postgres.

use crate::ext_server::{FileServer, Installed, extension_archive};
use crate::support::http;
use crate::support::{self, Compute, Setup};
use std::time::Duration;

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
    support::poll(Duration::from_secs(20), pending, || (c.status()?["status"] == pending).then_some(()));
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
    assert_eq!((r.status, r.error().as_str()), (412, "invalid compute status: terminated"));
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

/// A streaming standby of the compute `primary` runs: `pg_basebackup -R` (standby.signal and
/// primary_conninfo) into a new PGDATA, with a Replica spec of its own.
fn standby_of(primary: &Setup, name: &str) -> Setup {
    let dir = support::TestDir::new(name);
    let pgdata = dir.join("pgdata");
    std::fs::create_dir(&pgdata).unwrap();
    support::give_to_pg(&pgdata);
    support::set_mode(&pgdata, 0o700);
    let out =
        support::as_pg_user(std::process::Command::new(format!("{}/pg_basebackup", support::pg_bin_dir())).args([
            "-D",
            pgdata.to_str().unwrap(),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-h",
            "127.0.0.1",
            "-p",
            &primary.pg_port.to_string(),
            "-U",
            support::SUPERUSER,
        ]))
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_basebackup: {}", String::from_utf8_lossy(&out.stderr));
    let mut s = Setup::with_pgdata(dir, pgdata);
    s.spec["mode"] = "Replica".into();
    s
}

fn promote_body(spec: &serde_json::Value, lsn: &str) -> serde_json::Value {
    let mut primary = spec.clone();
    primary["mode"] = "Primary".into();
    serde_json::json!({ "spec": primary, "wal_flush_lsn": lsn })
}

/// A real streaming standby becomes the primary: the first try fails (it cannot replay an LSN
/// the primary never wrote) and changes nothing; after the primary's `/terminate`, a second
/// try with its LSN promotes: the rows written before are there, writes succeed, the status
/// stayed `running`.
#[test]
fn promote_turns_a_streaming_standby_into_a_writable_primary_and_can_be_retried() {
    let p = Setup::new("promote-primary");
    let mut pc = p.spawn();
    pc.wait_running();
    p.client().batch_execute("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 100)").unwrap();
    let s = standby_of(&p, "promote-standby");
    let mut sc = s.spawn();
    sc.wait_running();
    let read_only: String = s.client().query_one("SHOW transaction_read_only", &[]).unwrap().get(0);
    assert_eq!(read_only, "on", "the standby is in recovery");
    p.client().batch_execute("INSERT INTO t SELECT generate_series(101, 200)").unwrap();

    // Ahead of anything the primary wrote: fails after the catch-up bound, nothing changes.
    let r = http::post_json(s.http_port, "/promote", &promote_body(&s.spec, "FFFFFFFF/0"));
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["status"], "failed");
    assert!(r.json()["error"].as_str().unwrap().contains("did not replay up to FFFFFFFF/0"), "{}", r.text());
    let in_recovery: bool = s.client().query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(in_recovery);

    let r = http::request(p.http_port, "POST", "/terminate", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let lsn = r.json()["lsn"].as_str().unwrap().to_string();
    pc.wait_exit(Duration::from_secs(20));

    let r = http::post_json(s.http_port, "/promote", &promote_body(&s.spec, &lsn));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["status"], "completed");
    for k in ["lsn_wait_time_ms", "pg_promote_time_ms", "reconfigure_time_ms"] {
        assert!(body[k].is_u64(), "{k} in {body}");
    }
    let mut c = s.client();
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).unwrap().get(0);
    assert_eq!(n, 200, "rows written before the promotion");
    c.batch_execute("INSERT INTO t VALUES (201)").unwrap();
    assert_eq!(sc.status().unwrap()["status"], "running");
    let conf = std::fs::read_to_string(s.pgdata.join("postgresql.conf")).unwrap();
    assert!(!conf.contains("hot_standby=on"), "the primary's spec was applied:\n{conf}");
    assert!(sc.log_text().contains("synchronous_standby_names = walproposer are skipped"), "{}", sc.log_text());
}

/// Without a spec there is nothing to promote: 412 (Neon panics and poisons its state lock),
/// and the compute still answers.
#[test]
fn promote_without_a_spec_is_412() {
    let s = Setup::new("promote-empty");
    let mut c = Compute::spawn(&s.base_args(), s.http_port);
    c.wait_status("empty", Duration::from_secs(20));
    let r = http::post_json(s.http_port, "/promote", &promote_body(&s.spec, "0/0"));
    assert_eq!((r.status, r.error().as_str()), (412, "invalid compute status: empty"));
    assert_eq!(c.status().unwrap()["status"], "empty");
}

/// `/extension_server/{filename}`: the archive is fetched from `--remote-ext-base-url` at
/// today's Neon's path, its files land in Postgres's extension directory and CREATE EXTENSION
/// works; a truncated archive is refused with nothing installed; an unlisted name is 404.
#[test]
fn extension_server_installs_an_archive_and_refuses_a_truncated_one() {
    let n = std::process::id();
    let (good, cut) = (format!("cctest_ext_{n}"), format!("cctest_cut_{n}"));
    let mut s = Setup::new("ext-server");
    let archive = extension_archive(&s.dir.path, &good);
    let truncated = extension_archive(&s.dir.path, &cut)[..archive.len() / 2].to_vec();
    let out = std::process::Command::new(format!("{}/pg_config", support::pg_bin_dir()))
        .args(["--sharedir", "--version"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let share = std::path::PathBuf::from(lines.next().unwrap().trim()).join("extension");
    // "PostgreSQL 15.10 (…)" → "15"
    let major = lines.next().unwrap().split_whitespace().nth(1).unwrap().split('.').next().unwrap().to_string();
    let _cleanup = Installed(
        [&good, &cut]
            .iter()
            .flat_map(|e| [share.join(format!("{e}.control")), share.join(format!("{e}--1.0.sql"))])
            .collect(),
    );
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let path = |e: &str| format!("/base/latest/{arch}/v{major}/extensions/{e}.tar.zst");
    let server = FileServer::start(vec![(path(&good), archive), (path(&cut), truncated)]);
    let data = serde_json::json!({"control_data": {}, "archive_path": ""});
    s.spec["remote_extensions"] = serde_json::json!({
        "public_extensions": [good, cut],
        "custom_extensions": null,
        "library_index": {},
        "extension_data": { &good: data, &cut: data },
    });
    let mut args = s.args();
    args.extend(["--remote-ext-base-url".into(), format!("http://127.0.0.1:{}/base/", server.port)]);
    let mut c = Compute::spawn(&args, s.http_port);
    c.wait_running();
    let internal = s.http_port + 1;

    let r = http::request(internal, "POST", &format!("/extension_server/{good}"), &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.seen.lock().unwrap().as_slice(), [path(&good)]);
    assert!(share.join(format!("{good}.control")).exists());
    let mut client = s.client();
    client.batch_execute(&format!("CREATE EXTENSION {good}")).unwrap();
    let v: i32 = client.query_one(&format!("SELECT {good}_answer()"), &[]).unwrap().get(0);
    assert_eq!(v, 42);
    // Installed once: a second request is answered without a download.
    let r = http::request(internal, "POST", &format!("/extension_server/{good}"), &[], b"").unwrap();
    assert_eq!((r.status, server.seen.lock().unwrap().len()), (200, 1));

    let r = http::request(internal, "POST", &format!("/extension_server/{cut}"), &[], b"").unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.error().contains("nothing was installed"), "{}", r.text());
    assert!(!share.join(format!("{cut}.control")).exists() && !share.join(format!("{cut}--1.0.sql")).exists());
    let leftovers: Vec<_> = std::fs::read_dir(&share)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".compute_ctl-staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let r = http::request(internal, "POST", "/extension_server/postgis", &[], b"").unwrap();
    assert_eq!((r.status, r.error().as_str()), (404, "extension postgis is not found"));
    let r = http::request(internal, "POST", "/extension_server/..%2Fx", &[], b"").unwrap();
    assert_eq!(r.status, 400);
}

/// `/refresh_configuration` fetches the spec from the control plane again and applies it: the
/// changed setting is live, the compute is `running`; a control plane that then fails leaves
/// the compute running with what it had, and the request gets the cause.
#[test]
fn refresh_configuration_fetches_and_applies_the_spec_from_the_control_plane() {
    let mut s = Setup::new("refresh");
    let first = s.spec.clone();
    s.setting("work_mem", "7777kB", "string");
    let attached = |spec: &serde_json::Value| {
        serde_json::json!({"status": "attached", "spec": spec, "compute_ctl_config": {"jwks": {"keys": []}}})
            .to_string()
    };
    let cp = http::StandIn::start(vec![(200, attached(&first)), (200, attached(&s.spec)), (404, "{}".into())]);
    let mut args = s.base_args();
    args.extend(["-p".into(), cp.uri(), "-i".into(), "compute-refresh".into()]);
    let mut c = Compute::spawn(&args, s.http_port);
    c.wait_running();
    let work_mem = |s: &Setup| -> String { s.client().query_one("SHOW work_mem", &[]).unwrap().get(0) };
    assert_ne!(work_mem(&s), "7777kB");

    let r = http::request(s.http_port + 1, "POST", "/refresh_configuration", &[], b"").unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0), "{}", r.text());
    assert_eq!(cp.count(), 2);
    assert_eq!(work_mem(&s), "7777kB");
    assert_eq!(c.status().unwrap()["status"], "running");
    assert!(c.log_text().contains("compute status: refresh_configuration"), "{}", c.log_text());

    let r = http::request(s.http_port + 1, "POST", "/refresh_configuration", &[], b"").unwrap();
    assert_eq!(r.status, 500);
    assert!(r.error().contains("cannot fetch the spec"), "{}", r.text());
    assert_eq!(c.status().unwrap()["status"], "running");
    assert_eq!(work_mem(&s), "7777kB");
}

/// On vanilla PostgreSQL: the LFC routes answer their state, and a prewarm or offload is a
/// clear 412 naming the missing neon function (the state then says `failed` with it);
/// `/autoscaling_metrics` (public, as `/metrics`) is a 500 saying there is no communicator.
#[test]
fn lfc_and_autoscaling_metrics_say_clearly_what_vanilla_postgres_lacks() {
    let s = Setup::new("lfc");
    let token_file = s.dir.join("token");
    std::fs::write(&token_file, "tok-lfc-1").unwrap();
    let mut args = s.args();
    args.extend(["--http-auth-token-file".into(), token_file.to_str().unwrap().into()]);
    let mut c = Compute::spawn(&args, s.http_port);
    let auth = [("Authorization", "Bearer tok-lfc-1")];
    support::poll(Duration::from_secs(30), "running", || {
        let r = http::request(s.http_port, "GET", "/status", &auth, b"").ok()?;
        (r.json()["status"] == "running").then_some(())
    });
    let p = s.http_port;
    assert_eq!(http::request(p, "GET", "/lfc/prewarm", &[], b"").unwrap().status, 401);
    // The prefix route of the internal server is guarded too.
    assert_eq!(http::request(p + 1, "POST", "/extension_server/x.tar.zst", &[], b"").unwrap().status, 401);
    assert_eq!(http::request(p + 1, "POST", "/refresh_configuration", &[], b"").unwrap().status, 401);
    let r = http::request(p, "GET", "/lfc/prewarm", &auth, b"").unwrap();
    assert_eq!((r.status, r.json()), (200, serde_json::json!({"status": "not_prewarmed"})));
    let r = http::request(p, "GET", "/lfc/offload", &auth, b"").unwrap();
    assert_eq!((r.status, r.json()), (200, serde_json::json!({"status": "not_offloaded"})));
    for (path, function) in
        [("/lfc/prewarm", "neon.prewarm_local_cache(bytea)"), ("/lfc/offload", "neon.get_local_cache_state()")]
    {
        let r = http::request(p, "POST", path, &auth, b"").unwrap();
        assert_eq!(r.status, 412, "{path}: {}", r.text());
        let e = r.error();
        assert!(e.contains("local file cache is not available") && e.contains(function), "{e}");
        let r = http::request(p, "GET", path, &auth, b"").unwrap();
        assert_eq!((r.json()["status"].as_str(), r.json()["error"].as_str()), (Some("failed"), Some(e.as_str())));
    }
    let r = http::request(p, "GET", "/autoscaling_metrics", &[], b"").unwrap();
    assert_eq!(r.status, 500);
    assert!(r.error().contains("vanilla PostgreSQL has none"), "{}", r.text());
    c.signal("TERM");
    c.wait_exit(Duration::from_secs(20));
}
