//! The owner of the lifecycle: gets the spec, starts the HTTP servers and the signal thread,
//! then applies every event to the current state in one exhaustive `match`.
//!
//! Other threads never change the state: they send an [`Event`] and, for HTTP requests that
//! wait, receive a [`Reply`].

use crate::args::{Args, SpecSource};
use crate::error::{Error, Result};
use crate::heartbeat::{self, Heartbeat};
use crate::http::{routes, server};
use crate::lifecycle::{
    Configuration, ConfigurationPending, Context, ContextData, Empty, Failed, Init, Live, Restarted, Running, Shared,
    Status, Terminated,
};
use crate::notify::Notifier;
use crate::postgres::process::StopMode;
use crate::postgres::{pgdata, storage};
use crate::spec::ParsedSpec;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Something the owner must react to.
pub enum Event {
    /// `POST /configure` with a validated spec.
    Configure { spec: ParsedSpec, reply: Sender<Reply> },
    /// `POST /terminate`.
    Terminate { mode: StopMode, reply: Sender<Reply> },
    /// `POST /restart`.
    Restart { reply: Sender<Reply> },
    /// SIGTERM, SIGINT or SIGQUIT.
    Signal(i32),
    /// The postmaster exited (sent from its reaper thread).
    PostgresExited,
}

/// The outcome of a request that waited for the owner.
#[derive(Debug)]
pub enum Reply {
    Done,
    /// Postgres stopped after `/terminate`; the LSN of its shutdown checkpoint when it could
    /// be read from `pg_controldata`.
    Terminated {
        lsn: Option<String>,
    },
    WrongState(Status),
    /// Not possible for this compute (not its state: what it is), with the reason.
    NotPossible(String),
    Failed(String),
}

/// The state value the owner holds between events.
enum State {
    Empty(Empty),
    Running(Running),
    Failed(Failed),
    Terminated(Terminated, Ending),
}

/// Why the compute is ending, which decides the exit code.
#[derive(Clone, Copy)]
enum Ending {
    /// `POST /terminate`: Postgres's exit code after the grace period.
    Requested,
    /// A signal: non-zero at once.
    Signal,
}

/// Runs compute_ctl to the end and returns the process exit code.
pub fn run(args: Args) -> Result<i32> {
    let (tx, rx) = mpsc::channel::<Event>();
    let notifier = Arc::new(Notifier::from_env(&crate::notify::Env::from_process())?);
    if notifier.enabled() {
        log::info!(
            "systemd notification socket found{}",
            notifier
                .watchdog_interval()
                .map_or(String::new(), |w| format!("; watchdog ping every {} ms", w.as_millis()))
        );
    }
    let auth_token = args.http_auth_token_file.as_deref().map(routes::Token::from_file).transpose()?;
    let app = Arc::new(routes::App {
        shared: Shared::new(),
        events: Mutex::new(tx),
        live_config_allowed: !matches!(args.spec, SpecSource::Inline(_)),
        connstr: args.connstr.clone(),
        bindir: pgdata::bindir(&args.pgbin)?,
        auth_token,
        in_flight: AtomicUsize::new(0),
        heartbeat: Arc::new(Heartbeat::new()),
    });
    let owner = Owner { rx, heartbeat: app.heartbeat.clone(), notifier: notifier.clone() };
    owner.turn();
    let result = supervise(args, app.clone(), owner);
    // Give handlers that were answered by the owner a moment to write their responses; the
    // bound keeps a stuck client from delaying the exit.
    let deadline = Instant::now() + Duration::from_secs(2);
    while app.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    result
}

/// The owner's side of the event channel. Every turn of the loop beats the heartbeat
/// (`/healthz`) and feeds systemd's watchdog; while idle the owner turns at least every
/// [`heartbeat::IDLE_TURN`] (or half the watchdog period, when shorter). An owner stuck in one
/// operation does neither.
struct Owner {
    rx: Receiver<Event>,
    heartbeat: Arc<Heartbeat>,
    notifier: Arc<Notifier>,
}

impl Owner {
    fn turn(&self) {
        self.heartbeat.beat();
        self.notifier.watchdog_tick();
    }

    fn tick(&self) -> Duration {
        self.notifier.watchdog_interval().map_or(heartbeat::IDLE_TURN, |w| w.min(heartbeat::IDLE_TURN))
    }

    /// The next event, turning while none comes; `Err` when every sender is gone.
    fn recv(&self) -> Result<Event, mpsc::RecvError> {
        loop {
            self.turn();
            match self.rx.recv_timeout(self.tick()) {
                Ok(e) => {
                    self.turn();
                    return Ok(e);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(mpsc::RecvError),
            }
        }
    }

    /// Like [`Receiver::recv_timeout`], turning meanwhile.
    fn recv_timeout(&self, limit: Duration) -> Result<Event, RecvTimeoutError> {
        let deadline = Instant::now() + limit;
        loop {
            self.turn();
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.min(self.tick())) {
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                other => return other,
            }
        }
    }
}

fn supervise(args: Args, app: Arc<routes::App>, owner: Owner) -> Result<i32> {
    let tx = app.events.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let shared = app.shared.clone();
    let bindir = app.bindir.clone();
    let run_as = pgdata::postgres_identity(&args.pg_user)?;
    // The spec is read and validated before anything on disk is touched.
    let initial = match &args.spec {
        SpecSource::Inline(json) => Some(ParsedSpec::parse(json)?),
        SpecSource::File(path) => {
            let json = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read spec file", path, e))?;
            Some(ParsedSpec::parse(&json)?)
        }
        SpecSource::ControlPlane(_) | SpecSource::Wait => None,
    };

    let exit_tx = Mutex::new(tx.clone());
    let ctx = Context::new(ContextData {
        args: Arc::new(args.clone()),
        bindir,
        run_as,
        shared: shared.clone(),
        interrupted: Arc::new(AtomicBool::new(false)),
        postmaster: Arc::new(Mutex::new(None)),
        on_postgres_exit: Arc::new(move |_, _| {
            let _ = exit_tx.lock().unwrap_or_else(|p| p.into_inner()).send(Event::PostgresExited);
        }),
        notifier: owner.notifier.clone(),
    });
    spawn_signal_thread(&ctx, tx.clone())?;
    if std::process::id() == 1 {
        let postmaster = ctx.postmaster.clone();
        let is_ours = move |pid: u32| {
            postmaster.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|pm| pm.pid() == pid)
        };
        crate::sys::spawn_orphan_reaper(is_ours)
            .map_err(|e| Error::Process { what: "cannot start the orphan reaper".into(), detail: e.to_string() })?;
        log::info!("running as PID 1: reaping orphaned processes");
    }

    // Internal first: once the external server answers, both are up.
    for (port, which, name) in [
        (args.internal_http_port, routes::Server::Internal, "internal"),
        (args.external_http_port, routes::Server::External, "external"),
    ] {
        let addr = SocketAddr::new(args.http_bind, port);
        server::spawn(addr, name, routes::handler(app.clone(), which))
            .map_err(|e| Error::Usage(format!("cannot bind the {name} HTTP server to {addr}: {e}")))?;
    }
    drop(tx);

    // The spec Postgres last ran with, for the safekeeper sync after it exits.
    let mut last_spec: Option<ParsedSpec> = None;
    let empty = Empty::new(ctx.clone());
    let mut state = match initial {
        Some(spec) => start(empty.init(spec)),
        None => {
            if let SpecSource::ControlPlane(uri) = &args.spec {
                match crate::control_plane::fetch_spec(uri, &args.compute_id)? {
                    Some(spec) => start(empty.init(spec)),
                    None => State::Empty(empty),
                }
            } else {
                log::info!("no spec given: waiting for POST /configure");
                State::Empty(empty)
            }
        }
    };

    loop {
        if let State::Running(running) = &state {
            last_spec = Some(running.spec().clone());
            crate::monitor::ensure_started(&shared, &args.connstr);
        }
        state = match state {
            State::Empty(empty) => match owner.recv() {
                Ok(Event::Configure { spec, reply }) => {
                    let next = start_pooled(empty.configure(spec).begin());
                    answer(&reply, &next);
                    next
                }
                Ok(Event::Restart { reply }) => {
                    let _ = reply.send(Reply::WrongState(Status::Empty));
                    State::Empty(empty)
                }
                Ok(Event::Terminate { reply, .. }) => {
                    let done = empty.terminate().wait();
                    let _ = reply.send(Reply::Terminated { lsn: None });
                    State::Terminated(done, Ending::Requested)
                }
                Ok(Event::Signal(sig)) => {
                    log::info!("received signal {sig} while waiting for a spec: exiting");
                    return Ok(1);
                }
                Ok(Event::PostgresExited) => State::Empty(empty),
                Err(_) => return Ok(1),
            },
            State::Running(running) => match owner.recv() {
                Ok(Event::Configure { spec, reply }) => {
                    let next = live_configure(running.reconfigure(spec));
                    answer(&reply, &next);
                    next
                }
                Ok(Event::Terminate { mode, reply }) => {
                    let done = running.terminate(mode).wait();
                    let lsn = checkpoint_lsn(done.context());
                    if !synced_after_exit(&ctx, last_spec.as_ref()) {
                        let _ = reply.send(Reply::Failed("sync of safekeepers after postgres exited failed".into()));
                        return Ok(1);
                    }
                    let _ = reply.send(Reply::Terminated { lsn });
                    State::Terminated(done, Ending::Requested)
                }
                Ok(Event::Restart { reply }) => match running.restart() {
                    Restarted::NotPossible(running, why) => {
                        let _ = reply.send(Reply::NotPossible(why));
                        State::Running(running)
                    }
                    Restarted::Running(r) => answered(&reply, State::Running(r)),
                    Restarted::Failed(f) => answered(&reply, State::Failed(f)),
                },
                Ok(Event::Signal(sig)) => {
                    log::info!("received signal {sig}: fast shutdown of postgres");
                    let done = running.terminate(StopMode::Fast).wait();
                    synced_after_exit(&ctx, last_spec.as_ref());
                    State::Terminated(done, Ending::Signal)
                }
                // The exit of the postmaster a restart replaced.
                Ok(Event::PostgresExited) if running.postgres_alive() => State::Running(running),
                Ok(Event::PostgresExited) | Err(_) => {
                    let status = running.postgres_exited();
                    let synced = synced_after_exit(&ctx, last_spec.as_ref());
                    return Ok(if synced { status.code().unwrap_or(1) } else { 1 });
                }
            },
            State::Failed(failed) if failed.postgres_running() => match owner.recv() {
                Ok(Event::Configure { spec, reply }) => {
                    let next = match failed.reconfigure(spec) {
                        Ok(pending) => live_configure(pending),
                        Err(failed) => State::Failed(failed),
                    };
                    answer(&reply, &next);
                    next
                }
                Ok(Event::Terminate { reply, .. }) | Ok(Event::Restart { reply }) => {
                    let _ = reply.send(Reply::WrongState(Status::Failed));
                    State::Failed(failed)
                }
                Ok(Event::Signal(sig)) => {
                    log::info!("received signal {sig}: fast shutdown of postgres");
                    failed.shutdown(StopMode::Fast);
                    synced_after_exit(&ctx, last_spec.as_ref());
                    return Ok(1);
                }
                Ok(Event::PostgresExited) | Err(_) => {
                    let status = failed.shutdown(StopMode::Fast);
                    let synced = synced_after_exit(&ctx, last_spec.as_ref());
                    return Ok(if synced { status.and_then(|s| s.code()).unwrap_or(1) } else { 1 });
                }
            },
            State::Failed(failed) => {
                log::info!("start failed; answering /status for {:?} before exiting", args.exit_delay);
                linger(&owner, args.exit_delay, Status::Failed);
                drop(failed);
                return Ok(1);
            }
            State::Terminated(done, ending) => {
                let code = done.exit().and_then(|s| s.code()).unwrap_or(if done.exit().is_some() { 1 } else { 0 });
                return Ok(match ending {
                    Ending::Signal => 1,
                    Ending::Requested => {
                        log::info!("terminated; answering /status for {:?} before exiting", args.exit_delay);
                        linger(&owner, args.exit_delay, Status::Terminated);
                        code
                    }
                });
            }
        };
    }
}

/// A Primary in pageserver mode syncs its safekeepers again once Postgres has exited
/// (reference 6); false when that failed, which makes the exit code 1, as in Neon.
fn synced_after_exit(ctx: &Context, spec: Option<&ParsedSpec>) -> bool {
    // A first signal set the flag; clear it so that only a further signal cuts the sync short.
    ctx.interrupted.store(false, Ordering::SeqCst);
    match spec.map_or(Ok(()), |s| storage::sync_after_exit(ctx, s)) {
        Ok(()) => true,
        Err(e) => {
            log::error!("sync of safekeepers after postgres exited failed: {e}");
            false
        }
    }
}

fn start(init: Init) -> State {
    match init.start() {
        Ok(r) => State::Running(r),
        Err(f) => State::Failed(f),
    }
}

fn start_pooled(c: Configuration<crate::lifecycle::Cold>) -> State {
    match c.start() {
        Ok(r) => State::Running(r),
        Err(f) => State::Failed(f),
    }
}

fn live_configure(pending: ConfigurationPending<Live>) -> State {
    match pending.begin().apply() {
        Ok(r) => State::Running(r),
        Err(f) => State::Failed(f),
    }
}

fn answered(reply: &Sender<Reply>, state: State) -> State {
    answer(reply, &state);
    state
}

fn answer(reply: &Sender<Reply>, state: &State) {
    let r = match state {
        State::Running(_) => Reply::Done,
        State::Failed(f) => Reply::Failed(f.error().to_string()),
        State::Empty(_) => Reply::WrongState(Status::Empty),
        State::Terminated(..) => Reply::WrongState(Status::Terminated),
    };
    let _ = reply.send(r);
}

/// Keeps answering requests (the HTTP threads serve `/status` from the snapshot) for
/// `delay`, refusing changes; a signal ends it early.
fn linger(owner: &Owner, delay: Duration, status: Status) {
    let deadline = Instant::now() + delay;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match owner.recv_timeout(left) {
            Ok(Event::Configure { reply, .. }) | Ok(Event::Terminate { reply, .. }) | Ok(Event::Restart { reply }) => {
                let _ = reply.send(Reply::WrongState(status));
            }
            Ok(Event::Signal(_)) | Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Event::PostgresExited) => {}
        }
    }
}

/// SIGTERM, SIGINT, SIGQUIT: the first one interrupts a start and asks the owner for a fast
/// shutdown; any further one escalates to an immediate shutdown right here, so a stuck fast
/// shutdown can always be cut short.
fn spawn_signal_thread(ctx: &Context, tx: Sender<Event>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGQUIT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGQUIT])
        .map_err(|e| Error::Process { what: "cannot install signal handlers".into(), detail: e.to_string() })?;
    let interrupted = ctx.interrupted.clone();
    let postmaster = ctx.postmaster.clone();
    let count = AtomicUsize::new(0);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                log::info!("received termination signal {sig}");
                interrupted.store(true, Ordering::SeqCst);
                if count.fetch_add(1, Ordering::SeqCst) > 0
                    && let Some(pm) = postmaster.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
                {
                    log::warn!("second signal: immediate shutdown of postgres (pid {})", pm.pid());
                    pm.stop(StopMode::Immediate);
                }
                let _ = tx.send(Event::Signal(sig));
            }
        })
        .map_err(|e| Error::Process { what: "cannot start the signal thread".into(), detail: e.to_string() })?;
    Ok(())
}

/// "Latest checkpoint location" from `pg_controldata` (beside `-b`, as the Postgres user when
/// we are root), i.e. the shutdown checkpoint's LSN after a fast shutdown. None if unreadable.
fn checkpoint_lsn(ctx: &Context) -> Option<String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(ctx.bindir.join("pg_controldata"));
    cmd.arg(&ctx.args.pgdata).env("LC_ALL", "C").stdin(std::process::Stdio::null());
    if let Some(u) = ctx.run_as {
        cmd.uid(u.uid).gid(u.gid);
    }
    let out = match cmd.output() {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            log::warn!("pg_controldata failed: {}", String::from_utf8_lossy(&o.stderr).trim());
            return None;
        }
        Err(e) => {
            log::warn!("cannot run pg_controldata: {e}");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let lsn = text.lines().find_map(|l| l.strip_prefix("Latest checkpoint location:")).map(|v| v.trim().to_string());
    lsn.filter(|v| v.split_once('/').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty()))
}
