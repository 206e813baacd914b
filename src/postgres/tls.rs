//! TLS for Postgres (reference 2026 §10.1): the key and certificate of
//! `compute_ctl_config.tls`, copied into PGDATA as `server.key` and `server.crt`, and the
//! check that a reload took them.
//!
//! compute_ctl does no cryptography here: whether a key and a certificate belong together,
//! and whether the key is usable, is Postgres's (OpenSSL's) judgement. A pair Postgres refuses
//! stops a start (its log line is quoted in the start error) and fails a live reconfigure
//! (Postgres keeps serving the previous pair, and the previous files are put back). Neon
//! checks for an ECDSA P-256 pair itself and retries every second for ever; any pair Postgres
//! accepts (RSA, a PKCS#8 key) works here.

use super::Node;
use super::apply::settings;
use super::process::{Postmaster, RunAs};
use super::sql;
use crate::error::{Error, Result};
use crate::spec::{ComputeFeature, ParsedSpec, TlsConfig};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The files in PGDATA, and the `ssl_*_file` values that name them (relative to PGDATA).
pub const KEY_FILE: &str = "server.key";
pub const CERT_FILE: &str = "server.crt";

/// How long a start waits for the certificate file to become readable (Neon: for ever).
pub const CERT_WAIT: Duration = Duration::from_secs(60);
/// Overrides [`CERT_WAIT`], in seconds (for tests and slow certificate provisioners).
pub const CERT_WAIT_ENV: &str = "COMPUTE_CTL_TLS_CERT_WAIT_SECS";

/// Postgres's words when a reload could not load the new key or certificate (it then keeps
/// the previous SSL context).
const NOT_RELOADED: &str = "SSL configuration was not reloaded";

/// Whether Postgres serves TLS: `compute_ctl_config.tls` is set and the spec has the
/// feature `tls_experimental`, as in Neon.
pub fn active(tls: Option<&TlsConfig>, spec: &ParsedSpec) -> bool {
    tls.is_some() && spec.spec().features.contains(&ComputeFeature::TlsExperimental)
}

/// The [`CERT_WAIT`] in force ([`CERT_WAIT_ENV`] if set to a number of seconds).
pub fn cert_wait() -> Duration {
    std::env::var(CERT_WAIT_ENV).ok().and_then(|v| v.trim().parse::<u64>().ok()).map_or(CERT_WAIT, Duration::from_secs)
}

/// Waits until `cert_path` can be read, at most `timeout`, checking `interrupted`; returns
/// its bytes. The error names the file and what the last attempt said.
pub fn wait_readable(cert_path: &Path, timeout: Duration, interrupted: &AtomicBool) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut logged = false;
    loop {
        let err = match std::fs::read(cert_path) {
            Ok(bytes) => return Ok(bytes),
            Err(e) => e,
        };
        if interrupted.load(Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }
        if Instant::now() >= deadline {
            return Err(Error::io(
                format!("compute_ctl_config.tls.cert_path: not readable after {} s:", timeout.as_secs()),
                cert_path,
                err,
            ));
        }
        if !logged {
            log::info!("waiting for the TLS certificate {} to be readable ({err})", cert_path.display());
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What [`install`] replaced: the previous contents of the two files (None where a file did
/// not exist), for [`Installed::restore`].
#[derive(Debug, Default)]
pub struct Installed {
    changed: bool,
    old: Vec<(PathBuf, Option<Vec<u8>>)>,
}

impl Installed {
    /// True when either file was written.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Puts the previous files back (a missing one is removed again).
    pub fn restore(self, run_as: Option<RunAs>) -> Result<()> {
        for (path, old) in self.old {
            match old {
                Some(bytes) => write_private(&path, &bytes, run_as)?,
                None => std::fs::remove_file(&path).map_err(|e| Error::io("cannot remove", &path, e))?,
            }
        }
        Ok(())
    }
}

/// Copies `key_path` to `PGDATA/server.key` and `cert_path` to `PGDATA/server.crt`, each
/// only when its content differs, mode 0600 and owned by the Postgres user, by a rename of a
/// complete temporary file (so Postgres never reads half a key). A source that cannot be read
/// is an error naming its field and file; nothing is written then.
pub fn install(node: &Node, tls: &TlsConfig) -> Result<Installed> {
    let sources = [("key_path", &tls.key_path, KEY_FILE), ("cert_path", &tls.cert_path, CERT_FILE)];
    let mut read = Vec::new();
    for (field, src, dst) in sources {
        let bytes = std::fs::read(src)
            .map_err(|e| Error::io(format!("compute_ctl_config.tls.{field}: cannot read"), src, e))?;
        read.push((node.pgdata.join(dst), bytes));
    }
    let mut installed = Installed::default();
    for (path, bytes) in read {
        let old = match std::fs::read(&path) {
            Ok(old) => Some(old),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("cannot read", &path, e)),
        };
        if old.as_deref() == Some(&bytes[..]) {
            fix_owner_and_mode(&path, node.run_as)?;
            continue;
        }
        write_private(&path, &bytes, node.run_as)?;
        installed.changed = true;
        installed.old.push((path, old));
    }
    Ok(installed)
}

/// Writes `bytes` to a temporary file created with mode 0600, gives it to the Postgres user,
/// and renames it over `path`.
fn write_private(path: &Path, bytes: &[u8], run_as: Option<RunAs>) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!("{name}.compute_ctl.tmp"));
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        if let Some(u) = run_as {
            std::os::unix::fs::fchown(&f, Some(u.uid), Some(u.gid))?;
        }
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("cannot write", path, e)
    })
}

/// An unchanged file keeps its inode; only a wrong owner or mode is corrected.
fn fix_owner_and_mode(path: &Path, run_as: Option<RunAs>) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(path).map_err(|e| Error::io("cannot stat", path, e))?;
    if let Some(u) = run_as
        && (meta.uid() != u.uid || meta.gid() != u.gid)
    {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid)).map_err(|e| Error::io("cannot chown", path, e))?;
    }
    if meta.mode() & 0o777 != 0o600 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("cannot chmod", path, e))?;
    }
    Ok(())
}

/// After a reload of a Postgres that serves TLS: whether the postmaster loaded the key and
/// certificate, from its own log. `pm` must have been capturing its log since before the
/// reload ([`Postmaster::capture_log`]); `loaded_before` is `pg_conf_load_time()` before it.
///
/// A reload that cannot load the files is only logged (`SSL configuration was not
/// reloaded`), and Postgres goes on serving the previous ones. To read the verdict after it
/// was written: sessions are opened until a new one sees the new load time (the postmaster
/// forks sessions only between two turns of its loop, and a reload, SSL included, is done
/// within one turn), then one more session, certainly forked after the reload, writes a mark
/// into the log; the lines before the mark hold the verdict. When the mark does not appear
/// (Postgres's log goes elsewhere), the reload cannot be confirmed: a warning, not an error.
pub fn confirm_reload(connstr: &str, pm: &Postmaster, loaded_before: &str, wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        let mut client = sql::connect(connstr, None, sql::APP_APPLY)?;
        if settings::conf_load_time(&mut client)? != loaded_before {
            break;
        }
        if Instant::now() >= deadline {
            log::warn!("postgres did not take the reload within {wait:?}: cannot confirm that it loaded the TLS files");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mark = format!("compute_ctl: TLS reload check {}-{nanos}", pm.pid());
    let mut client = sql::connect(connstr, None, sql::APP_APPLY)?;
    client
        .batch_execute(&format!("SET log_min_messages = log; DO $$BEGIN RAISE LOG '{mark}'; END$$"))
        .map_err(|e| Error::sql("mark the log after a reload", "postgres", e))?;
    drop(client);
    loop {
        let lines = pm.captured_log();
        if let Some(at) = lines.iter().position(|l| l.contains(&mark)) {
            return match reload_failure(&lines[..at]) {
                None => Ok(()),
                Some(why) => Err(Error::Process {
                    what: "postgres did not load the new TLS key or certificate of compute_ctl_config.tls".into(),
                    detail: format!("{why} (it goes on serving the previous ones)"),
                }),
            };
        }
        if Instant::now() >= deadline {
            log::warn!(
                "the log mark did not appear within {wait:?}: cannot confirm that postgres loaded the TLS files"
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Postgres's reason, in the log lines a reload wrote, for not loading the new key or
/// certificate: the lines before its "SSL configuration was not reloaded", joined. None when
/// the reload took them.
pub fn reload_failure(lines: &[String]) -> Option<String> {
    let at = lines.iter().position(|l| l.contains(NOT_RELOADED))?;
    // The reasons are the LOG lines between the reload's start and the verdict.
    let start = lines[..at].iter().rposition(|l| l.contains("received SIGHUP")).map_or(0, |i| i + 1);
    let reasons: Vec<&str> = lines[start..at].iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect();
    Some(if reasons.is_empty() { lines[at].trim().to_string() } else { reasons.join("; ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_failure_quotes_postgres() {
        let lines: Vec<String> = [
            "LOG:  received SIGHUP, reloading configuration files",
            "LOG:  check of private key failed: error:05800074:x509 certificate routines::key values mismatch",
            "LOG:  SSL configuration was not reloaded",
        ]
        .map(String::from)
        .to_vec();
        let why = reload_failure(&lines).unwrap();
        assert_eq!(
            why,
            "LOG:  check of private key failed: error:05800074:x509 certificate routines::key values mismatch"
        );
        assert_eq!(reload_failure(&lines[..2]), None);
    }

    #[test]
    fn install_writes_private_files_only_when_changed_and_restores() {
        let dir = std::env::temp_dir().join(format!("cc-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pgdata")).unwrap();
        let (key, cert) = (dir.join("k.pem"), dir.join("c.pem"));
        std::fs::write(&key, "KEY1").unwrap();
        std::fs::write(&cert, "CERT1").unwrap();
        let node = Node {
            pgdata: dir.join("pgdata"),
            bindir: dir.clone(),
            connstr: String::new(),
            run_as: None,
            internal_http_port: 0,
            privileged_role: String::new(),
            interrupted: Default::default(),
            tls: None,
        };
        let tls = TlsConfig { key_path: key.display().to_string(), cert_path: cert.display().to_string() };
        let first = install(&node, &tls).unwrap();
        assert!(first.changed());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(node.pgdata.join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!install(&node, &tls).unwrap().changed(), "the same files are left alone");
        std::fs::write(&cert, "CERT2").unwrap();
        let second = install(&node, &tls).unwrap();
        assert!(second.changed());
        assert_eq!(std::fs::read(node.pgdata.join(CERT_FILE)).unwrap(), b"CERT2");
        second.restore(None).unwrap();
        assert_eq!(std::fs::read(node.pgdata.join(CERT_FILE)).unwrap(), b"CERT1");
        std::fs::remove_file(&key).unwrap();
        let err = install(&node, &tls).unwrap_err().report().to_string();
        assert!(err.starts_with(&format!("compute_ctl_config.tls.key_path: cannot read {}", key.display())), "{err}");
        assert!(!dir.join("pgdata").join("server.crt.compute_ctl.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
