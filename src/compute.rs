//! The owner of the lifecycle: reads the spec, starts the HTTP servers and the signal thread,
//! then feeds every event to [`lifecycle::step`] and sends its reply. It decides nothing
//! itself: what an event does in a state is `step`'s business.
//!
//! Other threads never change the state: they send a [`Message`] and, for HTTP requests that
//! wait, receive a [`Reply`].
//!
//! [`Reply`]: crate::lifecycle::Reply

use crate::args::{Args, SpecSource};
use crate::error::{Error, Result};
use crate::heartbeat::{self, Heartbeat};
use crate::http::{listen, routes};
use crate::lifecycle::{self, Event, Exit, Linger, Message, Parts, Reply, Shared, State};
use crate::notify::Notifier;
use crate::postgres::process::{PostmasterHandle, StopMode};
use crate::postgres::{Node, pgdata};
use crate::spec::ParsedSpec;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the process stays after `/terminate?mode=immediate` (Neon: 300 ms).
const BRIEF_LINGER: Duration = Duration::from_millis(300);

/// Runs compute_ctl to the end and returns the process exit code.
pub fn run(args: Args) -> Result<i32> {
    log::info!("compute build_tag: {}", crate::metrics::BUILD_TAG);
    let (tx, rx) = mpsc::channel::<Message>();
    let notifier = Arc::new(Notifier::from_env(&crate::notify::Env::from_process())?);
    if notifier.enabled() {
        log::info!(
            "systemd notification socket found{}",
            notifier
                .watchdog_interval()
                .map_or(String::new(), |w| format!("; watchdog ping every {} ms", w.as_millis()))
        );
    }
    let node = Node {
        // A symlinked PGDATA is resolved once; everything works on the real directory.
        pgdata: pgdata::resolve(&args.pgdata),
        bindir: pgdata::bindir(&args.pgbin)?,
        connstr: args.connstr.clone(),
        run_as: pgdata::postgres_identity(&args.pg_user)?,
        internal_http_port: args.internal_http_port,
        privileged_role: args.privileged_role_name.clone(),
        interrupted: Arc::new(AtomicBool::new(false)),
        // Set once `compute_ctl_config` is read (see `supervise`).
        tls: None,
    };
    let extensions = Arc::new(crate::remote_ext::Installer::new(args.remote_ext_base_url.clone(), &node.bindir));
    let app = Arc::new(routes::App {
        shared: Shared::new(),
        events: Mutex::new(tx),
        live_config_allowed: !matches!(args.spec, SpecSource::Inline(_)),
        node,
        extensions,
        compute_ctl_config: std::sync::OnceLock::new(),
        in_flight: AtomicUsize::new(0),
        heartbeat: Arc::new(Heartbeat::new()),
    });
    let owner = Owner { rx, heartbeat: app.heartbeat.clone(), notifier };
    owner.turn();
    let result = supervise(args, app.clone(), owner);
    crate::rsyslog::gc::stop();
    // No lease query outlives the compute by more than one query's bound.
    crate::lease::stop();
    if !crate::lease::wait_stopped(crate::lease::QUERY_TIMEOUT) {
        log::warn!("lsn lease: a lease query is still in flight; exiting without it");
    }
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
    rx: Receiver<Message>,
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

    /// The next message, turning while none comes.
    fn recv(&self) -> Result<Message, RecvTimeoutError> {
        loop {
            match self.recv_timeout(Duration::from_secs(3600)) {
                Err(RecvTimeoutError::Timeout) => {}
                other => return other,
            }
        }
    }

    /// Like [`Receiver::recv_timeout`], turning meanwhile.
    fn recv_timeout(&self, limit: Duration) -> Result<Message, RecvTimeoutError> {
        let deadline = Instant::now() + limit;
        loop {
            self.turn();
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.min(self.tick())) {
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                other => {
                    self.turn();
                    return other;
                }
            }
        }
    }
}

fn supervise(args: Args, app: Arc<routes::App>, owner: Owner) -> Result<i32> {
    let tx = crate::locks::lock(&app.events).clone();
    // With AUTOSCALING, Postgres runs in the memory cgroup; a missing one fails here.
    let a = &args.autoscaling;
    let path = std::env::var("PATH").ok();
    crate::cgroup::set(crate::cgroup::Placement::new(a.enabled, &a.cgroup, a.cgroup_root.as_deref(), path.as_deref())?);
    // The spec is read and validated before anything on disk is touched.
    let initial = match &args.spec {
        SpecSource::Config(path) => {
            let (spec, ctl) = crate::spec::ComputeConfig::load(path)?;
            log::info!(
                "config file {}: {}, {} JWKS key(s)",
                path.display(),
                if spec.is_some() { "with a spec" } else { "no spec yet" },
                ctl.jwks.keys.len()
            );
            let _ = app.compute_ctl_config.set(ctl);
            spec
        }
        SpecSource::Inline(json) => Some(ParsedSpec::parse(json)?),
        SpecSource::File(path) => {
            let json = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read spec file", path, e))?;
            Some(ParsedSpec::parse(&json)?)
        }
        // The control plane's answer carries the JWT keys, which decide the servers'
        // addresses: asked before they start, as Neon does.
        SpecSource::ControlPlane(uri) => {
            let (spec, ctl) = crate::control_plane::fetch_config(uri, &args.compute_id)?;
            if let Some(ctl) = ctl {
                let _ = app.compute_ctl_config.set(ctl);
            }
            spec
        }
        SpecSource::Wait => None,
    };
    let (external_auth, internal_auth) = listen::authorizers(&args, app.compute_ctl_config.get())?;

    let exit_tx = Mutex::new(tx.clone());
    let postmaster: Arc<Mutex<Option<PostmasterHandle>>> = Arc::new(Mutex::new(None));
    // From here on a termination signal is caught; it waits in signal-hook's pipe until the
    // signal thread runs.
    let signals = signal_hook::iterator::Signals::new(HANDLED_SIGNALS)
        .map_err(|e| Error::system("cannot install signal handlers", e))?;
    if std::process::id() == 1 {
        let postmaster = postmaster.clone();
        let is_ours = move |pid: u32| crate::locks::lock(&postmaster).as_ref().is_some_and(|pm| pm.pid() == pid);
        crate::sys::spawn_orphan_reaper(is_ours).map_err(|e| Error::system("cannot start the orphan reaper", e))?;
        log::info!("running as PID 1: reaping orphaned processes");
    }
    let servers = listen::bind(&args, &app, external_auth, internal_auth)?;
    let signal_thread = SignalThread {
        signals,
        interrupted: app.node.interrupted.clone(),
        postmaster: postmaster.clone(),
        tx: tx.clone(),
        connstr: app.node.connstr.clone(),
        pre_stop: args.pre_stop_checkpoint,
    };
    start_threads(signal_thread, servers);
    // TLS settings are fixed here, at start (a `/configure` body's `compute_ctl_config` is
    // ignored, as in Neon).
    let tls = app.compute_ctl_config.get().and_then(|c| c.tls.clone());
    if let Some(t) = &tls {
        crate::cert_watch::spawn(t.cert_path.clone().into(), app.shared.clone(), tx.clone())?;
    }
    drop(tx);

    let mut state = State::new(Parts {
        node: crate::postgres::Node { tls, ..app.node.clone() },
        shared: app.shared.clone(),
        postmaster: postmaster.clone(),
        refresh: refresh_source(&args),
        on_postgres_exit: Arc::new(move |_| {
            let _ = crate::locks::lock(&exit_tx).send(Message { event: Event::PostgresExited, reply: None });
        }),
        notifier: owner.notifier.clone(),
        pre_stop_checkpoint: args.pre_stop_checkpoint,
        rsyslog: crate::rsyslog::Settings::new(args.rsyslog_dir.clone(), |k| std::env::var(k).ok()),
        extensions: app.extensions.clone(),
    });
    if initial.is_none() && !matches!(args.spec, SpecSource::ControlPlane(_)) {
        log::info!("no spec yet: waiting for POST /configure");
    }
    if let Some(spec) = initial {
        // As in Neon, a Static compute's lease is asked for as soon as the spec is known, so
        // the basebackup at its old LSN is protected too.
        crate::lease::ensure(&spec);
        state = lifecycle::step(state, Event::Init(spec)).0;
        lease_follows(&state);
    }

    // When the current end state began lingering.
    let mut linger_deadline: Option<Instant> = None;
    loop {
        if let State::Running(running) = &state {
            crate::monitor::set_extensions_interval(args.installed_extensions_interval, running.spec().spec());
            crate::monitor::ensure_started(&app.shared, &app.node.connstr);
            crate::vm_monitor::ensure_started(&args, running.spec().spec().disable_lfc_resizing != Some(true));
            let pid = crate::locks::lock(&postmaster).as_ref().map(|pm| pm.pid());
            crate::lfc::ensure_started(&app.node, app.shared.get().lfc.as_ref(), pid);
        }
        let message = match state.exit() {
            None => owner.recv(),
            Some(Exit { code, linger: Linger::No }) => return Ok(code),
            Some(exit) => {
                let delay = match exit.linger {
                    Linger::Brief => BRIEF_LINGER,
                    _ => args.exit_delay,
                };
                let deadline = *linger_deadline.get_or_insert_with(|| {
                    log::info!("{}; answering /status for {delay:?} before exiting", state.status());
                    Instant::now() + delay
                });
                match owner.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Err(RecvTimeoutError::Timeout) => return Ok(exit.code),
                    other => other,
                }
            }
        };
        // Nobody can reach the owner any more (not expected: it holds a sender): end as on a
        // signal.
        let Message { event, reply } = message.unwrap_or(Message { event: Event::Signal(0), reply: None });
        let configure = matches!(event, Event::Configure(_));
        let restart = restarts_postgres(&state, &event);
        if stops_postgres(&state, &event) || restart {
            // Not across a restart either: an offload would fail half-way. The LFC tasks start
            // again for the new postmaster (whose file cache is new and empty), autoprewarm
            // included.
            stop_companions();
            crate::lease::stop();
        }
        if let (State::Empty(_), Event::Configure(spec)) = (&state, &event) {
            crate::lease::ensure(spec);
        }
        let (next, answer) = lifecycle::step(state, event);
        state = next;
        if restart && matches!(state, State::Running(_)) {
            crate::vm_monitor::resume();
        }
        lease_follows(&state);
        if let Some(reply) = reply {
            // A /configure that ran gets the status it left, read before the next event runs.
            let answer = match answer {
                Reply::Done if configure => Reply::Configured(app.shared.get().body()),
                other => other,
            };
            let _ = reply.send(answer);
        }
    }
}

/// Where `/refresh_configuration` fetches the spec again: the control plane (`-p`) or the
/// config or spec file (`-c`, `-S`), as Neon re-reads its `-c` file.
fn refresh_source(args: &Args) -> Option<lifecycle::Refresh> {
    match &args.spec {
        SpecSource::ControlPlane(uri) => {
            let (uri, id) = (uri.clone(), args.compute_id.clone());
            Some(Arc::new(move || {
                crate::control_plane::fetch_config(&uri, &id).map(|(spec, _)| spec).map_err(|e| e.report().to_string())
            }))
        }
        SpecSource::Config(path) => {
            let path = path.clone();
            Some(Arc::new(move || {
                crate::spec::ComputeConfig::load(&path).map(|(spec, _)| spec).map_err(|e| e.report().to_string())
            }))
        }
        SpecSource::File(path) => {
            let path = path.clone();
            Some(Arc::new(move || {
                let json =
                    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                ParsedSpec::parse(&json).map(Some).map_err(|e| e.report().to_string())
            }))
        }
        SpecSource::Inline(_) | SpecSource::Wait => None,
    }
}

/// The LSN lease thread lives while the compute runs (or starts); a start that failed
/// without a Postgres, or a termination, ends it.
fn lease_follows(state: &State) {
    match state {
        State::Running(running) => crate::lease::ensure(running.spec()),
        State::Failed(f) if f.postgres_running() => {}
        State::Empty(_) | State::Failed(_) | State::Terminated(_) => crate::lease::stop(),
    }
}

/// Whether `step` will stop Postgres (or find it gone) for this event: the vm-monitor is
/// stopped first, so the agent never talks to a Postgres on its way down.
fn stops_postgres(state: &State, event: &Event) -> bool {
    match (state, event) {
        (State::Running(_), Event::Terminate(_) | Event::Signal(_)) => true,
        // The exit of the postmaster a `/restart` replaced arrives after the new one runs:
        // not a stop.
        (State::Running(r), Event::PostgresExited) => !r.postgres_alive(),
        (State::Failed(f), Event::Signal(_)) => f.postgres_running(),
        (State::Failed(f), Event::PostgresExited) => !f.postgres_running(),
        _ => false,
    }
}

/// Stops what talks to Postgres on its own (the vm-monitor's agent session, the LFC tasks)
/// before Postgres goes down.
fn stop_companions() {
    crate::vm_monitor::stop();
    crate::lfc::stop();
}

/// Whether `step` will restart Postgres (`POST /restart` in local mode; in pageserver mode it
/// is refused and Postgres is left alone): the vm-monitor is paused around it, as around a
/// stop, and agents are let in again once Postgres runs.
fn restarts_postgres(state: &State, event: &Event) -> bool {
    match (state, event) {
        (State::Running(r), Event::Restart) => matches!(r.spec().storage(), crate::spec::StorageMode::Local),
        _ => false,
    }
}

/// The signals [`spawn_signal_thread`] handles.
const HANDLED_SIGNALS: [i32; 4] = [
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGQUIT,
    signal_hook::consts::SIGHUP,
];

/// What the signal thread needs (see [`spawn_signal_thread`]).
struct SignalThread {
    signals: signal_hook::iterator::Signals,
    interrupted: Arc<AtomicBool>,
    postmaster: Arc<Mutex<Option<PostmasterHandle>>>,
    tx: Sender<Message>,
    connstr: String,
    pre_stop: Duration,
}

/// Starts the signal thread and the HTTP servers' accept threads on a thread of their own,
/// beside the preparation of PGDATA and the spawn of Postgres: three thread starts cost 0.2 to
/// 0.4 ms here, on the path of every start (issue 18). What can fail for a reason a user must
/// see happened before (the sockets are bound, the handlers installed); meanwhile a
/// connection waits in its socket's backlog and a signal in signal-hook's pipe. A thread that
/// cannot start (the system is out of resources) ends compute_ctl as a SIGTERM would.
fn start_threads(signal_thread: SignalThread, servers: listen::Servers) {
    let (tx, interrupted) = (signal_thread.tx.clone(), signal_thread.interrupted.clone());
    let give_up = move |e: Error| {
        log::error!("{}: shutting down", e.report());
        interrupted.store(true, Ordering::SeqCst);
        let _ = tx.send(Message { event: Event::Signal(signal_hook::consts::SIGTERM), reply: None });
    };
    let give_up_too = give_up.clone();
    let spawned = std::thread::Builder::new().name("start-threads".into()).spawn(move || {
        if let Err(e) = spawn_signal_thread(signal_thread).and_then(|()| servers.serve()) {
            give_up(e);
        }
    });
    if let Err(e) = spawned {
        give_up_too(Error::system("cannot start a thread", e));
    }
}

/// SIGTERM, SIGINT, SIGQUIT: the first one interrupts a start, asks the owner for a fast
/// shutdown and starts it right here (so a catalog apply in progress stops at its running
/// statement); any further one escalates to an immediate shutdown, so a stuck fast shutdown
/// can always be cut short. SIGHUP (whose default action would kill compute_ctl and, through
/// the parent-death signal, Postgres) is forwarded to Postgres as a reload.
fn spawn_signal_thread(t: SignalThread) -> Result<()> {
    use signal_hook::consts::SIGHUP;
    let SignalThread { mut signals, interrupted, postmaster, tx, connstr, pre_stop } = t;
    let count = AtomicUsize::new(0);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let pm = crate::locks::lock(&postmaster).clone();
                if sig == SIGHUP {
                    match pm.filter(|pm| !pm.has_exited()) {
                        Some(pm) => {
                            log::info!("received SIGHUP: reloading the configuration of postgres (pid {})", pm.pid());
                            pm.reload();
                        }
                        None => log::info!("received SIGHUP: no postgres running, nothing to reload"),
                    }
                    continue;
                }
                log::info!("received termination signal {sig}");
                interrupted.store(true, Ordering::SeqCst);
                let first = count.fetch_add(1, Ordering::SeqCst) == 0;
                if !first && let Some(pm) = &pm {
                    log::warn!("second signal: immediate shutdown of postgres (pid {})", pm.pid());
                    pm.stop(StopMode::Immediate);
                }
                let pm = pm.filter(|pm| first && !pm.has_exited());
                let Some(pm) = pm else {
                    let _ = tx.send(Message { event: Event::Signal(sig), reply: None });
                    continue;
                };
                // The fast shutdown starts here rather than when the owner gets to the event: it
                // ends every session at once, so an apply or reconfigure in progress stops at
                // its running statement instead of finishing a long plan first. Before it, the
                // bounded pre-stop CHECKPOINT (`--pre-stop-checkpoint`), while Postgres still
                // serves, on its own thread so that a second signal can still escalate.
                let to_owner = tx.clone();
                let connstr = connstr.clone();
                let spawned = std::thread::Builder::new().name("pre-stop".into()).spawn(move || {
                    log::info!("{}", crate::postgres::stop::checkpoint(&connstr, pre_stop).describe());
                    // Queued before Postgres can exit, so the owner sees the signal before the exit.
                    let _ = to_owner.send(Message { event: Event::Signal(sig), reply: None });
                    // The agent is told first, so it never talks to a Postgres on its way down.
                    stop_companions();
                    pm.stop(StopMode::Fast);
                });
                if let Err(e) = spawned {
                    log::error!("cannot start the pre-stop thread ({e}): fast shutdown without a checkpoint");
                    let _ = tx.send(Message { event: Event::Signal(sig), reply: None });
                    stop_companions();
                    if let Some(pm) = crate::locks::lock(&postmaster).clone() {
                        pm.stop(StopMode::Fast);
                    }
                }
            }
        })
        .map_err(|e| Error::system("cannot start the signal thread", e))?;
    Ok(())
}
