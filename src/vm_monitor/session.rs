//! One agent connection: setup within the deadline, then a loop that samples `memory.stat`
//! every 100 ms and answers the agent's messages as they arrive, on one thread (so no state
//! is shared but the published [`Info`](super::Info)).

use super::decide::{self, Downscale, Samples, mib};
use super::filecache::FileCache;
use super::protocol::{self, Ids, Inbound, Outbound};
use super::{Config, SETUP_DEADLINE, current_generation, info};
use crate::http::websocket::frame::code;
use crate::http::websocket::{Message, Received, WebSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A set-up connection.
struct Session {
    ws: WebSocket,
    generation: u64,
    parts: Parts,
}

/// Runs a connection to its end. Never panics on anything the agent sends.
pub fn run(ws: WebSocket, generation: u64, config: &Config) {
    log::info!("vm-monitor: agent connected");
    info().active = Some(generation);
    let why = run_session(ws, generation, config);
    let mut i = info();
    if i.active == Some(generation) {
        i.active = None;
    }
    if i.connected == Some(generation) {
        i.connected = None;
    }
    drop(i);
    log::info!("vm-monitor: agent connection ended: {why}");
}

fn run_session(mut ws: WebSocket, generation: u64, config: &Config) -> String {
    let mut session = match setup(&mut ws, generation, config) {
        Ok(parts) => Session { ws, generation, parts },
        Err((code, reason)) => {
            log::warn!("vm-monitor: agent connection setup failed: {reason}");
            ws.close(code, &reason);
            return reason;
        }
    };
    {
        let mut i = info();
        i.connected = Some(generation);
        i.threshold = Some(session.parts.threshold);
    }
    session.serve()
}

/// Why a session whose generation is no longer current must end.
fn superseded() -> &'static str {
    if super::MONITOR.stopped.load(std::sync::atomic::Ordering::SeqCst) {
        "postgres is stopping"
    } else {
        "replaced by a newer agent connection"
    }
}

type SetupError = (u16, String);

/// Everything of a session but its socket.
struct Parts {
    stat_path: PathBuf,
    samples: Samples,
    threshold: u64,
    file_cache: Option<FileCache>,
    /// Why the file cache is not managed, for the decisions' status texts.
    no_file_cache: &'static str,
    ids: Ids,
    last_upscale_request: Option<Instant>,
    last_sample_error: Option<Instant>,
}

fn setup(ws: &mut WebSocket, generation: u64, config: &Config) -> Result<Parts, SetupError> {
    let deadline = Instant::now() + SETUP_DEADLINE;
    let current = || {
        if current_generation() == generation { Ok(()) } else { Err((code::GOING_AWAY, superseded().to_string())) }
    };
    let left = || deadline.saturating_duration_since(Instant::now());
    let late = || (code::POLICY, format!("setup not completed within {} s", SETUP_DEADLINE.as_secs()));
    // 1. The version range, the first message.
    let first = match ws.read(left()) {
        Received::Message(Message::Text(t)) => t,
        Received::Message(Message::Binary(_)) => {
            return Err((code::PROTOCOL_ERROR, "expected the protocol version range as a text message".into()));
        }
        Received::Timeout => return Err(late()),
        Received::Closed { reason, .. } => return Err((code::NORMAL, reason)),
    };
    match protocol::negotiate(&first) {
        Ok((reply, version)) => {
            ws.send_text(&reply).map_err(|e| (code::INTERNAL_ERROR, format!("cannot send the version: {e}")))?;
            log::info!("vm-monitor: negotiated protocol version {version}");
        }
        Err(reply) => {
            let _ = ws.send_text(&reply);
            return Err((code::PROTOCOL_ERROR, format!("version negotiation failed: {reply}")));
        }
    }
    current()?;
    // 2. The memory the VM has now.
    let mem_total = mem_total().map_err(|e| (code::INTERNAL_ERROR, e))?;
    // 3. The file cache, sized for it.
    let (file_cache, no_file_cache) = match &config.filecache_connstr {
        None => (None, "file cache not resized (disable_lfc_resizing)"),
        Some(connstr) => match FileCache::connect(connstr, left()) {
            Ok(Some(mut fc)) => {
                let (_, said) = fc.set_size(decide::cache_size(mem_total)).map_err(|e| (code::INTERNAL_ERROR, e))?;
                log::info!("vm-monitor: {said} for {} of memory", mib(mem_total));
                (Some(fc), "")
            }
            Ok(None) => (None, "file cache not resized (the neon extension is not loaded)"),
            Err(e) => return Err((code::INTERNAL_ERROR, format!("file cache: {e}"))),
        },
    };
    current()?;
    // 4. The cgroup's memory, readable now.
    let stat_path = config.cgroup_dir.join("memory.stat");
    read_sample(&stat_path).map_err(|e| (code::INTERNAL_ERROR, e))?;
    if Instant::now() > deadline {
        return Err(late());
    }
    let threshold = decide::threshold(mem_total);
    log::info!("vm-monitor: memory threshold {} (85% of {} total)", mib(threshold), mib(mem_total));
    Ok(Parts {
        stat_path,
        samples: Samples::default(),
        threshold,
        file_cache,
        no_file_cache,
        ids: Ids::default(),
        last_upscale_request: None,
        last_sample_error: None,
    })
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("cannot read /proc/meminfo: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "no MemTotal in /proc/meminfo".into())
}

fn read_sample(path: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!("cannot read {}: {e} (is the memory controller enabled for the cgroup?)", path.display())
    })?;
    decide::non_reclaimable(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Session {
    /// Serves until the agent goes, a newer agent connects, or the monitor stops; says why.
    fn serve(&mut self) -> String {
        let mut next_tick = Instant::now();
        loop {
            if current_generation() != self.generation {
                let why = superseded();
                self.ws.close(code::GOING_AWAY, why);
                return why.into();
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick(now);
                // Missed ticks are skipped, not made up.
                next_tick += decide::POLL_INTERVAL;
                if next_tick <= now {
                    next_tick = now + decide::POLL_INTERVAL;
                }
            }
            let wait = next_tick.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            match self.ws.read(wait) {
                Received::Timeout => {}
                Received::Closed { reason, .. } => return reason,
                Received::Message(Message::Binary(_)) => {
                    self.send(
                        &Outbound::InvalidMessage { error: "binary messages are not part of the protocol".into() },
                        0,
                    );
                }
                Received::Message(Message::Text(text)) => self.on_text(&text),
            }
        }
    }

    fn send(&mut self, msg: &Outbound, id: u64) {
        if let Err(e) = self.ws.send_text(&protocol::encode(msg, id)) {
            log::warn!("vm-monitor: cannot send to the agent: {e}");
        }
    }

    /// One memory sample, and an `UpscaleRequest` when usage crossed the threshold.
    fn tick(&mut self, now: Instant) {
        let p = &mut self.parts;
        match read_sample(&p.stat_path) {
            Ok(v) => p.samples.push(v, now),
            Err(e) => {
                if p.last_sample_error.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(10)) {
                    log::warn!("vm-monitor: memory sample skipped: {e}");
                    p.last_sample_error = Some(now);
                }
                return;
            }
        }
        let avg = p.samples.average();
        if decide::want_upscale(avg, p.threshold, p.last_upscale_request, now) {
            p.last_upscale_request = Some(now);
            let id = p.ids.next();
            log::info!(
                "vm-monitor: memory use {} (average of the last samples) reached the threshold {}: asking for more memory",
                mib(avg),
                mib(p.threshold)
            );
            self.send(&Outbound::UpscaleRequest, id);
            info().upscale_requests_sent += 1;
        }
    }

    fn on_text(&mut self, text: &str) {
        let (msg, id) = match protocol::parse(text) {
            Ok(m) => m,
            Err(m) => {
                log::warn!("vm-monitor: invalid message from the agent: {}", m.error);
                self.send(&Outbound::InvalidMessage { error: m.error }, m.id.unwrap_or(0));
                return;
            }
        };
        let kind = msg.kind();
        match msg {
            Inbound::HealthCheck => {
                log::debug!("vm-monitor: health check {id}");
                self.send(&Outbound::HealthCheck, id);
            }
            Inbound::UpscaleNotification { granted } => {
                let reply = self.upscale(granted.mem, granted.cpu);
                self.send(&reply, id);
            }
            Inbound::DownscaleRequest { target } => {
                let reply = self.downscale(target.mem, target.cpu);
                self.send(&reply, id);
            }
            Inbound::InvalidMessage { error } | Inbound::InternalError { error } => {
                log::warn!("vm-monitor: the agent sent {kind} (id {id}): {error}");
            }
        }
    }

    fn upscale(&mut self, mem: u64, cpu: f64) -> Outbound {
        let p = &mut self.parts;
        let u = decide::usable(mem);
        let cache = match p.resize_cache(u, "upscale", "failed to handle upscale") {
            Ok(said) => said,
            Err(answer) => return answer,
        };
        let old = p.threshold;
        p.threshold = decide::threshold(u);
        let status = format!(
            "upscaled to {} and {cpu} vCPU: set cgroup memory threshold from {} to {} (85% of {} usable); {cache}",
            mib(mem),
            mib(old),
            mib(p.threshold),
            mib(u)
        );
        log::info!("vm-monitor: {status}");
        let mut i = info();
        i.threshold = Some(p.threshold);
        i.decided("upscale", "applied", &status);
        Outbound::UpscaleConfirmation
    }

    fn downscale(&mut self, mem: u64, cpu: f64) -> Outbound {
        let p = &mut self.parts;
        match decide::downscale(&p.samples, Instant::now(), mem) {
            Downscale::Deny(status) => {
                let changed = info().decided("downscale", "denied", &status);
                log_decision(changed, || format!("vm-monitor: downscale to {} and {cpu} vCPU {status}", mib(mem)));
                Outbound::DownscaleResult { ok: false, status }
            }
            Downscale::Stale(why) => failed("downscale", format!("failed to downscale: {why}")),
            Downscale::Approve { threshold, usable, reason } => {
                let cache = match p.resize_cache(usable, "downscale", "failed to downscale") {
                    Ok(said) => said,
                    Err(answer) => return answer,
                };
                let status = format!(
                    "{reason}; set cgroup memory threshold from {} to {}; {cache}",
                    mib(p.threshold),
                    mib(threshold)
                );
                p.threshold = threshold;
                let mut i = info();
                i.threshold = Some(threshold);
                let changed = i.decided("downscale", "approved", &status);
                drop(i);
                log_decision(changed, || format!("vm-monitor: downscale to {} and {cpu} vCPU {status}", mib(mem)));
                Outbound::DownscaleResult { ok: true, status }
            }
        }
    }
}

impl Parts {
    /// Sizes the file cache for `usable` memory; what was done, or, when that fails, the
    /// `kind` decision's failure answer, its error prefixed by `failure`.
    fn resize_cache(&mut self, usable: u64, kind: &'static str, failure: &str) -> Result<String, Outbound> {
        match self.file_cache.as_mut().map(|fc| fc.set_size(decide::cache_size(usable))) {
            Some(Err(e)) => Err(failed(kind, format!("{failure}: {e}"))),
            Some(Ok((_, said))) => Ok(said),
            None => Ok(self.no_file_cache.to_string()),
        }
    }
}

/// The answer to a `kind` decision that could not be carried out: logged, published, sent.
fn failed(kind: &'static str, error: String) -> Outbound {
    log::error!("vm-monitor: {error}");
    info().decided(kind, "failed", &error);
    Outbound::InternalError { error }
}

/// A decision is logged at info when it differs from the previous one, at debug when an agent
/// repeats a request and gets the same answer (it retries every few seconds; the log line
/// would otherwise be most of the log, and writing it most of the round trip).
fn log_decision(changed: bool, line: impl FnOnce() -> String) {
    // Built only when written: repeated decisions are most messages, and debug is usually off.
    if changed {
        log::info!("{}", line());
    } else if log::log_enabled!(log::Level::Debug) {
        log::debug!("{}", line());
    }
}
