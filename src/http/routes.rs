//! Routes of the external and internal servers, with Neon's methods, bodies and codes.

use super::request::Request;
use super::response::Response;
use crate::compute::{Event, Reply};
use crate::lifecycle::{Shared, Status};
use crate::postgres::process::StopMode;
use crate::spec::{ConfigurationRequest, ParsedSpec};
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
    /// Requests being handled; the owner waits for them before the process exits so that
    /// the last answers (to `/terminate`, say) are written.
    pub in_flight: std::sync::atomic::AtomicUsize,
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

pub fn handler(app: Arc<App>, server: Server) -> super::server::Handler {
    Arc::new(move |req: &Request| route(&app, server, req))
}

/// Counts a request as in flight for as long as it lives.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn route(app: &App, server: Server, req: &Request) -> Response {
    app.in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let _in_flight = InFlight(&app.in_flight);
    let m = req.method.as_str();
    let get = m == "GET" || m == "HEAD";
    let resp = match (server, req.path.as_str()) {
        (Server::External, "/status") if get => status(app),
        (Server::External, "/metrics.json") if get => Response::json(200, &app.shared.get().metrics),
        (Server::External, "/configure") if m == "POST" => configure(app, req),
        (Server::External, "/terminate") if m == "POST" => terminate(app, req),
        (Server::External, "/dbs_and_roles") if get => dbs_and_roles(app),
        (Server::External, "/status" | "/metrics.json" | "/configure" | "/terminate" | "/dbs_and_roles") => {
            Response::empty(405)
        }
        _ => Response::empty(404),
    };
    log::debug!("{} {} -> {}", req.method, req.path, resp.status);
    resp
}

fn status(app: &App) -> Response {
    Response::json(200, &app.shared.get().body())
}

/// Roles and databases from Postgres, never with password hashes.
fn dbs_and_roles(app: &App) -> Response {
    match crate::postgres::apply::dbs_and_roles(&app.connstr) {
        Ok(v) => Response::json(200, &v),
        Err(e) => Response::error(500, e.to_string()),
    }
}

fn precondition(status: Status) -> Response {
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
        Ok(Reply::Done) => status(app),
        Ok(Reply::WrongState(s)) => precondition(s),
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
        Ok(Reply::Done) => Response::empty(200),
        Ok(Reply::WrongState(Status::Terminated)) => Response::empty(201),
        Ok(Reply::WrongState(s)) => precondition(s),
        Ok(Reply::Failed(msg)) => Response::error(500, msg),
        Err(_) => Response::error(503, "compute_ctl is shutting down"),
    }
}
