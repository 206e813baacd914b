//! `pg_dump --schema-only` of one database, read as a stream.
//!
//! The name goes through `PGDATABASE`, which libpq never parses as a connection string, so
//! any name is safe. pg_dump connects before it writes anything, so the first read tells
//! success from failure; a failure after that ends the stream with an error.

use super::{Node, sql};
use crate::error::{Error, Result};
use std::io::Read;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a dump waits for its table locks (`--lock-wait-timeout`): a dump blocked on a
/// locked table holds a Postgres connection.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Starts `pg_dump` on `database`. `Ok(None)`: it succeeded and wrote nothing;
/// `Err(Error::NoSuchDatabase)` when the database does not exist; `Err(Error::LockTimeout)`
/// when a table stayed locked for [`LOCK_WAIT`]. While pg_dump has written nothing yet (it
/// takes its locks first), `abandoned` is asked every 50 ms; when it says the requester has
/// gone, pg_dump is killed and reaped.
pub fn schema(node: &Node, database: &str, abandoned: &dyn Fn() -> bool) -> Result<Option<Dump>> {
    let config = sql::config(&node.connstr)?;
    let mut cmd = Command::new(node.bindir.join("pg_dump"));
    cmd.args(["--schema-only", "--no-password", &format!("--lock-wait-timeout={}s", LOCK_WAIT.as_secs())]);
    if let Some(host) = config.get_hosts().first() {
        match host {
            postgres::config::Host::Tcp(h) => cmd.arg("--host").arg(h),
            postgres::config::Host::Unix(p) => cmd.arg("--host").arg(p),
        };
    }
    if let Some(port) = config.get_ports().first() {
        cmd.arg("--port").arg(port.to_string());
    }
    if let Some(user) = config.get_user() {
        cmd.arg("--username").arg(user);
    }
    if let Some(pw) = config.get_password() {
        cmd.env("PGPASSWORD", String::from_utf8_lossy(pw).into_owned());
    }
    cmd.env("PGDATABASE", database).env("PGAPPNAME", "compute_ctl:database_schema").env("LC_MESSAGES", "C");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let failed = |detail: String| Error::Process { what: "failed to execute pg_dump".into(), detail };
    let mut child = cmd.spawn().map_err(|e| Error::system("failed to execute pg_dump", e))?;
    let mut stdout = child.stdout.take().expect("stdout was piped above");
    let mut stderr = child.stderr.take().expect("stderr was piped above");
    // stderr is drained on its own thread so a chatty pg_dump can never block on it.
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // The first read happens on its own thread, so that a requester that goes away while
    // pg_dump waits for a lock is noticed.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = vec![0u8; 64 * 1024];
        let n = stdout.read(&mut first);
        let _ = tx.send((n.map(|n| first[..n].to_vec()), stdout));
    });
    let (first, stdout) = loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(got) => break got,
            Err(RecvTimeoutError::Timeout) if !abandoned() => {}
            Err(_) => {
                log::info!("pg_dump of {database:?}: the client went away; killing pg_dump (pid {})", child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed("the client went away".into()));
            }
        }
    };
    let first = match first {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::system("unexpected I/O error reading pg_dump's output", e));
        }
    };
    if first.is_empty() {
        let status = child.wait();
        let text = errors.join().unwrap_or_default();
        if text.contains(&format!("database \"{database}\" does not exist")) {
            return Err(Error::NoSuchDatabase(database.to_string()));
        }
        // --lock-wait-timeout works through statement_timeout around the LOCK TABLEs.
        if text.contains("canceling statement due to") && text.contains("LOCK TABLE") {
            return Err(Error::LockTimeout(format!(
                "pg_dump could not lock a table within {} s: {}",
                LOCK_WAIT.as_secs(),
                text.trim()
            )));
        }
        return match status {
            Ok(s) if s.success() => Ok(None),
            _ => Err(failed(text.trim().to_string())),
        };
    }
    Ok(Some(Dump { first: std::io::Cursor::new(first), stdout, child: Some(child), errors: Some(errors) }))
}

/// pg_dump's output: the bytes already read, then the rest; at the end, the exit status
/// decides whether the stream ends cleanly or with an error. Dropping it stops pg_dump.
#[derive(Debug)]
pub struct Dump {
    first: std::io::Cursor<Vec<u8>>,
    stdout: ChildStdout,
    child: Option<Child>,
    errors: Option<JoinHandle<String>>,
}

impl Read for Dump {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.first.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        let n = self.stdout.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        let Some(mut child) = self.child.take() else { return Ok(0) };
        let status = child.wait()?;
        let text = self.errors.take().and_then(|h| h.join().ok()).unwrap_or_default();
        if status.success() {
            Ok(0)
        } else {
            log::warn!("pg_dump failed midway ({status}): {}", text.trim());
            Err(std::io::Error::other(format!("pg_dump failed: {}", text.trim())))
        }
    }
}

impl Drop for Dump {
    fn drop(&mut self) {
        // The client went away: stop pg_dump and reap it.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
