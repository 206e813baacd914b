//! The owner's state holder and the one place that decides what an event does: [`step`].

use super::states::{
    Empty, Failed, Fast, Immediate, Linger, Reason, Restarted, Running, Terminated, TerminationPending, Urgency,
};
use super::{Context, Parts, Status, StatusBody};
use crate::postgres::process::StopMode;
use crate::postgres::promote::Timings;
use crate::spec::{Lsn, ParsedSpec};
use std::sync::Arc;
use std::sync::mpsc::Sender;

/// Something the owner must react to.
#[derive(Debug)]
pub enum Event {
    /// A spec given at start-up (command line, file, control plane): start at once.
    Init(ParsedSpec),
    /// `POST /configure` with a validated spec.
    Configure(ParsedSpec),
    /// `POST /terminate`.
    Terminate(Termination),
    /// `POST /restart`.
    Restart,
    /// `POST /promote`: the new primary's spec and the LSN the standby must replay first.
    Promote { spec: ParsedSpec, wal_flush_lsn: Lsn },
    /// `POST /refresh_configuration`: fetch the spec again and apply it.
    RefreshConfiguration,
    /// The certificate watcher (`cert_watch`): the compute first reached `running`, or the
    /// TLS certificate file changed. A running compute reconfigures with its current spec.
    CertificateChanged,
    /// A route that works on Postgres asks whether it may (only while running).
    Query,
    /// SIGTERM, SIGINT or SIGQUIT.
    Signal(i32),
    /// The postmaster exited (sent from its reaper thread).
    PostgresExited,
}

/// What `/terminate?mode=` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// `fast` (the default): fast shutdown of Postgres, then `--exit-delay`.
    Fast,
    /// `immediate`, as today's Neon: a fast shutdown too, then only 300 ms.
    Immediate,
    /// `immediate_postgres` (this project's own): Postgres gets an immediate shutdown (no
    /// shutdown checkpoint; the next start runs crash recovery), then 300 ms.
    PostgresImmediate,
}

/// The owner's answer to an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done (or allowed, for [`Event::Query`]).
    Done,
    /// A `/configure` was applied: the status it left, taken by the owner before its next
    /// event (so concurrent requests each get their own).
    Configured(StatusBody),
    /// Postgres stopped after `/terminate`; the LSN of its shutdown checkpoint when it could
    /// be read from `pg_controldata`.
    Terminated { lsn: Option<String> },
    /// `/terminate` again once terminated: the same LSN (answered 201).
    AlreadyTerminated { lsn: Option<String> },
    /// `/promote` completed, with its timings.
    Promoted(Timings),
    /// Not possible in this state.
    WrongState(Status),
    /// Not possible for this compute, whatever its state, and why.
    NotPossible(String),
    /// The transition ran and failed, with the error.
    Failed(String),
}

/// An event as it travels to the owner, with where to send the reply (none for signals and
/// Postgres exits).
#[derive(Debug)]
pub struct Message {
    pub event: Event,
    pub reply: Option<Sender<Reply>>,
}

/// The state value the owner holds between events. The transient states (`Init`,
/// `Configuration…`, `TerminationPending`) live only inside one [`step`].
pub enum State {
    Empty(Empty),
    Running(Running),
    Failed(Failed),
    Terminated(Terminated),
}

/// How the owner loop ends: the process exit code, and how long `/status` is answered first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub linger: Linger,
}

impl State {
    /// The first state, `Empty`, built from what the owner hands over.
    pub fn new(parts: Parts) -> State {
        State::Empty(Empty::enter(Context(Arc::new(parts))))
    }

    pub fn status(&self) -> Status {
        match self {
            State::Empty(_) => Status::Empty,
            State::Running(_) => Status::Running,
            State::Failed(_) => Status::Failed,
            State::Terminated(_) => Status::Terminated,
        }
    }

    /// Set once the compute has ended: a failed start (Postgres does not run) or a
    /// termination.
    pub fn exit(&self) -> Option<Exit> {
        match self {
            State::Empty(_) | State::Running(_) => None,
            State::Failed(f) if f.postgres_running() => None,
            State::Failed(_) => Some(Exit { code: 1, linger: Linger::ExitDelay }),
            State::Terminated(t) => Some(Exit { code: t.code(), linger: t.linger() }),
        }
    }
}

/// Applies `event` to `state`: the next state and the reply. Every pair is spelled out, so a
/// new state or event does not compile until it is decided here.
pub fn step(state: State, event: Event) -> (State, Reply) {
    use Event as E;
    match (state, event) {
        (State::Empty(s), E::Init(spec)) => started(s.init(spec).start()),
        (State::Empty(s), E::Configure(spec)) => started(s.configure(spec).begin().start()),
        (State::Empty(s), E::Terminate(Termination::Fast)) => terminated(s.terminate::<Fast>(Reason::Requested)),
        (State::Empty(s), E::Terminate(Termination::Immediate | Termination::PostgresImmediate)) => {
            terminated(s.terminate::<Immediate>(Reason::Requested))
        }
        (State::Empty(s), E::Signal(sig)) => {
            log::info!("received signal {sig} while waiting for a spec: exiting");
            terminated(s.terminate::<Fast>(Reason::Signal))
        }
        (s @ State::Empty(_), E::Query | E::Restart | E::Promote { .. } | E::RefreshConfiguration) => wrong(s),
        (s @ State::Empty(_), E::PostgresExited | E::CertificateChanged) => (s, Reply::Done),

        (State::Running(r), E::Configure(spec)) => started(r.reconfigure(spec).begin().apply()),
        (State::Running(r), E::Terminate(Termination::Fast)) => {
            terminated(r.terminate::<Fast>(StopMode::Fast, Reason::Requested))
        }
        (State::Running(r), E::Terminate(Termination::Immediate)) => {
            terminated(r.terminate::<Immediate>(StopMode::Fast, Reason::Requested))
        }
        (State::Running(r), E::Terminate(Termination::PostgresImmediate)) => {
            terminated(r.terminate::<Immediate>(StopMode::Immediate, Reason::Requested))
        }
        (State::Running(r), E::Signal(sig)) => {
            log::info!("received signal {sig}: fast shutdown of postgres");
            terminated(r.terminate::<Fast>(StopMode::Fast, Reason::Signal))
        }
        (State::Running(r), E::Restart) => match r.restart() {
            Restarted::Running(r) => (State::Running(r), Reply::Done),
            Restarted::Failed(f) => started(Err(f)),
            Restarted::NotPossible(r, why) => (State::Running(r), Reply::NotPossible(why)),
        },
        // The exit of the postmaster a restart replaced.
        (State::Running(r), E::PostgresExited) if r.postgres_alive() => (State::Running(r), Reply::Done),
        (State::Running(r), E::PostgresExited) => terminated(r.postgres_exited()),
        (State::Running(r), E::Promote { spec, wal_flush_lsn }) => match r.promote(spec, wal_flush_lsn) {
            (next, Ok(timings)) => (started(next).0, Reply::Promoted(timings)),
            (next, Err(msg)) => (started(next).0, Reply::Failed(msg)),
        },
        (State::Running(r), E::RefreshConfiguration) => refreshed(r.refresh().begin().apply()),
        (State::Running(r), E::CertificateChanged) => started(r.reapply().begin().apply()),
        (s @ State::Running(_), E::Query) => (s, Reply::Done),
        (s @ State::Running(_), E::Init(_)) => wrong(s),

        (State::Failed(f), E::Configure(spec)) => match f.reconfigure(spec) {
            Ok(pending) => started(pending.begin().apply()),
            Err(f) => wrong(State::Failed(f)),
        },
        (State::Failed(f), E::RefreshConfiguration) => match f.refresh() {
            Ok(pending) => refreshed(pending.begin().apply()),
            Err(f) => wrong(State::Failed(f)),
        },
        (State::Failed(f), E::Signal(sig)) => {
            log::info!("received signal {sig}: fast shutdown of postgres");
            terminated(f.terminate::<Fast>(StopMode::Fast, Reason::Signal))
        }
        (State::Failed(f), E::PostgresExited) if f.postgres_running() || !f.had_postgres() => {
            // The exit of the Postgres a failed start stopped, or a stale event.
            (State::Failed(f), Reply::Done)
        }
        (State::Failed(f), E::PostgresExited) => {
            terminated(f.terminate::<Fast>(StopMode::Fast, Reason::PostgresExited))
        }
        (s @ State::Failed(_), E::Init(_) | E::Terminate(_) | E::Query | E::Restart | E::Promote { .. }) => wrong(s),
        // The watcher stops on `failed`, as Neon's; a corrected spec recovers the compute.
        (s @ State::Failed(_), E::CertificateChanged) => (s, Reply::Done),

        (State::Terminated(t), E::Signal(_)) => (State::Terminated(t.stop_lingering()), Reply::Done),
        (s @ State::Terminated(_), E::PostgresExited | E::CertificateChanged) => (s, Reply::Done),
        (State::Terminated(t), E::Terminate(_)) => {
            let lsn = t.lsn().map(str::to_string);
            (State::Terminated(t), Reply::AlreadyTerminated { lsn })
        }
        (
            s @ State::Terminated(_),
            E::Init(_) | E::Configure(_) | E::Query | E::Restart | E::Promote { .. } | E::RefreshConfiguration,
        ) => wrong(s),
    }
}

fn refreshed((next, result): (Result<Running, Failed>, Result<(), String>)) -> (State, Reply) {
    let state = match next {
        Ok(r) => State::Running(r),
        Err(f) => State::Failed(f),
    };
    (state, result.map_or_else(Reply::Failed, |()| Reply::Done))
}

fn wrong(state: State) -> (State, Reply) {
    let status = state.status();
    (state, Reply::WrongState(status))
}

fn started(result: Result<Running, Failed>) -> (State, Reply) {
    match result {
        Ok(r) => (State::Running(r), Reply::Done),
        Err(f) => {
            let reply = Reply::Failed(f.error().report().to_string());
            (State::Failed(f), reply)
        }
    }
}

fn terminated<U: Urgency>(pending: TerminationPending<U>) -> (State, Reply) {
    let t = pending.wait();
    let reply = if t.synced() {
        Reply::Terminated { lsn: t.lsn().map(str::to_string) }
    } else {
        Reply::Failed("sync of safekeepers after postgres exited failed".into())
    };
    (State::Terminated(t), reply)
}
