//! The Kubernetes probes, on the external server and without the bearer token (the kubelet's
//! HTTP probes cannot carry a secret; they reveal only the state):
//! - `GET /healthz`: the process answers and its owner loop has turned within
//!   [`crate::heartbeat::STALL`] (liveness);
//! - `GET /readyz`: `running`, and Postgres accepts a connection within 100 ms (readiness);
//! - `GET /startupz`: start-up is over: 200 once the compute has been `running` (or while it
//!   waits in `empty` for a spec), 500 when the start failed, 503 while it is under way.

use super::response::Response;
use crate::lifecycle::{Snapshot, Status};
use crate::postgres::sql;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How fast Postgres must accept a connection for `/readyz`.
pub const READY_CONNECT: Duration = Duration::from_millis(100);

pub fn healthz(owner_idle_for: Duration) -> Response {
    if owner_idle_for <= crate::heartbeat::STALL {
        Response::json(200, &serde_json::json!({ "owner_turned_ms_ago": owner_idle_for.as_millis() as u64 }))
    } else {
        Response::error(503, format!("the owner loop has not turned for {} s", owner_idle_for.as_secs()))
    }
}

pub fn startupz(snap: &Snapshot) -> Response {
    let status = snap.status;
    match status {
        _ if snap.started => Response::json(200, &serde_json::json!({ "started": true, "status": status })),
        Status::Empty => Response::json(200, &serde_json::json!({ "started": true, "status": status })),
        Status::Failed => {
            Response::error(500, format!("start failed: {}", snap.error.as_deref().unwrap_or("no error recorded")))
        }
        _ => Response::error(503, format!("start-up not finished: {status}")),
    }
}

/// One readiness connection at a time: a Postgres that hangs connections leaves at most one
/// thread waiting, whatever the probe rate.
static CHECKING: AtomicBool = AtomicBool::new(false);

pub fn readyz(snap: &Snapshot, connstr: &str) -> Response {
    if snap.status != Status::Running {
        return Response::error(503, format!("not ready: compute is {}", snap.status));
    }
    match connect_within(connstr, READY_CONNECT) {
        Ok(took) => Response::json(200, &serde_json::json!({ "ready": true, "connect_ms": took.as_millis() as u64 })),
        Err(why) => Response::error(503, format!("not ready: {why}")),
    }
}

/// Opens and closes one connection, on a thread, waiting for it at most `limit`.
fn connect_within(connstr: &str, limit: Duration) -> Result<Duration, String> {
    if CHECKING.swap(true, Ordering::SeqCst) {
        return Err("an earlier connection attempt is still waiting".into());
    }
    let mut config = match sql::config(connstr) {
        Ok(c) => c,
        Err(e) => {
            CHECKING.store(false, Ordering::SeqCst);
            return Err(e.to_string());
        }
    };
    config.application_name("compute_ctl:readyz").connect_timeout(Duration::from_secs(2));
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let spawned = std::thread::Builder::new().name("readyz".into()).spawn(move || {
        let result = config.connect(postgres::NoTls).map(drop).map_err(|e| crate::error::db_error_text(&e));
        CHECKING.store(false, Ordering::SeqCst);
        let _ = tx.send(result);
    });
    if let Err(e) = spawned {
        CHECKING.store(false, Ordering::SeqCst);
        return Err(format!("cannot start a thread: {e}"));
    }
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(format!("postgres refuses connections: {e}")),
        Err(_) => Err(format!("postgres did not accept a connection within {} ms", limit.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Shared;

    #[test]
    fn startup_and_readiness_by_state_without_postgres() {
        let shared = Shared::new();
        let mut snap = shared.get();
        let unreachable = "postgresql://a@127.0.0.1:1/postgres";
        for status in Status::ALL {
            snap.status = status;
            snap.error = Some("boom".into());
            let code = startupz(&snap).status;
            let want = match status {
                Status::Empty => 200,
                Status::Failed => 500,
                _ => 503,
            };
            assert_eq!(code, want, "{status}");
            assert_eq!(readyz(&snap, unreachable).status, 503, "{status}");
        }
        snap.started = true;
        for status in Status::ALL {
            snap.status = status;
            assert_eq!(startupz(&snap).status, 200, "{status}");
        }
        assert_eq!(healthz(Duration::from_secs(1)).status, 200);
        assert_eq!(healthz(crate::heartbeat::STALL + Duration::from_secs(1)).status, 503);
    }
}
