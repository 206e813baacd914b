//! The vm-monitor: the websocket server the autoscaler-agent of NeonVM talks to, started when
//! `AUTOSCALING` is set (reference `vm_monitor.md`). It approves or denies downscaling from
//! Postgres's memory use, resizes the file cache, and asks for more memory when Postgres
//! runs short.
//!
//! - `GET /monitor` on `--vm-monitor-addr` (default `0.0.0.0:10301`) opens the websocket.
//!   One agent at a time: the newest connection wins, the older one is closed (1001).
//! - Setup (version negotiation, the file-cache connection and first resize, the first
//!   memory sample) must finish within [`SETUP_DEADLINE`]; the socket is closed with a reason
//!   otherwise.
//! - It starts once Postgres is running and is stopped (the agent's socket closed with 1001,
//!   new connections refused with 503) before Postgres is asked to stop; around a
//!   `POST /restart` it is stopped the same way and resumed once Postgres runs again. Nothing it does can
//!   take Postgres or compute_ctl down: it runs on its own threads and only answers messages.
//! - A bind failure is logged and shown in `/status` (`vm_monitor.error`) and `/metrics`.
//!
//! Differences from Neon's monitor, on purpose: a version range above 1 gets the error object
//! instead of aborting the process; a malformed message gets `InvalidMessage` and the
//! connection stays up; vanilla PostgreSQL (no `neon.file_cache_size_limit`) is served
//! without file-cache resizing instead of dropping every connection; setup failures close
//! the socket with a reason; `InternalError` carries the cause.

mod decide;
mod filecache;
mod protocol;
mod session;

pub use decide::{Downscale, Samples, cache_size, downscale, non_reclaimable, threshold, usable, want_upscale};
pub use protocol::{Allocation, Inbound, Malformed, Outbound, encode, negotiate, parse};

use crate::args::Args;
use crate::http::{request::Request, response::Response, server, websocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Time an agent connection has to complete its setup.
pub const SETUP_DEADLINE: Duration = Duration::from_secs(4);

/// What a connection needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cgroup directory whose `memory.stat` is sampled.
    pub cgroup_dir: PathBuf,
    /// Where to resize the file cache; None with `disable_lfc_resizing`.
    pub filecache_connstr: Option<String>,
}

/// What `/status` and `/metrics` show.
#[derive(Debug, Clone, Default)]
pub struct Info {
    pub enabled: bool,
    pub listening: Option<String>,
    pub bind_error: Option<String>,
    /// The generation of the connected agent's session, once set up.
    pub connected: Option<u64>,
    /// The generation of the newest session, from its first byte to its end (set-up included).
    pub active: Option<u64>,
    pub threshold: Option<u64>,
    /// `(kind, result, status text)` of the latest decision.
    pub last_decision: Option<(&'static str, &'static str, String)>,
    pub upscale_requests_sent: u64,
    /// `(kind_result, count)`, e.g. `("downscale_denied", 3)`.
    pub decisions: Vec<(&'static str, u64)>,
}

impl Info {
    /// Records a decision; true when it differs from the previous one.
    pub(crate) fn decided(&mut self, kind: &'static str, result: &'static str, status: &str) -> bool {
        let changed =
            self.last_decision.as_ref().is_none_or(|(k, r, s)| (*k, *r, s.as_str()) != (kind, result, status));
        if changed {
            self.last_decision = Some((kind, result, status.to_string()));
        }
        let key = match (kind, result) {
            ("downscale", "approved") => "downscale_approved",
            ("downscale", "denied") => "downscale_denied",
            ("downscale", _) => "downscale_failed",
            ("upscale", "applied") => "upscale_applied",
            _ => "upscale_failed",
        };
        match self.decisions.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => self.decisions.push((key, 1)),
        }
        changed
    }
}

/// The one monitor of the process (its listener lives as long as the process).
struct Monitor {
    /// Bumped by every new connection and by [`stop`]: a session whose generation is no
    /// longer current ends.
    generation: AtomicU64,
    stopped: AtomicBool,
    info: Mutex<Info>,
}

static MONITOR: Monitor = Monitor {
    generation: AtomicU64::new(0),
    stopped: AtomicBool::new(false),
    info: Mutex::new(Info {
        enabled: false,
        listening: None,
        bind_error: None,
        connected: None,
        active: None,
        threshold: None,
        last_decision: None,
        upscale_requests_sent: 0,
        decisions: Vec::new(),
    }),
};

pub(crate) fn info() -> MutexGuard<'static, Info> {
    crate::locks::lock(&MONITOR.info)
}

pub(crate) fn current_generation() -> u64 {
    MONITOR.generation.load(Ordering::SeqCst)
}

/// Starts the monitor once Postgres is running, when `AUTOSCALING` is set; later calls do
/// nothing. `lfc_resizing` is false when the spec says `disable_lfc_resizing`.
pub fn ensure_started(args: &Args, lfc_resizing: bool) {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if !args.autoscaling.enabled || STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let Some(cgroup_dir) = crate::cgroup::placement().dir().map(PathBuf::from) else {
        log::error!("vm-monitor: not started: no cgroup is set up");
        return;
    };
    let filecache_connstr =
        lfc_resizing.then(|| args.autoscaling.filecache_connstr.clone().unwrap_or(args.connstr.clone()));
    if !lfc_resizing {
        log::info!("vm-monitor: disable_lfc_resizing is set: file-cache resizing skipped");
    }
    let config = Arc::new(Config { cgroup_dir, filecache_connstr });
    info().enabled = true;
    let addr = args.autoscaling.vm_monitor_addr;
    let handler: server::Handler = Arc::new(move |req: &Request| handle(req, &config));
    // The autoscaler-agent authenticates nothing (as in Neon): the monitor's address is only
    // reachable from the VM's host side.
    let open: server::Gate = Arc::new(|_: &Request| Ok(()));
    match server::spawn(addr, "vm-monitor", open, handler) {
        Ok(local) => info().listening = Some(local.to_string()),
        Err(e) => {
            let msg = format!("cannot bind the vm-monitor to {addr}: {e}");
            log::error!("{msg}; autoscaling runs without it (Postgres is not affected)");
            info().bind_error = Some(msg);
        }
    }
}

fn handle(req: &Request, config: &Arc<Config>) -> Response {
    if req.path != "/monitor" {
        return Response::error(404, format!("no route for {}; the vm-monitor serves GET /monitor", req.path));
    }
    if MONITOR.stopped.load(Ordering::SeqCst) {
        return Response::error(503, "the vm-monitor has stopped: postgres is stopping");
    }
    if let Err(resp) = websocket::check_handshake(req) {
        return resp;
    }
    // Newest wins: from here on, any older session ends at its next check.
    let generation = MONITOR.generation.fetch_add(1, Ordering::SeqCst) + 1;
    let config = config.clone();
    websocket::upgrade(req, move |ws| {
        // A thread of its own: the session connects to Postgres, which wants more stack than
        // an HTTP connection thread has.
        let spawned = std::thread::Builder::new()
            .name("vm-monitor-agent".into())
            .stack_size(1024 * 1024)
            .spawn(move || session::run(ws, generation, &config));
        if let Err(e) = spawned {
            log::error!("vm-monitor: cannot start a session thread: {e}");
        }
    })
}

/// Stops the monitor before Postgres is stopped: closes the agent's connection (waiting at
/// most a second for it) and refuses new ones. A no-op when it never started.
pub fn stop() {
    if !info().enabled || MONITOR.stopped.swap(true, Ordering::SeqCst) {
        return;
    }
    MONITOR.generation.fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(1);
    while info().active.is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    log::info!("vm-monitor stopped");
}

/// Lets agents connect again after [`stop`], once Postgres runs again (after `POST /restart`).
/// A no-op when the monitor never started or was not stopped.
pub fn resume() {
    if info().enabled && MONITOR.stopped.swap(false, Ordering::SeqCst) {
        log::info!("vm-monitor resumed: postgres is running again");
    }
}

/// The `vm_monitor` object of `/status`, when the monitor is enabled.
pub fn status_json() -> Option<serde_json::Value> {
    let i = info();
    i.enabled.then(|| {
        serde_json::json!({
            "listening": i.listening,
            "error": i.bind_error,
            "agent_connected": i.connected.is_some(),
        })
    })
}

/// The monitor's metric families, when it is enabled.
pub fn render_metrics(out: &mut String) {
    use crate::metrics::family;
    let i = info().clone();
    if !i.enabled {
        return;
    }
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    family(
        out,
        "compute_ctl_vm_monitor_listening",
        "gauge",
        "Whether the vm-monitor listens on --vm-monitor-addr (0 after a bind failure)",
        std::iter::once((Vec::new(), flag(i.listening.is_some()))),
    );
    family(
        out,
        "compute_ctl_vm_monitor_bind_error",
        "gauge",
        "The vm-monitor's bind failure, as a label",
        i.bind_error.iter().map(|e| (vec![("error", e.as_str())], 1.0)),
    );
    family(
        out,
        "compute_ctl_vm_monitor_agent_connected",
        "gauge",
        "Whether an autoscaler-agent is connected",
        std::iter::once((Vec::new(), flag(i.connected.is_some()))),
    );
    family(
        out,
        "compute_ctl_vm_monitor_memory_threshold_bytes",
        "gauge",
        "Memory use (active_anon + inactive_anon) at which the monitor asks for more memory",
        i.threshold.iter().map(|t| (Vec::new(), *t as f64)),
    );
    family(
        out,
        "compute_ctl_vm_monitor_upscale_requests_total",
        "counter",
        "UpscaleRequest messages sent to the agent",
        std::iter::once((Vec::new(), i.upscale_requests_sent as f64)),
    );
    family(
        out,
        "compute_ctl_vm_monitor_decisions_total",
        "counter",
        "Upscale and downscale decisions, by outcome",
        i.decisions.iter().map(|(k, n)| (vec![("decision", *k)], *n as f64)),
    );
    family(
        out,
        "compute_ctl_vm_monitor_last_decision",
        "gauge",
        "The latest decision and its status text",
        i.last_decision.iter().map(|(kind, result, status)| {
            (vec![("kind", *kind), ("result", *result), ("status", status.as_str())], 1.0)
        }),
    );
}
