//! rsyslog, the forwarder of the compute's logs (reference 2026 §10.7 and §10.8): the
//! configuration files compute_ctl writes for it, its restart, and the garbage collector of
//! the audit log files it reads.
//!
//! Two files, both in the rsyslog directory (`--rsyslog-dir`, default `/etc/rsyslog.d`):
//! - `compute_audit_rsyslog.conf` for compliance audit (`audit_log_level` Hipaa, Extended,
//!   Full): the audit files pgauditlogtofile writes under `PGDATA/log` go, as JSON records in
//!   RFC 5424 framing, to the receiver named by `AUDIT_LOGGING_TLS_ENDPOINT` (TLS) or else
//!   `AUDIT_LOGGING_ENDPOINT`;
//! - `postgres_logs.conf` for `logs_export_host`: what Postgres sends to syslog (program name
//!   `postgres`) goes to that host.
//!
//! rsyslog has no reload, so a changed file takes effect by a restart ([`restart`]): the
//! running `rsyslogd` is stopped and the VM's init, not compute_ctl, starts a new one.
//!
//! Every line of the files is written here from rsyslog's documented directives; values are
//! quoted as RainerScript string constants ([`rs_str`], [`rs_param`]).

pub mod gc;
pub mod restart;

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file of compliance audit logging.
pub const AUDIT_FILE: &str = "compute_audit_rsyslog.conf";
/// The file of the Postgres logs export.
pub const LOGS_EXPORT_FILE: &str = "postgres_logs.conf";
/// The first line of the logs export file: what tells compute_ctl the file is its own.
const EXPORT_HEADER: &str =
    "# Written by compute_ctl for logs_export_host; rewritten at every start and reconfiguration.\n";
/// Neon's rsyslog directory.
pub const DEFAULT_DIR: &str = "/etc/rsyslog.d";
/// The CA bundle a TLS receiver's certificate is checked against.
pub const CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where rsyslog keeps its imfile read positions.
const WORK_DIR: &str = "/var/log/rsyslog";

/// What compute_ctl needs to drive rsyslog, fixed for the run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--rsyslog-dir`.
    pub dir: PathBuf,
    /// `AUDIT_LOGGING_ENDPOINT` (empty counts as unset, as in Neon).
    pub audit_plain: String,
    /// `AUDIT_LOGGING_TLS_ENDPOINT`; wins over the plain one.
    pub audit_tls: String,
    /// Which `rsyslogd` processes a restart may stop (see [`restart::Filter`]).
    pub filter: restart::Filter,
    /// How long a restart waits for the new rsyslogd ([`restart::WAIT`]).
    pub restart_wait: Duration,
    /// How often the audit GC runs (60 s; `COMPUTE_CTL_TEST_AUDIT_GC_INTERVAL_MS` for tests).
    pub gc_interval: Duration,
}

impl Settings {
    /// From `--rsyslog-dir` and the environment (`get` reads one variable).
    ///
    /// Two variables exist for tests only and are not part of the interface:
    /// `COMPUTE_CTL_TEST_RSYSLOGD_EXE` (only `rsyslogd` processes running that executable are
    /// stopped, so a test's stand-in is the only one it can touch) and
    /// `COMPUTE_CTL_TEST_AUDIT_GC_INTERVAL_MS` (the GC interval).
    pub fn new(dir: PathBuf, get: impl Fn(&str) -> Option<String>) -> Settings {
        let gc_interval = get("COMPUTE_CTL_TEST_AUDIT_GC_INTERVAL_MS")
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(gc::INTERVAL, Duration::from_millis);
        Settings {
            dir,
            audit_plain: get("AUDIT_LOGGING_ENDPOINT").unwrap_or_default(),
            audit_tls: get("AUDIT_LOGGING_TLS_ENDPOINT").unwrap_or_default(),
            filter: restart::Filter { exe: get("COMPUTE_CTL_TEST_RSYSLOGD_EXE").map(PathBuf::from) },
            restart_wait: restart::WAIT,
            gc_interval,
        }
    }
}

/// A validated `host:port`. The host is a DNS name, an IPv4 address, or an IPv6 address in
/// brackets (kept without them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port`; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<HostPort, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest.split_once(']').ok_or("an IPv6 address needs its closing ]")?;
            h.parse::<std::net::Ipv6Addr>().map_err(|_| format!("{h:?} is not an IPv6 address"))?;
            (h, p.strip_prefix(':').ok_or("expected host:port, the :port is missing")?)
        } else {
            let (h, p) = s.rsplit_once(':').ok_or("expected host:port, the :port is missing")?;
            if h.contains(':') {
                return Err("write an IPv6 address in brackets: [addr]:port".into());
            }
            if !valid_hostname(h) {
                return Err(format!("{h:?} is not a host name or IP address"));
            }
            (h, p)
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => return Err(format!("{port:?} is not a port (1-65535)")),
        };
        Ok(HostPort { host: host.to_string(), port })
    }
}

/// A DNS name (letters, digits, `-` inside labels of at most 63, at most 253 in all) or an
/// IPv4 address, which has the same shape.
fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Where compliance audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditTarget {
    pub at: HostPort,
    pub tls: bool,
}

/// The audit receiver from the two variables: TLS wins; both empty is Neon's error, and a
/// malformed value is an error naming the variable (Neon panics).
pub fn audit_target(plain: &str, tls: &str) -> Result<AuditTarget> {
    let (name, value, is_tls) = match (plain.is_empty(), tls.is_empty()) {
        (true, true) => {
            return Err(Error::Process {
                what: "compliance audit logging (audit_log_level Hipaa, Extended or Full)".into(),
                detail: "AUDIT_LOGGING_ENDPOINT and AUDIT_LOGGING_TLS_ENDPOINT are both empty".into(),
            });
        }
        (_, false) => ("AUDIT_LOGGING_TLS_ENDPOINT", tls, true),
        (false, true) => ("AUDIT_LOGGING_ENDPOINT", plain, false),
    };
    let at = HostPort::parse(value).map_err(|why| Error::Process {
        what: "compliance audit logging".into(),
        detail: format!("{name}={value:?}: {why}"),
    })?;
    Ok(AuditTarget { at, tls: is_tls })
}

/// `s` as a single-quoted RainerScript string constant, for expressions (`set`, `if`).
pub fn rs_str(s: &str) -> String {
    quoted(s, '\'')
}

/// `s` as a double-quoted string, for the parameters of objects (`input`, `action`, …),
/// which take no single-quoted strings. rsyslog 8.2302 reads `\"` and `\\` there and a bare
/// `$`, but refuses `\$` (checked with `rsyslogd -N1`).
pub fn rs_param(s: &str) -> String {
    quoted(s, '"')
}

fn quoted(s: &str, quote: char) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// The compliance audit file: read `log_dir/*.log`, wrap each record as JSON with the ids,
/// and send it over TCP (TLS when the target says so).
pub fn audit_config(log_dir: &Path, endpoint_id: &str, project_id: &str, target: &AuditTarget) -> String {
    let host = rs_param(&target.at.host);
    let mut c = String::new();
    c.push_str("# Written by compute_ctl for compliance audit logging; rewritten at every start.\n");
    c.push_str("module(load=\"imfile\")\n\n");
    // A record of pgauditlogtofile may span lines; each starts with its GMT timestamp.
    let files = rs_param(&format!("{}/*.log", log_dir.display()));
    c.push_str(&format!(
        "input(type=\"imfile\" file={files} tag=\"pgaudit_log\" facility=\"local5\" severity=\"info\"\n      \
         startmsg.regex=\"^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}} [0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}\\\\.[0-9]{{3}} GMT,\")\n\n"
    ));
    c.push_str(&format!("global(workDirectory={}", rs_param(WORK_DIR)));
    if target.tls {
        c.push_str(&format!(" defaultNetstreamDriverCAFile={}", rs_param(CA_FILE)));
    }
    c.push_str(")\n\n");
    // The RFC 5424 header, then the JSON object built below as the message.
    c.push_str(
        "template(name=\"ComputeAuditRecord\" type=\"string\"\n         \
         string=\"<%PRI%>1 %TIMESTAMP:::date-rfc3339% %HOSTNAME% %APP-NAME% - - - %$.audit%\\n\")\n\n",
    );
    c.push_str("if $syslogtag == 'pgaudit_log' then {\n");
    c.push_str(&format!("  set $.audit!endpoint_id = {};\n", rs_str(endpoint_id)));
    c.push_str(&format!("  set $.audit!project_id = {};\n", rs_str(project_id)));
    c.push_str("  set $.audit!msg = $msg;\n");
    c.push_str(&format!(
        "  action(type=\"omfwd\" target={host} port=\"{}\" protocol=\"tcp\" template=\"ComputeAuditRecord\"\n",
        target.at.port
    ));
    c.push_str("         queue.type=\"LinkedList\" queue.size=\"1000\" action.resumeRetryCount=\"10\"");
    if target.tls {
        c.push_str(&format!(
            "\n         streamDriver=\"gtls\" streamDriverMode=\"1\" streamDriverAuthMode=\"x509/name\"\n         \
             streamDriverPermittedPeers={host} streamDriver.CheckExtendedKeyPurpose=\"on\"\n         \
             streamDriver.PermitExpiredCerts=\"off\""
        ));
    }
    c.push_str(")\n  stop\n}\n");
    c
}

/// The Postgres logs export file for `host:port` (already validated by the spec).
pub fn logs_export_config(to: &HostPort) -> String {
    let mut c = String::new();
    c.push_str(EXPORT_HEADER);
    // Postgres's syslog_ident is `postgres` unless a setting changes it.
    c.push_str("if $programname == 'postgres' then {\n");
    c.push_str(&format!(
        "  action(type=\"omfwd\" target={} port=\"{}\" protocol=\"tcp\"\n         \
         template=\"RSYSLOG_SyslogProtocol23Format\" action.resumeRetryCount=\"3\"\n         \
         queue.type=\"LinkedList\" queue.size=\"1000\")\n",
        rs_param(&to.host),
        to.port
    ));
    c.push_str("  stop\n}\n");
    c
}

/// Start: compliance audit logging for `Hipaa`, `Extended`, `Full`. Checks the receiver,
/// writes the file, restarts rsyslog (always, as Neon: the running one may predate the file)
/// and starts the GC of the audit files. Any failure fails the start.
pub fn configure_audit(settings: &Settings, pgdata: &Path, endpoint_id: &str, project_id: &str) -> Result<()> {
    let target = audit_target(&settings.audit_plain, &settings.audit_tls)?;
    let log_dir = pgdata.join("log");
    let text = audit_config(&log_dir, endpoint_id, project_id, &target);
    let path = settings.dir.join(AUDIT_FILE);
    write_if_changed(&path, &text)?;
    log::info!(
        "compliance audit logging: {} written, records go to {}:{}{}",
        path.display(),
        target.at.host,
        target.at.port,
        if target.tls { " over TLS" } else { "" }
    );
    restart::restart(&settings.filter, settings.restart_wait)?;
    gc::ensure_started(log_dir, settings.gc_interval);
    Ok(())
}

/// Start and every reconfiguration: the Postgres logs export file for `host`. rsyslog is
/// restarted only when the file changed.
///
/// Unlike Neon, which leaves the old file (and rsyslog forwarding whatever Postgres still
/// sends to syslog) when the host is cleared, a cleared host removes the file and restarts
/// rsyslog, so that nothing goes to a receiver the spec no longer names.
pub fn configure_logs_export(settings: &Settings, host: Option<&str>) -> Result<()> {
    let path = settings.dir.join(LOGS_EXPORT_FILE);
    let changed = match host {
        Some(h) => {
            let to = HostPort::parse(h).map_err(|why| Error::invalid("logs_export_host", why))?;
            let changed = write_if_changed(&path, &logs_export_config(&to))?;
            if changed {
                log::info!("logs export: {} written, Postgres logs go to {h}", path.display());
            }
            changed
        }
        None if !written_by_us(&path) => false,
        None => match std::fs::remove_file(&path) {
            Ok(()) => {
                log::info!("logs export: logs_export_host cleared, {} removed", path.display());
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io("cannot remove", &path, e)),
        },
    };
    if changed {
        restart::restart(&settings.filter, settings.restart_wait)?;
    }
    Ok(())
}

/// True when `path` holds a logs export file this program wrote (its first line says so). A
/// file of that name that someone else put there is never removed: only warned about.
fn written_by_us(path: &Path) -> bool {
    match std::fs::read_to_string(path) {
        Ok(text) if text.starts_with(EXPORT_HEADER) => true,
        Ok(_) => {
            log::warn!("logs export: {} was not written by compute_ctl; left as it is", path.display());
            false
        }
        Err(_) => false,
    }
}

/// Writes `text` to `path` by a rename over it, only when it differs; true when it wrote.
fn write_if_changed(path: &Path, text: &str) -> Result<bool> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    }
    crate::postgres::conf::write_if_changed(path, text.as_bytes())
}

#[cfg(test)]
mod tests;
