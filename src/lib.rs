//! compute_ctl: the supervisor of a PostgreSQL compute node.
//!
//! It takes a JSON compute spec, prepares PGDATA (kept on local storage, or fetched from a
//! pageserver), writes the configuration, starts Postgres as an unprivileged user and waits
//! until it is ready, applies roles and databases, serves an HTTP API, and stops Postgres
//! cleanly on signals. With `drop_subscriptions_before_start` it drops the logical-replication
//! subscriptions a branch inherited, once per timeline, before any apply worker can start.
//! With `AUTOSCALING` set it runs Postgres in its memory cgroup ([`cgroup`]) and serves the
//! autoscaler-agent ([`vm_monitor`]). With `audit_log_level` or `logs_export_host` it writes
//! rsyslog's configuration and restarts rsyslogd ([`rsyslog`]).
//!
//! The lifecycle is a typestate; see [`lifecycle`] for the state diagram and the
//! `compile_fail` proofs of the paths that do not exist.
//!
//! Layers point down only: [`compute`] (the owner loop) drives [`lifecycle`] (the states and
//! the one `step` that decides) and starts [`http`] (routes, which ask the owner); all of them
//! use [`postgres`], which works on a plain [`postgres::Node`] and knows none of them. `unsafe`
//! lives only in the private `sys` module.
#![deny(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms)]
#![allow(missing_debug_implementations)]

pub mod args;
pub mod auth;
pub mod cert_watch;
pub mod cgroup;
pub mod compute;
pub mod control_plane;
pub mod error;
pub mod escape;
pub mod heartbeat;
pub mod http;
pub mod lease;
pub mod lfc;
pub mod lifecycle;
mod locks;
pub mod logger;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod plan;
pub mod postgres;
pub mod remote_ext;
pub mod rsyslog;
pub mod spec;
mod sys;
pub mod time;

/// The static build's global allocator (see `sys::alloc`); `main.rs` installs it on musl.
pub use sys::LargeBlockCache;
pub mod vm_monitor;

pub use error::{Error, Result};
