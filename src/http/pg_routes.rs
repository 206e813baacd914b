//! The routes that talk to Postgres: `/insights`, `/check_writability`, `/database_schema`
//! (external) and `/extensions`, `/grants` (internal).
//!
//! Each opens its own short connection with `--connstr`, tagged `compute_ctl:<route>` so the
//! activity monitor does not count it as user activity.

use super::request::Request;
use super::response::{Body, Response};
use super::routes::{App, json_body, require_running};
use crate::error::db_error_text;
use crate::escape::quote_ident;
use crate::postgres::sql;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::process::{Command, Stdio};

/// `GET /insights` (running only): the top 100 statements of `pg_stat_statements` by mean
/// time, excluding compute_ctl's own superuser, as `{"pg_stat_statements": [...]}`. An empty
/// list when the extension is not installed or cannot be read (logged), as in Neon, but as a
/// real JSON object instead of Neon's double-encoded string.
pub fn insights(app: &App) -> Response {
    if let Err(r) = require_running(app) {
        return r;
    }
    let mut client = match sql::connect(&app.connstr, None, "compute_ctl:insights") {
        Ok(c) => c,
        Err(e) => return Response::error(500, e.to_string()),
    };
    let superuser = sql::connstr_user(&app.connstr).unwrap_or_default();
    let query = "SELECT coalesce(json_agg(row_to_json(s)), '[]'::json)::text FROM ( \
                   SELECT * FROM pg_stat_statements \
                   WHERE userid IS DISTINCT FROM (SELECT oid FROM pg_roles WHERE rolname = $1) \
                   ORDER BY (mean_exec_time + mean_plan_time) DESC LIMIT 100) s";
    let installed = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')", &[])
        .map(|r| r.get::<_, bool>(0));
    let rows = match installed {
        Ok(true) => match client.query_one(query, &[&superuser]) {
            Ok(row) => serde_json::from_str(row.get::<_, &str>(0)).unwrap_or(serde_json::Value::Array(vec![])),
            Err(e) => {
                log::warn!("cannot read pg_stat_statements: {}", db_error_text(&e));
                serde_json::Value::Array(vec![])
            }
        },
        Ok(false) => serde_json::Value::Array(vec![]),
        Err(e) => return Response::error(500, format!("cannot query pg_extension: {}", db_error_text(&e))),
    };
    Response::json(200, &serde_json::json!({ "pg_stat_statements": rows }))
}

/// `POST /check_writability` (running only): an upsert into `health_check`, answered `true`.
/// A full disk is logged and still counts as success, as in Neon.
pub fn check_writability(app: &App) -> Response {
    if let Err(r) = require_running(app) {
        return r;
    }
    let mut client = match sql::connect(&app.connstr, None, "compute_ctl:check_writability") {
        Ok(c) => c,
        Err(e) => return Response::error(500, e.to_string()),
    };
    let result = client.batch_execute(
        "CREATE TABLE IF NOT EXISTS public.health_check (id integer PRIMARY KEY, updated_at timestamptz DEFAULT now()); \
         INSERT INTO public.health_check VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET updated_at = now();",
    );
    match result {
        Ok(()) => Response::json(200, &true),
        Err(e) if e.code() == Some(&postgres::error::SqlState::DISK_FULL) => {
            log::warn!("tenant disk is full: {}", db_error_text(&e));
            Response::json(200, &true)
        }
        Err(e) => Response::error(500, db_error_text(&e)),
    }
}

/// `GET /database_schema?database=NAME`: streams `pg_dump --schema-only` of that database as a
/// chunked response. The name goes through `PGDATABASE`, which libpq never parses as a
/// connection string, so any name is safe. 404 when the database does not exist; 500 when
/// `pg_dump` fails before writing anything. A failure midway cuts the chunked body short.
///
/// A dump waiting on a locked table holds a Postgres connection, so: at most [`MAX_DUMPS`] run
/// at once (429 beyond), each waits at most [`DUMP_LOCK_TIMEOUT`] for its locks (503 after),
/// and a client that goes away before the dump starts writing gets its `pg_dump` killed.
pub fn database_schema(app: &App, req: &Request) -> Response {
    let Some(database) = req.query_param("database") else {
        return Response::error(400, "missing query parameter `database`");
    };
    if database.is_empty() {
        return Response::error(400, "query parameter `database` is empty");
    }
    let Some(slot) = DumpSlot::take() else {
        return Response::error(
            429,
            format!("{MAX_DUMPS} /database_schema requests are running already; try again when one is done"),
        );
    };
    let config = match sql::config(&app.connstr) {
        Ok(c) => c,
        Err(e) => return Response::error(500, e.to_string()),
    };
    let mut cmd = Command::new(app.bindir.join("pg_dump"));
    cmd.args(["--schema-only", "--no-password", &format!("--lock-wait-timeout={}s", DUMP_LOCK_TIMEOUT.as_secs())]);
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
    cmd.env("PGDATABASE", &database).env("PGAPPNAME", "compute_ctl:database_schema").env("LC_MESSAGES", "C");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Response::error(500, format!("failed to execute pg_dump: {e}")),
    };
    let mut stdout = child.stdout.take().expect("stdout was piped above");
    let mut stderr = child.stderr.take().expect("stderr was piped above");
    // stderr is drained on its own thread so a chatty pg_dump can never block on it.
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // pg_dump connects and takes its locks before it writes anything: the first read tells
    // success from failure. It is read on its own thread so that a client that goes away
    // meanwhile is noticed and its pg_dump killed.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = vec![0u8; 64 * 1024];
        let n = stdout.read(&mut first);
        let _ = tx.send((n.map(|n| first[..n].to_vec()), stdout));
    });
    let (first, stdout) = loop {
        match rx.recv_timeout(std::time::Duration::from_millis(50)) {
            Ok(got) => break got,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !super::server::client_gone() => {}
            Err(_) => {
                log::info!("/database_schema: the client went away; killing pg_dump (pid {})", child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Response::error(500, "the client went away");
            }
        }
    };
    let first = match first {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Response::error(500, format!("unexpected I/O error: {e}"));
        }
    };
    if first.is_empty() {
        let status = child.wait();
        let text = errors.join().unwrap_or_default();
        if text.contains(&format!("database \"{database}\" does not exist")) {
            return Response::error(404, "database does not exist");
        }
        // --lock-wait-timeout works through statement_timeout around the LOCK TABLEs.
        if text.contains("canceling statement due to") && text.contains("LOCK TABLE") {
            return Response::error(
                503,
                format!("pg_dump could not lock a table within {} s: {}", DUMP_LOCK_TIMEOUT.as_secs(), text.trim()),
            );
        }
        return match status {
            Ok(s) if s.success() => Response::text(200, "text/plain; charset=utf-8", String::new()),
            _ => Response::error(500, format!("failed to execute pg_dump: {}", text.trim())),
        };
    }
    let reader = DumpReader {
        first: std::io::Cursor::new(first),
        stdout,
        child: Some(child),
        errors: Some(errors),
        _slot: slot,
    };
    Response {
        status: 200,
        content_type: Some("text/plain; charset=utf-8"),
        headers: Vec::new(),
        body: Body::Stream(Box::new(reader)),
    }
}

/// `pg_dump`s running at once for `/database_schema`; each holds a Postgres connection.
pub const MAX_DUMPS: usize = 4;
/// How long a dump waits for its table locks (`--lock-wait-timeout`).
pub const DUMP_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

static DUMPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One of the [`MAX_DUMPS`] places, held until the response is written or dropped.
struct DumpSlot(());

impl DumpSlot {
    fn take() -> Option<DumpSlot> {
        use std::sync::atomic::Ordering;
        DUMPS.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < MAX_DUMPS).then_some(n + 1)).ok()?;
        Some(DumpSlot(()))
    }
}

impl Drop for DumpSlot {
    fn drop(&mut self) {
        DUMPS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// pg_dump's output: the bytes already read, then the rest; at the end, the exit status
/// decides whether the stream ends cleanly or with an error.
struct DumpReader {
    first: std::io::Cursor<Vec<u8>>,
    stdout: std::process::ChildStdout,
    child: Option<std::process::Child>,
    errors: Option<std::thread::JoinHandle<String>>,
    _slot: DumpSlot,
}

impl Read for DumpReader {
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

impl Drop for DumpReader {
    fn drop(&mut self) {
        // The client went away: stop pg_dump and reap it.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The body of `POST /extensions` (internal).
#[derive(Debug, Deserialize)]
struct ExtensionRequest {
    extension: String,
    database: String,
    version: String,
}

/// `POST /extensions` (running only): installs or updates an extension to a version in one
/// database. 201 `{"extension", "version"}`.
pub fn extensions(app: &App, req: &Request) -> Response {
    if let Err(r) = require_running(app) {
        return r;
    }
    let body: ExtensionRequest = match json_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let result = (|| -> Result<(), String> {
        let mut c = sql::connect(&app.connstr, Some(&body.database), "compute_ctl:install_extension")
            .map_err(|e| e.to_string())?;
        let installed: Option<String> = c
            .query_opt("SELECT extversion FROM pg_extension WHERE extname = $1", &[&body.extension])
            .map_err(|e| db_error_text(&e))?
            .map(|r| r.get(0));
        let (ext, ver) = (quote_ident(&body.extension), quote_ident(&body.version));
        let stmt = match installed {
            Some(v) if v == body.version => return Ok(()),
            Some(_) => format!("ALTER EXTENSION {ext} UPDATE TO {ver}"),
            None => format!("CREATE EXTENSION IF NOT EXISTS {ext} WITH VERSION {ver}"),
        };
        c.batch_execute(&stmt).map_err(|e| db_error_text(&e))
    })();
    match result {
        Ok(()) => Response::json(201, &serde_json::json!({ "extension": body.extension, "version": body.version })),
        Err(e) => Response::error(500, format!("failed to install extension: {e}")),
    }
}

/// Privileges `/grants` accepts (Neon's `Privilege`); anything else is a 422.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum Privilege {
    Select,
    Insert,
    Update,
    Delete,
    Truncate,
    References,
    Trigger,
    Usage,
    Create,
    Connect,
    Temporary,
    Execute,
}

/// The body of `POST /grants` (internal), echoed on success.
#[derive(Debug, Serialize, Deserialize)]
struct GrantRequest {
    database: String,
    schema: String,
    privileges: Vec<Privilege>,
    role: String,
}

/// `POST /grants` (running only): `GRANT <privileges> ON SCHEMA "<schema>" TO "<role>"` in a
/// database. 201 with the request echoed.
pub fn grants(app: &App, req: &Request) -> Response {
    if let Err(r) = require_running(app) {
        return r;
    }
    let body: GrantRequest = match json_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.privileges.is_empty() {
        return Response::error(422, "privileges: at least one privilege is needed");
    }
    let list: Vec<String> = body
        .privileges
        .iter()
        .map(|p| serde_json::to_value(p).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default())
        .collect();
    let stmt =
        format!("GRANT {} ON SCHEMA {} TO {}", list.join(", "), quote_ident(&body.schema), quote_ident(&body.role));
    let result = sql::connect(&app.connstr, Some(&body.database), "compute_ctl:set_role_grants")
        .map_err(|e| e.to_string())
        .and_then(|mut c| c.batch_execute(&stmt).map_err(|e| db_error_text(&e)));
    match result {
        Ok(()) => Response::json(201, &body),
        Err(e) => Response::error(500, format!("failed to grant role privileges to the schema: {e}")),
    }
}
