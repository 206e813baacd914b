//! `postgresql.conf` and `pg_hba.conf`, written as Neon's compute_ctl writes them.

use crate::error::{Error, Result};
use crate::escape::{conf_value, is_bare_conf_token};
use crate::spec::{AuditLogLevel, ComputeMode, ParsedSpec};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// The line added to `pg_hba.conf` so that roles with passwords can connect from other hosts
/// (tabs as in Neon).
pub const PG_HBA_ALL_MD5: &str = "host\tall\t\tall\t\tall\t\tmd5";

/// The file `postgresql.conf` includes last, for temporary overrides during an apply.
pub const TEMP_OVERRIDE: &str = "compute_ctl_temp_override.conf";

/// Renders `postgresql.conf` for `spec` in the order of today's Neon (reference 2026 §4).
/// `disable_subscribers` is the value of `neon.disable_logical_replication_subscribers` (the
/// guard for Neon's Postgres); `privileged_role` is `--privileged-role-name`; `ssl` says
/// whether Postgres serves TLS with the files [`super::tls::install`] puts in PGDATA.
pub fn render(
    spec: &ParsedSpec,
    internal_http_port: u16,
    disable_subscribers: bool,
    privileged_role: &str,
    ssl: bool,
) -> String {
    let s = spec.spec();
    let mut out = String::new();
    if let Some(base) = &s.cluster.postgresql_conf {
        out.push_str(base);
        out.push('\n');
    }
    out.push_str("# Neon storage settings\n\n");
    // The neon extension reads the stripe size before it parses the connection string.
    if let Some(info) = &s.pageserver_connection_info {
        if let Some(stripe) = info.stripe_size {
            let _ = writeln!(out, "# from compute spec's pageserver_connection_info.stripe_size field");
            let _ = writeln!(out, "neon.stripe_size={stripe}");
        }
        let urls: Option<Vec<&str>> =
            info.first_pageservers().into_iter().map(|p| p.and_then(|p| p.libpq_url.as_deref())).collect();
        match urls {
            Some(urls) => {
                let _ = writeln!(out, "# derived from compute spec's pageserver_connection_info field");
                let _ = writeln!(out, "neon.pageserver_connstring={}", conf_value(&urls.join(",")));
            }
            None => out.push_str("# no neon.pageserver_connstring\n"),
        }
    } else {
        if let Some(stripe) = s.shard_stripe_size {
            let _ = writeln!(out, "# from compute spec's shard_stripe_size field");
            let _ = writeln!(out, "neon.stripe_size={stripe}");
        }
        if let Some(ps) = &s.pageserver_connstring {
            let _ = writeln!(out, "# from compute spec's pageserver_connstring field");
            let _ = writeln!(out, "neon.pageserver_connstring={}", conf_value(ps));
        }
    }
    if !s.safekeeper_connstrings.is_empty() {
        let list = s.safekeeper_connstrings.join(",");
        let value = match s.safekeepers_generation {
            Some(generation) => format!("g#{generation}:{list}"),
            None => list,
        };
        let _ = writeln!(out, "neon.safekeepers={}", conf_value(&value));
    }
    let ids = [
        ("neon.tenant_id", &s.tenant_id),
        ("neon.timeline_id", &s.timeline_id),
        ("neon.project_id", &s.project_id),
        ("neon.branch_id", &s.branch_id),
        ("neon.endpoint_id", &s.endpoint_id),
    ];
    for (name, value) in ids {
        if let Some(v) = value {
            let _ = writeln!(out, "{name}={}", conf_value(v));
        }
    }
    if ssl {
        let _ = writeln!(out, "ssl = on");
        let _ = writeln!(out, "ssl_cert_file = '{}'", super::tls::CERT_FILE);
        let _ = writeln!(out, "ssl_key_file = '{}'", super::tls::KEY_FILE);
    }
    for lc in ["lc_messages", "lc_monetary", "lc_time", "lc_numeric"] {
        let _ = writeln!(out, "{lc}='C.UTF-8'");
    }
    let mode = match s.mode {
        ComputeMode::Primary => "primary",
        ComputeMode::Static(_) => "static",
        ComputeMode::Replica => "replica",
    };
    let _ = writeln!(out, "neon.compute_mode={mode}");
    match s.mode {
        ComputeMode::Static(lsn) => {
            let _ = writeln!(out, "hot_standby=on\nrecovery_target_lsn='{lsn}'");
        }
        ComputeMode::Replica => out.push_str("hot_standby=on\n"),
        ComputeMode::Primary => {}
    }
    if std::fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|v| v.trim() == "2") {
        out.push_str("dynamic_shared_memory_type = mmap\n");
    }
    let _ = writeln!(out, "neon.privileged_role_name={}", conf_value(privileged_role));
    if let Some(settings) = &s.cluster.settings {
        out.push_str("# Managed by compute_ctl: begin\n");
        for opt in settings {
            // Validation refused null values and bad names, so every line is `name = value`.
            let value = opt.value.as_deref().unwrap_or_default();
            if opt.is_string() || !is_bare_conf_token(value) {
                let _ = writeln!(out, "{} = {}", opt.name, conf_value(value));
            } else {
                let _ = writeln!(out, "{} = {value}", opt.name);
            }
        }
        out.push_str("# Managed by compute_ctl: end\n");
    }
    audit_block(&mut out, spec);
    let _ = writeln!(out, "neon.extension_server_port={internal_http_port}");
    let _ = writeln!(out, "neon.disable_logical_replication_subscribers={disable_subscribers}");
    if s.logs_export_host.is_some() {
        out.push_str("log_destination='stderr,syslog'\n");
    }
    let _ = writeln!(out, "include_if_exists = '{TEMP_OVERRIDE}'");
    out
}

/// The `shared_preload_libraries` value of `audit_log_level`'s block, unescaped: the setting
/// (or `neon` without one), then `pgaudit` (and `pgauditlogtofile` for compliance levels)
/// unless it already names them. None when the level is `Disabled`.
pub fn audit_preload(spec: &ParsedSpec) -> Option<String> {
    let s = spec.spec();
    let extra: &[&str] = match s.audit_log_level {
        AuditLogLevel::Disabled => return None,
        AuditLogLevel::Log | AuditLogLevel::Base => &["pgaudit"],
        AuditLogLevel::Hipaa | AuditLogLevel::Extended | AuditLogLevel::Full => &["pgaudit", "pgauditlogtofile"],
    };
    let mut v = s.setting("shared_preload_libraries").unwrap_or("neon").to_string();
    for lib in extra {
        if !v.contains(lib) {
            v.push(',');
            v.push_str(lib);
        }
    }
    Some(v)
}

/// The preloaded libraries of `audit_preload` that `pkglibdir` lacks (`name.so`; names with
/// a `/` or a `$` are paths Postgres resolves itself and are not checked).
pub fn missing_libraries(preload: &str, pkglibdir: &Path) -> Vec<String> {
    preload
        .split(',')
        .map(|l| l.trim().trim_matches('"'))
        .filter(|l| !l.is_empty() && !l.contains('/') && !l.contains('$'))
        .filter(|l| !pkglibdir.join(format!("{l}.so")).exists())
        .map(str::to_string)
        .collect()
}

/// The pgaudit lines of `audit_log_level` (reference 2026 §4, line 16). The libraries are
/// appended to the `shared_preload_libraries` setting unless it already names them.
fn audit_block(out: &mut String, spec: &ParsedSpec) {
    let Some(libs) = audit_preload(spec) else { return };
    match spec.spec().audit_log_level {
        AuditLogLevel::Disabled => {}
        AuditLogLevel::Log | AuditLogLevel::Base => {
            out.push_str("# Managed by compute_ctl base audit settings: start\n");
            out.push_str("pgaudit.log='ddl,role'\npgaudit.log_catalog=off\n");
            let _ = writeln!(out, "shared_preload_libraries={}", conf_value(&libs));
            out.push_str("# Managed by compute_ctl base audit settings: end\n");
        }
        level @ (AuditLogLevel::Hipaa | AuditLogLevel::Extended | AuditLogLevel::Full) => {
            out.push_str("# Managed by compute_ctl compliance audit settings: begin\n");
            if level == AuditLogLevel::Full {
                out.push_str("pgaudit.log_parameter=on\npgaudit.log='all'\n");
            } else {
                out.push_str("pgaudit.log_parameter=off\npgaudit.log='all, -misc'\n");
            }
            out.push_str("pgaudit.log_catalog=off\npgaudit.log_rotation_age=5\n");
            let _ = writeln!(out, "shared_preload_libraries={}", conf_value(&libs));
            out.push_str("# Managed by compute_ctl compliance audit settings: end\n");
        }
    }
}

/// Writes `postgresql.conf` whole: to a temporary file that is renamed over the old one, so
/// a crash never leaves a half-written config.
pub fn write_postgres_conf(pgdata: &Path, text: &str) -> Result<()> {
    write_atomically(&pgdata.join("postgresql.conf"), text.as_bytes())
}

/// Writes a configuration file on the start path: only when its content differs, by a rename
/// over the old file, and without fsync. These files are derived from the spec and compared
/// at every start, before Postgres reads them (from the page cache), so a write lost or torn
/// by a crash is repaired by the next start; an fsync would only delay the spawn (0.5 to 5 ms
/// each on an idle disk, tens of ms on a busy one). Returns whether it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool> {
    match std::fs::read(path) {
        Ok(old) if old == bytes => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("cannot read", path, e)),
    }
    let tmp = path.with_extension("compute_ctl.tmp");
    let write = || -> std::io::Result<()> {
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| Error::io("cannot write", path, e))?;
    Ok(true)
}

/// Writes `path` whole and durably (fsync, then rename): for files that are not rewritten at
/// every start (the live reconfiguration's `postgresql.conf`, markers).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("compute_ctl.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| Error::io("cannot write", path, e))
}

/// Whether a `shared_preload_libraries` value (from a spec, a conf line or `SHOW`) names
/// `library`: a comma-separated list, each name possibly quoted.
pub fn preloads(value: &str, library: &str) -> bool {
    value.split(',').any(|l| l.trim().trim_matches(['\'', '"']) == library)
}

/// Parameter `name` as the last assignment in `text` sets it, for the simple `name = value`
/// lines a spec's `postgresql_conf` holds (used to find `max_connections`).
pub fn find_in_conf_text<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .rev()
        .filter_map(|l| {
            let l = l.split('#').next()?.trim();
            let (k, v) = l.split_once('=').or_else(|| l.split_once(char::is_whitespace))?;
            (k.trim() == name).then(|| v.trim().trim_matches('\''))
        })
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: &str =
        r#""tenant_id":"b0554b632bd4d547a63b86c3630317e8","timeline_id":"2414a61ffc94e428f14b5758fe308e13""#;

    fn rendered(extra: &str) -> String {
        let json = format!(r#"{{"format_version":1.0,"cluster":{{"roles":[],"databases":[]}},{IDS},{extra}}}"#);
        render(&ParsedSpec::parse(&json).unwrap(), 3081, false, "neon_superuser", false)
    }

    /// The `neon.*` lines in the order and with the conditions of today's Neon.
    #[test]
    fn neon_lines_in_todays_order() {
        let text = rendered(
            r#""pageserver_connection_info":{"shard_count":2,"stripe_size":2048,"shards":{
                "0102":{"pageservers":[{"id":2,"libpq_url":"postgresql://no_user@ps2:6400","grpc_url":null}]},
                "0002":{"pageservers":[{"id":1,"libpq_url":"postgresql://no_user@ps1:6400"}]}}},
            "pageserver_connstring":"host=ignored","shard_stripe_size":1,
            "safekeeper_connstrings":["sk1:5454","sk2:5454"],"safekeepers_generation":0,
            "project_id":"p","branch_id":"b","endpoint_id":"e","mode":"Replica""#,
        );
        let want = "# Neon storage settings\n\n\
            # from compute spec's pageserver_connection_info.stripe_size field\nneon.stripe_size=2048\n\
            # derived from compute spec's pageserver_connection_info field\n\
            neon.pageserver_connstring='postgresql://no_user@ps1:6400,postgresql://no_user@ps2:6400'\n\
            neon.safekeepers='g#0:sk1:5454,sk2:5454'\n\
            neon.tenant_id='b0554b632bd4d547a63b86c3630317e8'\nneon.timeline_id='2414a61ffc94e428f14b5758fe308e13'\n\
            neon.project_id='p'\nneon.branch_id='b'\nneon.endpoint_id='e'\n\
            lc_messages='C.UTF-8'\nlc_monetary='C.UTF-8'\nlc_time='C.UTF-8'\nlc_numeric='C.UTF-8'\n\
            neon.compute_mode=replica\nhot_standby=on\n";
        assert!(text.starts_with(want), "{text}");
        assert!(
            text.contains("\nneon.privileged_role_name='neon_superuser'\nneon.extension_server_port=3081\n"),
            "{text}"
        );
        assert!(!text.contains("ignored"), "{text}");

        // The legacy fields: the stripe size now comes before the connection string.
        let text = rendered(
            r#""pageserver_connstring":"host=a port=1,host=b port=2","shard_stripe_size":32768,
            "safekeeper_connstrings":["sk1:5454"],"safekeepers_generation":7"#,
        );
        let want = "# Neon storage settings\n\n# from compute spec's shard_stripe_size field\nneon.stripe_size=32768\n\
            # from compute spec's pageserver_connstring field\nneon.pageserver_connstring='host=a port=1,host=b port=2'\n\
            neon.safekeepers='g#7:sk1:5454'\n";
        assert!(text.starts_with(want), "{text}");
        assert!(text.contains("\nneon.compute_mode=primary\n"), "{text}");
    }

    /// The ssl lines come after the ids and before the locale lines, only when asked for.
    #[test]
    fn ssl_lines_at_neons_place() {
        let json =
            format!(r#"{{"format_version":1.0,"cluster":{{"roles":[],"databases":[]}},{IDS},"endpoint_id":"e"}}"#);
        let spec = ParsedSpec::parse(&json).unwrap();
        let text = render(&spec, 3081, false, "neon_superuser", true);
        assert!(
            text.contains(
                "neon.endpoint_id='e'\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
                 lc_messages='C.UTF-8'\n"
            ),
            "{text}"
        );
        assert!(!render(&spec, 3081, false, "neon_superuser", false).contains("ssl"));
    }

    #[test]
    fn audit_and_log_export_lines() {
        let text = rendered(r#""audit_log_level":"Hipaa","logs_export_host":"logs:514""#);
        assert!(text.contains(
            "# Managed by compute_ctl compliance audit settings: begin\npgaudit.log_parameter=off\n\
             pgaudit.log='all, -misc'\npgaudit.log_catalog=off\npgaudit.log_rotation_age=5\n\
             shared_preload_libraries='neon,pgaudit,pgauditlogtofile'\n"
        ));
        assert!(text.ends_with(
            "neon.disable_logical_replication_subscribers=false\nlog_destination='stderr,syslog'\n\
             include_if_exists = 'compute_ctl_temp_override.conf'\n"
        ));
        assert!(!rendered(r#""mode":"Primary""#).contains("pgaudit"));
    }

    #[test]
    fn every_audit_level_writes_its_pgaudit_lines() {
        let block = |level: &str| {
            let text = rendered(&format!(r#""audit_log_level":"{level}""#));
            let lines: Vec<&str> =
                text.lines().filter(|l| l.contains("pgaudit") || l.contains("audit settings")).collect();
            lines.join("\n")
        };
        let base = "# Managed by compute_ctl base audit settings: start\npgaudit.log='ddl,role'\n\
                    pgaudit.log_catalog=off\nshared_preload_libraries='neon,pgaudit'\n\
                    # Managed by compute_ctl base audit settings: end";
        assert_eq!(block("Log"), base);
        assert_eq!(block("Base"), base);
        let compliance = |log_parameter: &str, log: &str| {
            format!(
                "# Managed by compute_ctl compliance audit settings: begin\npgaudit.log_parameter={log_parameter}\n\
                 pgaudit.log='{log}'\npgaudit.log_catalog=off\npgaudit.log_rotation_age=5\n\
                 shared_preload_libraries='neon,pgaudit,pgauditlogtofile'\n\
                 # Managed by compute_ctl compliance audit settings: end"
            )
        };
        assert_eq!(block("Hipaa"), compliance("off", "all, -misc"));
        assert_eq!(block("Extended"), compliance("off", "all, -misc"));
        assert_eq!(block("Full"), compliance("on", "all"));
        assert_eq!(block("Disabled"), "");
        // A setting that names a library already is not given it twice.
        let json = format!(
            r#"{{"format_version":1.0,{IDS},"audit_log_level":"Full","cluster":{{"roles":[],"databases":[],"settings":[
               {{"name":"shared_preload_libraries","value":"pg_stat_statements,pgaudit","vartype":"string"}}]}}}}"#
        );
        let text = render(&ParsedSpec::parse(&json).unwrap(), 3081, false, "neon_superuser", false);
        assert!(text.contains("\nshared_preload_libraries='pg_stat_statements,pgaudit,pgauditlogtofile'\n"), "{text}");
    }

    #[test]
    fn missing_audit_libraries_are_named() {
        let dir = std::env::temp_dir().join(format!("cc-libs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pgaudit.so"), b"").unwrap();
        let missing = missing_libraries("neon, pgaudit,pgauditlogtofile,$libdir/x,/abs/y", &dir);
        assert_eq!(missing, ["neon", "pgauditlogtofile"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_if_changed_writes_only_a_different_content() {
        let dir = std::env::temp_dir().join(format!("cc-wic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.conf");
        assert!(write_if_changed(&p, b"a = 1\n").unwrap(), "a missing file is written");
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        assert!(!write_if_changed(&p, b"a = 1\n").unwrap(), "the same content is left alone");
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap()), inode);
        std::fs::write(&p, b"a = ").unwrap();
        assert!(write_if_changed(&p, b"a = 1\n").unwrap(), "a torn file is rewritten");
        assert_eq!(std::fs::read(&p).unwrap(), b"a = 1\n");
        assert!(!dir.join("f.compute_ctl.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn settings_render_as_neon_and_stay_on_their_line() {
        let json = r#"{"format_version":1.0,"cluster":{"roles":[],"databases":[],"settings":[
            {"name":"fsync","value":"off","vartype":"bool"},
            {"name":"test.escaping","value":"here's a \\ and\nnew line","vartype":"string"},
            {"name":"work_mem","value":"4MB; x","vartype":"integer"}]},
            "tenant_id":"b0554b632bd4d547a63b86c3630317e8","timeline_id":"2414a61ffc94e428f14b5758fe308e13"}"#;
        let spec = ParsedSpec::parse(json).unwrap();
        let text = render(&spec, 3081, false, "neon_superuser", false);
        assert!(text.contains("\nfsync = off\n"));
        assert!(text.contains("\ntest.escaping = 'here''s a \\\\ and\\nnew line'\n"));
        assert!(text.contains("\nwork_mem = '4MB; x'\n"));
        assert!(text.contains("neon.timeline_id='2414a61ffc94e428f14b5758fe308e13'\n"));
        assert!(text.ends_with("include_if_exists = 'compute_ctl_temp_override.conf'\n"));
        assert_eq!(find_in_conf_text("max_connections = 50\nport=1", "max_connections"), Some("50"));
    }
}
