//! Everything that touches Postgres: PGDATA, config files, the process, SQL, `pg_dump`.
//!
//! This layer knows nothing of the lifecycle, the HTTP server or the owner loop: it takes a
//! plain description of the node ([`Node`]) and returns results and timings, which the layer
//! above publishes.
//!
//! The operations that are only valid while Postgres is not running (initdb, the pageserver
//! preparation of PGDATA, the subscription guard) take a [`Stopped`] proof, which
//! [`process::Postmaster::spawn`] consumes. The drop of inherited subscriptions takes the
//! [`subscriptions::Guard`] that only the guard step, with a `Stopped`, can make.

pub mod apply;
pub mod basebackup;
pub mod conf;
pub mod dump;
pub mod hba;
pub mod migrations;
pub mod pgdata;
pub mod process;
pub mod promote;
pub mod queries;
pub mod safekeepers;
pub mod sql;
pub mod stop;
pub mod storage;
pub mod subscriptions;
pub mod tls;
pub mod version;

use process::RunAs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// The compute node as this layer sees it: where PGDATA and the binaries are, how to reach
/// Postgres, who it runs as, and the port it tells extensions about.
#[derive(Debug, Clone)]
pub struct Node {
    pub pgdata: PathBuf,
    /// The directory of `postgres`, `initdb`, `pg_dump`, `pg_controldata`.
    pub bindir: PathBuf,
    /// `--connstr`: how compute_ctl connects, as the superuser.
    pub connstr: String,
    /// The OS user Postgres runs as when compute_ctl is root.
    pub run_as: Option<RunAs>,
    /// compute_ctl's internal HTTP port, written into `postgresql.conf`.
    pub internal_http_port: u16,
    /// `--privileged-role-name`: the role the catalog apply and the migrations grant to,
    /// written into `postgresql.conf`.
    pub privileged_role: String,
    /// Set when termination is asked for; long steps (basebackup, safekeeper sync, waiting for
    /// readiness) poll it and give up with `Error::Interrupted`.
    pub interrupted: Arc<AtomicBool>,
    /// `compute_ctl_config.tls`, fixed at process start: the key and certificate Postgres
    /// serves when the spec has the feature `tls_experimental` (see [`tls`]).
    pub tls: Option<crate::spec::TlsConfig>,
}

impl Node {
    /// The `postgres` binary.
    pub fn postgres_bin(&self) -> PathBuf {
        self.bindir.join("postgres")
    }

    /// Whether Postgres serves TLS with `spec` (see [`tls::active`]).
    pub fn ssl(&self, spec: &crate::spec::ParsedSpec) -> bool {
        tls::active(self.tls.as_ref(), spec)
    }
}

/// Proof that this node's Postgres is not running: the operations that rewrite PGDATA or run
/// Postgres in single-user mode take it, and starting the postmaster consumes it, so none of
/// them can follow a start.
///
/// It has a private field: outside the crate it cannot be made at all (E0451):
/// ```compile_fail,E0451
/// let _ = compute_ctl::postgres::Stopped { _private: () };
/// ```
/// ```no_run
/// fn f(proof: compute_ctl::postgres::Stopped) -> compute_ctl::postgres::Stopped { proof }
/// ```
/// Inside the crate only `lifecycle`'s boot mints it (a unit test there checks that no other
/// file does).
#[derive(Debug)]
pub struct Stopped {
    _private: (),
}

impl Stopped {
    /// For `lifecycle::Boot` only, which holds the one `Stopped` of a start until the
    /// postmaster takes it.
    pub(crate) fn minted_by_boot() -> Stopped {
        Stopped { _private: () }
    }
}
