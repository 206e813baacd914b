//! One type per state, with the transitions that consume it. Each state's doc line says what
//! it waits for.

use super::{Context, Status, boot};
use crate::error::Error;
use crate::postgres::process::{Postmaster, StopMode};
use crate::postgres::promote::{self, Timings};
use crate::postgres::{pgdata, storage};
use crate::spec::{ComputeMode, Lsn, ParsedSpec, StorageMode};
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

mod refresh;
pub use refresh::{RefreshConfiguration, RefreshConfigurationPending};

mod sealed {
    pub trait Sealed {}
}

/// Whether Postgres is already running in a configuration state.
pub trait Phase: sealed::Sealed {}

/// Postgres is not running yet: the initial configuration of a pooled compute.
pub struct Cold;

/// Postgres is running: a live reconfiguration. Holds the postmaster and the spec it runs
/// with (for the safekeeper sync after it exits, should the new spec fail).
pub struct Live(Postmaster, ParsedSpec);

impl sealed::Sealed for Cold {}
impl sealed::Sealed for Live {}
impl Phase for Cold {}
impl Phase for Live {}

/// Waits for a spec: from `POST /configure`, or the control plane.
pub struct Empty {
    pub(super) ctx: Context,
}

/// A spec was accepted; waits for the owner to begin configuring.
pub struct ConfigurationPending<P: Phase> {
    ctx: Context,
    spec: ParsedSpec,
    phase: P,
}

/// Applies a spec: a full start (`Cold`) or a reload and catalog apply (`Live`).
pub struct Configuration<P: Phase> {
    ctx: Context,
    spec: ParsedSpec,
    phase: P,
}

/// Starts the compute from a spec given at start-up.
pub struct Init {
    ctx: Context,
    spec: ParsedSpec,
}

/// Postgres is up and configured; waits for Postgres to exit or for a request.
pub struct Running {
    ctx: Context,
    spec: ParsedSpec,
    postmaster: Postmaster,
}

/// A start or a reconfiguration failed; holds the error, and Postgres with the spec it runs
/// with if it still runs (a reconfiguration failed). Waits for a corrected spec (if Postgres
/// runs) or for the end.
pub struct Failed {
    ctx: Context,
    error: Error,
    running: Option<Box<(Postmaster, ParsedSpec)>>,
}

/// The outcome of [`Running::restart`].
pub(super) enum Restarted {
    Running(Running),
    /// Postgres did not come back; it is not running.
    Failed(Failed),
    /// Not for this compute (pageserver storage), with the reason; nothing was done.
    NotPossible(Running, String),
}

/// Why a compute is ending: decides the exit code and whether `/status` lingers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// `POST /terminate`: Postgres's exit code; `/status` is answered for `--exit-delay`.
    Requested,
    /// A signal: exit code 1 at once.
    Signal,
    /// Postgres exited by itself: its exit code at once.
    PostgresExited,
}

/// How a termination ends, chosen by `/terminate?mode=` (reference 5.5): the status while it
/// is pending and how long `/status` is still answered afterwards. Not how Postgres stops:
/// that is the [`StopMode`] given with it (fast for both of Neon's modes).
pub trait Urgency: sealed::Sealed {
    const STATUS: Status;
    const LINGER: Linger;
}

/// `mode=fast` (and signals, and an exit of Postgres): `termination_pending_fast`, then
/// `/status` is answered for `--exit-delay` (30 s by default, as Neon).
pub struct Fast;

/// `mode=immediate`: `termination_pending_immediate`, then the process exits after 300 ms.
pub struct Immediate;

impl sealed::Sealed for Fast {}
impl sealed::Sealed for Immediate {}
impl Urgency for Fast {
    const STATUS: Status = Status::TerminationPendingFast;
    const LINGER: Linger = Linger::ExitDelay;
}
impl Urgency for Immediate {
    const STATUS: Status = Status::TerminationPendingImmediate;
    const LINGER: Linger = Linger::Brief;
}

/// How long the process stays after a requested termination, answering `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linger {
    /// Exits at once.
    No,
    /// `--exit-delay` (Neon's 30 s).
    ExitDelay,
    /// 300 ms, as Neon after `mode=immediate`.
    Brief,
}

/// Termination was asked for (or Postgres exited); waits for Postgres to exit and for the
/// safekeeper sync after it. `U` is the phase `/status` shows.
pub struct TerminationPending<U: Urgency> {
    ctx: Context,
    postgres: Option<(Postmaster, ParsedSpec)>,
    reason: Reason,
    urgency: std::marker::PhantomData<U>,
}

/// The compute has ended; waits out its [`Linger`] (after a requested termination) before
/// the process exits.
pub struct Terminated {
    exit: Option<ExitStatus>,
    lsn: Option<String>,
    synced: bool,
    code: i32,
    linger: Linger,
}

impl Empty {
    pub(super) fn enter(ctx: Context) -> Empty {
        ctx.publish(Status::Empty, None);
        Empty { ctx }
    }

    pub fn status(&self) -> Status {
        Status::Empty
    }

    /// A spec given on the command line (or fetched): start right away.
    pub fn init(self, spec: ParsedSpec) -> Init {
        self.ctx.publish_spec(&spec);
        self.ctx.publish(Status::Init, None);
        Init { ctx: self.ctx, spec }
    }

    /// A spec from `POST /configure` while waiting. Start-up is timed from here, as in Neon.
    pub fn configure(self, spec: ParsedSpec) -> ConfigurationPending<Cold> {
        let now = SystemTime::now();
        self.ctx.shared.update(|s| {
            s.metrics.wait_for_spec_ms = now.duration_since(s.start_time).map_or(0, |d| d.as_millis() as u64);
            s.start_time = now;
        });
        self.ctx.publish_spec(&spec);
        self.ctx.publish(Status::ConfigurationPending, None);
        ConfigurationPending { ctx: self.ctx, spec, phase: Cold }
    }

    /// Nothing runs yet, so termination completes at once (Neon hangs here).
    pub(super) fn terminate<U: Urgency>(self, reason: Reason) -> TerminationPending<U> {
        TerminationPending::enter(self.ctx, None, reason)
    }
}

impl<P: Phase> ConfigurationPending<P> {
    pub fn begin(self) -> Configuration<P> {
        self.ctx.publish(Status::Configuration, None);
        Configuration { ctx: self.ctx, spec: self.spec, phase: self.phase }
    }
}

impl Configuration<Cold> {
    /// The full start of a pooled compute.
    pub fn start(self) -> Result<Running, Failed> {
        boot::start(self.ctx, self.spec)
    }
}

impl Configuration<Live> {
    /// Rewrites `postgresql.conf`, reloads (never restarts) and applies the catalog.
    pub fn apply(self) -> Result<Running, Failed> {
        let Live(postmaster, old) = self.phase;
        match boot::reconfigure(&self.ctx, &self.spec, &postmaster) {
            Ok(pending) => {
                self.ctx.record_pending_restart(pending);
                Ok(Running::enter(self.ctx, self.spec, postmaster))
            }
            Err(e) => Err(Failed::enter(self.ctx, e, Some((postmaster, old)))),
        }
    }
}

impl Init {
    pub fn status(&self) -> Status {
        Status::Init
    }

    pub fn start(self) -> Result<Running, Failed> {
        boot::start(self.ctx, self.spec)
    }
}

impl Running {
    pub(super) fn enter(ctx: Context, spec: ParsedSpec, postmaster: Postmaster) -> Running {
        ctx.set_postgres_up(true);
        ctx.publish(Status::Running, None);
        Running { ctx, spec, postmaster }
    }

    pub fn status(&self) -> Status {
        Status::Running
    }

    pub fn spec(&self) -> &ParsedSpec {
        &self.spec
    }

    pub fn postmaster_pid(&self) -> u32 {
        self.postmaster.pid()
    }

    pub fn reconfigure(self, spec: ParsedSpec) -> ConfigurationPending<Live> {
        self.ctx.publish_spec(&spec);
        self.ctx.publish(Status::ConfigurationPending, None);
        ConfigurationPending { ctx: self.ctx, spec, phase: Live(self.postmaster, self.spec) }
    }

    /// The same spec again, for the certificate watcher: a live reconfiguration that copies
    /// the TLS key and certificate anew (reference 2026 §10.1).
    pub fn reapply(self) -> ConfigurationPending<Live> {
        let spec = self.spec.clone();
        self.reconfigure(spec)
    }

    /// False once the current postmaster has exited: an exit event may be for an earlier
    /// one, replaced by a restart.
    pub fn postgres_alive(&self) -> bool {
        self.postmaster.exit_status().is_none()
    }

    /// Asks Postgres to stop (`mode`) and waits in [`TerminationPending`]. A fast shutdown
    /// is preceded by a bounded `CHECKPOINT` (see [`crate::postgres::stop`]), once the status
    /// already says the compute is stopping.
    pub(super) fn terminate<U: Urgency>(self, mode: StopMode, reason: Reason) -> TerminationPending<U> {
        let pending = TerminationPending::<U>::enter(self.ctx, Some((self.postmaster, self.spec)), reason);
        if let Some((pm, _)) = &pending.postgres {
            if mode == StopMode::Fast {
                pending.ctx.pre_stop_checkpoint();
            }
            pm.stop(mode);
        }
        pending
    }

    /// `POST /restart`: a fast shutdown and a start of Postgres on the same PGDATA (local
    /// storage only), so that settings waiting for a restart take effect. Nothing else of a
    /// start runs again: PGDATA is neither prepared nor fetched, no subscription is dropped.
    /// [`Restarted::NotPossible`] hands the compute back, untouched, when its storage does not
    /// allow it.
    pub(super) fn restart(self) -> Restarted {
        if let Err(why) = boot::restart_allowed(&self.spec) {
            return Restarted::NotPossible(self, why);
        }
        self.ctx.publish(Status::Configuration, None);
        self.ctx.pre_stop_checkpoint();
        match boot::restart(&self.ctx, &self.spec, self.postmaster) {
            Ok(pm) => {
                self.ctx.shared.update(|s| s.pending_restart.clear());
                Restarted::Running(Running::enter(self.ctx, self.spec, pm))
            }
            Err(e) => {
                self.ctx.set_postgres_up(false);
                Restarted::Failed(Failed::enter(self.ctx, e, None))
            }
        }
    }

    /// `POST /promote`: promotes the standby, then applies the new spec as a live
    /// reconfiguration. The status stays `running` (as Neon). A failure before Postgres was
    /// promoted leaves the compute as it was, so the request can be retried; a failure of the
    /// reconfiguration after it leaves `Failed` with Postgres up (a `/configure` recovers).
    pub(super) fn promote(
        self,
        new: ParsedSpec,
        wal_flush_lsn: Lsn,
    ) -> (Result<Running, Failed>, Result<Timings, String>) {
        let mut timings = match promote::promote(&self.ctx.node, &self.spec, &new, wal_flush_lsn) {
            Ok(t) => t,
            Err(e) => {
                let msg = e.report().to_string();
                log::error!("promotion failed: {msg}");
                return (Ok(self), Err(msg));
            }
        };
        log::info!("postgres promoted; applying the primary's spec");
        let started = std::time::Instant::now();
        self.ctx.publish_spec(&new);
        match boot::reconfigure(&self.ctx, &new, &self.postmaster) {
            Ok(pending) => {
                self.ctx.record_pending_restart(pending);
                timings.reconfigure_time_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
                (Ok(Running { spec: new, ..self }), Ok(timings))
            }
            Err(e) => {
                let msg = format!("promoted, but the new spec could not be applied: {}", e.report());
                (Err(Failed::enter(self.ctx, e, Some((self.postmaster, new)))), Err(msg))
            }
        }
    }

    /// Postgres exited by itself.
    pub(super) fn postgres_exited(self) -> TerminationPending<Fast> {
        TerminationPending::enter(self.ctx, Some((self.postmaster, self.spec)), Reason::PostgresExited)
    }
}

impl Failed {
    pub(super) fn enter(ctx: Context, error: Error, running: Option<(Postmaster, ParsedSpec)>) -> Failed {
        // After a termination signal, whatever the step failed with (its sessions ended by the
        // fast shutdown the signal started) is the signal's doing: say so, report termination.
        let interrupted = matches!(error, Error::Interrupted) || ctx.node.interrupted.load(Ordering::SeqCst);
        let error = if interrupted && !matches!(error, Error::Interrupted) {
            log::info!("after a termination signal: {}", error.report());
            Error::Interrupted
        } else {
            error
        };
        let text = error.report().to_string();
        log::error!("compute failed: {text}");
        ctx.set_postgres_up(running.is_some());
        let status = if interrupted { Status::TerminationPendingFast } else { Status::Failed };
        ctx.publish(status, Some(text));
        Failed { ctx, error, running: running.map(Box::new) }
    }

    pub fn status(&self) -> Status {
        Status::Failed
    }

    pub fn error(&self) -> &Error {
        &self.error
    }

    /// True when Postgres still runs (a reconfiguration failed, not the start).
    pub fn postgres_running(&self) -> bool {
        self.running.as_ref().is_some_and(|r| r.0.exit_status().is_none())
    }

    /// The pid of the Postgres that still runs after a failed reconfiguration.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.0.pid())
    }

    /// True when this failure had Postgres running (a reconfiguration failed), even if it
    /// has exited since.
    pub(super) fn had_postgres(&self) -> bool {
        self.running.is_some()
    }

    /// A corrected spec may recover a compute whose reconfiguration failed; a failed start
    /// stays failed (there is no Postgres to configure).
    pub(super) fn reconfigure(self, spec: ParsedSpec) -> Result<ConfigurationPending<Live>, Failed> {
        match self.running.map(|b| *b) {
            Some((pm, old)) if pm.exit_status().is_none() => {
                self.ctx.publish_spec(&spec);
                self.ctx.publish(Status::ConfigurationPending, None);
                Ok(ConfigurationPending { ctx: self.ctx, spec, phase: Live(pm, old) })
            }
            running => Err(Failed { running: running.map(Box::new), ..self }),
        }
    }

    /// Stops Postgres if it still runs (`mode`) and waits in [`TerminationPending`].
    pub(super) fn terminate<U: Urgency>(self, mode: StopMode, reason: Reason) -> TerminationPending<U> {
        let running = self.running.map(|b| *b);
        if let Some((pm, _)) = &running {
            pm.stop(mode);
        }
        TerminationPending::enter(self.ctx, running, reason)
    }
}

impl<U: Urgency> TerminationPending<U> {
    fn enter(ctx: Context, postgres: Option<(Postmaster, ParsedSpec)>, reason: Reason) -> TerminationPending<U> {
        ctx.publish(U::STATUS, None);
        TerminationPending { ctx, postgres, reason, urgency: std::marker::PhantomData }
    }

    pub fn status(&self) -> Status {
        U::STATUS
    }

    /// Waits until Postgres has exited (at once when it never ran), syncs the safekeepers,
    /// and finds the LSN `/terminate` answers: the shutdown sync's LSN for a Primary in
    /// pageserver mode; in local mode, after a requested stop of a primary, the shutdown
    /// checkpoint's location from `pg_controldata`; otherwise none.
    pub fn wait(self) -> Terminated {
        let ctx = self.ctx;
        let (exit, lsn, synced) = match self.postgres {
            None => (None, None, true),
            Some((pm, spec)) => {
                let exit = pm.wait_exit(None);
                ctx.set_postgres_up(false);
                ctx.set_handle(None);
                let (synced, sync_lsn) = match sync_lsn_after_exit(&ctx, &spec) {
                    Ok(lsn) => (true, lsn),
                    Err(()) => (false, None),
                };
                let local_primary =
                    spec.mode() == ComputeMode::Primary && !matches!(spec.storage(), StorageMode::Pageserver { .. });
                let lsn = match sync_lsn {
                    Some(lsn) => Some(lsn.to_string()),
                    None if local_primary && self.reason == Reason::Requested => pgdata::checkpoint_lsn(&ctx.node),
                    None => None,
                };
                (exit, lsn, synced)
            }
        };
        let code = match self.reason {
            Reason::Signal => 1,
            _ if !synced => 1,
            // Never ran: 0; killed by a signal: 1.
            _ => exit.map_or(0, |s| s.code().unwrap_or(1)),
        };
        let linger = if self.reason == Reason::Requested && synced { U::LINGER } else { Linger::No };
        ctx.publish(Status::Terminated, None);
        Terminated { exit, lsn, synced, code, linger }
    }
}

impl Terminated {
    pub fn status(&self) -> Status {
        Status::Terminated
    }

    /// Postgres's exit status, if it ran.
    pub fn exit(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// The LSN `/terminate` answers (see [`TerminationPending::wait`]).
    pub fn lsn(&self) -> Option<&str> {
        self.lsn.as_deref()
    }

    /// False when the safekeeper sync after Postgres exited failed.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The process exit code.
    pub fn code(&self) -> i32 {
        self.code
    }

    /// How long `/status` is still answered before the process exits.
    pub fn linger(&self) -> Linger {
        self.linger
    }

    /// A signal cuts the lingering short.
    pub(super) fn stop_lingering(self) -> Terminated {
        Terminated { linger: Linger::No, ..self }
    }
}

/// A Primary in pageserver mode syncs its safekeepers again once Postgres has exited
/// (reference 9.3); false when that failed, which makes the exit code 1, as in Neon.
pub(super) fn synced_after_exit(ctx: &Context, spec: &ParsedSpec) -> bool {
    sync_lsn_after_exit(ctx, spec).is_ok()
}

/// The sync after exit, with the LSN it printed (none when no sync was due). The error is
/// logged here.
fn sync_lsn_after_exit(ctx: &Context, spec: &ParsedSpec) -> Result<Option<Lsn>, ()> {
    // A first signal set the flag; clear it so that only a further signal cuts the sync short.
    ctx.node.interrupted.store(false, Ordering::SeqCst);
    storage::sync_after_exit(&ctx.node, spec).map_err(|e| {
        log::error!("sync of safekeepers after postgres exited failed: {}", e.report());
    })
}
