//! The owner loop's heartbeat: the owner beats on every turn (at least once a second while it
//! waits for events), `/healthz` reads how long ago the last beat was. An owner stuck in one
//! operation stops beating; one waiting for work does not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often an idle owner turns, at most.
pub const IDLE_TURN: Duration = Duration::from_secs(1);

/// How long the owner may go without a beat before `/healthz` says it is stuck: longer than
/// any single operation should take (a start waits at most 60 s for Postgres).
pub const STALL: Duration = Duration::from_secs(90);

#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// Milliseconds from `origin` to the last beat.
    last_ms: AtomicU64,
}

impl Heartbeat {
    pub fn new() -> Heartbeat {
        Heartbeat { origin: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    pub fn beat(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::SeqCst);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        self.origin.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::SeqCst)))
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_restarts_at_each_beat() {
        let h = Heartbeat::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.age() < Duration::from_millis(20) {
            assert!(Instant::now() < deadline);
            std::hint::spin_loop();
        }
        h.beat();
        assert!(h.age() < Duration::from_millis(20));
    }
}
