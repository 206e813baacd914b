//! The compute's lifecycle as types: one type per state, transitions that consume `self`.
//!
//! ```text
//!            configure              begin                  start
//!   Empty ─────────────▶ ConfigurationPending<Cold> ──▶ Configuration<Cold> ──▶ Running | Failed
//!     │   init                 start
//!     ├─────────▶ Init ────────────────────────────────────────────────────▶ Running | Failed
//!     │                                                                        │
//!     │              reconfigure           begin                 apply         │
//!     │   Running ─────────────▶ ConfigurationPending<Live> ──▶ Configuration<Live> ──▶ Running | Failed
//!     │   terminate                            wait
//!     └─────────────▶ TerminationPending ─────────────▶ Terminated
//!         Running ──▶ TerminationPending
//!
//!                 restart (local storage only: fast shutdown, start on the same PGDATA)
//!         Running ──────────────────────────────────────────────────────▶ Running | Failed
//! ```
//!
//! `Cold` means Postgres is not running yet: only `Init` and `Configuration<Cold>` can make a
//! [`Boot`], the one value through which PGDATA is prepared, Postgres is started and inherited
//! subscriptions are dropped. `Running` and `Configuration<Live>` have no way to get one.
//! A `Failed` state whose Postgres still runs (a reconfigure failed) may be reconfigured again
//! ([`Failed::reconfigure`]); a failed start may not.
//!
//! # Types
//! [`Status`] is the run-time twin of these types; every transition publishes it in the
//! [`Shared`] snapshot for the HTTP server.
//!
//! # What does not compile
//! Each `compile_fail` block names the error it must fail with; rustdoc checks the code on
//! nightly (`cargo +nightly test --doc`), so a block cannot pass by failing for another reason.
//! A state cannot be used after its transition (E0382, use of moved value):
//! ```compile_fail,E0382
//! # use compute_ctl::lifecycle::*; use compute_ctl::spec::ParsedSpec;
//! fn f(empty: Empty, spec: ParsedSpec) {
//!     let init = empty.init(spec);
//!     let _ = empty.status(); // `empty` was moved by `init`
//! }
//! ```
//! Its twin, reading the status before the transition, compiles:
//! ```no_run
//! # use compute_ctl::lifecycle::*; use compute_ctl::spec::ParsedSpec;
//! fn f(empty: Empty, spec: ParsedSpec) {
//!     let _ = empty.status();
//!     let init = empty.init(spec);
//! }
//! ```
//! `Running` has no operation that prepares PGDATA or drops subscriptions (E0599, no method):
//! ```compile_fail,E0599
//! # use compute_ctl::lifecycle::*;
//! fn f(running: &mut Running) {
//!     running.drop_subscriptions_before_start();
//! }
//! ```
//! ```compile_fail,E0599
//! # use compute_ctl::lifecycle::*;
//! fn f(running: &mut Running) {
//!     running.prepare_pgdata();
//! }
//! ```
//! while a [`Boot`], which only the pre-`Running` states create, has both:
//! ```no_run
//! # use compute_ctl::lifecycle::*;
//! fn f(boot: &mut Boot) {
//!     boot.drop_subscriptions_before_start();
//!     boot.prepare_pgdata();
//! }
//! ```
//! A live reconfiguration cannot start Postgres from scratch either (E0599):
//! ```compile_fail,E0599
//! # use compute_ctl::lifecycle::*;
//! fn f(c: Configuration<Live>) {
//!     let _ = c.start();
//! }
//! ```
//! ```no_run
//! # use compute_ctl::lifecycle::*;
//! fn f(c: Configuration<Cold>) {
//!     let _ = c.start();
//! }
//! ```
//! A state cannot be constructed outside this module (E0451, private field; and a `Boot`
//! cannot be made at all):
//! ```compile_fail,E0451
//! # use compute_ctl::lifecycle::*;
//! fn f(ctx: Context) -> Terminated {
//!     Terminated { ctx, exit: None }
//! }
//! ```
//! ```no_run
//! # use compute_ctl::lifecycle::*;
//! fn f(ctx: Context) -> Empty {
//!     Empty::new(ctx)
//! }
//! ```

mod boot;
mod status;

pub use boot::Boot;
pub use status::{Metrics, Shared, Snapshot, Status, StatusBody};

use crate::args::Args;
use crate::error::Error;
use crate::postgres::process::{Postmaster, PostmasterHandle, RunAs, StopMode};
use crate::spec::ParsedSpec;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// What every state carries (cheap to clone: one `Arc`).
#[derive(Clone)]
pub struct Context(Arc<ContextData>);

impl Context {
    pub fn new(data: ContextData) -> Context {
        Context(Arc::new(data))
    }
}

impl std::ops::Deref for Context {
    type Target = ContextData;
    fn deref(&self) -> &ContextData {
        &self.0
    }
}

/// The arguments, where the binaries are, who Postgres runs as, the published snapshot, and
/// how to reach the process owner.
pub struct ContextData {
    pub args: Arc<Args>,
    pub bindir: PathBuf,
    pub run_as: Option<RunAs>,
    pub shared: Shared,
    /// Set by the signal thread; long start-up steps poll it.
    pub interrupted: Arc<AtomicBool>,
    /// The current postmaster, for the signal thread's escalation.
    pub postmaster: Arc<Mutex<Option<PostmasterHandle>>>,
    /// Called on the reaper thread when Postgres exits (the main loop turns it into an event).
    pub on_postgres_exit: Arc<dyn Fn(u32, ExitStatus) + Send + Sync>,
    /// systemd's notification socket (does nothing outside systemd).
    pub notifier: Arc<crate::notify::Notifier>,
}

impl ContextData {
    /// Publishes first and logs after, so whoever reads the log line finds `/status` agreeing.
    fn publish(&self, status: Status, error: Option<String>) {
        let text = match &error {
            Some(e) => format!("{}: {e}", status.wire_name()),
            None => format!("{}: {}", status.wire_name(), status.doing()),
        };
        self.shared.update(|s| {
            s.status = status;
            s.error = error;
            s.started |= status == Status::Running;
        });
        self.notifier.transition(status.notify_phase(), &text);
        log::info!("compute status: {}", status.wire_name());
    }

    fn publish_spec(&self, spec: &ParsedSpec) {
        self.shared.update(|s| {
            s.tenant = Some(spec.tenant_id());
            s.timeline = Some(spec.timeline_id());
        });
    }

    fn set_postgres_up(&self, up: bool) {
        self.shared.update(|s| s.postgres_up = up);
    }
}

mod sealed {
    pub trait Sealed {}
}

/// Whether Postgres is already running in a configuration state.
pub trait Phase: sealed::Sealed {}

/// Postgres is not running yet: the initial configuration of a pooled compute.
pub struct Cold;

/// Postgres is running: a live reconfiguration.
pub struct Live(Postmaster);

impl sealed::Sealed for Cold {}
impl sealed::Sealed for Live {}
impl Phase for Cold {}
impl Phase for Live {}

/// Waits for a spec: from `POST /configure`, or the control plane.
pub struct Empty {
    ctx: Context,
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

/// The outcome of [`Running::restart`].
pub enum Restarted {
    Running(Running),
    /// Postgres did not come back; it is not running.
    Failed(Failed),
    /// Not for this compute (pageserver storage), with the reason; nothing was done.
    NotPossible(Running, String),
}

/// A start or a reconfiguration failed; holds the error (and Postgres, if it still runs).
pub struct Failed {
    ctx: Context,
    error: String,
    postmaster: Option<Postmaster>,
}

/// Termination was asked for; waits for Postgres to exit.
pub struct TerminationPending {
    ctx: Context,
    postmaster: Option<Postmaster>,
}

/// Postgres has exited after a termination request.
pub struct Terminated {
    ctx: Context,
    exit: Option<ExitStatus>,
}

impl Empty {
    pub fn new(ctx: Context) -> Empty {
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
    pub fn terminate(self) -> TerminationPending {
        self.ctx.publish(Status::TerminationPending, None);
        TerminationPending { ctx: self.ctx, postmaster: None }
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
        let Live(postmaster) = self.phase;
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
            Err(e) => Err(Failed::enter(self.ctx, e, Some(postmaster))),
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
    fn enter(ctx: Context, spec: ParsedSpec, postmaster: Postmaster) -> Running {
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

    /// False once the current postmaster has exited (an exit event may be for an earlier
    /// one, replaced by a restart).
    pub fn postgres_alive(&self) -> bool {
        self.postmaster.exit_status().is_none()
    }

    pub fn reconfigure(self, spec: ParsedSpec) -> ConfigurationPending<Live> {
        self.ctx.publish_spec(&spec);
        self.ctx.publish(Status::ConfigurationPending, None);
        ConfigurationPending { ctx: self.ctx, spec, phase: Live(self.postmaster) }
    }

    /// Asks Postgres to stop (`mode`) and waits in [`TerminationPending`]. A fast shutdown
    /// is preceded by a bounded `CHECKPOINT` (see [`crate::postgres::stop`]).
    pub fn terminate(self, mode: StopMode) -> TerminationPending {
        self.ctx.publish(Status::TerminationPending, None);
        if mode == StopMode::Fast {
            pre_stop_checkpoint(&self.ctx);
        }
        self.postmaster.stop(mode);
        TerminationPending { ctx: self.ctx, postmaster: Some(self.postmaster) }
    }

    /// `POST /restart`: a fast shutdown and a start of Postgres on the same PGDATA (local
    /// mode only), so that settings waiting for a restart take effect. Nothing else of a
    /// start runs again: PGDATA is neither prepared nor fetched, no subscription is dropped.
    /// [`Restarted::NotPossible`] hands the compute back, untouched, when its storage does
    /// not allow it.
    pub fn restart(self) -> Restarted {
        if let Err(why) = boot::restart_allowed(&self.spec) {
            return Restarted::NotPossible(self, why);
        }
        self.ctx.publish(Status::Configuration, None);
        pre_stop_checkpoint(&self.ctx);
        match boot::restart(&self.ctx, &self.spec, self.postmaster) {
            Ok(pm) => {
                self.ctx.shared.update(|s| s.pending_restart.clear());
                Restarted::Running(Running::enter(self.ctx, self.spec, pm))
            }
            Err(e) => Restarted::Failed(Failed::enter(self.ctx, e, None)),
        }
    }

    /// Postgres exited by itself: its exit status (it has been reaped).
    pub fn postgres_exited(self) -> ExitStatus {
        self.ctx.set_postgres_up(false);
        let status = self.postmaster.wait_exit(None).expect("waiting without a timeout returns a status");
        clear_handle(&self.ctx);
        status
    }
}

impl Failed {
    fn enter(ctx: Context, error: Error, postmaster: Option<Postmaster>) -> Failed {
        let error = error.to_string();
        log::error!("compute failed: {error}");
        ctx.set_postgres_up(postmaster.is_some());
        ctx.publish(Status::Failed, Some(error.clone()));
        Failed { ctx, error, postmaster }
    }

    pub fn status(&self) -> Status {
        Status::Failed
    }

    pub fn error(&self) -> &str {
        &self.error
    }

    /// True when Postgres still runs (a reconfiguration failed, not the start).
    pub fn postgres_running(&self) -> bool {
        self.postmaster.as_ref().is_some_and(|p| p.exit_status().is_none())
    }

    /// A corrected spec may recover a compute whose reconfiguration failed; a failed start
    /// stays failed (there is no Postgres to configure).
    pub fn reconfigure(self, spec: ParsedSpec) -> Result<ConfigurationPending<Live>, Failed> {
        match self.postmaster {
            Some(pm) if pm.exit_status().is_none() => {
                self.ctx.publish_spec(&spec);
                self.ctx.publish(Status::ConfigurationPending, None);
                Ok(ConfigurationPending { ctx: self.ctx, spec, phase: Live(pm) })
            }
            postmaster => Err(Failed { postmaster, ..self }),
        }
    }

    /// Stops Postgres if it still runs and waits for it.
    pub fn shutdown(self, mode: StopMode) -> Option<ExitStatus> {
        let pm = self.postmaster?;
        pm.stop(mode);
        let status = pm.wait_exit(None);
        clear_handle(&self.ctx);
        status
    }
}

impl TerminationPending {
    /// Waits until Postgres has exited (at once when it never ran).
    pub fn wait(self) -> Terminated {
        let exit = self.postmaster.as_ref().and_then(|pm| pm.wait_exit(None));
        self.ctx.set_postgres_up(false);
        clear_handle(&self.ctx);
        self.ctx.publish(Status::Terminated, None);
        Terminated { ctx: self.ctx, exit }
    }

    /// A second signal: stop now instead of waiting for a fast shutdown.
    pub fn escalate(&self) {
        if let Some(pm) = &self.postmaster {
            pm.stop(StopMode::Immediate);
        }
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

    pub fn context(&self) -> &Context {
        &self.ctx
    }
}

fn pre_stop_checkpoint(ctx: &Context) {
    let outcome = crate::postgres::stop::checkpoint(&ctx.args.connstr, ctx.args.pre_stop_checkpoint);
    log::info!("{}", outcome.describe());
}

fn clear_handle(ctx: &Context) {
    *ctx.postmaster.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

fn elapsed_ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}
