//! Routes of the external and internal servers, with Neon's methods, bodies and codes.
//! Authorization happens before a request gets here (`gate`, which consults the tables below:
//! a route missing from them is treated as unknown, and unknown paths need no token).
//!
//! Differences from Neon, on purpose: unknown paths (404) and wrong methods (405) get a JSON
//! `{"error": …}` body like every other error; `/terminate` also works from `empty` and answers
//! `{"lsn": …}`; `/insights` is a JSON object, not a JSON string holding JSON text. Added:
//! `POST /restart` and the Kubernetes probes ([`super::probes`]).

use super::neon2026;
use super::request::Request;
use super::response::{Body, Response};
use crate::error::Error;
use crate::lifecycle::{Event, Message, Reply, Shared, Status, Termination};
use crate::postgres::{Node, apply, dump, queries};
use crate::spec::{ConfigurationRequest, ParsedSpec};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};

/// What the handlers need: the snapshot to read, the way to ask the owner, and the node the
/// Postgres-side routes work on.
pub struct App {
    pub shared: Shared,
    /// `mpsc::Sender` is `Send` but not `Sync`; a clone is taken per request.
    pub events: Mutex<Sender<Message>>,
    /// False when the spec came from `-s` (then `/configure` answers 412, as Neon did
    /// before `-c`).
    pub live_config_allowed: bool,
    pub node: Node,
    /// Downloads extension archives from `--remote-ext-base-url`, shared with the start-up
    /// preload so one archive is fetched once.
    pub extensions: Arc<crate::remote_ext::Installer>,
    /// `compute_ctl_config` of the `-c` file or of the control plane's answer, set once before
    /// the compute starts (a `/configure` body's copy is ignored, as in Neon); unset with
    /// `-s`, `-S` or no spec source.
    pub compute_ctl_config: std::sync::OnceLock<crate::spec::ComputeCtlConfig>,
    /// Requests being handled; the owner waits for them before the process exits so that
    /// the last answers (to `/terminate`, say) are written.
    pub in_flight: AtomicUsize,
    /// The owner loop's heartbeat, for `/healthz`.
    pub heartbeat: Arc<crate::heartbeat::Heartbeat>,
}

impl App {
    /// Sends `event` to the owner and waits for its answer; 503 once the owner has gone.
    pub(super) fn ask(&self, event: Event) -> Result<Reply, Response> {
        let gone = || Response::error(503, "compute_ctl is shutting down");
        let (reply, answer) = mpsc::channel();
        let tx = crate::locks::lock(&self.events).clone();
        tx.send(Message { event, reply: Some(reply) }).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())
    }

    /// The owner's leave for a route that works on Postgres: 412 unless `running`.
    pub(super) fn admit(&self) -> Result<(), Response> {
        match self.ask(Event::Query)? {
            Reply::Done
            | Reply::Configured(_)
            | Reply::Terminated { .. }
            | Reply::AlreadyTerminated { .. }
            | Reply::Promoted(_) => Ok(()),
            Reply::WrongState(s) => Err(precondition(s)),
            Reply::NotPossible(msg) => Err(Response::error(409, msg)),
            Reply::Failed(msg) => Err(Response::error(500, msg)),
        }
    }
}

/// The one place that turns an error of the layers below into a response: 404 for a database
/// that does not exist, 500 for the rest; `context` (if any) goes before the message.
pub(super) fn failure(context: &str, e: &Error) -> Response {
    let code = match e {
        Error::NoSuchDatabase(_) => 404,
        Error::LockTimeout(_) => 503,
        _ => 500,
    };
    let msg = e.report();
    Response::error(code, if context.is_empty() { msg.to_string() } else { format!("{context}: {msg}") })
}

/// Which server a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    External,
    Internal,
}

impl Server {
    pub(super) fn label(self) -> &'static str {
        match self {
            Server::External => "external",
            Server::Internal => "internal",
        }
    }
}

pub fn handler(app: Arc<App>, server: Server) -> super::server::Handler {
    Arc::new(move |req: &Request| route(&app, server, req))
}

/// Counts a request as in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The routes of each server: (path, allowed methods). The path strings double as the
/// bounded label set of the request counter.
const EXTERNAL: &[(&str, &[&str])] = &[
    ("/status", &["GET", "HEAD"]),
    ("/metrics.json", &["GET", "HEAD"]),
    ("/metrics", &["GET", "HEAD"]),
    ("/info", &["GET", "HEAD"]),
    ("/insights", &["GET", "HEAD"]),
    ("/database_schema", &["GET", "HEAD"]),
    ("/dbs_and_roles", &["GET", "HEAD"]),
    ("/check_writability", &["POST"]),
    ("/configure", &["POST"]),
    ("/terminate", &["POST"]),
    ("/restart", &["POST"]),
    ("/healthz", &["GET", "HEAD"]),
    ("/readyz", &["GET", "HEAD"]),
    ("/startupz", &["GET", "HEAD"]),
    ("/promote", &["POST"]),
    ("/lfc/prewarm", &["GET", "HEAD", "POST", "DELETE"]),
    ("/lfc/offload", &["GET", "HEAD", "POST"]),
    ("/autoscaling_metrics", &["GET", "HEAD"]),
];
const INTERNAL: &[(&str, &[&str])] = &[
    ("/extensions", &["POST"]),
    ("/grants", &["POST"]),
    ("/refresh_configuration", &["POST"]),
    // Not in Neon's internal set: a `preStop` hook in the pod reaches it on loopback without
    // a JWT, which it could not mint (`compute_ctl --terminate`, README "Kubernetes").
    ("/terminate", &["POST"]),
    // `/extension_server/{filename}`: matched by prefix.
    ("/extension_server/", &["POST"]),
];

fn route(app: &App, server: Server, req: &Request) -> Response {
    app.in_flight.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight(&app.in_flight);
    let table = match server {
        Server::External => EXTERNAL,
        Server::Internal => INTERNAL,
    };
    let known = table.iter().find(|(p, _)| route_matches(p, &req.path));
    let label = known.map_or("other", |(p, _)| *p);
    let mut resp = dispatch(app, server, req, known);
    crate::metrics::count_http_request(server.label(), label, resp.status);
    // As Neon: a request without `x-request-id` gets a UUIDv4, and the id is copied onto the
    // response. The parser has already refused control characters in header values, so echoing
    // a client's id cannot split the response head.
    let id = req.header("x-request-id").map_or_else(uuid_v4, str::to_string);
    if label == "/metrics" || label == "/status" {
        log::debug!("{} {} -> {} (request {id})", req.method, req.path, resp.status);
    } else {
        log::info!("{} {} -> {} (request {id})", req.method, req.path, resp.status);
    }
    resp = resp.with_header("x-request-id", id);
    resp
}

/// The route `path` names on `server`, if any (also the metrics label).
pub(super) fn known_path(server: Server, path: &str) -> Option<&'static str> {
    let table = match server {
        Server::External => EXTERNAL,
        Server::Internal => INTERNAL,
    };
    table.iter().find(|(p, _)| route_matches(p, path)).map(|(p, _)| *p)
}

/// A table path matches itself, and a path ending in `/` (`/extension_server/`) every path it
/// begins; the gate and the dispatch use this one rule, so a prefix route is never public.
fn route_matches(route: &str, path: &str) -> bool {
    route == path || (route.ends_with('/') && path.starts_with(route))
}

/// A random (version 4) UUID from the kernel's generator; a request id needs no more. The
/// bytes are fetched 512 at a time per connection thread (one getrandom(2) per 32 ids), since a
/// control plane may poll `/status` every millisecond.
pub(super) fn uuid_v4() -> String {
    thread_local! {
        /// Random bytes not used yet, and where the unused ones start.
        static POOL: std::cell::RefCell<([u8; 512], usize)> = const { std::cell::RefCell::new(([0; 512], 512)) };
    }
    let mut b = [0u8; 16];
    POOL.with_borrow_mut(|(pool, at)| {
        if *at + 16 > pool.len() {
            if crate::sys::fill_random(pool).is_err() {
                // No getrandom (a very old kernel): std's per-process random hash keys, mixed
                // with time.
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                h.write_u128(now.as_nanos());
                let x = u128::from(h.finish()) << 64 | u128::from(h.finish().rotate_left(17));
                b = x.to_be_bytes();
                return;
            }
            *at = 0;
        }
        b.copy_from_slice(&pool[*at..*at + 16]);
        *at += 16;
    });
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(x >> 4)]));
        out.push(char::from(HEX[usize::from(x & 0xf)]));
    }
    out
}

fn dispatch(app: &App, server: Server, req: &Request, known: Option<&(&str, &[&str])>) -> Response {
    let m = req.method.as_str();
    let Some((path, methods)) = known else {
        return Response::error(404, format!("no route for {}", req.path));
    };
    if !methods.contains(&m) {
        return Response::error(405, format!("method {m} is not allowed on {path}"))
            .with_header("Allow", methods.join(", "));
    }
    match (server, *path) {
        (Server::External, "/status") => status(app),
        (Server::External, "/metrics.json") => Response::json(200, &app.shared.get().metrics),
        (Server::External, "/metrics") => {
            Response::text(200, "text/plain; version=0.0.4", crate::metrics::render(&app.shared.get()))
        }
        (Server::External, "/info") => info(),
        (Server::External, "/insights") => insights(app),
        (Server::External, "/database_schema") => database_schema(app, req),
        (Server::External, "/dbs_and_roles") => dbs_and_roles(app),
        (Server::External, "/check_writability") => check_writability(app),
        (Server::External, "/configure") => configure(app, req),
        (Server::External | Server::Internal, "/terminate") => terminate(app, req),
        (Server::External, "/restart") => restart(app),
        (Server::External, "/healthz") => super::probes::healthz(app.heartbeat.age()),
        (Server::External, "/readyz") => super::probes::readyz(&app.shared.get(), &app.node.connstr),
        (Server::External, "/startupz") => super::probes::startupz(&app.shared.get()),
        (Server::Internal, "/extensions") => extensions(app, req),
        (Server::Internal, "/grants") => grants(app, req),
        (Server::External, "/promote") => neon2026::promote(app, req),
        (Server::External, "/lfc/prewarm") => neon2026::lfc(app, req, false),
        (Server::External, "/lfc/offload") => neon2026::lfc(app, req, true),
        (Server::External, "/autoscaling_metrics") => neon2026::autoscaling_metrics(app),
        (Server::Internal, "/refresh_configuration") => neon2026::refresh_configuration(app),
        (Server::Internal, "/extension_server/") => neon2026::extension_server(app, req),
        _ => Response::error(404, format!("no route for {}", req.path)),
    }
}

fn status(app: &App) -> Response {
    let body = app.shared.get().body();
    // With AUTOSCALING: the monitor's state (a bind failure, say) beside Neon's fields; for a
    // Static compute, its LSN lease.
    let extra: Vec<(&str, serde_json::Value)> = [
        crate::vm_monitor::status_json().map(|v| ("vm_monitor", v)),
        crate::lease::status_json().map(|v| ("lsn_lease", v)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if extra.is_empty() {
        return Response::json(200, &body);
    }
    match serde_json::to_value(&body) {
        Ok(mut v) => {
            for (k, x) in extra {
                v[k] = x;
            }
            Response::json(200, &v)
        }
        Err(_) => Response::json(200, &body),
    }
}

/// Neon's `/info`: the CPUs this compute may use.
fn info() -> Response {
    let num_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Response::json(200, &serde_json::json!({ "num_cpus": num_cpus }))
}

/// Roles and databases from Postgres, never with password hashes.
fn dbs_and_roles(app: &App) -> Response {
    match apply::dbs_and_roles(&app.node.connstr) {
        Ok(v) => Response::json(200, &v),
        Err(e) => failure("", &e),
    }
}

pub(super) fn precondition(status: Status) -> Response {
    Response::error(412, format!("invalid compute status: {status}"))
}

fn is_json(req: &Request) -> bool {
    req.header("content-type")
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// Decodes a JSON body the way Neon's extractors answer: 415 without the content type, 400
/// for malformed JSON, 422 for JSON of the wrong shape.
pub fn json_body<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, Response> {
    if !is_json(req) {
        return Err(Response::error(415, "expected request with `content-type: application/json`"));
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        let code = if e.is_data() { 422 } else { 400 };
        Response::error(code, format!("failed to parse the request body: {e}"))
    })
}

fn configure(app: &App, req: &Request) -> Response {
    if !app.live_config_allowed {
        return Response::error(412, "live configuration is not allowed for this compute node");
    }
    let body: ConfigurationRequest = match json_body(req) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let spec = match ParsedSpec::validate(body.spec) {
        Ok(s) => s,
        Err(e) => return Response::error(400, e.report().to_string()),
    };
    match app.ask(Event::Configure(spec)) {
        // The state this request left, taken by the owner before its next event: concurrent
        // requests each get their own, never the next one's `configuration_pending`.
        Ok(Reply::Configured(body)) => Response::json(200, &body),
        Ok(Reply::Done | Reply::Terminated { .. } | Reply::AlreadyTerminated { .. } | Reply::Promoted(_)) => {
            status(app)
        }
        Ok(Reply::WrongState(s)) => precondition(s),
        Ok(Reply::NotPossible(msg)) => Response::error(409, msg),
        // A termination signal cut the configuration short: not the spec's fault.
        Ok(Reply::Failed(msg))
            if matches!(
                app.shared.get().status,
                Status::TerminationPendingFast | Status::TerminationPendingImmediate
            ) =>
        {
            Response::error(503, format!("the compute is terminating: {msg}"))
        }
        Ok(Reply::Failed(msg)) => Response::error(500, format!("compute configuration failed: {msg}")),
        Err(resp) => resp,
    }
}

fn terminate(app: &App, req: &Request) -> Response {
    let mode = match req.query_param("mode").as_deref() {
        None | Some("fast") => Termination::Fast,
        Some("immediate") => Termination::Immediate,
        Some("immediate_postgres") => Termination::PostgresImmediate,
        Some(other) => {
            return Response::error(
                400,
                format!("unknown mode {other:?}; expected fast, immediate or immediate_postgres"),
            );
        }
    };
    match app.ask(Event::Terminate(mode)) {
        Ok(Reply::Terminated { lsn }) => Response::json(200, &serde_json::json!({ "lsn": lsn })),
        Ok(Reply::AlreadyTerminated { lsn }) => Response::json(201, &serde_json::json!({ "lsn": lsn })),
        Ok(Reply::Done | Reply::Configured(_) | Reply::Promoted(_)) => {
            Response::json(200, &serde_json::json!({ "lsn": null }))
        }
        Ok(Reply::WrongState(s)) => precondition(s),
        Ok(Reply::NotPossible(msg)) => Response::error(409, msg),
        Ok(Reply::Failed(msg)) => Response::error(500, msg),
        Err(resp) => resp,
    }
}

/// `POST /restart` (running, local mode): fast shutdown and start of Postgres on the same
/// PGDATA, so that settings waiting for a restart take effect; answers the new status. 409 in
/// pageserver mode, where the control plane must restart the compute.
fn restart(app: &App) -> Response {
    match app.ask(Event::Restart) {
        Ok(Reply::Configured(body)) => Response::json(200, &body),
        Ok(Reply::Done | Reply::Terminated { .. } | Reply::AlreadyTerminated { .. } | Reply::Promoted(_)) => {
            status(app)
        }
        Ok(Reply::WrongState(s)) => precondition(s),
        Ok(Reply::NotPossible(msg)) => Response::error(409, msg),
        Ok(Reply::Failed(msg)) => Response::error(500, format!("restart failed: {msg}")),
        Err(resp) => resp,
    }
}

/// `GET /insights` (running only): `{"pg_stat_statements": [...]}`, a real JSON object
/// instead of Neon's double-encoded string.
fn insights(app: &App) -> Response {
    if let Err(r) = app.admit() {
        return r;
    }
    match queries::insights(&app.node) {
        Ok(rows) => Response::json(200, &serde_json::json!({ "pg_stat_statements": rows })),
        Err(e) => failure("", &e),
    }
}

/// `POST /check_writability` (running only): answered `true`.
fn check_writability(app: &App) -> Response {
    if let Err(r) = app.admit() {
        return r;
    }
    match queries::check_writability(&app.node) {
        Ok(()) => Response::json(200, &true),
        Err(e) => failure("", &e),
    }
}

/// `GET /database_schema?database=NAME`: `pg_dump --schema-only` of that database as a
/// chunked response; 404 when it does not exist. A failure midway cuts the body short.
///
/// A dump waiting on a locked table holds a Postgres connection, so: at most [`MAX_DUMPS`] run
/// at once (429 beyond), each waits at most `dump::LOCK_WAIT` for its locks (503 after), and a
/// client that goes away before the dump starts writing gets its `pg_dump` killed.
fn database_schema(app: &App, req: &Request) -> Response {
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
    match dump::schema(&app.node, &database, &super::server::client_gone) {
        Ok(None) => Response::text(200, "text/plain; charset=utf-8", String::new()),
        Ok(Some(stream)) => Response {
            status: 200,
            content_type: Some("text/plain; charset=utf-8"),
            headers: Vec::new(),
            body: Body::Stream(Box::new(SlotHeld { stream, _slot: slot })),
        },
        Err(e) => failure("", &e),
    }
}

/// `pg_dump`s running at once for `/database_schema`; each holds a Postgres connection.
pub const MAX_DUMPS: usize = 4;

static DUMPS: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_DUMPS`] places, held until the response is written or dropped.
struct DumpSlot(());

impl DumpSlot {
    fn take() -> Option<DumpSlot> {
        DUMPS.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < MAX_DUMPS).then_some(n + 1)).ok()?;
        Some(DumpSlot(()))
    }
}

impl Drop for DumpSlot {
    fn drop(&mut self) {
        DUMPS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A dump's output, keeping its place until the stream is done.
struct SlotHeld {
    stream: dump::Dump,
    _slot: DumpSlot,
}

impl std::io::Read for SlotHeld {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf)
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
fn extensions(app: &App, req: &Request) -> Response {
    let body: ExtensionRequest = match app.admit().and_then(|()| json_body(req)) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match queries::install_extension(&app.node, &body.database, &body.extension, &body.version) {
        Ok(()) => Response::json(201, &serde_json::json!({ "extension": body.extension, "version": body.version })),
        Err(e) => failure("failed to install extension", &e),
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
fn grants(app: &App, req: &Request) -> Response {
    let body: GrantRequest = match app.admit().and_then(|()| json_body(req)) {
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
    let list: Vec<&str> = list.iter().map(String::as_str).collect();
    match queries::grant_on_schema(&app.node, &body.database, &body.schema, &list, &body.role) {
        Ok(()) => Response::json(201, &body),
        Err(e) => failure("failed to grant role privileges to the schema", &e),
    }
}

#[cfg(test)]
mod tests {
    /// Ids stay well-formed and distinct across refills of the per-thread pool (32 per refill).
    #[test]
    fn request_ids_are_distinct_version_4_uuids_across_pool_refills() {
        let ids: Vec<String> = (0..100).map(|_| super::uuid_v4()).collect();
        for id in &ids {
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(id.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{id}");
            assert_eq!(id.as_bytes()[14], b'4', "version nibble: {id}");
            assert!(matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "variant nibble: {id}");
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
