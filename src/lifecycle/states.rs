//! One type per state, with the transitions that consume it. Each state's doc line says what
//! it waits for.

use super::{Context, Status, boot};
use crate::error::Error;
use crate::postgres::process::{Postmaster, StopMode};
use crate::postgres::{pgdata, storage};
use crate::spec::ParsedSpec;
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

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

/// Termination was asked for (or Postgres exited); waits for Postgres to exit and for the
/// safekeeper sync after it.
pub struct TerminationPending {
    ctx: Context,
    postgres: Option<(Postmaster, ParsedSpec)>,
    reason: Reason,
}

/// The compute has ended; waits out `--exit-delay` (after a requested termination) before
/// the process exits.
pub struct Terminated {
    exit: Option<ExitStatus>,
    lsn: Option<String>,
    synced: bool,
    code: i32,
    lingers: bool,
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
    pub(super) fn terminate(self, reason: Reason) -> TerminationPending {
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
                if !pending.is_empty() {
                    log::warn!(
                        "settings changed that take effect only after a restart (POST /restart): {}",
                        pending.join(", ")
                    );
                }
                self.ctx.shared.update(|s| s.pending_restart = pending);
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

    /// False once the current postmaster has exited: an exit event may be for an earlier
    /// one, replaced by a restart.
    pub fn postgres_alive(&self) -> bool {
        self.postmaster.exit_status().is_none()
    }

    /// Asks Postgres to stop (`mode`) and waits in [`TerminationPending`]. A fast shutdown
    /// is preceded by a bounded `CHECKPOINT` (see [`crate::postgres::stop`]), once the status
    /// already says the compute is stopping.
    pub(super) fn terminate(self, mode: StopMode, reason: Reason) -> TerminationPending {
        let pending = TerminationPending::enter(self.ctx, Some((self.postmaster, self.spec)), reason);
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

    /// Postgres exited by itself.
    pub(super) fn postgres_exited(self) -> TerminationPending {
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
        let status = if interrupted { Status::TerminationPending } else { Status::Failed };
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
    pub(super) fn terminate(self, mode: StopMode, reason: Reason) -> TerminationPending {
        let running = self.running.map(|b| *b);
        if let Some((pm, _)) = &running {
            pm.stop(mode);
        }
        TerminationPending::enter(self.ctx, running, reason)
    }
}

impl TerminationPending {
    fn enter(ctx: Context, postgres: Option<(Postmaster, ParsedSpec)>, reason: Reason) -> TerminationPending {
        ctx.publish(Status::TerminationPending, None);
        TerminationPending { ctx, postgres, reason }
    }

    /// Waits until Postgres has exited (at once when it never ran), reads the shutdown
    /// checkpoint after a requested stop, and syncs the safekeepers.
    pub fn wait(self) -> Terminated {
        let ctx = self.ctx;
        let (exit, lsn, synced) = match self.postgres {
            None => (None, None, true),
            Some((pm, spec)) => {
                let exit = pm.wait_exit(None);
                ctx.set_postgres_up(false);
                ctx.set_handle(None);
                let lsn = (self.reason == Reason::Requested).then(|| pgdata::checkpoint_lsn(&ctx.node)).flatten();
                (exit, lsn, synced_after_exit(&ctx, &spec))
            }
        };
        let code = match self.reason {
            Reason::Signal => 1,
            _ if !synced => 1,
            // Never ran: 0; killed by a signal: 1.
            _ => exit.map_or(0, |s| s.code().unwrap_or(1)),
        };
        let lingers = self.reason == Reason::Requested && synced;
        ctx.publish(Status::Terminated, None);
        Terminated { exit, lsn, synced, code, lingers }
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

    /// The shutdown checkpoint's LSN after a requested termination, when it could be read.
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

    /// Whether `/status` is still answered for `--exit-delay` before the process exits.
    pub fn lingers(&self) -> bool {
        self.lingers
    }

    /// A signal cuts the lingering short.
    pub(super) fn stop_lingering(self) -> Terminated {
        Terminated { lingers: false, ..self }
    }
}

/// A Primary in pageserver mode syncs its safekeepers again once Postgres has exited
/// (reference 6); false when that failed, which makes the exit code 1, as in Neon.
pub(super) fn synced_after_exit(ctx: &Context, spec: &ParsedSpec) -> bool {
    // A first signal set the flag; clear it so that only a further signal cuts the sync short.
    ctx.node.interrupted.store(false, Ordering::SeqCst);
    match storage::sync_after_exit(&ctx.node, spec) {
        Ok(()) => true,
        Err(e) => {
            log::error!("sync of safekeepers after postgres exited failed: {}", e.report());
            false
        }
    }
}
