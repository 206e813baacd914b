//! `postgresql.conf` and `pg_hba.conf`, written as Neon's compute_ctl writes them.

use crate::error::{Error, Result};
use crate::escape::{conf_value, is_bare_conf_token};
use crate::spec::{ComputeMode, ParsedSpec};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// The line added to `pg_hba.conf` so that roles with passwords can connect from other hosts
/// (tabs as in Neon).
pub const PG_HBA_ALL_MD5: &str = "host\tall\t\tall\t\tall\t\tmd5";

/// The file `postgresql.conf` includes last, for temporary overrides during an apply.
pub const TEMP_OVERRIDE: &str = "compute_ctl_temp_override.conf";

/// Renders `postgresql.conf` for `spec` (reference 4.4). `disable_subscribers` is the value of
/// `neon.disable_logical_replication_subscribers` (the guard for Neon's Postgres).
pub fn render(spec: &ParsedSpec, internal_http_port: u16, disable_subscribers: bool) -> String {
    let s = spec.spec();
    let mut out = String::new();
    if let Some(base) = &s.cluster.postgresql_conf {
        out.push_str(base);
        out.push('\n');
    }
    out.push_str("# Neon storage settings\n");
    if let Some(ps) = &s.pageserver_connstring {
        let _ = writeln!(out, "neon.pageserver_connstring={}", conf_value(ps));
    }
    if let Some(stripe) = s.shard_stripe_size {
        let _ = writeln!(out, "neon.stripe_size={stripe}");
    }
    if !s.safekeeper_connstrings.is_empty() {
        let _ = writeln!(out, "neon.safekeepers={}", conf_value(&s.safekeeper_connstrings.join(",")));
    }
    if let Some(t) = &s.tenant_id {
        let _ = writeln!(out, "neon.tenant_id={}", conf_value(t));
    }
    if let Some(t) = &s.timeline_id {
        let _ = writeln!(out, "neon.timeline_id={}", conf_value(t));
    }
    for lc in ["lc_messages", "lc_monetary", "lc_time", "lc_numeric"] {
        let _ = writeln!(out, "{lc}='C.UTF-8'");
    }
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
    let _ = writeln!(out, "neon.extension_server_port={internal_http_port}");
    let _ = writeln!(out, "neon.disable_logical_replication_subscribers={disable_subscribers}");
    let _ = writeln!(out, "include_if_exists = '{TEMP_OVERRIDE}'");
    out
}

/// Writes `postgresql.conf` whole: to a temporary file that is renamed over the old one, so
/// a crash never leaves a half-written config.
pub fn write_postgres_conf(pgdata: &Path, text: &str) -> Result<()> {
    write_atomically(&pgdata.join("postgresql.conf"), text.as_bytes())
}

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

/// Appends `line` to the file unless some line already equals it; returns whether it was
/// added. A trailing newline is kept (Neon's helper leaves the file without one).
pub fn line_in_file(path: &Path, line: &str) -> Result<bool> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    if text.lines().any(|l| l == line) {
        return Ok(false);
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io("cannot open", path, e))?;
    let sep = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
    writeln!(f, "{sep}{line}").map_err(|e| Error::io("cannot append to", path, e))?;
    Ok(true)
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

    #[test]
    fn line_in_file_adds_once() {
        let dir = std::env::temp_dir().join(format!("cc-lif-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, "line1\nline2.1\t line2.2\nline3").unwrap();
        assert!(!line_in_file(&p, "line3").unwrap());
        assert!(line_in_file(&p, "line4").unwrap());
        assert!(!line_in_file(&p, "line4").unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "line1\nline2.1\t line2.2\nline3\nline4\n");
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
        let text = render(&spec, 3081, false);
        assert!(text.contains("\nfsync = off\n"));
        assert!(text.contains("\ntest.escaping = 'here''s a \\\\ and\\nnew line'\n"));
        assert!(text.contains("\nwork_mem = '4MB; x'\n"));
        assert!(text.contains("neon.timeline_id='2414a61ffc94e428f14b5758fe308e13'\n"));
        assert!(text.ends_with("include_if_exists = 'compute_ctl_temp_override.conf'\n"));
        assert_eq!(find_in_conf_text("max_connections = 50\nport=1", "max_connections"), Some("50"));
    }
}
