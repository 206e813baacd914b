//! Routes today's Neon added after early 2025 (reference 5.6-5.10): `/promote`,
//! `/refresh_configuration`, `/extension_server/{filename}`, `/lfc/prewarm`, `/lfc/offload`,
//! `/autoscaling_metrics`. Each keeps the server's limits and authentication, none panics,
//! and none waits without a bound.

use super::request::Request;
use super::response::Response;
use super::routes::{App, json_body, precondition};
use crate::lifecycle::{Event, Reply};
use crate::spec::{ComputeSpec, Lsn, ParsedSpec};
use serde::Deserialize;

/// Neon's `PromoteConfig`.
#[derive(Deserialize)]
struct PromoteRequest {
    spec: ComputeSpec,
    wal_flush_lsn: Lsn,
}

/// `POST /promote`: 200 `{"status":"completed", …timings}`; 500 `{"status":"failed","error"}`;
/// 412 without a running compute (Neon panics there). Unlike Neon, a failed promotion can be
/// retried: each call runs it again.
pub(super) fn promote(app: &App, req: &Request) -> Response {
    let body: PromoteRequest = match json_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let spec = match ParsedSpec::validate(body.spec) {
        Ok(s) => s,
        Err(e) => return Response::error(400, e.report().to_string()),
    };
    let failed = |msg: String| Response::json(500, &serde_json::json!({ "status": "failed", "error": msg }));
    match app.ask(Event::Promote { spec, wal_flush_lsn: body.wal_flush_lsn }) {
        Ok(Reply::Promoted(t)) => Response::json(
            200,
            &serde_json::json!({
                "status": "completed",
                "lsn_wait_time_ms": t.lsn_wait_time_ms,
                "pg_promote_time_ms": t.pg_promote_time_ms,
                "reconfigure_time_ms": t.reconfigure_time_ms,
            }),
        ),
        Ok(Reply::WrongState(s)) => precondition(s),
        Ok(Reply::Failed(msg)) => failed(msg),
        Ok(other) => failed(format!("unexpected answer {other:?}")),
        Err(resp) => resp,
    }
}

/// `POST /extension_server/{filename}[?is_library=true|false]` (internal): downloads
/// `{base}/{BUILD_TAG}/{arch}/v{major}/extensions/{ext}.tar.zst` and installs its
/// `share/extension` and `lib` files, once per archive: a request for an archive installed
/// already downloads nothing, and one for an archive being downloaded waits for that download
/// and gets its outcome (see `remote_ext::Installer`). 200 with an empty body. 412 without a
/// spec or without `--remote-ext-base-url`, 409 when the spec has no `remote_extensions`, 404
/// for a name it does not list, 502 for an archive this build cannot read (nothing is
/// installed), 504 when the awaited download does not end in time, 500 for a failed download
/// or write.
pub(super) fn extension_server(app: &App, req: &Request) -> Response {
    let filename = req.path.strip_prefix("/extension_server/").unwrap_or_default();
    let valid = |c: char| c.is_ascii_alphanumeric() || "._+-".contains(c);
    if filename.is_empty() || filename.starts_with('.') || !filename.chars().all(valid) {
        return Response::error(400, format!("invalid extension file name {filename:?}"));
    }
    let is_library = match req.query_param("is_library").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => return Response::error(400, format!("is_library: expected true or false, got {v:?}")),
    };
    let snap = app.shared.get();
    if snap.tenant.is_none() {
        return precondition(snap.status);
    }
    if app.extensions.base_url().is_none() {
        return Response::error(412, "remote storage is not configured");
    }
    let Some(remote) = snap.remote_extensions else {
        return Response::error(409, "information about remote extensions is unavailable");
    };
    let name = match crate::remote_ext::lookup(&remote, filename, is_library) {
        Ok(n) => n,
        Err(e) => return Response::error(404, e),
    };
    use crate::remote_ext::Failure;
    match app.extensions.fetch(&name) {
        Ok(_) => Response::empty(200),
        Err(f @ Failure::Unreadable(_)) => Response::error(502, f.to_string()),
        Err(f @ Failure::WaitTimedOut(_)) => Response::error(504, f.to_string()),
        Err(f @ (Failure::Setup(_) | Failure::Download(_) | Failure::Install(_))) => {
            Response::error(500, f.to_string())
        }
    }
}

/// `POST /refresh_configuration` (internal): fetches the spec again and applies it. Answered
/// once that is done (Neon answers at once and works in the background): 200 with an empty
/// body, or 500 with the cause; in a state that cannot refresh, 500 `Cannot refresh compute
/// configuration in state <status>`, as Neon.
pub(super) fn refresh_configuration(app: &App) -> Response {
    match app.ask(Event::RefreshConfiguration) {
        Ok(Reply::Done) => Response::empty(200),
        Ok(Reply::WrongState(s)) => {
            Response::error(500, format!("Cannot refresh compute configuration in state {}", s.wire_name()))
        }
        Ok(Reply::Failed(msg)) => Response::error(500, msg),
        Ok(other) => Response::error(500, format!("unexpected answer {other:?}")),
        Err(resp) => resp,
    }
}

/// The LFC prewarm and offload states of this process (Neon's `LfcPrewarmState` and
/// `LfcOffloadState`, tagged by `status`).
static LFC: std::sync::Mutex<(serde_json::Value, serde_json::Value)> = std::sync::Mutex::new((
    serde_json::Value::Null, // not_prewarmed until set
    serde_json::Value::Null, // not_offloaded until set
));

/// `GET|POST|DELETE /lfc/prewarm`, `GET|POST /lfc/offload` (reference 5.8). `GET` answers the
/// state. `POST` needs a running compute whose Postgres has the neon extension's file cache
/// functions; on vanilla PostgreSQL it answers 412 naming the missing function, and the
/// state becomes `failed` with the same text. `DELETE` (cancel) answers 202.
pub(super) fn lfc(app: &App, req: &Request, offload: bool) -> Response {
    let (function, kind) = if offload {
        ("neon.get_local_cache_state()", "offload")
    } else {
        ("neon.prewarm_local_cache(bytea)", "prewarm")
    };
    let current = |lfc: &(serde_json::Value, serde_json::Value)| {
        let v = if offload { &lfc.1 } else { &lfc.0 };
        if v.is_null() {
            serde_json::json!({ "status": if offload { "not_offloaded" } else { "not_prewarmed" } })
        } else {
            v.clone()
        }
    };
    match req.method.as_str() {
        "GET" | "HEAD" => return Response::json(200, &current(&crate::locks::lock(&LFC))),
        "DELETE" => return Response::empty(202),
        _ => {}
    }
    if let Err(r) = app.admit() {
        return r;
    }
    let set = |v: serde_json::Value| {
        let mut lfc = crate::locks::lock(&LFC);
        if offload { lfc.1 = v } else { lfc.0 = v }
    };
    match crate::postgres::queries::function_exists(&app.node, function) {
        Ok(true) => {
            // The neon extension is there, but this build does not talk to the endpoint
            // storage (`endpoint_storage_addr`) yet: say so rather than pretend.
            let msg = format!("LFC {kind} through the endpoint storage is not implemented by this compute_ctl");
            set(serde_json::json!({ "status": "failed", "error": msg }));
            Response::error(501, msg)
        }
        Ok(false) => {
            let msg = format!(
                "the neon extension's local file cache is not available on this Postgres ({function} does not exist)"
            );
            set(serde_json::json!({ "status": "failed", "error": msg }));
            Response::error(412, msg)
        }
        Err(e) => super::routes::failure("", &e),
    }
}

/// The communicator's socket in PGDATA, served by the neon extension.
const COMMUNICATOR_SOCKET: &str = "neon-communicator.socket";

/// `GET /autoscaling_metrics` (reference 5.10): proxied from the neon extension's
/// communicator over `PGDATA/neon-communicator.socket`, status, content type and body as they
/// come (at most 4 MiB, 10 s). On vanilla PostgreSQL there is no such socket: 500 saying so.
pub(super) fn autoscaling_metrics(app: &App) -> Response {
    use std::io::{Read, Write};
    let path = app.node.pgdata.join(COMMUNICATOR_SOCKET);
    let fail = |e: std::io::Error| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (the neon extension's communicator is not running; vanilla PostgreSQL has none)"
        } else {
            ""
        };
        Response::error(500, format!("cannot get autoscaling metrics from {}: {e}{hint}", path.display()))
    };
    let result = (|| -> std::io::Result<Vec<u8>> {
        let mut s = std::os::unix::net::UnixStream::connect(&path)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        s.set_write_timeout(Some(std::time::Duration::from_secs(10)))?;
        s.write_all(b"GET /autoscaling_metrics HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut raw = Vec::new();
        s.take(4 << 20).read_to_end(&mut raw)?;
        Ok(raw)
    })();
    let raw = match result {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return fail(std::io::Error::other("the communicator's answer has no complete head"));
    };
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (200..600).contains(c))
        .unwrap_or(502);
    let content_type = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-type")))
        .map(|(_, v)| v.trim().to_string())
        // Copied into our head: only visible ASCII, so it cannot split the response.
        .filter(|v| v.bytes().all(|b| (0x20..0x7f).contains(&b)));
    let mut resp = Response {
        status,
        content_type: None,
        headers: Vec::new(),
        body: super::response::Body::Bytes(raw[split + 4..].to_vec()),
    };
    if let Some(ct) = content_type {
        resp = resp.with_header("Content-Type", ct);
    }
    resp
}
