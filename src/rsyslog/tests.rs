use super::*;
use std::time::SystemTime;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cc-rsyslog-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn host_port_accepts_names_and_addresses() {
    let hp = |h: &str, p| HostPort { host: h.into(), port: p };
    assert_eq!(HostPort::parse("logs.example.com:514"), Ok(hp("logs.example.com", 514)));
    assert_eq!(HostPort::parse("10.0.0.1:6514"), Ok(hp("10.0.0.1", 6514)));
    assert_eq!(HostPort::parse("[::1]:10514"), Ok(hp("::1", 10514)));
    assert_eq!(HostPort::parse("a-b:1"), Ok(hp("a-b", 1)));
}

#[test]
fn host_port_refuses_what_is_not_host_port() {
    for bad in [
        "",
        "nohost",
        "host:",
        ":514",
        "host:0",
        "host:65536",
        "host:+5",
        "host:5x",
        "-a:1",
        "a..b:1",
        "a b:1",
        "a\"b:1",
        "::1:514",
        "[::1]",
        "[zz]:1",
        "host:514/path",
        "user@host:1",
    ] {
        assert!(HostPort::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn audit_target_prefers_tls_and_names_a_bad_variable() {
    let err = audit_target("", "").unwrap_err().to_string();
    assert!(err.contains("AUDIT_LOGGING_ENDPOINT and AUDIT_LOGGING_TLS_ENDPOINT are both empty"), "{err}");
    let t = audit_target("plain:514", "secure:6514").unwrap();
    assert_eq!((t.at.host.as_str(), t.at.port, t.tls), ("secure", 6514, true));
    let t = audit_target("plain:514", "").unwrap();
    assert_eq!((t.at.host.as_str(), t.at.port, t.tls), ("plain", 514, false));
    let err = audit_target("", "secure").unwrap_err().to_string();
    assert!(err.contains("AUDIT_LOGGING_TLS_ENDPOINT=\"secure\""), "{err}");
    let err = audit_target("x:99999", "").unwrap_err().to_string();
    assert!(err.contains("AUDIT_LOGGING_ENDPOINT=\"x:99999\"") && err.contains("port"), "{err}");
}

#[test]
fn strings_are_quoted_as_rainerscript_constants() {
    assert_eq!(rs_str("plain"), "'plain'");
    assert_eq!(rs_str(r"it's a \ and $x"), r"'it\'s a \\ and $x'");
    assert_eq!(rs_str("a\nb\u{1}"), r"'a\nb\x01'");
    // Object parameters: double quotes; `$` stays bare (rsyslog 8.2302 refuses `\$` there).
    assert_eq!(rs_param(r#"/pg/"d$\x"#), r#""/pg/\"d$\\x""#);
}

#[test]
fn audit_config_has_the_input_the_record_and_the_target() {
    let plain = AuditTarget { at: HostPort::parse("audit.example:514").unwrap(), tls: false };
    let text = audit_config(Path::new("/pg/data/log"), "ep-1", "proj'1", &plain);
    for want in [
        "module(load=\"imfile\")",
        "input(type=\"imfile\" file=\"/pg/data/log/*.log\" tag=\"pgaudit_log\" facility=\"local5\"",
        "if $syslogtag == 'pgaudit_log' then {",
        "set $.audit!endpoint_id = 'ep-1';",
        "set $.audit!project_id = 'proj\\'1';",
        "set $.audit!msg = $msg;",
        "<%PRI%>1 %TIMESTAMP:::date-rfc3339% %HOSTNAME%",
        "action(type=\"omfwd\" target=\"audit.example\" port=\"514\" protocol=\"tcp\" template=\"ComputeAuditRecord\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains("gtls") && !text.contains("CAFile"), "{text}");

    let tls = AuditTarget { at: HostPort::parse("audit.example:6514").unwrap(), tls: true };
    let text = audit_config(Path::new("/pg/data/log"), "ep-1", "p", &tls);
    for want in [
        "port=\"6514\"",
        "streamDriver=\"gtls\"",
        "streamDriverMode=\"1\"",
        "streamDriverAuthMode=\"x509/name\"",
        "streamDriverPermittedPeers=\"audit.example\"",
        "streamDriver.PermitExpiredCerts=\"off\"",
        "defaultNetstreamDriverCAFile=\"/etc/ssl/certs/ca-certificates.crt\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn logs_export_config_forwards_postgres() {
    let text = logs_export_config(&HostPort::parse("otel.local:10514").unwrap());
    for want in [
        "if $programname == 'postgres' then {",
        "action(type=\"omfwd\" target=\"otel.local\" port=\"10514\" protocol=\"tcp\"",
        "template=\"RSYSLOG_SyslogProtocol23Format\"",
        "action.resumeRetryCount=\"3\"",
        "queue.type=\"LinkedList\" queue.size=\"1000\"",
        "stop",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

/// No rsyslogd runs for this filter (an executable that does not exist), so a restart that
/// would need one fails within its bound, naming the cause.
#[test]
fn restart_without_a_respawning_init_fails_clearly() {
    let filter = restart::Filter { exe: Some("/nonexistent/rsyslogd".into()) };
    assert!(restart::rsyslogd_pids(&filter).is_empty());
    let err = restart::restart(&filter, Duration::from_millis(50)).unwrap_err().to_string();
    assert!(err.contains("restarting rsyslog") && err.contains("must respawn it"), "{err}");
}

/// The same content is not rewritten; clearing the host removes the file (unlike Neon);
/// neither needs a restart when nothing changed.
#[test]
fn logs_export_file_is_written_only_when_it_changes() {
    let dir = temp_dir("export");
    let mut settings = Settings::new(dir.join("rsyslog.d"), |_| None);
    settings.filter = restart::Filter { exe: Some("/nonexistent/rsyslogd".into()) };
    settings.restart_wait = Duration::from_millis(20);
    // Nothing to write, nothing to remove: no restart (which would fail here).
    configure_logs_export(&settings, None).unwrap();
    let path = settings.dir.join(LOGS_EXPORT_FILE);
    std::fs::create_dir_all(&settings.dir).unwrap();
    std::fs::write(&path, logs_export_config(&HostPort::parse("h:1").unwrap())).unwrap();
    configure_logs_export(&settings, Some("h:1")).unwrap();
    // A different host writes the file, then wants a restart, which fails without rsyslogd.
    let err = configure_logs_export(&settings, Some("h:2")).unwrap_err().to_string();
    assert!(err.contains("restarting rsyslog"), "{err}");
    assert!(std::fs::read_to_string(&path).unwrap().contains("port=\"2\""));
    let err = configure_logs_export(&settings, Some("h")).unwrap_err().to_string();
    assert!(err.contains("logs_export_host"), "{err}");
    assert!(configure_logs_export(&settings, None).is_err(), "removal restarts");
    assert!(!path.exists());
    // A file of that name that compute_ctl did not write is left alone (and needs no restart).
    std::fs::write(&path, "# the operator's own forwarding\n*.* @@elsewhere:514\n").unwrap();
    configure_logs_export(&settings, None).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "# the operator's own forwarding\n*.* @@elsewhere:514\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gc_deletes_old_audit_files_only_and_sums_the_rest() {
    let dir = temp_dir("gc");
    let now = SystemTime::now();
    let old = now - gc::MAX_AGE - Duration::from_secs(60);
    for (name, len) in [("audit-1.log", 10), ("audit-2.log", 20), ("postgresql.log", 40), ("audit-3.txt", 80)] {
        let f = std::fs::File::create(dir.join(name)).unwrap();
        f.set_len(len).unwrap();
        if name != "audit-2.log" {
            f.set_modified(old).unwrap();
        }
    }
    let pass = gc::pass(&dir, now);
    assert_eq!(pass.deleted, [dir.join("audit-1.log")]);
    assert_eq!(pass.size, 20 + 40, "the kept *log files");
    assert!(
        dir.join("audit-2.log").exists() && dir.join("postgresql.log").exists() && dir.join("audit-3.txt").exists()
    );
    assert_eq!(gc::pass(&dir.join("missing"), now), gc::Pass::default());
    std::fs::remove_dir_all(&dir).unwrap();
}
