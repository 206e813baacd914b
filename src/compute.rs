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
use crate::http::{routes, server};
use crate::lifecycle::{self, Event, Message, Parts, Shared, State};
use crate::notify::Notifier;
use crate::postgres::process::StopMode;
use crate::postgres::{Node, pgdata};
use crate::spec::ParsedSpec;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    let auth_token = args.http_auth_token_file.as_deref().map(routes::Token::from_file).transpose()?;
    let node = Node {
        pgdata: args.pgdata.clone(),
        bindir: pgdata::bindir(&args.pgbin)?,
        connstr: args.connstr.clone(),
        run_as: pgdata::postgres_identity(&args.pg_user)?,
        internal_http_port: args.internal_http_port,
        privileged_role: args.privileged_role_name.clone(),
        interrupted: Arc::new(AtomicBool::new(false)),
    };
    let app = Arc::new(routes::App {
        shared: Shared::new(),
        events: Mutex::new(tx),
        live_config_allowed: !matches!(args.spec, SpecSource::Inline(_)),
        node,
        auth_token,
        compute_ctl_config: std::sync::OnceLock::new(),
        in_flight: AtomicUsize::new(0),
        heartbeat: Arc::new(Heartbeat::new()),
    });
    let owner = Owner { rx, heartbeat: app.heartbeat.clone(), notifier };
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
        SpecSource::ControlPlane(_) | SpecSource::Wait => None,
    };

    let exit_tx = Mutex::new(tx.clone());
    let postmaster = Arc::new(Mutex::new(None));
    spawn_signal_thread(&app.node.interrupted, &postmaster, tx.clone())?;
    if std::process::id() == 1 {
        let postmaster = postmaster.clone();
        let is_ours = move |pid: u32| crate::locks::lock(&postmaster).as_ref().is_some_and(|pm| pm.pid() == pid);
        crate::sys::spawn_orphan_reaper(is_ours).map_err(|e| Error::system("cannot start the orphan reaper", e))?;
        log::info!("running as PID 1: reaping orphaned processes");
    }

    // Internal first: once the external server answers, both are up.
    for (port, which, name) in [
        (args.internal_http_port, routes::Server::Internal, "internal"),
        (args.external_http_port, routes::Server::External, "external"),
    ] {
        let addr = SocketAddr::new(args.http_bind, port);
        server::spawn(addr, name, routes::handler(app.clone(), which)).map_err(|source| Error::Bind {
            server: name,
            addr,
            source,
        })?;
    }
    drop(tx);

    let mut state = State::new(Parts {
        node: app.node.clone(),
        shared: app.shared.clone(),
        postmaster,
        on_postgres_exit: Arc::new(move |_| {
            let _ = crate::locks::lock(&exit_tx).send(Message { event: Event::PostgresExited, reply: None });
        }),
        notifier: owner.notifier.clone(),
        pre_stop_checkpoint: args.pre_stop_checkpoint,
    });
    let initial = match (initial, &args.spec) {
        (Some(spec), _) => Some(spec),
        (None, SpecSource::ControlPlane(uri)) => {
            let (spec, ctl) = crate::control_plane::fetch_config(uri, &args.compute_id)?;
            if let Some(ctl) = ctl {
                let _ = app.compute_ctl_config.set(ctl);
            }
            spec
        }
        (None, _) => {
            log::info!("no spec yet: waiting for POST /configure");
            None
        }
    };
    if let Some(spec) = initial {
        state = lifecycle::step(state, Event::Init(spec)).0;
    }

    // When the current end state began lingering.
    let mut linger_deadline: Option<Instant> = None;
    loop {
        if let State::Running(running) = &state {
            crate::monitor::set_extensions_interval(args.installed_extensions_interval, running.spec().spec());
            crate::monitor::ensure_started(&app.shared, &app.node.connstr);
        }
        let message = match state.exit() {
            None => owner.recv(),
            Some(exit) if !exit.lingers => return Ok(exit.code),
            Some(exit) => {
                let deadline = *linger_deadline.get_or_insert_with(|| {
                    log::info!("{}; answering /status for {:?} before exiting", state.status(), args.exit_delay);
                    Instant::now() + args.exit_delay
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
        let (next, answer) = lifecycle::step(state, event);
        state = next;
        if let Some(reply) = reply {
            let _ = reply.send(answer);
        }
    }
}

/// SIGTERM, SIGINT, SIGQUIT: the first one interrupts a start and asks the owner for a fast
/// shutdown; any further one escalates to an immediate shutdown right here, so a stuck fast
/// shutdown can always be cut short.
fn spawn_signal_thread(
    interrupted: &Arc<AtomicBool>,
    postmaster: &Arc<Mutex<Option<crate::postgres::process::PostmasterHandle>>>,
    tx: Sender<Message>,
) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGQUIT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGQUIT])
        .map_err(|e| Error::system("cannot install signal handlers", e))?;
    let interrupted = interrupted.clone();
    let postmaster = postmaster.clone();
    let count = AtomicUsize::new(0);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                log::info!("received termination signal {sig}");
                interrupted.store(true, Ordering::SeqCst);
                if count.fetch_add(1, Ordering::SeqCst) > 0
                    && let Some(pm) = crate::locks::lock(&postmaster).as_ref()
                {
                    log::warn!("second signal: immediate shutdown of postgres (pid {})", pm.pid());
                    pm.stop(StopMode::Immediate);
                }
                let _ = tx.send(Message { event: Event::Signal(sig), reply: None });
            }
        })
        .map_err(|e| Error::system("cannot start the signal thread", e))?;
    Ok(())
}
