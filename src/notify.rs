//! systemd's service notification protocol (`sd_notify(3)`), spoken over a Unix datagram
//! socket from `std`: no libsystemd, no new dependency.
//!
//! systemd sets `NOTIFY_SOCKET` for a `Type=notify` unit: a path, or an abstract socket name
//! written `@name`. Each notification is one datagram of `KEY=value` lines. Without the
//! variable every call here does nothing, so the supervisor runs the same outside systemd.
//!
//! What compute_ctl sends (the owner loop decides when, see [`Notifier::transition`]):
//! - `STATUS=<state>: <a few words>` on every lifecycle transition;
//! - `READY=1` exactly when the compute becomes `running`;
//! - `RELOADING=1` when a live reconfiguration starts, then `READY=1` when it ends (also when
//!   it fails: Postgres still runs, and `STATUS=` says what failed);
//! - `STOPPING=1` when termination starts;
//! - `WATCHDOG=1` every half `WATCHDOG_USEC`, sent by the owner loop itself from
//!   [`Notifier::watchdog_tick`]: an owner stuck in one operation stops sending, which is the
//!   point. systemd arms the watchdog only after `READY=1`, so start-up is bounded by
//!   `TimeoutStartSec=` instead; `WatchdogSec=` must exceed the longest live reconfiguration.
//!
//! Limits: `RELOADING=1` carries no `MONOTONIC_USEC=`, which only `Type=notify-reload` units
//! require; the unit in `examples/` is `Type=notify`. Send errors are logged once and
//! otherwise ignored: a supervisor must not fail because its observer went away.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Where notifications go, and the watchdog's pace.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Half of `WATCHDOG_USEC`, when the watchdog is meant for this process.
    watchdog: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
    /// `READY=1` was sent and no `STOPPING=1` yet: a configuration now is a reload.
    ready: AtomicBool,
    reloading: AtomicBool,
    warned: AtomicBool,
}

/// The environment variables of the protocol, as given (a parameter so that tests need not
/// touch the process environment).
#[derive(Debug, Default, Clone)]
pub struct Env {
    pub notify_socket: Option<String>,
    pub watchdog_usec: Option<String>,
    pub watchdog_pid: Option<String>,
}

impl Env {
    pub fn from_process() -> Env {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            notify_socket: get("NOTIFY_SOCKET"),
            watchdog_usec: get("WATCHDOG_USEC"),
            watchdog_pid: get("WATCHDOG_PID"),
        }
    }
}

/// A lifecycle state as the notifier needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting, starting, or configuring before the first `running`.
    Starting,
    /// A (re)configuration is under way.
    Configuring,
    Running,
    /// Failed; Postgres may still run (a failed reconfiguration).
    Failed,
    Stopping,
    Stopped,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
            last_ping: Mutex::new(None),
            ready: AtomicBool::new(false),
            reloading: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        }
    }

    /// Reads the protocol's variables. A malformed one is an error naming it, so that a
    /// broken unit file is noticed at start instead of by a start timeout.
    pub fn from_env(env: &Env) -> crate::Result<Notifier> {
        let mut n = Notifier::disabled();
        let Some(name) = env.notify_socket.as_deref() else { return Ok(n) };
        let addr = socket_addr(name)
            .map_err(|e| crate::Error::Usage(format!("NOTIFY_SOCKET={name:?} is not a usable socket address: {e}")))?;
        let sock = UnixDatagram::unbound()
            .map_err(|e| crate::Error::Usage(format!("NOTIFY_SOCKET: cannot create a datagram socket: {e}")))?;
        n.target = Some((sock, addr));
        let for_us = env.watchdog_pid.as_deref().is_none_or(|p| p.trim() == std::process::id().to_string());
        if let Some(usec) = env.watchdog_usec.as_deref().filter(|_| for_us) {
            let usec: u64 =
                usec.trim().parse().ok().filter(|u| *u > 0).ok_or_else(|| {
                    crate::Error::Usage(format!("WATCHDOG_USEC={usec:?}: expected a positive integer"))
                })?;
            n.watchdog = Some(Duration::from_micros(usec / 2));
        }
        Ok(n)
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often the owner loop must turn to keep the watchdog fed, when there is one.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one datagram (`KEY=value` lines).
    pub fn send(&self, message: &str) -> io::Result<()> {
        let Some((sock, addr)) = &self.target else { return Ok(()) };
        let result = sock.send_to_addr(message.as_bytes(), addr).map(|_| ());
        if let Err(e) = &result
            && !self.warned.swap(true, Ordering::SeqCst)
        {
            log::warn!("cannot notify systemd ({e}); further failures are not logged");
        }
        result
    }

    /// Called by the owner loop on every turn: sends `WATCHDOG=1` when half the watchdog
    /// period has passed since the last one.
    pub fn watchdog_tick(&self) {
        let Some(every) = self.watchdog else { return };
        let now = Instant::now();
        let mut last = self.last_ping.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= every) {
            *last = Some(now);
            drop(last);
            let _ = self.send("WATCHDOG=1");
        }
    }

    /// Tells systemd about a transition to `phase`; `status` is the `STATUS=` text.
    pub fn transition(&self, phase: Phase, status: &str) {
        if !self.enabled() {
            return;
        }
        let _ = self.send(&self.message(phase, status));
    }

    /// The datagram for a transition, updating what was told before.
    fn message(&self, phase: Phase, status: &str) -> String {
        let mut lines: Vec<String> = Vec::new();
        let ready = self.ready.load(Ordering::SeqCst);
        match phase {
            Phase::Running => {
                self.reloading.store(false, Ordering::SeqCst);
                self.ready.store(true, Ordering::SeqCst);
                lines.push("READY=1".into());
            }
            Phase::Configuring if ready => {
                if !self.reloading.swap(true, Ordering::SeqCst) {
                    lines.push("RELOADING=1".into());
                }
            }
            Phase::Failed if self.reloading.swap(false, Ordering::SeqCst) => lines.push("READY=1".into()),
            Phase::Stopping => {
                self.ready.store(false, Ordering::SeqCst);
                lines.push("STOPPING=1".into());
            }
            Phase::Starting | Phase::Configuring | Phase::Failed | Phase::Stopped => {}
        }
        lines.push(format!("STATUS={}", status_text(status)));
        lines.join("\n")
    }
}

/// `STATUS=` is one line: newlines become spaces, and a long error is cut (on a character
/// boundary) so that the datagram stays small.
fn status_text(s: &str) -> String {
    const MAX: usize = 400;
    let one_line: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if one_line.len() <= MAX {
        return one_line;
    }
    let mut end = MAX;
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &one_line[..end])
}

/// `@name` is an abstract socket (Linux), anything else a path.
pub fn socket_addr(name: &str) -> io::Result<SocketAddr> {
    if let Some(abstract_name) = name.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = abstract_name;
            Err(io::Error::new(io::ErrorKind::Unsupported, "abstract socket names exist only on Linux"))
        }
    } else if name.starts_with('/') {
        SocketAddr::from_pathname(name)
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, "expected an absolute path or @name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str) -> UnixDatagram {
        let addr = socket_addr(name).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sock
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn env(socket: &str, usec: Option<&str>, pid: Option<String>) -> Env {
        Env { notify_socket: Some(socket.into()), watchdog_usec: usec.map(Into::into), watchdog_pid: pid }
    }

    #[test]
    fn both_termination_phases_tell_systemd_stopping_and_refreshes_reload() {
        use crate::lifecycle::Status;
        let phase = |s: Status| s.notify_phase();
        assert_eq!(phase(Status::TerminationPendingFast), Phase::Stopping);
        assert_eq!(phase(Status::TerminationPendingImmediate), Phase::Stopping);
        assert_eq!(phase(Status::RefreshConfigurationPending), Phase::Configuring);
        assert_eq!(phase(Status::RefreshConfiguration), Phase::Configuring);
        assert_eq!(phase(Status::Terminated), Phase::Stopped);
    }

    #[test]
    fn abstract_socket_receives_the_sequence_of_a_reload_and_a_stop() {
        let name = format!("@compute_ctl-notify-test-{}-a", std::process::id());
        let rx = listener(&name);
        let n = Notifier::from_env(&env(&name, None, None)).unwrap();
        n.transition(Phase::Starting, "init: starting postgres");
        n.transition(Phase::Running, "running");
        n.transition(Phase::Configuring, "configuration_pending");
        n.transition(Phase::Configuring, "configuration");
        n.transition(Phase::Running, "running");
        n.transition(Phase::Configuring, "configuration_pending");
        n.transition(Phase::Failed, "failed: bad\nsetting");
        n.transition(Phase::Stopping, "termination_pending_fast");
        n.transition(Phase::Stopped, "terminated");
        let got: Vec<String> = (0..9).map(|_| recv(&rx)).collect();
        assert_eq!(
            got,
            [
                "STATUS=init: starting postgres",
                "READY=1\nSTATUS=running",
                "RELOADING=1\nSTATUS=configuration_pending",
                "STATUS=configuration",
                "READY=1\nSTATUS=running",
                "RELOADING=1\nSTATUS=configuration_pending",
                "READY=1\nSTATUS=failed: bad setting",
                "STOPPING=1\nSTATUS=termination_pending_fast",
                "STATUS=terminated",
            ]
        );
    }

    #[test]
    fn path_socket_and_watchdog_pace() {
        let dir = std::env::temp_dir().join(format!("compute_ctl-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let name = path.to_str().unwrap().to_string();
        let rx = listener(&name);
        // 200 ms: a ping at most every 100 ms.
        let n = Notifier::from_env(&env(&name, Some("200000"), Some(std::process::id().to_string()))).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_millis(100)));
        n.watchdog_tick();
        n.watchdog_tick(); // too early: nothing
        n.send("STATUS=marker").unwrap();
        assert_eq!(recv(&rx), "WATCHDOG=1");
        assert_eq!(recv(&rx), "STATUS=marker");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn watchdog_of_another_process_is_ignored_and_bad_values_are_named() {
        let name = format!("@compute_ctl-notify-test-{}-b", std::process::id());
        let n = Notifier::from_env(&env(&name, Some("1000000"), Some("1".into()))).unwrap();
        assert!(n.enabled());
        assert_eq!(n.watchdog_interval(), None);
        let e = Notifier::from_env(&env(&name, Some("soon"), None)).unwrap_err().to_string();
        assert!(e.contains("WATCHDOG_USEC"), "{e}");
        let e = Notifier::from_env(&env("relative/path", None, None)).unwrap_err().to_string();
        assert!(e.contains("NOTIFY_SOCKET"), "{e}");
        assert!(!Notifier::from_env(&Env::default()).unwrap().enabled());
    }

    #[test]
    fn long_status_is_cut_on_a_character_boundary() {
        let s = "é".repeat(300);
        let t = status_text(&s);
        assert!(t.ends_with("...") && t.len() <= 403, "{}", t.len());
    }
}
