//! The two state machines of the LFC work (Neon's `LfcPrewarmState` and `LfcOffloadState`)
//! and the running prewarm's cancel handle. Pure: no threads are started here except the
//! bounded one that repeats a cancel request.

use crate::locks::lock;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Neon's `LfcPrewarmState`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PrewarmState {
    NotPrewarmed,
    Prewarming,
    Completed {
        total: i32,
        prewarmed: i32,
        skipped: i32,
        state_download_time_ms: u32,
        uncompress_time_ms: u32,
        prewarm_time_ms: u32,
    },
    Failed {
        error: String,
    },
    /// Nothing stored for the endpoint (404).
    Skipped,
    Cancelled,
}

/// Neon's `LfcOffloadState`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum OffloadState {
    NotOffloaded,
    Offloading,
    Completed {
        state_query_time_ms: u32,
        compress_time_ms: u32,
        state_upload_time_ms: u32,
    },
    Failed {
        error: String,
    },
    /// The extension had no state to save.
    Skipped,
}

/// Neon's 429 messages.
pub const PREWARM_BUSY: &str = "Multiple requests for prewarm are not allowed";
pub const OFFLOAD_BUSY: &str = "Multiple requests for prewarm offload are not allowed";

/// The running prewarm's cancel handle.
#[derive(Default)]
pub struct Job(Mutex<JobState>);

#[derive(Default)]
struct JobState {
    cancelled: bool,
    done: bool,
    /// Set while `neon.prewarm_local_cache` runs.
    token: Option<postgres::CancelToken>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.0);
        f.debug_struct("Job").field("cancelled", &s.cancelled).field("done", &s.done).finish()
    }
}

impl Job {
    pub(super) fn cancelled(&self) -> bool {
        lock(&self.0).cancelled
    }

    /// Hands over the token of the query about to run; false when a cancel came first.
    pub(super) fn arm(&self, token: postgres::CancelToken) -> bool {
        let mut s = lock(&self.0);
        s.token = Some(token);
        !s.cancelled
    }

    pub(super) fn end(&self) {
        let mut s = lock(&self.0);
        s.token = None;
        s.done = true;
    }

    /// Marks the job cancelled and keeps sending Postgres's cancel request while the query
    /// runs: a request that reaches the backend just before the query starts is ignored by
    /// Postgres, so one is not enough. Bounded; on its own thread.
    pub(super) fn cancel(self: &Arc<Job>) {
        lock(&self.0).cancelled = true;
        let job = self.clone();
        let spawned = std::thread::Builder::new().name("lfc-cancel".into()).spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let token = {
                    let s = lock(&job.0);
                    if s.done {
                        return;
                    }
                    s.token.clone()
                };
                if let Some(t) = token
                    && let Err(e) = t.cancel_query(postgres::NoTls)
                {
                    log::warn!("LFC prewarm: cannot send the cancel request: {e}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        if let Err(e) = spawned {
            log::error!("LFC prewarm: cannot start the cancel thread: {e}");
        }
    }
}

/// Proof that a prewarm began: only [`Machine::begin_prewarm`] makes one.
#[derive(Debug)]
pub struct Ticket {
    job: Arc<Job>,
}

impl Ticket {
    pub(super) fn job(&self) -> Arc<Job> {
        self.job.clone()
    }
}

/// Both state machines.
#[derive(Debug)]
pub struct Machine {
    prewarm: PrewarmState,
    offload: OffloadState,
    job: Option<Arc<Job>>,
}

impl Default for Machine {
    fn default() -> Machine {
        Machine { prewarm: PrewarmState::NotPrewarmed, offload: OffloadState::NotOffloaded, job: None }
    }
}

impl Machine {
    pub fn prewarm(&self) -> &PrewarmState {
        &self.prewarm
    }
    pub fn offload(&self) -> &OffloadState {
        &self.offload
    }

    /// `prewarming`, unless a prewarm runs already.
    pub fn begin_prewarm(&mut self) -> Result<Ticket, &'static str> {
        if self.prewarm == PrewarmState::Prewarming {
            return Err(PREWARM_BUSY);
        }
        let job = Arc::new(Job::default());
        self.prewarm = PrewarmState::Prewarming;
        self.job = Some(job.clone());
        Ok(Ticket { job })
    }

    pub fn finish_prewarm(&mut self, ticket: Ticket, end: PrewarmState) {
        ticket.job.end();
        if self.job.as_ref().is_some_and(|j| Arc::ptr_eq(j, &ticket.job)) {
            self.job = None;
        }
        self.prewarm = end;
    }

    /// The running prewarm's job, to cancel; None when none runs (nothing is remembered).
    pub fn running_job(&self) -> Option<Arc<Job>> {
        self.job.clone()
    }

    /// `offloading`, unless an offload runs already.
    pub fn begin_offload(&mut self) -> Result<(), &'static str> {
        if self.offload == OffloadState::Offloading {
            return Err(OFFLOAD_BUSY);
        }
        self.offload = OffloadState::Offloading;
        Ok(())
    }

    pub fn finish_offload(&mut self, end: OffloadState) {
        self.offload = end;
    }

    /// Whether a periodic offload may run now: never over a prewarm that is not done
    /// (#12645), so a half-loaded cache is never saved.
    pub fn may_offload_periodically(&self) -> bool {
        matches!(self.prewarm, PrewarmState::Completed { .. } | PrewarmState::NotPrewarmed | PrewarmState::Skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_bodies_are_neons() {
        let j = |v: &dyn erased::Ser| v.json();
        assert_eq!(j(&PrewarmState::NotPrewarmed), r#"{"status":"not_prewarmed"}"#);
        assert_eq!(j(&PrewarmState::Cancelled), r#"{"status":"cancelled"}"#);
        assert_eq!(
            j(&PrewarmState::Completed {
                total: 3,
                prewarmed: 2,
                skipped: 1,
                state_download_time_ms: 4,
                uncompress_time_ms: 5,
                prewarm_time_ms: 6
            }),
            r#"{"status":"completed","total":3,"prewarmed":2,"skipped":1,"state_download_time_ms":4,"uncompress_time_ms":5,"prewarm_time_ms":6}"#
        );
        assert_eq!(j(&PrewarmState::Failed { error: "x".into() }), r#"{"status":"failed","error":"x"}"#);
        assert_eq!(j(&OffloadState::NotOffloaded), r#"{"status":"not_offloaded"}"#);
        assert_eq!(
            j(&OffloadState::Completed { state_query_time_ms: 1, compress_time_ms: 2, state_upload_time_ms: 3 }),
            r#"{"status":"completed","state_query_time_ms":1,"compress_time_ms":2,"state_upload_time_ms":3}"#
        );
    }

    mod erased {
        pub trait Ser {
            fn json(&self) -> String;
        }
        impl<T: serde::Serialize> Ser for T {
            fn json(&self) -> String {
                serde_json::to_string(self).unwrap()
            }
        }
    }

    #[test]
    fn a_second_prewarm_or_offload_is_refused_while_one_runs() {
        let mut m = Machine::default();
        let t = m.begin_prewarm().unwrap();
        assert_eq!(m.begin_prewarm().unwrap_err(), PREWARM_BUSY);
        assert!(!m.may_offload_periodically());
        m.finish_prewarm(t, PrewarmState::Skipped);
        assert!(m.may_offload_periodically());
        m.begin_offload().unwrap();
        assert_eq!(m.begin_offload().unwrap_err(), OFFLOAD_BUSY);
        m.finish_offload(OffloadState::Skipped);
        m.begin_offload().unwrap();
    }

    /// Neon's quirk, fixed: a cancel with nothing running leaves nothing behind.
    #[test]
    fn a_cancel_with_nothing_running_does_not_reach_the_next_prewarm() {
        let mut m = Machine::default();
        assert!(m.running_job().is_none());
        let t = m.begin_prewarm().unwrap();
        assert!(!t.job.cancelled());
        m.running_job().unwrap().cancel();
        assert!(t.job.cancelled());
        m.finish_prewarm(t, PrewarmState::Cancelled);
        assert!(m.running_job().is_none());
        let next = m.begin_prewarm().unwrap();
        assert!(!next.job.cancelled());
    }

    #[test]
    fn periodic_offload_waits_for_a_prewarm_to_end_well() {
        let mut m = Machine::default();
        assert!(m.may_offload_periodically());
        for (end, ok) in [
            (PrewarmState::Failed { error: "x".into() }, false),
            (PrewarmState::Cancelled, false),
            (PrewarmState::Skipped, true),
        ] {
            let t = m.begin_prewarm().unwrap();
            m.finish_prewarm(t, end);
            assert_eq!(m.may_offload_periodically(), ok);
        }
    }
}
