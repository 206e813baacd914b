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
