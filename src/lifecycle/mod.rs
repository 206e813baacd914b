//! The compute's lifecycle as types: one type per state, transitions that consume `self`, and
//! the one function, [`step`], that decides what each event does in each state.
//!
//! ```text
//!            Configure              begin                  start
//!   Empty ─────────────▶ ConfigurationPending<Cold> ──▶ Configuration<Cold> ──▶ Running | Failed
//!     │   Init                 start
//!     ├─────────▶ Init ────────────────────────────────────────────────────▶ Running | Failed
//!     │
//!     │              Configure              begin               apply
//!     │   Running | Failed (Postgres up) ──RefreshConfiguration──▶ RefreshConfigurationPending
//!     │        ──begin──▶ RefreshConfiguration ──apply──▶ Running | Failed
//!     │   Running ─────────────▶ ConfigurationPending<Live> ──▶ Configuration<Live> ──▶ Running | Failed
//!     │   Running ──CertificateChanged (same spec, TLS files copied again)──▶ ConfigurationPending<Live>
//!     │   Failed (Postgres up) ──▶ ConfigurationPending<Live>
//!     │   Terminate, Signal                       wait
//!     └─────────────▶ TerminationPending<Fast | Immediate> ─────▶ Terminated
//!         Running, Failed ──▶ TerminationPending<…>   (Terminate, Signal, PostgresExited)
//!
//!                 Restart (local storage only: fast shutdown, start on the same PGDATA)
//!         Running ──────────────────────────────────────────────────────▶ Running | Failed
//! ```
//!
//! Inside a start ([`Boot`], then [`Ready`]): `Boot` holds the [`Stopped`] proof the
//! operations on a stopped Postgres need (initdb, basebackup, the subscription guard);
//! starting the postmaster consumes it and gives a `Ready`, which holds the subscription
//! [`Guard`] the drop of inherited subscriptions needs. `Running` holds neither.
//!
//! # Types
//! [`Status`] is the run-time twin of these types; every transition publishes it in the
//! [`Shared`] snapshot for the HTTP server. [`State`] holds the current state value between
//! events; [`step`] takes it and an [`Event`] and returns the next one and the [`Reply`].
//! The owner loop (`compute`) only feeds it events: no other place decides what is allowed.
//! The context every state carries (the [`Node`], the snapshot, the postmaster handle) is
//! private to this module: it is built once, by [`State::new`], and never handed out.
//!
//! # What does not compile
//! Each `compile_fail` block names the error it must fail with; rustdoc checks the code on
//! nightly (`cargo +nightly test --doc`), so a block cannot pass by failing for another reason.
//! Each has a twin that differs only in the forbidden line and compiles.
//!
//! A state cannot be used after its transition (E0382, use of moved value):
//! ```compile_fail,E0382
//! # use compute_ctl::lifecycle::*; use compute_ctl::spec::ParsedSpec;
//! fn f(empty: Empty, spec: ParsedSpec) {
//!     let init = empty.init(spec);
//!     let _ = empty.status(); // `empty` was moved by `init`
//! }
//! ```
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
//! ```no_run
//! # use compute_ctl::lifecycle::*;
//! fn f(ready: &mut Ready) {
//!     ready.drop_subscriptions_before_start();
//! }
//! ```
//! ```compile_fail,E0599
//! # use compute_ctl::lifecycle::*;
//! fn f(running: &mut Running) {
//!     running.prepare_pgdata();
//! }
//! ```
//! ```no_run
//! # use compute_ctl::lifecycle::*;
//! fn f(boot: &mut Boot) {
//!     boot.prepare_pgdata();
//! }
//! ```
//! Nor can the mechanism be called directly with what `Running` holds: the drop needs the
//! guard only the pre-start guard step makes (E0061, missing argument):
//! ```compile_fail,E0061
//! # use compute_ctl::lifecycle::*; use compute_ctl::postgres::{Node, subscriptions::{self, Guard}};
//! fn f(running: &Running, node: &Node, guard: &Guard) {
//!     let _ = subscriptions::drop_inherited(node, running.spec());
//! }
//! ```
//! ```no_run
//! # use compute_ctl::lifecycle::*; use compute_ctl::postgres::{Node, subscriptions::{self, Guard}};
//! fn f(running: &Running, node: &Node, guard: &Guard) {
//!     let _ = subscriptions::drop_inherited(node, running.spec(), guard);
//! }
//! ```
//! and the guard step, like initdb, needs the [`Stopped`] proof, which starting Postgres
//! consumes (E0382, use of moved value):
//! ```compile_fail,E0382
//! # use compute_ctl::postgres::{Node, Stopped, pgdata, process::Postmaster};
//! fn f(proof: Stopped, node: &Node) {
//!     let pm = Postmaster::spawn(proof, node, &[], Box::new(|_| {}));
//!     let _ = pgdata::initdb(&proof, node);
//! }
//! ```
//! ```no_run
//! # use compute_ctl::postgres::{Node, Stopped, pgdata, process::Postmaster};
//! fn f(proof: Stopped, node: &Node) {
//!     let _ = pgdata::initdb(&proof, node);
//!     let pm = Postmaster::spawn(proof, node, &[], Box::new(|_| {}));
//! }
//! ```
//! A proof cannot be made outside the crate (E0451, private field; see [`Stopped`]).
//!
//! A live reconfiguration cannot start Postgres from scratch (E0599):
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
//! A state cannot be constructed outside this module (E0451, private field):
//! ```compile_fail,E0451
//! # use compute_ctl::lifecycle::*;
//! fn f(t: Terminated) -> Terminated {
//!     Terminated { ..t }
//! }
//! ```
//! ```no_run
//! # use compute_ctl::lifecycle::*;
//! fn f(t: Terminated) -> Terminated {
//!     t
//! }
//! ```
//! and the context states carry cannot be named, built or obtained outside it (E0603,
//! private struct); the one way in is [`State::new`]:
//! ```compile_fail,E0603
//! # use compute_ctl::lifecycle::*;
//! fn f(parts: Parts) -> compute_ctl::lifecycle::Context {
//!     todo!()
//! }
//! ```
//! ```no_run
//! # use compute_ctl::lifecycle::*;
//! fn f(parts: Parts) -> State {
//!     State::new(parts)
//! }
//! ```
//!
//! [`Stopped`]: crate::postgres::Stopped
//! [`Guard`]: crate::postgres::subscriptions::Guard
//! [`Node`]: crate::postgres::Node

mod boot;
mod states;
mod status;
mod step;
#[cfg(test)]
mod tests;

pub use boot::{Boot, Ready};
pub use states::{
    Cold, Configuration, ConfigurationPending, Empty, Failed, Fast, Immediate, Init, Linger, Live, Phase,
    RefreshConfiguration, RefreshConfigurationPending, Running, Terminated, TerminationPending, Urgency,
};
pub use status::{Metrics, Shared, Snapshot, Status, StatusBody};
pub use step::{Event, Exit, Message, Reply, State, Termination, step};

use crate::postgres::Node;
use crate::postgres::process::PostmasterHandle;
use crate::spec::ParsedSpec;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

/// What the owner hands over to build the first state. The lifecycle keeps it in a context no
/// other module can see.
pub struct Parts {
    pub node: Node,
    pub shared: Shared,
    /// Where the lifecycle puts the current postmaster's handle, for the signal thread's
    /// escalation and the PID 1 reaper.
    pub postmaster: Arc<Mutex<Option<PostmasterHandle>>>,
    /// Called on the reaper thread when Postgres exits (the owner turns it into an event).
    pub on_postgres_exit: Arc<dyn Fn(ExitStatus) + Send + Sync>,
    /// systemd's notification socket (does nothing outside systemd); every publish tells it.
    pub notifier: Arc<crate::notify::Notifier>,
    /// `--pre-stop-checkpoint`: the bound of the `CHECKPOINT` before a fast shutdown.
    pub pre_stop_checkpoint: std::time::Duration,
    /// Fetches the spec again for `/refresh_configuration` (from the control plane or the spec
    /// file); None when the spec came inline or from `/configure`.
    pub refresh: Option<Refresh>,
    /// rsyslog's directory and the audit receiver (`--rsyslog-dir`, `AUDIT_LOGGING_*`).
    pub rsyslog: crate::rsyslog::Settings,
    /// Fetches remote extension archives; the start preloads `shared_preload_libraries`
    /// through it, sharing its dedup with `/extension_server`.
    pub extensions: Arc<crate::remote_ext::Installer>,
}

/// How a spec is fetched again: `Ok(None)` when its source has none for this compute.
pub type Refresh = Arc<dyn Fn() -> Result<Option<ParsedSpec>, String> + Send + Sync>;

/// What every state carries (cheap to clone: one `Arc`). Private to `lifecycle`.
#[derive(Clone)]
struct Context(Arc<Parts>);

impl std::ops::Deref for Context {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

impl Context {
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

    /// The bounded `CHECKPOINT` before a fast shutdown (see [`crate::postgres::stop`]). After
    /// a termination signal the signal thread has run it already, before its fast shutdown.
    fn pre_stop_checkpoint(&self) {
        if self.node.interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let outcome = crate::postgres::stop::checkpoint(&self.node.connstr, self.pre_stop_checkpoint);
        log::info!("{}", outcome.describe());
    }

    fn publish_spec(&self, spec: &ParsedSpec) {
        self.shared.update(|s| {
            s.tenant = Some(spec.tenant_id());
            s.timeline = Some(spec.timeline_id());
            s.remote_extensions = spec.spec().remote_extensions.clone().map(Arc::new);
            s.lfc = Some(Arc::new(crate::lfc::Target::of(spec)));
        });
    }

    /// Publishes the settings a live reconfiguration changed that wait for a restart.
    fn record_pending_restart(&self, pending: Vec<String>) {
        if !pending.is_empty() {
            log::warn!(
                "settings changed that take effect only after a restart (POST /restart): {}",
                pending.join(", ")
            );
        }
        self.shared.update(|s| s.pending_restart = pending);
    }

    fn set_postgres_up(&self, up: bool) {
        self.shared.update(|s| s.postgres_up = up);
    }

    fn set_handle(&self, handle: Option<PostmasterHandle>) {
        *crate::locks::lock(&self.postmaster) = handle;
    }
}
