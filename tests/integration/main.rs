//! All integration tests, in one binary (one link, one template PGDATA per run).

mod support;

mod api;
mod catalog;
mod deploy;
mod harness;
mod http;
mod lifecycle;
mod neon2026;
mod operate;
mod plan;
mod storage;
mod subscriptions;
