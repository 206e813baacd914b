//! The run-time twin of the typestate: [`Status`], and the [`Shared`] snapshot other threads
//! read (the HTTP server, the activity monitor). Only the owner of the lifecycle writes the
//! status; no lock is held across work.

use crate::spec::{Id, RemoteExtSpec};
use crate::time;
use serde::Serialize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// One variant per lifecycle state (or phase of one), serialized exactly as today's Neon's
/// `ComputeStatus` (reference 2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Empty,
    ConfigurationPending,
    Init,
    Running,
    Configuration,
    Failed,
    TerminationPendingFast,
    TerminationPendingImmediate,
    Terminated,
    RefreshConfigurationPending,
    RefreshConfiguration,
}

impl Status {
    /// The kebab-case form Neon uses in logs and 412 messages.
    pub fn display_name(self) -> &'static str {
        match self {
            Status::Empty => "empty",
            Status::ConfigurationPending => "configuration-pending",
            Status::Init => "init",
            Status::Running => "running",
            Status::Configuration => "configuration",
            Status::Failed => "failed",
            Status::TerminationPendingFast => "termination-pending-fast",
            Status::TerminationPendingImmediate => "termination-pending-immediate",
            Status::Terminated => "terminated",
            Status::RefreshConfigurationPending => "refresh-configuration-pending",
            Status::RefreshConfiguration => "refresh-configuration",
        }
    }

    /// The snake_case form used on the wire and in metrics labels.
    pub fn wire_name(self) -> &'static str {
        match self {
            Status::Empty => "empty",
            Status::ConfigurationPending => "configuration_pending",
            Status::Init => "init",
            Status::Running => "running",
            Status::Configuration => "configuration",
            Status::Failed => "failed",
            Status::TerminationPendingFast => "termination_pending_fast",
            Status::TerminationPendingImmediate => "termination_pending_immediate",
            Status::Terminated => "terminated",
            Status::RefreshConfigurationPending => "refresh_configuration_pending",
            Status::RefreshConfiguration => "refresh_configuration",
        }
    }

    /// A few words on what the compute does in this state (systemd's `STATUS=`).
    pub fn doing(self) -> &'static str {
        match self {
            Status::Empty => "waiting for a spec (POST /configure)",
            Status::ConfigurationPending => "spec accepted",
            Status::Init => "starting postgres",
            Status::Running => "postgres is up and configured",
            Status::Configuration => "applying the spec",
            Status::Failed => "failed",
            Status::TerminationPendingFast | Status::TerminationPendingImmediate => "stopping postgres",
            Status::Terminated => "postgres has stopped",
            Status::RefreshConfigurationPending => "waiting to refresh the configuration",
            Status::RefreshConfiguration => "refreshing the configuration",
        }
    }

    /// What systemd is told about a transition to this state.
    pub fn notify_phase(self) -> crate::notify::Phase {
        use crate::notify::Phase;
        match self {
            Status::Empty | Status::Init => Phase::Starting,
            Status::ConfigurationPending
            | Status::Configuration
            | Status::RefreshConfigurationPending
            | Status::RefreshConfiguration => Phase::Configuring,
            Status::Running => Phase::Running,
            Status::Failed => Phase::Failed,
            Status::TerminationPendingFast | Status::TerminationPendingImmediate => Phase::Stopping,
            Status::Terminated => Phase::Stopped,
        }
    }

    pub const ALL: [Status; 11] = [
        Status::Empty,
        Status::ConfigurationPending,
        Status::Init,
        Status::Running,
        Status::Configuration,
        Status::Failed,
        Status::TerminationPendingFast,
        Status::TerminationPendingImmediate,
        Status::Terminated,
        Status::RefreshConfigurationPending,
        Status::RefreshConfiguration,
    ];
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.display_name())
    }
}

/// Neon's `ComputeMetrics`: every field a u64, always present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Metrics {
    pub wait_for_spec_ms: u64,
    pub sync_sk_check_ms: u64,
    pub sync_safekeepers_ms: u64,
    pub pageserver_connect_micros: u64,
    pub basebackup_ms: u64,
    pub basebackup_bytes: u64,
    pub start_postgres_ms: u64,
    pub config_ms: u64,
    pub total_startup_ms: u64,
    pub load_ext_ms: u64,
    pub num_ext_downloaded: u64,
    pub largest_ext_size: u64,
    pub total_ext_download_size: u64,
    /// Time spent on `drop_subscriptions_before_start` (guard pass plus drop); not in Neon's set.
    pub drop_subscriptions_ms: u64,
}

/// What other threads may know about the compute.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub status: Status,
    pub error: Option<String>,
    pub tenant: Option<Id>,
    pub timeline: Option<Id>,
    pub start_time: SystemTime,
    pub last_active: Option<SystemTime>,
    pub metrics: Metrics,
    /// Postgres is up and reachable through `--connstr` (running, or a failed reconfigure).
    pub postgres_up: bool,
    /// The compute has been `running` at least once: start-up is over (`/startupz`).
    pub started: bool,
    /// Settings changed by a live reconfiguration that take effect only after a restart
    /// (`pg_settings.pending_restart`), sorted; `POST /restart` applies them.
    pub pending_restart: Vec<String>,
    /// The current spec's `remote_extensions`, for `/extension_server`.
    pub remote_extensions: Option<Arc<RemoteExtSpec>>,
    /// Where the current spec keeps the LFC state, for `/lfc/prewarm` and `/lfc/offload`.
    pub lfc: Option<Arc<crate::lfc::Target>>,
}

/// Neon's `ComputeStatusResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusBody {
    pub start_time: String,
    pub tenant: Option<String>,
    pub timeline: Option<String>,
    pub status: Status,
    pub last_active: Option<String>,
    pub error: Option<String>,
    /// Not in Neon's answer: the settings waiting for a restart (empty when none).
    pub pending_restart: Vec<String>,
}

impl Snapshot {
    pub fn body(&self) -> StatusBody {
        StatusBody {
            start_time: time::rfc3339_z(self.start_time),
            tenant: self.tenant.map(|t| t.to_string()),
            timeline: self.timeline.map(|t| t.to_string()),
            status: self.status,
            last_active: self.last_active.map(time::rfc3339_offset),
            error: self.error.clone(),
            pending_restart: self.pending_restart.clone(),
        }
    }
}

/// The published snapshot, behind a mutex held only to copy or update a few fields.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<Snapshot>>);

impl Shared {
    pub fn new() -> Shared {
        Shared(Arc::new(Mutex::new(Snapshot {
            status: Status::Empty,
            error: None,
            tenant: None,
            timeline: None,
            start_time: SystemTime::now(),
            last_active: None,
            metrics: Metrics::default(),
            postgres_up: false,
            started: false,
            pending_restart: Vec::new(),
            remote_extensions: None,
            lfc: None,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        // A poisoned lock means a panic while copying fields; the data is still consistent.
        crate::locks::lock(&self.0)
    }

    pub fn get(&self) -> Snapshot {
        self.lock().clone()
    }

    pub fn update<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> R {
        f(&mut self.lock())
    }

    /// Moves `last_active` forward only: a later time replaces an earlier one.
    pub fn touch_active(&self, t: SystemTime) {
        let mut s = self.lock();
        if s.last_active.is_none_or(|old| t > old) {
            s.last_active = Some(t);
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}
