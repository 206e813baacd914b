//! Compliance audit logging (`audit_log_level`) and the Postgres logs export
//! (`logs_export_host`) end to end: the rsyslog files in a temporary `--rsyslog-dir`, the
//! restart of a stand-in rsyslogd (see `support::rsyslogd`), the audit receiver's variables,
//! the GC of old audit files, and what Postgres gets.
//!
//! PostgreSQL 15 here has no pgaudit: a compliance level then fails the start before Postgres
//! is spawned, with the missing libraries named. Where pgaudit and pgauditlogtofile are
//! installed the same tests expect a running compute with both extensions created.

use crate::support::rsyslogd::StandIn;
use crate::support::{self, Compute, Setup, http};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const AUDIT_FILE: &str = "compute_audit_rsyslog.conf";
const EXPORT_FILE: &str = "postgres_logs.conf";

/// A compute with its own rsyslog directory and stand-in rsyslogd.
struct Audit {
    s: Setup,
    dir: PathBuf,
    rsyslogd: StandIn,
}

impl Audit {
    fn new(name: &str, edit: impl FnOnce(&mut Value)) -> Audit {
        let mut s = Setup::new(name);
        // Not `neon`, which vanilla PostgreSQL lacks, so only the audit libraries can be missing.
        s.setting("shared_preload_libraries", "pg_stat_statements", "string");
        s.spec["endpoint_id"] = json!("ep-audit-1");
        s.spec["project_id"] = json!("proj-audit-1");
        edit(&mut s.spec);
        let dir = s.dir.join("rsyslog.d");
        let rsyslogd = StandIn::start(&s.dir.path);
        Audit { s, dir, rsyslogd }
    }

    fn spawn(&self, env: &[(&str, &str)]) -> Compute {
        self.spawn_with(env, &[])
    }

    /// For a start expected to fail: the failed compute lingers to answer `/status`.
    fn spawn_lingering(&self, env: &[(&str, &str)]) -> Compute {
        self.spawn_with(env, &["--exit-delay", "60"])
    }

    fn spawn_with(&self, env: &[(&str, &str)], extra_args: &[&str]) -> Compute {
        let mut args = self.s.args();
        args.extend(["--rsyslog-dir".into(), self.dir.to_str().unwrap().into()]);
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let (k, v) = self.rsyslogd.env();
        let mut all: Vec<(&str, &str)> = vec![(k, v.as_str())];
        // Unless a test sets them, the receiver's variables are empty whatever the caller's
        // environment holds.
        for var in ["AUDIT_LOGGING_ENDPOINT", "AUDIT_LOGGING_TLS_ENDPOINT"] {
            if !env.iter().any(|(k, _)| *k == var) {
                all.push((var, ""));
            }
        }
        all.extend_from_slice(env);
        Compute::spawn_env(&args, self.s.http_port, &all)
    }

    fn file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(name)).ok()
    }

    fn configure(&self, c: &Compute, spec: &Value) {
        let body = json!({"spec": spec, "compute_ctl_config": {"jwks": {"keys": []}}});
        let r = http::post_json(self.s.http_port, "/configure", &body);
        assert_eq!(r.status, 200, "{}\nlog:\n{}", r.text(), c.log_text());
        assert_eq!(r.json()["status"], "running");
    }
}

/// Whether this PostgreSQL can preload both audit libraries.
fn has_audit_libraries() -> bool {
    let out =
        std::process::Command::new(format!("{}/pg_config", support::pg_bin_dir())).arg("--pkglibdir").output().unwrap();
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    ["pgaudit.so", "pgauditlogtofile.so"].iter().all(|f| dir.join(f).exists())
}

fn show(s: &Setup, name: &str) -> String {
    s.client().query_one(&format!("SHOW {name}"), &[]).unwrap().get(0)
}

#[test]
fn logs_export_file_follows_the_spec_and_rsyslogd_restarts_only_on_change() {
    let a = Audit::new("logs-export", |spec| spec["logs_export_host"] = json!("127.0.0.1:10514"));
    let first = a.rsyslogd.pid().unwrap();
    let mut c = a.spawn(&[]);
    c.wait_running();
    let text = a.file(EXPORT_FILE).expect("the export file is written at start");
    for want in [
        "if $programname == 'postgres' then {",
        "type=\"omfwd\" target=\"127.0.0.1\" port=\"10514\" protocol=\"tcp\"",
        "template=\"RSYSLOG_SyslogProtocol23Format\"",
        "action.resumeRetryCount=\"3\"",
        "queue.type=\"LinkedList\" queue.size=\"1000\"",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    let second = a.rsyslogd.wait_started(2);
    assert_ne!(second, first, "the start restarted rsyslogd");
    assert!(!support::pid_alive(first));
    assert_eq!(show(&a.s, "log_destination"), "stderr,syslog");
    assert!(a.file(AUDIT_FILE).is_none(), "no audit level, no audit file");

    // The same host again: nothing written, no restart.
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = inode(&a.dir.join(EXPORT_FILE));
    a.configure(&c, &a.s.spec);
    assert_eq!(inode(&a.dir.join(EXPORT_FILE)), before, "the same content is not rewritten");
    assert_eq!((a.rsyslogd.started(), a.rsyslogd.pid()), (2, Some(second)), "no restart for the same content");

    // Another port: rewritten, restarted.
    let mut spec = a.s.spec.clone();
    spec["logs_export_host"] = json!("logs.example:10515");
    a.configure(&c, &spec);
    let text = a.file(EXPORT_FILE).unwrap();
    assert!(text.contains("target=\"logs.example\" port=\"10515\""), "{text}");
    let third = a.rsyslogd.wait_started(3);
    assert_ne!(third, second);

    // Cleared: the file goes (Neon leaves it) and rsyslogd restarts without it; Postgres
    // stops sending to syslog.
    spec.as_object_mut().unwrap().remove("logs_export_host");
    a.configure(&c, &spec);
    assert!(a.file(EXPORT_FILE).is_none(), "a cleared host removes the file");
    a.rsyslogd.wait_started(4);
    assert_eq!(show(&a.s, "log_destination"), "stderr");

    // A malformed host is refused before anything changes.
    spec["logs_export_host"] = json!("logs.example");
    let body = json!({"spec": spec, "compute_ctl_config": {"jwks": {"keys": []}}});
    let r = http::post_json(a.s.http_port, "/configure", &body);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("logs_export_host"), "{}", r.text());
    assert_eq!(a.rsyslogd.started(), 4);
}

#[test]
fn logs_export_without_a_respawned_rsyslogd_fails_the_start_clearly() {
    let a = Audit::new("logs-export-no-init", |spec| spec["logs_export_host"] = json!("127.0.0.1:10514"));
    // A filter that matches nothing: the stand-in is never stopped, and no new one appears.
    let mut c = a.spawn_lingering(&[("COMPUTE_CTL_TEST_RSYSLOGD_EXE", "/nonexistent/rsyslogd")]);
    let st = c.wait_status("failed", Duration::from_secs(30));
    let err = st["error"].as_str().unwrap();
    assert!(err.contains("restarting rsyslog") && err.contains("no new rsyslogd running 5000 ms"), "{err}");
    assert!(support::postmaster_pid(&a.s.pgdata).is_none(), "postgres was never started");
    assert_eq!(a.rsyslogd.started(), 1, "the stand-in was left alone");
}

#[test]
fn compliance_audit_without_a_receiver_fails_with_neons_message_and_no_postgres() {
    let a = Audit::new("audit-no-endpoint", |spec| spec["audit_log_level"] = json!("Hipaa"));
    let mut c = a.spawn_lingering(&[]);
    let st = c.wait_status("failed", Duration::from_secs(30));
    let err = st["error"].as_str().unwrap();
    assert!(err.contains("AUDIT_LOGGING_ENDPOINT and AUDIT_LOGGING_TLS_ENDPOINT are both empty"), "{err}");
    assert!(support::postmaster_pid(&a.s.pgdata).is_none(), "postgres was never started");
    assert!(a.file(AUDIT_FILE).is_none());
    assert_eq!(a.rsyslogd.started(), 1, "rsyslogd untouched");
    drop(c);

    // A malformed receiver is named (Neon panics).
    let mut c = a.spawn_lingering(&[("AUDIT_LOGGING_ENDPOINT", "audit.example")]);
    let st = c.wait_status("failed", Duration::from_secs(30));
    let err = st["error"].as_str().unwrap();
    assert!(err.contains("AUDIT_LOGGING_ENDPOINT=\"audit.example\"") && err.contains("host:port"), "{err}");
    assert!(support::postmaster_pid(&a.s.pgdata).is_none());
}

/// The audit file for each receiver, the restart, the postgresql.conf block; then either the
/// missing libraries named (no pgaudit here) or the extensions created.
#[test]
fn compliance_audit_writes_the_rsyslog_file_and_needs_pgaudit() {
    for (level, env, tls) in [
        ("Hipaa", vec![("AUDIT_LOGGING_ENDPOINT", "plain.example:514")], false),
        (
            "Full",
            vec![("AUDIT_LOGGING_ENDPOINT", "plain.example:514"), ("AUDIT_LOGGING_TLS_ENDPOINT", "tls.example:6514")],
            true,
        ),
    ] {
        let a = Audit::new(&format!("audit-{level}"), |spec| spec["audit_log_level"] = json!(level));
        let mut c = a.spawn_lingering(&env);
        let st =
            if has_audit_libraries() { c.wait_running() } else { c.wait_status("failed", Duration::from_secs(30)) };
        let text = a.file(AUDIT_FILE).expect("the audit file is written");
        let logs = std::fs::canonicalize(&a.s.pgdata).unwrap().join("log/*.log");
        let (host, port) = if tls { ("tls.example", 6514) } else { ("plain.example", 514) };
        for want in [
            "module(load=\"imfile\")".to_string(),
            format!("input(type=\"imfile\" file=\"{}\" tag=\"pgaudit_log\" facility=\"local5\"", logs.display()),
            "set $.audit!endpoint_id = 'ep-audit-1';".into(),
            "set $.audit!project_id = 'proj-audit-1';".into(),
            "set $.audit!msg = $msg;".into(),
            format!("type=\"omfwd\" target=\"{host}\" port=\"{port}\" protocol=\"tcp\""),
        ] {
            assert!(text.contains(&want), "{level}: {want:?} missing:\n{text}");
        }
        let tls_lines = [
            "streamDriver=\"gtls\"".to_string(),
            "streamDriverAuthMode=\"x509/name\"".into(),
            format!("streamDriverPermittedPeers=\"{host}\""),
            "defaultNetstreamDriverCAFile=\"/etc/ssl/certs/ca-certificates.crt\"".into(),
        ];
        for want in &tls_lines {
            assert_eq!(text.contains(want.as_str()), tls, "{level}: {want:?} with tls={tls}:\n{text}");
        }
        assert!(a.rsyslogd.started() >= 2, "the audit file restarted rsyslogd");
        let conf = std::fs::read_to_string(a.s.pgdata.join("postgresql.conf")).unwrap();
        assert!(conf.contains("\nshared_preload_libraries='pg_stat_statements,pgaudit,pgauditlogtofile'\n"), "{conf}");
        if has_audit_libraries() {
            let exts: Vec<String> =
                a.s.client()
                    .query("SELECT extname::text FROM pg_extension WHERE extname LIKE 'pgaudit%' ORDER BY 1", &[])
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
            assert_eq!(exts, ["pgaudit", "pgauditlogtofile"]);
        } else {
            let err = st["error"].as_str().unwrap();
            assert!(
                err.contains("audit_log_level") && err.contains("pgaudit.so") && err.contains("pgauditlogtofile.so"),
                "{err}"
            );
            assert!(support::postmaster_pid(&a.s.pgdata).is_none(), "postgres was not started");
        }
    }
}

#[test]
fn audit_gc_deletes_old_audit_files_and_exports_the_directory_size() {
    let a = Audit::new("audit-gc", |spec| spec["audit_log_level"] = json!("Extended"));
    let log = a.s.pgdata.join("log");
    std::fs::create_dir_all(&log).unwrap();
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for (name, len, old) in
        [("audit-old.log", 100, true), ("audit-new.log", 200, false), ("postgresql-old.log", 400, true)]
    {
        let f = std::fs::File::create(log.join(name)).unwrap();
        f.set_len(len).unwrap();
        if old {
            f.set_modified(hour_ago).unwrap();
        }
    }
    support::give_to_pg(&log);
    // The GC every 50 ms (test-only variable); the failed start lingers to answer /metrics.
    let env = [("AUDIT_LOGGING_ENDPOINT", "audit.example:514"), ("COMPUTE_CTL_TEST_AUDIT_GC_INTERVAL_MS", "50")];
    let c = a.spawn_lingering(&env);
    support::poll(Duration::from_secs(30), "audit-old.log deleted", || {
        (!log.join("audit-old.log").exists()).then_some(())
    });
    assert!(log.join("audit-new.log").exists(), "a recent audit file is kept");
    assert!(log.join("postgresql-old.log").exists(), "only audit*.log files are deleted");
    let (text, size) = support::poll(Duration::from_secs(10), "a non-zero compute_audit_log_dir_size", || {
        let text = http::get(c.http_port, "/metrics").text();
        let size: f64 = text.lines().find_map(|l| l.strip_prefix("compute_audit_log_dir_size "))?.parse().ok()?;
        (size > 0.0).then_some((text, size))
    });
    // What is left: the new audit file, the old server log, and whatever Postgres wrote
    // there (only where pgaudit lets it start).
    assert!(size >= 600.0, "{size}\n{text}");
    if !has_audit_libraries() {
        assert_eq!(size, 600.0, "{text}");
    }
    assert!(text.contains("# TYPE compute_audit_log_dir_size gauge\n"), "{text}");
    if let Some((ok, msg)) = http::promtool_check(&text) {
        assert!(ok, "promtool: {msg}");
    }
}
