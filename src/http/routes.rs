//! Routes of the external and internal servers, with Neon's methods, bodies and codes, and the
//! optional bearer-token check in front of them.
//!
//! Differences from Neon, on purpose: unknown paths (404) and wrong methods (405) get a JSON
//! `{"error": …}` body like every other error; `/terminate` also works from `empty` and answers
//! `{"lsn": …}`; `/insights` is a JSON object, not a JSON string holding JSON text.

use super::pg_routes;
use super::request::Request;
use super::response::Response;
use crate::compute::{Event, Reply};
use crate::lifecycle::{Shared, Status};
use crate::postgres::process::StopMode;
use crate::spec::{ConfigurationRequest, ParsedSpec};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};

/// What the handlers need: the snapshot to read, and the way to ask the owner for changes.
pub struct App {
    pub shared: Shared,
    /// `mpsc::Sender` is `Send` but not `Sync`; a clone is taken per request.
    pub events: Mutex<Sender<Event>>,
    /// False when the spec came from `-s` (then `/configure` answers 412, as in Neon).
    pub live_config_allowed: bool,
    pub connstr: String,
    /// Where `pg_dump` is (beside `-b`).
    pub bindir: PathBuf,
    /// `--http-auth-token-file`'s token; every route but `GET /metrics` then needs it.
    pub auth_token: Option<Token>,
    /// Requests being handled; the owner waits for them before the process exits so that
    /// the last answers (to `/terminate`, say) are written.
    pub in_flight: AtomicUsize,
    /// The owner loop's heartbeat, for `/healthz`.
    pub heartbeat: Arc<crate::heartbeat::Heartbeat>,
}

/// A bearer token. Its `Debug` never shows it, so it cannot leak into a log line.
pub struct Token(Vec<u8>);

impl Token {
    /// Reads the token file: the token is its content without surrounding whitespace.
    pub fn from_file(path: &std::path::Path) -> crate::Result<Token> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::Error::io("cannot read --http-auth-token-file", path, e))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(crate::Error::Usage(format!("--http-auth-token-file {}: the file is empty", path.display())));
        }
        Ok(Token(token.as_bytes().to_vec()))
    }

    /// The token itself, to send it (never to log it).
    pub fn reveal(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// Compares in time that depends only on the lengths, never on where the bytes differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        let mut diff = self.0.len() ^ given.len();
        for (i, b) in self.0.iter().enumerate() {
            diff |= usize::from(b ^ given.get(i).copied().unwrap_or(!b));
        }
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl App {
    fn send(&self, event: Event) -> bool {
        let tx = self.events.lock().unwrap_or_else(|p| p.into_inner()).clone();
        tx.send(event).is_ok()
    }
}

/// Which server a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    External,
    Internal,
}

impl Server {
    fn label(self) -> &'static str {
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
];

/// Routes that answer without the bearer token: the metrics, and the Kubernetes probes (the
/// kubelet cannot send a secret header; they reveal only the state).
const PUBLIC: &[&str] = &["/metrics", "/healthz", "/readyz", "/startupz"];
const INTERNAL: &[(&str, &[&str])] = &[("/extensions", &["POST"]), ("/grants", &["POST"])];

fn route(app: &App, server: Server, req: &Request) -> Response {
    app.in_flight.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight(&app.in_flight);
    let table = match server {
        Server::External => EXTERNAL,
        Server::Internal => INTERNAL,
    };
    let known = table.iter().find(|(p, _)| *p == req.path);
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

/// A random (version 4) UUID from the kernel's generator; a request id needs no more.
fn uuid_v4() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_err() {
        // No /dev/urandom (a bare chroot): std's per-process random hash keys, mixed with time.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        let x = u128::from(h.finish()) << 64 | u128::from(h.finish().rotate_left(17));
        b = x.to_be_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

fn dispatch(app: &App, server: Server, req: &Request, known: Option<&(&str, &[&str])>) -> Response {
    let m = req.method.as_str();
    let public = server == Server::External && PUBLIC.contains(&req.path.as_str()) && (m == "GET" || m == "HEAD");
    if !public && let Some(token) = &app.auth_token {
        let given = req.header("authorization").and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        if !given.is_some_and(|g| token.matches(g.as_bytes())) {
            return Response::error(401, "missing or invalid bearer token")
                .with_header("WWW-Authenticate", "Bearer".into());
        }
    }
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
        (Server::External, "/insights") => pg_routes::insights(app),
        (Server::External, "/database_schema") => pg_routes::database_schema(app, req),
        (Server::External, "/dbs_and_roles") => dbs_and_roles(app),
        (Server::External, "/check_writability") => pg_routes::check_writability(app),
        (Server::External, "/configure") => configure(app, req),
        (Server::External, "/terminate") => terminate(app, req),
        (Server::External, "/restart") => restart(app),
        (Server::External, "/healthz") => super::probes::healthz(app.heartbeat.age()),
        (Server::External, "/readyz") => super::probes::readyz(&app.shared.get(), &app.connstr),
        (Server::External, "/startupz") => super::probes::startupz(&app.shared.get()),
        (Server::Internal, "/extensions") => pg_routes::extensions(app, req),
        (Server::Internal, "/grants") => pg_routes::grants(app, req),
        _ => Response::error(404, format!("no route for {}", req.path)),
    }
}

fn status(app: &App) -> Response {
    Response::json(200, &app.shared.get().body())
}

/// Neon's `/info`: the CPUs this compute may use.
fn info() -> Response {
    let num_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Response::json(200, &serde_json::json!({ "num_cpus": num_cpus }))
}

/// Roles and databases from Postgres, never with password hashes.
fn dbs_and_roles(app: &App) -> Response {
    match crate::postgres::apply::dbs_and_roles(&app.connstr) {
        Ok(v) => Response::json(200, &v),
        Err(e) => Response::error(500, e.to_string()),
    }
}

pub(super) fn precondition(status: Status) -> Response {
    Response::error(412, format!("invalid compute status: {status}"))
}

/// 412 unless the compute is `running`.
pub(super) fn require_running(app: &App) -> Result<(), Response> {
    match app.shared.get().status {
        Status::Running => Ok(()),
        other => Err(precondition(other)),
    }
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
        Err(e) => return Response::error(400, e.to_string()),
    };
    let snap = app.shared.get();
    let allowed = match snap.status {
        Status::Empty | Status::Running => true,
        Status::Failed => snap.postgres_up,
        _ => false,
    };
    if !allowed {
        return precondition(snap.status);
    }
    let (tx, rx) = mpsc::channel();
    if !app.send(Event::Configure { spec, reply: tx }) {
        return Response::error(503, "compute_ctl is shutting down");
    }
    match rx.recv() {
        Ok(Reply::Done | Reply::Terminated { .. }) => status(app),
        Ok(Reply::WrongState(s)) => precondition(s),
        Ok(Reply::NotPossible(msg)) => Response::error(409, msg),
        Ok(Reply::Failed(msg)) => Response::error(500, format!("compute configuration failed: {msg}")),
        Err(_) => Response::error(503, "compute_ctl is shutting down"),
    }
}

fn terminate(app: &App, req: &Request) -> Response {
    let mode = match req.query_param("mode").as_deref() {
        None | Some("fast") => StopMode::Fast,
        Some("immediate") => StopMode::Immediate,
        Some(other) => return Response::error(400, format!("unknown mode {other:?}; expected fast or immediate")),
    };
    let snap = app.shared.get();
    match snap.status {
        Status::Terminated => return Response::empty(201),
        Status::Empty | Status::Running => {}
        other => return precondition(other),
    }
    let (tx, rx) = mpsc::channel();
    if !app.send(Event::Terminate { mode, reply: tx }) {
        return Response::error(503, "compute_ctl is shutting down");
    }
    match rx.recv() {
        Ok(Reply::Terminated { lsn }) => Response::json(200, &serde_json::json!({ "lsn": lsn })),
        Ok(Reply::Done) => Response::json(200, &serde_json::json!({ "lsn": null })),
        Ok(Reply::WrongState(Status::Terminated)) => Response::empty(201),
        Ok(Reply::WrongState(s)) => precondition(s),
        Ok(Reply::NotPossible(msg)) => Response::error(409, msg),
        Ok(Reply::Failed(msg)) => Response::error(500, msg),
        Err(_) => Response::error(503, "compute_ctl is shutting down"),
    }
}

/// `POST /restart` (running, local mode): fast shutdown and start of Postgres on the same
/// PGDATA, so that settings waiting for a restart take effect; answers the new status. 409 in
/// pageserver mode, where the control plane must restart the compute.
fn restart(app: &App) -> Response {
    if let Err(r) = require_running(app) {
        return r;
    }
    let (tx, rx) = mpsc::channel();
    if !app.send(Event::Restart { reply: tx }) {
        return Response::error(503, "compute_ctl is shutting down");
    }
    match rx.recv() {
        Ok(Reply::Done | Reply::Terminated { .. }) => status(app),
        Ok(Reply::WrongState(s)) => precondition(s),
        Ok(Reply::NotPossible(msg)) => Response::error(409, msg),
        Ok(Reply::Failed(msg)) => Response::error(500, format!("restart failed: {msg}")),
        Err(_) => Response::error(503, "compute_ctl is shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare() {
        let t = Token(b"s3cret".to_vec());
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cres"));
        assert!(!t.matches(b"s3cret2"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }
}
